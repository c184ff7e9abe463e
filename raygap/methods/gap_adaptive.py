"""The paper's method: warm-up, modality gap, mixture posteriors, adaptive loss (Eq. 11).

Stages (``st.epoch`` counts from 0):
* warm-up, epochs [0, W): L_wp = L_f + sum_m L_m (Eq. 10); the per-sample gaps are
  gathered during the training pass (free) when ``gap_source: train``.
* switch, epoch W: optionally rebuild the optimizer (Table IV), settle which modality is
  dominant (validation accuracy, or the configured pair), fit the mixture.
* adaptive, epochs [W, E): Eq. 11 per sample; the mixture is refitted every
  ``refit_every`` epochs on the whole training set's gaps (from the previous training
  pass, or from an evaluation pass with ``gap_source: eval``).
* purification (Table VII), with ``purify_tau`` set: at the switch keep the training
  samples with w0 >= tau and fine-tune on them with L_wp alone; ``data_pct`` is reported.

The readings of the paper this file implements are argued in docs/method.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..lazy import lazy
from ..mixtures import MixtureFit, fit_mixture
from ..params import F
from ..registry import METHODS, MIXTURES
from .base import Method, TrainState
from .gaps import GAPS, adaptive_loss, auroc, zscore_stats

torch = lazy("torch")
Fn = lazy("torch.nn.functional")


@dataclass
class GapAdaptiveParams:
    warmup_epochs: int = F(10, range=(0, 100000), help="epochs of warm-up with L_wp (Eq. 10)")
    gap: str = F("prob", choices=["prob", "kl"], help="Eq. 5 (prob) or Eq. 6 (kl)")
    pair: list[str] = F(["audio", "visual"], help="[dominant, weak] modalities the gap compares")
    dominant: str = F("validation", choices=["validation", "config"],
                      help="validation: order the pair by validation accuracy at the switch; config: keep it")
    mixture: str = F("gmm", registry=MIXTURES, help="mixture family fitted to the z-scored gaps")
    balanced: str = F("right_tail", choices=["right_tail", "nearest_zero", "largest_weight"],
                      help="which component is 'balanced' at the first fit: right_tail = the imbalanced one "
                           "is where the dominant modality leads most (larger mean gap)")
    alpha: float = F(1.0, range=(0.0, 100.0), help="weight of w0 * L_f")
    beta: float = F(1.0, range=(0.0, 100.0), help="weight of |g|^2")
    gamma: float = F(1.0, range=(0.0, 100.0), help="weight of w1 * |g - u0|^2")
    rho: float = F(0.95, range=(1e-6, 1.0), help="lambda_t = rho ** t")
    lambda_from: str = F("stage", choices=["stage", "start"],
                         help="t counts epochs from the adaptive stage (lambda=1 at the switch) or from epoch 0")
    posterior_weights: bool = F(True, help="false: w0 = w1 = 1 (Table III 'w/o w0, w1')")
    unimodal_loss: bool = F(True, help="false: drop sum_m L_m from Eq. 11 (Table III 'w/o L_a, L_v')")
    gap_space: str = F("raw", choices=["raw", "z"],
                       help="space of g and u0 inside Eq. 11: raw gap (bounded) or z-scored gap")
    sigma_floor: float = F(0.05, range=(1e-6, 10.0), help="floor on sigma_G for the z-score (raw-gap units)")
    refit_every: int = F(1, range=(0, 100000), help="refit the mixture every K adaptive epochs; 0 = fit once")
    gap_source: str = F("train", choices=["train", "eval"],
                        help="train: gaps gathered during the previous training pass (free); eval: an extra eval pass")
    reset_optimizer: bool = F(True, help="rebuild the optimizer at the switch (Table IV 'Reset State')")
    purify_tau: float | None = F(None, range=(0.0, 1.0), help="Table VII: fine-tune on samples with w0 >= tau")
    hist_bins: int = F(40, range=(5, 1000), help="bins of the logged gap histogram")


def _nearest(word: str, choices: list[str]) -> str:
    import difflib

    return (difflib.get_close_matches(word, choices, n=1, cutoff=0.0) or choices[:1] or [""])[0]


def warmup_loss(out, y: torch.Tensor, unimodal: bool = True):
    """L_wp = L_f + sum_m L_m (Eq. 10); returns (loss, logs)."""
    ce_f = Fn.cross_entropy(out.fused, y)
    logs = {"loss_f": ce_f.detach()}
    loss = ce_f
    if unimodal:
        for m, l in out.logits.items():
            ce_m = Fn.cross_entropy(l, y)
            logs[f"loss_{m}"] = ce_m.detach()
            loss = loss + ce_m
    return loss, logs


@METHODS.register("warmup_objective", params=None, version=1, reports=("data_pct",))
class WarmupObjective(Method):
    """Control (raygap's addition): the warm-up objective L_f + sum_m L_m for every epoch."""

    def loss(self, out, batch, st):
        return warmup_loss(out, batch["label"])

    def on_epoch_end(self, st):
        return {"report_data_pct": 100.0}


@METHODS.register("gap_adaptive", params=GapAdaptiveParams, version=1, min_modalities=2, reports=("data_pct",))
class GapAdaptive(Method):
    """Two-stage training with the GMM-guided adaptive loss (paper Section III)."""

    @classmethod
    def check_config(cls, p, c, modalities):
        from ..errors import ConfigError

        if len(p.pair) != 2 or p.pair[0] == p.pair[1]:
            raise ConfigError(f"must name two different modalities, got {p.pair}", key="method.pair",
                              hint=f"e.g. method.pair=[{', '.join(modalities[:2])}]")
        for m in p.pair:
            if m not in modalities:
                raise ConfigError(f"{m!r} is not a modality of this trial ({', '.join(modalities)})",
                                  key="method.pair", hint=f"nearest: {_nearest(m, modalities)!r}")
        epochs = c["train"]["epochs"]
        if p.warmup_epochs >= epochs:
            raise ConfigError(f"{p.warmup_epochs} >= train.epochs ({epochs}): the trial would train the warm-up "
                              "objective only and never reach the adaptive stage", key="method.warmup_epochs",
                              hint=f"set method.warmup_epochs below {epochs} (or use method.name=warmup_objective)")

    @classmethod
    def shared_warmup(cls, p):
        """Epochs [0, W) train L_wp (Eq. 10) whatever the adaptive stage's keys; the warm-up's
        records and state depend on the gap it gathers (``gap``, ``pair``, ``gap_source``) too."""
        if p.warmup_epochs <= 0:
            return None
        return p.warmup_epochs, {"warmup_epochs": p.warmup_epochs, "gap": p.gap, "pair": list(p.pair),
                                 "gap_source": p.gap_source}

    def __init__(self, params: GapAdaptiveParams, ctx):
        super().__init__(params, ctx)
        p = params
        for m in p.pair:
            if m not in ctx.modalities:
                raise ValueError(f"method.pair names {m!r}, not a modality of the data ({', '.join(ctx.modalities)})")
        if len(p.pair) != 2 or p.pair[0] == p.pair[1]:
            raise ValueError("method.pair must name two different modalities")
        self.dom, self.weak = p.pair
        n = ctx.n_train
        self.train_gaps = torch.full((n,), float("nan"), device=ctx.device)   # raw gaps of the last pass
        self.w0 = torch.ones(n, device=ctx.device)
        self.w1 = torch.zeros(n, device=ctx.device)
        self.mu_g, self.sigma_g, self.u0 = 0.0, 1.0, 0.0
        self.fit = None
        self.data_pct = 100.0
        self._log: dict = {}

    # -- stage bookkeeping ------------------------------------------------------------
    def stage(self, epoch: int) -> str:
        if epoch < self.p.warmup_epochs:
            return "warmup"
        return "purify" if self.p.purify_tau is not None else "adaptive"

    def lam(self, epoch: int) -> float:
        t = epoch - self.p.warmup_epochs if self.p.lambda_from == "stage" else epoch
        return float(self.p.rho ** max(t, 0))

    def on_epoch_start(self, st: TrainState) -> None:
        p, e, W = self.p, st.epoch, self.p.warmup_epochs
        self._log = {}
        if e < W:
            return
        if e == W:
            if p.reset_optimizer:
                st.optimizer = st.new_optimizer()
            self._settle_dominant(st)
        since = e - W
        if e == W or (p.purify_tau is None and p.refit_every > 0 and since % p.refit_every == 0):
            self._refit(st, source=p.gap_source if (e > W or W > 0) else "eval")
        if e == W and p.purify_tau is not None:
            keep = np.flatnonzero(self.w0.cpu().numpy() >= p.purify_tau)
            st.train_indices = keep
            self.data_pct = 100.0 * len(keep) / self.ctx.n_train
            self._log["purify_kept"] = int(len(keep))

    def _settle_dominant(self, st: TrainState) -> None:
        """Which modality is dominant. Validation accuracy and training-pass confidence can
        disagree (a branch that memorises noisy samples looks confident on train): both are
        logged, and ``dominant: validation`` orders the pair by validation accuracy."""
        val = st.predict_split("val")
        acc = {m: float((val[m].argmax(1) == val["label"]).mean()) for m in self.p.pair}
        for m in self.p.pair:
            self._log[f"switch_val_acc_{m}"] = acc[m]
        by_val = sorted(self.p.pair, key=lambda m: -acc[m])
        if self.p.dominant == "validation" and by_val[0] != self.dom:
            self.dom, self.weak = by_val
            self.train_gaps = -self.train_gaps            # the gap changes sign with the order
            st.log(f"gap_adaptive: {self.dom} is dominant on validation "
                   f"({acc[self.dom]:.3f} vs {acc[self.weak]:.3f}); the gap is taken as {self.dom} - {self.weak}")
        self._log["dominant"] = self.dom
        gaps = self.train_gaps.cpu().numpy()
        if np.isfinite(gaps).any():   # mean training-pass gap < 0: the other branch was more confident on train
            mean_gap = float(np.nanmean(gaps))
            self._log["switch_train_gap_mean"] = mean_gap
            self._log["dominant_train_disagrees"] = bool(mean_gap < 0)
            if mean_gap < 0:
                st.log(f"gap_adaptive: {self.weak} is more confident on the training pass but {self.dom} "
                       "is taken as dominant")

    def _gaps_from_eval(self, st: TrainState) -> np.ndarray:
        pred = st.predict_split("train")
        y = torch.as_tensor(pred["label"])
        g = GAPS[self.p.gap](torch.as_tensor(pred[self.dom]), torch.as_tensor(pred[self.weak]), y).numpy()
        out = np.full(self.ctx.n_train, np.nan)
        out[pred["index"]] = g
        return out

    def _refit(self, st: TrainState, source: str) -> None:
        p = self.p
        gaps = self._gaps_from_eval(st) if source == "eval" else self.train_gaps.double().cpu().numpy()
        z_prev = (gaps - self.mu_g) / self.sigma_g          # the same gaps in the last fit's units
        self.mu_g, self.sigma_g = zscore_stats(gaps, p.sigma_floor)
        z = (gaps - self.mu_g) / self.sigma_g
        # "nearest zero" means nearest a raw gap of 0 (both modalities equally confident),
        # which sits at z = -mu_G / sigma_G in the space the mixture is fitted in
        fit = fit_mixture(p.mixture, z, seed=self.ctx.config.seed, balanced=p.balanced, previous=self.fit,
                          origin=-self.mu_g / self.sigma_g, previous_x=z_prev)
        post = fit.posterior(z)
        self.fit = fit
        dev = self.w0.device
        self.w0 = torch.as_tensor(post[:, 0], dtype=torch.float32, device=dev)
        self.w1 = torch.as_tensor(post[:, 1], dtype=torch.float32, device=dev)
        mu0 = float(fit.means[0])
        self.u0 = mu0 if p.gap_space == "z" else self.mu_g + self.sigma_g * mu0
        finite = np.isfinite(z)
        lo, hi = (float(z[finite].min()), float(z[finite].max())) if finite.any() else (-1.0, 1.0)
        counts, edges = np.histogram(z[finite], bins=p.hist_bins, range=(lo, hi if hi > lo else lo + 1.0))
        log = {"fit_epoch": st.epoch, "fit_source": source, "fit_family": fit.family,
               "gap_mean": self.mu_g, "gap_std": self.sigma_g, "u0": self.u0,
               "frac_w1_gt_half": float((post[finite, 1] > 0.5).mean()) if finite.any() else 0.0,
               "gap_hist": counts.tolist(), "gap_hist_edges": [float(x) for x in edges],
               "fit_swapped": bool(fit.swapped), "fit_fallback": fit.fallback}
        log.update({f"fit_{k}": v for k, v in fit.to_dict().items()})
        for name, mask in getattr(st.data.train, "extras", {}).items():   # ground truth, where the data has it
            if name.startswith("corrupt_") and np.any(mask):
                log[f"auroc_w1_{name}"] = auroc(post[:, 1], mask)
        if fit.swapped:
            st.log(f"gap_adaptive: mixture components swapped at epoch {st.epoch}; identity kept from the previous fit")
        self._log.update(log)

    # -- per batch -------------------------------------------------------------------
    def loss(self, out, batch, st):
        p, y, idx = self.p, batch["label"], batch["index"]
        stage = self.stage(st.epoch)
        g_raw = GAPS[p.gap](out.logits[self.dom], out.logits[self.weak], y)
        if p.gap_source == "train":
            self.train_gaps[idx.to(self.train_gaps.device)] = g_raw.detach().to(self.train_gaps.dtype)
        if stage != "adaptive":
            loss, logs = warmup_loss(out, y)
            logs["gap_abs"] = g_raw.detach().abs().mean()
            return loss, logs
        ce_f = Fn.cross_entropy(out.fused.float(), y, reduction="none")
        ce_uni = torch.zeros_like(ce_f)
        if p.unimodal_loss:
            for l in out.logits.values():
                ce_uni = ce_uni + Fn.cross_entropy(l.float(), y, reduction="none")
        if p.posterior_weights:
            w0, w1 = self.w0[idx], self.w1[idx]
        else:
            w0 = w1 = torch.ones_like(ce_f)
        g = g_raw if p.gap_space == "raw" else (g_raw - self.mu_g) / self.sigma_g
        terms = adaptive_loss(ce_f, ce_uni, g, w0, w1, self.u0, alpha=p.alpha, beta=p.beta,
                              gamma=p.gamma, lam=self.lam(st.epoch))
        loss = terms.pop("loss")
        terms["gap_abs"] = g_raw.detach().abs().mean()
        return loss, terms

    def on_epoch_end(self, st: TrainState) -> dict:
        rec = {"stage": self.stage(st.epoch), "report_data_pct": self.data_pct}
        if self.stage(st.epoch) == "adaptive":
            rec["lambda"] = self.lam(st.epoch)
        rec.update(self._log)
        return rec

    # -- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"train_gaps": self.train_gaps.cpu(), "w0": self.w0.cpu(), "w1": self.w1.cpu(),
                "mu_g": self.mu_g, "sigma_g": self.sigma_g, "u0": self.u0,
                "fit": None if self.fit is None else asdict(self.fit),     # plain values: weights_only loads it
                "dom": self.dom, "weak": self.weak, "data_pct": self.data_pct}

    def load_state_dict(self, s: dict) -> None:
        dev = self.ctx.device
        self.train_gaps, self.w0, self.w1 = (s["train_gaps"].to(dev), s["w0"].to(dev), s["w1"].to(dev))
        self.mu_g, self.sigma_g, self.u0 = s["mu_g"], s["sigma_g"], s["u0"]
        self.fit = None if s["fit"] is None else MixtureFit(**s["fit"])
        self.dom, self.weak, self.data_pct = s["dom"], s["weak"], s["data_pct"]
