"""My method: a plug-in of this project (grids/mine.yaml names this file in `plugins:`).

raygap imports the file before it validates a config, in every process of a run (Ray ships it
to the workers, on any node), so the method is used by name like a built-in one:
`method: {name: mine, alpha: 0.5}`. The trial key holds the name and `version=`: bump it when a
change alters what the method computes (raygap also warns when this file changed since a
stored trial ran). Hooks: raygap/methods/base.py; the built-in methods are examples.
"""
from dataclasses import dataclass

from raygap.methods.base import Method, unimodal_ce
from raygap.params import F
from raygap.registry import METHODS


@dataclass
class MineParams:                     # the method's own keys under `method:`, checked at load
    alpha: float = F(0.5, range=(0.0, 10.0), help="weight of each modality's own cross-entropy")


@METHODS.register("mine", params=MineParams, version=1, min_modalities=2)
class Mine(Method):
    """Mine: the fused task loss plus alpha times each modality's own cross-entropy (a template to edit)."""

    def loss(self, out, batch, st):
        loss, logs = super().loss(out, batch, st)           # the task loss of the fused output, "loss_f"
        uni = unimodal_ce(out, batch["label"])              # per modality: its share of the fusion logits
        extra = self.p.alpha * sum(uni.values())
        return loss + extra, {**logs, "loss_uni": extra.detach()}
