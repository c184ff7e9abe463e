"""The projection lines of bench/gpu_throughput.py: its inputs (each measured -- how -- or
assumed -- why), the node's compute limit, a lower bound and an estimate, and the ratios.

* compute limit: the FLOPs of every trained and evaluated sample (bench/gpu_model.py's field
  facts) over ``--gpus`` x the device's dense peak at the projected precision.
* lower bound: every trial's model steps at the pure rates of (a) (deterministic as the
  profile), with perfect packing -- every trial running at its one-trial rate, as many at once
  as the node's GPU shares and CPUs allow -- and no start-up, checkpoint, method extra or
  data pipeline; never below the longest trial.
* estimate: every trial's replayed schedule (g) at the costs measured through fit() on the
  cache pipeline (e), its method's host work at real sizes (g), checkpoints and start-up (f),
  run in the runner's two batches on the node at the measured packing (d).
"""
from __future__ import annotations

import gpu_model as M


def project(args, trials, shapes, label, cfg, pure, costs, place, eng, pk, gains, replay, groups, *,
            gpu_share, cpu_per_trial, per_gpu, devices, cpus, device, name, first, cshape, a_train, amp, flags):
    from gpu_measure import audio_hw

    node_cpus = args.node_cpus if args.node_cpus is not None else cpus / devices * args.gpus
    cap, per_gpu, by_cpu = M.slots(args.gpus, gpu_share, node_cpus, cpu_per_trial)
    det = {sh: "on" if cfg[sh].train.deterministic else "off" for sh in shapes}

    def mcost(sh, m, k):
        if m in costs[sh]:
            return costs[sh][m][k]
        return costs[first][m][k] / costs[first]["concat"][k] * costs[sh]["concat"][k]

    fixed, ckpt, load = {}, {}, {}
    for sh in shapes:
        c, d = costs[sh]["concat"], M.DATASETS[sh[0]]
        clips = d["train"] + d["val"] + d["test"]
        fixed[sh] = (pk[sh][1]["imports_s"] + pk[sh][1]["cuda_s"] + c["startup"] + c["first_extra"]
                     + place[sh]["seconds"] + eng["cache"]["load_per_clip"] * clips)
        ckpt[sh] = c["ckpt"] + c.get("copy", 0.0)
        load[sh] = c.get("copy", 0.0) + c.get("load", 0.0)
    parts, lower, gflop, works = {}, [], 0.0, {1: [], 2: []}
    for t in trials:
        sh, n = t.shape, M.DATASETS[t.dataset]
        ep = M.scaled_epochs(replay["schedules"][t.section], t.data_pct)
        c = {"step": mcost(sh, t.method, "step"), "eval": mcost(sh, t.method, "eval"), "ckpt": ckpt[sh],
             "startup": fixed[sh], "load": load[sh]}
        p = M.trial_seconds(ep, t.start, n, c, replay["host"].get((t.section, t.dataset), 0.0))
        for k, v in p.items():
            parts[k] = parts.get(k, 0.0) + v
        works[2 if t.start else 1].append((p["total"], sh))
        on = pure[sh][det[sh]]      # (the faster where the real loop measured faster: a bound stays a bound)
        lower.append(M.trial_lower(ep, t.start, n, max(on[0], 1 / mcost(sh, "concat", "step")),
                                   max(on[1], 1 / mcost(sh, "concat", "eval"))))
        gflop += M.trial_gflop(ep, t.start, n, M.train_gflop(audio_hw(t.dataset, False), t.frames, t.image_size))
    spans = [M.makespan([w for w, _ in works[b]], [s for _, s in works[b]], args.gpus, per_gpu, cap, gains)
             if works[b] else 0.0 for b in (1, 2)]
    estimate = sum(spans)
    best = max([1.0] + [g / k for gs in gains.values() for k, g in gs.items()])   # (d) above perfect: noise
    bound = max(sum(lower) / (cap * best), max(lower))     # perfect packing, or the measured one where better
    precision = {"none": "tf32" if device.type == "cuda" and flags["cudnn.allow_tf32"] else "fp32"}.get(amp, amp)
    peak = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else M.peak_tflops(name, precision)
    limit = gflop / (args.gpus * peak[0] * 1e3) if peak else None

    print("projection inputs ([measured]: in this run, how; [assumed]: the value and its source):")
    m, a = "  [measured]", "  [assumed] "
    print(f"{m} trials, cells, warm-up groups, batches: raygap.grid.load_grid of grids/table2-7.yaml under "
          f"--profile {args.profile}, raygap.config.warmup_groups / epochs_not_trained_again")
    print(f"{m} precision {amp}, deterministic, channels_last, compile, batch sizes, epochs, checkpoint interval, "
          "frames, image size, packing, CPUs per trial: each trial's resolved config")
    steps, warm = args.steps or (1 if args.smoke else 20), 1 if args.smoke else 3
    for sh in shapes:
        on, off = pure[sh]["on"], pure[sh]["off"]
        print(f"{m} {label[sh]}: pure step {on[0]:.1f} | eval {on[1]:.1f} samples/s deterministic on, {off[0]:.1f} | "
              f"{off[1]:.1f} off ((a): one model, on and off alternated ABBA, {steps} timed steps a round after "
              f"{warm} (1 in later rounds), synchronised)")
        c = costs[sh]["concat"]
        print(f"{m} {label[sh]}: fit() concat {c['step'] * 1e3:.3f} ms per step sample, {c['eval'] * 1e3:.3f} ms per "
              f"evaluated sample ((e): {c['epochs']} epoch(s) after the first, {c['n']['train']} training samples)")
        own = sh == cshape or pk[sh] is not pk[cshape]
        print(f"{m if own else a} {label[sh]}: packing {', '.join(f'{k}: {g:.2f}x' for k, g in gains[sh].items())} "
              + ("((d), whole epochs inside each stage)" if own else f"({label[cshape]}'s (d): --smoke measures one shape)"))
        print(f"{m} {label[sh]}: start-up {fixed[sh]:.1f} s = process + imports {pk[sh][1]['imports_s']:.1f} + CUDA "
              f"{pk[sh][1]['cuda_s']:.1f} + fit() to its first epoch {c['startup']:.1f} + the first epoch's extra "
              f"{c['first_extra']:.1f} + upload of the "
              f"{place[sh]['gb']:.2f} GB training split ({place[sh]['where']}) {place[sh]['seconds']:.1f} + load_data "
              f"{eng['cache']['load_per_clip'] * 1e3:.2f} ms per clip ((b)'s layout) x the dataset's clips")
        print(f"{m} {label[sh]}: checkpoint {c.get('ckpt_mb', 0):.0f} MB: save {c['ckpt']:.2f} s + copy to storage "
              f"{c.get('copy', 0):.2f} s; a warm-up fork copies and loads it ({load[sh]:.2f} s) (local disk)")
    src = (f"{a} read from --replay-from {args.replay_from} (measured by the run that wrote it, on its CPUs)"
           if args.replay_from else None)
    print(f"{src or m} every distinct trial's schedule (steps, method passes, checkpoints per epoch): (g) fit() "
          f"replays ({replay['replayed']} of {replay['sections']} sections)")
    if replay["mapped"]:
        print(f"{a} {replay['mapped']} sections take the schedule and host work of their method's first section "
              "(--replay method" + (", the --smoke default)" if args.smoke else ")"))
    most: dict = {}                                 # the largest per method and dataset
    for t in trials:
        v = replay["host"].get((t.section, t.dataset))
        if v is not None and v > most.get((t.method, t.dataset), -1.0):
            most[(t.method, t.dataset)] = v
    print(f"{a if args.replay_from else m} method host work per flagged epoch at real sizes ((g), "
          f"{replay['window_threads']} threads, " + ("that run's CPU" if args.replay_from else "this CPU")
          + "), the most per method and dataset: "
          + ", ".join(f"{mt} on {d} {v:.2f} s" for (mt, d), v in sorted(most.items(), key=lambda kv: -kv[1])[:6]))
    print(f"{a} node CPUs {node_cpus:g}"
          + (f" (this machine's {cpus} usable per visible device x {args.gpus}; --node-cpus gives the node's)"
             if args.node_cpus is None else " (--node-cpus)"))
    print(f"{a} FLOPs per sample: field facts (ResNet-18 10.9 GFLOP per 224^2 frame per step, 10.0 per 257x188 "
          "spectrogram, other spectrograms scaled by area, a forward pass a third)")
    print(f"{a} peak: " + (f"{peak[0]:g} TFLOPS {precision} dense per device ({peak[1]})" if peak else
                          f"none known for {name} at {precision} (--peak-tflops gives one)"))
    print(f"{a} split sizes (train / val / test): " + ", ".join(
        f"{d} {v['train']} / {v['val']} / {v['test']}" for d, v in M.DATASETS.items())
        + " (the official split files, validation 10 % of train where there is none; docs/datasets.md); "
        "YouTube frames 640x360")
    print(f"{a} a method's step costs the same in every epoch (measured in its first epochs: gap_adaptive's "
          "adaptive-stage steps as its warm-up steps); methods measured on "
          + ("every shape" if args.method_shapes == "all" else f"{label[first]}, other shapes scaled by concat's"))
    print(f"{a} data purification keeps the paper's Table VII share (an untrained replay's share means nothing)")
    print(f"{a} packed trials spread evenly over the GPUs, mixed shapes pack as each alone, host work slows "
          "with packing as device work does; Ray/Tune's own per-trial overhead and the driver's start: 0 (no Ray here)")
    compiles = any(t.config.train.compile for t in trials)
    print(f"{m if compiles else a} compile: " + ("on for some trials: in the first epoch's extra over the later ones "
                                                  "((e), once per trial)" if compiles else "off in the profile: 0 s"))

    total = parts["total"]
    share = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in parts.items() if k != "total")
    smoke = " [--smoke: not meaningful]" if args.smoke else ""
    lim = f"{limit / 3600:.2f} h" if limit is not None else "n/a (no peak)"
    print(f"compute limit: {lim} ({gflop / 1e6:.1f} PFLOP of model steps on {args.gpus} x {name}"
          + (f" at {peak[0]:g} TFLOPS {precision})" if peak else ")") + smoke)
    print(f"lower bound: {bound / 3600:.2f} h (pure model steps at (a)'s rates, perfect packing: {cap} trials at once, "
          f"each at its one-trial rate; no start-up, checkpoints, method extras or data pipeline)"
          + ("; the compute limit, above it, is the stronger bound" if limit and bound < limit else "") + smoke)
    print(f"estimate: {estimate / 3600:.2f} h ({cap} trials at once: GPU shares allow {args.gpus * per_gpu}, "
          f"{node_cpus:g} CPUs / {cpu_per_trial:g} allow {by_cpu}; batch 1: {len(works[1])} trials {spans[0] / 3600:.2f} h, "
          f"batch 2: {len(works[2])} trials {spans[1] / 3600:.2f} h; trial time alone: {share}){smoke}")
    b, c = eng["cache"]["rate"], eng["files"]["rate"]
    ratios = [f"(b)/(a) {b / a_train:.2f} (goal >= 0.90)", f"(b)/(c) {b / c:.2f}",
              "deterministic on/off train "
              + ", ".join(f"{label[sh]} {pure[sh]['on'][0] / pure[sh]['off'][0]:.2f}" for sh in shapes),
              f"{per_gpu} packed vs 1 "
              + ", ".join(f"{label[sh]} {gains[sh].get(per_gpu, float('nan')):.2f}" for sh in shapes),
              f"estimate/lower bound {estimate / bound:.2f}"]
    if limit:
        ratios.append(f"lower bound/compute limit {bound / limit:.2f}")
    print("ratios: " + "; ".join(ratios))
