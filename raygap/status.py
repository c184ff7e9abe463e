"""What a grid's trials are in the store, as text: the ``--dry-run`` listing
(:func:`describe`), ``raygap status`` (:func:`status_text`) and the warnings about stored
trials whose method's code changed since they ran (:func:`stale_trials`, :func:`stale_lines`).
"""
from __future__ import annotations

from pathlib import Path

from .config import epochs_not_trained_again, warmup_groups
from .grid import Grid
from .registry import METHODS
from .search_progress import search_lines


def stale_trials(grid: Grid, store) -> dict[str, list[str]]:
    """method name -> keys of the grid's done trials that ran with other code of that method
    (the digest of its file, stored with each finished trial, differs from the file now).
    Trials stored before digests were recorded are not judged."""
    by_key = {t.key: t.config.method.name for t in grid.trials}
    infos = store.done_infos(list(by_key))
    out: dict[str, list[str]] = {}
    for key, info in infos.items():
        then = (info or {}).get("method_source")
        name = by_key[key]
        if then and then != METHODS.source(name):
            out.setdefault(name, []).append(key)
    return {m: sorted(k) for m, k in sorted(out.items())}


def stale_lines(stale: dict[str, list[str]]) -> list[str]:
    """One warning per method whose stored trials ran with other code."""
    import inspect

    lines = []
    for name, keys in stale.items():
        entry = METHODS.get(name)
        try:
            path = Path(inspect.getsourcefile(entry.obj) or "?")
            inside = path.is_absolute() and path.is_relative_to(Path(__file__).resolve().parent.parent)
            shown = path.relative_to(Path(__file__).resolve().parent.parent) if inside else path  # (a plug-in's: whole)
        except TypeError:
            shown = "its file"
        lines.append(f"warning: {len(keys)} stored trial(s) of method {name} ran with other code ({shown} changed "
                     f"since; version {entry.meta.get('version', 1)} unchanged): their results are reused as "
                     f"stored. `--rerun stale` runs them again; bump version= in {shown} when a change alters results")
    return lines


def describe(grid: Grid, store, rerun: set[str] | frozenset = frozenset()) -> str:
    """The ``--dry-run`` listing: one line per cell (label, column values, seed, key, stored
    status: done / failed / running / interrupted / pending / new, ``-> rerun`` for the
    keys ``--rerun`` would run again), skipped rows, then the totals."""
    status = store.status_of([t.key for t in grid.trials])
    status = {k: ("new" if k in rerun else v) for k, v in status.items()}
    stale = {k for keys in stale_trials(grid, store).values() for k in keys}
    lines = [f"grid {grid.name} ({grid.path})" + (f", profile {grid.profile}" if grid.profile else "")
             + (f", --set {' '.join(grid.sets)}" if grid.sets else "")]
    width = max((len(t.label) for t in grid.trials), default=10)
    for t in grid.trials:
        col = ", ".join(f"{k}={v}" for k, v in t.column.items()) or "-"
        shown = "rerun" if t.key in rerun else status.get(t.key, "new") + (" (stale code)" if t.key in stale else "")
        lines.append(f"  {t.label:{width}s}  {col:20s}  seed {t.seed:<3d} {t.key}  {shown}")
    for label, reason in grid.skipped:
        lines.append(f"  skipped row {label!r}: {reason}")
    distinct = grid.distinct()
    done = sum(1 for k in distinct if status.get(k) == "done")
    lines.append(f"{len(grid.trials)} cells, {len(distinct)} distinct trials: {done} already done (reused), "
                 f"{len(distinct) - done} to run")
    shared = {w: m for w, m in warmup_groups(t for k, t in distinct.items() if status.get(k) != "done").items()
              if len(m) > 1}
    if shared:
        lines.append(f"shared warm-ups: {len(shared)} warm-up(s) for {sum(map(len, shared.values()))} of the trials "
                     f"to run, {epochs_not_trained_again(shared)} epochs not trained again "
                     "(--no-shared-warmups: each trains its own)")
    return "\n".join(lines)


def with_stale(store, keys, watch=None) -> dict[str, str]:
    """``status_of`` with ``stale`` for the running trials whose claim has lapsed by the heartbeat
    rule as ``watch`` (the observer's memory: :class:`raygap.store.Watch`) judges it: their driver,
    on another machine or in another container, has not moved its heartbeat for its lease."""
    st = store.status_of(keys)
    for k in store.stale_claims([k for k, v in st.items() if v == "running"], watch):
        st[k] = "stale"
    return st


def status_text(grid: Grid, store, watch=None) -> str:
    """``raygap status``: per row and column the trials done / running / stale / failed /
    interrupted / missing (missing = pending or never started), the totals over distinct
    trials, each searched (row, column)'s search progress or winner (its cells before the winner:
    ``searching``), each failed trial's error on one line, and the skipped rows. A trial whose
    driver on this machine is gone counts as interrupted, never as running; one whose driver
    elsewhere has not moved its heartbeat for its lease, as this observer (``watch``) has seen
    it, counts as stale."""
    distinct = grid.distinct()
    st = with_stale(store, list(distinct), watch)
    combos = grid.column_combos()
    lines = [f"grid {grid.name} ({grid.path})" + (f", profile {grid.profile}" if grid.profile else "")
             + (f", --set {' '.join(grid.sets)}" if grid.sets else "")
             + f": {len(grid.trials)} cells, {len(distinct)} distinct trials"]
    lw = max([len(r) for r in grid.row_labels] + [3])
    cols = [", ".join(str(v) for v in c.values()) or "-" for c in combos]
    cw = max([len(c) for c in cols] + [6])
    kinds = ("done", "running", "stale", "failed", "interrupted")
    searched = set(getattr(grid, "searches", None) or {})
    lines.append(f"  {'row':{lw}s}  {'column':{cw}s}  done running stale failed interrupted missing")
    for label in grid.row_labels:
        for col, colname in zip(combos, cols, strict=True):
            keys = [t.key for t in grid.cell(label, col)]
            if not keys and label in searched:
                lines.append(f"  {label:{lw}s}  {colname:{cw}s}  (searching: no table trials before its winner; "
                             "see the search line below)")
                continue
            c = {s: sum(1 for k in keys if st.get(k) == s) for s in kinds}
            miss = len(keys) - sum(c.values())
            lines.append(f"  {label:{lw}s}  {colname:{cw}s}  {c['done']:4d} {c['running']:7d} {c['stale']:5d} "
                         f"{c['failed']:6d} {c['interrupted']:11d} {miss:7d}")
    tot = {s: sum(1 for k in distinct if st.get(k) == s) for s in kinds}
    lines.append(f"total: {tot['done']} done, {tot['running']} running, {tot['stale']} stale, {tot['failed']} failed, "
                 f"{tot['interrupted']} interrupted, {len(distinct) - sum(tot.values())} missing "
                 f"(of {len(distinct)} distinct trials)")
    lines += search_lines(grid, store)
    failed = [k for k in distinct if st.get(k) == "failed"]
    if failed:
        recs = store.records(failed)
        for k in failed:
            t = distinct[k]
            col = ", ".join(str(v) for v in t.column.values())
            err = ((recs.get(k) or {}).get("error") or "").splitlines()
            lines.append(f"  failed {k} ({t.label} | {col} | seed {t.seed}): {err[0] if err else '?'}")
    if tot["stale"]:
        lines.append(f"  stale: {tot['stale']} trial(s) whose driver has not moved its heartbeat for its lease "
                     "(gone, or stopped): the next `raygap run` takes them over")
    for label, reason in grid.skipped:
        lines.append(f"  skipped row {label!r}: {reason}")
    return "\n".join(lines)


def describe_union(grids, store, rerun: set[str] | frozenset = frozenset()) -> str:
    """After the ``--dry-run`` listing of each of several grids: what their union runs (a
    :class:`raygap.gridset.GridSet`): cells, distinct trials (those more than one grid uses run
    once), done, to run, and the warm-ups shared across the grids."""
    distinct = grids.distinct()
    status = store.status_of(list(distinct))
    done = sum(1 for k in distinct if status.get(k) == "done" and k not in rerun)
    lines = [f"{len(grids.grids)} grids together: {len(grids.trials)} cells, {len(distinct)} distinct trials "
             f"({grids.shared()} used by more than one grid, run once): {done} already done (reused), "
             f"{len(distinct) - done} to run, all in one run"]
    todo = [t for k, t in distinct.items() if status.get(k) != "done" or k in rerun]
    shared = {w: m for w, m in warmup_groups(todo).items() if len(m) > 1}
    if shared:
        lines.append(f"shared warm-ups over the grids: {len(shared)} warm-up(s) for {sum(map(len, shared.values()))} "
                     f"of the trials to run, {epochs_not_trained_again(shared)} epochs not trained again")
    return "\n".join(lines)


def union_status(grids, store, watch=None) -> str:
    """After ``raygap status`` of each of several grids: the totals over their distinct trials."""
    distinct = grids.distinct()
    st = with_stale(store, list(distinct), watch)
    tot = {s: sum(1 for k in distinct if st.get(k) == s) for s in ("done", "running", "stale", "failed", "interrupted")}
    return (f"{len(grids.grids)} grids together: {tot['done']} done, {tot['running']} running, {tot['stale']} stale, "
            f"{tot['failed']} failed, "
            f"{tot['interrupted']} interrupted, {len(distinct) - sum(tot.values())} missing (of {len(distinct)} "
            f"distinct trials; {grids.shared()} used by more than one grid)")
