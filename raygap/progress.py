"""What a running grid shows: a grid line (done / running / failed / left, elapsed, ETA) and
one line per running trial (label, epoch k/N, validation metric, seconds per epoch).

On a terminal the lines are live (rich's ``Live``: redrawn in place, events printed above
them). Elsewhere (CI, ``nohup``, a pipe) the same events are plain lines, and the grid line
is printed again every ``every`` seconds so a log still tells how far the grid is and when
it will end. Verbosity: ``-q`` shows failures and the end only; ``-v`` adds a line per
trial epoch.

The ETA is the epochs still to train (each unfinished trial's epochs minus those it has
done) over the grid's measured rate (epochs finished in this run per second of its wall
time): it accounts for how many trials run at once without knowing it.

No Ray here; the runner feeds the events.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO


def clock(seconds: float | None) -> str:
    """``1:02:03`` / ``4:05``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class _Running:
    label: str
    epochs: int
    done_epochs: int = 0          # epochs finished (the last reported epoch + 1)
    metric: str = ""
    value: float = float("nan")
    seconds: float = float("nan")


class Progress:
    """Progress of one ``raygap run`` (:meth:`begin` once the trials to train are known).
    ``emit``: where plain lines go (default: print to ``out``); ``tty``: live display
    (default: whether ``out`` is a terminal)."""

    def __init__(self, *, verbosity: int = 1, tty: bool | None = None, out: TextIO | None = None,
                 every: float = 60.0, now: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] | None = None):
        self.out = out or sys.stdout
        self.tty = (self.out.isatty() if tty is None else tty) and emit is None
        self.verbosity, self.every, self.now = verbosity, every, now
        self.emit = emit
        self.epochs: dict[str, int] = {}
        self.reused = 0
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.running: dict[str, _Running] = {}
        self.progress: dict[str, int] = {}       # key -> epochs finished so far (any run)
        self.trained = 0                          # epochs finished in this run
        self.t0 = now()
        self._last_line = self.t0
        self._live = None

    # ------------------------------------------------------------------ figures
    def left(self) -> int:
        return len(self.epochs) - len(self.done) - len(self.failed) - len(self.running)

    def eta(self) -> float | None:
        """Seconds until every trial has trained, or None before the first epoch."""
        elapsed = self.now() - self.t0
        if self.trained == 0 or elapsed <= 0:
            return None
        remaining = sum(max(0, n - self.progress.get(k, 0)) for k, n in self.epochs.items()
                        if k not in self.done and k not in self.failed)
        return remaining / (self.trained / elapsed)

    def grid_line(self) -> str:
        eta = self.eta()
        return (f"grid: {len(self.done)}/{len(self.epochs)} done, {len(self.running)} running, "
                f"{len(self.failed)} failed, {self.left()} left"
                + (f" ({self.reused} reused from the store)" if self.reused else "")
                + f"; elapsed {clock(self.now() - self.t0)}, ETA "
                + (clock(eta) if eta is not None else "after the first epoch"))

    def trial_line(self, r: _Running) -> str:
        val = "" if r.metric == "" else f"  val {r.metric} {r.value:.4f}"
        per = f"  {r.seconds:.1f} s/epoch" if r.seconds == r.seconds else ""
        return f"  {r.label}: epoch {r.done_epochs}/{r.epochs}{val}{per}"

    # ------------------------------------------------------------------ events
    def begin(self, epochs: dict[str, int], reused: int = 0) -> None:
        """The run starts: ``epochs``: key -> epochs of every trial it will train;
        ``reused``: trials taken from the store."""
        self.epochs, self.reused = dict(epochs), reused
        self.t0 = self._last_line = self.now()
        self.start()

    def start(self) -> None:
        if self.tty and self.verbosity > 0:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(file=self.out, force_terminal=True), refresh_per_second=2,
                              get_renderable=self._render, transient=True)
            self._live.start()
        elif self.verbosity > 0:
            self._print(self.grid_line())

    def trial_started(self, key: str, label: str) -> None:
        self.running.setdefault(key, _Running(label, self.epochs.get(key, 0), self.progress.get(key, 0)))
        self.tick()

    def epoch(self, key: str, label: str, epoch: int, metric: str, value: float, seconds: float,
              device: str = "") -> None:
        r = self.running.setdefault(key, _Running(label, self.epochs.get(key, 0)))
        before, now_done = self.progress.get(key, 0), epoch + 1
        if now_done > before:                  # a restarted worker replays epochs: not counted twice
            self.trained += now_done - before
        self.progress[key] = max(before, now_done)
        r.done_epochs = now_done
        r.metric, r.value, r.seconds = metric, value, seconds
        if self.verbosity > 1:
            self._print(self.trial_line(r).strip() + (f"  on {device}" if device else ""))
        self.tick()

    def resumed(self, key: str, epochs_done: int) -> None:
        """A trial resumed after ``epochs_done`` epochs of an earlier run (not counted in the rate)."""
        self.progress[key] = max(self.progress.get(key, 0), epochs_done)
        if key in self.running:
            self.running[key].done_epochs = self.progress[key]

    def trial_done(self, key: str, text: str) -> None:
        self.running.pop(key, None)
        self.done.add(key)
        self.progress[key] = self.epochs.get(key, 0)
        if self.verbosity > 0:
            self._print(f"[{len(self.done) + len(self.failed)}/{len(self.epochs)}] done {text}")
        self.tick()

    def trial_failed(self, key: str, text: str) -> None:
        self.running.pop(key, None)
        self.failed.add(key)
        self._print(f"[{len(self.done) + len(self.failed)}/{len(self.epochs)}] FAILED {text}")
        self.tick()

    def trial_dropped(self, key: str) -> None:
        """A trial this driver lost to another driver (its claim moved): no longer shown running."""
        self.running.pop(key, None)

    def note(self, text: str) -> None:
        """A line from the runner (start-up, resumes, waits)."""
        if self.verbosity > 0:
            self._print(text)

    def tick(self) -> None:
        """Called often (every Tune step): the plain form's periodic grid line."""
        if self._live is None and self.verbosity > 0 and self.now() - self._last_line >= self.every:
            self._print(self.grid_line())

    def close(self, changed: bool = True) -> None:
        """The display ends on the grid line. ``changed=False``: nothing happened since
        :meth:`begin` showed it, so plain lines do not show it again (a terminal's live display,
        which goes away, still leaves it)."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        if self.verbosity > 0 and (changed or live is not None):
            self._print(self.grid_line())

    def __getstate__(self):            # Tune pickles its callbacks: not the terminal, nor the display
        state = {k: v for k, v in self.__dict__.items() if k not in ("out", "_live", "emit", "now")}
        return {**state, "tty": False}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out, self._live, self.emit, self.now = sys.stdout, None, None, time.monotonic

    # ------------------------------------------------------------------ output
    def _print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            (self.emit or (lambda t: print(t, file=self.out, flush=True)))(text)
            if text.startswith("grid: "):
                self._last_line = self.now()

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        lines = [Text(self.grid_line(), style="bold", no_wrap=True, overflow="ellipsis")]
        lines += [Text(self.trial_line(r), no_wrap=True, overflow="ellipsis")
                  for r in sorted(self.running.values(), key=lambda r: r.label)]
        return Group(*lines)
