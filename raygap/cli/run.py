"""``raygap run``: a grid's missing trials as Ray Tune trials, then its tables and figures;
``--dry-run`` lists the trials and what is done, ``--rerun`` runs stored ones again. Several
grid files (``raygap run grids/table*.yaml``) are one run: every grid validated first, their
distinct trials in one Tune experiment, each table exported as soon as its own trials have all
ended (:class:`_TablesAsDone`), the others at the end."""
from __future__ import annotations

import contextlib
import os
import sys

from .. import interrupts
from ..errors import ConfigError
from .grids import FiguresFailed, export_one, grid_of, open_store, per_grid, results_root, table_folder


def _rerun_keys(args, grid, store=None) -> list[str]:
    """The keys of the grid's trials that ``--rerun`` names (hash prefixes, ``all``, ``stale``)."""
    from ..status import stale_trials

    prefixes = [p.strip() for item in args.rerun or [] for p in item.split(",") if p.strip()]
    for p in prefixes:
        if p not in ("all", "stale") and not all(c in "0123456789abcdef" for c in p):
            raise ConfigError(f"{p!r} is not a trial hash (hex digits, as in --dry-run), 'all' or 'stale'",
                              key="--rerun", hint="e.g. --rerun 3fa2 --rerun all")
    stale = {k for ks in stale_trials(grid, store).values() for k in ks} if "stale" in prefixes and store else set()
    keys = sorted({s.key for s in grid.trials
                   if any(p == "all" or (p == "stale" and s.key in stale) or (p != "stale" and s.key.startswith(p))
                          for p in prefixes)})
    if prefixes == ["stale"] and not keys:
        these = "these grids" if len(getattr(grid, "grids", ())) > 1 else "this grid"
        print(f"--rerun stale: no stored trial of {these} ran with other code of its method", file=sys.stderr)
        return []
    if prefixes and not keys:
        these = "these grids" if len(getattr(grid, "grids", ())) > 1 else "this grid"
        raise ConfigError(f"--rerun {' '.join(prefixes)} matches no trial of {these}",
                          file=", ".join(args.grid) if isinstance(args.grid, list) else args.grid,
                          hint="the hashes are listed by --dry-run")
    return keys


def _forget(args, store, keys: list[str]) -> int:
    """``--rerun``: set the trials ``keys`` aside, unless another live driver holds any of them
    (then one line, exit 2, nothing set aside). Live as this user's one-shot commands have seen
    it (:meth:`raygap.store.Watch.for_store`): a claim of a gone process of this machine is dead at
    once; one whose heartbeat has not moved for its lease since an earlier look is stale."""
    from ..store import TrialsHeld, Watch, lease_period

    watch = Watch.for_store(store.path)
    try:
        return store.forget(keys, watch=watch)
    except TrialsHeld as e:
        key, owner = next(iter(e.held.items()))
        raise ConfigError(f"--rerun refused: {len(e.held)} of the {len(keys)} trial(s) named are held by another live "
                          f"raygap run (trial {key}, driver {owner}); nothing was set aside",
                          file=", ".join(args.grid) if isinstance(args.grid, list) else args.grid,
                          hint="let that run finish, or stop it, then --rerun; a claim whose heartbeat stands still "
                               f"for its lease ({lease_period():.0f} s) is void: `raygap status` shows it stale")
    finally:
        watch.save()


class _TablesAsDone:
    """With several grids: a grid's tables and figures written as soon as every one of its
    distinct trials has ended (done or failed), while the run goes on with the other grids'.
    ``settled`` is the runner's ``on_settled``; ``written``: grid index -> (line, figures)."""

    def __init__(self, runs, store, force: bool, say, mirror=None):
        self.runs, self.store, self.force, self.say, self.mirror = runs, store, force, say, mirror
        self.keys = [set(g.distinct()) for _, g, _ in runs]
        self.written: dict[int, tuple] = {}

    def settled(self, key: str) -> None:
        for i, (a, g, table_dir) in enumerate(self.runs):
            if i in self.written or key not in self.keys[i]:
                continue
            st = self.store.status_of(list(self.keys[i]))
            if all(st.get(k) in ("done", "failed") for k in self.keys[i]):
                self.written[i] = export_one(a, g, self.store, table_dir, force=self.force, mirror=self.mirror)
                self.say(f"{g.store_name}: its {len(self.keys[i])} trial(s) have ended: {self.written[i][0]}")


def _searches(runs, store, run):
    """The grids' hyperparameter searches (raygap.runner.search) before their tables: None when
    no grid has a search, else a summary of the samples run (``interrupted`` when stopped)."""
    if not any(g.searches for _, g, _ in runs):
        return None
    from ..runner.search import run_searches
    from ..runner.summary import RunSummary

    total = RunSummary()
    for _, g, table_dir in runs:
        if not g.searches:
            continue
        out = run_searches(g, store, run, results_dir=table_dir)
        for s in out["summaries"]:
            total.total += s.total
            total.done += s.done
            total.stopped += s.stopped
            total.failed.update(s.failed)
            total.unfinished += s.unfinished
            total.marked_interrupted += s.marked_interrupted
            total.wall_seconds += s.wall_seconds
        print(f"{g.store_name}: searches: {out['samples_run']} sample(s) run in {out['rounds']} round(s), "
              f"{out['stopped']} stopped early by ASHA; search.json in {table_dir}", flush=True)
        if out["interrupted"]:
            total.interrupted = total.interrupted or (out["interrupted"] if out["interrupted"] != "unfinished" else None)
            total.unfinished = max(total.unfinished, 1)
            return total
    return total


def cmd_run(args) -> int:
    from ..gridset import GridSet, check_apart
    from ..search import search_cost
    from ..status import describe, describe_union, stale_lines, stale_trials

    runs = [(a, grid_of(a)) for a in per_grid(args)]        # every grid validated before anything runs
    check_apart([g for _, g in runs])
    for a, g in runs:
        table_folder(a, g, create=False)                    # a grid name that cannot be a folder: said first
    runs = [(a, g, table_folder(a, g, create=False)) for a, g in runs]     # made once the store is accepted
    several = len(runs) > 1
    grid = GridSet([g for _, g, _ in runs]) if several else runs[0][1]
    for _, g, _ in runs:
        for label, reason in g.skipped:
            print(f"skipped row {label!r}" + (f" of {g.name}" if several else "") + f": {reason}")
    if args.dry_run:                    # reads only: no store is created, nothing is forgotten
        store = open_store(args, readonly=True)
        keys = _rerun_keys(args, grid, store)
        for _, g, _ in runs:
            print(describe(g, store, rerun=set(keys)))
            for line in search_cost(g):
                print(line)
        if several:
            print(describe_union(grid, store, rerun=set(keys)))
        for line in stale_lines(stale_trials(grid, store)):
            print(f"raygap: {line}", file=sys.stderr)
        if keys:
            print(f"--rerun: would forget {len(keys)} stored trial(s) and run them again (dry run: nothing changed)")
        return 0
    mirror = None
    if args.storage:                    # the store outlives the head: restored (or merged) from the storage first
        from ..runner.storage import require_usable_storage
        from ..store.mirror import Mirror

        require_usable_storage(args.storage)       # (a bad storage is its own one line, before the restore reads it)

        mirror = Mirror(args.storage, results_root(args))
        said = mirror.restore()
        if said:
            print(said, flush=True)
    from ..store.hosts import refuse_other_hosts

    store = open_store(args)
    refuse_other_hosts(store)           # a store on NFS... that a driver on another host uses: one line, nothing written
    for a, g, _ in runs:
        table_folder(a, g, create=True)
    keys = _rerun_keys(args, grid, store)
    for line in stale_lines({m: [k for k in ks if k not in keys] for m, ks in stale_trials(grid, store).items()
                             if any(k not in keys for k in ks)}):
        print(f"raygap: {line}", file=sys.stderr)
    if keys:
        n = _forget(args, store, keys)
        print(f"--rerun: {n} stored trial(s) set aside (kept in the store's `forgotten` table) to run again")
    from ..progress import Progress
    from ..runner import LOOPBACK_ENV, private_token, run_grid, tracker_problem   # (importing it does not import Ray)

    embedded = not (args.address or os.environ.get("RAY_ADDRESS"))
    if embedded:
        # Ray reads this when it is imported: an embedded instance then binds 127.0.0.1 only
        os.environ[LOOPBACK_ENV] = "0"

    problem = tracker_problem(args.tracker)
    if problem:
        raise ConfigError(problem, key="--tracker")

    progress = Progress(verbosity=1 + args.verbose - args.quiet, every=args.progress_every)
    say = lambda s: print(s, file=sys.stderr, flush=True)   # noqa: E731
    early = _TablesAsDone(runs, store, args.force, progress.note, mirror) if several else None
    # an embedded instance: a token of this run only (Ray reads the mode on import, which is later)
    def run(g, scheduler=None, on_settled=None, table=True):
        return run_grid(g, store, address=args.address, storage=args.storage,
                        max_failures=args.max_failures, num_cpus=args.num_cpus, log=lambda s: print(s, flush=True),
                        progress=progress if table else Progress(verbosity=1 + args.verbose - args.quiet,
                                                                  every=args.progress_every),
                        tracker=args.tracker,
                        share_warmups=not args.no_shared_warmups,
                        after_done=mirror.push_store if mirror else None, on_settled=on_settled, scheduler=scheduler)

    with private_token(say) if embedded else contextlib.nullcontext():
        try:
            searched = _searches(runs, store, lambda g, scheduler: run(g, scheduler, table=False))
            if searched is not None and searched.unfinished:
                summary = searched
            else:
                if searched is not None:        # the winners' cells were added: the union again
                    grid = GridSet([g for _, g, _ in runs]) if several else runs[0][1]
                    early = _TablesAsDone(runs, store, args.force, progress.note, mirror) if several else None
                summary = run(grid, on_settled=early.settled if early else None)
                if searched is not None:          # (the samples run are said on their own line)
                    summary.failed.update(searched.failed)
        finally:
            if mirror:                  # at exit, whatever ended the run
                mirror.push_store()
    exports = [early.written[i] if early and i in early.written       # (written as their trials ended)
               else export_one(a, g, store, table_dir, force=args.force, mirror=mirror)
               for i, (a, g, table_dir) in enumerate(runs)]
    print(f"{summary.total} distinct trial(s): {summary.reused} reused from the store, "
          f"{summary.done} run now, {len(summary.failed)} failed; {summary.wall_seconds:.1f}s")
    for (_, g, table_dir), (written, figures) in zip(runs, exports, strict=True):
        print((f"{g.store_name}: " if several else "") + written)
        if figures:
            drawn = getattr(figures, "drawn", len(figures))
            kept = f"; {len(figures) - drawn} unchanged, kept" if drawn < len(figures) else ""
            print(f"figures: {len(figures)} in {table_dir / 'figures'} ({drawn} drawn{kept})")
    if summary.unfinished:
        marked = (f" ({summary.marked_interrupted} marked interrupted in the store)"
                  if summary.marked_interrupted else "")
        print(f"raygap: interrupted ({summary.interrupted or 'SIGINT'}): {summary.unfinished} trial(s) not "
              f"finished{marked}; run the same command again to finish them (finished trials are kept)",
              file=sys.stderr)
    elif interrupts.interrupted():
        print(f"raygap: {interrupts.last_signal()} received after every trial had finished: the run is complete "
              "and its tables are written", file=sys.stderr)
    if summary.failed:
        print(f"raygap: {len(summary.failed)} trial(s) failed:", file=sys.stderr)
        for key, err in summary.failed.items():
            print(f"  {key}: {err}", file=sys.stderr)
    if any(isinstance(figures, FiguresFailed) for _, figures in exports):
        return summary.exit_code or 1
    return summary.exit_code
