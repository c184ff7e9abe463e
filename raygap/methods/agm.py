"""AGM: adaptive gradient modulation (Li et al., ICCV 2023), by default as its authors' CREMA-D
code runs it (lihongcs/AGM ``run/CREMAD_main.py``, ``model/CREMAD_net.py``; docs/methods.md).

Per batch, with f(S) the fused logits when only the modalities in S are present:

    blank        an absent modality's input is zeroed and its encoder run on it (``blank: input``,
                 official; the encoders in eval mode for that pass, so BatchNorm's running
                 statistics never see a blank batch), or its features are zeroed at the fusion
                 head (``blank: features``)
    response     ``response: official``: phi_m = 1/2 [f(all) - f(all without m) + f(m alone)],
                 for two modalities 1/2 [f(a,v) - f(0,v) + f(a,0)] (no f(0,0) term; the two
                 responses sum to f(a,v)); ``response: shapley``: the Shapley value
                 sum_{S without m} |S|! (M-|S|-1)! / M! (f(S + m) - f(S)), for two modalities
                 1/2 [f(a,v) - f(0,v) + f(a,0) - f(0,0)] (the responses sum to f(a,v) - f(0,0))
    score        L_m = mean_i -log max(softmax(phi_m)_{i,y_i}, 1e-8)
    ratio        r_m = exp(mean_{j != m} L_j - L_m)          (two modalities: exp(L_v - L_a) for audio)
    target       r*_m = exp(mean_{j != m} Lbar_j - Lbar_m)   (Lbar: running mean of L over the batches
                                                              before this one; r* = 1 on the first)
    coefficient  k_m = exp(alpha * min(r*_m - r_m, clip))    (``clip: null``: no clip)
    loss         ``scale: logits`` (official): L = CE(sum_m phi_m + rest), the gradient reaching
                 phi_m multiplied by k_m (rest: what the responses leave of f(all), unscaled: f(0,0)
                 for ``shapley``, nothing for ``official`` with two modalities). The value is
                 CE(f(all)); the gradient of the head's audio weights is k_a times the plain one,
                 the visual weights' k_v times, the bias's (k_a + k_v)/2 (exactly so with
                 ``blank: features``), and the clip guard sees them. ``scale: features`` (raygap up
                 to version 4): L = CE(f(all)), k_m multiplies the gradient reaching modality m's
                 encoder output only; the responses are computed without gradients
    clipping     after the backward pass, when any weight gradient of the fusion head leaves
                 [-c, c], the whole model's gradient is clipped to norm c (``grad_clip``; the AGM
                 training code does this with c = 1, BalanceBenchmark with c = 5): k_m reaches
                 e^{alpha * clip} (e^10 ~ 22,000 at the defaults)

A modality doing better than its running level (r_m > r*_m) is slowed, one falling behind is sped
up. Outside modulation_starts..modulation_ends (both included; official 0..20) the coefficients
are 1 (the running means still update).
"""
from __future__ import annotations

import itertools
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from .base import Method, WindowParams, scalar

torch = lazy("torch")


@dataclass
class AGMParams(WindowParams):
    alpha: float = F(1.0, range=(0.0, 100.0), help="alpha of k = exp(alpha * (target - ratio)) (official "
                                                    "--alpha default: 1.0)")
    clip: float | None = F(10.0, range=(0.0, 1e6),
                           help="upper clip of target - ratio before the exponential (official CREMA-D: 10; "
                                "the URFunny script and BalanceBenchmark: 7; the AVE script: none, null)")
    modulation_ends: int = F(20, range=(0, 100000), help="last epoch of modulation (included; official "
                                                         "--modulation_ends 20: epochs 0..20)")
    grad_clip: float = F(1.0, range=(0.0, 1e6),
                         help="when a fusion-head weight gradient leaves [-c, c], clip the model's gradient norm to c "
                              "(AGM training code: 1; BalanceBenchmark: 5); 0: never clip")
    scale: str = F("logits", choices=["logits", "features"],
                   help="where k acts: logits = on each modality's response scores, so the head's gradients "
                        "are scaled too (official); features = on each encoder's output only (raygap <= v4)")
    response: str = F("official", choices=["official", "shapley"],
                      help="official = 1/2 [f(a,v) - f(0,v) + f(a,0)]; shapley = the Shapley value "
                           "(with - f(0,0); raygap <= v4)")
    blank: str = F("input", choices=["input", "features"],
                   help="an absent modality: its input zeroed and encoded (official) or its features zeroed "
                        "(raygap <= v4)")


Subsets = Callable[[frozenset], "torch.Tensor"]


def subset_logits(head, feats: dict, blank: dict, known: dict | None = None) -> Subsets:
    """f(S): ``head`` (features -> fused logits) with the modalities outside S given their
    ``blank`` features; memoized (``known``: values already at hand, e.g. f(all))."""
    cache = dict(known or {})

    def f(subset: frozenset) -> torch.Tensor:
        if subset not in cache:
            cache[subset] = head({m: (x if m in subset else blank[m]) for m, x in feats.items()})
        return cache[subset]
    return f


def official_responses(f: Subsets, ms: list[str]) -> dict[str, torch.Tensor]:
    """phi_m = 1/2 [f(all) - f(all without m) + f({m})] (CREMAD_net.py's two-modality form,
    1/2 [f(a,v) - f(0,v) + f(a,0)], written for any M)."""
    full = frozenset(ms)
    return {m: 0.5 * (f(full) - f(full - {m}) + f(frozenset({m}))) for m in ms}


def shapley_responses(f: Subsets, ms: list[str]) -> dict[str, torch.Tensor]:
    """phi_m, the Shapley value of m in the game S -> f(S), from the 2^M subsets."""
    n = len(ms)
    out = {}
    for m in ms:
        others = [j for j in ms if j != m]
        total = 0.0
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for s in itertools.combinations(others, r):
                s = frozenset(s)
                total = total + w * (f(s | {m}) - f(s))
        out[m] = total
    return out


RESPONSES = {"official": official_responses, "shapley": shapley_responses}


def loss_logits(resp: dict, f: Subsets, ms: list[str], form: str, scaled: Callable) -> torch.Tensor:
    """sum_m scaled(m, phi_m) + what the responses leave of f(all), unscaled: f(empty) for the
    Shapley value (its efficiency: the values sum to f(all) - f(empty)), f(all) - sum_m phi_m for
    the official form with more than two modalities, nothing with two (they sum to f(all))."""
    total = sum(scaled(m, resp[m]) for m in ms)
    if form == "shapley":
        return total + f(frozenset())
    if len(ms) > 2:
        return total + (f(frozenset(ms)) - sum(resp[m] for m in ms))
    return total


def blank_features(model, batch: dict, ms: list[str]) -> dict[str, torch.Tensor]:
    """Every modality's encoder output on a zeroed input, with the model in eval mode for the
    pass (BatchNorm uses, and does not update, its running statistics); each module's mode is
    put back as it was."""
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        return model.encode({m: torch.zeros_like(batch[m]) for m in ms})
    finally:
        for mod, was in modes:
            mod.training = was


def response_scores(responses: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """L_m = mean over the batch of -log p(y) under softmax(phi_m), p floored at 1e-8 (0-dim,
    on the device: nothing per batch waits for it)."""
    out = {}
    for m, r in responses.items():
        p = torch.softmax(r.detach().float(), dim=1).gather(1, labels.view(-1, 1).long())[:, 0]
        out[m] = -torch.log(p.clamp_min(1e-8)).mean()
    return out


def score_ratios(scores: dict) -> dict[str, torch.Tensor]:
    """r_m = exp(mean of the other modalities' scores - L_m)."""
    ms = list(scores)
    sc = {m: scalar(v) for m, v in scores.items()}
    return {m: torch.exp(sum(sc[j] for j in ms if j != m) / (len(ms) - 1) - sc[m]) for m in ms}


def agm_coefficients(ratio: dict, target: dict, alpha: float, clip: float | None) -> dict[str, torch.Tensor]:
    """k_m = exp(alpha * min(target_m - ratio_m, clip)); ``clip`` None: no clip."""
    gap = {m: scalar(target[m]) - scalar(ratio[m]) for m in ratio}
    return {m: torch.exp(alpha * (g if clip is None else g.clamp(max=clip))) for m, g in gap.items()}


def clip_when_head_leaves(model, bound: float) -> torch.Tensor:
    """The AGM training code's guard: when any weight gradient of the fusion head (parameters
    with >= 2 dims) leaves [-bound, bound], clip every gradient of the model to total norm
    ``bound`` (torch's clip_grad_norm_ rule). Returns whether it fired (a 0-dim bool tensor: no
    host sync; not firing passes a total norm of 0, which scales by 1)."""
    head = [p.grad for p in model.fusion.parameters() if p.grad is not None and p.dim() >= 2]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not head or not grads:
        return torch.zeros((), dtype=torch.bool)
    fired = torch.stack([g.detach().abs().amax().float() for g in head]).amax() > bound
    total = torch.nn.utils.get_total_norm(grads)
    torch.nn.utils.clip_grads_with_norm_([p for p in model.parameters() if p.grad is not None], bound,
                                         torch.where(fired, total, torch.zeros_like(total)))
    return fired


# version 2: per-batch scores and coefficients as device tensors (float32 ratios): results differ in rounding
# version 3: the gradient clip of the AGM training code (grad_clip, on by default)
# version 4: the window's end epoch included, as the official test (a set modulation_ends modulates one more epoch)
# version 5: as the official CREMA-D code by default: k on the response scores (scale: logits), the official
#            response with inputs zeroed (response: official, blank: input), clip 10, alpha 1.0, epochs 0..20
@METHODS.register("agm", params=AGMParams, version=5, min_modalities=2)
class AGM(Method):
    """CE(fused) with each modality's response scores' (or features') gradient scaled by its coefficient."""

    @classmethod
    def check_config(cls, p, c, modalities):
        p.check_window(c["train"]["epochs"], "AGM's modulation")

    def __init__(self, params: AGMParams, ctx):
        super().__init__(params, ctx)
        self.mean_score: dict = {m: 0.0 for m in ctx.modalities}   # running means over all batches so far (float64)
        self.steps = 0
        self.coeff = {m: 1.0 for m in ctx.modalities}
        self._epoch = {}

    def _scaled(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` as it is, its gradient multiplied by k_m (read at backward time, set by ``loss``);
        a view, so that other uses of ``x`` keep their gradient."""
        if not x.requires_grad:
            return x
        v = x.view_as(x)
        v.register_hook(lambda g: g * self.coeff[m])
        return v

    def forward(self, model, batch, st=None):
        ms, p = self.ctx.modalities, self.p
        feats = model.encode(batch)
        on_logits = p.scale == "logits" and torch.is_grad_enabled()
        if p.scale == "features":
            feats = {m: self._scaled(m, x) for m, x in feats.items()}
        out = model.head(feats)
        with nullcontext() if on_logits else torch.no_grad():
            src = feats if on_logits else {m: x.detach() for m, x in feats.items()}
            blank = (blank_features(model, batch, ms) if p.blank == "input"
                     else {m: torch.zeros_like(x) for m, x in src.items()})
            f = subset_logits(lambda fs: model.head(fs).fused, src, blank,
                              {frozenset(ms): out.fused if on_logits else out.fused.detach()})
            resp = RESPONSES[p.response](f, ms)
            if on_logits:
                out.extras["agm_loss_logits"] = loss_logits(resp, f, ms, p.response, self._scaled)
        out.extras.update({f"response_{m}": r for m, r in resp.items()})
        return out

    def loss(self, out, batch, st):
        y = batch["label"]
        scores = response_scores({m: out.extras[f"response_{m}"] for m in self.ctx.modalities}, y)
        ratio = score_ratios(scores)
        if self.steps:
            target = score_ratios(self.mean_score)
        else:                                          # r* = 1, made on the device (no host data in a step)
            target = {m: torch.ones((), dtype=torch.float64, device=scores[m].device) for m in scores}
        active = self.p.in_window(st.epoch)
        k = agm_coefficients(ratio, target, self.p.alpha, self.p.clip)
        self.coeff = k if active else {m: 1.0 for m in k}
        self.steps += 1
        for m in scores:
            self.mean_score[m] = self.mean_score[m] + (scores[m].double() - self.mean_score[m]) / self.steps
        e = self._epoch                                # summed on the device, read at the epoch's end
        e["n"] = e.get("n", 0) + 1
        for m in scores:
            c = self.coeff[m]                          # 1.0 (a Python number) outside the window
            e[f"agm_k_{m}"] = e.get(f"agm_k_{m}", 0.0) + (c.double() if torch.is_tensor(c) else c)
            e[f"agm_ratio_{m}"] = e.get(f"agm_ratio_{m}", 0.0) + ratio[m].double()
            e[f"agm_score_{m}"] = e.get(f"agm_score_{m}", 0.0) + scores[m].double()
        loss = self.task_loss(out.extras.get("agm_loss_logits", out.fused), y)   # = CE(fused) up to rounding
        return loss, {"loss_f": loss.detach()}

    def after_backward(self, model, out, batch, st):
        if self.p.grad_clip > 0:
            fired = clip_when_head_leaves(model, self.p.grad_clip)
            if st.found_inf is not None:               # a step GradScaler skips (fp16) clipped nothing
                fired = fired & (st.found_inf <= 0)
            self._epoch["agm_clip_frac"] = self._epoch.get("agm_clip_frac", 0.0) + fired.double()

    def on_epoch_start(self, st):
        self._epoch = {}

    def on_epoch_end(self, st):
        n = max(self._epoch.pop("n", 0), 1)
        return {k: float(v) / n for k, v in self._epoch.items()}

    def state_dict(self):
        return {"mean_score": {m: scalar(v).double() for m, v in self.mean_score.items()}, "steps": self.steps}

    def load_state_dict(self, state):       # (a checkpoint loads to the CPU: the running means go to the device)
        self.mean_score = {m: v.to(self.ctx.device) for m, v in state["mean_score"].items()}
        self.steps = int(state["steps"])
