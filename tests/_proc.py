"""Helpers for tests that drive a real ``raygap`` process: start it with a unique tag in its
environment (inherited by every process it starts, Ray's included), read its output as it
comes, send it signals, and find what it left behind."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


class Raygap:
    """``python -m raygap ARGS`` in a subprocess, stdout and stderr merged, read line by line."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path | None = None):
        self.tag = uuid.uuid4().hex
        full_env = {**os.environ, "RAYGAP_TEST_TAG": self.tag, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.p = subprocess.Popen([sys.executable, "-m", "raygap", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=full_env, cwd=cwd or ROOT)
        self.pid = self.p.pid
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def output(self) -> str:
        with self._cv:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """Block until a line matches ``pattern`` (a regex); return it."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        seen = 0
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    if rx.search(line):
                        return line
                seen = len(self.lines)
                if self.p.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"raygap exited ({self.p.returncode}) before {pattern!r}:\n{self.output[-3000:]}")
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output[-3000:]}")
                self._cv.wait(min(left, 1.0))

    def send(self, sig: int) -> None:
        self.p.send_signal(sig)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise AssertionError(f"raygap did not exit within {timeout} s:\n{self.output[-3000:]}") from None
        self._reader.join(timeout=30)
        return self.p.returncode, self.output

    def tree(self) -> list[psutil.Process]:
        """This raygap process and every process it started, alive now."""
        try:
            me = psutil.Process(self.pid)
            return [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_tree(self) -> None:
        for p in reversed(self.tree()) + tagged(self.tag):
            try:
                p.kill()
            except psutil.Error:
                pass


def tagged(tag: str) -> list[psutil.Process]:
    """Every live process whose environment carries ``RAYGAP_TEST_TAG=tag``."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("RAYGAP_TEST_TAG") == tag and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def leftovers(tag: str, grace: float = 10.0) -> list[str]:
    """The tagged processes still alive after ``grace`` seconds (name and command line)."""
    deadline = time.time() + grace
    while True:
        left = tagged(tag)
        if not left or time.time() > deadline:
            break
        time.sleep(0.5)
    desc = []
    for p in left:
        try:
            desc.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            pass
    return desc


def listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``procs``."""
    out = []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except psutil.Error:
            continue
        out += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out

