"""PMR: Prototypical Modal Rebalance (Fan et al., CVPR 2023), after the official
fanyunfeng-bit/Modal-Imbalance-PMR ``main_Prototype_grad.py``.

Prototypes, at the start of every epoch (the official code computes them before epoch 0 and
after every epoch, the same sequence): c^m_k = mean of modality m's encoder features over the
training samples of class k in a class-stratified random subset (``proto_fraction`` of each
class; eval mode), then c^m <- (1 - mu) c^m + mu c^m_previous (``momentum`` mu; no smoothing on
the first computation, nor on the second, as in the official code).
Per batch:
    prototype logits   p^m_k(x) = -||phi_m(x) - c^m_k||_2        (Euclidean distance, not squared)
    s_m                = sum_i softmax(p^m(x_i))_{y_i}           (summed true-class probability)
    a modality m with s_m < max_j s_j is the weaker one (with two: ratio = s_a / s_v vs 1)
    L = CE(fused) + alpha * sum_{m weaker} CE(p^m, y)             inside [start_epoch, end_epoch]
    L = CE(fused)                                                 outside
The dominant modality's loss is not scaled down (official: its coefficient is 0); the prototypes
are constants, so the prototype CE reaches only the weaker modality's encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from .base import Method, TrainState, check_epoch_window, scalar

torch = lazy("torch")
Fn = lazy("torch.nn.functional")


@dataclass
class PMRParams:
    alpha: float = F(2.0, range=(0.0, 100.0), help="coefficient of the weaker modality's prototype cross-entropy")
    momentum: float = F(0.0, range=(0.0, 1.0), help="EMA mu: c = (1 - mu) * class mean + mu * previous c")
    proto_fraction: float = F(0.1, range=(1e-6, 1.0),
                              help="share of each class's training samples the prototypes are averaged over "
                                   "(official: the first 10% of the shuffled training batches)")
    start_epoch: int = F(0, range=(0, 100000), help="first epoch of the prototype term")
    end_epoch: int = F(70, range=(0, 100000), help="last epoch (inclusive) of the prototype term")


def class_prototypes(feats: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) class means and a (K,) mask of the classes that have at least one sample."""
    protos = np.zeros((num_classes, feats.shape[1]), dtype=np.float64)
    have = np.zeros(num_classes, dtype=bool)
    for k in range(num_classes):
        sel = labels == k
        if sel.any():
            protos[k] = feats[sel].mean(0)
            have[k] = True
    return protos, have


def prototype_logits(feats: torch.Tensor, protos: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """-||f - c_k||_2 for every class k, (B, K); classes without a prototype get -inf."""
    d2 = ((feats[:, None, :] - protos[None, :, :].to(feats)) ** 2).sum(-1)
    logits = -d2.clamp_min(1e-12).sqrt()          # the floor keeps the gradient finite at f == c_k
    if valid is not None:                           # (no branch on the device's values: no host sync)
        logits = logits.masked_fill(~valid.to(logits.device)[None, :], float("-inf"))
    return logits


def true_class_score(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_i softmax(logits_i)_{y_i}."""
    return Fn.softmax(logits, dim=1).gather(1, y[:, None]).sum()


def boost_coefficients(scores: dict, alpha: float) -> dict[str, torch.Tensor]:
    """alpha for every modality whose score is below the best one, 0 for the rest (ties: 0);
    0-dim tensors on the scores' device."""
    sc = {m: scalar(v) for m, v in scores.items()}
    best = torch.stack(list(sc.values())).max()
    return {m: torch.where(v < best, torch.full_like(v, alpha), torch.zeros_like(v)) for m, v in sc.items()}


def stratified_subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """ceil(fraction * n_k) random positions of every class k present (at least one each)."""
    out = []
    for k in np.unique(labels):
        pos = np.flatnonzero(labels == k)
        n = max(1, int(np.ceil(fraction * len(pos))))
        out.append(rng.choice(pos, size=min(n, len(pos)), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


@METHODS.register("pmr", params=PMRParams, version=1, min_modalities=2)
class PMR(Method):
    """CE of the fused output plus alpha * the prototypical CE of the modality whose prototype
    classifier is weaker on the batch (summed true-class probability)."""

    @classmethod
    def check_config(cls, p, c, modalities):
        check_epoch_window("start_epoch", p.start_epoch, c["train"]["epochs"], "end_epoch", p.end_epoch + 1,
                           "the prototype term")

    def __init__(self, params: PMRParams, ctx):
        super().__init__(params, ctx)
        self.protos: dict[str, torch.Tensor] = {}
        self.valid: dict[str, torch.Tensor] = {}
        self.n_computed = 0
        self._log: dict = {}

    def active(self, epoch: int) -> bool:
        return self.p.start_epoch <= epoch <= self.p.end_epoch

    def on_epoch_start(self, st: TrainState) -> None:
        self._log = {}
        labels = np.asarray(st.data.train.labels)
        pool = np.arange(len(labels)) if st.train_indices is None else np.asarray(st.train_indices)
        rng = np.random.default_rng([int(self.ctx.config.seed), int(st.epoch)])
        idx = pool[stratified_subset(labels[pool], self.p.proto_fraction, rng)]
        pred = st.predict_split("train", indices=idx, features=True)
        y = pred["label"].astype(np.int64)
        self.update_prototypes({m: pred[f"feat_{m}"] for m in self.ctx.modalities}, y)
        for m in self.ctx.modalities:   # nearest-prototype accuracy on the samples just averaged
            lg = prototype_logits(torch.as_tensor(pred[f"feat_{m}"]).float(), self.protos[m], self.valid[m])
            self._log[f"proto_acc_{m}"] = float((lg.argmax(1).numpy() == y).mean())
        self._log["proto_samples"] = int(len(idx))

    def update_prototypes(self, feats: dict[str, np.ndarray], y: np.ndarray) -> None:
        """New class means, smoothed with the previous prototypes from the third computation on
        (the official code skips the EMA for the computations before and after epoch 0)."""
        mu = self.p.momentum
        for m, f in feats.items():
            new, have = class_prototypes(np.asarray(f, dtype=np.float64), y, self.ctx.num_classes)
            new_t = torch.as_tensor(new, dtype=torch.float32, device=self.ctx.device)
            have_t = torch.as_tensor(have, device=self.ctx.device)
            if m in self.protos:
                old, old_valid = self.protos[m], self.valid[m]
                blended = (1 - mu) * new_t + mu * old if self.n_computed >= 2 else new_t
                new_t = torch.where(have_t[:, None], torch.where(old_valid[:, None], blended, new_t), old)
                have_t = have_t | old_valid
            self.protos[m], self.valid[m] = new_t, have_t
        self.n_computed += 1

    def loss(self, out, batch, st):
        y = batch["label"]
        ce_f = Fn.cross_entropy(out.fused, y)
        logs = {"loss_f": ce_f.detach()}
        plog, scores = {}, {}
        for m in self.ctx.modalities:
            plog[m] = prototype_logits(out.features[m].float(), self.protos[m], self.valid[m])
            scores[m] = true_class_score(plog[m].detach(), y)             # stays on the device
            logs[f"proto_prob_{m}"] = scores[m] / len(y)
        if len(self.ctx.modalities) == 2:
            a, b = self.ctx.modalities
            logs[f"ratio_{a}_{b}"] = scores[a] / scores[b].clamp_min(1e-12)
        loss = ce_f
        if not self.active(st.epoch):
            for m in self.ctx.modalities:
                logs[f"loss_proto_{m}"] = Fn.cross_entropy(plog[m].detach(), y)
                logs[f"boost_{m}"] = torch.zeros((), device=y.device)
            return loss, logs
        # every modality's term, times its coefficient (alpha for the weaker ones, else 0): the
        # choice is made on the device. A class without a prototype gets the lowest finite logit
        # instead of -inf here, so that 0 x its CE stays 0 (the CE itself is unchanged otherwise).
        coef = boost_coefficients(scores, self.p.alpha)
        for m in self.ctx.modalities:
            ce_p = Fn.cross_entropy(plog[m].clamp_min(torch.finfo(plog[m].dtype).min), y)
            logs[f"loss_proto_{m}"] = ce_p.detach()
            c = coef[m].to(ce_p.dtype)
            logs[f"boost_{m}"] = (c > 0).float()
            loss = loss + c * ce_p
        return loss, logs

    def on_epoch_end(self, st: TrainState) -> dict:
        rec = {"pmr_active": int(self.active(st.epoch))}
        rec.update(self._log)
        return rec

    def state_dict(self) -> dict:
        return {"protos": {m: t.cpu() for m, t in self.protos.items()},
                "valid": {m: t.cpu() for m, t in self.valid.items()}, "n_computed": self.n_computed}

    def load_state_dict(self, s: dict) -> None:
        dev = self.ctx.device
        self.protos = {m: t.to(dev) for m, t in s["protos"].items()}
        self.valid = {m: t.to(dev) for m, t in s["valid"].items()}
        self.n_computed = s["n_computed"]
