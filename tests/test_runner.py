"""The grid runner on a real local Ray instance (num_cpus=2, no dashboard, loopback only)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402

from raygap.cli import main as cli_main  # noqa: E402
from raygap.export import export_grid  # noqa: E402
from raygap.grid import load_grid  # noqa: E402
from raygap.runner import check_resources, run_grid  # noqa: E402
from raygap.store import Store  # noqa: E402

BASE = {"data": {"name": "avdigits", "visual_corrupt": 0.3},
        "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.1},
        "train": {"epochs": 2, "batch_size": 256, "device": "cpu", "threads": 1, "checkpoint_every": 1}}


def write_grid(path: Path, name: str, rows: dict, seeds=(0, 1), base=None, **extra) -> Path:
    doc = {"name": name, "base": base or BASE, "rows": rows, "seeds": list(seeds),
           "metrics": ["acc", "macro_f1"], "resources": {"cpu": 1, "gpu": 0}, **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(path, results: Path, **kw):
    grid = load_grid(path)
    store = Store(results / "store.sqlite")
    return grid, store, run_grid(grid, store, log=lambda s: None, **kw)


def test_grid_runs_exports_reuses_and_runs_only_new_cells(local_ray, tmp_path):
    rows = {"Concat": {"method": {"name": "concat"}}, "Control": {"method": {"name": "warmup_objective"}}}
    g = write_grid(tmp_path / "tiny.yaml", "tiny", rows)
    grid, store, s = run(g, tmp_path, tracker="tensorboard")
    assert (s.total, s.reused, s.done, len(s.failed)) == (4, 0, 4, 0) and s.exit_code == 0
    # --tracker tensorboard: Tune's TensorBoard logger, one event file per trial, in folders named
    # like the trial (label, column, seed, key prefix); Tune's own CSV logger is off
    events = sorted((tmp_path / "ray").glob("tiny-*/*/events.out.tfevents.*"))
    names = sorted(p.parent.name for p in events)
    assert len(events) == 4 and names[0].startswith("Concat-seed0-") and not list((tmp_path / "ray").rglob("progress.csv"))
    from tensorboardX.proto import event_pb2   # the event file holds the epochs' scalars
    tags = set()
    import struct
    data = events[0].read_bytes()
    while data:
        n = struct.unpack("<Q", data[:8])[0]
        ev = event_pb2.Event.FromString(data[12:12 + n])
        tags |= {v.tag for v in ev.summary.value}
        data = data[12 + n + 4:]
    assert any(t.endswith("val_acc") for t in tags), sorted(tags)[:20]
    paths = export_grid(grid, store, tmp_path / "tiny")
    table = Path(paths["table.md"] if "table.md" in paths else tmp_path / "tiny" / "table.md").read_text()
    assert "Concat" in table and "Control" in table and "n=2" in table.replace(" ", "")
    for k in {t.key for t in grid.trials}:
        rec = store.get(k)
        hist = rec["history"]
        assert rec["status"] == "done" and [h["epoch"] for h in hist] == [0, 1]
        # the stored result is the test accuracy of the epoch validation picked (the first of ties)
        best = max(range(2), key=lambda e: (hist[e]["val_acc"], -e))
        assert rec["metrics"]["acc"] == hist[best]["test_acc"] and rec["metrics"]["best_epoch"] == best
        assert rec["metrics"]["acc"] > 0.2                     # 10 classes: it learned in two epochs
    # a second run launches nothing
    _, _, s2 = run(g, tmp_path)
    assert (s2.launched, s2.reused) == (0, 4)
    # an edited grid (one more seed) runs only the new cells
    write_grid(g, "tiny", rows, seeds=(0, 1, 2))
    _, _, s3 = run(g, tmp_path)
    assert (s3.total, s3.reused, s3.launched, s3.done) == (6, 4, 2, 2)
    # another grid sharing the Concat cells runs nothing for them
    other = write_grid(tmp_path / "other.yaml", "other", {"Baseline": {"method": {"name": "concat"}}}, seeds=(0, 2))
    _, _, s4 = run(other, tmp_path)
    assert (s4.total, s4.reused, s4.launched) == (2, 2, 0)


def test_killed_worker_resumes_and_a_diverging_trial_fails_alone(local_ray, tmp_path):
    base = {**BASE, "train": {**BASE["train"], "epochs": 6}}
    g = write_grid(tmp_path / "kill.yaml", "kill", {"Concat": {"method": {"name": "concat"}},
                                                    "Broken": {"data": {"nan_train": 1}}}, seeds=(0,), base=base)
    grid = load_grid(g)
    key = next(t.key for t in grid.trials if t.label == "Concat")
    broken = next(t.key for t in grid.trials if t.label == "Broken")
    store = Store(tmp_path / "store.sqlite")
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("s", run_grid(grid, store, log=lambda s: None, max_failures=2)))
    th.start()
    reader = Store(tmp_path / "store.sqlite")
    pid, deadline = None, time.time() + 240
    while time.time() < deadline:
        rec = reader.get(key)
        hist = (rec or {}).get("history") or []
        if rec and rec["status"] == "running" and len(hist) >= 3:
            pid = hist[-1]["worker_pid"]
            break
        time.sleep(0.2)
    assert pid, "the trial never reported three epochs"
    os.kill(pid, signal.SIGKILL)
    th.join(timeout=300)
    s = out["s"]
    rec = store.get(key)
    assert s.done == 1 and list(s.failed) == [broken] and s.exit_code == 1 and rec["status"] == "done"
    assert [h["epoch"] for h in rec["history"]] == list(range(6))     # every epoch exactly once
    # it resumed, not restarted (Tune may not have stored the very latest epoch's checkpoint yet)
    assert rec["info"]["resumed_from_epoch"] >= 1
    # the diverging trial failed alone, once (a deterministic failure is not retried), with one line
    bad = store.get(broken)
    assert bad["status"] == "failed" and bad["attempts"] == 1
    assert bad["error"].startswith("TrialDiverged") and "not finite" in bad["error"]


def test_shared_warmups_train_once_and_change_no_number(local_ray, tmp_path):
    """Three gap_adaptive variants with one warm-up: the first trains it and keeps its end, the
    other two start from it; every stored number equals a run where each trains its own."""
    base = {**BASE, "train": {**BASE["train"], "epochs": 3}, "method": {"name": "gap_adaptive"}}
    w1 = {"warmup_epochs": 1}
    rows = {"Full": {"method": w1}, "a0": {"method": {**w1, "alpha": 0.0}},
            "Purify": {"method": {**w1, "purify_tau": 0.4}}}
    g = write_grid(tmp_path / "wu.yaml", "wu", rows, seeds=(0,), base=base)
    lines = []
    grid = load_grid(g)
    shared_store = Store(tmp_path / "shared" / "store.sqlite")
    s = run_grid(grid, shared_store, log=lines.append)
    assert (s.done, len(s.failed)) == (3, 0)
    # the two that started from the shared warm-up, each trained alone (their keys are the grid's)
    del rows["Full"]
    alone_grid = load_grid(write_grid(tmp_path / "wu2.yaml", "wu2", rows, seeds=(0,), base=base))
    alone_store = Store(tmp_path / "alone" / "store.sqlite")
    assert run_grid(alone_grid, alone_store, log=lambda x: None, share_warmups=False).done == 2
    keys = {sp.label: sp.key for sp in grid.trials}
    assert {sp.key for sp in alone_grid.trials} == {keys["a0"], keys["Purify"]}
    shared, alone = shared_store.records(keys.values()), alone_store.records(keys.values())
    timing = ("train_seconds", "epoch_seconds", "worker_pid", "worker_node")
    for label in ("a0", "Purify"):
        k = keys[label]
        assert shared[k]["metrics"] == alone[k]["metrics"], label
        assert ([{f: v for f, v in h.items() if f not in timing} for h in shared[k]["history"]]
                == [{f: v for f, v in h.items() if f not in timing} for h in alone[k]["history"]]), label
        assert shared[k]["info"]["warmup_from"] == keys["Full"] and "warmup_from" not in alone[k]["info"]
        assert shared[k]["info"]["resumed_from_epoch"] == 0               # trained epochs 1 and 2 only
    assert shared[keys["a0"]]["metrics"] != shared[keys["Purify"]]["metrics"]
    assert "warmup_from" not in shared[keys["Full"]]["info"]
    said = "\n".join(lines)
    assert "1 trial(s) train a warm-up for 2 other(s)" in said
    assert "2 trial(s) start from a warm-up already trained (2 epochs not trained again)" in said
    # every member done: the kept warm-up is forgotten and its checkpoint deleted
    assert shared_store.warmups([grid.trials[0].config.warmup()[0]]) == {}
    assert not [p for p in (tmp_path / "shared" / "ray" / "warmups").rglob("*") if p.is_file()]


def test_resource_check_says_why_in_one_line(local_ray, tmp_path):
    nodes = ray.nodes()
    assert check_resources([{"cpu": 1, "gpu": 0}], nodes) is None
    msg = check_resources([{"cpu": 1, "gpu": 0.5}], nodes)
    assert "GPU" in msg and "PENDING" in msg and "\n" not in msg
    g = write_grid(tmp_path / "gpu.yaml", "gpu", {"Concat": {"method": {"name": "concat"}}}, seeds=(0,),
                   base={**BASE, "train": {**BASE["train"], "device": "auto"}})
    doc = yaml.safe_load(g.read_text())
    doc["resources"] = {"cpu": 1, "gpu": 1}
    g.write_text(yaml.safe_dump(doc))
    assert cli_main(["run", str(g), "--results", str(tmp_path)]) == 2


# (a driver interrupted mid-grid, then the same command: tests/test_interrupts.py, through a real subprocess)


def test_progress_lines_show_mae_for_a_regression_target():
    from raygap.runner import _shown_metric
    assert _shown_metric({"val_acc": 0.9, "val_loss": 0.3}, "val_") == "acc"
    assert _shown_metric({"val_mae": 0.8, "val_corr": 0.5}, "val_") == "mae"
    assert _shown_metric({"mae": 0.8, "acc2": 0.7}) == "mae"
