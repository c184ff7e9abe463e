"""Who runs a trial: a driver named ``host:pid:start:pidns``, and whether it still runs.

``start`` is the process's start as the OS reports it: on Linux field 22 of ``/proc/PID/stat``
(clock ticks after boot; a wall-clock change does not move it), elsewhere psutil's
``create_time``. ``pidns`` is the inode of the process's PID namespace
(``/proc/self/ns/pid``): a pid means something only inside its namespace, so a driver of
another namespace (another container with the same hostname) is judged like a driver of
another machine, by its heartbeat (:mod:`raygap.store.claims`), never by a pid lookup here.
"""
from __future__ import annotations

import os
import socket

_MINE: dict[int, str] = {}             # pid -> this process's owner string (a fork gets its own)


def this_process_owner() -> str:
    """``host:pid:start:pidns`` of this process: identifies a driver even after pid reuse."""
    pid = os.getpid()
    if pid not in _MINE:
        _MINE[pid] = f"{socket.gethostname()}:{pid}:{start_time(pid) or '?'}:{pid_namespace()}"
    return _MINE[pid]


def owner_of(pid: int) -> str | None:
    """The owner string process ``pid`` of this machine and namespace would have (None: gone)."""
    start = start_time(pid)
    return None if start is None else f"{socket.gethostname()}:{pid}:{start}:{pid_namespace()}"


def pid_namespace() -> str:
    """The inode of this process's PID namespace (``pid:[4026531836]`` -> ``4026531836``), or
    ``-`` where the OS does not say (not Linux)."""
    try:
        link = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"
    return "".join(c for c in link if c.isdigit()) or "-"


def start_time(pid: int) -> str | None:
    """When process ``pid`` started, as the OS reports it: None when there is no such process,
    ``?`` when it cannot be read (another user's, under ``hidepid``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else _psutil_start(pid)
    except ProcessLookupError:
        return None
    except OSError:
        return "?"
    try:                       # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        return "t" + data[data.rindex(b")") + 2:].split()[19].decode()   # field 22: starttime (ticks)
    except (ValueError, IndexError):
        return "?"


def _psutil_start(pid: int) -> str | None:
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"
    except Exception as e:  # noqa: BLE001 -- gone, or not inspectable
        return None if type(e).__name__ == "NoSuchProcess" else "?"


def owner_alive(owner: str | None) -> bool | None:
    """Whether the driver ``owner`` still runs: True/False for a driver of this machine and PID
    namespace, None for any other (another machine, another container, an owner string of an
    older raygap): there, only its heartbeat tells."""
    if not owner:
        return None
    parts = owner.rsplit(":", 3)
    if len(parts) != 4:
        return None
    host, pid, started, ns = parts
    if host != socket.gethostname() or ns != pid_namespace():
        return None
    try:
        now = start_time(int(pid))
    except ValueError:
        return None
    if now is None:
        return False
    if now == "?" or started == "?":
        return None
    return now == started
