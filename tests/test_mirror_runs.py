"""The store outlives the head, through real ``raygap`` processes: a run with ``--storage`` mirrors
its store after every finished trial; the head is lost (SIGKILL, then its ``results/`` deleted);
the same command on an empty ``results/`` restores the store from the storage and runs only the
trials it did not hold as done; ``raygap pull`` fetches the store and tables and merges them with
a store that holds other done trials. One run against a real S3 server (tests/s3server.py)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import yaml

from _proc import Raygap, raygap, tagged
from raygap.grid import load_grid
from raygap.store import Store
from _tiny import avdigits

BASE = {"data": avdigits(visual_corrupt=0.3),
        "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.1},
        "train": {"epochs": 2, "batch_size": 256, "device": "cpu", "threads": 1, "checkpoint_every": 1}}


def write_grid(path: Path, name: str, seeds) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "base": BASE, "rows": {"Concat": {"method": {"name": "concat"}}},
                                    "seeds": list(seeds), "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}))
    return path


def done_rows(db: Path) -> dict[str, tuple]:
    """key -> (finished, metrics) of the done trials in the store file ``db`` ({} where there is none
    yet; the mirror's copy is renamed into place whole, so it is never read half-written)."""
    if not db.exists():
        return {}
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {k: (f, m) for k, f, m in c.execute("SELECT key, finished, metrics FROM trials WHERE status='done'")}
    finally:
        c.close()


def ran_here(out: str, key: str) -> bool:
    """Whether the run's output says it finished trial ``key`` itself (the progress line of a done trial)."""
    return re.search(rf"\({key}\): acc [0-9.]+ on ", out) is not None


def test_a_lost_head_restores_the_store_runs_only_the_rest_and_pull_merges_with_a_laptops_store(tmp_path):
    g = write_grid(tmp_path / "lost.yaml", "lost", [0, 1, 2])
    keys = [s.key for s in load_grid(g).trials]
    results, storage = tmp_path / "results", tmp_path / "bucket"
    mirrored = storage / "results" / "store.sqlite"
    cmd = ("run", g, "--results", results, "--storage", storage, "--num-cpus", "1")
    run = Raygap(*cmd)
    deadline = time.time() + 240
    while not done_rows(mirrored):                 # mirrored after the first finished trial, not at exit
        assert time.time() < deadline and run.p.poll() is None, run.output[-3000:]
        time.sleep(0.2)
    run.p.send_signal(signal.SIGKILL)              # the head is lost: no teardown, no push at exit ...
    run.p.wait(30)
    time.sleep(2)
    for p in tagged(run.tag):                      # (what the killed driver left: this test's own processes)
        p.kill()
    shutil.rmtree(results)                         # ... and its disk with it
    kept = done_rows(mirrored)
    assert 1 <= len(kept) < 3, kept

    again = Raygap(*cmd)
    code, out = again.finish(300)
    assert code == 0, out
    print("the run on the empty results/:", *[ln for ln in out.splitlines() if re.search(
        r"restored|resum|launching|distinct|\): acc", ln)], sep="\n  ")
    n = len(kept)
    assert f"restored the store from {storage}/results/store.sqlite: {n} done trial(s)" in out
    assert f"3 distinct trial(s): {n} reused from the store, {3 - n} run now, 0 failed" in out
    final = done_rows(results / "store.sqlite")
    assert set(final) == set(keys)
    for k in keys:                                 # the mirrored ones reused as they were, the others run here
        assert ran_here(out, k) is (k not in kept), (k, out[-3000:])
        if k in kept:
            assert final[k] == kept[k]
    assert done_rows(mirrored) == final            # mirrored again at the end
    table = results / "lost" / "noprofile" / "table.csv"
    assert (storage / "results" / "lost" / "noprofile" / "table.csv").read_bytes() == table.read_bytes()
    (storage / "results" / "lost" / "noprofile" / "table.csv").unlink()
    code, out, err = raygap("export", g, "--results", results, "--storage", storage)     # the tables after an export
    assert code == 0, out + err
    assert (storage / "results" / "lost" / "noprofile" / "table.csv").read_bytes() == table.read_bytes()

    # a laptop's store holds a done trial the mirror lacks, and one of the grid's trials done earlier
    laptop = tmp_path / "laptop"
    own = Store(laptop / "store.sqlite")
    own.save_done("0" * 16, {"acc": 0.125}, [], 1.0)
    own.save_done(keys[0], {"acc": 0.5}, [], 1.0)
    own.close()
    c = sqlite3.connect(laptop / "store.sqlite")
    with c:
        c.execute("UPDATE trials SET finished=1.0 WHERE key=?", (keys[0],))     # before the cluster's
    c.close()
    code, out, err = raygap("pull", "--storage", storage, "--results", laptop)
    assert code == 0, out + err
    assert out.startswith(f"merged the mirrored store {storage}/results/store.sqlite into {laptop}/store.sqlite: "
                          "2 done trial(s) taken from it, 0 other row(s)\n")
    print("raygap pull:", out, err, sep="\n  ")
    assert err == (f"raygap: 1 trial(s) done both in {laptop}/store.sqlite and in {storage}/results/store.sqlite "
                   f"with different results: kept the earlier of each (0 from {storage}/results/store.sqlite): "
                   f"{keys[0][:12]}\n")
    got = done_rows(laptop / "store.sqlite")
    assert set(got) == {*keys, "0" * 16}
    assert json.loads(got[keys[0]][1]) == {"acc": 0.5}                          # the earlier one
    assert all(got[k] == final[k] for k in keys[1:])
    assert (laptop / "lost" / "noprofile" / "table.csv").read_bytes() == table.read_bytes()

    code, out, err = raygap("pull", "--storage", tmp_path / "nothing-here", "--results", laptop)
    assert (code, out) == (2, "") and err.count("\n") == 1 and "no mirrored store here" in err, err


def test_the_store_and_tables_land_in_a_real_s3_bucket_and_come_back_to_an_empty_head(tmp_path, s3):
    s3.bucket("runs")
    g = write_grid(tmp_path / "s3grid.yaml", "s3grid", [0])
    results = tmp_path / "results"
    cmd = ("run", g, "--results", results, "--storage", "s3://runs/exp", "--num-cpus", "1")
    code, out, err = raygap(*cmd, env=s3.env)
    assert code == 0, out + err
    objects = [k for k in s3.keys("runs", "exp/results/") if not k.endswith("/")]   # (pyarrow's folder markers)
    assert objects == ["exp/results/s3grid/noprofile/figures/" + f for f in
                       sorted(p.name for p in (results / "s3grid" / "noprofile" / "figures").iterdir())] + \
        [f"exp/results/s3grid/noprofile/{f}" for f in ("table.csv", "table.json", "table.md", "table.tex",
                                                         "trials.csv")] + ["exp/results/store.sqlite"], objects
    print("objects in the bucket after the run:", *s3.keys("runs"), sep="\n  ")

    shutil.rmtree(results)
    code, out, err = raygap(*cmd, env=s3.env)
    assert code == 0, out + err
    assert "restored the store from s3://runs/exp/results/store.sqlite: 1 done trial(s)" in out
    assert "1 distinct trial(s): 1 reused from the store, 0 run now, 0 failed" in out

    laptop = tmp_path / "laptop"          # the endpoint in the URI's query this time, not in the environment
    keys_only = {k: v for k, v in s3.env.items() if not k.startswith("AWS_ENDPOINT_URL")}
    code, out, err = raygap("pull", "--storage", f"s3://runs/exp?endpoint_override=127.0.0.1:{s3.port}&scheme=http",
                            "--results", laptop, env=keys_only)
    assert code == 0, out + err
    assert out.startswith("restored the store from s3://runs/exp/results/store.sqlite: 1 done trial(s)")
    assert (laptop / "s3grid" / "noprofile" / "table.md").read_bytes() == \
        (results / "s3grid" / "noprofile" / "table.md").read_bytes()
    assert set(done_rows(laptop / "store.sqlite")) == set(done_rows(results / "store.sqlite"))
