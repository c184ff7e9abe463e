"""Two Ray nodes on this machine (ray.cluster_utils.Cluster, loopback only): trials land on
both and every result reaches the store. Also: raygap refuses to start an embedded instance
that would listen beyond this machine."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from raygap.grid import load_grid  # noqa: E402
from raygap.runner import run_grid  # noqa: E402
from raygap.store import Store  # noqa: E402

BASE = {"data": {"name": "avdigits"}, "model": {"backbone": "small", "width": 4}, "optim": {"lr": 0.1},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "threads": 1}}


def test_trials_are_placed_on_both_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    import ray
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1)       # a GPU that Ray counts but CUDA cannot use
    cluster.wait_for_nodes()
    try:
        g = tmp_path / "mn.yaml"
        # GPU: a trial holding a GPU share where CUDA is unusable must fail at once, alone, with one
        # line: never train on the CPU instead, never be retried as if a worker had died
        g.write_text(yaml.safe_dump({"name": "mn", "base": BASE, "seeds": [0, 1, 2, 3], "metrics": ["acc"],
                                     "resources": {"cpu": 1},
                                     "rows": {"Concat": {"method": {"name": "concat"}},
                                              "GPU": {"method": {"name": "warmup_objective"}, "train": {"device": "auto"},
                                                      "resources": {"gpu": 1}}}}))
        grid = load_grid(g)
        store = Store(tmp_path / "store.sqlite")
        s = run_grid(grid, store, address=cluster.address, log=lambda m: None, max_failures=2)
        cpu = [t for t in grid.trials if t.label == "Concat"]
        gpu = [t for t in grid.trials if t.label == "GPU"]
        assert s.done == 4 and sorted(s.failed) == sorted(t.key for t in gpu) and s.exit_code == 1
        nodes = {store.get(t.key)["info"]["node"] for t in cpu}
        assert len(nodes) == 2
        assert all(store.get(t.key)["status"] == "done" for t in cpu)
        for t in gpu:
            rec = store.get(t.key)
            assert rec["status"] == "failed" and rec["attempts"] == 1 and not rec["history"]
            assert rec["error"].startswith("DeviceUnavailable: the trial holds resources.gpu=1 but CUDA is unusable")
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_embedded_instance_refuses_to_start_after_ray_was_imported_without_loopback():
    # a program that imported ray before raygap could set the variable: raygap must not start an
    # instance listening on every interface (the positive case, a real `raygap run` bound to
    # loopback only, is checked on its whole process tree in test_interrupts.py)
    code = textwrap.dedent("""
        import psutil
        import ray
        def listening():
            return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == "LISTEN"}
        before = listening()
        from raygap.errors import ConfigError
        from raygap.runner import _start_ray
        try:
            _start_ray(None, 2, print)
        except ConfigError as e:
            print("REFUSED", e.line())
        print("NEW", sorted(listening() - before))
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "REFUSED --address: Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set" in r.stdout
    assert "NEW []" in r.stdout, r.stdout
