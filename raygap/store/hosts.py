"""Drivers on several hosts sharing one store on a network file system: refused.

On NFS, Lustre, CIFS... (``system.NETWORK_FS``) the store uses SQLite's rollback journal, and
SQLite's locks there are only as good as the server's ``fcntl`` locking (NFSv3 without
``lockd`` and several FUSE mounts do not lock at all): two drivers on two hosts writing one
store could each believe they hold a trial. raygap does not try to make that safe; a driver
whose store is on such a file system and finds a live claim of a driver on another host in
it stops before it writes anything, with one line saying what to do instead: one driver
runs every table (``raygap run grids/table*.yaml``, one SLURM job), or each host has its own
``--results``. Drivers of one host sharing a store are unaffected (their locks are local)."""
from __future__ import annotations

import socket
from pathlib import Path

from ..errors import StoreError
from ..system import NETWORK_FS, mount_fs_type
from .claims import Watch
from .owners import this_process_owner

ADVICE = ("run every table from one driver instead: one SLURM job running `raygap run grids/table*.yaml` "
          "(scripts/slurm/raygap.sbatch), or give each host its own --results folder; a driver that is gone "
          "reads so once its heartbeat has stood still for a lease, so the same command after that starts")


def other_hosts_holding(store, host: str | None = None, watch: Watch | None = None) -> dict[str, int]:
    """{owner: trials} of the live claims that drivers on other hosts hold in ``store``, judged
    as every claim is (``Claims._judge``: the heartbeat rule on this observer's monotonic clock,
    never the other host's ``lease_until``); ``watch``: the observer's memory (default: the one
    the one-shot commands keep for this store, so a dead host's claims lapse after a lease)."""
    host = host or socket.gethostname()
    own = watch is None
    watch = Watch.for_store(store.path) if own else watch
    me = this_process_owner()
    out: dict[str, int] = {}
    for row in store._query(f"SELECT {store._claim_cols} FROM trials WHERE owner IS NOT NULL AND status != 'done'"):
        owner = row[2]
        if owner.partition(":")[0] != host and store._judge(row, me, watch) == "held":
            out[owner] = out.get(owner, 0) + 1
    if own:
        watch.save()
    return out


def refuse_other_hosts(store, host: str | None = None, watch: Watch | None = None) -> None:
    """A :class:`StoreError` line when ``store`` is on a network file system and a driver on
    another host holds trials in it now; nothing otherwise."""
    kind = mount_fs_type(Path(store.path).parent)
    if kind not in NETWORK_FS:
        return
    others = other_hosts_holding(store, host, watch)
    if others:
        owner, n = sorted(others.items())[0]
        more = f" (and {len(others) - 1} other driver(s))" if len(others) > 1 else ""
        raise StoreError(store.path, f"is on a network file system ({kind}) where a driver on host "
                                     f"{owner.partition(':')[0]} holds {n} trial(s) now{more}: drivers on several "
                                     "hosts sharing one store there are not safe, so this one does not start",
                         ADVICE)
