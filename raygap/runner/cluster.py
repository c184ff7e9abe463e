"""Starting or joining Ray, and the checks before a batch launches (the driver side).

* Embedded default: a local Ray instance that raygap starts and stops, no dashboard, bound to
  127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported: the CLI sets
  it). ``address`` (or ``RAY_ADDRESS``) joins an existing cluster instead.
* Every worker gets ``CUBLAS_WORKSPACE_CONFIG`` through Ray's ``runtime_env`` when a trial is
  deterministic (:func:`worker_runtime_env`).
* Preflight: a trial whose CPUs and GPUs no node (nor a node type an autoscaler may add) can
  hold would stay PENDING forever (:func:`check_resources`); nodes on several machines need
  storage they all reach (:func:`check_storage`). Either is one line, exit 2.
* Before Ray starts or is joined: ``--address`` is HOST:PORT (or ``ray://HOST:PORT``) and
  something answers there (:func:`address_problem`), one line within seconds instead of
  Ray's traceback or its minutes of retries.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import interrupts
from ..errors import ConfigError
from ..plugins import worker_env
from ..removal import remove
from ..system import NETWORK_FS, mount_fs_type
from .storage import is_remote

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def worker_runtime_env(deterministic: bool) -> dict | None:
    """Ray's ``runtime_env`` for the run's worker processes: the plug-ins the grid files named
    (:func:`raygap.plugins.worker_env`: each file shipped with ``py_modules``, the modules every
    worker imports in ``RAYGAP_PLUGINS``), and ``CUBLAS_WORKSPACE_CONFIG`` when a trial is
    deterministic, so it is set before CUDA starts in every worker, on any node (a joined
    cluster's workers do not inherit this driver's environment) -- unless the submitted job's own
    runtime_env sets it (Ray refuses a variable set twice). None when there is nothing to set."""
    from ..system import CUBLAS_DETERMINISTIC, CUBLAS_ENV

    env = worker_env()
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        job = {}
    if deterministic and CUBLAS_ENV not in ((job.get("runtime_env") or {}).get("env_vars") or {}):
        env["env_vars"] = {**env.get("env_vars", {}), CUBLAS_ENV: os.environ.get(CUBLAS_ENV, CUBLAS_DETERMINISTIC[0])}
    return env or None


AUTH_MODE, AUTH_TOKEN_PATH, AUTH_TOKEN = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"


@contextmanager
def private_token(log) -> Iterator[str | None]:
    """The embedded Ray instance's authentication: token mode with a fresh token of this run in
    a file only this user can read (0600, in a new 0700 folder), set in the environment for every
    process of the run and removed at the end; yields its path. Ray's own default would be
    ``~/.ray/auth_token``, written 0644 and kept, so another local user could join the instance
    and run code as this one. Ray reads the mode when it is imported: call this before. An
    environment that turns authentication off (``RAY_AUTH_MODE=disabled``) keeps it off, with
    one warning line; yields None."""
    mode = os.environ.get(AUTH_MODE)
    if mode is not None and mode.lower() == "disabled":
        log(f"raygap: warning: {AUTH_MODE}=disabled in the environment: the local Ray instance runs without "
            "token authentication, so any user of this machine can connect to it and run code as you "
            f"(unset {AUTH_MODE} for a token of this run only)")
        yield None
        return
    folder = tempfile.mkdtemp(prefix="raygap-auth-")              # 0700
    path = os.path.join(folder, "token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
    finally:
        os.close(fd)
    saved = {k: os.environ.get(k) for k in (AUTH_MODE, AUTH_TOKEN_PATH, AUTH_TOKEN)}
    os.environ[AUTH_MODE], os.environ[AUTH_TOKEN_PATH] = "token", path
    os.environ.pop(AUTH_TOKEN, None)                                # (it would win over the file)
    try:
        yield path
    finally:
        remove(folder, tempfile.gettempdir(), ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_ray(address: str | None, num_cpus: int | None, log, deterministic: bool = True) -> bool:
    """Connect to ``address`` or start the embedded local instance. Returns True if we started it.
    ``deterministic``: a trial of the run is (:func:`worker_runtime_env`)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's C++ crash handler, when installed in this driver, puts SIGTERM back to its default
    # action inside ray.shutdown(): a SIGTERM during teardown would then kill raygap before
    # its tables are written. Python's faulthandler still reports a crash.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if address:
        log(f"joining the Ray cluster at {address}")
        ray.init(address=address, log_to_driver=False, runtime_env=worker_runtime_env(deterministic))
        return False
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        # Ray read the variable when it was imported, before raygap could set it
        raise ConfigError(f"Ray was imported before {LOOPBACK_ENV}=0 was set, so an embedded instance would listen "
                          "on every interface; refusing to start it", key="--address",
                          hint=f"set {LOOPBACK_ENV}=0 before importing ray, or join a cluster with --address")
    from ..system import usable_cpus

    cpus = num_cpus or usable_cpus()    # affinity mask and cgroup quota, not the machine's CPUs
    log(f"starting a local Ray instance ({cpus} CPUs, 127.0.0.1 only)")
    interrupts.pause_point("startup")
    ray.init(address="local", num_cpus=cpus, include_dashboard=False,
             log_to_driver=False, configure_logging=False, runtime_env=worker_runtime_env(deterministic))
    return True


ADDRESS_TIMEOUT_S = 5.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])   # + an empty SETTINGS


def address_problem(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> str | None:
    """Why ``address`` (``--address`` or ``RAY_ADDRESS``) names no Ray cluster that could be
    joined, in one line naming it, or None: HOST:PORT or ``ray://HOST:PORT``, and a TCP
    connection to it accepted and answered as an HTTP/2 (gRPC) server answers, within
    ``timeout_s`` (name lookup included). ``auto`` and
    ``local`` are Ray's to resolve."""
    if address in ("auto", "local"):
        return None
    rest = address
    if "://" in address:
        scheme, _, rest = address.partition("://")
        if scheme != "ray":
            return f"{address}: unknown scheme {scheme + '://'!r} (HOST:PORT of the head's GCS, or ray://HOST:PORT)"
    host, sep, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{address}: not HOST:PORT (e.g. 10.0.0.5:6379, the head's GCS port)"
    out: list[str] = []

    def connect():
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s) as c:
                # the GCS (and Ray Client's server) speak gRPC: HTTP/2, whose server answers a
                # client's preface with a SETTINGS frame (type 4, the frame header's 4th byte)
                c.sendall(HTTP2_PREFACE)
                head = c.recv(9)
            out.append("" if len(head) >= 4 and head[3] == 4 else
                       f"{address}: something listens there, but it does not answer as a Ray head (gRPC) does")
        except ConnectionRefusedError:
            out.append(f"{address}: connection refused (no Ray head listens on port {port} of {host})")
        except socket.gaierror as e:
            out.append(f"{address}: the host {host!r} is not found ({e.strerror or e})")
        except TimeoutError:
            out.append(f"{address}: no answer within {timeout_s:g} s (host down, or a firewall drops the port)")
        except OSError as e:
            out.append(f"{address}: cannot connect ({e.strerror or e})")

    t = threading.Thread(target=connect, name="raygap-address-probe", daemon=True)
    t.start()
    t.join(timeout_s * 2)         # (a name lookup has no timeout of its own)
    if not out:
        return f"{address}: no answer within {timeout_s * 2:g} s (the host name did not resolve in time)"
    return out[0] or None


def require_address(address: str | None) -> None:
    """:func:`address_problem` as a ConfigError (``--address``)."""
    problem = address_problem(address) if address else None
    if problem:
        raise ConfigError(problem, key="--address")


AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"   # where `ray up` leaves the autoscaler's config on the head


def addable_node_types(path: str | None = None) -> list[tuple[str, float, float]]:
    """(name, CPUs, GPUs) of the node types an autoscaler may add (``max_workers`` > 0),
    from the cluster launcher's config on the head (``RAYGAP_AUTOSCALING_CONFIG`` or
    ``~/ray_bootstrap_config.yaml``). A type whose resources the config leaves to the
    launcher (filled in from the instance type) counts as able to hold any request."""
    import yaml

    p = Path(os.path.expanduser(path or os.environ.get("RAYGAP_AUTOSCALING_CONFIG") or AUTOSCALING_CONFIG))
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    out = []
    for name, t in (doc.get("available_node_types") or {}).items():
        if not isinstance(t, dict) or int(t.get("max_workers", 0) or 0) <= 0:
            continue
        res = t.get("resources") or {}
        if "CPU" in res or "GPU" in res:
            out.append((str(name), float(res.get("CPU", 0)), float(res.get("GPU", 0))))
        else:
            out.append((str(name), math.inf, math.inf))
    return out


def check_resources(requests: list[dict], nodes: list[dict],
                    addable: list[tuple[str, float, float]] | None = None) -> str | None:
    """A line saying why some trial's request can never be placed, or None.

    A trial needs its CPUs and GPUs on one node; Ray would leave it PENDING forever.
    ``nodes`` are ``ray.nodes()`` entries (alive ones are used); ``addable`` are node types
    an autoscaler can still add (:func:`addable_node_types`), which count too.
    """
    caps = [(n.get("Resources", {}).get("CPU", 0.0), n.get("Resources", {}).get("GPU", 0.0))
            for n in nodes if n.get("Alive", True)]
    caps += [(c, g) for _, c, g in addable or []]
    for req in requests:
        cpu, gpu = float(req.get("cpu", 1)), float(req.get("gpu", 0))
        if not any(c >= cpu and g >= gpu for c, g in caps):
            have = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in caps) or "no nodes"
            what = f"{cpu:g} CPU" + (f" + {gpu:g} GPU" if gpu else "")
            return (f"a trial asks for {what} on one node, but no node of the cluster has that, and no node "
                    f"type an autoscaler may add (nodes: {have}); such trials would stay PENDING forever")
    return None


def node_hosts(nodes: list[dict]) -> set[str]:
    """The distinct machines of the live nodes (their node-manager addresses)."""
    return {n.get("NodeManagerAddress") or n.get("NodeManagerHostname") or "?" for n in nodes if n.get("Alive", True)}


def check_storage(storage_path: str, nodes: list[dict], mounts: str = "/proc/mounts") -> str | None:
    """A line saying why trials on other machines could not write their checkpoints to
    ``storage_path``, or None: a URI (s3://, gs://...) or a shared file system is needed
    as soon as the live nodes are on more than one machine."""
    hosts = node_hosts(nodes)
    if len(hosts) <= 1 or is_remote(storage_path):
        return None
    kind = mount_fs_type(storage_path, mounts)
    if kind in NETWORK_FS:
        return None
    return (f"the cluster's nodes are on {len(hosts)} machines, but the Tune storage {storage_path} is on "
            f"a local {kind or 'unknown'} file system: trials on the other machines could not write their "
            "checkpoints there")



def require_storage(storage_path: str, nodes: list[dict]) -> None:
    """:func:`check_storage`'s problem as a ConfigError (``--storage``), with what to pass instead."""
    problem = check_storage(storage_path, nodes)
    if problem:
        raise ConfigError(problem, key="--storage",
                          hint="pass --storage s3://... or gs://..., or a path on a file system "
                               "every node mounts (NFS, Lustre...)")


def require_resources(requests: list[dict], nodes: list[dict], grid_file) -> None:
    """:func:`check_resources`' problem (with the node types an autoscaler may add) as a
    ConfigError on the grid file's ``resources``."""
    problem = check_resources(requests, nodes, addable_node_types())
    if problem:
        raise ConfigError(problem, file=str(grid_file), key="resources")
