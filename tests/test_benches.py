"""The GPU bench runs from the checkout without Ray, as it must on a lent GPU machine:
its --smoke mode, at reduced shapes on the CPU, prints every section and its ratios; the
projection's arithmetic (bench/gpu_model.py) against hand-computed numbers; the schedule
replay (bench/gpu_replay.py) against what the methods are known to do."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_model as M  # noqa: E402
import gpu_replay as R  # noqa: E402


NO_RAY = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'no_ray'}{os.pathsep}{ROOT}"}   # `ray` fails on import
NUM = r"[\d.]+"


def test_gpu_throughput_smoke_runs_without_ray(tmp_path):
    """Every section and ratio line of the bench, its inputs marked measured / assumed, and a
    projection over the grids' distinct trials as raygap expands them (the bench must never
    import ray: the GPU machine has none, and its packed workers and replay pool inherit that)."""
    from raygap.config import epochs_not_trained_again, warmup_groups
    from raygap.grid import count_trials, load_grid
    from raygap.system import usable_cpus

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--smoke", "--peak-tflops", "2",
                        "--layout", str(tmp_path / "layout"), "--replay-to", str(tmp_path / "replay.json")],
                       capture_output=True, text=True, env=NO_RAY, timeout=540, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    grids = [ROOT / "grids" / f"table{n}.yaml" for n in range(2, 8)]
    distinct, cells = count_trials(grids, profile="paper")
    specs = {}
    for g in grids:
        specs.update(load_grid(g, profile="paper").distinct())
    groups = warmup_groups(specs.values())
    plain = sum(s.config.train.epochs for s in specs.values())
    deferred = sum(len(m) - 1 for m in groups.values() if len(m) > 1)
    m = re.search(r"^grids: (\d+) distinct trials of Tables II-VII \((\d+) table cells\); (\d+) warm-up groups: (\d+) trials "
                  r"start from a shared warm-up \((\d+) epochs not trained again: (\d+) -> (\d+)\); the runner runs (\d+) "
                  r"trials, then the (\d+)", out, re.M)
    assert m, out
    assert distinct > 100 and [int(x) for x in m.groups()] == [
        distinct, cells, len(groups), deferred, epochs_not_trained_again(groups), plain,
        plain - epochs_not_trained_again(groups), distinct - deferred, deferred], out
    assert re.search(r"^device: CPU \(cpu\); torch .*; \d+ usable CPUs; --smoke: small shapes", out, re.M), out
    assert re.search(r"^profile paper: train\.amp none, deterministic True, .* resources\.gpu 0\.5 \(2 trials per GPU\), "
                     r"resources\.cpu 4$", out, re.M), out
    for shape in (r"cremad 1 frame\(s\)", r"ave 4 frame\(s\)", r"ks 3 frame\(s\)"):    # (a): on and off, same shape
        assert re.search(rf"^  {shape} +deterministic on +{NUM} \| +{NUM} +off +{NUM} \| +{NUM} +deterministic cost: "
                         rf"on/off train {NUM}x, eval {NUM}x$", out, re.M), out
    assert re.search(r"^  trial flags \(set by prepare_process, read back\): deterministic True, .*cudnn\.benchmark False", out, re.M), out
    methods = ("concat", "gblending", "ogm_ge", "greedy", "pmr", "mmcosine", "agm", "mla", "dnr", "opm_ogm",
               "gap_adaptive", "warmup_objective")
    line = re.search(r"^  cremad 1 frame\(s\): (.*)$", out[out.index("(e) per-method"):], re.M).group(1)
    assert [p.split()[0] for p in line.split("; ")] == list(methods), line      # (e): every method of the grids
    assert re.search(rf"^  \(b0\) cache batches alone \(no model; streamed, as fit\(\) placed them\) +{NUM}\n  \(b\) cache pipeline +{NUM} +\(b\)/\(a\) {NUM}\n"
                     rf"  \(c\) file pipeline +{NUM} +\(c\)/\(a\) {NUM}", out, re.M), out
    assert re.search(r"^\(d\) packed trials on one device: 2 processes started together, .* released stage by stage "
                     r"until 1, 2 run;", out, re.M), out
    assert re.search(rf"^  cremad 1 frame\(s\): 1 trial\(s\) +{NUM} \(1\.00x of 1, stage {NUM} s\); 2 trial\(s\) +{NUM} "
                     rf"\({NUM}x of 1, stage {NUM} s\)$", out, re.M), out
    assert re.search(r"^  ave 4 frame\(s\): as cremad 1 frame\(s\) \[--smoke measures one shape\]\n"
                     r"  ks 3 frame\(s\): as cremad 1 frame\(s\)", out, re.M), out
    for shape in (r"cremad 1 frame\(s\)", r"ave 4 frame\(s\)", r"ks 3 frame\(s\)"):    # (f)
        assert re.search(rf"^  {shape}: process \+ imports {NUM} s, CUDA {NUM} s, fit\(\) set-up {NUM} s, first epoch's "
                         rf"extra {NUM} s, upload {NUM} GB \(\d+ rows, streamed\) {NUM} s, checkpoint \d+ MB save {NUM} s / "
                         rf"copy {NUM} s / load {NUM} s$",
                         out, re.M), out
    assert re.search(r"^  \d+ of (\d+) sections replayed \(\d+ take their method's first\); \d+ real-size replays", out, re.M), out
    inputs = out[out.index("projection inputs"):out.index("compute limit:")]
    assert len(re.findall(r"^  \[measured\] ", inputs, re.M)) >= 12 and len(re.findall(r"^  \[assumed\]  ", inputs, re.M)) >= 6
    node, cap = 8 * usable_cpus(), min(16, 8 * usable_cpus() // 4)     # 8 GPUs x this machine's CPUs; 4 per trial
    for what in (r"^  \[measured\] cremad 1 frame\(s\): start-up", r"^  \[measured\] ave 4 frame\(s\): checkpoint",
                 r"^  \[measured\] method host work", r"^  \[measured\] cremad 1 frame\(s\): packing 1: 1\.00x, 2: ",
                 r"^  \[assumed\]  ks 3 frame\(s\): packing .*--smoke measures one shape",
                 r"^  \[assumed\]  \d+ sections take the schedule and host work of their method's first section",
                 r"^  \[assumed\]  split sizes \(train / val / test\): cremad 6028 / 670 / 744, ave 3339 / 402 / 402, "
                 r"ks 13319 / 1480 / 2597",
                 rf"^  \[assumed\]  node CPUs {node} \(this machine's {usable_cpus()} usable per visible device x 8; "):
        assert re.search(what, inputs, re.M), what
    assert re.search(r"peak: 2 TFLOPS fp32 dense per device \(--peak-tflops\)", inputs), inputs
    assert re.search(rf"^compute limit: {NUM} h \({NUM} PFLOP of model steps on 8 x CPU at 2 TFLOPS fp32\)", out, re.M), out
    assert re.search(rf"^lower bound: {NUM} h \(pure model steps .* perfect packing: {cap} trials at once", out, re.M), out
    est = re.search(rf"^estimate: {NUM} h \({cap} trials at once: GPU shares allow 16, {node} CPUs / 4 allow {node // 4}; batch 1: "
                    rf"{distinct - deferred} trials {NUM} h, batch 2: {deferred} trials {NUM} h; trial time alone: steps", out, re.M)
    assert est, out
    assert re.search(rf"^ratios: \(b\)/\(a\) {NUM} \(goal >= 0\.90\); \(b\)/\(c\) {NUM}; deterministic on/off train "
                     rf"cremad 1 frame\(s\) {NUM}, ave 4 frame\(s\) {NUM}, ks 3 frame\(s\) {NUM}; 2 packed vs 1 cremad "
                     rf"1 frame\(s\) {NUM}.*; estimate/lower bound {NUM}; lower bound/compute limit {NUM}$", out, re.M), out
    saved = json.loads((tmp_path / "replay.json").read_text())
    assert len(saved["schedules"]) == int(re.search(r"of (\d+) sections replayed", out).group(1))
    assert all(len(ep) == 100 for ep in saved["schedules"].values())      # each trial's 100 epochs


def test_gpu_throughput_refuses_fp16_on_the_cpu():
    """--amp fp16 is honoured or refused: on the CPU, one line and exit 2 (it used to run fp32 silently)."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--smoke", "--amp", "fp16"],
                       capture_output=True, text=True, env=NO_RAY, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert re.fullmatch(r"bench/gpu_throughput\.py: --amp fp16: .*needs CUDA.*\n", r.stderr), r.stderr


# ----------------------------------------------------------------------------- the projection's arithmetic
def test_flops_per_sample_from_the_field_facts():
    # 10.0 GFLOP per 257x188 spectrogram scaled by area, 10.9 per 224^2 frame (field-facts.md)
    assert M.train_gflop((257, 188), 1, 224) == pytest.approx(20.9)
    assert M.train_gflop((1024, 128), 3, 224) == pytest.approx(10.0 * 131072 / 48316 + 32.7)   # 59.828
    assert M.train_gflop((257, 1004), 4, 224) == pytest.approx(10.0 * 1004 / 188 + 43.6)      # 97.004
    assert M.train_gflop((257, 188), 1, 112) == pytest.approx(10.0 + 10.9 / 4)


def test_device_peaks_name_the_precision_and_the_part():
    assert M.peak_tflops("NVIDIA H200", "tf32")[0] == 494.7
    assert M.peak_tflops("NVIDIA H100 PCIe", "fp32")[0] == 51.0
    assert M.peak_tflops("NVIDIA L40S", "bf16")[0] == 362.0
    assert M.peak_tflops("NVIDIA L4", "bf16")[0] == 121.0
    assert M.peak_tflops("NVIDIA A10G", "tf32")[0] == 62.5
    assert M.peak_tflops("CPU", "fp32") is None


def test_packed_rate_counts_each_process_whole_epochs_inside_its_stage():
    # A runs alone at 30/s over [0, 2]; B is released at 2; from then on each makes 10/s
    a = [(0.0, 0.0), (1.0, 30.0), (2.0, 60.0), (3.0, 70.0), (4.0, 80.0)]
    b = [(2.0, 0.0), (3.0, 10.0), (4.0, 20.0)]
    assert M.stage_rate([a], 0.0, 2.0) == pytest.approx(30.0)
    assert M.stage_rate([a, b], 2.0, 4.0) == pytest.approx(10.0 + 10.0)
    # A's epoch from 1 to 2 straddles a window opening at 1.5 (B not yet running): left out
    assert M.stage_rate([a, b], 1.5, 4.0) == pytest.approx(20.0)
    assert (30.0 + 30.0 + 10.0 + 10.0) / 4.0 + 20.0 / 2.0 == pytest.approx(30.0)   # what a rate over all of A gave
    with pytest.raises(ValueError):
        M.stage_rate([a, b], 0.0, 0.5)


def test_concurrency_is_capped_by_the_cpus_too():
    assert M.slots(8, 0.5, 128, 4) == (16, 2, 32)
    assert M.slots(8, 0.5, 48, 4) == (12, 2, 12)      # 16 trials x 4 CPUs do not fit in 48
    assert M.slots(8, 0.25, 64, 2) == (32, 4, 32)
    assert M.gain_at({2: 1.5, 4: 2.5}, 3) == pytest.approx(2.0)


def test_makespan_packs_and_queues_as_the_runner_does():
    g = {"s": {2: 1.5}}
    assert M.makespan([3.0] * 4, ["s"] * 4, 2, 2, 4, g) == pytest.approx(4.0)    # 2 per GPU at 0.75
    assert M.makespan([3.0] * 4, ["s"] * 4, 2, 2, 2, g) == pytest.approx(6.0)    # CPU cap: 2 at once, 1 per GPU
    assert M.makespan([3.0] * 3, ["s"] * 3, 1, 2, 2, g) == pytest.approx(7.0)    # 2 at 0.75 until 4, then 1 alone
    assert M.makespan([2.0, 4.0], ["s", "s"], 2, 2, 4, g) == pytest.approx(4.0)  # spread: one per GPU


def test_trial_seconds_adds_every_part_by_hand():
    ep = [{"epoch": e, "step": 1.0, "seen": 1.0, "fwd": {"train": 0.1}, "eval": {"val": 1.0, "test": 1.0},
           "ckpt": int(e == 1), "host": e >= 1} for e in range(3)]
    n = {"train": 100, "val": 10, "test": 20}
    c = {"step": 0.01, "eval": 0.001, "ckpt": 2.0, "startup": 5.0, "load": 1.0}
    p = M.trial_seconds(ep, 0, n, c, 0.5)
    assert p == pytest.approx({"steps": 3.0, "eval": 0.09, "passes": 0.03, "host": 1.0, "checkpoints": 2.0,
                               "start-up": 5.0, "total": 11.12})
    fork = M.trial_seconds(ep, 1, n, c, 0.5)        # starts from a shared warm-up at epoch 1: loads it
    assert fork["total"] == pytest.approx(2.0 + 0.06 + 0.02 + 1.0 + 2.0 + 6.0)
    assert M.trial_lower(ep, 0, n, 50.0, 100.0) == pytest.approx(300 / 50 + 90 / 100)
    assert M.trial_gflop(ep, 1, n, 20.0) == pytest.approx(20.0 * (200 + 60 / 3))


def test_purified_epochs_train_the_papers_share():
    # an untrained replay may keep every sample (1.0) or some (0.4): the paper's share replaces either
    ep = [{"seen": 1.0, "step": 1.0, "restricted": False}, {"seen": 1.0, "step": 1.0, "restricted": True},
          {"seen": 0.4, "step": 0.4, "restricted": True}]
    out = M.scaled_epochs(ep, 86.04)
    assert out[0]["seen"] == 1.0 and [e["seen"] for e in out[1:]] == pytest.approx([0.8604] * 2)
    assert out[2]["step"] == pytest.approx(0.8604)
    assert M.scaled_epochs(ep, None)[2]["seen"] == 0.4


def test_paper_trials_defer_warmup_members_as_the_runner_does():
    from raygap.config import epochs_not_trained_again
    from raygap.grid import count_trials

    trials, groups, naive = M.paper_trials(ROOT)
    assert (len(trials), naive) == count_trials([ROOT / "grids" / f"{g}.yaml" for g in M.GRIDS], profile="paper")
    assert sum(t.epochs - t.start for t in trials) == sum(t.epochs for t in trials) - epochs_not_trained_again(groups)
    for (_, W), members in groups.items():      # the first member trains the warm-up, the others start at W
        starts = [next(t.start for t in trials if t.key == s.key) for s in members]
        assert starts == ([0] + [W] * (len(members) - 1) if len(members) > 1 else [0])
    assert {t.data_pct for t in trials if t.label == "purify_tau=0.5" and t.dataset == "ks"} == {51.93}


def test_replay_counts_the_loops_own_steps_passes_and_checkpoints():
    """The replay reads the schedule off the real fit(): MLA's two optimizer steps per batch,
    PMR's prototype pass over 10 % of train, gap_adaptive's validation pass and refits from
    the switch on, a checkpoint every 5 epochs; the loop's helpers are restored afterwards."""
    import raygap.checkpoint as C
    import raygap.trial as T
    from raygap.methods.pmr import PMR

    trials, _, _ = M.paper_trials(ROOT)
    first = {}
    for t in trials:
        first.setdefault(t.method, t)
    before = (T.train_step, T.predict_split, T.evaluate, C.save, PMR.__dict__.get("on_epoch_end"))
    got = {m: R.replay({"config": first[m].config.to_dict(), "n": R.TINY, "classes": 6, "threads": 1,
                        "cap": 12 if m == "gap_adaptive" else 5})["epochs"] for m in ("mla", "pmr", "gap_adaptive")}
    assert (T.train_step, T.predict_split, T.evaluate, C.save, PMR.__dict__.get("on_epoch_end")) == before
    assert [e["step"] for e in got["mla"]] == [2.0] * 5 and [e["seen"] for e in got["mla"]] == [1.0] * 5
    assert [e["fwd"] for e in got["pmr"]] == [{"train": 0.1}] * 5
    assert all(e["eval"] == {"val": 1.0, "test": 1.0} for e in got["pmr"])
    assert [e["ckpt"] for e in got["pmr"]] == [0, 0, 0, 0, 1]
    ga = got["gap_adaptive"]
    assert [e["fwd"] for e in ga] == [{}] * 10 + [{"val": 1.0}, {}]
    assert [e["host"] for e in ga[10:]] == [True, True] and not any(e["host"] for e in ga[:10])


def test_data_path_smoke_measures_both_pipelines(tmp_path):
    """bench/data_path.py makes its layout, builds the cache and prints the four rates and the ratios."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "data_path.py"), "--smoke", "--root", str(tmp_path / "l")],
                       capture_output=True, text=True, env=NO_RAY, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for line in ("files", "cache/host", "cache/cpu"):
        assert re.search(rf"^{re.escape(line)} +{NUM} samples/s per core", out, re.M), out
    assert (tmp_path / "l" / "raygap-cache" / "cremad22050-frames1-side32" / "manifest.json").is_file()
    assert re.search(rf"^ratios: cache/host streamed vs files {NUM}x .* host side streamed {NUM} samples/s", out, re.M), out


def test_real_size_replays_fork_from_a_shared_warmup_trained_once():
    """Two Table III trials share their warm-up: it is trained once at the real-size replay's
    sizes and both time their refits from its end, as the runner runs them."""
    trials, _, _ = M.paper_trials(ROOT)
    two = [t for t in trials if t.dataset == "cremad" and t.config.seed == 0 and t.method == "gap_adaptive"
           and t.label in ("Ours (Prob Gap)", "Ours w/o |g_i|² (β=0)")]
    assert len(two) == 2 and two[0].config.warmup() == two[1].config.warmup()
    r = R.replay_all(two, M.DATASETS, cpus=1, cpu_per_trial=1, size_scale=0.02, cap=12)
    assert (r["replayed"], r["warmups"], r["windows"]) == (2, 1, 2)
    assert all(len(ep) == 100 for ep in r["schedules"].values())       # 12 replayed, the last for the rest
    assert all(r["host"][(t.section, "cremad")] > 0 for t in two)
