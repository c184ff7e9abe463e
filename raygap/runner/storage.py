"""Checkpoint storage: the one place a storage URI is interpreted.

The run's storage (``--storage``; default ``<results>/ray``) is a local path or a URI
(``s3://``, ``gs://``...), read and written through pyarrow's file systems. Here: where a Tune
experiment and a kept warm-up go on it, a Tune checkpoint's place as one string, keeping a
copy of a checkpoint (a shared warm-up's end), the checkpoints a trial may resume from,
opening one (the only use of Ray here, inside :func:`checkpoint_at`), deleting one.
"""
from __future__ import annotations

from pathlib import Path

from ..trialfiles import CHECKPOINT


def storage_root(storage: str | None, results: Path) -> str:
    """The run's storage: ``storage`` as given, else the folder ``ray`` in the results folder."""
    return storage or str((Path(results) / "ray").resolve())


def is_remote(storage: str) -> bool:
    """Whether ``storage`` is a URI (``s3://``, ``gs://``...) rather than a path."""
    return "://" in storage


def experiment_at(storage: str, name: str):
    """Where the Tune experiment ``name`` goes: a Path, or a URI on remote storage."""
    return Path(storage) / name if not is_remote(storage) else f"{storage.rstrip('/')}/{name}"


def warmup_at(storage: str, wkey: str) -> str:
    """The folder a leader keeps the shared warm-up ``wkey`` in (:func:`keep_checkpoint`)."""
    return f"{storage.rstrip('/')}/warmups/{wkey}"


def keep_checkpoint(src: Path, uri: str) -> str:
    """Copy a checkpoint file into the folder ``uri`` (a path on the run's storage, or
    ``s3://...``), written under a temporary name and renamed, so a reader never finds half
    a file. Returns ``uri``."""
    import pyarrow.fs

    fs, path, _ = _fs_path(uri)
    fs.create_dir(path, recursive=True)
    tmp = f"{path}/{CHECKPOINT}.part"
    pyarrow.fs.copy_files(str(src), tmp, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    fs.move(tmp, f"{path}/{CHECKPOINT}")
    return uri


def checkpoint_uri(checkpoint) -> str:
    """Where a Tune checkpoint lives, as one string: a local path, or ``s3://bucket/...``."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local") if fs is not None else "local"
    if kind == "local":
        return checkpoint.path
    return f"{'gs' if kind == 'gcs' else kind}://{checkpoint.path}"


def _fs_path(uri: str):
    """(pyarrow file system, path in it, URI prefix) of a checkpoint URI or local path."""
    import pyarrow.fs

    if is_remote(uri):
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return fs, path, uri.split("://", 1)[0] + "://"
    return pyarrow.fs.LocalFileSystem(), uri, ""


def resume_candidates(uri: str) -> list[str]:
    """The checkpoints a trial may resume from, newest first: any later checkpoint in the
    Tune trial folder of ``uri`` (written to storage by a driver killed before it could
    record it in the store), then ``uri`` itself, the one the store recorded."""
    import re

    import pyarrow.fs

    pattern = re.compile(r"checkpoint_(\d+)")
    try:
        fs, path, prefix = _fs_path(uri)
        parent, _, name = path.rstrip("/").rpartition("/")
        m = pattern.fullmatch(name)
        if not m:
            return [uri]
        infos = fs.get_file_info(pyarrow.fs.FileSelector(parent))
    except Exception:  # noqa: BLE001 -- storage unreachable: the recorded one (the trial says if it fails)
        return [uri]
    later = sorted((int(mm.group(1)), i.path) for i in infos
                   if i.type == pyarrow.fs.FileType.Directory and (mm := pattern.fullmatch(i.base_name))
                   and int(mm.group(1)) > int(m.group(1)))
    return [prefix + p for _, p in reversed(later)] + [uri]


def checkpoint_at(uri: str):
    """The Tune checkpoint at ``uri`` (see :func:`checkpoint_uri`), on whatever storage."""
    import pyarrow.fs
    from ray import tune

    fs, path, _ = _fs_path(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(uri)
    return tune.Checkpoint(path, filesystem=fs)


def delete_checkpoint(uri: str | None) -> None:
    """Remove a checkpoint folder from the run's storage (a done trial needs it no more)."""
    if not uri:
        return
    try:
        fs, path, _ = _fs_path(uri)
        fs.delete_dir(path)
    except Exception:  # noqa: BLE001 -- already gone, or storage unreachable: nothing to lose
        pass

