"""The schedule replay: what each distinct paper trial does, epoch by epoch, read off the real loop.

For each *section* (a trial's resolved config outside ``data``, ``seed`` and ``resources``)
``raygap.trial.fit`` runs the trial's whole schedule -- its epochs, its method with its params,
checkpoints as the runner asks for them (``final_checkpoint=False``, ``keep_warmup=True``) --
on a tiny in-memory dataset (60 / 12 / 12 samples of 6 classes, 1x1-pixel inputs, the small
backbone): the schedule, not the numbers. The loop is instrumented, not re-implemented: while
it runs, its module-level helpers are wrapped (:class:`Probe`): ``train_step`` counts the
samples of every optimizer step (MLA's two per batch), ``predict_split`` the samples a
method's hooks run forward and over which split (PMR's prototypes, G-Blending's and D&R's
passes, gap_adaptive's validation pass at the switch), ``raygap.checkpoint.save`` the checkpoints, and
``evaluate`` the validation and test evaluations (in the replay replaced by that count: its
metrics steer no schedule); the method's ``on_epoch_start`` / ``on_epoch_end`` are timed, and
whether the method chose the training samples (``st.train_indices``: data purification) is
noted. The counts are kept as fractions of the split sizes, so they hold at the real sizes.

Host work in the hooks (mixture refits, k-means, prototypes) costs what it costs at the real
split sizes: the epochs whose hooks spend host time at the tiny size are flagged, and a second
replay per (section, dataset) at the dataset's real split sizes (the same tiny model, one
training batch per epoch, the trial's CPU allotment) runs until it has passed two flagged
epochs and times their host work (hook time less the forward passes inside). Trials that
share a warm-up start these replays from it, as the runner starts them: it is trained once
per (warm-up, dataset), kept (``keep_warmup``), and the others fork from its end.

The measurement runs of bench/gpu_measure.py use the same :class:`Probe` on the real model.
"""
from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

TINY = {"train": 60, "val": 12, "test": 12, "classes": 6}   # 10 per class: PMR's 10 % subset is exact
HOST_FLOOR_S = 0.003          # flagged: an epoch's hooks spend more host time than this and 3x the quietest epoch's
WINDOW_FLAGGED = 2            # flagged epochs the real-size replay times
WINDOW_MIN_S = 0.05           # ... for sections whose flagged epochs spend this much host time at the tiny size


class Stop(Exception):
    """Raised from the report callback to end a fit() after the epochs wanted."""


class Probe:
    """Per-epoch counts and times of one fit(), taken through the loop's own helpers."""

    def __init__(self, bundle, sync=lambda: None):
        self.bundle, self.sync = bundle, sync
        self.epochs: list[dict] = []
        self.inside_eval = False
        self.inside_hook = False
        self.first_hook_at: float | None = None
        self._new()

    def _new(self):
        self.cur = {"step": 0, "fwd": {}, "eval": {}, "ckpt": 0, "ckpt_s": 0.0, "hook_s": 0.0, "pass_s": 0.0,
                    "restricted": False}

    def split_name(self, split) -> str:
        for name in ("train", "val", "test"):
            if split is getattr(self.bundle, name):
                return name
        return "other"

    def end_epoch(self, record: dict) -> dict:
        n = {s: len(getattr(self.bundle, s)) for s in ("train", "val", "test")}
        c = self.cur
        e = {"epoch": int(record["epoch"]), "step": c["step"] / n["train"], "seen": record["train_n"] / n["train"],
             "fwd": {s: v / n[s] for s, v in c["fwd"].items() if s in n},
             "eval": {s: v / n[s] for s, v in c["eval"].items() if s in n},
             "ckpt": c["ckpt"], "ckpt_s": c["ckpt_s"], "host_s": max(0.0, c["hook_s"] - c["pass_s"]),
             "hook_s": c["hook_s"], "train_s": float(record["train_seconds"]),
             "eval_s": float(record["epoch_seconds"]) - float(record["train_seconds"]),
             "data_pct": record.get("report_data_pct"), "restricted": c["restricted"]}
        self.epochs.append(e)
        self._new()
        return e


@contextmanager
def instrumented(probe: Probe, method_cls, *, stub_eval: bool, write_checkpoints: bool):
    """Wrap raygap.trial's helpers and the method's epoch hooks for the duration."""
    import raygap.checkpoint as C
    import raygap.trial as T

    saved = {k: getattr(T, k) for k in ("train_step", "predict_split", "evaluate")}
    saved["save"] = C.save
    own = {k: method_cls.__dict__.get(k) for k in ("on_epoch_start", "on_epoch_end")}

    def train_step(model, method, batch, st, *a, **kw):
        probe.cur["step"] += len(batch["label"])
        return saved["train_step"](model, method, batch, st, *a, **kw)

    def predict_split(model, method, split, *a, indices=None, **kw):
        n = len(split) if indices is None else len(indices)
        where = "eval" if probe.inside_eval else "fwd"
        name = probe.split_name(split)
        probe.cur[where][name] = probe.cur[where].get(name, 0) + n
        t = time.perf_counter()
        out = saved["predict_split"](model, method, split, *a, indices=indices, **kw)   # (ends with .cpu(): synced)
        if probe.inside_hook:
            probe.cur["pass_s"] += time.perf_counter() - t
        return out

    def evaluate(model, method, split, task="classification", **kw):
        if stub_eval:
            name = probe.split_name(split)
            probe.cur["eval"][name] = probe.cur["eval"].get(name, 0) + len(split)
            return {"acc": 0.0, "macro_f1": 0.0, "mae": 0.0}
        probe.inside_eval = True
        try:
            return saved["evaluate"](model, method, split, task, **kw)
        finally:
            probe.inside_eval = False

    def atomic_save(obj, path):
        probe.cur["ckpt"] += 1
        if write_checkpoints:
            t = time.perf_counter()
            saved["save"](obj, path)
            probe.cur["ckpt_s"] += time.perf_counter() - t

    def timed(name):
        inner = getattr(method_cls, name)

        def hook(self, st, *a, **kw):
            probe.sync()
            t = time.perf_counter()
            if probe.first_hook_at is None:
                probe.first_hook_at = t
            probe.inside_hook = True
            try:
                return inner(self, st, *a, **kw)
            finally:
                probe.cur["restricted"] = st.train_indices is not None   # the method chose the samples
                probe.inside_hook = False
                probe.sync()
                probe.cur["hook_s"] += time.perf_counter() - t
        return hook

    hooks = {k: timed(k) for k in own}
    try:
        T.train_step, T.predict_split, T.evaluate, C.save = train_step, predict_split, evaluate, atomic_save
        for k, h in hooks.items():
            setattr(method_cls, k, h)
        yield probe
    finally:
        for k, v in saved.items():
            setattr(C if k == "save" else T, k, v)
        for k, v in own.items():
            if v is None:
                delattr(method_cls, k)
            else:
                setattr(method_cls, k, v)


def tiny_bundle(n: dict, classes: int, seed: int = 0):
    """Random 1x1-pixel audio and frames, labels cycling through the classes."""
    import torch

    from raygap.data.base import DatasetBundle, ModalitySpec, TensorSplit

    g = torch.Generator().manual_seed(seed)

    def split(k):
        return TensorSplit({"audio": torch.randn(k, 1, 1, 1, generator=g),
                            "visual": torch.randn(k, 1, 3, 1, 1, generator=g)},
                           torch.arange(k) % classes, [str(i) for i in range(k)])

    specs = [ModalitySpec("audio", "spectrogram", (1, 1, 1)), ModalitySpec("visual", "frames", (1, 3, 1, 1))]
    return DatasetBundle("replay", specs, classes, [str(c) for c in range(classes)],
                         split(n["train"]), split(n["val"]), split(n["test"]))


def replay_config(c: dict, threads: int, n: dict | None = None):
    """The trial's config as replayed: the tiny model on the CPU with ``threads``, seed 0;
    with ``n`` (a real-size replay) one training and one evaluation batch per split."""
    from raygap.config import resolve

    big = {"batch_size": n["train"], "eval_batch_size": max(n.values())} if n else {}
    return resolve({**c, "seed": 0, "resources": {"cpu": threads, "gpu": 0},
                    "model": {**c["model"], "backbone": "small", "width": 4},
                    "train": {**c["train"], "device": "cpu", "threads": threads, "channels_last": "off",
                              "compile": False, **big}})


def replay(job: dict) -> dict:
    """One fit() of ``job["config"]`` on a tiny bundle of ``job["n"]`` sizes.

    * plain: every epoch (``cap``: the first ``cap`` only), host work flagged;
    * ``keep`` (a path): a shared warm-up's leader: runs to the warm-up's end, keeps its
      checkpoint there (fit's ``keep_warmup``, as the runner asks for it);
    * ``flagged`` (epochs): a real-size replay, started from the ``resume`` checkpoint when
      given (fit's shared warm-up fork), until ``WINDOW_FLAGGED`` flagged epochs have passed;
      returns their mean host seconds."""
    import shutil

    import torch

    from raygap.registry import METHODS
    from raygap.trial import CHECKPOINT, fit

    torch.set_num_threads(job["threads"])
    n = job["n"]
    real = "flagged" in job or "keep" in job
    cfg = replay_config(job["config"], job["threads"], n if real else None)
    bundle = tiny_bundle(n, job["classes"])
    probe = Probe(bundle)
    flagged = sorted(job.get("flagged") or [])[:WINDOW_FLAGGED]
    until = cfg.warmup()[1] - 1 if "keep" in job else None

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raygap-replay-") as tmp, \
            instrumented(probe, METHODS.get(cfg.method.name).obj, stub_eval=True, write_checkpoints=real):
        def report(record, ckpt_dir):
            probe.end_epoch(record)
            e = record["epoch"]
            if until is not None and e >= until:
                shutil.copyfile(Path(tmp) / CHECKPOINT, job["keep"])
                raise Stop
            if (flagged and e >= flagged[-1]) or (job.get("cap") and e >= job["cap"] - 1):
                raise Stop

        if job.get("resume"):
            shutil.copyfile(job["resume"], Path(tmp) / CHECKPOINT)
        try:
            fit(cfg, bundle, device=torch.device("cpu"), checkpoint_dir=tmp, report=report,
                final_checkpoint=False, keep_warmup=cfg.warmup() is not None)
        except Stop:
            pass
    wall = time.perf_counter() - t0
    if real:
        got = [e["host_s"] for e in probe.epochs if e["epoch"] in set(flagged)]
        return {"host_s": sum(got) / len(got) if got else 0.0, "seconds": wall}
    quiet = min(e["host_s"] for e in probe.epochs)
    for e in probe.epochs:
        e["host"] = e["host_s"] > max(HOST_FLOOR_S, 3 * quiet)
    return {"epochs": probe.epochs, "seconds": wall}


_LIMITS = None


def _limit_threads(n: int) -> None:
    """A replay process runs with a trial's threads: torch's (in ``replay``), OpenMP's, BLAS's."""
    global _LIMITS
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                               # (sklearn brings it; without it: the env var only)
        return
    _LIMITS = threadpool_limits(limits=n)             # numpy's / scipy's / sklearn's pools


def run_pool(jobs: list[dict], workers: int, threads: int) -> list[dict]:
    """``replay`` of every job, ``workers`` processes at a time, each limited to ``threads``."""
    if workers <= 1 or len(jobs) <= 1:                # here, the limits put back afterwards
        import torch

        env, torch_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
        _limit_threads(threads)
        try:
            return [replay(j) for j in jobs]
        finally:
            if _LIMITS is not None:
                _LIMITS.restore_original_limits()
            if env is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env
            torch.set_num_threads(torch_threads)
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_limit_threads, initargs=(threads,)) as pool:
        return list(pool.map(replay, jobs))


def replay_all(trials, sizes: dict, *, cpus: int, cpu_per_trial: float, one_per_method: bool = False,
               size_scale: float = 1.0, cap: int | None = None) -> dict:
    """Schedules of every section of ``trials`` and host seconds per flagged epoch for every
    (section, dataset) whose flagged epochs spend ``WINDOW_MIN_S`` or more at the tiny size.

    Real-size replays of trials that share a warm-up start from it, as the runner starts them:
    the warm-up is trained once per (warm-up, dataset) and the others fork from its end.
    ``one_per_method``: replay only the first section of each method (the others take its
    schedule and host work: counted in the result); ``size_scale`` shrinks the real sizes;
    ``cap``: replays stop after that many epochs and the last epoch stands for the rest (both
    --smoke only)."""
    sections: dict[str, object] = {}
    for t in trials:
        sections.setdefault(t.section, t)
    chosen = {}
    for s, t in sections.items():
        if not one_per_method or all(u.method != t.method for u in chosen.values()):
            chosen[s] = t
    t0 = time.perf_counter()
    jobs = [{"config": t.config.to_dict(), "n": TINY, "classes": TINY["classes"], "threads": 1, "cap": cap}
            for t in chosen.values()]
    sched = {s: r["epochs"] for s, r in zip(chosen, run_pool(jobs, max(1, cpus), 1))}
    for s, ep in sched.items():                      # (cap) the last replayed epoch stands for the rest
        ep.extend({**ep[-1], "epoch": e} for e in range(len(ep), chosen[s].epochs))
    tiny_s = time.perf_counter() - t0
    lead = {s: s if s in chosen else next(c for c, u in chosen.items() if u.method == t.method)
            for s, t in sections.items()}
    mapped = sum(1 for s, c in lead.items() if s != c)
    for s in sections:
        sched[s] = sched[lead[s]]

    threads = max(1, min(int(cpu_per_trial), cpus))
    windows, leaders = {}, {}                        # (section, dataset) -> job; (warm-up, dataset) -> job
    keep = tempfile.TemporaryDirectory(prefix="raygap-warmups-")
    for t in trials:
        s, d = t.section, t.dataset
        flagged = [e for e in sched[s] if e["host"]]
        if s not in chosen or (s, d) in windows or sum(e["host_s"] for e in flagged) < WINDOW_MIN_S:
            continue
        n = {k: max(TINY[k], int(round(sizes[d][k] * size_scale))) for k in ("train", "val", "test")}
        job = {"config": t.config.to_dict(), "n": n, "classes": sizes[d]["classes"], "threads": threads,
               "flagged": [e["epoch"] for e in flagged]}
        w = replay_config(job["config"], threads, n).warmup()
        if w is not None and job["flagged"][0] >= w[1]:
            path = os.path.join(keep.name, f"{w[0]}-{d}.pt")
            leaders.setdefault((w[0], d), {**{k: v for k, v in job.items() if k != "flagged"}, "keep": path})
            job["resume"] = path
        windows[(s, d)] = job
    t1 = time.perf_counter()
    with keep:
        run_pool(list(leaders.values()), max(1, cpus // threads), threads)
        got = dict(zip(windows, (r["host_s"] for r in run_pool(list(windows.values()), max(1, cpus // threads),
                                                                  threads))))
    host = {}
    for t in trials:
        s = lead[t.section]
        if (s, t.dataset) in got:
            host[(t.section, t.dataset)] = got[(s, t.dataset)]
        elif any(e["host"] for e in sched[s]):        # a few ms at the tiny size: counted as measured there
            flagged = [e["host_s"] for e in sched[s] if e["host"]]
            host[(t.section, t.dataset)] = sum(flagged) / len(flagged)
    return {"schedules": sched, "host": host, "replayed": len(chosen), "sections": len(sections), "mapped": mapped,
            "windows": len(windows), "warmups": len(leaders), "tiny_seconds": tiny_s,
            "window_seconds": time.perf_counter() - t1, "window_threads": threads}
