"""What one ``raygap run`` did: :class:`RunSummary`, filled by the driver and its callback, read by the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunSummary:
    total: int = 0                    # distinct trials in the grid
    reused: int = 0                   # already done before this run
    launched: int = 0
    done: int = 0                     # finished in this run
    failed: dict[str, str] = field(default_factory=dict)    # key -> error line
    stopped: int = 0                  # ended early by a search's scheduler (ASHA): `stopped` in the store
    unfinished: int = 0               # launched but neither done nor failed (the run was interrupted)
    interrupted: str | None = None    # the signal that stopped the run, if one did
    marked_interrupted: int = 0       # running trials marked interrupted in the store
    dropped: dict[str, str] = field(default_factory=dict)   # key -> the line: its claim was lost to another driver
    wall_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.failed:
            return 1
        return 130 if self.unfinished else 0

