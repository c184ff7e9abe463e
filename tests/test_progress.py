"""The progress display: the grid line's counts and ETA (hand-computed), the plain form's
periodic grid line, verbosity, and the live form on a terminal."""
import io
import re

from raygap.progress import Progress, clock


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_clock_format():
    assert (clock(5), clock(65), clock(3723), clock(None)) == ("0:05", "1:05", "1:02:03", "?")


def test_grid_line_counts_and_eta_by_hand():
    t, lines = Clock(), []
    p = Progress(verbosity=1, every=60, now=t, emit=lines.append)
    p.begin({"a": 10, "b": 10, "c": 5}, reused=2)          # 25 epochs to train
    assert lines[-1] == "grid: 0/3 done, 0 running, 0 failed, 3 left (2 reused from the store); elapsed 0:00, ETA after the first epoch"
    p.trial_started("a", "A")
    p.trial_started("b", "B")
    t.t += 40
    for e in range(2):                      # a and b: 2 epochs each in 40 s -> 4 epochs / 40 s
        p.epoch("a", "A", e, "acc", 0.5, 20.0)
        p.epoch("b", "B", e, "acc", 0.6, 20.0)
    # left: a 8, b 8, c 5 = 21 epochs at 0.1 epoch/s = 210 s
    assert p.eta() == 210.0
    assert p.grid_line().endswith("; elapsed 0:40, ETA 3:30")
    assert "0/3 done, 2 running, 0 failed, 1 left" in p.grid_line()
    assert p.trial_line(p.running["a"]) == "  A: epoch 2/10  val acc 0.5000  20.0 s/epoch"
    p.epoch("a", "A", 1, "acc", 0.5, 20.0)   # a restarted worker replays epoch 1: not counted again
    assert p.trained == 4
    p.trial_done("a", "A (a): acc 0.9")
    p.trial_failed("b", "B (b): ValueError: x")
    assert lines[-2:] == ["[1/3] done A (a): acc 0.9", "[2/3] FAILED B (b): ValueError: x"]
    # a and b settled: only c's 5 epochs are left
    assert p.eta() == 50.0


def test_plain_form_repeats_the_grid_line_and_verbosity_levels():
    t, lines = Clock(), []
    p = Progress(verbosity=1, every=60, now=t, emit=lines.append)
    p.begin({"a": 3})
    p.trial_started("a", "A")
    t.t += 30
    p.epoch("a", "A", 0, "acc", 0.5, 30.0)
    assert not any(line.startswith("epoch") or ": epoch" in line for line in lines)   # epochs only with -v
    n = sum(line.startswith("grid: ") for line in lines)
    t.t += 31
    p.tick()                                   # 61 s since the last grid line
    assert sum(line.startswith("grid: ") for line in lines) == n + 1
    p.tick()                                   # not again at once
    assert sum(line.startswith("grid: ") for line in lines) == n + 1

    quiet, loud = [], []
    for v, sink in ((0, quiet), (2, loud)):
        q = Progress(verbosity=v, now=t, emit=sink.append)
        q.begin({"a": 3})
        q.note("starting a local Ray instance")
        q.epoch("a", "A", 0, "acc", 0.5, 1.0, "cpu")
        q.trial_done("a", "A (a): acc 1")
        q.close()
    assert quiet == []
    assert "A: epoch 1/3  val acc 0.5000  1.0 s/epoch  on cpu" in loud and "[1/1] done A (a): acc 1" in loud


def test_live_form_on_a_terminal_draws_the_running_trials():
    out = io.StringIO()
    p = Progress(verbosity=1, tty=True, out=out)
    p.begin({"a": 4, "b": 4})
    p.trial_started("a", "Full Model | avdigits | seed 0")
    p.epoch("a", "Full Model | avdigits | seed 0", 0, "acc", 0.75, 2.0)
    p._live.refresh()
    p.trial_done("a", "Full Model | avdigits | seed 0 (a): acc 0.8")
    p.close()
    text = out.getvalue()
    assert "Full Model | avdigits | seed 0: epoch 1/4  val acc 0.7500  2.0 s/epoch" in text
    assert "[1/2] done Full Model | avdigits | seed 0 (a): acc 0.8" in text
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text.rstrip().splitlines()[-1])     # cursor codes off
    assert last.startswith("grid: 1/2 done, 0 running, 0 failed, 1 left")


def test_a_run_that_ends_as_it_began_shows_the_grid_line_once():
    """``close(changed=False)`` (refused before any trial launched): the plain form does not
    repeat the line begin() showed; the live form, which goes away, still leaves it once."""
    t, lines = Clock(), []
    p = Progress(verbosity=1, every=60, now=t, emit=lines.append)
    p.begin({"a": 3})
    t.t += 5
    p.close(changed=False)
    assert lines == ["grid: 0/1 done, 0 running, 0 failed, 1 left; elapsed 0:00, ETA after the first epoch"]
    out = io.StringIO()
    live = Progress(verbosity=1, tty=True, out=out)
    live.begin({"a": 3})
    live.close(changed=False)
    assert re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue().rstrip().splitlines()[-1]).startswith(
        "grid: 0/1 done, 0 running, 0 failed, 1 left")
