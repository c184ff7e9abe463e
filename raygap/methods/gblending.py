"""G-Blending: Gradient-Blending (Wang, Tran, Feiszli, CVPR 2020), online, on the run's own trajectory.

Branches k: the fused output and each modality's logits (``out.logits``: with the concat fusion
the split W^m phi_m + b/M of the fusion layer, with the gated fusion its auxiliary heads).

At the start of epochs 0, n, 2n, ... (n = ``super_epoch``) the mean cross-entropy of every branch
is measured in eval mode on the training split (L^T) and on the validation split (L^V).
Between two consecutive measurements N and N + n:
    O_k   = L^V_k - L^T_k                    overfitting
    dG_k  = L^V_{k,N} - L^V_{k,N+n}          generalization gained (validation loss that went away)
    dO_k  = O_{k,N+n} - O_{k,N}              overfitting gained
    w_k  ∝ g(dG_k) / max(dO_k^2, eps),  sum_k w_k = 1
with g(x) = max(x, 0) (``negative_gain: zero``) or |x| (``negative_gain: abs``).
Per batch:  L = sum_k w_k CE_k.  Before the first estimate (epochs [0, n)) the weights are uniform;
when every branch's numerator is 0 the previous weights are kept.
The choices against the paper (weights estimated from the previous super-epoch of the same run
rather than from n epochs of separately trained copies; branches without separate heads; the
validation split as the held-out set) are argued in the method's docs section.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from .base import Method, TrainState, check_epoch_window

torch = lazy("torch")
Fn = lazy("torch.nn.functional")

FUSED = "fused"


@dataclass
class GBlendingParams:
    super_epoch: int = F(5, range=(1, 100000), help="epochs between two weight estimates (n)")
    eps: float = F(1e-8, range=(1e-20, 1.0), help="floor on dO^2 in w_k = dG_k / dO_k^2")
    negative_gain: str = F("zero", choices=["zero", "abs"],
                           help="a branch whose validation loss rose (dG < 0): zero = no weight, abs = |dG|")


def branch_losses(pred: dict, branches: list[str]) -> dict[str, float]:
    """Mean cross-entropy of each branch's logits in a ``predict_split`` result."""
    y = torch.as_tensor(pred["label"]).long()
    return {k: float(Fn.cross_entropy(torch.as_tensor(pred[k]).double(), y)) for k in branches}


def blend_weights(prev: dict[str, tuple[float, float]], cur: dict[str, tuple[float, float]],
                  eps: float = 1e-8, negative_gain: str = "zero") -> tuple[dict[str, float] | None, dict]:
    """Weights from two measurements ``{k: (L_train, L_val)}``; None when every numerator is 0.

    Returns (weights, details) where details carries O, dG, dO and the raw (unnormalized) weights.
    """
    raw, det = {}, {}
    for k in cur:
        lt0, lv0 = prev[k]
        lt1, lv1 = cur[k]
        o0, o1 = lv0 - lt0, lv1 - lt1
        dg, do = lv0 - lv1, o1 - o0
        gain = max(dg, 0.0) if negative_gain == "zero" else abs(dg)
        raw[k] = gain / max(do * do, eps)
        det.update({f"O_{k}": o1, f"dG_{k}": dg, f"dO_{k}": do, f"raw_{k}": raw[k]})
    total = sum(raw.values())
    if not np.isfinite(total) or total <= 0:
        return None, det
    return {k: v / total for k, v in raw.items()}, det


@METHODS.register("gblending", params=GBlendingParams, version=1)
class GBlending(Method):
    """L = sum_k w_k CE_k over the fused output and each modality's logits, the weights
    re-estimated every super-epoch from each branch's overfitting-to-generalization behaviour."""

    @classmethod
    def check_config(cls, p, c, modalities):
        check_epoch_window("super_epoch", p.super_epoch, c["train"]["epochs"],
                           what="G-Blending's first weight estimate (at epoch super_epoch)")

    def __init__(self, params: GBlendingParams, ctx):
        super().__init__(params, ctx)
        if FUSED in ctx.modalities:
            raise ValueError(f"gblending names its fused branch {FUSED!r}; a modality may not have that name")
        self.branches = [FUSED] + list(ctx.modalities)
        self.weights = {k: 1.0 / len(self.branches) for k in self.branches}
        self.last: dict[str, tuple[float, float]] | None = None   # (L_train, L_val) at the last boundary
        self.last_epoch = -1
        self.n_estimates = 0
        self._log: dict = {}

    def on_epoch_start(self, st: TrainState) -> None:
        self._log = {}
        if st.epoch % self.p.super_epoch != 0:
            return
        lt = branch_losses(st.predict_split("train", indices=st.train_indices), self.branches)
        lv = branch_losses(st.predict_split("val"), self.branches)
        cur = {k: (lt[k], lv[k]) for k in self.branches}
        for k in self.branches:
            self._log[f"gb_LT_{k}"], self._log[f"gb_LV_{k}"] = cur[k]
        if self.last is not None:
            w, det = blend_weights(self.last, cur, self.p.eps, self.p.negative_gain)
            self._log.update({f"gb_{k}": v for k, v in det.items()})
            self._log["gb_fallback"] = int(w is None)
            if w is None:
                st.log(f"gblending: no branch improved on validation over epochs {self.last_epoch}-{st.epoch}; "
                       "weights kept")
            else:
                self.weights = w
                self.n_estimates += 1
        self.last, self.last_epoch = cur, st.epoch

    def loss(self, out, batch, st):
        y = batch["label"]
        logits = {FUSED: out.fused, **out.logits}
        loss = 0.0
        logs = {}
        for k in self.branches:
            ce = Fn.cross_entropy(logits[k], y)
            logs[f"loss_{k}"] = ce.detach()
            loss = loss + self.weights[k] * ce
        return loss, logs

    def on_epoch_end(self, st: TrainState) -> dict:
        rec = {f"w_{k}": float(v) for k, v in self.weights.items()}
        rec["gb_estimates"] = self.n_estimates
        rec.update(self._log)
        return rec

    def state_dict(self) -> dict:
        return {"weights": dict(self.weights), "last": None if self.last is None else dict(self.last),
                "last_epoch": self.last_epoch, "n_estimates": self.n_estimates}

    def load_state_dict(self, s: dict) -> None:
        self.weights = dict(s["weights"])
        self.last = None if s["last"] is None else {k: tuple(v) for k, v in s["last"].items()}
        self.last_epoch, self.n_estimates = s["last_epoch"], s["n_estimates"]
