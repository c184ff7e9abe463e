"""Object storage against a real S3-compatible server (moto's, its own process on 127.0.0.1:
tests/s3server.py), through real ``raygap run`` processes: checkpoints land in the bucket, a
driver SIGKILLed mid-trial and the same command again resume from the bucket, shared warm-ups go
through it, a done trial's checkpoints are deleted from it -- on a 2-node ``ray.cluster_utils``
cluster whose nodes get the keys from their environment and the endpoint only from the URI's
query parameters (kept on every checkpoint URI the store records). Then the preflight: bad
storage or a bad ``--address`` is one line, exit 2, before Ray starts."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from _proc import Raygap, raygap, tagged  # noqa: E402
from s3server import KEYS, free_port  # noqa: E402

from raygap.store import Store  # noqa: E402
from _tiny import avdigits

BASE = {"data": avdigits(visual_corrupt=0.3), "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.1}, "train": {"epochs": 6, "batch_size": 256, "device": "cpu", "threads": 1,
                                        "checkpoint_every": 1}}
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def write_grid(path: Path, name: str, rows: dict, base: dict = BASE) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "base": base, "rows": rows, "seeds": [0], "metrics": ["acc"],
                                    "resources": {"cpu": 1, "gpu": 0}}))
    return path


def row(db: Path, key: str) -> dict:
    try:
        with sqlite3.connect(db) as c:
            c.row_factory = sqlite3.Row
            r = c.execute("SELECT * FROM trials WHERE key=?", (key,)).fetchone()
    except sqlite3.OperationalError:           # the run is creating the store right now
        return {}
    return dict(r) if r else {}


def test_checkpoints_resume_and_warmups_go_through_the_bucket_and_done_trials_leave_none(s3, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from raygap.grid import load_grid

    bucket = s3.bucket("raygap-runs")
    for k, v in KEYS.items():                  # the keys in every node's environment (as an instance role) ...
        monkeypatch.setenv(k, v)
    for v in ENDPOINT_VARS:                    # ... the endpoint in the URI only
        monkeypatch.delenv(v, raising=False)
    query = f"?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    uri = f"s3://{bucket}/paper{query}"
    listed: dict[str, list[str]] = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
    cluster.wait_for_nodes()
    runs = []
    try:
        # 1. one trial, 6 epochs, a checkpoint each: the driver SIGKILLed mid-trial
        g = write_grid(tmp_path / "kill.yaml", "kill", {"Concat": {"method": {"name": "concat"}}})
        key = load_grid(g).trials[0].key
        results = tmp_path / "results"
        db = results / "store.sqlite"
        cmd = ("run", g, "--address", cluster.address, "--storage", uri, "--results", results)
        runs.append(run := Raygap(*cmd))
        deadline = time.time() + 240
        while time.time() < deadline:
            r = row(db, key) if db.exists() else {}
            if len(json.loads(r.get("history") or "[]")) >= 3 and (r.get("checkpoint_epoch") or -1) >= 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the trial never reached epoch 2:\n" + run.output[-3000:])
        listed["mid-trial"] = s3.keys(bucket)
        run.p.send_signal(signal.SIGKILL)
        run.p.wait(30)
        before = row(db, key)
        last_reported = max(h["epoch"] for h in json.loads(before["history"]))
        recorded = before["checkpoint"]
        # the store's URI names the bucket and keeps the endpoint's query parameters
        assert recorded.startswith(f"s3://{bucket}/paper/kill-") and recorded.endswith(query), recorded
        listed["after the kill"] = s3.keys(bucket)
        ckpt_key = recorded[len(f"s3://{bucket}/"):-len(query)] + "/checkpoint.pt"
        assert ckpt_key in listed["mid-trial"] or ckpt_key in listed["after the kill"], (ckpt_key, listed)
        assert ckpt_key in listed["after the kill"]
        assert not any(k.startswith("paper/.raygap-probe") for k in listed["after the kill"])  # the probe cleaned up

        runs.append(again := Raygap(*cmd))
        code, out = again.finish(300)
        assert code == 0, out
        rec = Store(db).get(key)
        newest = rec["info"]["resumed_from_epoch"]
        assert rec["status"] == "done" and newest >= before["checkpoint_epoch"], (rec["info"], before)
        assert f"resumed after epoch {newest} from s3://{bucket}/paper/kill-" in out and query in out, out
        assert [h["epoch"] for h in rec["history"]] == list(range(6))        # every epoch once
        assert last_reported - newest <= 1, (last_reported, newest)         # nothing before the newest checkpoint
        print(f"killed after epoch {last_reported} reported; recorded checkpoint: epoch {before['checkpoint_epoch']} "
              f"{recorded}; resumed after epoch {newest}; epochs computed twice: {max(last_reported - newest, 0)}")
        listed["after the re-run"] = s3.keys(bucket)
        assert not [k for k in listed["after the re-run"] if "/checkpoint_" in k], listed["after the re-run"]  # done: gone
        assert any(k.startswith("paper/kill-") for k in listed["after the re-run"])   # Tune's own files stay

        # 2. a shared warm-up: the leader keeps its end in the bucket, the other starts from it there
        wbase = {**BASE, "train": {**BASE["train"], "epochs": 2}, "method": {"name": "gap_adaptive"}}
        w1 = {"warmup_epochs": 1}
        wg = write_grid(tmp_path / "wu.yaml", "wu", {"Full": {"method": w1}, "a0": {"method": {**w1, "alpha": 0.0}}},
                        base=wbase)
        wkeys = {t.label: t.key for t in load_grid(wg).trials}
        seen: set[str] = set()
        stop = threading.Event()

        def watch():                           # what the bucket holds under warmups/ while the run goes on
            while not stop.wait(0.2):
                try:
                    seen.update(s3.keys(bucket, "paper/warmups/"))
                except Exception:  # noqa: BLE001 -- the next look
                    pass

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        runs.append(wu := Raygap("run", wg, "--address", cluster.address, "--storage", uri, "--results", results))
        code, out = wu.finish(300)
        stop.set()
        th.join(10)
        assert code == 0, out
        assert f"started after epoch 0 from the shared warm-up of trial {wkeys['Full']}" in out, out
        assert Store(db).get(wkeys["a0"])["info"]["warmup_from"] == wkeys["Full"]
        listed["during the warm-up run (paper/warmups/)"] = sorted(seen)
        assert any(k.startswith("paper/warmups/") and k.endswith("/checkpoint.pt") for k in seen), seen
        listed["after the warm-up run"] = s3.keys(bucket)
        # every member done: the kept warm-up deleted from the bucket (left: the empty "folder" markers,
        # keys ending in /, that pyarrow's create_dir writes)
        assert not [k for k in listed["after the warm-up run"]
                    if ("/checkpoint_" in k or k.startswith("paper/warmups/")) and not k.endswith("/")]
    finally:
        for r in runs:
            r.kill_tree()
        ray.shutdown()
        cluster.shutdown()
        for step, keys in listed.items():
            print(f"bucket {bucket} {step}: {len(keys)} object(s)")
            for k in keys:
                print(f"  {k}")


def test_checkpoint_uris_keep_the_storage_query_and_reopen_in_the_bucket(s3, tmp_path, monkeypatch):
    """Without Ray: what the store records for a Tune checkpoint keeps the storage URI's query
    parameters, and every later use of it (newer checkpoints found beside it, a kept warm-up,
    deleting) reaches the same bucket at the same endpoint; the endpoint from AWS_ENDPOINT_URL_S3
    alone works too (pyarrow's S3FileSystem() does not read it: raygap passes it)."""
    from types import SimpleNamespace

    from raygap.runner.storage import (checkpoint_uri, delete_checkpoint, keep_checkpoint, open_storage,
                                       resume_candidates, trial_checkpoints, warmup_at)

    bucket = s3.bucket("raygap-uris")
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    for v in ENDPOINT_VARS:
        monkeypatch.delenv(v, raising=False)
    query = f"?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    storage = f"s3://{bucket}/runs{query}"
    src = tmp_path / "checkpoint.pt"
    src.write_bytes(b"a checkpoint")
    for n in (1, 3):                           # 3: uploaded after the store last heard of the trial
        keep_checkpoint(src, f"s3://{bucket}/runs/exp/trial/checkpoint_00000{n}{query}")
    kept = keep_checkpoint(src, warmup_at(storage, "wabc"))
    assert kept == f"s3://{bucket}/runs/warmups/wabc{query}"
    fs, path = open_storage(storage)
    assert path == f"{bucket}/runs"
    tune_ckpt = SimpleNamespace(filesystem=fs, path=f"{bucket}/runs/exp/trial/checkpoint_000001")   # as Tune gives it
    recorded = checkpoint_uri(tune_ckpt, storage)
    assert recorded == f"s3://{bucket}/runs/exp/trial/checkpoint_000001{query}"
    assert resume_candidates(recorded) == [f"s3://{bucket}/runs/exp/trial/checkpoint_000003{query}", recorded]
    objects = [k for k in s3.keys(bucket) if not k.endswith("/")]
    assert objects == ["runs/exp/trial/checkpoint_000001/checkpoint.pt", "runs/exp/trial/checkpoint_000003/checkpoint.pt",
                       "runs/warmups/wabc/checkpoint.pt"], objects
    later = f"s3://{bucket}/runs/exp/trial/checkpoint_000003{query}"
    assert trial_checkpoints(later) == [later, recorded]        # the older one a killed driver left, for the sweep
    assert resume_candidates(later) == [later]
    for uri in [*trial_checkpoints(later), kept]:
        delete_checkpoint(uri, storage)
    assert [k for k in s3.keys(bucket) if not k.endswith("/")] == []
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)      # the endpoint the AWS way, no query
    keep_checkpoint(src, f"s3://{bucket}/env/w")
    assert "env/w/checkpoint.pt" in s3.keys(bucket)


def one_line(code: int, out: str, err: str, names: str) -> str:
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert names in lines[0] and "Traceback" not in out + err and "Ray" not in out, lines
    return lines[0]


def test_bad_storage_is_one_line_and_exit_2_before_ray_starts(s3, tmp_path):
    """An unreachable endpoint, a missing bucket, an unknown scheme, refused credentials (the
    server told to check them: moto's reset-auth), the endpoint given as a URI's query or by
    AWS_ENDPOINT_URL_S3: each one line naming the URI, exit 2, no Ray started."""
    bucket = s3.bucket("raygap-probe")
    g = write_grid(tmp_path / "g.yaml", "g", {"Concat": {"method": {"name": "concat"}}})
    env = {**KEYS, "AWS_ENDPOINT_URL_S3": "", "AWS_ENDPOINT_URL": ""}
    closed = free_port()
    cases = [
        ("unreachable endpoint", f"s3://{bucket}/p?endpoint_override=127.0.0.1:{closed}&scheme=http", env,
         "the endpoint cannot be reached"),
        ("missing bucket (endpoint in the query)", f"s3://no-such-bucket/p?endpoint_override=127.0.0.1:{s3.port}"
         "&scheme=http", env, "the bucket does not exist"),
        ("missing bucket (AWS_ENDPOINT_URL_S3)", "s3://no-such-bucket/p", {**env, "AWS_ENDPOINT_URL_S3": s3.endpoint},
         "the bucket does not exist"),
        ("unknown scheme", "ftp://files.example/raygap", env, "Unrecognized filesystem type"),
        ("misspelt query parameter", f"s3://{bucket}/p?endpoint_overide=127.0.0.1:{s3.port}", env,
         "unknown query parameter 'endpoint_overide' (nearest: endpoint_override; known: "),
        ("refused credentials", f"s3://{bucket}/p?endpoint_override=127.0.0.1:{s3.port}&scheme=http", env,
         "the credentials are refused"),
    ]
    for what, uri, case_env, problem in cases:
        if what == "refused credentials":      # from now on only keys moto's IAM knows are accepted
            urllib.request.urlopen(urllib.request.Request(f"{s3.endpoint}/moto-api/reset-auth", data=b"0",
                                                          headers={"Content-Type": "text/plain"})).read()
        t0 = time.monotonic()
        code, out, err = raygap("run", g, "--storage", uri, "--results", tmp_path / "results", env=case_env,
                                timeout=60)
        wall = time.monotonic() - t0
        line = one_line(code, out, err, uri)
        assert line.startswith(f"raygap: error: --storage: {uri}") and problem in line, line
        if "AWS_ENDPOINT_URL_S3" in what:      # where the endpoint came from, said
            assert f"{uri} (endpoint {s3.endpoint} from AWS_ENDPOINT_URL_S3): " in line, line
        assert wall < 30, wall                 # a hang guard (the preflight gives up after 8 s)
        print(f"{what}: {wall:.1f} s: {line}")
    assert not (tmp_path / "results" / "ray").exists()       # nothing of Tune's written anywhere


def test_bad_address_is_one_line_and_exit_2_within_seconds(tmp_path):
    g = write_grid(tmp_path / "g.yaml", "g", {"Concat": {"method": {"name": "concat"}}})
    closed = free_port()
    cases = [("closed port", f"127.0.0.1:{closed}", "connection refused"),
             ("malformed", "head-node", "not HOST:PORT"),
             ("port out of range", "127.0.0.1:99999", "not HOST:PORT"),
             ("unknown host", "no-such-head.invalid:6379", "is not found"),
             ("Ray Client, closed port", f"ray://127.0.0.1:{closed}", "connection refused")]
    for what, address, problem in cases:
        t0 = time.monotonic()
        r = Raygap("run", g, "--address", address, "--results", tmp_path / "results", split_stderr=True)
        code, out = r.finish(60)
        wall = time.monotonic() - t0
        try:
            line = one_line(code, out, r.errors, address)
        finally:
            r.kill_tree()
        assert line.startswith(f"raygap: error: --address: {address}: ") and problem in line, line
        assert wall < 30 and not tagged(r.tag), wall
        print(f"{what}: {wall:.1f} s: {line}")


def test_the_preflight_makes_a_local_storage_folder_and_names_one_it_cannot_write(tmp_path):
    from raygap.runner.storage import storage_problem

    assert storage_problem(str(tmp_path / "a" / "ray")) is None and (tmp_path / "a" / "ray").is_dir()
    assert storage_problem((tmp_path / "b" / "tune").as_uri()) is None and (tmp_path / "b" / "tune").is_dir()
    assert list((tmp_path / "a" / "ray").iterdir()) == []          # the probe object deleted
    (tmp_path / "file").write_text("not a folder")
    problem = storage_problem(str(tmp_path / "file" / "ray"))
    assert problem.startswith(f"{tmp_path / 'file' / 'ray'}: a probe object cannot be written") and "\n" not in problem
