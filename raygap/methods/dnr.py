"""D&R: Diagnosing & Re-learning (Wei, Li, Feng, Hu, ECCV 2024), after the official
GeWu-Lab/Diagnosing_Relearning_ECCV2024 ``code/ours.py``.

Training loss: CE of the fused output. After the training pass and evaluation of every epoch
e > 0 with e % ``every`` == 0 (at most ``max_reinits`` times), i.e. at the start of epoch e + 1:
  for each modality m:
    features of encoder m on the training and on the validation split (eval mode), each scaled
    to [-1, 1] per dimension (min-max, fitted on that split), k-means with K = number of classes
    (sklearn, fixed ``random_state``), purity P = fraction of samples whose label is the majority
    label of their cluster;
    gap_m = |P_train - P_val| (``gap: abs``, official) or P_train - P_val (``gap: signed``);
    w_m   = clip(tanh(lambda * gap_m), 0, 1);
    theta <- w_m * theta_init + (1 - w_m) * theta    for every parameter of encoder m.
The fusion head, BatchNorm running statistics and the optimizer state are left as they are
(as in the official code); ``reset_optimizer: true`` rebuilds the optimizer after a re-init.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from .base import Method, TrainState

torch = lazy("torch")


@dataclass
class DnRParams:
    every: int = F(20, range=(1, 100000), help="re-initialize after every N-th epoch (epochs N, 2N, ...; not 0)")
    max_reinits: int = F(3, range=(0, 100000), help="at most this many re-initializations (official reinit_num)")
    lam: float = F(3.0, range=(0.0, 1000.0), help="w = tanh(lambda * gap)")
    gap: str = F("abs", choices=["abs", "signed"],
                 help="abs: |P_train - P_val| (official); signed: P_train - P_val, no re-init when <= 0")
    kmeans_n_init: int = F(10, range=(1, 1000), help="k-means restarts (sklearn n_init)")
    kmeans_seed: int = F(0, range=(0, 2**31 - 1), help="k-means random_state (official: 0)")
    reset_optimizer: bool = F(False, help="rebuild the optimizer after a re-initialization (official: no)")


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of samples whose label is the most frequent label of their cluster."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if len(labels) == 0:
        return float("nan")
    hit = 0
    for c in np.unique(clusters):
        _, counts = np.unique(labels[clusters == c], return_counts=True)
        hit += int(counts.max())
    return hit / len(labels)


def cluster_purity(feats: np.ndarray, labels: np.ndarray, k: int, n_init: int = 10, seed: int = 0) -> float:
    """Purity of k-means clusters of min-max scaled ([-1, 1]) features."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(np.asarray(feats, dtype=np.float64))
    k = max(1, min(k, len(np.unique(x, axis=0))))   # never more clusters than distinct points
    pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return purity(labels, pred)


def reinit_weight(gap: float, lam: float, mode: str = "abs") -> float:
    """w = clip(tanh(lam * g), 0, 1) with g = |gap| (abs) or gap (signed)."""
    g = abs(gap) if mode == "abs" else gap
    return float(min(1.0, max(0.0, math.tanh(lam * g))))


def soft_reinit(module: torch.nn.Module, init: dict[str, torch.Tensor], w: float) -> None:
    """theta <- w * theta_init + (1 - w) * theta for every parameter of ``module`` (in place)."""
    if w <= 0:
        return
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.mul_(1.0 - w).add_(init[name].to(p.device, p.dtype), alpha=w)


@METHODS.register("dnr", params=DnRParams, version=1)
class DnR(Method):
    """Plain CE training; every N epochs each encoder is pulled back toward its initialization by
    w = tanh(lambda * purity gap between training and validation k-means clusters)."""

    @classmethod
    def check_config(cls, p, c, modalities):
        from ..errors import ConfigError

        epochs = c["train"]["epochs"]
        if p.every + 1 >= epochs:      # the first re-initialization is at the start of epoch every + 1
            raise ConfigError(f"{p.every}: the first re-initialization would be at epoch {p.every + 1}, but the "
                              f"trial trains epochs 0..{epochs - 1}: D&R would be plain Concat",
                              key="method.every", hint=f"set method.every below {epochs - 1}")

    def __init__(self, params: DnRParams, ctx):
        super().__init__(params, ctx)
        self.init: dict[str, dict[str, torch.Tensor]] = {}
        self.n_reinits = 0
        self._log: dict = {}

    def setup(self, model) -> None:
        self.init = {m: {n: p.detach().cpu().clone() for n, p in model.encoders[m].named_parameters()}
                     for m in self.ctx.modalities}

    def due(self, epoch: int) -> bool:
        """Re-initialize at the start of ``epoch``: the previous epoch was a positive multiple of N."""
        prev = epoch - 1
        return prev > 0 and prev % self.p.every == 0 and self.n_reinits < self.p.max_reinits

    def diagnose(self, st: TrainState) -> dict[str, dict[str, float]]:
        tr = st.predict_split("train", indices=st.train_indices, features=True)
        va = st.predict_split("val", features=True)
        k, p = self.ctx.num_classes, self.p
        out = {}
        for m in self.ctx.modalities:
            pt = cluster_purity(tr[f"feat_{m}"], tr["label"], k, p.kmeans_n_init, p.kmeans_seed)
            pv = cluster_purity(va[f"feat_{m}"], va["label"], k, p.kmeans_n_init, p.kmeans_seed)
            out[m] = {"purity_train": pt, "purity_val": pv, "gap": pt - pv,
                      "w": reinit_weight(pt - pv, p.lam, p.gap)}
        return out

    def on_epoch_start(self, st: TrainState) -> None:
        self._log = {}
        if not self.due(st.epoch):
            return
        diag = self.diagnose(st)
        for m, d in diag.items():
            soft_reinit(st.model.encoders[m], self.init[m], d["w"])
            self._log.update({f"dnr_{k}_{m}": float(v) for k, v in d.items()})
        self.n_reinits += 1
        self._log["dnr_reinit"] = self.n_reinits
        if self.p.reset_optimizer:
            st.optimizer = st.new_optimizer()
        st.log(f"dnr: re-init {self.n_reinits} before epoch {st.epoch}: "
               + ", ".join(f"{m} w={d['w']:.3f} (purity {d['purity_train']:.3f}/{d['purity_val']:.3f})"
                           for m, d in diag.items()))

    def on_epoch_end(self, st: TrainState) -> dict:
        rec = {"dnr_reinits": self.n_reinits}
        rec.update(self._log)
        return rec

    def state_dict(self) -> dict:
        return {"init": self.init, "n_reinits": self.n_reinits}

    def load_state_dict(self, s: dict) -> None:
        self.init = {m: {n: t.cpu().clone() for n, t in d.items()} for m, d in s["init"].items()}
        self.n_reinits = s["n_reinits"]

