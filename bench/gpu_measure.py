"""Device measurements of bench/gpu_throughput.py, each as a paper trial's process would run it.

Every measurement first calls ``raygap.trial.prepare_process(cfg, cpus)`` -- what a trial's
process does before it trains: torch's threads from the trial's ``resources.cpu``, the
deterministic flag of ``train.deterministic`` -- and then builds the model the trial builds
(``build_model``, channels-last as ``train.channels_last`` says, compiled when
``train.compile`` is on). cudnn.benchmark is left as the trials leave it. CUDA work is timed
between ``torch.cuda.synchronize`` calls, after warm-up iterations that are not counted.

* :func:`pure_rates` -- (a): the model step alone (``raygap.trial.train_step`` with Concat) on
  device-resident tensors, and the evaluation forward in eval mode, with the deterministic
  flag on and off.
* :func:`synthetic_bundle` -- a tensor-cache dataset held in memory at a paper dataset's
  cached shapes (``raygap.data.cache.CacheSplit`` over in-memory arrays): the cache
  pipeline's batches (upload once, gather, crop, flip, normalise on the device) for every
  dataset, without the dataset.
* :func:`method_costs` -- (e): ``raygap.trial.fit`` of a grid's trial on that bundle for a few
  epochs, instrumented (bench/gpu_replay.py's Probe): seconds per training-step sample, per
  evaluated sample, fit's start-up, and the checkpoint it writes.
* :func:`packed` / :func:`worker` -- (d): trials as separate processes on the one device,
  started together, each running fit() and reporting the time of every epoch's end on the
  system's monotonic clock; released stage by stage (1, then 2, ... running), each stage's
  aggregate rate from the whole epochs inside it.
* :func:`placement` -- the upload of a real-size training split (``CacheSplit.place``).
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import gpu_model as M
from gpu_replay import Probe, Stop, instrumented

ROOT = Path(__file__).resolve().parent.parent
SMOKE_AUDIO = {"cremad": (16, 12), "ave": (16, 48), "ks": (48, 8)}   # --smoke: small spectrograms


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def audio_hw(dataset: str, smoke: bool) -> tuple[int, int]:
    if smoke:
        return SMOKE_AUDIO[dataset]
    from raygap.data import media

    return {"cremad": media.cremad_front_end, "ave": media.ave_front_end, "ks": media.ks_front_end}[dataset]().shape


def threads_for(cfg, share: int = 1) -> int:
    """The trial's CPUs (resources.cpu), capped by this machine's usable CPUs shared ``share`` ways."""
    from raygap.system import usable_cpus

    return max(1, min(int(cfg.resources.cpu), usable_cpus() // share))


def trial_flags() -> dict:
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn.deterministic": torch.backends.cudnn.deterministic, "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def set_deterministic(cfg, on: bool, defaults: dict) -> None:
    """As the trial's process (prepare_process), or with torch's defaults restored (off)."""
    from raygap.config import resolve
    from raygap.trial import prepare_process

    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = defaults["cudnn.deterministic"]
    torch.backends.cudnn.benchmark = defaults["cudnn.benchmark"]
    if on:
        d = cfg.to_dict()
        prepare_process(resolve({**d, "train": {**d["train"], "deterministic": True}}), threads_for(cfg))


def _model(cfg, bundle_specs, classes, device):
    from raygap.models import build_model
    from raygap.trial import build_optimizer

    model = build_model(bundle_specs, classes, cfg.model).to(device)
    T = cfg.train
    if T.channels_last == "on" or (T.channels_last == "auto" and device.type == "cuda"):
        model.to(memory_format=torch.channels_last)
    if T.compile:                                  # as fit(): two batch shapes compiled, the rest eager
        from raygap.models import compiled

        compiled.compile_fixed_shapes(model, T.batch_size, T.eval_batch_size)
    return model, build_optimizer(cfg.optim, model.parameters())


def pure_rates(cfg, device: torch.device, steps: int, smoke: bool, warmup: int = 3, rounds: int = 2) -> dict:
    """{"on": (train, eval, flags), "off": (...)} samples/s at ``cfg``'s shape, precision and
    layout, the deterministic flag on and off measured side by side: one model, ``rounds``
    rounds in ABBA order (on, off, off, on, ...: neither always first), each mode's first
    round after ``warmup`` uncounted steps (its own kernels), later rounds after one; the
    mean over rounds. ``flags``: torch's settings as read back in that mode."""
    from raygap.data.base import ModalitySpec
    from raygap.methods.base import MethodContext, TrainState
    from raygap.registry import METHODS
    from raygap.trial import autocast, train_step

    d, T = cfg.data.name, cfg.train
    F_, W_ = audio_hw(d, smoke)
    frames, size, classes = int(cfg.data.num_frames), int(cfg.data.image_size), M.DATASETS[d]["classes"]
    specs = [ModalitySpec("audio", "spectrogram", (1, F_, W_)), ModalitySpec("visual", "frames", (frames, 3, size, size))]
    defaults = trial_flags()
    set_deterministic(cfg, bool(T.deterministic), defaults)
    torch.manual_seed(0)
    model, opt = _model(cfg, specs, classes, device)
    method = METHODS.get("concat").obj(None, MethodContext(["audio", "visual"], classes, 1, cfg, device))
    scaler = torch.amp.GradScaler(device.type, enabled=(T.amp == "fp16"))

    def batch(b):
        return {"audio": torch.randn(b, 1, F_, W_, device=device),
                "visual": torch.randn(b, frames, 3, size, size, device=device),
                "label": torch.randint(0, classes, (b,), device=device), "index": torch.arange(b, device=device)}

    tb, eb, sums = batch(T.batch_size), batch(T.eval_batch_size), {}
    st = TrainState(0, int(T.epochs), model, opt, lambda: opt, None, device, predict_split=None, log=lambda s: None)

    def train():
        train_step(model, method, tb, st, opt, scaler, T.amp, device, sums)

    @torch.no_grad()
    def evaluate():
        with autocast(device, T.amp):
            method.predict(model, eb).fused.float()

    got: dict = {"on": [], "off": []}
    flags: dict = {}
    for r in range(rounds):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            set_deterministic(cfg, mode == "on", defaults)
            first = not got[mode]
            model.train()
            tr = rate(train, steps, T.batch_size, device, warmup if first else 1)
            model.eval()
            ev = rate(evaluate, max(1, steps // 2), T.eval_batch_size, device, warmup if first else 1)
            got[mode].append((tr, ev))
            flags[mode] = trial_flags()
    del model, opt, tb, eb
    set_deterministic(cfg, bool(T.deterministic), defaults)
    return {m: (sum(g[0] for g in v) / len(v), sum(g[1] for g in v) / len(v), flags[m]) for m, v in got.items()}


def rate(fn, steps: int, batch: int, device: torch.device, warmup: int) -> float:
    """Samples/s of ``steps`` calls after ``warmup`` uncounted ones, between synchronisations."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def synthetic_bundle(cfg, n: dict, smoke: bool, seed: int = 0, same_rows: bool = False):
    """Train / val / test CacheSplits over in-memory arrays shaped as ``cfg``'s dataset's cache
    (fp16 audio of its front-end, uint8 frames at the cache side, the original frame sizes).
    ``same_rows``: every row one block (a zero-stride view): a real-size split in no memory."""
    from raygap.data.base import DatasetBundle, ModalitySpec
    from raygap.data.cache import Cache, CacheSplit

    d = cfg.data.name
    F_, W_ = audio_hw(d, smoke)
    T, size = int(cfg.data.num_frames), int(cfg.data.image_size)
    side = int(cfg.data.cache_side or size)
    classes = M.DATASETS[d]["classes"]
    total = sum(n.values())
    rng = np.random.default_rng(seed)
    rows = 1 if same_rows else total
    audio = rng.standard_normal((rows, F_, W_), dtype=np.float32).astype(np.float16)
    visual = rng.integers(0, 256, (rows, T, 3, side, side), dtype=np.uint8)
    if same_rows:
        audio, visual = np.broadcast_to(audio, (total, F_, W_)), np.broadcast_to(visual, (total, T, 3, side, side))
    labels = np.arange(total) % classes
    arrays = {"audio": audio, "visual": visual, "labels": labels, "sources": np.zeros(total, np.int64),
              "frame_hw": np.broadcast_to(np.array(M.DATASETS[d]["frame_hw"], np.int32), (total, T, 2))}
    cache = Cache(Path(f"<synthetic {d}>"), {}, arrays, [str(i) for i in range(total)])
    splits, off = {}, 0
    for s in ("train", "val", "test"):
        r = np.arange(off, off + n[s])
        clips = [SimpleNamespace(id=str(i), label=int(labels[i])) for i in r]
        splits[s] = CacheSplit(cache, r, clips, size, train=(s == "train" and bool(cfg.data.train_augment)),
                               preload=cfg.data.preload)
        off += n[s]
    specs = [ModalitySpec("audio", "spectrogram", (1, F_, W_)), ModalitySpec("visual", "frames", (T, 3, size, size))]
    return DatasetBundle(d, specs, classes, [str(c) for c in range(classes)], splits["train"], splits["val"],
                         splits["test"], info={"pipeline": "cache (synthetic arrays in memory)"})


def placement(cfg, device: torch.device, smoke: bool, gpu_share: float) -> dict:
    """Upload of a training split of the dataset's real size: where it lands (on CUDA, resident
    when it fits the slice ``gpu_share`` of the device's memory, less what this process holds:
    ``raygap.data.preload.budget_now``; a trial's own budget also keeps its training step's
    memory free), seconds, GB."""
    from raygap.data import preload

    n = {k: M.DATASETS[cfg.data.name][k] for k in ("train", "val", "test")}
    if smoke:
        n = {k: max(8, v // 50) for k, v in n.items()}
    split = synthetic_bundle(cfg, {"train": n["train"], "val": 1, "test": 1}, smoke, same_rows=True).train
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()                 # the free memory a fresh trial's process sees
    sync(device)
    t0 = time.perf_counter()
    resident = None
    if device.type == "cuda":
        b = preload.budget_now(device, share=gpu_share)
        resident = preload.assign({"train": split.nbytes()}, b.budget, split.preload, b.explain())["train"]
    where = split.place(device, resident=resident)
    sync(device)
    out = {"where": where, "seconds": time.perf_counter() - t0, "gb": split.nbytes() / 1e9, "rows": n["train"]}
    split.resident = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def method_costs(configs: dict, bundle, device: torch.device, epochs: int, gpu_share: float) -> dict:
    """Per method: fit() of its config on ``bundle`` for ``epochs`` epochs (the first not
    counted); seconds per step sample and per evaluated sample, fit's start-up (call to the
    first epoch hook), the first epoch's extra over the later ones (compilation when
    ``train.compile`` is on, first kernel launches: once per trial); for concat a checkpoint
    after every epoch: save, copy, load seconds. ``gpu_share``: the trial's ``resources.gpu``
    (its slice of the device for fit()'s preload budget)."""
    from raygap import checkpoint
    from raygap.config import resolve
    from raygap.registry import METHODS
    from raygap.trial import CHECKPOINT, fit

    out = {}
    for name, cfg in configs.items():
        d = cfg.to_dict()
        cfg = resolve({**d, "train": {**d["train"], "checkpoint": name == "concat", "checkpoint_every": 1}})
        set_deterministic(cfg, bool(cfg.train.deterministic), trial_flags())
        probe = Probe(bundle, sync=lambda: sync(device))

        def report(record, ckpt_dir):
            probe.end_epoch(record)
            if record["epoch"] >= epochs - 1:
                raise Stop

        with tempfile.TemporaryDirectory(prefix="raygap-bench-") as tmp:
            t_call = time.perf_counter()
            with instrumented(probe, METHODS.get(name).obj, stub_eval=False, write_checkpoints=True):
                try:
                    fit(cfg, bundle, device=device, checkpoint_dir=tmp, report=report, final_checkpoint=False,
                        gpu_share=gpu_share)
                except Stop:
                    pass
            ep = probe.epochs[1:] or probe.epochs
            n = {s: len(getattr(bundle, s)) for s in ("train", "val", "test")}
            steps = sum(e["step"] * n["train"] for e in ep)
            evaluated = sum(sum(f * n[s] for s, f in e["eval"].items()) for e in ep)
            r = {"step": sum(e["train_s"] - e["hook_s"] for e in ep) / steps,
                 "eval": sum(e["eval_s"] for e in ep) / max(evaluated, 1),
                 "startup": probe.first_hook_at - t_call,
                 "ckpt": sum(e["ckpt_s"] for e in ep) / max(1, sum(e["ckpt"] for e in ep)),
                 "epochs": len(ep), "n": n}
            e0, later = probe.epochs[0], [e["train_s"] + e["eval_s"] for e in ep]
            r["first_extra"] = max(0.0, e0["train_s"] + e0["eval_s"] - sum(later) / len(later))   # compile, first launches
            path = Path(tmp) / CHECKPOINT
            if path.is_file():
                t = time.perf_counter()
                shutil.copyfile(path, Path(tmp) / "copy.pt")
                r["copy"] = time.perf_counter() - t
                t = time.perf_counter()
                checkpoint.load(Path(tmp) / "copy.pt")          # as a resume or a warm-up fork reads it
                r["load"] = time.perf_counter() - t
                r["ckpt_mb"] = path.stat().st_size / 1e6
        out[name] = r
    return out


# ----------------------------------------------------------------------------- packing
def worker(spec: dict) -> None:
    """One packed trial (a process of its own): fit() on the synthetic bundle; after epoch 0
    says READY and waits for a line on stdin (its release), then notes the monotonic time and
    the cumulative training samples at every epoch's end (``EPOCH time`` on stdout) until the
    file ``spec["stop"]`` exists; prints its points as JSON."""
    from raygap.config import resolve
    from raygap.trial import fit, prepare_process

    t_imported = time.monotonic()
    cfg = resolve(spec["config"])
    prepare_process(cfg, spec["threads"])
    device = torch.device(spec["device"])
    t = time.monotonic()
    if device.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=device)
        sync(device)
    cuda_s = time.monotonic() - t
    bundle = synthetic_bundle(cfg, spec["n"], spec["smoke"])
    stop = Path(spec["stop"])
    points: list = []

    def report(record, ckpt_dir):
        if record["epoch"] == 0:
            print("READY", flush=True)
            sys.stdin.readline()
            points.append((time.monotonic(), 0.0))
            return
        points.append((time.monotonic(), points[-1][1] + record["train_n"]))
        print(f"EPOCH {points[-1][0]!r}", flush=True)
        if stop.exists():
            raise Stop

    with tempfile.TemporaryDirectory(prefix="raygap-pack-") as tmp:
        try:
            fit(cfg, bundle, device=device, checkpoint_dir=tmp, report=report, final_checkpoint=False,
                gpu_share=spec["gpu_share"])
        except Stop:
            pass
    print(json.dumps({"points": points, "imports_s": t_imported - spec["t_spawn"], "cuda_s": cuda_s}), flush=True)


def packed(cfg, ks: list[int], n: dict, device: str, epochs: int, smoke: bool, gpu_share: float) -> dict:
    """{k: aggregate training samples/s of k trials packed on the device, ...} for every k of
    ``ks``, side by side in one set of max(ks) processes started together (as a node's trials
    start): each trains its first epoch (first launches, compile) and waits; then, stage by
    stage, more are released until k run, and a stage lasts until each running one has ended
    ``epochs`` + 1 epochs in it. A stage's rate: :func:`gpu_model.stage_rate` over its window
    (from its first release to the next stage's). Each process holds ``gpu_share`` of the device
    (the profile's ``resources.gpu``), 1/max(ks) where that many do not fit in it."""
    K = max(ks)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    script = str(Path(__file__).with_name("gpu_throughput.py"))
    procs, errs, ends, got = [], [], [], []
    tmp = tempfile.TemporaryDirectory(prefix="raygap-packed-")
    stop = Path(tmp.name) / "stop"

    def failed(i: int, line: str) -> RuntimeError:
        procs[i].kill()
        procs[i].wait(60)
        errs[i].seek(0)
        return RuntimeError(f"packed worker {i} stopped ({line.strip()[:200]!r}): {errs[i].read()[-2000:]}")

    def read(i: int) -> None:
        line = procs[i].stdout.readline()
        if not line.startswith("EPOCH "):
            raise failed(i, line)
        ends[i].append(float(line.split()[1]))

    try:
        for _ in range(K):
            spec = {"config": cfg.to_dict(), "n": n, "device": device, "smoke": smoke, "stop": str(stop),
                    "threads": threads_for(cfg, K), "gpu_share": min(gpu_share, 1.0 / K), "t_spawn": time.monotonic()}
            errs.append(tempfile.TemporaryFile(mode="w+"))
            ends.append([])
            procs.append(subprocess.Popen([sys.executable, script, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=errs[-1], text=True, env=env, cwd=ROOT))
        for i, p in enumerate(procs):
            if (line := p.stdout.readline()).strip() != "READY":
                raise failed(i, line)
        starts, running = [], 0
        for k in sorted(ks):
            starts.append(time.monotonic())
            for p in procs[running:k]:
                p.stdin.write("go\n")
                p.stdin.flush()
            running = k
            for i in range(k):
                while sum(1 for t in ends[i] if t > starts[-1]) < epochs + 1:
                    read(i)
        starts.append(time.monotonic())
        stop.touch()
        for i, p in enumerate(procs):
            while (line := p.stdout.readline()).startswith("EPOCH "):
                pass
            if not line.startswith("{"):
                raise failed(i, line)
            got.append(json.loads(line))
    finally:
        for p in procs:
            if len(got) < K:                          # failed: the others may wait on stdin or train on
                p.kill()
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for e in errs:
            e.close()
        tmp.cleanup()
    fixed = {"imports_s": float(np.mean([g["imports_s"] for g in got])),
             "cuda_s": float(np.mean([g["cuda_s"] for g in got])), "threads": threads_for(cfg, K), "together": K}
    return {k: {"rate": M.stage_rate([g["points"] for g in got[:k]], t0, t1), "window": t1 - t0, **fixed}
            for k, t0, t1 in zip(sorted(ks), starts, starts[1:])}
