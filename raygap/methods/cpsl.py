"""CPSL: Conflict-aware Penalty and Statistical Loss (the second paper, from its abstract only).

Loss per batch (classification or regression):
    L = L_task(fused) + a * sum_m L_task(aux_m) + lam * SL
    SL (regression)     = (mean_B(y_hat) - mu_train)^2 + (std_B(y_hat) - sigma_train)^2
    SL (classification) = KL(pi_train || mean_B softmax(fused))
Conflict-aware penalty, after the backward pass (``after_backward``):
    G_m   = ||grad theta_m|| / sqrt(|theta_m|)  (encoder m's RMS gradient)
    rho_m = G_m / mean_k G_k;  modality m is in conflict when rho_m > tau
    k_m   = max(k_min, 1 - tanh(alpha * (rho_m - 1)))  scales encoder m's gradient when in conflict
    on the fusion head W (fused = W z + b, z = sum_m c_m), the dominant modality's part of the
    task gradient, D = delta^T c_d (d = argmax rho), is projected off the SL gradient S = dSL/dW
    when cos(D, S) < 0:  W.grad -= (<D, S> / ||S||^2) S,  so the dominant part can no longer undo SL.
Which parts come from the abstract and which are raygap's own choices: docs/method-cpsl.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..lazy import lazy
from ..params import F
from ..registry import FUSIONS, METHODS
from .base import Method, TrainState, scalar

torch = lazy("torch")
Fn = lazy("torch.nn.functional")


@dataclass
class CPSLParams:
    cp: bool = F(True, help="conflict-aware penalty: gradient scaling of conflicting encoders + head projection")
    sl: bool = F(True, help="statistical loss")
    aux_weight: float = F(1.0, range=(0.0, 100.0), help="weight a of the unimodal auxiliary heads' losses (0: none)")
    sl_weight: float = F(1.0, range=(0.0, 100.0), help="weight lam of the statistical loss")
    tau: float = F(1.2, range=(1.0, 100.0), help="a modality is in conflict when rho_m > tau")
    alpha: float = F(1.0, range=(0.0, 100.0), help="sharpness of k_m = 1 - tanh(alpha (rho_m - 1))")
    k_min: float = F(0.1, range=(0.0, 1.0), help="floor of the gradient coefficient k_m")
    project: bool = F(True, help="project the dominant modality's head gradient off the SL gradient when they conflict")


# ----------------------------------------------------------------------------- formulas
def statistical_loss_regression(pred: torch.Tensor, mu: float, sigma: float) -> torch.Tensor:
    """(mean(pred) - mu)^2 + (std(pred) - sigma)^2, population std over the batch."""
    p = pred.reshape(-1).float()
    return (p.mean() - mu) ** 2 + (p.std(unbiased=False) - sigma) ** 2


def prior_support(prior, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the classes with prior > 0, their priors as float32) on ``device``: made once, outside the
    training step (it takes a nonzero and a host-to-device copy, both host waits on CUDA)."""
    pri = torch.as_tensor(prior, dtype=torch.float32)
    idx = (pri > 0).nonzero().squeeze(1)
    return idx.to(device), pri[idx].to(device)


def statistical_loss_classification(logits: torch.Tensor, prior) -> torch.Tensor:
    """KL(prior || mean_batch softmax(logits)); classes with prior 0 contribute 0. ``prior``: the
    class priors, or their :func:`prior_support` (what a training step passes: a gather by
    indices fixed beforehand, never a mask, whose nonzero would wait on the host)."""
    pbar = Fn.softmax(logits.float(), dim=1).mean(0).clamp_min(1e-12)
    idx, pri = prior if isinstance(prior, tuple) else prior_support(prior, pbar.device)
    q = pbar[idx]
    return (pri * (pri.log() - q.log())).sum()


# Per step everything stays on the device (0-dim tensors, no branch on a device value): the
# training step never waits for the GPU. Plain floats are accepted too (hand-computed checks).


def conflict_ratios(g: dict) -> dict[str, torch.Tensor]:
    """rho_m = G_m / mean_k G_k (all ones when every G is 0)."""
    gs = {m: scalar(v) for m, v in g.items()}
    mean = sum(gs.values()) / max(len(gs), 1)
    return {m: torch.where(mean > 0, v / mean.clamp_min(1e-300), torch.ones_like(v)) for m, v in gs.items()}


def conflict_coefficient(rho, alpha: float, k_min: float) -> torch.Tensor:
    return (1.0 - torch.tanh(alpha * (scalar(rho) - 1.0))).clamp_min(k_min)


def project_off(d: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The component of ``d`` along ``s`` to remove when cos(d, s) < 0, and whether it applied
    (a 0-dim bool tensor)."""
    dot = (d * s).sum()
    ss = (s * s).sum()
    applied = (dot < 0) & (ss > 0)
    return torch.where(applied, dot / ss.clamp_min(1e-30), torch.zeros_like(dot)) * s, applied


def rms_grad(params) -> torch.Tensor:
    """sqrt(sum of squared gradients / number of parameters), 0-dim float64 on the device."""
    params = list(params)
    n = sum(p.numel() for p in params)
    sq = [p.grad.detach().float().pow(2).sum().double() for p in params if p.grad is not None]
    if not sq or not n:
        return torch.zeros((), dtype=torch.float64, device=params[0].device if params else None)
    return (torch.stack(sq).sum() / n).sqrt()


# ----------------------------------------------------------------------------- the method
@METHODS.register("cpsl", params=CPSLParams, version=1)
class CPSL(Method):
    """Conflict-aware Penalty (gradient scaling + projection) and Statistical Loss, any number of modalities."""

    tasks = ("classification", "regression")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.stats: dict | None = None       # fixed from the training labels before the first epoch
        self._prior = None                   # the prior's prior_support on the device (classification)
        self._pending = None
        self._reset_counters()

    def _reset_counters(self):
        self.c = {"steps": 0, "conflict": 0, "projected": 0,
                  **{f"rho_{m}": 0.0 for m in self.ctx.modalities}, **{f"k_{m}": 0.0 for m in self.ctx.modalities}}

    @classmethod
    def check_config(cls, p, c, modalities):
        fusion = c["model"]["fusion"]
        if p.cp and p.project and not FUSIONS.get(fusion).meta.get("head_weight"):
            raise ConfigError(f"cpsl's projection acts on a fusion head that splits by modality; {fusion} does not",
                              key="model.fusion", hint="use model.fusion: gated (or method.project: false)")

    def _fix_stats(self, st: TrainState):
        y = st.data.train.labels
        y = (y if torch.is_tensor(y) else torch.as_tensor(y)).float()
        if self.ctx.task == "regression":
            self.stats = {"mu": float(y.mean()), "sigma": float(y.std(unbiased=False))}
        else:
            counts = torch.bincount(y.long(), minlength=self.ctx.num_classes).float()
            self.stats = {"prior": (counts / counts.sum()).tolist()}

    def on_epoch_start(self, st):
        if self.stats is None:
            self._fix_stats(st)
        if "prior" in self.stats:
            self._prior = prior_support(self.stats["prior"], self.ctx.device)
        self._reset_counters()

    def sl_loss(self, fused: torch.Tensor) -> torch.Tensor:
        if self.ctx.task == "regression":
            return statistical_loss_regression(fused, self.stats["mu"], self.stats["sigma"])
        return statistical_loss_classification(fused, self._prior)

    def loss(self, out, batch, st):
        y = batch["label"]
        task = self.task_loss(out.fused, y)
        loss, logs = task, {"loss_task": task.detach()}
        if self.p.aux_weight > 0:
            for m, l in out.logits.items():
                lm = self.task_loss(l, y)
                logs[f"loss_{m}"] = lm.detach()
                loss = loss + self.p.aux_weight * lm
        sl = None
        if self.p.sl and self.p.sl_weight > 0:
            sl = self.sl_loss(out.fused)
            logs["loss_sl"] = sl.detach()
            loss = loss + self.p.sl_weight * sl
        self._pending = None
        if self.p.cp and self.p.project and sl is not None and out.fused.requires_grad:
            W = st.model.fusion.head_weight
            delta = torch.autograd.grad(task, out.fused, retain_graph=True)[0]
            s_grad = torch.autograd.grad(self.p.sl_weight * sl, W, retain_graph=True, allow_unused=True)[0]
            self._pending = (delta.detach().float(), None if s_grad is None else s_grad.detach().float(), out.extras)
        return loss, logs

    def after_backward(self, model, out, batch, st):
        if not self.p.cp:
            return
        mods = self.ctx.modalities
        g = {m: rms_grad(model.encoders[m].parameters()) for m in mods}
        rho = conflict_ratios(g)
        skip = st.found_inf                  # > 0: GradScaler skips this step (fp16): its statistics do not count

        def kept(v):
            return v if skip is None else torch.where(skip > 0, torch.zeros_like(v), v)

        self.c["steps"] = self.c["steps"] + (1 if skip is None else (skip <= 0).double())
        any_conflict = None
        for m in mods:
            hit = rho[m] > self.p.tau
            k = torch.where(hit, conflict_coefficient(rho[m], self.p.alpha, self.p.k_min), torch.ones_like(rho[m]))
            for p in model.encoders[m].parameters():
                if p.grad is not None:
                    p.grad.mul_(k.to(p.grad.dtype))
            any_conflict = hit if any_conflict is None else (any_conflict | hit)
            self.c[f"rho_{m}"] = self.c[f"rho_{m}"] + kept(rho[m])
            self.c[f"k_{m}"] = self.c[f"k_{m}"] + kept(k)
        self.c["conflict"] = self.c["conflict"] + kept(any_conflict.double())
        if self._pending is not None:
            delta, s_grad, extras = self._pending
            contrib = [extras.get(f"contrib_{m}") for m in mods]
            if s_grad is not None and all(c is not None for c in contrib):
                # the dominant modality's share (K, H), chosen on the device: every modality's
                # share weighted by a one-hot of argmax rho (ties: the first, as max())
                top = torch.stack([rho[m] for m in mods]).argmax()
                dom = (torch.arange(len(mods), device=top.device) == top).to(delta.dtype)
                d_part = sum(dom[i] * (delta.t() @ c.float()) for i, c in enumerate(contrib))
                remove, applied = project_off(d_part, s_grad)
                W = model.fusion.head_weight
                W.grad.sub_(remove.to(W.grad.dtype))
                self.c["projected"] = self.c["projected"] + kept(applied.double())
            self._pending = None

    def on_epoch_end(self, st):
        n = max(float(self.c["steps"]), 1.0)
        rec = {}
        if self.p.cp:
            rec["conflict_rate"] = float(self.c["conflict"]) / n
            rec["projection_rate"] = float(self.c["projected"]) / n
            for m in self.ctx.modalities:
                rec[f"rho_{m}"] = float(self.c[f"rho_{m}"]) / n
                rec[f"k_{m}"] = float(self.c[f"k_{m}"]) / n
        return rec

    def state_dict(self):
        return {"stats": self.stats}

    def load_state_dict(self, state):
        self.stats = state.get("stats")
