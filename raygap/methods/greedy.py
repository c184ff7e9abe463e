"""Greedy: balanced multimodal learning through MMTM and conditional learning speeds
(Wu, Jastrzebski, Cho, Geras, "Characterizing and overcoming the greedy nature of learning in
multi-modal deep neural networks", ICML 2022), after the official
nyukat/greedy_multimodal_learning (``src/balanced_mmtm.py``, ``src/model.py``,
``src/callbacks.py: Bias_Mitigation_Strong``).

Model. The two encoders run stage by stage (the children of ``enc.trunk``); after the chosen
children (``mmtm_after``; official: after ResNet layer2, layer3, layer4 = the last three) an MMTM
block couples them:
    s_m = global average of feature map m            (frames: over T, h, w; else over h, w)
    z   = ReLU(W_z [s_0; s_1] + b_z)                 hidden size int(2 (C_0 + C_1) / ratio)
    g_m = sigmoid(W_m z + b_m)   (x 2 with ``double_gate``, the MMTM paper; not the Greedy code)
    A_m <- A_m * g_m                                 (channel-wise; one gate for all T frames)
Per-modality features are pooled as ``ImageEncoder.forward`` does and go through the model's fusion
head; the loss is CE(fused) (official: CE of the averaged per-view heads).

Conditional learning speed. After every backward outside a curation window (as the official
``compute_BDR``; also before ``start_epoch``), for each modality m
    M_main_m   += sum_{p in encoder m} ||grad p||^2 / sum_{p in encoder m} ||p||^2
    M_bypass_m += sum_{p in B_m} ||grad p||^2 / sum_{p in B_m} ||p||^2,
B_m = the shared squeeze FC and modality m's excitation FC of every MMTM block. The sums run
from the first step of training (never reset).
    d = log10(M_bypass_0 / M_main_0) - log10(M_bypass_1 / M_main_1)
Curation (from ``start_epoch`` on): when |d| > epsilon, the next ``window`` training steps are a
re-balancing window for the modality c = 0 if d > 0 else 1 ("caring modality" in the official
code): c's MMTM gates stop depending on the current sample of the other modality (the bypass),
so c's encoder must learn on its own. ``bypass: squeeze`` (the paper's bypass): c's gate is
computed from [s_c; running mean of the other modality's s]; ``bypass: gate`` (the official
curation code): c's gate is replaced by the running mean of c's gate. Running means are
cumulative means over all training forwards, kept as buffers of the MMTM modules. No speeds are
accumulated inside a window. Evaluation uses the MMTM blocks without any bypass.

A step GradScaler skips (fp16: inf/NaN gradients; the official code has no scaler) counts for
nothing: no speeds, no decision, no step of a window (``Greedy.step``). Its forward pass still
updated the running means, as it updates BatchNorm's running statistics.

The MMTM block is an ``nn.Module``: it lives in ``raygap/models/mmtm.py`` (imported when a trial
builds its model), so that importing this file, as every config validation does, needs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math

from ..errors import ConfigError
from ..lazy import lazy
from ..models.output import ModelOutput
from ..params import F
from ..registry import METHODS
from .base import Method, TrainState, check_epoch_window

torch = lazy("torch")
nn = lazy("torch.nn")


@dataclass
class GreedyParams:
    epsilon: float = F(0.01, range=(0.0, 100.0), help="curation threshold on |d| (log10 units)")
    window: int = F(5, range=(1, 100000), help="training steps of one curation (re-balancing) window")
    start_epoch: int = F(1, range=(0, 100000),
                         help="first epoch (counted from 0) in which curation windows may start; the official "
                              "code counts from 1 and starts at its epoch 2, i.e. the second epoch: 1 here")
    mmtm_after: list[int] = F([-3, -2, -1],
                              help="indices of the trunk children an MMTM block follows (negative: from the end; "
                                   "resnet18 children: conv1,bn1,relu,maxpool,layer1..layer4; small: 4 blocks)")
    ratio: float = F(4.0, range=(0.5, 1000.0), help="MMTM reduction: hidden size int(2 (C_0 + C_1) / ratio)")
    bypass: str = F("squeeze", choices=["squeeze", "gate"],
                    help="squeeze: the cared-for modality sees the running mean of the other's squeeze vector; "
                         "gate: its gate is replaced by its running mean gate (official curation code)")
    double_gate: bool = F(False, help="gates 2*sigmoid as in the MMTM paper (the Greedy code uses sigmoid)")


# -- stage-by-stage encoding ----------------------------------------------------------------
def _to_images(enc, x: torch.Tensor):
    """(input as images, (B, T) for frames else None)."""
    if enc.kind == "frames":
        return x.flatten(0, 1), tuple(x.shape[:2])
    return x, None


def pool_map(h: torch.Tensor, bt) -> torch.Tensor:
    """The pooling of ``ImageEncoder.forward``."""
    from ..models.mmtm import squeeze_map

    return squeeze_map(h, bt)


def staged_encode(encoders: list, xs: list[torch.Tensor],
                  insert: dict[int, Callable] | None = None) -> list[torch.Tensor]:
    """Run the encoders' trunk children in lock-step; after child i call ``insert[i](maps, bts)``
    (returns the new maps); pool as ``ImageEncoder.forward``. Without inserts each result equals enc(x)."""
    insert = insert or {}
    hs, bts = [], []
    for enc, x in zip(encoders, xs):
        h, bt = _to_images(enc, x)
        hs.append(h)
        bts.append(bt)
    stages = [list(enc.trunk.children()) for enc in encoders]
    for i in range(len(stages[0])):
        hs = [st[i](h) for st, h in zip(stages, hs)]
        if i in insert:
            hs = list(insert[i](hs, bts))
    return [pool_map(h, bt) for h, bt in zip(hs, bts)]


def _channels_after(trunk: nn.Module, i: int) -> int:
    """Channels of the map after trunk child i: the last BatchNorm2d / Conv2d up to it."""
    kids = list(trunk.children())
    for child in reversed(kids[:i + 1]):
        for mod in reversed(list(child.modules())):
            if isinstance(mod, nn.BatchNorm2d):
                return mod.num_features
            if isinstance(mod, nn.Conv2d):
                return mod.out_channels
    raise ConfigError(f"cannot tell the channel count after trunk child {i}", key="method.mmtm_after")


# -- conditional learning speed and the curation decision -------------------------------------
def speed_ratio(params) -> torch.Tensor:
    """sum ||grad||^2 / sum ||w||^2 over the parameters (a missing gradient counts 0), as a
    0-dim float64 tensor on the parameters' device (the caller reads all of them at once)."""
    params = list(params)
    if not params:
        return torch.zeros((), dtype=torch.float64)
    dev = params[0].device
    wn = torch.stack([p.detach().float().pow(2).sum().double() for p in params]).sum()
    gs = [p.grad.detach().float().pow(2).sum().double() for p in params if p.grad is not None]
    gn = torch.stack(gs).sum() if gs else torch.zeros((), dtype=torch.float64, device=dev)
    return torch.where(wn > 0, gn / wn.clamp_min(1e-300), torch.zeros_like(wn))


def speed_gap(m_main: list[float], m_bypass: list[float]) -> float:
    """d = log10(M_bypass_0 / M_main_0) - log10(M_bypass_1 / M_main_1); 0 while any sum is 0."""
    if min(m_main + m_bypass) <= 0:
        return 0.0
    return math.log10(m_bypass[0] / m_main[0]) - math.log10(m_bypass[1] / m_main[1])


def curation_target(d: float, epsilon: float) -> int | None:
    """The modality (0 / 1) a curation window is run for, or None when |d| <= epsilon."""
    if abs(d) <= epsilon:
        return None
    return 0 if d > 0 else 1


# version 2: curation from the second epoch (start_epoch 1, counted from 0), as the official code
@METHODS.register("greedy", params=GreedyParams, version=2, min_modalities=2, max_modalities=2)
class Greedy(Method):
    """MMTM-coupled encoders, re-balanced by curation windows on the conditional learning speed gap."""

    @classmethod
    def check_config(cls, p, c, modalities):
        check_epoch_window("start_epoch", p.start_epoch, c["train"]["epochs"], what="curation")

    def __init__(self, params: GreedyParams, ctx):
        super().__init__(params, ctx)
        if len(set(params.mmtm_after)) != len(params.mmtm_after) or not params.mmtm_after:
            raise ConfigError("mmtm_after must list distinct trunk child indices", key="method.mmtm_after")
        self.mods = list(ctx.modalities)
        self.after: list[int] = []
        self.m_main = [0.0, 0.0]
        self.m_bypass = [0.0, 0.0]
        self.d = 0.0
        self.curating = False
        self.caring: int | None = None
        self.cur_step = 0
        self.epoch_log = self._fresh_log()

    @staticmethod
    def _fresh_log() -> dict:
        return {"curation_steps": 0, "windows": [0, 0], "steps": 0}

    # -- model ---------------------------------------------------------------------------
    def setup(self, model) -> None:
        encs = [model.encoders[m] for m in self.mods]
        for m, e in zip(self.mods, encs):
            if not (hasattr(e, "trunk") and hasattr(e, "kind")):
                raise ConfigError(f"greedy needs image encoders (spectrogram / frames); modality {m!r} "
                                  f"has {type(e).__name__}", key="model.backbone")
        n = [len(list(e.trunk.children())) for e in encs]
        if n[0] != n[1]:
            raise ConfigError(f"greedy needs trunks with the same number of stages ({n[0]} vs {n[1]})",
                              key="model.backbone")
        after = []
        for i in self.p.mmtm_after:
            j = i + n[0] if i < 0 else i
            if not 0 <= j < n[0]:
                raise ConfigError(f"trunk child {i} does not exist (the trunk has {n[0]})", key="method.mmtm_after")
            after.append(j)
        if len(set(after)) != len(after):
            raise ConfigError("mmtm_after names one trunk child twice", key="method.mmtm_after")
        self.after = sorted(after)
        from ..models.mmtm import MMTM

        model.greedy_mmtm = nn.ModuleDict({
            f"after{j}": MMTM(_channels_after(encs[0].trunk, j), _channels_after(encs[1].trunk, j),
                              self.p.ratio, self.p.double_gate)
            for j in self.after})

    def _run(self, model, batch: dict, cut: int | None, update: bool) -> ModelOutput:
        encs = [model.encoders[m] for m in self.mods]
        blocks = model.greedy_mmtm
        insert = {j: (lambda hs, bts, blk=blocks[f"after{j}"]: blk(hs, bts, cut=cut, bypass=self.p.bypass,
                                                                    update=update))
                  for j in self.after}
        feats = staged_encode(encs, [batch[m] for m in self.mods], insert)
        return model.head(dict(zip(self.mods, feats)))

    def forward(self, model, batch, st):
        cut = self.caring if self.curating else None
        return self._run(model, batch, cut, update=model.training)

    def predict(self, model, batch):
        return self._run(model, batch, None, update=False)

    # -- speeds and curation -------------------------------------------------------------
    def branch_params(self, model) -> tuple[list[list], list[list]]:
        """(main, bypass) parameter lists per modality index."""
        main = [list(model.encoders[m].parameters()) for m in self.mods]
        bypass: list[list] = [[], []]
        for blk in model.greedy_mmtm.values():
            for k in range(2):
                bypass[k] += list(blk.squeeze_fc.parameters()) + list(blk.excite[k].parameters())
        return main, bypass

    def step(self, model, epoch: int, found_inf=None) -> None:
        """After one backward: advance a curation window, or accumulate speeds and decide.

        ``found_inf`` (``st.found_inf``: > 0 when GradScaler skips this step, fp16 only): a skipped
        step counts for nothing -- its speeds (inf/NaN) are not added, nothing is decided, a
        window does not advance (its length counts the updates the cared-for modality gets) and
        the epoch's step counts leave it out -- as if the batch had not been trained on."""
        if self.curating:
            # fp16 only: the flag GradScaler.step reads on the host right after (no extra wait)
            if found_inf is not None and found_inf.item() > 0:
                return
            self.epoch_log["steps"] += 1
            self.epoch_log["curation_steps"] += 1
            self.cur_step += 1
            if self.cur_step >= self.p.window:
                self.curating = False
            return
        main, bypass = self.branch_params(model)
        # the one host sync of this step: whether a curation window starts decides the next
        # forward pass (the official algorithm's decision, per step); the scaler's flag comes along
        ratios = [speed_ratio(main[0]), speed_ratio(main[1]), speed_ratio(bypass[0]), speed_ratio(bypass[1])]
        if found_inf is not None:
            ratios.append(found_inf.to(device=ratios[0].device, dtype=torch.float64))
        speeds = torch.stack(ratios).tolist()
        if found_inf is not None and speeds[4] > 0:
            return
        self.epoch_log["steps"] += 1
        for k in range(2):
            self.m_main[k] += speeds[k]
            self.m_bypass[k] += speeds[2 + k]
        self.d = speed_gap(self.m_main, self.m_bypass)
        target = curation_target(self.d, self.p.epsilon) if epoch >= self.p.start_epoch else None
        if target is not None:
            self.curating, self.caring, self.cur_step = True, target, 0
            self.epoch_log["windows"][target] += 1

    def after_backward(self, model, out, batch, st: TrainState) -> None:
        self.step(model, st.epoch, st.found_inf)

    def on_epoch_start(self, st: TrainState) -> None:
        self.epoch_log = self._fresh_log()

    def on_epoch_end(self, st: TrainState) -> dict:
        lg = self.epoch_log
        rec = {"greedy_d": float(self.d), "greedy_curation_steps": int(lg["curation_steps"]),
               "greedy_curation_frac": lg["curation_steps"] / max(lg["steps"], 1)}
        for k, m in enumerate(self.mods):
            rec[f"greedy_windows_{m}"] = int(lg["windows"][k])
            rec[f"greedy_speed_main_{m}"] = float(self.m_main[k])
            rec[f"greedy_speed_bypass_{m}"] = float(self.m_bypass[k])
        return rec

    # -- checkpointing (the MMTM weights and running means live in the model's state dict) --
    def state_dict(self) -> dict:
        return {"m_main": list(self.m_main), "m_bypass": list(self.m_bypass), "d": self.d,
                "curating": self.curating, "caring": self.caring, "cur_step": self.cur_step,
                "epoch_log": {"curation_steps": self.epoch_log["curation_steps"],
                              "windows": list(self.epoch_log["windows"]), "steps": self.epoch_log["steps"]}}

    def load_state_dict(self, s: dict) -> None:
        self.m_main, self.m_bypass = list(s["m_main"]), list(s["m_bypass"])
        self.d, self.curating, self.caring, self.cur_step = s["d"], s["curating"], s["caring"], s["cur_step"]
        lg = s["epoch_log"]
        self.epoch_log = {"curation_steps": lg["curation_steps"], "windows": list(lg["windows"]),
                          "steps": lg["steps"]}
