"""Whether a cell of ours may stand beside the paper's number: its settings against the paper's.

The paper's settings for a cell are those of the same cell under the ``paper`` profile
(``grids/profiles/paper.yaml``, or the one beside the grid's own profile; no ``--set``): what the paper states (:data:`STATED`, Section
IV-B and the dataset descriptions) and, for everything it does not state, raygap's readings
(docs/method.md). A cell whose resolved config differs from that in any key that changes its
numbers (:data:`NOT_COMPARED` lists the keys that do not) is not comparable, whatever the
profile is called: ``--set train.epochs=12`` on the paper profile makes every cell differ.
The seeds are compared too (the paper's count is a reading: it reports no seeds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .dotted import flatten
from .errors import ConfigError
from .render import md_escape, md_table

# what Section IV-B (and IV-A for the data) says; every other compared value is a reading of raygap's
STATED = {"data.name": "CREMA-D, AVE, Kinetics-Sounds (Section IV-A)",
          "model.backbone": "ResNet-18 from random initialization (Section IV-B)",
          "optim.name": "SGD (Section IV-B)", "optim.momentum": "momentum 0.9 (Section IV-B)",
          "optim.lr": "initial learning rate 2e-3 (Section IV-B)"}
# the settings every report lists, stated or read, in this order (then any other key that differs)
SHOWN = ("data.name", "data.split", "model.backbone", "optim.name", "optim.lr", "optim.momentum",
         "optim.weight_decay", "optim.scheduler", "train.epochs", "train.batch_size", "data.image_size",
         "data.num_frames", "train.amp", "method.warmup_epochs", "method.alpha", "method.beta", "method.gamma", "seeds")
SETTINGS_HEADER = ("setting", "ours", "the paper's", "source")    # the header of the table of SHOWN
# keys that never change a trial's numbers: where it runs and how its data are read or checked
NOT_COMPARED = {"seed", "train.device", "train.threads", "train.num_workers", "train.eval_batch_size",
                "train.checkpoint", "data.root", "data.pipeline", "data.cache_side", "data.verify_media",
                "data.on_bad_media"}


@dataclass
class Comparability:
    """``cells``: (row, column index) -> the differences of that cell, each (key, ours, the paper's);
    an empty list: the cell's settings are the paper's. ``shown``: key -> (ours, the paper's,
    stated or read) for :data:`SHOWN` (from the reference row's first cell that has a paper counterpart)."""
    cells: dict[tuple[str, int], list[tuple[str, object, object]]] = field(default_factory=dict)
    shown: dict[str, tuple[object, object, str]] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)
    problem: str = ""

    def matches(self, label: str, ci: int) -> bool:
        return not self.problem and self.cells.get((label, ci)) == []

    def differences(self) -> dict[str, tuple[set, set, int]]:
        """key -> (our values, the paper's values, cells that differ there), over every cell."""
        out: dict[str, tuple[set, set, int]] = {}
        for diffs in self.cells.values():
            for key, ours, paper in diffs:
                o, p, n = out.get(key, (set(), set(), 0))
                out[key] = (o | {_text(ours)}, p | {_text(paper)}, n + 1)
        return out


def _text(v) -> str:
    return "(none)" if v is None else str(v)


def source_of(key: str) -> str:
    return f"stated: {STATED[key]}" if key in STATED else "raygap's reading (docs/method.md)"


def against_paper(grid, paper_grid=None) -> Comparability:
    """Every cell of ``grid`` against the same cell of ``paper_grid`` (default: ``grid``'s file
    under the paper profile)."""
    out = Comparability(sets=list(grid.sets or []))
    if paper_grid is None:
        from .grid import load_grid

        try:
            paper_grid = load_grid(grid.path, profile="paper", profiles_dir=grid.profiles_dir)
        except ConfigError as e:
            out.problem = f"the paper profile of {grid.path.name} does not expand ({e})"
            return out
    theirs, by_row = {}, {}
    for t in paper_grid.trials:
        theirs.setdefault((t.label, tuple(sorted(t.column.items()))), t)
        by_row.setdefault(t.label, t)
    seeds_ours, seeds_paper = list(grid.seeds), list(paper_grid.seeds)
    paper_data = sorted({str(t.config.data.name) for t in paper_grid.trials})
    for ci, col in enumerate(grid.column_combos()):
        for label in grid.row_labels:
            cell = grid.cell(label, col)
            if not cell:
                continue
            ours = flatten(cell[0].config.hashed_part())
            p = theirs.get((label, tuple(sorted(col.items()))))
            other_data = p is None     # a column the paper has not (the demo's avdigits): its data differ, and
            p = p or by_row.get(label)  # the rest is compared with the row's first cell in the paper's columns
            paper = flatten(p.config.hashed_part()) if p is not None else {}
            diffs = [(k, ours.get(k), paper.get(k)) for k in sorted(set(ours) | set(paper))
                     if k not in NOT_COMPARED and ours.get(k) != paper.get(k) and not (other_data and k.startswith("data."))]
            if other_data:
                diffs.insert(0, ("data.name", ours.get("data.name"), ", ".join(paper_data)))
            if seeds_ours != seeds_paper:
                diffs.append(("seeds", seeds_ours, seeds_paper))
            out.cells[(label, ci)] = diffs
            if label == (grid.reference or grid.row_labels[0]) and not out.shown:
                out.shown = _shown(ours, paper, seeds_ours, seeds_paper)
    if not out.shown and grid.trials:          # no cell of the reference row has a counterpart: the first ones
        ours = flatten(grid.trials[0].config.hashed_part())
        first = flatten(paper_grid.trials[0].config.hashed_part()) if paper_grid.trials else {}
        out.shown = _shown(ours, first, seeds_ours, seeds_paper)
    return out


def _shown(ours: dict, paper: dict, seeds_ours: list, seeds_paper: list) -> dict:
    """key -> (ours, the paper's, source) for :data:`SHOWN` (a key neither config has left out)."""
    vals = {k: ((seeds_ours, seeds_paper) if k == "seeds" else (ours.get(k), paper.get(k))) for k in SHOWN}
    return {k: (o, p, source_of(k)) for k, (o, p) in vals.items() if o is not None or p is not None}


def header_lines(c: Comparability) -> list[str]:
    """Markdown: the ``--set`` items in force, every difference from the paper's settings (with
    how many cells it touches), and the table of the main settings, each marked stated or read."""
    lines = []
    if c.sets:
        lines += ["", "--set in force: " + ", ".join(md_escape(s) for s in c.sets) + "."]
    if c.problem:
        return lines + ["", md_escape(f"Settings not compared with the paper's: {c.problem}.")]
    diffs = c.differences()
    n = len(c.cells)
    same = sum(1 for d in c.cells.values() if not d)
    if diffs:
        lines += ["", f"**Settings that differ from the paper's** ({n - same} of {n} cells; \"ours − paper\" is shown "
                  "only for cells whose settings are the paper's):", ""]
        lines += [md_escape(f"- {key}: ours {', '.join(sorted(ours))}; the paper's {', '.join(sorted(paper))} "
                            f"({source_of(key)}; {k} cell(s))")
                  for key, (ours, paper, k) in sorted(diffs.items())]
    else:
        lines += ["", f"Every cell's settings are the paper's ({n} cells)."]
    if c.shown:
        lines += ["", *md_table(list(SETTINGS_HEADER),
                                [[k, _text(o), _text(p), src] for k, (o, p, src) in c.shown.items()])]
    return lines


def paper_conflicts(grid, siblings: list | None = None) -> list[tuple]:
    """Where the paper contradicts itself for this grid: a cell whose trials are also a cell of
    another grid (raygap runs a config once, so one trial stands beside both published numbers)
    for which the paper reports another number. ``siblings``: the other grids (default: every
    other grid file beside ``grid``'s with ``paper_results``, expanded as ``grid`` was). Returns
    (row, column value, metric, the number here, other grid, its row, the number there), sorted."""
    if siblings is None:
        from .grid import load_grid

        siblings = []
        for path in sorted(grid.path.parent.glob("*.yaml")):
            if path.resolve() == grid.path.resolve():
                continue
            try:
                g = load_grid(path, profile=grid.profile, sets=grid.sets, profiles_dir=grid.profiles_dir)
            except ConfigError:
                continue                   # a grid that does not expand here has no cell to share
            if g.paper:
                siblings.append(g)
    where: dict[str, list[tuple]] = {}
    for g in siblings:
        for t in g.trials:
            if len(t.column) == 1:
                where.setdefault(t.key, []).append((g, t.label, str(next(iter(t.column.values())))))
    out = set()
    for t in grid.trials:
        if len(t.column) != 1:
            continue
        v = str(next(iter(t.column.values())))
        for m in grid.metrics:
            here = grid.paper.get(t.label, {}).get(v, {}).get(m)
            for g, label, v2 in where.get(t.key, []):
                there = g.paper.get(label, {}).get(v2, {}).get(m)
                if here is not None and there is not None and here != there:
                    out.add((t.label, v, m, here, g.name, label, there))
    return sorted(out)
