"""Atomic, link-safe writing: every file raygap writes under ``results/`` goes through here.

A reader sees the old file or the new one, whole (a temp file beside it, fsync, rename), with
the user's umask; no write follows a symlink: a folder under the results folder that is a link
leading out of it is refused (:func:`results_dir`), and so is a file that is a link
(:func:`refuse_link`; :func:`refuse_links_in` checks a whole folder before anything is
written): one :class:`~raygap.errors.StoreError` line, nothing written. An OSError is one such
line naming the file.
"""
from __future__ import annotations

import errno
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from .errors import StoreError
from .removal import remove

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask (Linux reports it in /proc; elsewhere set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        m = os.umask(0o022)
        os.umask(m)
    return m


def refuse_link(path: str | Path, root: str | Path | None = None) -> Path:
    """``path``, refused (one :class:`StoreError` line) when it is a symlink, or when ``root`` is
    given and ``path`` is not strictly inside it or a folder between them is a symlink leading
    out of ``root`` (``root`` itself may be a link)."""
    path = Path(path)
    if root is not None:
        root = Path(root)
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            parts = ()
        if not parts or ".." in parts:
            raise StoreError(path, f"is not inside {root}: raygap does not write there")
        results_dir(root, *parts[:-1], create=False)
    if path.is_symlink():
        raise StoreError(path, f"is a symlink (to {os.readlink(path)}): raygap does not write through it",
                         "remove the link and run again")
    return path


def atomic_write_with(path: str | Path, write: Callable[[Any], None], binary: bool = False, *,
                      root: str | Path | None = None, advice: str | None = None) -> Path:
    """Write ``path`` through ``write(file)`` so that a reader sees the old file or the new
    one, whole: a temp file beside it (mode 0666 less the umask, like any new file),
    fsync, rename over ``path``. Link-safe: a symlink at ``path``, or (with ``root``, the
    folder raygap writes in) a folder on the way that is a link out of ``root``, is refused
    with nothing written (:func:`refuse_link`). OSErrors become one StoreError line naming
    the file (``advice``: what to do, else the results folder's)."""
    path = refuse_link(path, root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e, advice) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        remove(tmp, path.parent, ignore_errors=True)
        if isinstance(e, OSError):
            raise _write_error(path, e, advice) from None
        raise
    return path


RESULTS_ADVICE = "the trials are safe in the store; fix this, then run `raygap export` for the tables"


def _write_error(path: Path, e: OSError, advice: str | None = None) -> StoreError:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}.get(e.errno, e.strerror or str(e))
    return StoreError(path, f"cannot write: {what}", advice or RESULTS_ADVICE)


def atomic_write(path: str | Path, text: str | bytes, *, root: str | Path | None = None,
                 advice: str | None = None) -> Path:
    """Write ``text`` (or bytes) to ``path`` atomically and link-safely (see :func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda f: f.write(text), binary=isinstance(text, bytes), root=root, advice=advice)


def results_dir(root: str | Path, *parts: str, create: bool = True) -> Path:
    """``root/parts...``, refusing a folder on the way that is not a folder, or that is a
    symlink leading out of ``root`` (``root`` itself may be a link, e.g. to a larger disk)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreError(root, "is not a folder", "pass --results DIR with a folder")
    base = root.resolve()
    d = root
    for part in parts:
        d = d / part
        if d.is_symlink() and not d.resolve().is_relative_to(base):
            raise StoreError(d, f"is a symlink to {d.resolve()}, outside {root}: raygap does not write through it",
                             "remove the link, or point --results at the folder you want written")
        if d.exists() and not d.is_dir():
            raise StoreError(d, "is a file where raygap keeps a folder of tables", "move it, or rename the grid")
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _write_error(d, e) from None
    return d


def refuse_links_in(root: str | Path, *parts: str) -> Path:
    """``root/parts...`` checked as :func:`results_dir` does (not made), and every file directly
    in it that is a symlink refused: run before an export writes anything, so a link there
    stops it with nothing written."""
    d = results_dir(root, *parts, create=False)
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.is_symlink() and not p.is_dir():
                refuse_link(p)
    return d
