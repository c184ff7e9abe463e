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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as Fn

from ..errors import ConfigError
from ..params import F
from ..registry import METHODS
from .base import Method, TrainState


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


def statistical_loss_classification(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """KL(prior || mean_batch softmax(logits)); classes with prior 0 contribute 0."""
    pbar = Fn.softmax(logits.float(), dim=1).mean(0).clamp_min(1e-12)
    pri = prior.to(pbar)
    nz = pri > 0
    return (pri[nz] * (pri[nz].log() - pbar[nz].log())).sum()


def conflict_ratios(g: dict[str, float]) -> dict[str, float]:
    """rho_m = G_m / mean_k G_k (all ones when every G is 0)."""
    mean = sum(g.values()) / max(len(g), 1)
    return {m: (v / mean if mean > 0 else 1.0) for m, v in g.items()}


def conflict_coefficient(rho: float, alpha: float, k_min: float) -> float:
    return max(k_min, 1.0 - math.tanh(alpha * (rho - 1.0)))


def project_off(d: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The component of ``d`` along ``s`` to remove when cos(d, s) < 0, and whether it applied."""
    dot = (d * s).sum()
    ss = (s * s).sum()
    if dot >= 0 or ss <= 0:
        return torch.zeros_like(d), False
    return (dot / ss) * s, True


def rms_grad(params) -> float:
    sq, n = 0.0, 0
    for p in params:
        n += p.numel()
        if p.grad is not None:
            sq += float(p.grad.detach().float().pow(2).sum())
    return math.sqrt(sq / n) if n else 0.0


# ----------------------------------------------------------------------------- the method
@METHODS.register("cpsl", params=CPSLParams, version=1)
class CPSL(Method):
    """Conflict-aware Penalty (gradient scaling + projection) and Statistical Loss, any number of modalities."""

    tasks = ("classification", "regression")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.stats: dict | None = None       # fixed from the training labels before the first epoch
        self._pending = None
        self._reset_counters()

    def _reset_counters(self):
        self.c = {"steps": 0, "conflict": 0, "projected": 0,
                  **{f"rho_{m}": 0.0 for m in self.ctx.modalities}, **{f"k_{m}": 0.0 for m in self.ctx.modalities}}

    def setup(self, model):
        if self.p.cp and self.p.project and not hasattr(model.fusion, "head_weight"):
            raise ConfigError("cpsl's projection acts on a fusion head that splits by modality: "
                              "use model.fusion: gated (or method.project: false)", key="model.fusion")

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
        self._reset_counters()

    def sl_loss(self, fused: torch.Tensor) -> torch.Tensor:
        if self.ctx.task == "regression":
            return statistical_loss_regression(fused, self.stats["mu"], self.stats["sigma"])
        return statistical_loss_classification(fused, torch.tensor(self.stats["prior"]))

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
        self.c["steps"] += 1
        any_conflict = False
        for m in mods:
            k = 1.0
            if rho[m] > self.p.tau:
                any_conflict = True
                k = conflict_coefficient(rho[m], self.p.alpha, self.p.k_min)
                for p in model.encoders[m].parameters():
                    if p.grad is not None:
                        p.grad.mul_(k)
            self.c[f"rho_{m}"] += rho[m]
            self.c[f"k_{m}"] += k
        self.c["conflict"] += int(any_conflict)
        if self._pending is not None:
            delta, s_grad, extras = self._pending
            dom = max(mods, key=lambda m: rho[m])
            c = extras.get(f"contrib_{dom}")
            if s_grad is not None and c is not None:
                d_part = delta.t() @ c.float()                    # (K, H): the dominant modality's share
                remove, applied = project_off(d_part, s_grad)
                if applied:
                    W = model.fusion.head_weight
                    W.grad.sub_(remove.to(W.grad.dtype))
                    self.c["projected"] += 1
            self._pending = None

    def on_epoch_end(self, st):
        n = max(self.c["steps"], 1)
        rec = {}
        if self.p.cp:
            rec["conflict_rate"] = self.c["conflict"] / n
            rec["projection_rate"] = self.c["projected"] / n
            for m in self.ctx.modalities:
                rec[f"rho_{m}"] = self.c[f"rho_{m}"] / n
                rec[f"k_{m}"] = self.c[f"k_{m}"] / n
        return rec

    def state_dict(self):
        return {"stats": self.stats}

    def load_state_dict(self, state):
        self.stats = state.get("stats")
