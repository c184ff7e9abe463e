"""What this machine lets raygap use, read the way a scheduler sets it (no Ray here).

``usable_cpus`` counts the CPUs this process may run on: its affinity mask (SLURM's
``--cpus-per-task``, ``taskset``, cgroup cpusets) and a cgroup CPU quota (Docker
``--cpus``, Kubernetes limits), not ``os.cpu_count()``, which reports the whole machine
and oversubscribes a job that holds a few of its cores.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def ffmpeg_exe() -> str | None:
    """The ffmpeg to run: the one on PATH (the system's, which the user chose), else the static
    build the ``imageio-ffmpeg`` wheel ships (a raygap dependency, so ``raygap prepare`` and its
    tests work on a machine without a system ffmpeg or root), else None."""
    import shutil

    path = shutil.which("ffmpeg")
    if path:
        return path
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:                  # the wheel without a binary for this platform
        return None


# cuBLAS repeats its results only with a fixed workspace configuration, which it reads when CUDA
# starts in a process: ``:4096:8`` (or ``:16:8``, the other setting torch accepts as deterministic)
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")
_cublas_late: list[str] = []          # why this process's cuBLAS may not repeat (said once set too late)


def deterministic_cublas(cuda_started: bool) -> str | None:
    """Set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in this process's environment, unless it is set.
    Where cuBLAS may still not repeat in this process -- the variable holds another value, or
    CUDA had started (``cuda_started``) before it was set -- a RuntimeWarning says so (each time:
    every trial it concerns reports it), and the reason is returned; else None."""
    have = os.environ.get(CUBLAS_ENV)
    problem = None
    if have is None:
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC[0]
        if cuda_started:
            _cublas_late.append(f"CUDA started in this process (pid {os.getpid()}) before {CUBLAS_ENV} was set: "
                                f"its cuBLAS calls may not repeat (set {CUBLAS_ENV}={CUBLAS_DETERMINISTIC[0]} "
                                "before the process starts)")
    elif have not in CUBLAS_DETERMINISTIC:
        problem = (f"{CUBLAS_ENV}={have!r} in the environment is not one of cuBLAS's deterministic settings "
                   f"({', '.join(CUBLAS_DETERMINISTIC)}): this trial's cuBLAS calls may not repeat")
    problem = problem or (_cublas_late[0] if _cublas_late else None)
    if problem:
        import warnings

        with warnings.catch_warnings():           # not once per process: once per trial it concerns
            warnings.simplefilter("always")
            warnings.warn(problem, RuntimeWarning, stacklevel=3)
    return problem


# file systems several machines mount (and FUSE mounts): SQLite's WAL mode does not work on them
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph", "glusterfs",
              "fuse.glusterfs", "fuse.sshfs", "panfs", "wekafs", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse",
              "fuse.mount-s3", "9p", "virtiofs", "fuse.weka", "davfs"}


MOUNTS_ENV = "RAYGAP_TEST_MOUNTS"     # test-only: a mount table to read instead of /proc/mounts (faked NFS)


def mount_fs_type(path: str | Path, mounts: str | None = None) -> str | None:
    """The file-system type /proc/mounts gives for the mount holding ``path`` (``mounts``: another
    table in its format; ``$RAYGAP_TEST_MOUNTS`` names one for tests, to fake a network file
    system in a raygap subprocess)."""
    mounts = mounts or os.environ.get(MOUNTS_ENV) or "/proc/mounts"
    p = str(Path(path).resolve())
    best, kind = "", None
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    for ln in lines:
        parts = ln.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (p == point or p.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, parts[2]
    return kind
