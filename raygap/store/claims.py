"""Claims: one trial, one run, with fencing.

A driver claims the trials it is about to run; another driver's live claim holds a trial
against it. Each claim carries a **token** (the ``token`` column, a counter) that grows every
time a trial changes hands; the store connection that claimed a trial keeps its token (its
*fence*), and every write of that trial's state through it (progress, checkpoint, done, failed,
interrupted, the checkpoint taken to delete) checks the token in the same transaction and does
nothing when it has moved: a driver whose claim was taken over (it was stopped past its lease)
writes nothing more.

Staleness without comparing clocks across machines: the owner increments the trial's
**heartbeat counter** (``beats``) every ``lease_s / 4`` seconds; an observer (:class:`Watch`)
judges a claim stale when ``(owner, token, beats)`` has not moved for the lease period
(``lease_s``, written by the owner) as measured by the observer's own ``time.monotonic()``. An
observer that has never seen a claim holds it live until it has watched it for a lease period,
so a second driver takes over a dead claim of another machine after about one lease. A claim
whose owner is a gone process of this machine and PID namespace (:func:`owner_alive` False)
is dead at once. ``lease_until`` (the owner's clock plus the lease) is written for people
reading the file, and is NULL once a claim is released; no other process compares it with
its own clock.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from .connection import Connection
from .owners import owner_alive, this_process_owner

LEASE_S = 120.0          # the default lease period (RAYGAP_LEASE_S sets another: tests use a short one)


def lease_period() -> float:
    """The lease period of this process's claims: ``RAYGAP_LEASE_S`` (seconds), else 120."""
    raw = os.environ.get("RAYGAP_LEASE_S")
    if raw is None or raw == "":
        return LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (1.0 <= value <= 86_400.0):
        raise ConfigError(f"{raw!r} is not a lease period in seconds from 1 to 86400", key="RAYGAP_LEASE_S",
                          hint="unset it for the default of 120 s")
    return value


class TrialsHeld(Exception):
    """``forget`` refused: another live driver holds these trials (``held``: key -> owner)."""

    def __init__(self, held: dict[str, str]):
        self.held = held
        super().__init__(f"{len(held)} trial(s) held by another driver")


class Watch:
    """An observer's memory of the claims it has seen: key -> ((owner, token, beats), since),
    ``since`` by this process's ``time.monotonic()``. ``path``: kept in a file between
    commands (``raygap status``, ``--rerun``), valid only on the boot that wrote it (the
    monotonic clock is this machine's since boot)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.seen: dict[str, tuple[tuple, float]] = {}
        if self.path is not None:
            self._load()

    def stale(self, key: str, owner: str, token: int, beats: int, lease: float) -> bool:
        """Whether this claim has not moved for ``lease`` seconds of this observer's watching."""
        now = time.monotonic()
        mark = (owner, int(token or 0), int(beats or 0))
        prev = self.seen.get(key)
        if prev is None or tuple(prev[0]) != mark:
            self.seen[key] = (mark, now)
            return False
        return now - prev[1] >= lease

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("boot") == _boot_id():
                self.seen = {k: (tuple(v[0]), float(v[1])) for k, v in doc["seen"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            self.seen = {}

    def save(self) -> None:
        """Keep what was seen (best effort: a folder it cannot write keeps nothing)."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"boot": _boot_id(), "seen": {k: [list(m), t] for k, (m, t) in self.seen.items()}}, f)
            os.replace(tmp, self.path)
        except OSError:
            pass

    @classmethod
    def for_store(cls, store_path: str | Path) -> "Watch":
        """The watch the one-shot commands keep for the store at ``store_path``, in this
        user's cache folder (``$XDG_CACHE_HOME/raygap/watch``, else ``~/.cache/...``)."""
        import hashlib

        try:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raygap" / "watch"
        except RuntimeError:             # no home folder: this command's own looks only
            return cls()
        digest = hashlib.sha256(str(Path(store_path).resolve()).encode()).hexdigest()[:20]
        return cls(base / f"{digest}.json")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"t{time.time() - time.monotonic():.0f}"      # (no boot id: the boot time, to the second)


CLAIM_COLS = ("key", "status", "owner", "lease_until", "lease_s", "beats", "token")


class Claims(Connection):
    """Claiming, renewing and releasing trials (``owner``, ``token``, ``beats``, ``lease_s``,
    ``lease_until``), and the fence every write of a trial's state checks."""

    def _judge(self, row, owner: str, watch: Watch | None) -> str:
        """``free``, ``mine`` or ``held`` for a row of CLAIM_COLS, as ``owner`` sees it."""
        key, status, other, until, lease, beats, token = row
        if not other or until is None:
            return "free"
        if other == owner:
            return "mine"
        if owner_alive(other) is False:
            return "free"                       # a gone process of this machine and namespace
        if (watch or self.watch).stale(key, other, token, beats, float(lease or lease_period())):
            return "free"
        return "held"

    def claim(self, keys: Iterable[str], owner: str | None = None,
              lease_s: float | None = None) -> tuple[list[str], dict[str, str]]:
        """Claim the trials among ``keys`` that are not done and not held by another
        driver's live claim (see the module's text), for a lease of ``lease_s`` seconds
        (renew with :meth:`renew`). A trial that changes hands gets a new token, which this
        connection keeps as its fence. Returns (claimed keys, {key: owner} of the trials another
        driver holds)."""
        owner = owner or this_process_owner()
        lease_s = lease_s or lease_period()
        claimed: list[str] = []
        held: dict[str, str] = {}
        with self._tx():
            last = self._last_token()
            for row in self._keyed(f"SELECT {self._claim_cols} FROM trials WHERE", keys):
                key, status = row[0], row[1]
                if status == "done":
                    continue
                judged = self._judge(row, owner, None)
                if judged == "held":
                    held[key] = row[2]
                    continue
                claimed.append(key)
                if judged == "mine" and self._fences.get(key, row[6]) == row[6]:
                    token = row[6]               # still this driver's: the same hands, the same token
                else:                            # (above any token a merged row brought, too)
                    token = last = max(last, int(row[6] or 0)) + 1
                self._db.execute("UPDATE trials SET owner=?, lease_until=?, lease_s=?, beats=beats+1, token=? "
                                 "WHERE key=?", (owner, time.time() + lease_s, lease_s, token, key))
                self._fences[key] = token
            self._db.execute("UPDATE fences SET last=?", (last,))
        return claimed, held

    @property
    def _claim_cols(self) -> str:
        """CLAIM_COLS, NULL for those a store of an older schema, opened read-only, lacks."""
        return ", ".join(c if c in self._columns else f"NULL AS {c}" for c in CLAIM_COLS)

    def _last_token(self) -> int:
        """The last token handed out in this store (tokens are never used twice, whatever the
        trial: a trial set aside by ``--rerun`` and added again never meets an old fence)."""
        row = self._db.execute("SELECT last FROM fences").fetchone()
        if row is None:
            self._db.execute("INSERT INTO fences VALUES (?)", (int(self._db.execute(
                "SELECT COALESCE(max(token), 0) FROM trials").fetchone()[0]),))
            return self._last_token()
        return int(row[0])

    @property
    def watch(self) -> Watch:
        """This connection's own observer (a driver's memory of the claims it waits on)."""
        if getattr(self, "_watch", None) is None:
            self._watch = Watch()
        return self._watch

    def held_elsewhere(self, keys: Iterable[str], owner: str | None = None,
                       watch: Watch | None = None) -> dict[str, str]:
        """{key: owner} of the trials among ``keys`` (not done) that another driver's live
        claim holds, as this observer (``watch``, default this connection's) judges them:
        each call is a look that the heartbeat rule counts. Reads only."""
        owner = owner or this_process_owner()
        return {row[0]: row[2] for row in self._keyed(f"SELECT {self._claim_cols} FROM trials WHERE", keys)
                if row[1] != "done" and self._judge(row, owner, watch) == "held"}

    def stale_claims(self, keys: Iterable[str], watch: Watch | None = None) -> set[str]:
        """The ``running`` trials among ``keys`` whose claim has lapsed by the heartbeat rule
        (the owner is not a gone process of this machine: those read as ``interrupted``).
        Reads only."""
        out = set()
        for row in self._keyed(f"SELECT {self._claim_cols} FROM trials WHERE status='running' AND", keys):
            key, _, other, until, lease, beats, token = row
            if other and owner_alive(other) is not False and \
                    (watch or self.watch).stale(key, other, token, beats, float(lease or lease_period())):
                out.add(key)
        return out

    def renew(self, keys: Iterable[str], owner: str | None = None, lease_s: float | None = None) -> int:
        """One heartbeat of this driver's claims on ``keys`` (those not done yet, whose token
        has not moved): ``beats`` + 1, the lease extended. Returns how many were renewed."""
        lease_s = lease_s or lease_period()
        return self._set_lease(keys, owner, "lease_until=?, lease_s=?, beats=beats+1",
                               (time.time() + lease_s, lease_s), "AND status != 'done'")

    def release(self, keys: Iterable[str], owner: str | None = None) -> int:
        """Drop this driver's claims on ``keys`` (those whose token has not moved)."""
        return self._set_lease(keys, owner, "lease_until=NULL", (), "")

    def lost(self, keys: Iterable[str]) -> list[str]:
        """The trials among ``keys`` this connection claimed whose token has moved since (or
        whose row is gone): another driver took them over, or ``--rerun`` took them out."""
        fenced = [k for k in dict.fromkeys(keys) if k in self._fences]
        now = dict(self._keyed("SELECT key, token FROM trials WHERE", fenced))
        return [k for k in fenced if now.get(k) != self._fences[k]]

    def _set_lease(self, keys, owner, assign: str, args: tuple, extra: str) -> int:
        owner = owner or this_process_owner()
        with self._tx():
            return self._fenced_update(f"UPDATE trials SET {assign} WHERE owner=? {extra}", keys, (*args, owner))

    def forget(self, keys: Iterable[str], watch: Watch | None = None, owner: str | None = None) -> int:
        """Take the trials ``keys`` (whatever their status) out of the store so they run
        again; their rows are kept in ``forgotten``; memberships stay. Returns how many.
        With ``watch`` (``--rerun``): raises :class:`TrialsHeld`, changing nothing, when
        another live driver holds any of them (judged in the same transaction)."""
        now = time.time()
        with self._tx():
            if watch is not None:
                me = owner or this_process_owner()
                held = {row[0]: row[2] for row in self._keyed(f"SELECT {self._claim_cols} FROM trials WHERE", keys)
                        if self._judge(row, me, watch) == "held"}
                if held:
                    raise TrialsHeld(held)
            rows = self._keyed("SELECT * FROM trials WHERE", keys, run=self._rows)
            self._db.executemany("INSERT INTO forgotten VALUES (?,?,?)",
                                 [(row["key"], now, json.dumps(row)) for row in rows])
            return sum(self._keyed("DELETE FROM trials WHERE", keys, run=self._changed))
