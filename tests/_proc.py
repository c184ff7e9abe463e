"""Helpers for tests that drive a real ``raygap`` process: start it with a unique tag in its
environment (inherited by every process it starts, Ray's included), read its output as it
comes, send it signals, and find what it left behind. :func:`raygap` runs one to its end."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


class Raygap:
    """``python -m raygap ARGS`` in a subprocess, stdout and stderr merged (or, with
    ``split_stderr``, stderr apart in :attr:`errors`), read line by line. ``umask``: the child's
    umask (-1: this process's). ``prefix``: a command the child runs under (e.g. ``nsenter``
    into a mount namespace: :func:`mount_namespace`)."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path | None = None, umask: int = -1,
                 prefix: list[str] | tuple = (), split_stderr: bool = False):
        self.tag = uuid.uuid4().hex
        full_env = {**os.environ, "RAYGAP_TEST_TAG": self.tag, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.p = subprocess.Popen([*prefix, sys.executable, "-m", "raygap", *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT, text=True,
                                  env=full_env, cwd=cwd or ROOT, umask=umask)
        self.pid = self.p.pid
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True)
        self._reader.start()
        self._err_reader = None
        if split_stderr:
            self._err_reader = threading.Thread(target=self._read, args=(self.p.stderr, self.err_lines), daemon=True)
            self._err_reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._cv:
                lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def output(self) -> str:
        """stdout (with stderr, unless ``split_stderr``) so far."""
        with self._cv:
            return "".join(self.lines)

    @property
    def errors(self) -> str:
        """stderr so far, with ``split_stderr`` ("" without)."""
        with self._cv:
            return "".join(self.err_lines)

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
        if self._err_reader is not None:
            self._err_reader.join(timeout=30)
        return self.p.returncode, self.output

    def tree(self) -> list[psutil.Process]:
        """This raygap process and every process it started, alive now."""
        try:
            me = psutil.Process(self.pid)
            return [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_tree(self) -> None:
        for p in [*reversed(self.tree()), *tagged(self.tag)]:
            try:
                p.kill()
            except psutil.Error:
                pass


def raygap(*args, timeout: float = 300, **kw) -> tuple[int, str, str]:
    """``python -m raygap ARGS`` run to its end (killed, with everything it started, after
    ``timeout`` s): (exit code, stdout, stderr). Keywords as :class:`Raygap`'s."""
    run = Raygap(*args, split_stderr=True, **kw)
    code, out = run.finish(timeout)
    return code, out, run.errors


@contextlib.contextmanager
def mount_namespace(setup: str):
    """A private mount namespace, set up by the shell script ``setup`` (run as root, in it), held
    open for the ``with`` block; yields the ``prefix`` that runs a :class:`Raygap` inside it
    (``nsenter`` into it). Skips the test where ``unshare``/``nsenter`` or mount namespaces are
    missing; a failing ``setup`` fails it."""
    import pytest                  # (here: _proc is also imported by plain child processes)

    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("no unshare or nsenter")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr.strip()}")
    holder = subprocess.Popen(["unshare", "-m", "sh", "-c", f"set -e\n{{\n{setup}\n}} >&2\necho ready\nread _"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline().strip()
        if line != "ready":
            holder.kill()
            holder.wait()
            raise AssertionError(f"the namespace's setup failed ({line!r}): {holder.stderr.read()[-2000:]}")
        yield ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt", "--"]
    finally:
        if holder.poll() is None:
            holder.communicate("\n", timeout=30)


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

