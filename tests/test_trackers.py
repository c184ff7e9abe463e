"""``raygap run --tracker mlflow|wandb`` through a real ``raygap run`` process (its embedded local
Ray, loopback only, no dashboard): one run per trial, named like the trial's folder, holding
every epoch's validation accuracy -- the values the store holds -- read back with MLflow's client
and from W&B's offline run files; and the line that says where to look.

Both packages are optional extras (``RAYGAP_EXTRAS=mlflow,wandb bash scripts/setup.sh``); CI
installs none, so each test skips saying which package is missing. W&B runs offline: nothing
leaves the machine (``WANDB_MODE=offline``, every W&B folder in tmp_path)."""
from __future__ import annotations

import csv
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from raygap.store import Store
from _tiny import avdigits

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3


def tiny_grid(tmp_path: Path) -> Path:
    doc = {"name": "trk", "base": {"data": avdigits(visual_corrupt=0.3),
                                   "model": {"backbone": "small", "width": 4}, "optim": {"lr": 0.1},
                                   "train": {"epochs": EPOCHS, "batch_size": 256, "device": "cpu", "threads": 1},
                                   "method": {"name": "concat"}},
           "rows": {"Concat": {}}, "columns": {"data.name": ["avdigits"]}, "seeds": [0, 1],
           "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}
    path = tmp_path / "trk.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def raygap_run(tmp_path: Path, tracker: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``raygap run`` the tiny grid with ``--tracker``; no W&B or MLflow setting of this machine
    leaks in, and W&B would talk to a closed local port if it went online."""
    grid = tiny_grid(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    return subprocess.run([sys.executable, "-m", "raygap", "run", str(grid), "--results", str(tmp_path / "results"),
                           "--tracker", tracker, "--num-cpus", "2"], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env={**clean, "WANDB_BASE_URL": "http://127.0.0.1:9", **(env or {})})


def run_done(tmp_path: Path, tracker: str, env: dict | None = None) -> tuple[str, dict]:
    """:func:`raygap_run`, which must succeed; (its output, the run name each trial must get -> its
    val_acc per epoch as the store holds it). Run names are the trial folders':
    ``<label>-<column>-seed<k>-<key[:8]>``."""
    r = raygap_run(tmp_path, tracker, env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    rows = list(csv.DictReader((tmp_path / "results" / "trk" / "noprofile" / "trials.csv").open()))
    assert sorted(int(row["seed"]) for row in rows) == [0, 1] and {row["status"] for row in rows} == {"done"}
    with Store(tmp_path / "results" / "store.sqlite", readonly=True) as store:
        recs = store.records(row["hash"] for row in rows)
    val = {f"Concat-avdigits-seed{row['seed']}-{row['hash'][:8]}": [h["val_acc"] for h in recs[row["hash"]]["history"]]
           for row in rows}
    assert all(len(v) == EPOCHS for v in val.values()), val
    return out, val


def test_mlflow_one_run_per_trial_with_every_epoch_and_where_to_look(tmp_path):
    for module in ("mlflow", "sqlalchemy", "alembic"):
        pytest.importorskip(module, reason="--tracker mlflow needs raygap's mlflow extra (RAYGAP_EXTRAS=mlflow)")
    from mlflow.tracking import MlflowClient

    out, val = run_done(tmp_path, "mlflow")
    uri = f"sqlite:///{(tmp_path / 'results' / 'mlflow.db').resolve()}"
    line = next((ln for ln in out.splitlines() if ln.startswith("MLflow: ")), "")
    # the line names the experiment, the database and a command that opens MLflow's UI on it
    assert f"experiment 'trk' at {uri}" in line and re.search(
        rf"to browse: \S*uvx --from mlflow==[\d.]+ mlflow ui --backend-store-uri {re.escape(uri)}$", line), out[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("trk").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert len(runs) == 2 and set(by_name) == set(val), sorted(by_name)
    for name, values in val.items():
        run = by_name[name]
        assert run.info.status == "FINISHED" and run.data.tags["raygap_grid"] == "trk"
        hist = sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
        assert [m.step for m in hist] == list(range(1, EPOCHS + 1))         # one value per epoch
        assert [m.value for m in hist] == pytest.approx(values, abs=1e-12)   # the store's values


# -- W&B ----------------------------------------------------------------------------------------
def wandb_records(path: Path):
    """The records of a ``.wandb`` file. wandb (0.19 on) ships no Python reader for it: the file is
    LevelDB's log format (32 KiB blocks, each record ``crc32 (4) | length (2) | type (1) | data``,
    the crc over type and data; type 1 a whole record, 2/3/4 its first, middle, last pieces) after a
    7-byte header ``:W&B``, 0xBEE1, version 0, and each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    pos, pieces, block = 7, [], 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:                    # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + n]
        if kind == 0 and n == 0:
            break
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"corrupt record at byte {pos} of {path}"
        pos += 7 + n
        pieces.append(chunk)
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(pieces))
            pieces = []
            yield rec


def test_wandb_offline_one_run_per_trial_with_every_epoch_and_where_to_look(tmp_path):
    pytest.importorskip("wandb", reason="--tracker wandb needs raygap's wandb extra (RAYGAP_EXTRAS=wandb)")
    wdir = tmp_path / "wandb-home"
    out, val = run_done(tmp_path, "wandb", offline_wandb(wdir))
    line = next((ln for ln in out.splitlines() if ln.startswith("W&B: ")), "")
    assert f"offline runs in {wdir.resolve()}/wandb/offline-run-*" in line and "group noprofile" in line, out[-3000:]
    runs = sorted((wdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    seen = {}
    for run_dir in runs:
        (log,) = run_dir.glob("run-*.wandb")
        recs = list(wandb_records(log))
        (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
        assert run.project == "raygap-trk" and list(run.tags) == ["trk", "noprofile"]
        steps = {}
        for r in recs:
            if r.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
                assert not {"record_json", "final_json"} & set(items)          # JSON blobs are not logged
                if "val_acc" in items:
                    steps[int(items["_step"])] = float(items["val_acc"])
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps             # one value per epoch
        seen[run.display_name] = [steps[k] for k in sorted(steps)]
    assert set(seen) == set(val) and all(seen[n] == pytest.approx(val[n], abs=1e-12) for n in val), (seen, val)


def offline_wandb(home: Path) -> dict:
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(home), "WANDB_CONFIG_DIR": str(home / "config"),
            "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data"),
            "WANDB_ARTIFACT_DIR": str(home / "artifacts"), "WANDB_SILENT": "true"}


def test_a_wandb_run_that_fails_is_said_once_per_trial(tmp_path):
    # wandb.init fails in the logging actor (here: a console setting it rejects); Ray's callback
    # would drop the error, and the run end with no W&B run and no word
    pytest.importorskip("wandb", reason="--tracker wandb needs raygap's wandb extra (RAYGAP_EXTRAS=wandb)")
    r = raygap_run(tmp_path, "wandb", {**offline_wandb(tmp_path / "wandb-home"), "WANDB_CONSOLE": "bogus"})
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("raygap: the W&B run of trial ")]
    assert r.returncode == 0 and len(said) == 2, r.stdout[-2000:] + r.stderr[-3000:]   # the trials themselves are done
    pattern = re.compile(r"raygap: the W&B run of trial (Concat-avdigits-seed[01]-[0-9a-f]{8}) failed: "
                         r"ValidationError: .*console")
    matched = [pattern.match(ln) for ln in said]
    assert all(matched) and len({m.group(1) for m in matched}) == 2, said                # one line per trial
    assert "done" in (tmp_path / "results" / "trk" / "noprofile" / "trials.csv").read_text()


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_that_cannot_log_is_one_line_exit_2(tmp_path, tracker):
    # W&B online without a login (HOME and its config folder empty); MLflow at a database it cannot
    # create (a file stands where its folder would be)
    pytest.importorskip(tracker, reason=f"--tracker {tracker} needs raygap's {tracker} extra (RAYGAP_EXTRAS={tracker})")
    (tmp_path / "a-file").write_text("")
    env = ({"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "config")} if tracker == "wandb"
           else {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"})
    r = raygap_run(tmp_path, tracker, env)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("raygap: error: ")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert errors[0].startswith("raygap: error: --tracker: " + ("W&B cannot log: ValueError: No WandB API key"
                                                               if tracker == "wandb" else "MLflow cannot use sqlite:///"))


def test_a_missing_tracker_package_is_one_line_naming_the_extra(monkeypatch):
    import raygap.runner as runner

    # a module that is surely absent stands in for the missing extra
    monkeypatch.setitem(runner.TRACKER_NEEDS, "wandb", (("wandb_not_installed_here",), "wandb"))
    assert runner.tracker_problem("wandb") == (
        "--tracker wandb needs wandb_not_installed_here, not installed here: install raygap's 'wandb' extra: "
        "RAYGAP_EXTRAS=wandb bash scripts/setup.sh (docs/install.md)")
    assert runner.tracker_problem("none") is None
