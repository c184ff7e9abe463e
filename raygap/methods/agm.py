"""AGM: adaptive gradient modulation (Li et al., ICCV 2023), after the paper and the public
lihongcs/AGM code as summarized in docs/methods.md.

Per batch, with f(S) the fused logits when only the modalities in S keep their features (the
others' features zeroed):

    response     phi_m = sum_{S without m} |S|! (M-|S|-1)! / M! * (f(S + m) - f(S))   (Shapley value;
                 for two modalities 1/2 [f(a,v) - f(0,v) + f(a,0) - f(0,0)]; for a linear concat
                 head exactly W^m x_m)
    score        L_m = mean_i -log max(softmax(phi_m)_{i,y_i}, 1e-8)
    ratio        r_m = exp(mean_{j != m} L_j - L_m)          (two modalities: exp(L_v - L_a) for audio)
    target       r*_m = exp(mean_{j != m} Lbar_j - Lbar_m)   (Lbar: running mean of L over the batches
                                                              before this one; r* = 1 on the first)
    coefficient  k_m = exp(alpha * min(r*_m - r_m, clip))
    L            = CE(fused); the gradient reaching modality m's features is multiplied by k_m
                   (a backward hook on phi_m's encoder output)
    clipping     after the backward pass, when any weight gradient of the fusion head leaves
                 [-c, c], the whole model's gradient is clipped to norm c (``grad_clip``; the AGM
                 training code does this with c = 1, BalanceBenchmark with c = 5): k_m reaches
                 e^{alpha * clip} (e^10.5 ~ 36,000 at the defaults), and without the bound the
                 encoders diverge once the modalities' losses drift apart

A modality doing better than its running level (r_m > r*_m) is slowed, one falling behind is sped
up. Outside modulation_starts..modulation_ends (both included) the coefficients are 1 (the running means still
update).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from .base import Method, WindowParams, scalar

torch = lazy("torch")


@dataclass
class AGMParams(WindowParams):
    alpha: float = F(1.5, range=(0.0, 100.0), help="alpha of k = exp(alpha * (target - ratio)) (1.5 on CREMA-D)")
    clip: float = F(7.0, range=(0.0, 100.0), help="upper clip of target - ratio before the exponential (official: 7)")
    modulation_ends: int = F(100000, range=(0, 100000), help="last epoch of modulation (included): every epoch")
    grad_clip: float = F(1.0, range=(0.0, 1e6),
                         help="when a fusion-head weight gradient leaves [-c, c], clip the model's gradient norm to c "
                              "(AGM training code: 1; BalanceBenchmark: 5); 0: never clip")


def shapley_responses(head, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """phi_m for every modality from 2^M evaluations of ``head`` (feats -> fused logits) with the
    absent modalities' features zeroed."""
    ms = list(feats)
    n = len(ms)
    cache: dict[frozenset, torch.Tensor] = {}

    def f(subset: frozenset) -> torch.Tensor:
        if subset not in cache:
            cache[subset] = head({m: (x if m in subset else torch.zeros_like(x)) for m, x in feats.items()})
        return cache[subset]

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


def agm_coefficients(ratio: dict, target: dict, alpha: float, clip: float) -> dict[str, torch.Tensor]:
    """k_m = exp(alpha * min(target_m - ratio_m, clip))."""
    return {m: torch.exp(alpha * (scalar(target[m]) - scalar(ratio[m])).clamp(max=clip)) for m in ratio}


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
@METHODS.register("agm", params=AGMParams, version=4, min_modalities=2)
class AGM(Method):
    """CE(fused) with each modality's feature gradient scaled by its Shapley-response coefficient."""

    @classmethod
    def check_config(cls, p, c, modalities):
        p.check_window(c["train"]["epochs"], "AGM's modulation")

    def __init__(self, params: AGMParams, ctx):
        super().__init__(params, ctx)
        self.mean_score: dict = {m: 0.0 for m in ctx.modalities}   # running means over all batches so far (float64)
        self.steps = 0
        self.coeff = {m: 1.0 for m in ctx.modalities}
        self._epoch = {}

    def forward(self, model, batch, st=None):
        feats = model.encode(batch)
        if torch.is_grad_enabled():
            for m, x in feats.items():
                if x.requires_grad:
                    x.register_hook(lambda g, m=m: g * self.coeff[m])   # read at backward time
        out = model.head(feats)
        with torch.no_grad():
            resp = shapley_responses(lambda fs: model.head(fs).fused, {m: x.detach() for m, x in feats.items()})
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
        loss = self.task_loss(out.fused, y)
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
