"""The MMTM block (multimodal transfer module, Joze et al., CVPR 2020) as the Greedy method uses it
(``raygap/methods/greedy.py`` documents the method and the block's equations): an ``nn.Module``,
so it lives with the models and is imported when a Greedy trial builds its model."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as Fn


def squeeze_map(h: torch.Tensor, bt) -> torch.Tensor:
    """(B, C): global average of a (B, C, h, w) map, or of a (B*T, C, h, w) frame map over T, h, w."""
    if bt is None:
        return h.mean(dim=(2, 3))
    return h.unflatten(0, bt).mean(dim=(1, 3, 4))


def excite_map(h: torch.Tensor, gate: torch.Tensor, bt) -> torch.Tensor:
    """Multiply a map's channels by a (B, C) gate (for frames, the same gate for each of the T frames)."""
    if bt is not None:
        gate = gate.repeat_interleave(bt[1], dim=0)
    return h * gate[:, :, None, None].to(h.dtype)


class MMTM(nn.Module):
    """Multimodal transfer module for two feature maps, with running means for the bypass."""

    def __init__(self, c0: int, c1: int, ratio: float = 4.0, double_gate: bool = False):
        super().__init__()
        hidden = max(1, int(2 * (c0 + c1) / ratio))
        self.dims = (c0, c1)
        self.double_gate = double_gate
        self.squeeze_fc = nn.Linear(c0 + c1, hidden)
        self.excite = nn.ModuleList([nn.Linear(hidden, c0), nn.Linear(hidden, c1)])
        for k, c in enumerate(self.dims):
            self.register_buffer(f"avg_squeeze_{k}", torch.zeros(c))
            self.register_buffer(f"avg_gate_{k}", torch.zeros(c))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def avg_squeeze(self, k: int) -> torch.Tensor:
        return getattr(self, f"avg_squeeze_{k}")

    def avg_gate(self, k: int) -> torch.Tensor:
        return getattr(self, f"avg_gate_{k}")

    def _gate(self, k: int, joint: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.excite[k](Fn.relu(self.squeeze_fc(joint))))
        return 2.0 * g if self.double_gate else g

    def gates(self, s: list[torch.Tensor], cut: int | None = None, bypass: str = "squeeze",
              update: bool = False) -> list[torch.Tensor]:
        """(B, C_k) gates from the squeeze vectors s = [s_0, s_1]. ``cut``: the modality whose gate
        must not see the other modality's current sample (bypass). ``update``: fold this batch into
        the running means (after the gates are computed from the previous means)."""
        joint = torch.cat(s, dim=1)
        full = [self._gate(k, joint) for k in range(2)]
        g = list(full)
        if cut is not None:
            other = 1 - cut
            if bypass == "squeeze":
                parts = [None, None]
                parts[cut] = s[cut]
                parts[other] = self.avg_squeeze(other).to(s[other].dtype).expand_as(s[other]).clone()
                g[cut] = self._gate(cut, torch.cat(parts, dim=1))
            else:
                g[cut] = self.avg_gate(cut).to(g[cut].dtype).expand_as(g[cut]).clone()   # the buffer moves on
        if update:
            self.update_running(s, full)
        return g

    @torch.no_grad()
    def update_running(self, s: list[torch.Tensor], g: list[torch.Tensor]) -> None:
        """Cumulative means over training forwards: avg <- (x.mean(0) + n avg) / (n + 1)."""
        n = self.steps.to(torch.float32)              # stays on the device: no host sync per step
        for k in range(2):
            for avg, x in ((self.avg_squeeze(k), s[k]), (self.avg_gate(k), g[k])):
                avg.copy_((x.detach().float().mean(0) + n * avg) / (n + 1.0))
        self.steps += 1

    def forward(self, hs: list[torch.Tensor], bts: list, cut: int | None = None, bypass: str = "squeeze",
                update: bool = False) -> list[torch.Tensor]:
        s = [squeeze_map(h, bt) for h, bt in zip(hs, bts)]
        g = self.gates(s, cut=cut, bypass=bypass, update=update)
        return [excite_map(h, gk, bt) for h, gk, bt in zip(hs, g, bts)]
