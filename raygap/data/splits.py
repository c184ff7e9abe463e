"""The split lists a file-backed dataset's trials read, and their digest: part of the dataset's
identity in a trial's key (:meth:`raygap.config.TrialConfig.key`), so trials trained on
different splits of one data root never share a key, a stored row or a table cell.

A dataset names its lists at registration: ``split_lists=(...)`` (each must be there) and
``split_optional=(...)`` (hashed when present: KS's ``classes.txt`` fixes the label order).
The digest is taken where the key is computed: when the data root or a list is not there
(a head without the data, a machine with only the store), there is none and the key is the
one it was before digests existed; the worker then checks the lists it reads
(:func:`check_split`)."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from ..errors import DataError
from ..registry import DATASETS
from .base import DataCommon, root_of


def split_files(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) split-list file names of dataset ``name`` (empty when it has none)."""
    if name not in DATASETS:
        return (), ()
    meta = DATASETS.get(name).meta
    return tuple(meta.get("split_lists", ())), tuple(meta.get("split_optional", ()))


def lists_digest(texts: dict[str, bytes]) -> str:
    """The digest of split lists given as ``{file name: bytes}`` (12 hex digits; name order)."""
    h = hashlib.sha256()
    for fname in sorted(texts):
        h.update(fname.encode() + b"\0" + len(texts[fname]).to_bytes(8, "big") + texts[fname])
    return h.hexdigest()[:12]


def split_digest(name: str, data: dict | DataCommon) -> str | None:
    """The digest of dataset ``name``'s split lists at its root (``data.root`` or
    ``$RAYGAP_DATA/<name>``), or None when it has no lists, its root is unknown or a required
    list is not there. Read once per file state (path, inode, size, modification time)."""
    required, optional = split_files(name)
    if not required:
        return None
    root_value = data.get("root") if isinstance(data, dict) else data.root
    root = root_of(name, DataCommon(root=root_value))
    if root is None:
        return None
    state = []
    for fname in required + optional:
        try:
            st = os.stat(root / fname)
        except OSError:
            if fname in required:
                return None
            continue
        state.append((fname, st.st_ino, st.st_size, st.st_mtime_ns))
    return _digest_of(str(root), tuple(state))


@functools.lru_cache(maxsize=256)
def _digest_of(root: str, state: tuple) -> str | None:
    try:
        return lists_digest({fname: (Path(root) / fname).read_bytes() for fname, *_ in state})
    except OSError:
        return None


def check_split(cfg, key: str) -> None:
    """In the worker, before the data are read: the trial's ``key`` must be its config's key
    with the split lists found here, or without any (the driver saw no lists); otherwise the
    lists here are not those the driver keyed it with: a :class:`DataError` line."""
    name = cfg.data.name
    here = split_digest(name, cfg.to_dict()["data"])
    if here is None or key in (cfg.key(), cfg.key(split=None)):
        return
    raise DataError(f"{root_of(name, cfg.common_data())}: the split lists here (digest {here}) are not those "
                    f"this trial was keyed with where the grid was expanded: prepare one split, the same "
                    f"on every node, and run again")
