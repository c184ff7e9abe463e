"""A grid row's ``search:`` block: hyperparameters tuned on the validation split, per column
(dataset), instead of fixed values (no Ray, no torch, no optuna here: grid loading reads it).

A row ``OGM-GE (tuned): {method: {name: ogm_ge}, search: {...}}`` holds::

    space:      {dotted trial key: distribution}; a distribution is one of
                {choice: [v1, v2, ...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]} (lo > 0),
                {randint: [lo, hi]} (integers, both ends included)
    samples:    the budget: how many configs are tried per column (an integer >= 1)
    searcher:   optuna (Optuna's TPE, seeded) | random (Optuna's RandomSampler, seeded)
    scheduler:  none | asha | {name: asha, grace: EPOCHS, reduction: FACTOR} -- Ray Tune's
                ASHAScheduler on the per-epoch validation metric (grace 1, reduction 3 by default);
                a sample it stops is ``stopped`` in the store and is never a table cell
    seeds:      the seeds each sample trains on; disjoint from the grid's (table) seeds
    metric:     the validation metric maximised (``val_<metric>``; mae is minimised); default: the
                grid's first metric. Never a test metric.
    batch:      optional: samples asked for (and trained) together per round (default 4; random:
                the whole budget at once)

A profile may hold ``search: {space, samples, searcher, scheduler, seeds, batch}``, laid over every
row's block (its ``space`` replaces the distributions of the keys a row searches, and adds none):
the demo profile's small budget and its learning-rate scale. The row's table cells are the winner's
config trained over the grid's seeds: the winner is picked on the search seeds and reported on
other seeds, so the table never shows the lucky draw of the search (the winner's curse). The row is
footnoted ``tuned on validation: N samples of {space}``. Problems are one ConfigError line naming
the file, the row and the key, with the nearest valid choice.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field

from .config import resolve
from .dotted import set_dotted
from .errors import ConfigError, nearest
from .gridfile import check_seeds
from .spec import TrialSpec

SEARCH_KEY = "search"
KEYS = ("space", "samples", "searcher", "scheduler", "seeds", "metric", "batch")
PROFILE_KEYS = ("space", "samples", "searcher", "scheduler", "seeds", "batch")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SEARCHERS = ("optuna", "random")
SCHEDULERS = ("none", "asha")
ASHA_KEYS = ("name", "grace", "reduction")
MINIMISED = ("mae", "loss")
DEFAULT_BATCH = 4


@dataclass(frozen=True)
class Dist:
    kind: str
    args: tuple

    def example(self):
        """A value of the distribution (its first choice or its low end): to validate the key."""
        return self.args[0]

    def __str__(self) -> str:
        if self.kind == "choice":
            return "{" + ", ".join(str(a) for a in self.args) + "}"
        return f"{self.kind}[{self.args[0]:g}, {self.args[1]:g}]"


@dataclass
class Search:
    space: dict[str, Dist]
    samples: int
    searcher: str
    scheduler: str
    seeds: list[int]
    metric: str
    grace: int = 1
    reduction: int = 3
    batch: int = DEFAULT_BATCH
    bases: list = field(default_factory=list)      # (column, raw trial config without seed) per column

    @property
    def mode(self) -> str:
        return "min" if self.metric in MINIMISED else "max"

    def space_text(self) -> str:
        return "{" + ", ".join(f"{k}: {d}" for k, d in self.space.items()) + "}"

    def note(self) -> str:
        return f"tuned on validation: {self.samples} samples of {self.space_text()}"

    def describe(self) -> dict:
        """The settings as stored in search.json and the store."""
        return {"space": {k: {d.kind: list(d.args)} for k, d in self.space.items()}, "samples": self.samples,
                "searcher": self.searcher, "scheduler": self.scheduler,
                **({"grace": self.grace, "reduction": self.reduction} if self.scheduler == "asha" else {}),
                "seeds": self.seeds, "metric": f"val_{self.metric}", "mode": self.mode}

    def search_id(self, raw: dict) -> str:
        """The id of one column's search: its base config, space, searcher, seeds, metric and
        scheduler (not the budget: a larger budget continues the same search)."""
        ident = {"base": raw, **self.describe()}
        ident.pop("samples")
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def sample_specs(self, label: str, column: dict, raw: dict, params: dict, seeds: list[int]) -> list[TrialSpec]:
        """The trials of one sample (``params``) over ``seeds``: ordinary trials of the row."""
        cfg = copy.deepcopy(raw)
        for k, v in params.items():
            set_dotted(cfg, k, copy.deepcopy(v))
        cfg["seed"] = seeds[0]
        first = resolve(cfg)
        out = []
        for seed in seeds:
            c = first if seed == seeds[0] else first.with_seed(seed)
            out.append(TrialSpec(label, dict(column), seed, c, c.key(), c.part("resources")["resources"]))
        return out


def _where(file, label, key=None) -> dict:
    return {"file": file, "key": f"rows.{label}.search" + (f".{key}" if key else "")}


def _int(v, what: str, file, label, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"expected an integer >= {lo}, got {v!r}", **_where(file, label, what))
    return v


def _dist(key: str, doc, file, label) -> Dist:
    if not isinstance(doc, dict) or len(doc) != 1:
        raise ConfigError(f"expected one distribution ({', '.join(DISTRIBUTIONS)}), e.g. {{uniform: [0.1, 1.0]}}, "
                          f"got {doc!r}"[:200], **_where(file, label, f"space.{key}"))
    (kind, args), = doc.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"unknown distribution {kind!r}", **_where(file, label, f"space.{key}"),
                          hint=f"nearest valid choice: {nearest(str(kind), DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args or any(isinstance(a, (dict, list)) for a in args):
            raise ConfigError(f"choice needs a non-empty list of plain values, got {args!r}"[:200],
                              **_where(file, label, f"space.{key}"))
        return Dist(kind, tuple(args))
    nums = isinstance(args, list) and len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)
    if not nums or not args[0] < args[1]:
        raise ConfigError(f"{kind} needs [lo, hi] with lo < hi, got {args!r}"[:200], **_where(file, label, f"space.{key}"))
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"loguniform needs lo > 0, got {args[0]!r}", **_where(file, label, f"space.{key}"))
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"randint needs integers, got {args!r}", **_where(file, label, f"space.{key}"),
                          hint="nearest valid choice: uniform")
    return Dist(kind, (args[0], args[1]) if kind == "randint" else (float(args[0]), float(args[1])))


def _settings(doc: dict, out: dict, file, label, allowed) -> None:
    """The scalar settings of a row's block or of a profile's ``search:`` into ``out``."""
    for k, v in doc.items():
        if k not in allowed:
            raise ConfigError("unknown key", **_where(file, label, str(k)),
                              hint=f"nearest valid key: {nearest(str(k), allowed)}")
        if k in ("samples", "batch"):
            out[k] = _int(v, k, file, label)
        elif k == "searcher":
            if v not in SEARCHERS:
                raise ConfigError(f"unknown searcher {v!r}", **_where(file, label, k),
                                  hint=f"nearest valid choice: {nearest(str(v), SEARCHERS)}")
            out[k] = v
        elif k == "scheduler":
            sched = {"name": v} if not isinstance(v, dict) else dict(v)
            for sk in sched:
                if sk not in ASHA_KEYS:
                    raise ConfigError("unknown key", **_where(file, label, f"scheduler.{sk}"),
                                      hint=f"nearest valid key: {nearest(str(sk), ASHA_KEYS)}")
            name = "none" if sched.get("name") in (None, False) else sched["name"]
            if name not in SCHEDULERS:
                raise ConfigError(f"unknown scheduler {name!r}", **_where(file, label, k),
                                  hint=f"nearest valid choice: {nearest(str(name), SCHEDULERS)}")
            out["scheduler"] = name
            if "grace" in sched:
                out["grace"] = _int(sched["grace"], "scheduler.grace", file, label)
            if "reduction" in sched:
                out["reduction"] = _int(sched["reduction"], "scheduler.reduction", file, label, lo=2)
        elif k == "seeds":
            out[k] = check_seeds(v, file, f"rows.{label}.search.seeds")
        elif k == "metric":
            if not isinstance(v, str) or not v or v.startswith(("test_", "val_", "last_")):
                raise ConfigError(f"a metric name as in the grid's metrics (acc, macro_f1, ...), got {v!r}: the "
                                  "search maximises its validation value, never the test one", **_where(file, label, k))
            out[k] = v
        elif k == "space":
            if not isinstance(v, dict) or not v:
                raise ConfigError("expected a mapping {dotted trial key: distribution}", **_where(file, label, k))
            out[k] = {str(key): _dist(str(key), d, file, label) for key, d in v.items()}


def parse_search(doc, label: str, file: str, profile: dict | None, pfile: str | None, metrics: list) -> Search:
    """A row's ``search:`` block (with the profile's ``search:`` laid over it), checked."""
    if not isinstance(doc, dict):
        raise ConfigError(f"expected a mapping with {', '.join(KEYS)}, got {doc!r}"[:200], **_where(file, label))
    got: dict = {}
    _settings(doc, got, file, label, KEYS)
    if profile:
        over: dict = {}
        _settings(profile, over, pfile, label, PROFILE_KEYS)
        if "space" in over and "space" in got:     # only the keys the row searches: the demo's scale of lr
            over["space"] = {k: over["space"].get(k, d) for k, d in got["space"].items()}
        got.update(over)
    for need in ("space", "samples", "seeds"):
        if need not in got:
            raise ConfigError(f"missing {need!r}", **_where(file, label),
                              hint="e.g. space: {method.alpha: {uniform: [0.1, 1.0]}}, samples: 16, seeds: [100]")
    searcher = got.get("searcher", "optuna")
    return Search(space=got["space"], samples=got["samples"], searcher=searcher,
                  scheduler=got.get("scheduler", "none"), seeds=got["seeds"], metric=got.get("metric", str(metrics[0])),
                  grace=got.get("grace", 1), reduction=got.get("reduction", 3),
                  batch=got.get("batch", got["samples"] if searcher == "random" else DEFAULT_BATCH))


def check_profile_search(doc, file: str) -> dict:
    """A profile's ``search:`` (checked when it is laid over a row's block)."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"expected a mapping of {', '.join(PROFILE_KEYS)}", file=file, key="search")
    for k in doc:
        if k not in PROFILE_KEYS:
            raise ConfigError("unknown key", file=file, key=f"search.{k}",
                              hint=f"nearest valid key: {nearest(str(k), PROFILE_KEYS)}")
    return doc


def attach_searches(grid, searches: dict[str, Search], file: str) -> None:
    """Check each search against the grid's seeds and its trial keys (a value of every
    distribution resolved in each column's config), footnote its row, keep it on the grid."""
    for label, s in searches.items():
        both = sorted(set(s.seeds) & set(grid.seeds))
        if both:
            free = max(grid.seeds + s.seeds) + 1
            raise ConfigError(f"search seeds {s.seeds} share {both} with the table seeds {grid.seeds}: the winner "
                              "would be reported on the seeds it was picked on (the winner's curse)",
                              **_where(file, label, "seeds"), hint=f"e.g. seeds: [{free}]")
        for column, raw in s.bases:
            for key, d in s.space.items():
                try:
                    s.sample_specs(label, column, raw, {key: d.example()}, s.seeds[:1])
                except ConfigError as e:
                    col = ", ".join(f"{k}={v}" for k, v in column.items())
                    raise ConfigError(e.problem, file=file, key=f"rows.{label}.search.space.{key}"
                                      + (f" [{col}]" if col else "") + (f" ({e.key})" if e.key and e.key != key else ""),
                                      hint=e.hint) from None
        note = s.note()
        grid.notes[label] = f"{grid.notes[label]}; {note}" if grid.notes.get(label) else note
    grid.searches = searches


FINAL = ("done", "stopped", "failed")          # a sample's statuses that count against the budget


def best_sample(samples: list[dict], mode: str) -> dict | None:
    """The best done sample by its validation value (a tie maximised: the earlier sample), or None:
    the winner once the budget is spent, the best so far before."""
    done = [x for x in samples if x.get("status") == "done" and x.get("value") == x.get("value")
            and x.get("value") is not None]
    if not done:
        return None
    return (min if mode == "min" else max)(done, key=lambda x: (x["value"], -x["index"]))


def search_ids(grid) -> list[str]:
    return [s.search_id(raw) for s in getattr(grid, "searches", {}).values() for _, raw in s.bases]


def winners_from(grid, store) -> int:
    """:func:`apply_winners` with the searches ``store`` holds for ``grid`` (a table, status, an
    export, ``raygap.results``: every reader of a grid with searched rows)."""
    if not getattr(grid, "searches", None):
        return 0
    return apply_winners(grid, store.searches(search_ids(grid)))


def apply_winners(grid, records: dict[str, dict]) -> int:
    """Add the table cells of each searched (row, column) whose search has spent this grid's budget
    and has a winner (``records``: search id -> the store's record of it): the winner's config
    over the grid's seeds. A winner of a smaller budget is not used (the search goes on). Returns
    how many (row, column) pairs got cells."""
    have = {(t.label, json.dumps(t.column, sort_keys=True, default=str)) for t in grid.trials}
    n = 0
    for label, s in getattr(grid, "searches", {}).items():
        for column, raw in s.bases:
            rec = records.get(s.search_id(raw)) or {}
            params = rec.get("winner")
            spent = sum(1 for x in rec.get("samples") or [] if x.get("status") in FINAL) >= s.samples
            if params is None or not spent or (label, json.dumps(column, sort_keys=True, default=str)) in have:
                continue
            grid.trials.extend(s.sample_specs(label, column, raw, params, grid.seeds))
            n += 1
    return n


def search_cost(grid) -> list[str]:
    """Lines for ``--dry-run``: each search's cost in epochs against the fixed row it replaces."""
    out = []
    for label, s in getattr(grid, "searches", {}).items():
        cols = len(s.bases)
        epochs = [int(resolve({**copy.deepcopy(raw), "seed": s.seeds[0]}).train.epochs) for _, raw in s.bases]
        search = sum(e * s.samples * len(s.seeds) for e in epochs)
        cells = sum(e * len(grid.seeds) for e in epochs)
        out.append(f"search {label!r}: {cols} column(s) x {s.samples} samples x {len(s.seeds)} seed(s) = "
                   f"{search} epochs at most ({s.searcher}, scheduler {s.scheduler}) + the winner on the table "
                   f"seeds {cells} epochs; the fixed row it replaces: {cells} epochs "
                   f"({(search + cells) / max(cells, 1):.1f}x)")
    return out
