"""A page opened in real headless Chromium, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ending in NUL on file descriptors 3 and 4), with
the standard library only -- no Playwright, no websocket client."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]


def chromium() -> str | None:
    """The Chromium binary (Debian's ``/usr/bin/chromium``, or ``$CHROMIUM``), or None."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _high(fd: int) -> int:
    """``fd`` moved to a number above 9, so that putting the pipes on 3 and 4 clobbers none."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Page:
    """``with Page(url, width) as page``: ``page.eval(js)`` (the value, by JSON), ``page.requests``
    (every URL the page asked for), ``page.screenshot(path)``."""

    def __init__(self, url: str, width: int = 1280, height: int = 800, timeout: float = 60):
        self.url, self.width, self.height, self.timeout = url, width, height, timeout
        self.requests: list[str] = []
        self._id = 0
        self._buf = b""

    def __enter__(self) -> Page:
        self._profile = tempfile.mkdtemp(prefix="raygap-chromium-")
        to_child, self._out = map(_high, os.pipe())      # we write commands, Chromium reads fd 3
        self._in, from_child = map(_high, os.pipe())     # Chromium writes fd 4, we read
        self.proc = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(to_child, 3), os.dup2(from_child, 4)))
        os.close(to_child)
        os.close(from_child)
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for method in ("Page.enable", "Network.enable", "Runtime.enable"):
            self._call(method, session=True)
        self._call("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=self.height,
                   deviceScaleFactor=1, mobile=False)
        self._call("Page.navigate", session=True, url=self.url)
        self._wait("Page.loadEventFired")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._out)
            os.close(self._in)
            shutil.rmtree(self._profile, ignore_errors=True)

    def eval(self, expression: str):
        r = self._call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                       awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"the page's script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path, height: int | None = None) -> None:
        """A PNG of the page's top ``height`` pixels (default: the whole page)."""
        import base64

        full = self._call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": self.width, "height": min(height or full["height"], full["height"]),
                "scale": 1}
        r = self._call("Page.captureScreenshot", session=True, format="png", clip=clip, captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(r["data"]))

    # -- the protocol
    def _send(self, method: str, session: bool = False, **params) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        return self._id

    def _messages(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if msg.get("method") == "Network.requestWillBeSent":
                    self.requests.append(msg["params"]["request"]["url"])
                yield msg
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise AssertionError(f"chromium ended (exit {self.proc.poll()})")
            self._buf += chunk
        raise AssertionError(f"chromium did not answer within {self.timeout} s")

    def _call(self, method: str, session: bool = False, **params) -> dict:
        mid = self._send(method, session, **params)
        for msg in self._messages():
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise AssertionError("unreachable")

    def _wait(self, event: str) -> dict:
        for msg in self._messages():
            if msg.get("method") == event:
                return msg.get("params", {})
        raise AssertionError("unreachable")
