"""Every removal raygap makes goes through :func:`remove`: a file or folder is removed only
when it is strictly inside the folder raygap made for it (``within``), checked on the path as
written (no ``..``, not ``within`` itself) and on the resolved path (no folder on the way is a
symlink leading out of ``within``). A symlink is removed as a link, never followed; a folder
is removed with :func:`shutil.rmtree`, which does not follow the links inside it. Anything
else is a :class:`RefusedRemoval` (a :class:`~raygap.errors.StoreError`: one line, exit 2),
raised even where ordinary errors are ignored, so a refusal is never silent."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreError


class RefusedRemoval(StoreError):
    """A removal of a path that is not strictly inside the folder raygap made for it."""


def check_inside(path: str | os.PathLike, within: str | os.PathLike) -> Path:
    """``path``, when it is strictly inside ``within`` as written and once resolved (its own
    last component is not resolved: a link there is the thing removed); else RefusedRemoval."""
    path, base = Path(path), Path(within)
    try:
        parts = path.relative_to(base).parts
    except ValueError:
        parts = ()
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise RefusedRemoval(path, f"is not strictly inside {base}: raygap removes nothing there")
    rbase, rparent = base.resolve(), path.parent.resolve()
    if rparent != rbase and not rparent.is_relative_to(rbase):
        raise RefusedRemoval(path, f"leads out of {base} (to {rparent / path.name}) through a symlink: "
                                   "raygap removes nothing there")
    return path


def remove(path: str | os.PathLike, within: str | os.PathLike, *, ignore_errors: bool = False) -> bool:
    """Remove ``path`` (a file, a link or a folder with all it holds) if it is strictly inside
    ``within`` (:func:`check_inside`); True when something was removed, False when nothing was
    there. ``ignore_errors``: an OSError while removing is ignored (a refusal never is)."""
    path = check_inside(path, within)
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            return False
    except OSError:
        if not ignore_errors:
            raise
    return True


@contextlib.contextmanager
def temp_folder(prefix: str) -> Iterator[str]:
    """A new folder (0700) in the temporary folder, removed through :func:`remove` at the end."""
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield folder
    finally:
        remove(folder, tempfile.gettempdir(), ignore_errors=True)
