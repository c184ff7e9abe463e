"""A plug-in file on a 2-node cluster (ray.cluster_utils.Cluster, loopback only): the file lives
in a folder on no worker's path, a real `raygap run --address` ships it (Ray's py_modules) and
the trial on the second node imports Ray's copy of it."""
from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import yaml
from _tiny import avdigits

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

sys.path.insert(0, str(Path(__file__).parent))

PLUGIN = '''\
"""A plug-in method that says, each epoch, whether this process imported Ray's copy of its file."""
import os

from raygap.methods.base import Method
from raygap.registry import METHODS


@METHODS.register("far_mine", params=None, version=1)
class FarMine(Method):
    """The plain task loss, from a plug-in file the workers get from Ray."""

    tasks = ("classification",)

    def on_epoch_end(self, st):
        return {"plugin_copy": float(os.path.realpath(__file__) != %r)}
'''


def test_a_trial_on_the_second_node_imports_the_plugin_file_ray_shipped(tmp_path):
    import ray
    from _proc import Raygap
    from ray.cluster_utils import Cluster

    project = tmp_path / "project"
    project.mkdir()
    plugin = project / "far_plugin.py"
    plugin.write_text(PLUGIN % str(plugin.resolve()))
    g = project / "far.yaml"
    g.write_text(yaml.safe_dump({
        "name": "far", "plugins": ["far_plugin.py"], "seeds": [0, 1], "metrics": ["acc"], "resources": {"cpu": 1},
        "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4}, "method": {"name": "far_mine"},
                 "train": {"epochs": 2, "batch_size": 256, "device": "cpu", "threads": 1}},
        "rows": {"Far": {}}}))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
    cluster.wait_for_nodes()
    try:
        results = tmp_path / "results"
        run = Raygap("run", str(g), "--address", cluster.address, "--results", str(results),
                     "--storage", (tmp_path / "tune").as_uri())
        code, out = run.finish(400)
        assert code == 0 and "2 run now, 0 failed" in out, out
        rows = sqlite3.connect(results / "store.sqlite").execute("SELECT status, history, info FROM trials").fetchall()
        assert [r[0] for r in rows] == ["done", "done"], rows
        histories = [json.loads(r[1]) for r in rows]
        nodes = {json.loads(r[2])["node"] for r in rows}
        assert worker.node_id in nodes, (nodes, worker.node_id)          # a trial ran on the second node ...
        assert all(h["plugin_copy"] == 1.0 for hist in histories for h in hist)   # ... with Ray's copy of the file
    finally:
        ray.shutdown()
        cluster.shutdown()
