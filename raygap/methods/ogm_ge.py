"""OGM-GE: on-the-fly gradient modulation with generalization enhancement (Peng et al., CVPR 2022).

Per batch, after the backward pass of L = CE(fused):

    s_m     = sum_i softmax(logits_m)_{i, y_i}                (logits_m: modality m's share of the
                                                               fusion output; ConcatFusion shares the
                                                               bias equally, like the official b/2)
    rho_m   = s_m / mean_{j != m} s_j                         (two modalities: s_0/s_1 and s_1/s_0)
    k_m     = 1 - tanh(alpha * rho_m)      if rho_m > 1      ("ratio", the paper's Eq. 10 and the
            = 1 - tanh(alpha * (rho_m - 1)) if rho_m > 1      ("excess", continuous at rho = 1)
            = 1                             otherwise
    g       <- k_m * g + N(0, std(g))                         for the encoder parameters of m

inside the epoch window [modulation_starts, modulation_ends). The helpers below are shared
with ``opm_ogm``. The choices argued against the official code are in docs/methods.md.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ..params import F
from ..registry import METHODS
from .base import Method, check_epoch_window


@dataclass
class OGMGEParams:
    alpha: float = F(0.8, range=(0.0, 100.0), help="alpha of k = 1 - tanh(alpha * rho) (0.8 on CREMA-D)")
    coeff: str = F("ratio", choices=["ratio", "excess"],
                   help="ratio: k = 1 - tanh(alpha*rho) (paper Eq. 10 and official code); "
                        "excess: k = 1 - tanh(alpha*relu(rho - 1))")
    modulation_starts: int = F(0, range=(0, 100000), help="first epoch of modulation (inclusive)")
    modulation_ends: int = F(50, range=(0, 100000), help="end of the modulation window (exclusive)")
    modulate: str = F("conv", choices=["conv", "all"],
                      help="conv: only encoder weights with >= 4 dims (official); all: every encoder parameter")
    ge_noise_to: str = F("modulated", choices=["modulated", "both", "none"],
                         help="GE noise N(0, std(g)) on the modulated (dominant) modality only (paper), on "
                              "every modality (official code), or none (plain OGM)")


# ----------------------------------------------------------------------------- shared helpers
def modality_scores(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """s_m = sum over the batch of softmax(logits_m) at the true class."""
    out = {}
    for m, l in logits.items():
        p = torch.softmax(l.detach().float(), dim=1)
        out[m] = float(p.gather(1, labels.view(-1, 1).long()).sum())
    return out


def score_ratios(scores: dict[str, float]) -> dict[str, float]:
    """rho_m = s_m / mean of the other modalities' scores (for two: s_0/s_1 and its inverse)."""
    ms = list(scores)
    if len(ms) < 2:
        raise ValueError("OGM needs at least two modalities")
    out = {}
    for m in ms:
        others = sum(scores[j] for j in ms if j != m) / (len(ms) - 1)
        out[m] = scores[m] / max(others, 1e-12)
    return out


def ogm_coefficients(ratios: dict[str, float], alpha: float, form: str = "ratio") -> dict[str, float]:
    """k_m = 1 - tanh(alpha * rho_m) ("ratio") or 1 - tanh(alpha * (rho_m - 1)) ("excess") where
    rho_m > 1 (the dominant modality), else 1."""
    k = {}
    for m, r in ratios.items():
        if r > 1.0:
            x = r if form == "ratio" else r - 1.0
            k[m] = 1.0 - math.tanh(alpha * x)
        else:
            k[m] = 1.0
    return k


def encoder_params(model, modality: str, modulate: str = "conv") -> list[torch.nn.Parameter]:
    """The parameters of modality m's encoder that OGM touches: those with >= 4 dims (conv
    weights, as the official code) or all of them. An encoder with no conv weight (a GRU or an
    MLP) falls back to all its parameters, with a warning, so the method still acts."""
    ps = [p for p in model.encoders[modality].parameters() if p.requires_grad]
    if modulate == "conv":
        conv = [p for p in ps if p.dim() >= 4]
        if not conv:
            warnings.warn(f"OGM: encoder {modality!r} has no conv weights; modulating all its parameters")
            return ps
        return conv
    return ps


def modulate_gradients(model, coeffs: dict[str, float], *, modulate: str = "conv",
                       noise_to: str = "modulated", generator: torch.Generator | None = None) -> None:
    """g <- k_m * g (+ N(0, std(g)) noise, std taken before scaling, as the official code) for the
    encoder parameters of each modality. ``noise_to``: modulated (k_m < 1 only), both (every
    modality), none."""
    for m, k in coeffs.items():
        noisy = noise_to == "both" or (noise_to == "modulated" and k < 1.0)
        for p in encoder_params(model, m, modulate):
            g = p.grad
            if g is None:
                continue
            std = float(g.float().std()) if (noisy and g.numel() > 1) else 0.0
            if k != 1.0:
                g.mul_(k)
            if noisy and g.numel() > 1:
                noise = torch.randn(g.shape, generator=generator, dtype=torch.float32)
                g.add_(noise.to(device=g.device, dtype=g.dtype) * (std + 1e-8))


class OGMStats:
    """Per-epoch means of k_m and rho_m over the batches."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.n = 0
        self.k: dict[str, float] = {}
        self.rho: dict[str, float] = {}
        self.active = 0

    def add(self, k: dict[str, float], rho: dict[str, float], active: bool):
        self.n += 1
        self.active += int(active)
        for m in k:
            self.k[m] = self.k.get(m, 0.0) + k[m]
            self.rho[m] = self.rho.get(m, 0.0) + rho[m]

    def record(self, modalities: list[str]) -> dict:
        n = max(self.n, 1)
        rec = {f"ogm_k_{m}": self.k.get(m, 1.0 * n) / n for m in modalities}
        rec.update({f"ogm_ratio_{m}": self.rho.get(m, 1.0 * n) / n for m in modalities})
        if len(modalities) == 2:
            rec["ogm_ratio"] = rec[f"ogm_ratio_{modalities[0]}"]   # s_0 / s_1
        rec["ogm_active_frac"] = self.active / n
        return rec


# ----------------------------------------------------------------------------- the method
@METHODS.register("ogm_ge", params=OGMGEParams, version=1, min_modalities=2)
class OGMGE(Method):
    """L = CE(fused); the dominant modality's encoder gradient scaled by k, plus GE noise."""

    @classmethod
    def check_config(cls, p, c, modalities):
        check_epoch_window("modulation_starts", p.modulation_starts, c["train"]["epochs"],
                           "modulation_ends", p.modulation_ends, "OGM's gradient modulation")

    def __init__(self, params: OGMGEParams, ctx):
        super().__init__(params, ctx)
        if len(ctx.modalities) < 2:
            raise ValueError("ogm_ge needs at least two modalities")
        self.stats = OGMStats()

    def in_window(self, epoch: int) -> bool:
        return self.p.modulation_starts <= epoch < self.p.modulation_ends

    def coefficients(self, out, batch) -> tuple[dict[str, float], dict[str, float]]:
        scores = modality_scores({m: out.logits[m] for m in self.ctx.modalities}, batch["label"])
        rho = score_ratios(scores)
        return ogm_coefficients(rho, self.p.alpha, self.p.coeff), rho

    def loss(self, out, batch, st):
        loss = self.task_loss(out.fused, batch["label"])
        return loss, {"loss_f": loss.detach()}

    def after_backward(self, model, out, batch, st):
        k, rho = self.coefficients(out, batch)
        active = self.in_window(st.epoch)
        if active:
            modulate_gradients(model, k, modulate=self.p.modulate, noise_to=self.p.ge_noise_to)
        self.stats.add(k, rho, active)

    def on_epoch_start(self, st):
        self.stats.reset()

    def on_epoch_end(self, st):
        return self.stats.record(self.ctx.modalities)
