"""A grid's hyperparameter searches (:mod:`raygap.search`), run before its table: per searched
row and column, Optuna's ask/tell (``optuna``: :class:`optuna.samplers.TPESampler`, seeded, with
the constant liar for the samples asked together; ``random``: :class:`optuna.samplers.RandomSampler`,
seeded) proposes configs, and each sample's trials (one per search seed) run as ordinary trials
through :func:`raygap.runner.driver.run_grid`: deduplicated by trial key, claimed, resumable.
The samples of every open search are asked for round by round (``batch`` per search) and a round
is one ``run_grid`` call (one Tune experiment). ``scheduler: asha``: Ray Tune's
:class:`~ray.tune.schedulers.ASHAScheduler` on ``val_<metric>`` per epoch, one instance per
search (:class:`PerSearchASHA`: a sample competes with its own search's samples only); a trial
it stops is ``stopped`` in the store, with its epochs.

Resume: every sample asked for is in the store (``searches``) before its trials run; a later run
tells the finished ones back to a new study (``add_trial``), asks the unfinished ones again (the
same params, so the same trial keys: resumed from their checkpoints) and only the rest of the
budget is asked for. Once the budget is spent the winner (the best validation value of a done
sample) is stored and written to ``results/<grid>/<variant>/search.json``.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from .. import interrupts
from ..atomic import atomic_write
from ..grid import Grid
from ..search import FINAL, apply_winners, best_sample

@dataclasses.dataclass
class SearchGrid(Grid):
    """The samples of one round, as the runner takes a grid: registered under ``<grid>/<variant>/search``,
    never the grid's table."""

    @property
    def store_name(self) -> str:
        return f"{self.name}/{self.variant}/search"


class _Col:
    """One searched (row, column): its search, base config, id, samples and study."""

    def __init__(self, label, column, raw, search):
        self.label, self.column, self.raw, self.s = label, column, raw, search
        self.sid = search.search_id(raw)
        self.samples: list[dict] = []
        self.study = None
        self.asked: dict[int, object] = {}       # sample index -> its optuna trial (this run)

    def final(self) -> int:
        return sum(1 for x in self.samples if x["status"] in FINAL)

    def open(self) -> bool:
        return self.final() < self.s.samples


def distributions(search) -> dict:
    import optuna.distributions as od

    out = {}
    for k, d in search.space.items():
        if d.kind == "choice":
            out[k] = od.CategoricalDistribution(list(d.args))
        elif d.kind == "randint":
            out[k] = od.IntDistribution(int(d.args[0]), int(d.args[1]))
        else:
            out[k] = od.FloatDistribution(float(d.args[0]), float(d.args[1]), log=d.kind == "loguniform")
    return out


def _study(col: _Col):
    """A new study of ``col``'s search with its finished samples told back and its unfinished
    ones asked again (enqueued: the same params)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = int(col.sid[:8], 16)
    s = col.s
    sampler = (optuna.samplers.RandomSampler(seed=seed) if s.searcher == "random" else
               optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                          n_startup_trials=max(1, min(10, s.samples // 2))))
    study = optuna.create_study(direction="minimize" if s.mode == "min" else "maximize", sampler=sampler)
    dists = distributions(s)
    for x in col.samples:
        if x["status"] == "done":
            study.add_trial(create_trial(params=x["params"], distributions=dists, value=x["value"]))
        elif x["status"] in ("stopped", "failed"):
            study.add_trial(create_trial(params=x["params"], distributions=dists,
                                         state=TrialState.PRUNED if x["status"] == "stopped" else TrialState.FAIL))
    for x in col.samples:
        if x["status"] == "asked":
            study.enqueue_trial(x["params"])
            col.asked[x["index"]] = study.ask(dists)
    col.study = study


def run_searches(grid, store, run, results_dir: Path | None = None, log=print) -> dict:
    """Run the open searches of ``grid`` (``run(sample_grid, scheduler)``: the caller's
    :func:`run_grid` with its options, returning its summary); then add each winner's table cells
    to ``grid``. Returns ``{"samples_run", "stopped", "rounds", "interrupted", "summaries"}``."""
    cols = [_Col(label, column, raw, s) for label, s in grid.searches.items() for column, raw in s.bases]
    recs = store.searches([c.sid for c in cols])
    for c in cols:
        c.samples = list((recs.get(c.sid) or {}).get("samples") or [])
    out = {"samples_run": 0, "stopped": 0, "rounds": 0, "interrupted": None, "summaries": []}
    live = [c for c in cols if c.open() or (recs.get(c.sid) or {}).get("winner") is None]
    for c in live:
        if c.open():
            _study(c)
            told = c.final()
            if told:
                log(f"search {c.label!r} [{_col(c.column)}]: {told} of {c.s.samples} samples finished earlier, "
                    "told back to the searcher; " + f"{c.s.samples - told} to run")
    while not interrupts.interrupted():
        todo = [c for c in live if c.open()]
        if not todo:
            break
        specs, asha = [], {}
        for c in todo:
            want = min(c.s.batch, c.s.samples - c.final())
            while sum(1 for x in c.samples if x["status"] == "asked") < want:
                t = c.study.ask(distributions(c.s))
                x = {"index": len(c.samples), "params": dict(t.params), "status": "asked"}
                x["keys"] = [sp.key for sp in c.s.sample_specs(c.label, c.column, c.raw, x["params"], c.s.seeds)]
                c.samples.append(x)
                c.asked[x["index"]] = t
            for x in c.samples:
                if x["status"] == "asked":
                    these = c.s.sample_specs(c.label, c.column, c.raw, x["params"], c.s.seeds)
                    specs += these
                    if c.s.scheduler == "asha":
                        asha.update({sp.key: c for sp in these})
            _save(store, grid, c)               # asked before run: an interrupted search asks them again
        sample_grid = SearchGrid(**{f.name: getattr(grid, f.name) for f in dataclasses.fields(grid)})
        sample_grid.trials = specs
        sample_grid.searches = {}
        scheduler = PerSearchASHA(asha) if asha else None
        summary = run(sample_grid, scheduler)
        out["summaries"].append(summary)
        out["rounds"] += 1
        status = store.status_of(sp.key for sp in specs)
        records = store.records(sp.key for sp in specs)
        for c in todo:
            for x in c.samples:
                if x["status"] != "asked":
                    continue
                sts = [status.get(k) for k in x["keys"]]
                if any(st not in ("done", "stopped", "failed") for st in sts):
                    continue                    # interrupted: asked again by the next run
                t = c.asked.pop(x["index"])
                out["samples_run"] += 1
                if "failed" in sts:
                    x["status"] = "failed"
                    c.study.tell(t, state=_state("FAIL"))
                elif "stopped" in sts:
                    x["status"] = "stopped"
                    out["stopped"] += 1
                    x["epochs"] = [len((records.get(k) or {}).get("history") or []) for k in x["keys"]]
                    c.study.tell(t, state=_state("PRUNED"))
                else:
                    vals = [float((records[k].get("metrics") or {}).get(f"val_{c.s.metric}", float("nan")))
                            for k in x["keys"]]
                    x["status"], x["value"] = "done", statistics.fmean(vals)
                    x["epochs"] = [len(records[k].get("history") or []) for k in x["keys"]]
                    c.study.tell(t, x["value"])
            _save(store, grid, c)
        if summary.interrupted or summary.unfinished:
            out["interrupted"] = summary.interrupted or "unfinished"
            break
    for c in cols:
        if not c.samples:
            c.samples = list((store.search(c.sid) or {}).get("samples") or [])
        if not c.open():
            _save(store, grid, c)
    if results_dir is not None:
        write_search_json(grid, store, results_dir)
    n = apply_winners(grid, store.searches(c.sid for c in cols))
    if n:
        log(f"searches: {n} (row, column) pair(s) take their winner's config, trained on the table seeds "
            f"{grid.seeds}")
    for c in cols:                              # a spent budget with no done sample: no cell, said on every run
        if not c.open() and _winner(c)[0] is None:
            counts: dict[str, int] = {}
            for x in c.samples:
                counts[x["status"]] = counts.get(x["status"], 0) + 1
            log(f"search {c.label!r} [{_col(c.column)}]: no winner: none of its {len(c.samples)} sample(s) finished "
                f"with a validation value ({', '.join(f'{n} {st}' for st, n in sorted(counts.items()))}); its table "
                "cells stay empty")
    return out


def _state(name: str):
    from optuna.trial import TrialState

    return getattr(TrialState, name)


def _col(column: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in column.items()) or "-"


def _winner(c: _Col) -> tuple[dict | None, float | None]:
    best = None if c.open() else best_sample(c.samples, c.s.mode)
    return (None, None) if best is None else (best["params"], best["value"])


def _save(store, grid, c: _Col) -> None:
    winner, value = _winner(c)
    store.save_search(c.sid, grid.store_name, c.label, c.column, c.s.describe(), c.samples, winner, value)


def write_search_json(grid, store, results_dir: Path) -> Path | None:
    """``search.json`` in the grid's table folder: per searched row and column the space, the
    budget, the searcher, every sample (trial keys, params, value, status) and the winner."""
    entries = []
    for label, s in grid.searches.items():
        for column, raw in s.bases:
            sid = s.search_id(raw)
            rec = store.search(sid) or {}
            entries.append({"row": label, "column": column, "search_id": sid, **s.describe(),
                            "budget": s.samples, "samples": rec.get("samples") or [],
                            "winner": None if rec.get("winner") is None else
                            {"params": rec["winner"], "value": rec.get("value")}})
    if not entries:
        return None
    path = Path(results_dir) / "search.json"
    atomic_write(path, json.dumps({"grid": grid.name, "variant": grid.variant, "searches": entries}, indent=2,
                                default=str) + "\n")
    return path


def PerSearchASHA(by_key: dict):            # noqa: N802 -- a class made where Ray is imported
    """A Tune scheduler that keeps one :class:`ASHAScheduler` per search (``by_key``: trial key ->
    its search's column), so a sample is only ever compared with its own search's samples; the
    keys of the trials it stopped are in ``.stopped``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    class _PerSearchASHA(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.by_key, self.inner, self.stopped = by_key, {}, set()

        def _for(self, trial):
            c = self.by_key.get(trial.config["t"]["key"])
            if c is None:
                return None
            if c.sid not in self.inner:
                epochs = int(c.s.sample_specs(c.label, c.column, c.raw, {}, c.s.seeds[:1])[0].config.train.epochs)
                self.inner[c.sid] = ASHAScheduler(time_attr="epoch", metric=f"val_{c.s.metric}", mode=c.s.mode,
                                                  max_t=epochs + 1, grace_period=c.s.grace,
                                                  reduction_factor=c.s.reduction)
            return self.inner[c.sid]

        def set_search_properties(self, metric, mode, **spec):
            return True

        def on_trial_add(self, tune_controller, trial):
            if (s := self._for(trial)) is not None:
                s.on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            s = self._for(trial)
            if s is None:
                return TrialScheduler.CONTINUE
            decision = s.on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped.add(trial.config["t"]["key"])
            return decision

        def on_trial_complete(self, tune_controller, trial, result):
            if (s := self._for(trial)) is not None:
                s.on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial):
            if (s := self._for(trial)) is not None:
                s.on_trial_remove(tune_controller, trial)

        def debug_string(self) -> str:
            return f"raygap: ASHA per search ({len(self.inner)} searches)"

    return _PerSearchASHA()
