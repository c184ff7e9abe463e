"""The driver loop: :func:`run_grid` runs a grid's missing trials, batch by batch.

* One trial, one run: each trial is claimed in the store before it is launched (a token, the
  fence every write of it checks: :mod:`raygap.store.claims`), its heartbeat counter moved by a
  thread every lease / 4 while this driver lives (:class:`_Renewer`); trials another live driver
  holds are waited for (:func:`_wait_for_others`: the store looked at every WAIT_POLL_S, a line
  a minute) -- a claim whose heartbeat stands still for the lease is taken over -- then counted as
  reused; trials another raygap command took out of the store meanwhile are added back, said in
  one line (:func:`_add_back`), not asked for in a loop. A trial whose claim this driver lost
  (it was stopped past its lease) is dropped (:mod:`raygap.runner.fence`) and then waited for
  like any trial another driver holds.
* Each batch is one Tune experiment (:func:`raygap.runner.batch.tune_batch`); the first starts
  or joins Ray (:mod:`raygap.runner.cluster`), an embedded instance while the in-memory data is
  built (:mod:`raygap.runner.shared_data`; a joined cluster's once it can run the batch: a
  refused run builds nothing); a later batch holds the trials that waited for a shared warm-up
  (:mod:`raygap.runner.warmups`).
* The driver is the only writer of the trial store (:mod:`raygap.runner.callback`), so a driver
  killed mid-grid loses nothing that finished and the next run launches only what is missing.
* Stopping (:mod:`raygap.interrupts`): a signal at start-up or while Tune runs ends the run
  with a summary (``interrupted``); the teardown -- trials it started marked ``interrupted``
  in the store, its claims released, Ray shut down, any process left behind ended -- always
  runs to its end (:func:`_teardown`).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .. import interrupts
from ..store.claims import Watch
from ..store.hosts import refuse_other_hosts
from .batch import trial_label, tune_batch
from .fence import Fence
from .cluster import node_hosts, require_address, require_resources, require_storage, start_ray
from .shared_data import DataBuilder
from .storage import delete_checkpoint, require_usable_storage, storage_root, warmup_at
from .summary import RunSummary
from .warmups import drop_finished_warmups, plan_warmups, say_warmups

# the lease: raygap.store.lease_period() (120 s; RAYGAP_LEASE_S sets another); the heartbeat every lease / 4
LEDGER_S = 5.0        # how often the ledger of the embedded Ray's processes is refreshed (for a killed driver's successor)
WAIT_POLL_S = 5.0      # how often a driver waiting on another driver's trials looks at the store (at most)


def run_grid(grid, store, *, address: str | None = None, storage: str | None = None,
             max_failures: int = 1, num_cpus: int | None = None, log=print, progress=None,
             tracker: str | None = None, share_warmups: bool = True, after_done=None,
             on_settled=None, scheduler=None) -> RunSummary:
    """Run every trial of ``grid`` that the store does not hold as done.

    ``grid``: a grid, or several as one (:class:`raygap.gridset.GridSet`: its ``grids`` are each
    registered in the store; their distinct trials run in one Tune experiment, warm-ups shared
    across them). ``on_settled(key)``: called in this process as each trial ends done or failed
    here or in another driver (the CLI exports a table as soon as its trials have all ended).

    One trial, one run: each trial is claimed in the store before it is launched (a lease
    renewed while this driver lives); trials another live driver holds are left to it and
    waited for, then counted as reused. A trial an earlier, stopped run had started resumes
    from the checkpoint the store recorded for it.

    Shared warm-ups (``share_warmups``; :meth:`TrialConfig.warmup`): of the trials left that
    would train the same warm-up, one (the leader) keeps its checkpoint at the warm-up's end on
    the run's storage; the others wait for it (the next Tune batch) and start from it, so the
    warm-up is trained once. A leader that ends without keeping one (failed, or resumed past
    it) lets the others train their own.

    A stop signal (see :mod:`raygap.interrupts`) does not raise out of here: the summary
    says ``interrupted`` and counts what is unfinished, the trials this driver had started
    are ``interrupted`` in the store, its claims are released, Ray is down and no process
    is left behind.

    ``after_done()``, if given, is called once each finished trial is in the store (``raygap run
    --storage`` mirrors the store there: :mod:`raygap.store.mirror`). ``scheduler``: a Tune trial
    scheduler with a ``stopped`` set of keys (a search's ASHA: :mod:`raygap.runner.search`); the
    trials it stops are ``stopped`` in the store.
    """
    from ..store import lease_period, this_process_owner

    lease = lease_period()
    t0 = time.perf_counter()
    members = getattr(grid, "grids", (grid,))
    for g in members:
        store.register(g)
    distinct = {}
    for s in grid.trials:
        distinct.setdefault(s.key, s)
    status = store.status_of(list(distinct))
    todo = [s for k, s in distinct.items() if status.get(k) != "done"]
    summary = RunSummary(total=len(distinct), reused=len(distinct) - len(todo), launched=0)
    if not todo:
        summary.wall_seconds = time.perf_counter() - t0
        return summary
    # preflight, before Ray starts or is joined: each a line naming the address or URI, in seconds
    results_folder = Path(store.path).parent
    storage_path = storage_root(storage, results_folder)
    require_address(address or os.environ.get("RAY_ADDRESS"))
    require_usable_storage(storage_path)
    if progress is None:               # plain lines through ``log``
        from ..progress import Progress

        progress = Progress(verbosity=1, tty=False, emit=log)
    progress.begin({s.key: int(s.config.train.epochs) for s in todo}, reused=summary.reused)
    log = progress.note

    owner = this_process_owner()
    started = starting = False
    mine: set[str] = set()              # every trial this driver claimed (released at the end)
    attempted: set[str] = set()         # launched here, or settled by another driver: not launched (again)
    fence = Fence(store, summary, progress)
    renewer = _Renewer(store, owner, lease, fence, log)
    builder = None                      # the in-memory data (one machine), built once
    ready = several = False             # Ray started or joined; its nodes on more than one machine
    refused = False                     # stopped by an error before any trial launched
    lone: set[str] = set()              # warm-ups whose leader ran here without keeping one
    hosts_watch = Watch()               # other hosts' heartbeats as this driver saw them, batch by batch
    try:
        import ray

        while not interrupts.interrupted():    # (Tune's own SIGINT handler ends fit() without raising)
            status = store.status_of(list(distinct))
            left = [s for k, s in distinct.items() if status.get(k) != "done" and k not in attempted]
            if not left:
                break
            deferred, forks, keeps = (plan_warmups(left, store.records(s.key for s in left),
                                                   store.warmups({w[0] for s in left if (w := s.config.warmup())}),
                                                   lone) if share_warmups else (set(), {}, {}))
            asked = [s.key for s in left if s.key not in deferred]     # (never empty: a deferral has a leader)
            # a driver on another host that started on this network-FS store after this one (`raygap run`
            # checked at its start): stopped here before this one claims more (store/hosts.py)
            refuse_other_hosts(store, watch=hosts_watch)
            claimed, held = store.claim(asked, owner, lease)
            for k in claimed:                # claimed again (a new token): no longer dropped
                fence.dropped.pop(k, None)
            mine |= set(claimed)
            renewer.keys = set(mine)
            if claimed:
                renewer.start()              # the heartbeat from the claim on (Ray's start-up may be slow)
            batch = [s for s in left if s.key in set(claimed)]
            if not batch and not held:
                # none to launch, none to wait for: those asked for were done meanwhile by another run (not
                # left at the next look), or taken out of the store by another raygap command (--rerun)
                _add_back(store, left, asked, log)
                continue                     # (plan again: the deferred trials' leader settled meanwhile)
            if batch:
                if not ready:                # the first batch: start or join Ray, check its storage
                    starting = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
                    if starting:             # an embedded instance: the in-memory data built while Ray starts
                        builder = DataBuilder(batch, log)
                    started = _start_or_join(address, num_cpus, todo, starting, results_folder, owner, renewer, log)
                    nodes = ray.nodes()
                    require_storage(storage_path, nodes)
                    several = len(node_hosts(nodes)) > 1
                    if several:              # the head may hold no data: each trial builds its dataset where it runs
                        if builder is not None:
                            builder.disable()
                            builder = None
                        log("several machines: each trial builds its in-memory dataset on its own node")
                    renewer.start()
                    ready = True
                for g in members:           # a request no node can meet: one line naming its grid file
                    keys = g.distinct()
                    require_resources([s.resources for s in batch if s.key in keys], ray.nodes(), g.path)
                if builder is None and not several:   # joined: built once the cluster can run the batch
                    builder = DataBuilder(batch, log)
                attempted |= {s.key for s in batch}
                keeps = {k: w for k, w in keeps.items() if k in {s.key for s in batch}}
                say_warmups(batch, deferred, forks, keeps, log)
                shared = builder.result(batch) if builder is not None else {}
                tune_batch(grid, store, batch, shared, summary, held, storage_path=storage_path,
                           max_failures=max_failures, log=log, progress=progress, tracker=tracker, forks=forks,
                           keeps={k: warmup_at(storage_path, w) for k, w in keeps.items()}, after_done=after_done,
                           on_settled=on_settled, fence=fence, scheduler=scheduler)
                attempted -= set(fence.dropped)     # lost to another driver: waited for like its other trials
                kept = store.warmups(keeps.values())
                lone |= {w for w in keeps.values() if w not in kept}   # no warm-up kept: the others train theirs
            elif held:
                _wait_for_others(store, held, distinct, summary, attempted, log, on_settled,
                                 min(WAIT_POLL_S, lease / 4))
    except KeyboardInterrupt:
        summary.interrupted = interrupts.last_signal() or "SIGINT"
    except Exception:
        # refused (resources, storage) or failed before any trial launched: the error line says why,
        # after the grid line begin() showed; the grid's state has not changed to show it again
        refused = not summary.launched
        raise
    finally:
        with interrupts.protected("teardown"):
            if builder is not None:          # a build still going (Ray started beside it) says nothing more
                builder.disable()
            renewer.stop()
            _teardown(store, todo, mine, owner, summary, ours=started or starting, log=log)
            if started or starting:
                interrupts.drop_ledger(results_folder)
            progress.close(changed=not refused)
    if interrupts.interrupted() and not summary.interrupted:
        summary.interrupted = interrupts.last_signal()      # Tune's own SIGINT handler ended fit() gracefully
    if share_warmups:
        for uri in drop_finished_warmups(store, distinct.values()):
            delete_checkpoint(uri, storage_path)
    st = store.status_of([s.key for s in todo])
    # reused: done at the end, but not run by this driver (done before, or by another driver meanwhile)
    summary.reused = (summary.total - len(todo)) + sum(1 for s in todo if st.get(s.key) == "done") - summary.done
    summary.unfinished = sum(1 for s in todo if st.get(s.key) not in ("done", "failed", "stopped"))
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _start_or_join(address, num_cpus, todo, starting: bool, results_folder: Path, owner: str, renewer, log) -> bool:
    """Start the embedded Ray instance (``starting``; first ending what a raygap run killed here
    left running) or join the cluster; True if this call started it. A SIGTERM that Ray's own
    handler turned into ``sys.exit`` is a KeyboardInterrupt here, like raygap's own."""
    from ..store import owner_alive

    if starting:                         # what a raygap run killed here (SIGKILL, OOM) left running
        ended = interrupts.end_leftovers(results_folder, owner_alive)
        if ended:
            log(f"ended {len(ended)} Ray process(es) a killed raygap run had left running "
                f"(pids {', '.join(map(str, ended))})")
    try:
        with interrupts.held("startup"):     # a signal inside ray.init is raised once it returns
            started = start_ray(address, num_cpus, log, deterministic=any(s.config.train.deterministic for s in todo))
    except SystemExit as e:              # ray.init's own SIGTERM handler calls sys.exit(15)
        interrupts.note(e.code if isinstance(e.code, int) and e.code > 0 else 15)
        raise KeyboardInterrupt("SIGTERM") from e
    interrupts.install()                 # ray.init replaced raygap's SIGTERM handler with its own
    if started:
        interrupts.record_children(results_folder, owner, warn=renewer.warn_ledger)
        renewer.ledger = results_folder
    return started


def _add_back(store, left, asked: list[str], log) -> None:
    """Of the trials ``asked`` for that could be neither claimed nor waited for, those no longer
    in the store (another raygap command took them out to run them again: ``--rerun``) are added
    back as pending, said in one line: this run or the other claims them next (the others were
    done meanwhile by another run)."""
    now = store.status_of(asked)
    gone = [s for s in left if s.key in set(asked) and s.key not in now]
    if gone and store.add_pending(gone):
        log(f"{len(gone)} trial(s) were taken out of the store while this run went on (another raygap run with "
            f"--rerun?): added back as pending, to run: {', '.join(s.key for s in gone)[:200]}")


class _Renewer:
    """Moves the heartbeat of this driver's claims every lease / 4 while it runs (a claim found
    moved is lost: the fence says so and drops its trial), and refreshes the ledger of the
    embedded Ray's processes (``ledger``: the results folder) every LEDGER_S."""

    def __init__(self, store, owner: str, lease: float, fence: Fence, log=print):
        self.store, self.owner, self.keys = store, owner, set()
        self.lease, self.fence = lease, fence
        self.every = lease / 4
        self.ledger: Path | None = None
        self.log = log
        self._ledger_warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raygap-lease", daemon=True)

    def warn_ledger(self, text: str) -> None:
        """The ledger of this driver's processes could not be written: said once a run."""
        if not self._ledger_warned:
            self._ledger_warned = True
            self.log(f"warning: {text}")

    def start(self):
        if not self._thread.is_alive():
            self._thread.start()

    def _run(self):
        last_renew = last_ledger = time.monotonic()
        while not self._stop.wait(min(LEDGER_S, self.every)):
            if self.ledger is not None and time.monotonic() - last_ledger >= LEDGER_S * 0.9:
                interrupts.record_children(self.ledger, self.owner, warn=self.warn_ledger)
                last_ledger = time.monotonic()
            if time.monotonic() - last_renew < self.every * 0.9:
                continue
            last_renew = time.monotonic()
            try:
                keys = [k for k in self.keys if k not in self.fence.dropped and k not in self.fence.settled]
                self.store.renew(keys, self.owner, self.lease)
                lost = self.store.lost(keys)
                if lost:
                    self.fence.lose(lost)
            except Exception as e:  # noqa: BLE001 -- said, retried at the next tick
                print(f"raygap: could not renew the claims on {len(self.keys)} trial(s): {e}", flush=True)

    def stop(self):
        self._stop.set()


def _wait_for_others(store, held: dict, distinct: dict, summary: RunSummary, attempted: set, log,
                     on_settled=None, poll: float = WAIT_POLL_S) -> None:
    """Every trial left is claimed by another live driver: wait until one of them is
    settled (done, or failed there) or free to claim (its claim died), saying so."""
    drivers = sorted(set(held.values()))
    log(f"waiting for {len(held)} trial(s) that another raygap run is running ({', '.join(drivers)[:200]}); "
        "they count as reused when done")
    last_said = time.monotonic()
    while True:
        time.sleep(poll)
        st = store.status_of(list(held))
        settled = [k for k in held if st.get(k) in ("done", "failed")]
        for k in settled:
            attempted.add(k)               # never run here again in this call
            s = distinct[k]
            if st[k] == "done":
                log(f"  finished by the other run: {trial_label(s)} ({k})")
            else:
                err = ((store.get(k) or {}).get("error") or "?")
                summary.failed[k] = f"(in the other raygap run) {err}"
                log(f"  failed in the other run: {trial_label(s)} ({k}): {err}")
            if on_settled is not None:
                on_settled(k)
        still = store.held_elsewhere([k for k in held if k not in settled])
        if settled or len(still) < len(held) - len(settled):
            return
        if time.monotonic() - last_said >= 60:
            log(f"  still waiting for {len(still)} trial(s) of another raygap run")
            last_said = time.monotonic()


def _teardown(store, todo, mine: set, owner: str, summary: RunSummary, *, ours: bool, log) -> None:
    """Mark this driver's running trials interrupted and release its claims; if the Ray
    instance is ours (started, or being started, by this call), shut it down and end any
    process it left behind. A second signal here skips the graceful part but still ends
    every child process."""
    try:
        summary.marked_interrupted = store.mark_interrupted([s.key for s in todo], owner)
        store.release(mine, owner)
        if ours:
            import ray

            ray.shutdown()
            interrupts.install()        # in case Ray's shutdown reset a handler
    finally:
        if ours:
            left = interrupts.end_descendants()
            if left:
                log(f"ended {len(left)} process(es) Ray left behind")

