"""Two Ray nodes on this machine (ray.cluster_utils.Cluster, loopback only): trials land on
both, a node removed mid-grid costs nothing, a node killed without warning (a spot preemption)
costs no retry and no epoch twice, GPU shares without CUDA fail at once. Also:
raygap refuses to start an embedded instance that would listen beyond this machine; the
cluster checks (storage, node types an autoscaler may add, CPU counts) on their own."""
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
from _tiny import avdigits

BASE = {"data": avdigits(), "model": {"backbone": "small", "width": 4}, "optim": {"lr": 0.1},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "threads": 1}}


def test_trials_use_both_nodes_survive_losing_one_and_gpu_shares_without_cuda_fail(tmp_path):
    """Two Ray nodes on two addresses (127.0.0.1 and 127.0.0.2: two machines to Ray). A real
    `raygap run --address` with local storage is refused in one line before any trial; with
    storage every node reaches, trials run on both nodes and build their in-memory data on
    their own node (the head of a real cluster may hold no data); the worker node is removed
    mid-grid and its trial finishes on the head from its checkpoint."""
    import threading
    import time

    from _proc import Raygap
    from ray.cluster_utils import Cluster

    import ray
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
    cluster.wait_for_nodes()
    try:
        g = tmp_path / "mn.yaml"
        # Concat: 2 trials, one per node; the worker node is removed while its trial runs.
        # GPU: the head's GPU is one Ray counts but CUDA cannot use -- a trial holding a share of it
        # must fail at once, alone, with one line: never train on the CPU, never be retried.
        base = {**BASE, "train": {**BASE["train"], "epochs": 6, "checkpoint_every": 1}}
        g.write_text(yaml.safe_dump({"name": "mn", "base": base, "seeds": [0, 1], "metrics": ["acc"],
                                     "resources": {"cpu": 1},
                                     "rows": {"Concat": {"method": {"name": "concat"}},
                                              "GPU": {"method": {"name": "warmup_objective"}, "train": {"device": "auto"},
                                                      "resources": {"gpu": 1}}}}))
        results = tmp_path / "results"
        run = Raygap("run", str(g), "--address", cluster.address, "--results", str(results))
        code, out = run.finish(180)
        lines = [ln for ln in out.splitlines() if ln.startswith("raygap: error")]
        assert code == 2 and len(lines) == 1, out
        assert "--storage" in lines[0] and "2 machines" in lines[0] and "launching" not in out, lines[0]
        grid = load_grid(g)
        store = Store(tmp_path / "store.sqlite")
        cpu = [t for t in grid.trials if t.label == "Concat"]
        gpu = [t for t in grid.trials if t.label == "GPU"]
        removed = {}

        def lose_the_worker():                 # once a trial on the worker node has 2 epochs, remove the node
            reader = Store(tmp_path / "store.sqlite")
            deadline = time.time() + 300
            while time.time() < deadline and not removed:
                for t in cpu:
                    hist = (reader.get(t.key) or {}).get("history") or []
                    if len(hist) >= 2 and hist[-1].get("worker_node") == worker.node_id:
                        cluster.remove_node(worker)
                        removed["key"], removed["reported"] = t.key, hist[-1]["epoch"]
                        return
                time.sleep(0.2)

        th = threading.Thread(target=lose_the_worker)
        th.start()
        said: list[str] = []
        s = run_grid(grid, store, address=cluster.address, storage=(tmp_path / "tune").as_uri(), log=said.append,
                     max_failures=3)
        th.join(30)
        assert removed, "no trial ran on the worker node long enough to lose it"
        assert "several machines: each trial builds its in-memory dataset on its own node" in said
        assert not any("once for all trials" in m for m in said)          # nothing built on the driver
        assert s.done == 2 and sorted(s.failed) == sorted(t.key for t in gpu) and s.exit_code == 1
        for t in cpu:                          # nothing lost: every epoch exactly once
            rec = store.get(t.key)
            assert rec["status"] == "done" and [h["epoch"] for h in rec["history"]] == list(range(6))
        lost = store.get(removed["key"])                # it ran on the worker node (epochs >= 2 there) ...
        assert lost["info"]["node"] != worker.node_id                         # ... and ended on the head ...
        # ... from a checkpoint, recomputing at most checkpoint_every (1) of the epochs it had reported when
        # the node went (the last one reported may be newer than Tune's checkpoint at the kill: seen once)
        resumed_from = lost["info"]["resumed_from_epoch"]
        assert resumed_from is not None and removed["reported"] - resumed_from <= 1, (resumed_from, removed)
        for t in gpu:
            rec = store.get(t.key)
            assert rec["status"] == "failed" and rec["attempts"] == 1 and not rec["history"]
            assert rec["error"].startswith("DeviceUnavailable: the trial holds resources.gpu=1 but CUDA is unusable")
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_worker_node_killed_without_warning_costs_no_retry_and_no_epoch_twice(s3, tmp_path, monkeypatch):
    """A spot preemption: the worker node's raylet is SIGKILLed with every process of that node
    (the machine is gone; no graceful remove_node) while a trial there has a checkpoint. A real
    `raygap run --address ... --max-failures 0 --storage s3://...` (a real S3 server, tests/s3server.py)
    still finishes that trial, on the head, from its newest checkpoint in the bucket, every epoch
    in its history once: the lost node is not counted against --max-failures (Ray Tune 2.60
    counts it: on the old runner the trial failed); once done, its checkpoints leave the bucket."""
    import time

    import psutil
    from _proc import Raygap
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    from s3server import KEYS

    bucket = s3.bucket("raygap-spot")
    for k, v in KEYS.items():                  # the keys in every node's environment, the endpoint in the URI
        monkeypatch.setenv(k, v)
    for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(v, raising=False)
    query = f"?endpoint_override=127.0.0.1:{s3.port}&scheme=http"

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
    cluster.wait_for_nodes()
    raylet = worker.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    run = None
    try:
        g = tmp_path / "spot.yaml"
        base = {**BASE, "train": {**BASE["train"], "epochs": 4, "checkpoint_every": 1}}
        g.write_text(yaml.safe_dump({"name": "spot", "base": base, "seeds": [0, 1], "metrics": ["acc"],
                                     "resources": {"cpu": 1}, "rows": {"Concat": {"method": {"name": "concat"}}}}))
        results = tmp_path / "results"
        run = Raygap("run", str(g), "--address", cluster.address, "--results", str(results),
                     "--storage", f"s3://{bucket}/spot{query}", "--max-failures", "0")
        run.wait_for("launching 2 trial", 240)
        keys = [t.key for t in load_grid(g).trials]
        reader = Store(results / "store.sqlite")
        killed = None
        deadline = time.time() + 240
        while killed is None and time.time() < deadline and run.p.poll() is None:
            for k in keys:                   # once a trial on the worker node has a checkpoint (and epochs after)
                rec = reader.get(k) or {}
                hist = rec.get("history") or []
                if (rec.get("checkpoint_epoch") or -1) >= 1 and hist and hist[-1].get("worker_node") == worker.node_id:
                    procs = [psutil.Process(raylet.pid), *psutil.Process(raylet.pid).children(recursive=True)]
                    for p in procs:          # the raylet first, then its workers: the whole machine
                        p.kill()
                    killed = {"key": k, "checkpoint": rec["checkpoint_epoch"], "last": hist[-1]["epoch"],
                              "uri": rec["checkpoint"], "procs": [p.name() if p.is_running() else p.pid for p in procs]}
                    in_bucket = s3.keys(bucket, "spot/")
                    break
            time.sleep(0.2)
        assert killed, f"no trial ran on the worker node long enough to lose it:\n{run.output[-3000:]}"
        code, out = run.finish(300)
        print(f"killed {killed}\n{out}")
        assert code == 0, out
        label = f"Concat | - | seed {load_grid(g).trials[keys.index(killed['key'])].seed}"
        said = [ln for ln in out.splitlines() if "not counted against --max-failures" in ln]
        assert len(said) == 1 and said[0].strip().startswith(label), out
        store = Store(results / "store.sqlite")
        for k in keys:                       # both done, every epoch exactly once
            rec = store.get(k)
            assert rec["status"] == "done" and [h["epoch"] for h in rec["history"]] == list(range(4)), rec
        lost = store.get(killed["key"])
        assert lost["info"]["node"] != worker.node_id                     # it ended on the head ...
        assert lost["info"]["resumed_from_epoch"] >= killed["checkpoint"]  # ... from its newest checkpoint
        assert killed["last"] - lost["info"]["resumed_from_epoch"] <= base["train"]["checkpoint_every"]
        # the checkpoint it resumed from was in the bucket when the node went; done, none is left there
        assert killed["uri"].startswith(f"s3://{bucket}/spot/") and killed["uri"].endswith(query), killed
        ckpt = killed["uri"].split("?")[0].removeprefix(f"s3://{bucket}/")
        assert any(k.startswith(ckpt + "/") for k in in_bucket), (ckpt, in_bucket)
        after = s3.keys(bucket, "spot/")
        print(f"bucket when the node went: {len(in_bucket)} objects; after: {len(after)}")
        assert not [k for k in after if "/checkpoint_" in k], after
    finally:
        if run is not None:
            run.kill_tree()
        cluster.shutdown()


def test_node_losses_are_told_from_a_trials_own_errors():
    """What Ray Tune 2.60 hands the runner for a failed trial, built as Ray builds it
    (ray/_private/serialization.py), and whether it counts against --max-failures."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    from raygap.runner.failures import node_lost

    dead, live = "d1" * 28, "a1" * 28

    def died(message: str, reason=NodeDeathInfo.UNEXPECTED_TERMINATION):
        return ActorDiedError(cause=ActorDiedErrorContext(error_message=message, actor_id=bytes(16),
                                                          node_death_info=NodeDeathInfo(reason=reason)))

    node_died = died(f"The actor died because its node has died. Node Id: {dead}\n\tthe actor's node was "
                     "terminated unexpectedly: health check failed due to missing too many heartbeats")
    process_died = died("The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR",
                        NodeDeathInfo.UNSPECIFIED)
    alive = {live}
    # the trial's own: its code raised, or its process died on a node still alive (a crash, an OOM kill)
    assert node_lost(RayTaskError("train", "Traceback\nRuntimeError: CUDA error", RuntimeError("CUDA error")),
                     live, alive) is None
    assert node_lost(process_died, live, alive) is None
    assert node_lost(None, live, alive) is None and node_lost(ValueError("x"), live, alive) is None
    # a node loss: the raylet died (the node the error names, or the one the trial last reported from) ...
    assert node_lost(node_died, None, alive) == f"its node {dead[:12]} died"
    assert node_lost(process_died, dead, alive) == f"its node {dead[:12]} died"
    # ... the machine stopped answering (seen before the health check marks its node dead) ...
    unavailable = ActorUnavailableError("The actor is temporarily unavailable: RpcError: Connection reset", bytes(16))
    assert node_lost(unavailable, live, alive) == "its node stopped answering"
    # ... the autoscaler drained it for a preemption (the one case Tune itself does not count) ...
    drained = died("The actor died because its node has died.", NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED)
    assert drained.preempted and node_lost(drained, live, alive) == "its node was drained for a preemption"
    # ... also as the cause of a task error, which Tune unwraps the same way
    assert node_lost(RayTaskError("train", "Traceback", node_died), None, alive) == f"its node {dead[:12]} died"


def test_the_embedded_instance_refuses_to_start_after_ray_was_imported_without_loopback():
    # a program that imported ray before raygap could set the variable: raygap must not start an
    # instance listening on every interface (the positive case, a real `raygap run` bound to
    # loopback only, is checked on its whole process tree in test_interrupts.py)
    code = textwrap.dedent("""
        import psutil
        import ray
        from _proc import listening as sockets_of
        def listening():       # of this process and every process it started (other tests may run beside)
            me = psutil.Process()
            return set(sockets_of([me, *me.children(recursive=True)]))
        before = listening()
        from raygap.errors import ConfigError
        from raygap.runner.cluster import start_ray
        try:
            start_ray(None, 2, print)
        except ConfigError as e:
            print("REFUSED", e.line())
        print("NEW", sorted(listening() - before))
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")]))  # _proc
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "REFUSED --address: Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set" in r.stdout
    assert "NEW []" in r.stdout, r.stdout


# ----------------------------------------------------------------------------- cluster checks, on their own
def _node(ip: str, cpu: float, gpu: float = 0.0) -> dict:
    return {"Alive": True, "NodeManagerAddress": ip, "Resources": {"CPU": cpu, "GPU": gpu}}


def test_several_machines_need_shared_or_cloud_storage(tmp_path):
    from raygap.runner import check_storage

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nserver:/export /mnt/shared nfs4 rw 0 0\n")
    one = [_node("10.0.0.1", 8), _node("10.0.0.1", 8)]              # two Ray nodes, one machine
    two = [_node("10.0.0.1", 8), _node("10.0.0.2", 8, 1)]
    assert check_storage("/home/me/results/ray", one, str(mounts)) is None
    assert check_storage("s3://bucket/raygap", two, str(mounts)) is None
    assert check_storage("/mnt/shared/raygap", two, str(mounts)) is None
    msg = check_storage("/home/me/results/ray", two, str(mounts))
    assert msg and "2 machines" in msg and "local ext4 file system" in msg and "\n" not in msg


def test_node_types_an_autoscaler_may_add_count_in_the_resource_check(tmp_path):
    from raygap.runner import addable_node_types, check_resources

    cfg = tmp_path / "bootstrap.yaml"
    cfg.write_text(yaml.safe_dump({"available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 4},
        "auto": {"node_config": {"InstanceType": "g5.2xlarge"}, "max_workers": 2}}}))
    head_only = [_node("10.0.0.1", 0)]
    want = [{"cpu": 4, "gpu": 0.5}]
    assert "PENDING forever" in check_resources(want, head_only)
    types = {name: (name, c, g) for name, c, g in addable_node_types(str(cfg))}
    assert set(types) == {"gpu", "auto"} and types["gpu"] == ("gpu", 8.0, 1.0)
    gpu_type = [types["gpu"]]
    assert check_resources(want, head_only, gpu_type) is None                 # a GPU worker type can be added
    assert check_resources([{"cpu": 16, "gpu": 1}], head_only, gpu_type)      # bigger than any type: refused
    types = list(types.values())
    assert check_resources([{"cpu": 16, "gpu": 1}], head_only, types) is None  # resources left to the launcher
    assert addable_node_types(str(tmp_path / "none.yaml")) == []


def test_cpu_count_follows_the_affinity_mask_and_the_cgroup_quota(tmp_path):
    from raygap.system import cgroup_cpu_quota, usable_cpus

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")                     # docker --cpus 1.5
    assert cgroup_cpu_quota(tmp_path) == 1.5 and usable_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None and usable_cpus(tmp_path) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 1.0 and usable_cpus(v1) == 1
    # inside `taskset -c 0` the count is 1, whatever the machine has
    r = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                        "from raygap.system import usable_cpus; print(usable_cpus())"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_resume_candidates_newest_first_including_unrecorded_ones(tmp_path):
    from raygap.runner import delete_checkpoint, resume_candidates

    trial = tmp_path / "exp" / "trial-abc"
    for name in ("checkpoint_000002", "checkpoint_000003", "checkpoint_000010", "checkpoint_000001", "notes"):
        (trial / name).mkdir(parents=True)
    (trial / "checkpoint_000011").write_text("a file, not a checkpoint folder")
    rec = str(trial / "checkpoint_000002")
    assert resume_candidates(rec) == [str(trial / "checkpoint_000010"), str(trial / "checkpoint_000003"), rec]
    # the same through a URI: the scheme is kept on every candidate
    assert resume_candidates("file://" + rec) == ["file://" + str(trial / "checkpoint_000010"),
                                                  "file://" + str(trial / "checkpoint_000003"), "file://" + rec]
    assert resume_candidates(str(trial / "notes")) == [str(trial / "notes")]       # not a Tune checkpoint name
    assert resume_candidates(str(tmp_path / "gone" / "checkpoint_000001")) == [str(tmp_path / "gone" / "checkpoint_000001")]
    delete_checkpoint("file://" + str(trial / "checkpoint_000010"), str(tmp_path / "exp"))
    delete_checkpoint(str(trial / "checkpoint_000003"), str(tmp_path / "exp"))
    delete_checkpoint(str(tmp_path / "exp" / "never-there"), str(tmp_path / "exp"))  # nothing to lose: no error
    delete_checkpoint(str(trial / "checkpoint_000001"), str(trial / "checkpoint_000002"))   # not inside: kept
    delete_checkpoint(str(trial / "checkpoint_000001") + "/..", str(trial))                   # ..: kept
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000011",
                                                       "notes"]


def test_trial_checkpoints_lists_older_ones_a_killed_driver_left_and_a_gone_recorded_one_in_its_place(tmp_path):
    # a driver SIGKILLed after recording checkpoint 2 but before Tune deleted checkpoint 1 left 1 behind
    # (seen in the S3 bucket); a failed or finished trial's sweep must see it, resuming must not
    from raygap.runner import resume_candidates, trial_checkpoints

    trial = tmp_path / "exp" / "trial-abc"
    for name in ("checkpoint_000002", "checkpoint_000003", "checkpoint_000010", "checkpoint_000001", "notes"):
        (trial / name).mkdir(parents=True)
    c = {n: str(trial / f"checkpoint_{n:06d}") for n in (1, 2, 3, 10)}
    assert trial_checkpoints(c[2]) == [c[10], c[3], c[2], c[1]]
    assert resume_candidates(c[2]) == [c[10], c[3], c[2]]                       # never an older one
    assert trial_checkpoints("file://" + c[1]) == ["file://" + c[n] for n in (10, 3, 2, 1)]
    assert trial_checkpoints(str(trial / "notes")) == [str(trial / "notes")]
    gone = str(tmp_path / "gone" / "checkpoint_000001")
    assert trial_checkpoints(gone) == [gone]
    # the recorded one deleted by Tune before the driver could record the next: in its place by number
    (trial / "checkpoint_000003").rmdir()
    assert trial_checkpoints(c[3]) == [c[10], c[3], c[2], c[1]]
    assert resume_candidates(c[3]) == [c[10], c[3]]
