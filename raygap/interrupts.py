"""How raygap stops: SIGINT (Ctrl-C), SIGTERM (``kill``, a SLURM walltime, a container
stop) and SIGHUP (a closed terminal, unless ignored as under ``nohup``) mean the same
thing at every phase of every verb. No Ray here.

* Start-up and running: the signal stops the run. While Tune runs, SIGINT is Tune's own
  (it stops the experiment gracefully); SIGTERM and SIGHUP are passed on to it as SIGINT.
  The runner then marks the trials it had started ``interrupted`` in the store, shuts the
  embedded Ray down and ends any process it left behind.
* Protected phases (Ray's teardown, writing the tables): the signal is noted and the
  phase finishes first -- the finished trials' tables are always written. A second signal
  stops at once (the writes are atomic: a file is whole, old or new).

raygap installs these handlers even when it was started with SIGINT ignored (a
background job of a non-interactive shell): Tune would honour SIGINT mid-run anyway, so
ignoring it only at start-up would make the same signal mean two things.

``RAYGAP_DEBUG_PAUSE=phase:seconds[,phase:seconds]`` makes raygap print
``raygap: debug: phase <phase>`` and pause there: tests use it to deliver a signal
inside a phase that is otherwise over in milliseconds (teardown, export).
"""
from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .atomic import atomic_write
from .errors import StoreError
from .removal import remove

SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class _State:
    def __init__(self):
        self.received: list[int] = []          # every signal since install()
        self.protected: list[str] = []         # the protected phases we are in (innermost last)
        self.deferred = 0                      # signals received inside protected phases
        self.tune_running = False
        self.installed = False
        self.keep_hup_ignored = False
        self.holding: list[str] = []           # start-up phases in which a first signal is held (:func:`held`)
        self.held = 0                          # signals received while holding


STATE = _State()


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _handler(signum, frame) -> None:
    STATE.received.append(signum)
    if STATE.holding and not STATE.protected:
        STATE.held += 1
        if STATE.held == 1:
            return                      # raised as the phase ends (see held()); a second stops at once
        raise KeyboardInterrupt(f"second {_name(signum)}")
    if STATE.protected:
        STATE.deferred += 1
        if STATE.deferred == 1:
            print(f"raygap: {_name(signum)} received: finishing {STATE.protected[-1]} first (seconds); "
                  "send it again to stop at once", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt(f"second {_name(signum)}")
    if STATE.tune_running and signum != signal.SIGINT:
        # Tune's SIGINT handler stops the experiment gracefully; once it has fired it puts
        # ours back, so a repeated signal lands in the branch below and stops at once
        os.kill(os.getpid(), signal.SIGINT)
        return
    raise KeyboardInterrupt(_name(signum))


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP (unless ignored) to raygap's handler. Main thread
    only (elsewhere a no-op). Call again after code that replaces handlers (ray.init)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in SIGNALS:
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        if name == "SIGHUP":
            if not STATE.installed:
                STATE.keep_hup_ignored = signal.getsignal(sig) == signal.SIG_IGN
            if STATE.keep_hup_ignored:
                continue                # nohup: the user asked to survive a closed terminal
        signal.signal(sig, _handler)
    STATE.installed = True


def note(signum: int) -> None:
    """Record a stop signal that reached raygap through someone else's handler."""
    STATE.received.append(signum)


def interrupted() -> bool:
    """Whether a stop signal arrived since install()."""
    return bool(STATE.received)


def last_signal() -> str | None:
    return _name(STATE.received[-1]) if STATE.received else None


@contextmanager
def protected(what: str) -> Iterator[None]:
    """A phase that finishes even when a stop signal arrives (see the module doc)."""
    STATE.protected.append(what)
    try:
        pause_point(what)
        yield
    finally:
        STATE.protected.pop()
        if not STATE.protected:
            if STATE.deferred and STATE.tune_running:
                # held back by a phase inside Tune's run (a table written as its trials ended): now
                # Tune's SIGINT handler gets it, as it would have (see _handler), and stops the run
                os.kill(os.getpid(), signal.SIGINT)
            STATE.deferred = 0


@contextmanager
def held(what: str) -> Iterator[None]:
    """A start-up phase (Ray's start-up) in which a first stop signal is noted, not raised, and
    raised as KeyboardInterrupt as soon as the phase is over: raised inside it, it can land in a
    fork hook of ``logging``, which ignores it (the run went on) and prints a traceback. A second
    signal stops at once."""
    STATE.holding.append(what)
    STATE.held = 0
    try:
        yield
    finally:
        STATE.holding.pop()
        held, STATE.held = STATE.held, 0
    if held:
        raise KeyboardInterrupt(last_signal() or "SIGINT")


@contextmanager
def tune_phase() -> Iterator[None]:
    """While Tune runs: SIGINT is Tune's own handler, ours forwards SIGTERM / SIGHUP to it.
    Tune leaves its SIGINT handler installed after fit() unless a signal fired (then it has put
    ours back, and the signal is noted here: :func:`interrupted` says so); ours is put back on
    the way out."""
    STATE.tune_running = True
    try:
        yield
    except BaseException:
        STATE.tune_running = False
        install()
        raise
    STATE.tune_running = False
    if (threading.current_thread() is threading.main_thread() and STATE.installed
            and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0)
            and signal.getsignal(signal.SIGINT) is _handler):
        # Tune's handler, once it has fired, puts back the one it replaced (ours) and fit() returns
        # as if the run had ended: the signal is noted, so what follows (another search round, the
        # tables as if complete) knows the user asked to stop
        note(signal.SIGINT)
    install()


def pause_point(phase: str) -> None:
    """Pause here when ``RAYGAP_DEBUG_PAUSE`` names ``phase`` (for tests; see the module doc)."""
    spec = os.environ.get("RAYGAP_DEBUG_PAUSE", "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, secs = item.partition(":")
        if name == phase:
            print(f"raygap: debug: phase {phase}, pausing {secs or 0} s", file=sys.stderr, flush=True)
            time.sleep(float(secs or 0))


def end_descendants(grace: float = 5.0) -> list[int]:
    """Terminate every process this process started, directly or not (SIGTERM, then
    SIGKILL after ``grace`` seconds); returns their pids. The embedded Ray's processes are
    our descendants; this is the safety net behind ``ray.shutdown()``."""
    import psutil

    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return _end(procs, grace)


def _end(procs: list, grace: float) -> list[int]:
    """SIGTERM to ``procs`` (psutil processes), SIGKILL to those alive ``grace`` seconds later;
    returns their pids."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in procs]


# ----------------------------------------------------------------------------- a killed driver's leftovers
# A driver killed with SIGKILL (an OOM kill, a lost session) cannot end the embedded Ray it
# started: some of Ray's processes (its dashboard and runtime-env agents) outlive it, one of
# them listening on 127.0.0.1. The driver therefore keeps a ledger of the processes it
# started (pid and start time, refreshed while it runs, deleted at its teardown); the next
# run on the same results folder ends those still alive whose driver is gone. Only
# processes a raygap run itself started are ever ended: the same pid *and* start time, the
# same user as this one, and a command line of Ray's (a program of the installed ``ray``
# package, or a Ray worker's ``ray::`` title). The ledger folder is the user's own (0700);
# one that others can write is not acted on, as anyone could have written a ledger there.
LEDGER_DIR = ".raygap-procs"


def _ray_package() -> str | None:
    """The installed ``ray`` package's folder, found without importing Ray."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    locs = list(spec.submodule_search_locations or []) if spec else []
    return os.path.realpath(locs[0]) if locs else None


def is_rays(cmdline: list[str], ray_dir: str | None) -> bool:
    """Whether a process with ``cmdline`` is one of Ray's: a worker (``ray::...``) or a program
    or script inside the ``ray`` package folder ``ray_dir``."""
    if cmdline and cmdline[0].startswith("ray::"):
        return True
    if not ray_dir:
        return False
    inside = ray_dir.rstrip("/") + "/"
    return any(arg.startswith("/") and os.path.realpath(arg).startswith(inside) for arg in cmdline[:3])


def _ledger_path(folder: Path) -> Path:
    import socket

    return Path(folder) / LEDGER_DIR / f"{socket.gethostname()}-{os.getpid()}.json"


def record_children(folder: Path, owner: str, warn=None) -> int:
    """Write (or refresh) this driver's ledger of its descendant processes; returns how many.
    Where it cannot be written (a read-only or full disk, a folder not the user's), ``warn``
    gets one line saying so and what it costs (returns 0): the teardown still ends them, but a
    driver killed with SIGKILL leaves them running, and the next run cannot find them."""
    import json

    import psutil

    try:
        procs = psutil.Process().children(recursive=True)
        entries = sorted({(p.pid, round(p.create_time(), 2)) for p in procs})
    except psutil.Error:
        return 0
    path = _ledger_path(folder)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.parent.stat()
        if st.st_uid == os.getuid():
            if st.st_mode & 0o022:
                # others could write here: no ledger in it is trusted once it is closed again (the
                # next run's end_leftovers acts on this folder's ledgers)
                for other in path.parent.glob("*.json"):
                    remove(other, path.parent, ignore_errors=True)
            os.chmod(path.parent, 0o700)       # (made before by an older raygap, with the umask's mode)
        atomic_write(path, json.dumps({"owner": owner, "procs": entries}), root=path.parent)
    except (OSError, StoreError) as e:
        if warn is not None:
            warn(f"the ledger of this run's Ray processes cannot be written ({path}: {getattr(e, 'strerror', None) or e}); "
                 "they are ended at the end of the run, but if this raygap process is killed (SIGKILL) the next "
                 "run cannot find and end them")
        return 0
    return len(entries)


def drop_ledger(folder: Path) -> None:
    """This driver ended its processes itself: its ledger goes."""
    try:
        remove(_ledger_path(folder), Path(folder) / LEDGER_DIR)
    except OSError:
        pass


def end_leftovers(folder: Path, owner_alive) -> list[int]:
    """End the processes recorded by drivers of this machine that are gone (``owner_alive``
    says False); returns their pids. Ledgers of live drivers or other machines are left."""
    import json
    import socket

    import psutil

    ended: list[int] = []
    host = socket.gethostname()
    ledgers = Path(folder) / LEDGER_DIR
    try:
        st = ledgers.stat()
    except OSError:
        return ended
    me = os.getuid()
    if st.st_uid != me or st.st_mode & 0o022:
        print(f"raygap: {ledgers} is not only this user's to write (owner uid {st.st_uid}, mode "
              f"{st.st_mode & 0o777:o}): its ledgers are not acted on; no leftover process is ended",
              file=sys.stderr, flush=True)
        return ended
    ray_dir = _ray_package()
    for path in sorted(ledgers.glob(f"{host}-*.json")):
        try:
            fst = path.lstat()
            if not stat.S_ISREG(fst.st_mode) or fst.st_uid != me or fst.st_mode & 0o022:
                continue                    # not a ledger this user wrote (nor one only it could change)
            doc = json.loads(path.read_text())
            owner, entries = doc["owner"], doc["procs"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner_alive(owner) is not False:
            continue
        procs = []
        for pid, started in entries:
            try:
                p = psutil.Process(int(pid))
                if (abs(p.create_time() - float(started)) < 0.02       # the same process, not a reused pid
                        and p.uids().real == me and is_rays(p.cmdline(), ray_dir)):
                    procs.append(p)
            except (psutil.Error, ValueError, TypeError):
                pass
        ended += _end(procs, 5.0)
        remove(path, ledgers, ignore_errors=True)
    return ended
