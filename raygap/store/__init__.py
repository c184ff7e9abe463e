"""The trial store: one SQLite file (default ``results/store.sqlite``), one row per distinct trial.

A trial is keyed by :meth:`TrialConfig.key` (a hash of its resolved config, resources
excluded, plus the results version of the code and of its method). A ``done`` row is
never run again and never overwritten (only ``--rerun`` takes it out).

One job a module: ``schema`` (the file format and its migration), ``connection`` (opening
the file, faults, waiting on a lock, transactions, the one chunked query by key), ``owners``
(which driver runs a trial, and whether it still runs), ``trials`` (registering a grid, a
trial's life, reading it back), ``claims`` (one trial, one run: fencing tokens, heartbeats) and ``checkpoints``
(each trial's latest checkpoint, the shared warm-ups) and ``searches`` (hyperparameter searches, their winners). :class:`Store` is all of them on one
connection; ``mirror`` (not imported here: it needs pyarrow) copies the store and tables to the
run's storage and merges them back (``raygap run --storage``, ``raygap pull``);
:class:`EmptyStore` stands for a store not created yet, for the commands that only read.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .checkpoints import Checkpoints
from .claims import Claims, TrialsHeld, Watch, lease_period
from .owners import owner_alive, owner_of, this_process_owner
from .schema import SCHEMA_VERSION, STATUSES, create
from .searches import Searches
from .trials import Trials

__all__ = ["SCHEMA_VERSION", "STATUSES", "EmptyStore", "Store", "TrialsHeld", "Watch", "lease_period", "owner_alive",
           "owner_of", "this_process_owner"]


class Store(Trials, Claims, Checkpoints, Searches):
    """The SQLite trial store at ``path``.

    ``readonly=False`` (the default) creates the file and its folder when missing and
    migrates an older schema; ``readonly=True`` only reads (the file must exist).
    """


class EmptyStore(Store):
    """The store of a results folder where nothing has run yet: every read finds nothing and
    every write is refused, as on a store opened read-only. Nothing is created on disk;
    ``path`` is where the store would be."""

    def __init__(self, path: str | Path, notify=None):
        super().__init__(path, readonly=True, notify=notify)

    def _open(self) -> None:
        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        create(self._db)
