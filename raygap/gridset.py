"""Several grids run, read or exported together (``raygap run grids/table*.yaml``): every grid
loaded and validated before anything runs, and their union -- each distinct trial once, however
many tables use it (trials are keyed by their config's hash, so the same cell of two tables is
one trial) -- as one :class:`GridSet` the runner takes like a grid (one Tune experiment, shared
warm-ups across tables). No Ray here.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .grid import Grid, TrialSpec


class GridSet:
    """The union of ``grids`` as the runner sees a grid: ``trials`` (every grid's cells, in the
    order given), ``distinct()`` (each key once, the first grid's cell), ``name`` (for the Tune
    experiment's folder), ``path`` (the grid files, for messages) and ``grids`` (each one, which
    the store registers and whose tables are written apart)."""

    def __init__(self, grids: list[Grid]):
        if not grids:
            raise ValueError("a GridSet needs at least one grid")
        self.grids = list(grids)
        self.trials: list[TrialSpec] = [t for g in self.grids for t in g.trials]
        self.skipped = [(f"{g.name}: {label}", reason) for g in self.grids for label, reason in g.skipped]
        self.profile = self.grids[0].profile
        variants = {g.variant for g in self.grids}
        self.variant = variants.pop() if len(variants) == 1 else "mixed"
        names = [g.name for g in self.grids]
        self.name = "+".join(names) if len("+".join(names)) <= 60 else f"{names[0]}+{len(names) - 1}more"
        self.path = Path(", ".join(str(g.path) for g in self.grids))

    def distinct(self) -> dict[str, TrialSpec]:
        """key -> the first cell that uses it, over every grid (each distinct trial once)."""
        out: dict[str, TrialSpec] = {}
        for t in self.trials:
            out.setdefault(t.key, t)
        return out

    def shared(self) -> int:
        """How many distinct trials more than one of the grids uses."""
        seen: dict[str, int] = {}
        for g in self.grids:
            for k in g.distinct():
                seen[k] = seen.get(k, 0) + 1
        return sum(1 for n in seen.values() if n > 1)


def check_apart(grids: list[Grid]) -> None:
    """Grids run or exported together must be different files whose tables go to different
    folders: a file given twice, or two files with the same ``name`` (and the same profile and
    ``--set``, so one results folder), is one ConfigError line naming the later file."""
    seen_paths: dict[Path, Grid] = {}
    seen_dirs: dict[str, Grid] = {}
    for g in grids:
        real = Path(g.path).resolve()
        if real in seen_paths:
            raise ConfigError(f"given twice (also as {seen_paths[real].path})", file=str(g.path),
                              hint="name each grid file once")
        seen_paths[real] = g
        if g.store_name in seen_dirs:
            other = seen_dirs[g.store_name]
            raise ConfigError(f"grid name {g.name!r} is also the name of {other.path}: both tables would go to "
                              f"results/{g.name}/{g.variant}", file=str(g.path), key="name",
                              hint=f"rename one of them (e.g. name: {g.name}_b)")
        seen_dirs[g.store_name] = g
