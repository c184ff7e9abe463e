"""The trial steps of scripts/gpu_check.sh, without Ray: the paper's method (gap_adaptive,
ResNet-18, tensor-cache pipeline, fp32, deterministic) trained, killed and resumed, and forked
from a shared warm-up, on the GPU -- or, with ``--smoke``, at tiny shapes on the CPU.

    python scripts/gpu_trials.py data    --work DIR [--smoke]   # a generated CREMA-D layout + its cache
    python scripts/gpu_trials.py train   --work DIR --out OUT   # `raygap train`, uninterrupted
    python scripts/gpu_trials.py resume  --work DIR --out OUT   # `raygap train` SIGKILLed after an
                                                                # epoch's checkpoint, then run again
    python scripts/gpu_trials.py warmup  --work DIR --out OUT   # a leader keeps its warm-up's end
                                                                # (keep_warmup); a variant starts from it

Everything a trial writes (checkpoints) stays under --work; --out gets small JSON files only.
Histories are compared without timings: on the CPU they must be equal (exit 1 otherwise);
on a GPU the largest difference is printed (exact equality is what train.deterministic claims).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (epochs, warm-up epochs, the epoch whose checkpoint the kill follows): on the GPU, and --smoke
PLAN = {False: (4, 2, 1), True: (3, 1, 0)}
EPOCH_LINE = re.compile(r"^epoch +(\d+)\b")


def trial(work: Path, smoke: bool, **method) -> dict:
    """The trial config: the paper profile's settings, at a few epochs on the generated layout."""
    E, W, _ = PLAN[smoke]
    return {"data": {"name": "cremad", "root": str(work / "layout"), "pipeline": "cache",
                     **({"image_size": 32} if smoke else {})},
            "model": {"backbone": "small", "width": 4} if smoke else {"backbone": "resnet18"},
            "optim": {"name": "sgd", "lr": 0.05 if smoke else 2e-3},
            "method": {"name": "gap_adaptive", "warmup_epochs": W, **method},
            "train": {"epochs": E, "batch_size": 16 if smoke else 64, "device": "cpu" if smoke else "cuda",
                      "amp": "none", "deterministic": True, "checkpoint_every": 1,
                      **({"threads": 2} if smoke else {})}}


def data(work: Path, smoke: bool) -> int:
    """The layout (``make_cremad_layout``; numpy, PIL and soundfile where ffmpeg is missing) and its cache."""
    from raygap.config import resolve
    from raygap.data import cache as tc
    from raygap.data.synth import make_cremad_layout
    from raygap.errors import DataError
    from raygap.registry import DATASETS

    t0 = time.perf_counter()
    root = work / "layout"
    make_cremad_layout(root, 4 if smoke else 20, frame_size=(64, 48) if smoke else (480, 360), seconds=2.5,
                       workers=2 if smoke else 8, allow_without_ffmpeg=True)
    cfg = resolve(trial(work, smoke))
    entry = DATASETS.get("cremad")
    try:
        entry.obj(cfg.params("data"), cfg.common_data())
    except DataError:
        tc.build_dataset("cremad", cfg.params("data"), str(root), workers=2 if smoke else 8, log=print)
    bundle = entry.obj(cfg.params("data"), cfg.common_data())
    print(f"data: layout and cache in {root}: {len(bundle.train)} train / {len(bundle.val)} val / "
          f"{len(bundle.test)} test clips ({time.perf_counter() - t0:.1f} s)")
    return 0


def raygap_train(cfg: dict, trial_dir: Path, log, kill_after: int | None = None) -> tuple[int, list[int]]:
    """``raygap train CONFIG --out trial_dir`` in a child process, its lines through ``log``.
    ``kill_after``: SIGKILL it once it has printed that epoch's line (printed after the
    epoch's checkpoint is written). Returns (exit status, the epochs it printed)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    path = trial_dir.parent / f"{trial_dir.name}.json"
    path.write_text(json.dumps(cfg))                       # JSON is YAML
    p = subprocess.Popen([sys.executable, "-m", "raygap", "train", str(path), "--out", str(trial_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    epochs = []
    for line in p.stdout:
        log("    | " + line.rstrip())
        if m := EPOCH_LINE.match(line):
            epochs.append(int(m.group(1)))
            if kill_after is not None and epochs[-1] >= kill_after:
                p.send_signal(signal.SIGKILL)
                break
    p.stdout.close()
    return p.wait(), epochs


def history(trial_dir: Path) -> list[dict]:
    return json.loads((trial_dir / "result.json").read_text())["history"]


def largest_difference(a: list[dict], b: list[dict]) -> tuple[float, str, list[str]]:
    """The largest absolute difference between two histories' numbers (timings and the
    device's name left out), where it is, and what differs otherwise (epochs, keys, strings)."""
    odd = [] if len(a) == len(b) else [f"{len(a)} vs {len(b)} epochs"]
    worst, where = 0.0, ""
    for ra, rb in zip(a, b):
        keep = lambda r: {k: v for k, v in r.items() if not k.endswith("_seconds") and k != "device"}  # noqa: E731
        ra, rb = keep(ra), keep(rb)
        if set(ra) != set(rb):
            odd.append(f"epoch {ra.get('epoch')}: keys {sorted(set(ra) ^ set(rb))}")
        for k in sorted(set(ra) & set(rb)):
            x, y = ra[k], rb[k]
            if x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
                continue
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                d = abs(x - y) if math.isfinite(x - y) else math.inf
                if d > worst:
                    worst, where = d, f"{k} at epoch {ra.get('epoch')}"
            else:
                odd.append(f"epoch {ra.get('epoch')}: {k} {x!r} vs {y!r}")
    return worst, where, odd


def verdict(name: str, diff: tuple[float, str, list[str]], smoke: bool) -> bool:
    """Print the comparison; on the CPU (smoke) anything but equality fails."""
    worst, where, odd = diff
    print(f"{name}: largest difference from the trial trained uninterrupted/alone: {worst:.3g}"
          + (f" ({where})" if where else "") + (f"; also differs: {'; '.join(odd[:5])}" if odd else ""))
    if smoke and (worst != 0 or odd):
        print(f"{name}: FAILED: on the CPU the histories must be equal")
        return False
    return True


def train(work: Path, out: Path, smoke: bool) -> int:
    E, _, _ = PLAN[smoke]
    t0 = time.perf_counter()
    rc, epochs = raygap_train(trial(work, smoke), work / "train", print)
    (out / "train").mkdir(parents=True, exist_ok=True)
    for f in ("result.json", "config.json"):               # small; the checkpoint stays in --work
        if (work / "train" / f).is_file():
            shutil.copy2(work / "train" / f, out / "train" / f)
    ok = rc == 0 and epochs == list(range(E))
    print(f"train: raygap train exit {rc}, epochs {epochs} ({time.perf_counter() - t0:.1f} s)"
          + ("" if ok else f"; FAILED: expected exit 0 and epochs {list(range(E))}"))
    return 0 if ok else 1


def resume(work: Path, out: Path, smoke: bool) -> int:
    import torch

    from raygap.trialfiles import CHECKPOINT

    E, _, KILL_AFTER = PLAN[smoke]
    t0 = time.perf_counter()
    cfg, d = trial(work, smoke), work / "resume"
    shutil.rmtree(d, ignore_errors=True)
    rc1, first = raygap_train(cfg, d, print, kill_after=KILL_AFTER)
    rep = {"killed_after_epoch": first[-1] if first else None, "first_exit": rc1}
    ck = d / CHECKPOINT
    if rc1 != -signal.SIGKILL or not ck.is_file():
        print(f"resume: FAILED: the first run should be killed after epoch {KILL_AFTER}'s checkpoint; "
              f"exit {rc1}, epochs {first}, checkpoint {'present' if ck.is_file() else 'missing'}")
        return 1
    rep["checkpoint_epoch"] = int(torch.load(ck, map_location="cpu", weights_only=False)["epoch"])
    rc2, second = raygap_train(cfg, d, print)
    rep.update(second_exit=rc2, resumed_epochs=second)
    want = list(range(rep["checkpoint_epoch"] + 1, E))
    ok = rc2 == 0 and second == want and len(history(d)) == E
    print(f"resume: killed after epoch {rep['killed_after_epoch']} (checkpoint of epoch {rep['checkpoint_epoch']}); "
          f"run again: exit {rc2}, trained epochs {second}" + ("" if ok else f"; FAILED: expected exit 0 and epochs {want}"))
    if ok:
        ref = work / "train"                               # the train step's uninterrupted run, if it is this trial
        if not ((ref / "result.json").is_file() and json.loads((ref / "config.json").read_text())["key"]
                == json.loads((d / "config.json").read_text())["key"]):
            ref = work / "resume-reference"
            shutil.rmtree(ref, ignore_errors=True)
            rc3, _ = raygap_train(cfg, ref, print)
            ok = rc3 == 0
        if ok:
            diff = largest_difference(history(d), history(ref))
            rep.update(max_abs_diff=diff[0], largest_at=diff[1], other_differences=diff[2])
            ok = verdict("resume", diff, smoke)
    rep.update(ok=ok, seconds=round(time.perf_counter() - t0, 1))
    (out / "resume.json").write_text(json.dumps(rep, indent=1))
    return 0 if ok else 1


def warmup(work: Path, out: Path, smoke: bool) -> int:
    from raygap.config import resolve
    from raygap.trial import CHECKPOINT, run_trial

    E, W, _ = PLAN[smoke]
    t0 = time.perf_counter()
    base = trial(work, smoke)
    base["train"]["checkpoint_every"] = 100                # no regular checkpoint: only the warm-up's end
    lead = resolve(base)
    variant = resolve({**base, "method": {**base["method"], "rho": 0.5}})     # rho acts after the switch
    assert variant.warmup() == lead.warmup() and variant.key() != lead.key()
    fork = work / "warmup" / "fork"
    shutil.rmtree(work / "warmup", ignore_errors=True)
    fork.mkdir(parents=True)

    def keep(record, ckpt):                                # what the runner does with a leader's warm-up end
        if ckpt is not None and record["epoch"] == W - 1:
            shutil.copy2(Path(ckpt) / CHECKPOINT, fork / CHECKPOINT)

    say = lambda s: print("    | " + s)  # noqa: E731
    led = run_trial(lead, checkpoint_dir=work / "warmup" / "lead", keep_warmup=True, report=keep,
                    final_checkpoint=False, log=say)
    ran = []
    forked = run_trial(variant, checkpoint_dir=fork, report=lambda r, _c: ran.append(r["epoch"]),
                       final_checkpoint=False, log=say)
    alone = run_trial(variant, checkpoint_dir=work / "warmup" / "alone", final_checkpoint=False, log=say)
    rep = {"leader": lead.key(), "variant": variant.key(), "warmup_key": lead.warmup()[0],
           "forked_trained_epochs": ran, "warmup_from": forked.info.get("warmup_from")}
    ok = ran == list(range(W, E)) and rep["warmup_from"] == lead.key()
    print(f"warmup: leader {lead.key()} kept its warm-up's end (epoch {W - 1}); variant rho=0.5 started from it, "
          f"trained epochs {ran}" + ("" if ok else f"; FAILED: expected epochs {list(range(W, E))} from {lead.key()}"))
    diff = largest_difference(forked.history, alone.history)
    diff[2].extend(f"metric {k}" for k in sorted(set(forked.metrics) | set(alone.metrics))
                   if smoke and forked.metrics.get(k) != alone.metrics.get(k))
    rep.update(max_abs_diff=diff[0], largest_at=diff[1], other_differences=diff[2], leader_acc=led.metrics.get("acc"))
    ok = verdict("warmup", diff, smoke) and ok
    rep.update(ok=ok, seconds=round(time.perf_counter() - t0, 1))
    (out / "warmup.json").write_text(json.dumps(rep, indent=1))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["data", "train", "resume", "warmup"])
    ap.add_argument("--work", required=True, help="scratch folder (trial folders, checkpoints, the layout)")
    ap.add_argument("--out", default=None, help="folder for the small JSON results")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    out = Path(a.out or work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.step == "data":
        return data(work, a.smoke)
    return {"train": train, "resume": resume, "warmup": warmup}[a.step](work, out, a.smoke)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
