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
import time
from pathlib import Path

from ..errors import StoreError
from ..system import NETWORK_FS, mount_fs_type

ADVICE = ("run every table from one driver instead: one SLURM job running `raygap run grids/table*.yaml` "
          "(scripts/slurm/raygap.sbatch), or give each host its own --results folder")


def other_hosts_holding(store, host: str | None = None, now: float | None = None) -> dict[str, int]:
    """{owner: trials} of the live claims (lease not over) that drivers on other hosts hold in ``store``."""
    host = host or socket.gethostname()
    now = time.time() if now is None else now
    rows = store._query("SELECT owner, count(*) FROM trials WHERE owner IS NOT NULL AND lease_until > ? "
                        "AND status != 'done' GROUP BY owner", (now,))
    return {owner: n for owner, n in rows if owner.partition(":")[0] != host}


def refuse_other_hosts(store, host: str | None = None, now: float | None = None) -> None:
    """A :class:`StoreError` line when ``store`` is on a network file system and a driver on
    another host holds trials in it now; nothing otherwise."""
    kind = mount_fs_type(Path(store.path).parent)
    if kind not in NETWORK_FS:
        return
    others = other_hosts_holding(store, host, now)
    if others:
        owner, n = sorted(others.items())[0]
        more = f" (and {len(others) - 1} other driver(s))" if len(others) > 1 else ""
        raise StoreError(store.path, f"is on a network file system ({kind}) where a driver on host "
                                     f"{owner.partition(':')[0]} holds {n} trial(s) now{more}: drivers on several "
                                     "hosts sharing one store there are not safe, so this one does not start",
                         ADVICE)
