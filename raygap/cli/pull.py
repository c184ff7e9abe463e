"""``raygap pull --storage URI [--results DIR]``: the store and tables a ``raygap run --storage``
mirrored there (:mod:`raygap.store.mirror`), fetched to this machine: a laptop, or a new head.
A store already in ``DIR`` is merged with the mirrored one by trial key, never replaced."""
from __future__ import annotations

from .grids import results_root


def cmd_pull(args) -> int:
    from ..store.mirror import Mirror

    mirror = Mirror(args.storage, results_root(args))
    said, tables = mirror.pull()
    print(said)
    print(f"tables: {len(tables)} file(s) from {mirror.uri} into {args.results}"
          + (": " + ", ".join(str(p) for p in tables[:8]) + (" ..." if len(tables) > 8 else "") if tables else ""))
    return 0
