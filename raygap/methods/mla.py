"""MLA: multimodal learning with alternating unimodal adaptation (Zhang, Latham & Yao, CVPR 2024),
as the paper describes it (the official Cecile-hi code departs from it twice, see docs/methods.md).

Training, per batch, one optimizer step per modality in turn (the ``phases`` hook), each through
the one head shared by every modality (``model.fusion: shared``, W of size K x D):

    L_m = CE(W phi_m(x_m) + b, y)                        only modality m's encoder and the head move

Gradient modification of the shared head (orthogonal weight modification): each modality m keeps
a projector P_m (D x D, P_m = I at the start). After a step on modality j with batch-mean feature
x = mean_i phi_j(x_i) (detached), every other modality's projector is updated

    P_m <- P_m - (P_m x x^T P_m) / (gamma + x^T P_m x)          (m != j)

and the head's weight gradient of a step on modality m is replaced by dW P_m, which is orthogonal
to the feature directions of the other modalities seen so far (as gamma -> 0): the step on m
leaves the head's outputs on those directions unchanged.

Test-time fusion, per sample: the entropy e_m = -sum_k p_mk log p_mk of softmax(logits_m), weights
lambda_m = exp(max_j e_j - e_m) / sum_l exp(max_j e_j - e_l), fused = sum_m lambda_m logits_m
(the more confident modality counts more). ``fusion_test: entropy_batch`` is the official code's
``--dynamic`` form instead (one weight per modality per batch, see :func:`batch_entropy_weights`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..lazy import lazy
from ..models.output import ModelOutput
from ..params import F
from ..registry import METHODS
from .base import Method

torch = lazy("torch")


@dataclass
class MLAParams:
    gamma: float = F(1e-3, range=(1e-12, 1e6), help="gamma of the projector update (OWM's alpha)")
    project: bool = F(False, help="orthogonal projection of the shared head's weight gradient (the paper's; "
                                  "the official code's projection never fires, so its published numbers are "
                                  "plain alternation: off by default)")
    fusion_test: str = F("entropy", choices=["entropy", "entropy_batch", "mean"],
                         help="test-time fusion: entropy-weighted logits per sample (the paper's), one weight per "
                              "modality per batch from the entropy of a softmax over the batch dimension (the "
                              "official code's --dynamic; depends on train.eval_batch_size), or their plain mean "
                              "(the official code without --dynamic)")


def update_projector(P: torch.Tensor, x: torch.Tensor, gamma: float) -> torch.Tensor:
    """P - (P x x^T P) / (gamma + x^T P x) for one direction x (D,)."""
    Px = P @ x
    return P - torch.outer(Px, x @ P) / (gamma + x @ Px)


def entropy_weights(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample lambda_m = exp(max_j e_j - e_m) / sum_l exp(max_j e_j - e_l), e the entropy."""
    ms = list(logits)
    ent = []
    for m in ms:
        logp = torch.log_softmax(logits[m].float(), dim=1)
        ent.append(-(logp.exp() * logp).sum(1))
    e = torch.stack(ent, 1)                                            # (B, M)
    w = torch.exp(e.max(1, keepdim=True).values - e)
    w = w / w.sum(1, keepdim=True)
    return {m: w[:, i] for i, m in enumerate(ms)}


def batch_entropy_weights(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official code's ``--dynamic`` weighting: per modality one entropy over the whole batch,
    e_m = -sum_{i,k} q_mik log q_mik with q_m = softmax(logits_m) over the batch dimension (dim 0),
    and lambda_m = exp(max_j e_j - e_m) / sum_l exp(max_j e_j - e_l), the same for every sample
    of the batch (returned per sample, shape (B,))."""
    ms = list(logits)
    ent = []
    for m in ms:
        logq = torch.log_softmax(logits[m].float(), dim=0)
        ent.append(-(logq.exp() * logq).sum())
    e = torch.stack(ent)                                               # (M,)
    w = torch.exp(e.max() - e)
    w = w / w.sum()
    n = next(iter(logits.values())).shape[0]
    return {m: w[i].expand(n) for i, m in enumerate(ms)}


# version 2: no projection by default (project: false), as the official code runs
@METHODS.register("mla", params=MLAParams, version=2, fusion="shared")
class MLA(Method):
    """Alternating unimodal steps through a shared head with orthogonal head-gradient projection."""

    def __init__(self, params: MLAParams, ctx):
        super().__init__(params, ctx)
        self.P: dict[str, torch.Tensor] = {}

    def setup(self, model):
        d = model.fusion.fc.in_features
        self.P = {m: torch.eye(d, device=self.ctx.device) for m in self.ctx.modalities}

    def phases(self, st):
        return tuple(self.ctx.modalities)

    def forward(self, model, batch, st):
        m = st.phase
        f = model.encoders[m](batch[m])
        logits = model.fusion.fc(f)
        return ModelOutput({m: f}, {m: logits}, logits)

    def loss(self, out, batch, st):
        (m,) = out.logits
        loss, logs = super().loss(out, batch, st)
        return loss, {f"loss_{m}": logs["loss_f"]}

    def after_backward(self, model, out, batch, st):
        (m,) = out.features
        w = model.fusion.fc.weight
        if self.p.project and w.grad is not None:
            w.grad.copy_((w.grad.float() @ self.P[m]).to(w.grad.dtype))
        if not self.p.project:
            return
        x = out.features[m].detach().float().mean(0)
        skip = st.found_inf                            # > 0: GradScaler skips this step (fp16): the head
        for j in self.P:                               # learnt nothing on x, so nothing to protect
            if j != m:
                new = update_projector(self.P[j], x, self.p.gamma)
                self.P[j] = new if skip is None else torch.where(skip > 0, self.P[j], new)

    def on_epoch_end(self, st):
        """trace(P_m) / D: the share of feature directions the head may still move on for m."""
        if not self.p.project:
            return {}
        return {f"mla_free_{m}": float(torch.trace(P)) / len(P) for m, P in self.P.items()}

    def predict(self, model, batch) -> ModelOutput:
        out = model(batch)
        if self.p.fusion_test != "mean":
            lam = (entropy_weights if self.p.fusion_test == "entropy" else batch_entropy_weights)(out.logits)
            out.fused = sum(lam[m][:, None].to(out.logits[m].dtype) * out.logits[m] for m in out.logits)
        return out

    def state_dict(self):
        return {"P": {m: p.cpu() for m, p in self.P.items()}}

    def load_state_dict(self, state):
        self.P = {m: p.to(self.ctx.device) for m, p in state["P"].items()}
