"""Claims: one trial, one run. A driver claims the trials it is about to run for a lease
(renewed while they run); another driver's live claim holds a trial against it. A claim is
dead when its lease has expired or its owner is a gone process of this machine."""
from __future__ import annotations

import time
from collections.abc import Iterable

from .connection import Connection
from .owners import owner_alive, this_process_owner


def _live_claim(other: str | None, lease: float | None, owner: str, now: float) -> bool:
    """Whether ``other``'s claim (lease until ``lease``) still holds against ``owner``."""
    return bool(other and other != owner and lease and lease > now and owner_alive(other) is not False)


class Claims(Connection):
    """Claiming, renewing and releasing trials (the ``owner`` and ``lease_until`` columns)."""

    def claim(self, keys: Iterable[str], owner: str | None = None,
              lease_s: float = 120.0) -> tuple[list[str], dict[str, str]]:
        """Claim the trials among ``keys`` that are not done and not held by another
        driver's live claim, for ``lease_s`` seconds (renew with :meth:`renew`). A claim
        is dead when its lease has expired or its owner is a gone process of this machine.
        Returns (claimed keys, {key: owner} of the trials another driver holds)."""
        owner = owner or this_process_owner()
        now = time.time()
        claimed: list[str] = []
        held: dict[str, str] = {}
        with self._tx():
            for key, status, other, lease in self._keyed("SELECT key, status, owner, lease_until FROM trials WHERE",
                                                         keys):
                if status == "done":
                    continue
                if _live_claim(other, lease, owner, now):
                    held[key] = other
                else:
                    claimed.append(key)
            self._keyed("UPDATE trials SET owner=?, lease_until=? WHERE", claimed, (owner, now + lease_s),
                        run=self._changed)
        return claimed, held

    def held_elsewhere(self, keys: Iterable[str], owner: str | None = None) -> dict[str, str]:
        """{key: owner} of the trials among ``keys`` (not done) that another driver's live
        claim holds. Reads only."""
        owner = owner or this_process_owner()
        now = time.time()
        return {key: other for key, status, other, lease
                in self._keyed("SELECT key, status, owner, lease_until FROM trials WHERE", keys)
                if status != "done" and _live_claim(other, lease, owner, now)}

    def renew(self, keys: Iterable[str], owner: str | None = None, lease_s: float = 120.0) -> int:
        """Extend this driver's claims on ``keys`` (those not done yet)."""
        return self._set_lease(keys, owner, time.time() + lease_s, "AND status != 'done'")

    def release(self, keys: Iterable[str], owner: str | None = None) -> int:
        """Drop this driver's claims on ``keys``."""
        return self._set_lease(keys, owner, None, "")

    def _set_lease(self, keys, owner, until, extra: str) -> int:
        owner = owner or this_process_owner()
        with self._tx():
            return sum(self._keyed(f"UPDATE trials SET lease_until=? WHERE owner=? {extra} AND", keys,
                                   (until, owner), run=self._changed))
