"""Two Ray nodes on this machine (ray.cluster_utils.Cluster, loopback only): trials land on
both and every result reaches the store. Also: raygap's embedded instance binds 127.0.0.1."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

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
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        g = tmp_path / "mn.yaml"
        g.write_text(yaml.safe_dump({"name": "mn", "base": BASE, "rows": {"Concat": {"method": {"name": "concat"}}},
                                     "seeds": [0, 1, 2, 3], "metrics": ["acc"], "resources": {"cpu": 1}}))
        grid = load_grid(g)
        store = Store(tmp_path / "store.sqlite")
        s = run_grid(grid, store, address=cluster.address, log=lambda m: None)
        assert s.done == 4 and not s.failed
        nodes = {store.get(t.key)["info"]["node"] for t in grid.trials}
        assert len(nodes) == 2
        assert all(store.get(t.key)["status"] == "done" for t in grid.trials)
    finally:
        ray.shutdown()
        cluster.shutdown()


def listening() -> set[tuple[str, int]]:
    out = set()
    for fam, path in ((4, "/proc/net/tcp"), (6, "/proc/net/tcp6")):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] != "0A":          # LISTEN
                continue
            ip_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(ip_hex)
            if fam == 4:
                ip = socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16)))
            else:
                ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out.add((ip, int(port_hex, 16)))
    return out


def test_embedded_instance_binds_loopback_only():
    # raygap's own start-up path, in a fresh process without the variable set beforehand
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, %r)
        from test_multinode import listening
        before = listening()
        from raygap.runner import _start_ray
        assert _start_ray(None, 2, print)
        import ray, time
        time.sleep(1)
        print(json.dumps(sorted(listening() - before)))
        ray.shutdown()
    """ % str(Path(__file__).parent))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    new = json.loads(r.stdout.strip().splitlines()[-1])
    assert new, "Ray opened no listening socket?"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _ in new), new
