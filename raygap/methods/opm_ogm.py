"""OPM & OGM: on-the-fly prediction modulation (feature dropping) plus gradient modulation
(Wei, Hu et al., "On-the-fly Modulation for Balanced Multimodal Learning", TPAMI 2024;
GeWu-Lab/BML_TPAMI2024).

Per training batch (after ``warmup_epochs`` epochs):
* the encoders run once; the unimodal scores s_m come from those same features through the
  detached fusion head (as the official code: no second pass), rho_m = s_m / mean_{j!=m} s_j;
* OPM: with probability p_exe the batch is modulated: q_m = q_base * (1 + lam * tanh(relu(rho_m - 1)))
  for rho_m > 1, else 0 (clipped to [0, 1]); each sample's features of modality m are zeroed with
  probability q_m before ``model.head``; with ``rescale: bml`` every modality's features are then
  divided by (1 - theta), theta = sum_m D_m q_m / sum_m D_m (the official custom autograd op);
* OGM: after the backward pass of CE(fused), the gradient modulation of ``ogm_ge`` with the
  coefficients from the same scores (from the features before dropping).
Drops draw from a torch.Generator on the device, whether a batch is modulated from a host-side
random.Random, both seeded from the trial seed (kept in the checkpoint); nothing per batch waits
for the device. Evaluation never drops.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from .base import Method, check_epoch_window, scalar
from .ogm_ge import OGMGEParams, OGMStats, modality_scores, modulate_gradients, ogm_coefficients, score_ratios

torch = lazy("torch")


@dataclass
class OPMOGMParams(OGMGEParams):
    """OGM-GE's keys (alpha, coeff, the window, modulate, ge_noise_to) plus OPM's."""
    q_base: float = F(0.5, range=(0.0, 1.0), help="base drop probability of the dominant modality")
    lam: float = F(0.5, range=(0.0, 100.0), help="lambda of q = q_base * (1 + lam * tanh(relu(rho - 1)))")
    p_exe: float = F(0.7, range=(0.0, 1.0), help="probability that a batch is modulated by OPM")
    rescale: str = F("bml", choices=["bml", "none"],
                     help="bml: divide the features by 1 - theta after dropping (official); none: no rescaling")
    warmup_epochs: int = F(6, range=(0, 100000),
                           help="epochs [0, W) without OPM or OGM (official: epoch <= 5)")
    ogm: bool = F(True, help="apply OGM gradient modulation (false: OPM alone)")


def drop_probabilities(ratios: dict, q_base: float, lam: float) -> dict[str, torch.Tensor]:
    """q_m = clip(q_base * (1 + lam * tanh(relu(rho_m - 1))), 0, 1) where rho_m > 1, else 0
    (0-dim tensors, on the ratios' device)."""
    q = {}
    for m, r in ratios.items():
        t = torch.tanh(torch.relu(scalar(r) - 1.0))
        q[m] = torch.where(t > 0, (q_base * (1.0 + lam * t)).clamp(0.0, 1.0), torch.zeros_like(t))
    return q


# version 2: the execute draw on the host, drop masks for every modality on the device (other
# random streams than version 1), ratios in float32
# version 3: OGM's window end epoch included, as BML's official test (train_ogm.sh's 6..60: 55 epochs)
@METHODS.register("opm_ogm", params=OPMOGMParams, version=3, min_modalities=2)
class OPMOGM(Method):
    """Drop the dominant modality's features at rate q (OPM) and scale its gradients by k (OGM)."""

    @classmethod
    def check_config(cls, p, c, modalities):
        check_epoch_window("warmup_epochs", p.warmup_epochs, c["train"]["epochs"], what="OPM and OGM")
        if p.ogm:
            p.check_window(c["train"]["epochs"], "OGM's gradient modulation")

    def __init__(self, params: OPMOGMParams, ctx):
        super().__init__(params, ctx)
        seed = int(ctx.config.seed) * 7919 + 17
        self.gen = torch.Generator(device=ctx.device)    # the drop masks, drawn on the device
        self.gen.manual_seed(seed)
        self.rng = random.Random(seed)                    # whether a batch is modulated: a host decision
        self.stats = OGMStats()
        self._batch: dict = {}
        self._reset_opm()

    def _reset_opm(self):
        self.opm = {"batches": 0, "executed": 0, "q": {}, "dropped": {}, "samples": 0}

    def active(self, epoch: int) -> bool:
        return epoch >= self.p.warmup_epochs

    # -- per batch -------------------------------------------------------------------
    def forward(self, model, batch, st):
        feats = model.encode(batch)
        clean = model.head(feats)
        ms = self.ctx.modalities
        scores = modality_scores({m: clean.logits[m] for m in ms}, batch["label"])
        rho = score_ratios(scores)
        self._batch = {"rho": rho}
        if not self.active(st.epoch):
            return clean
        B = len(batch["label"])
        self.opm["batches"] += 1
        self.opm["samples"] += B
        if not self.rng.random() < self.p.p_exe:
            return clean
        q = drop_probabilities(rho, self.p.q_base, self.p.lam)
        # on the device, no branch on q: a modality with q = 0 keeps every sample
        self.opm["executed"] = self.opm["executed"] + (torch.stack(list(q.values())).max() > 0).float()
        dropped, extras = {}, {}
        for m in ms:
            f = feats[m]
            keep = (torch.rand(B, generator=self.gen, device=f.device) >= q[m].to(f.device)).float()
            self.opm["q"][m] = self.opm["q"].get(m, 0.0) + q[m].detach().double()
            self.opm["dropped"][m] = self.opm["dropped"].get(m, 0) + (B - keep.sum())
            dropped[m] = f * keep.to(dtype=f.dtype).view(-1, *([1] * (f.dim() - 1)))
            extras[f"drop_{m}"] = keep == 0
        if self.p.rescale == "bml":
            dims = {m: feats[m][0].numel() for m in ms}
            theta = sum(dims[m] * q[m] for m in ms) / sum(dims.values())
            scale = torch.where(theta < 1.0, 1.0 / (1.0 - theta).clamp_min(1e-12), torch.ones_like(theta))
            dropped = {m: f * scale.to(device=f.device, dtype=f.dtype) for m, f in dropped.items()}
        out = model.head(dropped)
        # the per-modality logits reported are those before dropping (what the scores use)
        out.logits, out.features = clean.logits, feats
        out.extras = {**out.extras, **extras}
        return out

    def after_backward(self, model, out, batch, st):
        rho = self._batch.get("rho")
        if rho is None:
            return
        k = ogm_coefficients(rho, self.p.alpha, self.p.coeff)
        on = self.p.ogm and self.active(st.epoch) and self.p.in_window(st.epoch)
        if on:
            modulate_gradients(model, k, modulate=self.p.modulate, noise_to=self.p.ge_noise_to)
        self.stats.add(k, rho, on)

    # -- per epoch -------------------------------------------------------------------
    def on_epoch_start(self, st):
        self.stats.reset()
        self._reset_opm()

    def on_epoch_end(self, st):
        rec = self.stats.record(self.ctx.modalities)
        o = self.opm
        executed = float(o["executed"])
        rec["opm_exec_frac"] = executed / max(o["batches"], 1)
        for m in self.ctx.modalities:
            rec[f"opm_q_{m}"] = float(o["q"].get(m, 0.0)) / max(executed, 1)
            rec[f"opm_drop_rate_{m}"] = float(o["dropped"].get(m, 0)) / max(o["samples"], 1)
        return rec

    def state_dict(self) -> dict:          # (a generator's state is a CPU ByteTensor, whatever its device)
        return {"gen": self.gen.get_state(), "gen_device": self.gen.device.type, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        kind = state.get("gen_device", self.gen.device.type)
        if kind != self.gen.device.type:       # a CPU (mt19937) and a CUDA (Philox) state are not interchangeable
            from ..errors import CheckpointDeviceMismatch
            raise CheckpointDeviceMismatch(f"opm_ogm: the drop-mask generator's state is a {kind} generator's; "
                                           f"this trial draws on {self.gen.device.type}")
        if "gen" in state:
            self.gen.set_state(state["gen"])
        if "rng" in state:
            self.rng.setstate(state["rng"])
