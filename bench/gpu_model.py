"""The arithmetic of bench/gpu_throughput.py's projection: no torch, no measurement.

* :func:`paper_trials` -- the distinct trials of grids/table2-7.yaml under a profile, each once
  however many tables share it, with the runner's shared warm-ups
  (``raygap.config.warmup_groups``): in each group the first member trains the warm-up and the
  others are deferred to a second batch that starts at epoch W (``raygap.runner.plan_warmups``
  on a fresh store).
* FLOPs per sample (field facts) and device peaks (vendor datasheets) for the compute limit.
* :func:`stage_rate` -- the aggregate rate of packed processes over a window in which all of
  them run, from their whole epochs inside it.
* :func:`trial_seconds` / :func:`trial_lower` / :func:`trial_gflop` -- one trial's cost from
  its replayed schedule (bench/gpu_replay.py) and the measured unit costs.
* :func:`makespan` -- the node's wall time for a batch of trials: the runner's queue on
  ``gpus`` devices, ``per_gpu`` trials per device, at most ``cap`` at once (the CPU limit).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

GRIDS = [f"table{n}" for n in range(2, 8)]

# The paper datasets' splits (the official split files, docs/datasets.md; validation carved
# 10 % from train where the dataset has none) and classes; frame_hw: the original frame size
# the cache keeps (CREMA-D's 480x360 video; YouTube clips assumed 640x360).
DATASETS = {
    "cremad": {"train": 6028, "val": 670, "test": 744, "classes": 6, "frame_hw": (360, 480)},
    "ave": {"train": 3339, "val": 402, "test": 402, "classes": 28, "frame_hw": (360, 640)},
    "ks": {"train": 13319, "val": 1480, "test": 2597, "classes": 31, "frame_hw": (360, 640)},
}

# /work/shared/field-facts.md, "Speed facts": ResNet-18 training step (forward + backward) at
# 3x224^2 = 10.9 GFLOP per frame (1.81 G multiply-adds forward x 2 x 3); the 1x257x188
# spectrogram = 10.0 GFLOP. Other spectrograms: scaled by area (a conv's FLOPs grow with its
# output's area; the 1-channel conv1 is already in the 10.0). A forward pass is a third of a step.
GFLOP_FRAME_224 = 10.9
GFLOP_SPEC_257x188 = 10.0
FORWARD_SHARE = 1.0 / 3.0

# Dense (no sparsity) tensor / CUDA-core peaks in TFLOPS from the vendors' datasheets, first
# match of the device name wins. tf32: the peak cuDNN convolutions reach in fp32 when
# torch.backends.cudnn.allow_tf32 is on (torch's default); fp32: CUDA cores.
PEAKS = [
    (r"H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, "H200 SXM datasheet"),
    (r"H100.*PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}, "H100 PCIe datasheet"),
    (r"H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, "H100 SXM datasheet"),
    (r"A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, "A100 datasheet"),
    (r"L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0}, "L40S datasheet"),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}, "L4 datasheet"),
    (r"A10G?\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}, "A10 datasheet (A10G assumed equal)"),
    (r"RTX 3090", {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0}, "GeForce RTX 3090 (GA102) whitepaper"),
]


def train_gflop(audio_hw: tuple[int, int], frames: int, image_size: int) -> float:
    """GFLOP of one training sample (both encoders, forward + backward)."""
    spec = GFLOP_SPEC_257x188 * audio_hw[0] * audio_hw[1] / (257 * 188)
    return spec + frames * GFLOP_FRAME_224 * (image_size / 224) ** 2


def peak_tflops(device_name: str, precision: str) -> tuple[float, str] | None:
    """(dense peak TFLOPS, source) of a device at ``fp32``/``tf32``/``bf16``/``fp16``, or None."""
    for pattern, peaks, source in PEAKS:
        if re.search(pattern, device_name):
            return peaks[precision], source
    return None


def stage_rate(series: list[list[tuple[float, float]]], t0: float, t1: float) -> float:
    """Aggregate rate of processes that all run throughout [t0, t1].

    ``series[p]``: process p's points ``(time, cumulative samples)`` at its epoch ends, on one
    clock. Each process counts only its whole epochs inside the window (an epoch from point a
    to point b with t0 <= a and b <= t1: its rate is measured while all of them ran); the
    aggregate is the sum of those rates. Raises where a process has no whole epoch inside."""
    total = 0.0
    for p, s in enumerate(series):
        inside = [(tb - ta, nb - na) for (ta, na), (tb, nb) in zip(s, s[1:]) if ta >= t0 and tb <= t1]
        if not inside:
            raise ValueError(f"process {p} has no whole epoch inside the window {t0:.3f} .. {t1:.3f}")
        total += sum(n for _, n in inside) / sum(d for d, _ in inside)
    return total


def slots(gpus: int, gpu_share: float, node_cpus: float, cpu_per_trial: float) -> tuple[int, int, int]:
    """(trials at once, trials per GPU the shares allow, trials the CPUs allow)."""
    per_gpu = int(math.floor(1.0 / gpu_share + 1e-9)) if gpu_share > 0 else 1
    by_cpu = int(math.floor(node_cpus / cpu_per_trial + 1e-9)) if cpu_per_trial > 0 else gpus * per_gpu
    return min(gpus * per_gpu, by_cpu), per_gpu, by_cpu


def gain_at(gains: dict[int, float], n: int) -> float:
    """Aggregate speed of ``n`` packed trials in units of one alone, from the measured
    ``gains`` ({1: 1.0, k: measured}); linear between measured counts."""
    pts = sorted({1: 1.0, **gains}.items())
    if n <= pts[0][0]:
        return pts[0][1] * n / pts[0][0]
    for (a, ga), (b, gb) in zip(pts, pts[1:]):
        if a <= n <= b:
            return ga + (gb - ga) * (n - a) / (b - a)
    raise ValueError(f"{n} packed trials: beyond the measured {pts[-1][0]}")


def makespan(works: list[float], shapes: list, gpus: int, per_gpu: int, cap: int, gains: dict) -> float:
    """Seconds until every trial is done: trials start in order whenever fewer than ``cap``
    run and some GPU holds fewer than ``per_gpu`` (the least loaded one: trials assumed
    spread evenly); a trial alone needs ``works[i]`` seconds, with n on its GPU it runs at
    ``gain_at(gains[shape], n) / n`` of that speed."""
    queue = list(range(len(works)))
    running: dict[int, list] = {}
    load = [0] * gpus
    t = 0.0
    while queue or running:
        while queue and len(running) < cap:
            g = min(range(gpus), key=lambda j: load[j])
            if load[g] >= per_gpu:
                break
            i = queue.pop(0)
            running[i] = [g, works[i]]
            load[g] += 1
        if not running:
            raise ValueError("no trial can start: cap or per_gpu is 0")
        speed = {i: gain_at(gains[shapes[i]], load[g]) / load[g] for i, (g, _) in running.items()}
        dt = min(rem / speed[i] for i, (_, rem) in running.items())
        t += dt
        for i in list(running):
            running[i][1] -= speed[i] * dt
            if running[i][1] <= 1e-9 * max(1.0, works[i]):
                load[running[i][0]] -= 1
                del running[i]
    return t


# ----------------------------------------------------------------------------- the trials
@dataclass
class Trial:
    key: str
    label: str
    dataset: str
    frames: int
    image_size: int
    method: str
    section: str          # the config outside data, seed and resources: what the replay runs
    config: object        # the TrialConfig
    epochs: int
    start: int            # 0, or W for a trial deferred to start from a shared warm-up
    cpu: float
    gpu: float
    data_pct: float | None   # the paper's Table VII figure for this cell, where it has one

    @property
    def shape(self) -> tuple:
        t = self.config.train
        return (self.dataset, self.frames, self.image_size, t.amp, bool(t.deterministic), t.channels_last,
                bool(t.compile), int(t.batch_size), int(t.eval_batch_size))


def section_of(cfg) -> str:
    d = cfg.to_dict()
    return json.dumps({k: v for k, v in d.items() if k not in ("data", "seed", "resources")}, sort_keys=True)


def paper_trials(root: Path, profile: str = "paper") -> tuple[list[Trial], dict, int]:
    """The distinct trials of Tables II-VII (each once), the warm-up groups and the naive
    cell count (the sum of every grid's cells)."""
    from raygap.config import warmup_groups
    from raygap.grid import load_grid

    specs, paper, naive = {}, {}, 0
    for name in GRIDS:
        g = load_grid(root / "grids" / f"{name}.yaml", profile=profile)
        naive += len(g.trials)
        for key, s in g.distinct().items():
            specs.setdefault(key, s)
            pct = (g.paper.get(s.label) or {}).get(s.column.get("data.name"), {}).get("data_pct")
            if pct is not None:
                paper.setdefault(key, float(pct))
    groups = warmup_groups(specs.values())
    deferred = {s.key: W for (_, W), members in groups.items() if len(members) > 1 for s in members[1:]}
    out = []
    for key, s in specs.items():
        c = s.config.to_dict()
        out.append(Trial(key, s.label, c["data"]["name"], int(c["data"].get("num_frames", 1)),
                         int(c["data"].get("image_size", 224)), c["method"]["name"], section_of(s.config),
                         s.config, int(c["train"]["epochs"]), deferred.get(key, 0),
                         float(s.resources.get("cpu", 1)), float(s.resources.get("gpu", 0)), paper.get(key)))
    return out, groups, naive


# ----------------------------------------------------------------------------- one trial's cost
def scaled_epochs(replay: list[dict], data_pct: float | None) -> list[dict]:
    """The replayed epochs, with the training share of the epochs in which the method chose
    the training samples (``restricted``: data purification) set from the paper's figure for
    the cell: what an untrained replay keeps says nothing about what a trained model keeps."""
    out = []
    for e in replay:
        e = dict(e)
        if data_pct is not None and e.get("restricted") and e["seen"] > 0:
            f = (data_pct / 100.0) / e["seen"]
            e["seen"], e["step"] = e["seen"] * f, e["step"] * f
        out.append(e)
    return out


def trial_seconds(epochs: list[dict], start: int, n: dict, c: dict, host_s: float) -> dict[str, float]:
    """Seconds of one trial alone on a device, by part. ``epochs``: its replayed schedule;
    ``n``: split sizes; ``c``: unit costs (``step``, ``eval`` seconds per sample, ``ckpt``,
    ``startup``, ``load`` seconds); ``host_s``: seconds of method host work per epoch that has
    some (``host``)."""
    run = epochs[start:]
    parts = {
        "steps": sum(e["step"] for e in run) * n["train"] * c["step"],
        "eval": _evaluated(run, n) * c["eval"],
        "passes": sum(sum(f * n[s] for s, f in e["fwd"].items()) for e in run) * c["eval"],
        "host": sum(1 for e in run if e["host"]) * host_s,
        "checkpoints": sum(e["ckpt"] for e in run) * c["ckpt"],
        "start-up": c["startup"] + (c["load"] if start else 0.0),
    }
    parts["total"] = sum(parts.values())
    return parts


def trial_lower(epochs: list[dict], start: int, n: dict, train_rate: float, eval_rate: float) -> float:
    """Seconds of the model steps alone: every trained sample once at the pure training rate
    and validation + test at the pure evaluation rate, every epoch trained."""
    run = epochs[start:]
    return sum(e["seen"] for e in run) * n["train"] / train_rate + _evaluated(run, n) / eval_rate


def trial_gflop(epochs: list[dict], start: int, n: dict, gflop: float) -> float:
    """GFLOP of the same work as :func:`trial_lower`."""
    run = epochs[start:]
    return gflop * (sum(e["seen"] for e in run) * n["train"] + FORWARD_SHARE * _evaluated(run, n))


def _evaluated(run: list[dict], n: dict) -> float:
    return sum(sum(e["eval"].get(s, 0.0) * n[s] for s in ("val", "test")) for e in run)
