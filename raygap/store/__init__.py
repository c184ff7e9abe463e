"""The trial store: one SQLite file (default ``results/store.sqlite``), one row per distinct trial.

A trial is keyed by :meth:`TrialConfig.key` (a hash of its resolved config, resources
excluded, plus the results version of the code and of its method). A ``done`` row is
never run again and never overwritten by a later failure.

One job a module: ``schema`` (the file format and its migration), ``connection`` (opening
the file, faults, waiting on a lock, transactions, the one chunked query by key), ``owners``
(which driver runs a trial, and whether it still runs), ``trials`` (registering a grid, a
trial's life, reading it back), ``claims`` (one trial, one run: leases) and ``checkpoints``
(each trial's latest checkpoint, the shared warm-ups). :class:`Store` is all of them on one
connection.
"""
from __future__ import annotations

from .checkpoints import Checkpoints
from .claims import Claims
from .owners import owner_alive, this_process_owner
from .schema import SCHEMA_VERSION, STATUSES
from .trials import Trials

__all__ = ["SCHEMA_VERSION", "STATUSES", "Store", "owner_alive", "this_process_owner"]


class Store(Trials, Claims, Checkpoints):
    """The SQLite trial store at ``path``.

    ``readonly=False`` (the default) creates the file and its folder when missing and
    migrates an older schema; ``readonly=True`` only reads (the file must exist).
    """
