"""Training throughput at the paper profile's settings, and what it means for Tables II-VII on one node.

Everything is read from the grids under the profile (default ``paper``): the distinct trials
of grids/table2-7.yaml (each once, however many tables share it), their precision
(``train.amp``), deterministic flag, channels-last and compile settings, batch sizes, epochs,
checkpoint interval, each dataset's frames and image size, the packing (``resources.gpu``)
and CPUs (``resources.cpu``) per trial, and the runner's shared warm-ups
(``raygap.config.warmup_groups``: the trials that start from one wait for a second batch).

(a) the model step alone (``raygap.trial.train_step``, Concat) on device-resident tensors of
    each dataset's shape, and the evaluation forward in eval mode: samples/s with the
    deterministic flag on and off (its cost, issue 22 item 8).
(b)/(c) the real loop (``load_data`` + ``fit``) on a generated CREMA-D layout with the tensor
    cache (b) and the file pipeline (c), against (a).
(d) packing: 1 and the profile's number of trials per device (and ``--packs``), separate
    processes started together, each running fit() on the cache pipeline, released stage by
    stage; each stage's aggregate rate from the whole epochs inside it.
(e) per-method costs: fit() of each method of the grids on the cache pipeline (bench/gpu_measure.py).
(f) fixed costs: process start, CUDA start, fit's start-up, a real-size split's upload,
    checkpoint save / copy / load.
(g) the schedule replay (bench/gpu_replay.py): what every distinct trial does epoch by epoch
    (training steps, method passes, checkpoints) and its method's host work at real sizes.
Then the projection on ``--gpus`` such devices (bench/gpu_model.py): the compute limit, a lower
bound and an estimate, and every input marked measured or assumed.

Runs from the checkout without Ray (PYTHONPATH=.). ``--smoke`` runs it at reduced shapes on
the CPU (tests/test_benches.py runs that); its figures are not meaningful.

    PYTHONPATH=. python bench/gpu_throughput.py [--steps 20] [--gpus 8] [--node-cpus N] [--clips-per-class 100]
    PYTHONPATH=. python bench/gpu_throughput.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

import gpu_model as M  # noqa: E402

SMOKE = {"model": {"backbone": "small", "width": 8}, "image_size": 16, "batch": 8, "eval_batch": 16}
MEASURE_N = {"train": 512, "val": 256, "test": 256}
PACK_N = {"train": 256, "val": 64, "test": 64}
SMOKE_N = {"train": 16, "val": 8, "test": 8}


def adjusted(cfg, args):
    """The trial's config as measured here: ``--amp`` over the profile's, --smoke's small shapes
    (and one torch thread: a shared CPU that runs other work makes torch's thread pool wait on it)."""
    from raygap.config import resolve

    d = cfg.to_dict()
    if args.amp:
        d["train"]["amp"] = args.amp
    if args.smoke:
        d["model"] = {**d["model"], **SMOKE["model"]}
        d["data"]["image_size"] = SMOKE["image_size"]
        d["train"].update(batch_size=SMOKE["batch"], eval_batch_size=SMOKE["eval_batch"], threads=1)
    return resolve(d)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="reduced shapes on the CPU: checks the bench, figures not meaningful")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--steps", type=int, default=None, help="timed steps of (a) (default 20; --smoke 2)")
    ap.add_argument("--packs", default="", help="more numbers of packed trials for (d), besides 1 and the profile's")
    ap.add_argument("--gpus", type=int, default=8, help="devices of the projected node")
    ap.add_argument("--node-cpus", type=float, default=None,
                    help="CPUs of the projected node (default: this machine's usable CPUs per device x --gpus)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help="measure and project at this "
                    "precision instead of the profile's train.amp (fp16 needs CUDA)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak at the projected precision, "
                    "where the bench's table has none")
    ap.add_argument("--method-shapes", choices=["first", "all"], default="first",
                    help="(e) on the first dataset's shape only (others scaled by concat's) or on every shape")
    ap.add_argument("--replay", choices=["full", "method"], default=None,
                    help="(g) every distinct section, or one per method (default: full; --smoke: method)")
    ap.add_argument("--replay-to", default=None, help="write (g) as JSON")
    ap.add_argument("--replay-from", default=None,
                    help="read (g) from a JSON --replay-to wrote (host work then as measured there)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers of (c), cache-building processes "
                    "(default min(4, CPUs); --smoke: 0)")
    ap.add_argument("--layout", default=None, help="generated CREMA-D layout (default results/bench/cremad-layout)")
    ap.add_argument("--clips-per-class", type=int, default=200)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def refuse(msg: str) -> None:
    print(f"bench/gpu_throughput.py: {msg}", file=sys.stderr)
    sys.exit(2)


class Took:
    """Prints how long each part took (what a GPU session's budget has to hold)."""

    def __init__(self):
        self.t = time.perf_counter()

    def __call__(self, part: str) -> None:
        now = time.perf_counter()
        print(f"  ({part} took {now - self.t:.0f} s)")
        self.t = now


def load_replay(path: str, trials) -> dict:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        refuse(f"--replay-from {path}: unreadable ({e})")
    missing = {t.section for t in trials} - set(raw["schedules"])
    if missing:
        refuse(f"--replay-from {path}: {len(missing)} of the grids' sections are not in it (a replay of other "
               "grids or another raygap); run without --replay-from")
    raw["host"] = {tuple(k.split("\t")): v for k, v in raw["host"].items()}
    return raw


def main() -> None:
    args = parse()
    if args.worker:
        from gpu_measure import worker

        return worker(json.loads(args.worker))
    import gpu_measure as G
    import gpu_replay as R
    from gpu_engine import engine, make_layout
    from raygap.system import deterministic_cublas, usable_cpus

    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    if args.amp == "fp16" and device.type != "cuda":
        refuse("--amp fp16: fp16 autocast with its GradScaler needs CUDA; this run is on the CPU (nearest: --amp bf16)")
    extra_packs = [int(k) for k in args.packs.split(",") if k.strip()]
    if any(k < 1 for k in extra_packs):
        refuse(f"--packs {args.packs}: numbers of trials must be at least 1")
    steps = args.steps or (1 if args.smoke else 20)
    workers = args.workers if args.workers is not None else (0 if args.smoke else min(4, os.cpu_count() or 1))
    cpus = usable_cpus()
    if args.gpus < 1 or (args.node_cpus is not None and args.node_cpus <= 0):
        refuse(f"--gpus {args.gpus} / --node-cpus {args.node_cpus}: a node needs at least one GPU and some CPUs")
    from raygap.errors import ConfigError

    try:
        trials, groups, naive = M.paper_trials(ROOT, args.profile)
    except ConfigError as e:
        refuse(f"--profile {args.profile}: {e}")
    unknown = sorted({t.dataset for t in trials} - set(M.DATASETS))
    if unknown:
        refuse(f"--profile {args.profile}: its trials train on {', '.join(unknown)}; the projection knows the split "
               f"sizes of {', '.join(M.DATASETS)} only (nearest: --profile paper)")
    t0 = trials[0].config.train
    shares = {(t.gpu, t.cpu) for t in trials}
    if len(shares) != 1:
        refuse(f"profile {args.profile}: trials ask for different resources ({sorted(shares)}); the projection takes one")
    gpu_share, cpu_per_trial = shares.pop()
    if any(t.config.train.deterministic for t in trials):   # as prepare_process, before CUDA starts here
        deterministic_cublas(cuda_started=torch.cuda.is_initialized())
    devices = torch.cuda.device_count() if device.type == "cuda" else 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name} ({device}); torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version() if device.type == 'cuda' else '-'}; {cpus} usable CPUs"
          + ("; --smoke: small shapes on the CPU, one thread, figures not meaningful" if args.smoke else ""))
    per_gpu_profile = M.slots(1, gpu_share, 1e9, 1)[1]
    deferred = sum(1 for t in trials if t.start)
    plain = sum(t.epochs for t in trials)
    from raygap.config import epochs_not_trained_again

    saved = epochs_not_trained_again(groups)
    assert plain - saved == sum(t.epochs - t.start for t in trials), "the bench's deferral disagrees with the runner's"
    amp = args.amp or t0.amp
    print(f"profile {args.profile}: train.amp {t0.amp}" + (f" (measured and projected at --amp {amp})" if args.amp else "")
          + f", deterministic {t0.deterministic}, channels_last {t0.channels_last}, compile {t0.compile}, batch "
          f"{t0.batch_size}, eval batch {t0.eval_batch_size}, checkpoint every {t0.checkpoint_every} epochs, "
          f"resources.gpu {gpu_share:g} ({per_gpu_profile} trials per GPU), resources.cpu {cpu_per_trial:g}")
    print(f"grids: {len(trials)} distinct trials of Tables II-VII ({naive} table cells); {len(groups)} warm-up groups: "
          f"{deferred} trials start from a shared warm-up ({saved} epochs not trained again: {plain} -> {plain - saved}); "
          f"the runner runs {len(trials) - deferred} trials, then the {deferred} that start from a warm-up")

    shapes: dict = {}
    for t in trials:
        shapes.setdefault(t.shape, []).append(t)
    rep = {sh: next((t for t in ts if t.method == "concat"), ts[0]) for sh, ts in shapes.items()}
    label = {sh: f"{sh[0]} {sh[1]} frame(s)" for sh in shapes}
    cfg = {sh: adjusted(rep[sh].config, args) for sh in shapes}

    took = Took()
    print("(a) model step on device-resident tensors (train_step, Concat, batch as the profile), samples/s "
          "train | eval forward (eval mode, eval batch)")
    pure = {}
    for sh in shapes:
        pure[sh] = G.pure_rates(cfg[sh], device, steps, args.smoke, warmup=1 if args.smoke else 3)
        on, off = pure[sh]["on"], pure[sh]["off"]
        print(f"  {label[sh]:16s} deterministic on {on[0]:8.1f} | {on[1]:8.1f}   off {off[0]:8.1f} | {off[1]:8.1f}   "
              f"deterministic cost: on/off train {on[0] / off[0]:.2f}x, eval {on[1] / off[1]:.2f}x")
    flags = pure[next(iter(shapes))]["on"][2]
    print("  trial flags (set by prepare_process, read back): " + ", ".join(f"{k} {v}" for k, v in flags.items()))
    print("  off (torch's defaults, read back): " + ", ".join(f"{k} {v}" for k, v in pure[next(iter(shapes))]["off"][2].items())
          + " (CUBLAS_WORKSPACE_CONFIG cannot be unset once CUDA has started: off keeps the trial's cuBLAS workspace)")
    took("(a)")

    first = next(iter(shapes))
    measure_at = list(shapes) if args.method_shapes == "all" else [first]
    print(f"(e) per-method costs through fit() on the tensor cache (synthetic arrays at the dataset's cached shape), "
          f"epochs after the first; ms per training-step sample | ms per evaluated sample")
    costs = {}
    for sh in shapes:
        methods = {}
        for t in shapes[sh]:
            if sh in measure_at or t.method == "concat":
                methods.setdefault(t.method, adjusted(t.config, args))
        n = SMOKE_N if args.smoke else MEASURE_N
        bundle = G.synthetic_bundle(cfg[sh], n, args.smoke)
        costs[sh] = G.method_costs(methods, bundle, device, 2 if args.smoke else 4, gpu_share)
        del bundle
        print(f"  {label[sh]}: "
              + "; ".join(f"{m} {c['step'] * 1e3:.3f} | {c['eval'] * 1e3:.3f}" for m, c in costs[sh].items()))
    took("(e)")
    place = {sh: G.placement(cfg[sh], device, args.smoke, gpu_share) for sh in shapes}

    layout = Path(args.layout or ROOT / "results" / "bench" / ("cremad-layout-smoke" if args.smoke else "cremad-layout"))
    cshape = next(sh for sh in shapes if sh[0] == "cremad")
    make_layout(layout, 4 if args.smoke else args.clips_per_class, workers, args.smoke, int(cfg[cshape].data.image_size))
    print(f"(b)/(c) engine epoch on a generated CREMA-D layout ({layout}), the profile's concat trial, training samples/s")
    eng = {p: engine(cfg[cshape], p, layout, device, 2 if args.smoke else 4, workers, gpu_share) for p in ("cache", "files")}
    a_train = pure[cshape]["on" if cfg[cshape].train.deterministic else "off"][0]
    print(f"  (b0) cache batches alone (no model; {eng['cache']['placed']}, as fit() placed them) {eng['cache']['alone']:8.1f}")
    print(f"  (b) cache pipeline {eng['cache']['rate']:8.1f}   (b)/(a) {eng['cache']['rate'] / a_train:.2f}")
    print(f"  (c) file pipeline  {eng['files']['rate']:8.1f}   (c)/(a) {eng['files']['rate'] / a_train:.2f}   "
          f"({workers} DataLoader workers)")
    took("real-size uploads, layout, (b)/(c)")

    packs = sorted({1, per_gpu_profile, *extra_packs})
    print(f"(d) packed trials on one device: {max(packs)} processes started together, each running fit() (concat, "
          f"tensor cache on the device), released stage by stage until {', '.join(map(str, packs))} run; aggregate "
          "training samples/s from each one's whole epochs inside its stage")
    pk, gains = {}, {}
    for sh in shapes:
        if args.smoke and sh != cshape:
            continue
        pk[sh] = G.packed(cfg[sh], packs, SMOKE_N if args.smoke else PACK_N, str(device), 1 if args.smoke else 4,
                          args.smoke, gpu_share)
        gains[sh] = {k: pk[sh][k]["rate"] / pk[sh][1]["rate"] for k in packs}
        print(f"  {label[sh]}: " + "; ".join(f"{k} trial(s) {pk[sh][k]['rate']:8.1f} ({gains[sh][k]:.2f}x of 1, stage "
                                            f"{pk[sh][k]['window']:.1f} s)" for k in packs))
    for sh in shapes:                               # (--smoke measures one shape)
        if sh not in pk:
            print(f"  {label[sh]}: as {label[cshape]} [--smoke measures one shape]")
            gains[sh], pk[sh] = gains[cshape], pk[cshape]
    took("(d)")
    print("(f) fixed costs per trial: process start + imports and CUDA start (from (d)'s workers, started together), fit() to its first "
          "epoch and that epoch's extra over the later ones (from (e)'s concat), the real-size training split's upload, "
          "a checkpoint (from (e)'s concat)")
    for sh in shapes:
        c, u = costs[sh]["concat"], place[sh]
        print(f"  {label[sh]}: process + imports {pk[sh][1]['imports_s']:.1f} s, CUDA {pk[sh][1]['cuda_s']:.1f} s, "
              f"fit() set-up {c['startup']:.1f} s, first epoch's extra {c['first_extra']:.1f} s, upload "
              f"{u['gb']:.2f} GB ({u['rows']} rows, {u['where']}) {u['seconds']:.1f} s, checkpoint "
              f"{c.get('ckpt_mb', 0):.0f} MB save {c['ckpt']:.2f} s / copy {c.get('copy', 0):.2f} s / load "
              f"{c.get('load', 0):.2f} s")
    print(f"  load_data on (b)'s layout: {eng['cache']['load_per_clip'] * 1e3:.2f} ms per clip "
          f"({eng['cache']['clips']} clips)")

    print("(g) schedule replay (fit() of every distinct section on a tiny model; host work at real sizes)")
    if args.replay_from:
        replay = load_replay(args.replay_from, trials)
    else:
        replay = R.replay_all(trials, M.DATASETS, cpus=1 if args.smoke else cpus, cpu_per_trial=cpu_per_trial,
                              one_per_method=(args.replay or ("method" if args.smoke else "full")) == "method",
                              size_scale=1 / 50 if args.smoke else 1.0, cap=12 if args.smoke else None)
        if args.replay_to:
            host = {"\t".join(k): v for k, v in replay["host"].items()}
            Path(args.replay_to).write_text(json.dumps({**replay, "host": host}))
    print(f"  {replay['replayed']} of {replay['sections']} sections replayed ({replay['mapped']} take their method's "
          f"first); {replay['windows']} real-size replays of host work (sections x datasets, {replay['warmups']} shared "
          f"warm-ups trained once for them, {replay['window_threads']} thread(s) each)"
          + (" [--smoke: 12 epochs, the last standing for the rest; sizes / 50]" if args.smoke else ""))
    took("(g)")

    from gpu_report import project

    project(args, trials, shapes, label, cfg, pure, costs, place, eng, pk, gains, replay, groups,
            gpu_share=gpu_share, cpu_per_trial=cpu_per_trial, per_gpu=per_gpu_profile, devices=devices,
            cpus=cpus, device=device, name=name, first=first, cshape=cshape, a_train=a_train, amp=amp, flags=flags)


if __name__ == "__main__":
    main()
