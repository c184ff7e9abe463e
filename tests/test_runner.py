"""The grid runner on a real local Ray instance (num_cpus=2, no dashboard, loopback only)."""
from __future__ import annotations

import os
import signal
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402

from raygap.cli import main as cli_main  # noqa: E402
from raygap.export import export_grid  # noqa: E402
from raygap.grid import load_grid  # noqa: E402
from raygap.runner import check_resources, run_grid  # noqa: E402
from raygap.store import Store  # noqa: E402
from _tiny import avdigits

BASE = {"data": avdigits(visual_corrupt=0.3),
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


# ----------------------------------------------------------------------------- one tiny grid
ROWS = {"Concat": {"method": {"name": "concat"}}, "Control": {"method": {"name": "warmup_objective"}}}


@pytest.fixture(scope="module")
def tiny(local_ray, tmp_path_factory):
    """One real run of a 2 x 2 grid (two rows, seeds 0 and 1) with ``--tracker tensorboard``; the
    tests below read what it left, and those that run the grid again only add to its store."""
    results = tmp_path_factory.mktemp("tiny")
    path = write_grid(results / "tiny.yaml", "tiny", ROWS)
    grid, store, summary = run(path, results, tracker="tensorboard")
    return SimpleNamespace(path=path, results=results, grid=grid, store=store, summary=summary,
                           experiments=sorted((results / "ray").glob("tiny-*")))


def test_a_new_grid_runs_every_trial_once(tiny):
    s = tiny.summary
    assert (s.total, s.reused, s.launched, s.done, s.failed, s.unfinished) == (4, 0, 4, 4, {}, 0)
    assert s.exit_code == 0


def test_each_trial_stores_the_test_accuracy_of_the_epoch_validation_picked(tiny):
    keys = [t.key for t in tiny.grid.trials]
    assert len(set(keys)) == 4
    for k in keys:
        rec = tiny.store.get(k)
        hist = rec["history"]
        assert rec["status"] == "done" and [h["epoch"] for h in hist] == [0, 1]
        best = max(range(2), key=lambda e: (hist[e]["val_acc"], -e))          # the first of ties
        assert rec["metrics"]["acc"] == hist[best]["test_acc"] and rec["metrics"]["best_epoch"] == best
        assert rec["metrics"]["acc"] > 0.2                     # 10 classes: it learned in two epochs


def test_tensorboard_writes_one_event_file_per_trial_in_a_folder_named_like_it(tiny):
    # Tune's TensorBoard logger, in folders named label-seed-key prefix; Tune's own CSV logger is off
    (experiment,) = tiny.experiments
    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == sorted(
        f"{t.label}-seed{t.seed}-{t.key[:8]}" for t in tiny.grid.trials)
    for t in tiny.grid.trials:
        assert len(list((experiment / f"{t.label}-seed{t.seed}-{t.key[:8]}").glob("events.out.tfevents.*"))) == 1
    assert list((tiny.results / "ray").rglob("progress.csv")) == []


def scalars(event_file: Path, tag: str) -> dict[int, float]:
    """{step: value} of one scalar tag in a TensorBoard event file (TFRecord framing: length,
    its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2

    out, data = {}, event_file.read_bytes()
    while data:
        n = struct.unpack("<Q", data[:8])[0]
        ev = event_pb2.Event.FromString(data[12:12 + n])
        out.update({ev.step: v.simple_value for v in ev.summary.value if v.tag == tag})
        data = data[12 + n + 4:]
    return out


def test_the_event_files_hold_every_epochs_validation_accuracy(tiny):
    (experiment,) = tiny.experiments
    for t in tiny.grid.trials:
        (events,) = (experiment / f"{t.label}-seed{t.seed}-{t.key[:8]}").glob("events.out.tfevents.*")
        hist = tiny.store.get(t.key)["history"]
        # Tune's step is its training iteration (1, 2, ...); TensorBoard keeps float32
        assert scalars(events, "ray/tune/val_acc") == {e + 1: struct.unpack("f", struct.pack("f", h["val_acc"]))[0]
                                                       for e, h in enumerate(hist)}


def test_export_writes_a_table_of_both_rows_over_both_seeds(tiny):
    paths = export_grid(tiny.grid, tiny.store, tiny.results / "tiny")
    assert paths["table.md"] == tiny.results / "tiny" / "table.md"
    lines = paths["table.md"].read_text().splitlines()
    sep = lines.index("|---|---:|---:|")                          # label, acc, macro_f1
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[sep + 1:sep + 3]]
    assert [r[0] for r in body] == ["Concat", "Control"] and not lines[sep + 3].startswith("|")
    assert [[c.endswith("(n=2)") for c in r[1:]] for r in body] == [[True, True], [True, True]], body


def test_a_second_run_launches_nothing(tiny):
    _, _, s = run(tiny.path, tiny.results)
    assert (s.total, s.reused, s.launched, s.done, s.failed) == (4, 4, 0, 0, {}) and s.exit_code == 0


def test_an_edited_grid_runs_only_its_new_cells(tiny):
    more = write_grid(tiny.results / "tiny-3-seeds.yaml", "tiny", ROWS, seeds=(0, 1, 2))     # one more seed
    grid, _, s = run(more, tiny.results)
    assert (s.total, s.reused, s.launched, s.done, s.failed) == (6, 4, 2, 2, {}) and s.exit_code == 0
    new = {t.key for t in grid.trials if t.seed == 2}
    assert len(new) == 2 and all(tiny.store.get(k)["status"] == "done" for k in new)


def test_another_grid_sharing_cells_runs_nothing_for_them(tiny):
    other = write_grid(tiny.results / "other.yaml", "other", {"Baseline": {"method": {"name": "concat"}}})
    _, _, s = run(other, tiny.results)
    assert (s.total, s.reused, s.launched, s.done) == (2, 2, 0, 0) and s.exit_code == 0


# ----------------------------------------------------------------------------- failures
class KillsAtCheckpoint(Store):
    """A store whose ``record_checkpoint`` (the driver registering a trial's checkpoint) SIGKILLs
    the worker of trial ``key`` when its checkpoint of ``epoch`` is registered: Tune has that
    checkpoint (it registers it right after its callbacks), the worker is waiting in its report
    of that epoch, and nothing later was trained."""

    def __init__(self, path, key: str, epoch: int):
        super().__init__(path)
        self.kill_key, self.kill_epoch, self.killed = key, epoch, None

    def record_checkpoint(self, key, uri, epoch):
        stale = super().record_checkpoint(key, uri, epoch)
        if key == self.kill_key and epoch == self.kill_epoch and self.killed is None:
            pid = self.get(key)["history"][-1]["worker_pid"]
            os.kill(pid, signal.SIGKILL)
            self.killed = (pid, uri)
        return stale


def test_killed_worker_resumes_and_a_diverging_trial_fails_alone(local_ray, tmp_path):
    base = {**BASE, "train": {**BASE["train"], "epochs": 6}}
    g = write_grid(tmp_path / "kill.yaml", "kill", {"Concat": {"method": {"name": "concat"}},
                                                    "Broken": {"data": {"nan_train": 1}}}, seeds=(0,), base=base)
    grid = load_grid(g)
    key = next(t.key for t in grid.trials if t.label == "Concat")
    broken = next(t.key for t in grid.trials if t.label == "Broken")
    store = KillsAtCheckpoint(tmp_path / "store.sqlite", key, epoch=2)
    lines = []
    s = run_grid(grid, store, log=lines.append, max_failures=2)
    assert store.killed is not None, "the trial's checkpoint of epoch 2 was never registered"
    rec = store.get(key)
    assert s.done == 1 and list(s.failed) == [broken] and s.exit_code == 1 and rec["status"] == "done"
    assert [h["epoch"] for h in rec["history"]] == list(range(6))     # every epoch exactly once
    # it resumed from the checkpoint it was killed at, not restarted
    assert rec["info"]["resumed_from_epoch"] == 2
    assert [ln for ln in lines if "resumed after" in ln] == [
        f"  Concat | - | seed 0: resumed after epoch 2 from {store.killed[1]}"]
    # the diverging trial failed alone, once (a deterministic failure is not retried), with one line
    bad = store.get(broken)
    assert bad["status"] == "failed" and bad["attempts"] == 1
    assert bad["error"].startswith("TrialDiverged") and "not finite" in bad["error"]


def test_a_trials_own_crash_still_counts_against_max_failures(local_ray, tmp_path):
    """Its worker process SIGKILLed on a node that stays alive (a crash, an OOM kill: the same
    config may do it again) is the trial's own failure, unlike a lost node: with --max-failures 0
    it is not retried. Tune has already queued it again when the driver's callback counts it; the
    restarted trial is told, and reports the failure without training."""
    base = {**BASE, "train": {**BASE["train"], "epochs": 4}}
    g = write_grid(tmp_path / "crash.yaml", "crash", {"Concat": {"method": {"name": "concat"}}}, seeds=(0,), base=base)
    grid = load_grid(g)
    key = grid.trials[0].key
    store = KillsAtCheckpoint(tmp_path / "store.sqlite", key, epoch=1)
    lines = []
    s = run_grid(grid, store, log=lines.append, max_failures=0)
    assert store.killed is not None, "the trial's checkpoint of epoch 1 was never registered"
    rec = store.get(key)
    assert s.done == 0 and list(s.failed) == [key] and s.exit_code == 1 and rec["status"] == "failed"
    assert rec["attempts"] == 1, rec["attempts"]        # the restart that only reports the failure is no attempt
    assert rec["error"].startswith("failed 1 time(s) of its own, retried 0 (--max-failures 0): "), rec["error"]
    assert "worker process has died" in rec["error"] or "died unexpectedly" in rec["error"], rec["error"]
    assert [h["epoch"] for h in rec["history"]] == [0, 1]          # nothing trained after the kill
    assert not [ln for ln in lines if "retrying" in ln or "not counted" in ln], lines


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


def gpu_grid(tmp_path: Path) -> Path:
    """A one-trial grid that asks for a GPU (the fixture's cluster has none)."""
    g = write_grid(tmp_path / "gpu.yaml", "gpu", {"Concat": {"method": {"name": "concat"}}}, seeds=(0,),
                   base={**BASE, "train": {**BASE["train"], "device": "auto"}})
    doc = yaml.safe_load(g.read_text())
    doc["resources"] = {"cpu": 1, "gpu": 1}
    g.write_text(yaml.safe_dump(doc))
    return g


def refused_run(tmp_path: Path, capsys) -> tuple[Path, str, str]:
    """``raygap run`` of :func:`gpu_grid`, joined to the fixture's Ray: the grid file, stdout, stderr."""
    import threading

    g = gpu_grid(tmp_path)
    capsys.readouterr()
    assert cli_main(["run", str(g), "--results", str(tmp_path)]) == 2
    for t in threading.enumerate():            # a data build the run started, to its end
        if t.name == "raygap-data":
            t.join()
    return g, *capsys.readouterr()


WHY = ("on one node, but no node of the cluster has that, and no node type an autoscaler may add "
       "(nodes: 2 CPU/0 GPU); such trials would stay PENDING forever")


def test_resource_check_says_why_in_one_line(local_ray, tmp_path, capsys):
    nodes = ray.nodes()                                   # the fixture's one node: 2 CPUs, no GPU
    assert check_resources([{"cpu": 1, "gpu": 0}], nodes) is None
    assert check_resources([{"cpu": 1, "gpu": 0.5}], nodes) == f"a trial asks for 1 CPU + 0.5 GPU {WHY}"
    g, out, err = refused_run(tmp_path, capsys)
    assert err == f"raygap: error: {g}: resources: a trial asks for 1 CPU + 1 GPU {WHY}\n"


def test_a_run_refused_on_a_joined_cluster_builds_no_data(local_ray, tmp_path, capsys, monkeypatch):
    """Joined to a running Ray (the fixture's), a grid the cluster cannot run is refused before
    its in-memory data is built (a build still going would print on after the refusal)."""
    import raygap.trial

    loads = []
    monkeypatch.setattr(raygap.trial, "load_data", lambda cfg: loads.append(cfg.data.name) or {})
    refused_run(tmp_path, capsys)
    assert loads == []


def test_a_refused_run_shows_its_grid_line_once(local_ray, tmp_path, capsys):
    """The grid line the run began with is not shown again as it ends: nothing ran."""
    g, out, err = refused_run(tmp_path, capsys)
    assert [ln.split(";")[0] for ln in out.splitlines() if ln.startswith("grid: ")] == [
        "grid: 0/1 done, 0 running, 0 failed, 1 left"]


# (a driver interrupted mid-grid, then the same command: tests/test_interrupts.py, through a real subprocess)


def test_progress_lines_show_mae_for_a_regression_target():
    from raygap.metrics import shown_metric as _shown_metric
    assert _shown_metric({"val_acc": 0.9, "val_loss": 0.3}, "val_") == "acc"
    assert _shown_metric({"val_mae": 0.8, "val_corr": 0.5}, "val_") == "mae"
    assert _shown_metric({"mae": 0.8, "acc2": 0.7}) == "mae"


def test_a_trial_taken_out_of_the_store_mid_run_is_added_back_and_run_not_asked_for_forever(local_ray, tmp_path):
    """A trial another raygap command took out of the store (``--rerun`` in another shell, which
    then stopped before running it) can be neither claimed nor waited for: the run adds it back
    as pending, says so in one line, and runs it, instead of claiming it again forever."""
    path = write_grid(tmp_path / "one.yaml", "one", {"Concat": {"method": {"name": "concat"}}}, seeds=(0,),
                      base={**BASE, "train": {**BASE["train"], "epochs": 1}})
    grid = load_grid(path)
    (key,) = {s.key for s in grid.trials}
    store = Store(tmp_path / "store.sqlite")
    register, claim, claims = store.register, store.claim, []

    def register_then_forgotten(g):
        register(g)
        assert store.forget([key]) == 1        # as `raygap run one.yaml --rerun all` elsewhere does

    def counted_claim(keys, owner, lease_s):
        claims.append(list(keys))
        assert len(claims) < 20, "claimed again and again, nothing to launch and nothing to wait for"
        return claim(keys, owner, lease_s)

    store.register, store.claim = register_then_forgotten, counted_claim
    lines = []
    summary = run_grid(grid, store, log=lines.append)
    assert claims == [[key], [key]]
    assert (summary.launched, summary.done, summary.unfinished, summary.failed) == (1, 1, 0, {})
    assert store.status_of([key]) == {key: "done"}
    assert ("1 trial(s) were taken out of the store while this run went on (another raygap run with --rerun?): "
            f"added back as pending, to run: {key}") in lines
