"""Who runs a trial: a driver named ``host:pid:process start time``, and whether it still runs."""
from __future__ import annotations

import os
import socket


def this_process_owner() -> str:
    """``host:pid:start time`` of this process: identifies a driver even after pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"
    except Exception:  # noqa: BLE001 -- gone, or not inspectable
        return "?"


def owner_alive(owner: str | None) -> bool | None:
    """Whether the driver ``owner`` still runs: True/False on this machine, None elsewhere."""
    if not owner:
        return None
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return None
    try:
        return _start_time(int(pid)) == started
    except ValueError:
        return None
