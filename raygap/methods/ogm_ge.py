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

inside the epoch window modulation_starts <= epoch <= modulation_ends. The helpers below are shared
with ``opm_ogm``. The choices argued against the official code are in docs/methods.md.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from .base import Method, WindowParams, scalar

torch = lazy("torch")


@dataclass
class OGMGEParams(WindowParams):
    alpha: float = F(0.8, range=(0.0, 100.0), help="alpha of k = 1 - tanh(alpha * rho) (0.8 on CREMA-D)")
    coeff: str = F("ratio", choices=["ratio", "excess"],
                   help="ratio: k = 1 - tanh(alpha*rho) (paper Eq. 10 and official code); "
                        "excess: k = 1 - tanh(alpha*relu(rho - 1))")
    modulate: str = F("conv", choices=["conv", "all"],
                      help="conv: only encoder weights with >= 4 dims (official); all: every encoder parameter")
    ge_noise_to: str = F("both", choices=["modulated", "both", "none"],
                         help="GE noise N(0, std(g)) on every modality's encoder (official code and "
                              "BalanceBenchmark), on the modulated (dominant) one only (a reading of the paper), "
                              "or none (plain OGM)")


# ----------------------------------------------------------------------------- shared helpers
# Everything per batch stays on the device (0-dim tensors, no branch on a device value): the
# training step never waits for the GPU. Plain floats are accepted too (hand-computed checks).


def modality_scores(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """s_m = sum over the batch of softmax(logits_m) at the true class (0-dim, on the device)."""
    out = {}
    for m, l in logits.items():
        p = torch.softmax(l.detach().float(), dim=1)
        out[m] = p.gather(1, labels.view(-1, 1).long()).sum()
    return out


def score_ratios(scores: dict) -> dict[str, torch.Tensor]:
    """rho_m = s_m / mean of the other modalities' scores (for two: s_0/s_1 and its inverse)."""
    ms = list(scores)                          # >= 2: the registration's min_modalities, checked at load
    sc = {m: scalar(v) for m, v in scores.items()}
    out = {}
    for m in ms:
        others = sum(sc[j] for j in ms if j != m) / (len(ms) - 1)
        out[m] = sc[m] / others.clamp_min(1e-12)
    return out


def ogm_coefficients(ratios: dict, alpha: float, form: str = "ratio") -> dict[str, torch.Tensor]:
    """k_m = 1 - tanh(alpha * rho_m) ("ratio") or 1 - tanh(alpha * (rho_m - 1)) ("excess") where
    rho_m > 1 (the dominant modality), else 1."""
    k = {}
    for m, r in ratios.items():
        r = scalar(r)
        x = r if form == "ratio" else r - 1.0
        k[m] = torch.where(r > 1.0, 1.0 - torch.tanh(alpha * x), torch.ones_like(r))
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


def modulate_gradients(model, coeffs: dict, *, modulate: str = "conv",
                       noise_to: str = "modulated", generator: torch.Generator | None = None) -> None:
    """g <- k_m * g (+ N(0, std(g)) noise, std taken before scaling, as the official code) for the
    encoder parameters of each modality. ``noise_to``: modulated (k_m < 1 only), both (every
    modality), none. On the device, without a host sync: the noise of a modality that is not
    modulated is drawn and multiplied by 0 (``modulated``), and k = 1 multiplies exactly."""
    for m, k in coeffs.items():
        params = [p for p in encoder_params(model, m, modulate) if p.grad is not None]
        if not params:
            continue
        dev = params[0].grad.device
        k = scalar(k).to(device=dev, dtype=torch.float32)
        gate = None if noise_to == "none" else (k < 1.0).float() if noise_to == "modulated" else 1.0
        for p in params:
            g = p.grad
            noisy = gate is not None and g.numel() > 1
            std = g.float().std() if noisy else None
            g.mul_(k.to(g.dtype))
            if noisy:
                noise = torch.randn(g.shape, generator=generator, dtype=torch.float32, device=g.device)
                g.add_((noise * ((std + 1e-8) * gate)).to(g.dtype))


class OGMStats:
    """Per-epoch means of k_m and rho_m over the batches (summed on the device, read at the
    epoch's end)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.n = 0
        self.k: dict = {}
        self.rho: dict = {}
        self.active = 0

    def add(self, k: dict, rho: dict, active: bool):
        self.n += 1
        self.active += int(active)
        for m in k:
            self.k[m] = self.k.get(m, 0.0) + scalar(k[m]).detach().double()
            self.rho[m] = self.rho.get(m, 0.0) + scalar(rho[m]).detach().double()

    def record(self, modalities: list[str]) -> dict:
        n = max(self.n, 1)
        rec = {f"ogm_k_{m}": float(self.k.get(m, 1.0 * n)) / n for m in modalities}
        rec.update({f"ogm_ratio_{m}": float(self.rho.get(m, 1.0 * n)) / n for m in modalities})
        if len(modalities) == 2:
            rec["ogm_ratio"] = rec[f"ogm_ratio_{modalities[0]}"]   # s_0 / s_1
        rec["ogm_active_frac"] = self.active / n
        return rec


# ----------------------------------------------------------------------------- the method
# version 2: GE noise drawn on the device for every modality, times 0 where not modulated (another
# random stream than version 1), ratios in float32
# version 3: GE noise on both encoders by default (ge_noise_to: both), as the official code
# version 4: the window's end epoch included, as the official test (0..50: 51 epochs, was 50)
@METHODS.register("ogm_ge", params=OGMGEParams, version=4, min_modalities=2)
class OGMGE(Method):
    """L = CE(fused); the dominant modality's encoder gradient scaled by k, plus GE noise."""

    @classmethod
    def check_config(cls, p, c, modalities):
        p.check_window(c["train"]["epochs"], "OGM's gradient modulation")

    def __init__(self, params: OGMGEParams, ctx):
        super().__init__(params, ctx)
        self.stats = OGMStats()

    def coefficients(self, out, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        scores = modality_scores({m: out.logits[m] for m in self.ctx.modalities}, batch["label"])
        rho = score_ratios(scores)
        return ogm_coefficients(rho, self.p.alpha, self.p.coeff), rho

    def after_backward(self, model, out, batch, st):
        k, rho = self.coefficients(out, batch)
        active = self.p.in_window(st.epoch)
        if active:
            modulate_gradients(model, k, modulate=self.p.modulate, noise_to=self.p.ge_noise_to)
        self.stats.add(k, rho, active)

    def on_epoch_start(self, st):
        self.stats.reset()

    def on_epoch_end(self, st):
        return self.stats.record(self.ctx.modalities)
