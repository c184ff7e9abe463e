"""Errors that the CLI turns into one line and exit code 2 (bad input), and :func:`nearest`,
the "nearest valid ..." hint such a line gives."""
from __future__ import annotations

import difflib


def nearest(word: str, choices) -> str | None:
    """The choice closest to ``word`` (difflib's ratio; None when there are no choices)."""
    choices = [str(c) for c in choices]
    m = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.0)
    return m[0] if m else None


class ConfigError(Exception):
    """Bad user input: a config/grid key, value or file. Printed as one line, exit 2."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 hint: str | None = None):
        self.file, self.key, self.hint, self.problem = file, key, hint, message
        super().__init__(self.line())

    def line(self) -> str:
        parts = []
        if self.file:
            parts.append(str(self.file))
        if self.key:
            parts.append(self.key)
        msg = ": ".join(parts + [self.problem])
        if self.hint:
            msg += f" ({self.hint})"
        return msg

    def with_file(self, file: str) -> "ConfigError":
        if not self.file:
            self.file = file
            self.args = (self.line(),)
        return self


class DataError(Exception):
    """Missing or corrupt media / dataset layout problems. Names the offending file."""


class StoreError(Exception):
    """The trial store (or the results folder) cannot be used: corrupt, truncated, locked,
    read-only or full. One line naming the file and what to do; exit 2."""

    def __init__(self, path, problem: str, advice: str = ""):
        self.path, self.problem, self.advice = str(path), problem, advice
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.path}: {self.problem}" + (f"; {self.advice}" if self.advice else "")


class CheckpointMismatch(RuntimeError):
    """A trial directory holds another trial's checkpoint (its key differs)."""


class DeviceUnavailable(RuntimeError):
    """A trial asks for CUDA (train.device=cuda, or a GPU share) where CUDA is unusable."""


class CheckpointDeviceMismatch(CheckpointMismatch):
    """A checkpoint written on one kind of device (cpu, cuda) met a trial on another: it cannot
    continue exactly there (other kernels, other random generators), so it is not resumed."""
