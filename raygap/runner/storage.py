"""Checkpoint storage: the one place a storage URI is interpreted.

The run's storage (``--storage``; default ``<results>/ray``) is a local path or a URI
(``s3://``, ``gs://``...), read and written through pyarrow's file systems. Here: opening it
(:func:`open_storage`: an ``s3://`` URI's query parameters and the AWS endpoint variables, with
timeouts and few retries), checking it before anything runs (:func:`storage_problem`), where a
Tune experiment and a kept warm-up go on it, a Tune checkpoint's place as one string (the
storage's query parameters kept on it), keeping a copy of a checkpoint (a shared warm-up's end),
the checkpoints a trial may resume from, opening one (the only use of Ray here, inside
:func:`checkpoint_at`), deleting one.
"""
from __future__ import annotations

import os
import sys
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigError, nearest
from ..removal import RefusedRemoval, remove
from ..trialfiles import CHECKPOINT

# the query parameters of an s3:// URI (pyarrow's S3 URI form) and their types
S3_QUERY = {"region": str, "scheme": str, "endpoint_override": str, "access_key": str, "secret_key": str,
            "session_token": str, "anonymous": bool, "force_virtual_addressing": bool}
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")   # pyarrow's S3FileSystem() reads neither itself
TIMEOUTS = {"run": (10.0, 60.0, 4), "probe": (3.0, 5.0, 2)}   # connect s, request s, attempts
PROBE_DEADLINE_S = 8.0


def storage_root(storage: str | None, results: Path) -> str:
    """The run's storage: ``storage`` as given, else the folder ``ray`` in the results folder."""
    return storage or str((Path(results) / "ray").resolve())


def is_remote(storage: str) -> bool:
    """Whether ``storage`` is a URI (``s3://``, ``gs://``...) rather than a path."""
    return "://" in storage


def split_query(uri: str) -> tuple[str, str]:
    """``s3://b/p?endpoint_override=h:9000`` -> (``s3://b/p``, ``?endpoint_override=h:9000``)."""
    if not is_remote(uri) or "?" not in uri:
        return uri, ""
    base, _, query = uri.partition("?")
    return base, "?" + query


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` added to its path, its query parameters kept at the end."""
    base, query = split_query(uri)
    return "/".join([base.rstrip("/"), *parts]) + query


def experiment_at(storage: str, name: str):
    """Where the Tune experiment ``name`` goes: a Path, or a URI on remote storage."""
    return Path(storage) / name if not is_remote(storage) else join(storage, name)


def warmup_at(storage: str, wkey: str) -> str:
    """The folder a leader keeps the shared warm-up ``wkey`` in (:func:`keep_checkpoint`)."""
    return join(storage, "warmups", wkey)


def open_storage(uri: str, purpose: str = "run"):
    """(pyarrow file system, path in it) of a storage URI or local path. An ``s3://`` URI is
    opened with its query parameters (pyarrow's S3 URI form: ``endpoint_override``, ``scheme``,
    ``region``, keys...), else the endpoint ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` names;
    connections and requests time out and are retried a few times (``purpose``: ``run``, or
    ``probe``: shorter). Other schemes go to pyarrow as they are. A bad URI is a ConfigError."""
    import pyarrow.fs

    if not is_remote(uri):
        return pyarrow.fs.LocalFileSystem(), uri
    scheme = uri.split("://", 1)[0].lower()
    if scheme != "s3":
        try:
            return pyarrow.fs.FileSystem.from_uri(uri)
        except pyarrow.ArrowInvalid as e:
            raise ConfigError(f"{uri}: {str(e).splitlines()[0]}", key="--storage",
                              hint="pyarrow opens s3://, gs://, hdfs://, file:// or a local path") from None
    parts = urlsplit(uri)
    opts = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k not in S3_QUERY:
            raise ConfigError(f"{uri}: unknown query parameter {k!r} (nearest: {nearest(k, S3_QUERY)}; "
                              f"known: {', '.join(S3_QUERY)})", key="--storage")
        opts[k] = v.lower() in ("1", "true", "yes") if S3_QUERY[k] is bool else v
    if "endpoint_override" not in opts:
        env = next((os.environ[v] for v in ENDPOINT_ENV if os.environ.get(v)), None)
        if env:
            opts["endpoint_override"] = env
    connect, request, attempts = TIMEOUTS[purpose]
    fs = pyarrow.fs.S3FileSystem(**opts, connect_timeout=connect, request_timeout=request,
                                 retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=attempts))
    return fs, (parts.netloc + parts.path).rstrip("/")


def storage_problem(uri: str, deadline_s: float = PROBE_DEADLINE_S) -> str | None:
    """Why the run's storage cannot take checkpoints, in one line naming ``uri``, or None: its
    scheme is one pyarrow opens, and a probe object can be written there, read back and deleted
    -- all within ``deadline_s`` (pyarrow's own timeouts and retries are short here)."""
    out: dict = {}

    def probe():
        try:
            fs, path = open_storage(uri, "probe")
            if fs.type_name == "local":          # a path or file://: the folder Tune would make (object stores need none)
                fs.create_dir(path, recursive=True)
            name = f"{path.rstrip('/')}/.raygap-probe-{uuid.uuid4().hex}"
            data = b"raygap storage probe"
            with fs.open_output_stream(name) as f:
                f.write(data)
            with fs.open_input_stream(name) as f:
                back = f.read()
            remove(name, path) if fs.type_name == "local" else fs.delete_file(name)
            if back != data:
                out["problem"] = "a probe object written there read back different bytes"
        except ConfigError as e:
            out["problem"] = e.problem
            out["exact"] = True
        except Exception as e:  # noqa: BLE001 -- said in one line
            out["problem"] = _why(e)

    t = threading.Thread(target=probe, name="raygap-storage-probe", daemon=True)
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        return f"{uri}: the storage did not answer within {deadline_s:g} s (writing a probe object)"
    if "problem" not in out:
        return None
    return out["problem"] if out.get("exact") else f"{uri}{_endpoint_from_env(uri)}: {out['problem']}"


def _endpoint_from_env(uri: str) -> str:
    """`` (endpoint E from AWS_ENDPOINT_URL_S3)`` when an s3:// URI's endpoint comes from the environment."""
    if not uri.lower().startswith("s3://") or "endpoint_override=" in split_query(uri)[1]:
        return ""
    var = next((v for v in ENDPOINT_ENV if os.environ.get(v)), None)
    return f" (endpoint {os.environ[var]} from {var})" if var else ""


def require_usable_storage(uri: str) -> None:
    """:func:`storage_problem` as a ConfigError (``--storage``)."""
    problem = storage_problem(uri)
    if problem:
        raise ConfigError(problem, key="--storage")


def _why(e: Exception) -> str:
    """A pyarrow storage error as a short reason: the AWS error's kind in words, then its text."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.split(" (Request ID:")[0].split("; Details:")[0]
    aws = text.partition("AWS Error ")[2]                    # "NO_SUCH_BUCKET during PutObject operation: ..."
    said = {"NO_SUCH_BUCKET": "the bucket does not exist", "NETWORK_CONNECTION": "the endpoint cannot be reached",
            "ACCESS_DENIED": "the credentials are refused", "INVALID_ACCESS_KEY_ID": "the credentials are refused",
            "SIGNATURE_DOES_NOT_MATCH": "the credentials are refused", "UNRECOGNIZED_CLIENT": "the credentials are refused",
            "MISSING_AUTHENTICATION_TOKEN": "no credentials were found"}
    if aws:
        code = aws.split(" ", 1)[0]
        words = said.get(code) or ("the credentials are refused" if "403" in aws or "Forbidden" in aws
                                   else "a probe object cannot be written, read and deleted there")
        return f"{words} ({aws})"
    return f"a probe object cannot be written, read and deleted there ({type(e).__name__}: {text})"


def keep_checkpoint(src: Path, uri: str) -> str:
    """Copy a checkpoint file into the folder ``uri`` (a path on the run's storage, or
    ``s3://...``), written under a temporary name and renamed, so a reader never finds half
    a file. Returns ``uri``."""
    import pyarrow.fs

    fs, path = open_storage(uri)
    fs.create_dir(path, recursive=True)
    tmp = f"{path}/{CHECKPOINT}.part"
    pyarrow.fs.copy_files(str(src), tmp, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    fs.move(tmp, f"{path}/{CHECKPOINT}")
    return uri


def checkpoint_uri(checkpoint, storage: str | None = None) -> str:
    """Where a Tune checkpoint lives, as one string: a local path, or ``s3://bucket/...`` with
    the query parameters of the run's ``storage`` (its endpoint...), so it can be reopened."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local") if fs is not None else "local"
    if kind == "local":
        return checkpoint.path
    return f"{'gs' if kind == 'gcs' else kind}://{checkpoint.path}" + split_query(storage or "")[1]


def _fs_path(uri: str):
    """(pyarrow file system, path in it, URI prefix, URI query) of a checkpoint URI or local path."""
    fs, path = open_storage(uri)
    return fs, path, (uri.split("://", 1)[0] + "://" if is_remote(uri) else ""), split_query(uri)[1]


def trial_checkpoints(uri: str) -> list[str]:
    """Every ``checkpoint_N`` folder in the Tune trial folder of ``uri``, newest first, ``uri``
    among them: the ones a driver killed between recording a checkpoint and Tune deleting the
    one before it (or before recording a newer one) left behind. ``[uri]`` when it is no Tune
    checkpoint folder or the storage cannot be listed."""
    import re

    import pyarrow.fs

    pattern = re.compile(r"checkpoint_(\d+)")
    try:
        fs, path, prefix, query = _fs_path(uri)
        parent, _, name = path.rstrip("/").rpartition("/")
        own = pattern.fullmatch(name)
        if not own:
            return [uri]
        infos = fs.get_file_info(pyarrow.fs.FileSelector(parent))
    except Exception:  # noqa: BLE001 -- storage unreachable: the recorded one (the trial says if it fails)
        return [uri]
    found = sorted((int(mm.group(1)), i.path) for i in infos
                   if i.type == pyarrow.fs.FileType.Directory and (mm := pattern.fullmatch(i.base_name)))
    out = [prefix + p + query for _, p in reversed(found)]
    if uri not in out:      # the recorded one is gone (or spelt otherwise): in its place by number
        at = sum(1 for n, _ in found if n > int(own.group(1)))
        out.insert(at, uri)
    return out


def resume_candidates(uri: str) -> list[str]:
    """The checkpoints a trial may resume from, newest first: any later checkpoint in the
    Tune trial folder of ``uri`` (written to storage by a driver killed before it could
    record it in the store), then ``uri`` itself, the one the store recorded."""
    found = trial_checkpoints(uri)
    return found[:found.index(uri) + 1]


def checkpoint_at(uri: str):
    """The Tune checkpoint at ``uri`` (see :func:`checkpoint_uri`), on whatever storage."""
    import pyarrow.fs
    from ray import tune

    fs, path = open_storage(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(uri)
    return tune.Checkpoint(path, filesystem=fs)


def delete_checkpoint(uri: str | None, storage: str) -> None:
    """Remove a checkpoint folder from the run's storage (a done trial needs it no more): only
    one strictly inside ``storage`` (on a local file system by :func:`raygap.removal.remove`:
    resolved, no link out; in an object store by its key). One outside it is kept, with a
    warning line (a store row from another run's storage, or one written by hand)."""
    if not uri:
        return
    try:
        fs, path = open_storage(uri)
        root_fs, root = open_storage(storage)
        if fs.type_name == "local" and root_fs.type_name == "local":
            remove(path, root, ignore_errors=True)
            return
        parts = path[len(root.rstrip("/")) + 1:].split("/") if path.startswith(root.rstrip("/") + "/") else []
        if fs.type_name != root_fs.type_name or not parts or any(p in ("", ".", "..") for p in parts):
            raise RefusedRemoval(uri, f"is not strictly inside the run's storage {storage}: raygap removes nothing there")
        fs.delete_dir(path)
    except RefusedRemoval as e:
        print(f"raygap: warning: checkpoint kept: {e}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 -- already gone, or storage unreachable: nothing to lose
        pass
