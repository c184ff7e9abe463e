"""The paper profile of every shipped grid (Tables II-VII, cpsl), end to end at toy scale on the CPU.

What the paper profile runs on a GPU cluster -- CREMA-D, AVE and Kinetics-Sounds prepared by
`raygap prepare` into their layouts and tensor caches, CMU-MOSI from its features file, ResNet-18
encoders, every row of every grid through the real runner (Ray Tune), tables exported -- here on
raw media that ffmpeg makes (a few clips per class, small frames), for 3 epochs and one seed. It
checks that every path the paper profile takes works, not any number: nothing here is comparable
with the paper.

Steps: (1) raw downloads' layouts made with ffmpeg (CREMA-D: AudioWAV/*.wav + VideoFlash/*.flv;
AVE: AVE/*.mp4 + the three lists; KS: class folders of mp4s + my_train/my_test), MOSI's
aligned_50.pkl in MMSA's format; (2) `raygap prepare` for each, then `raygap cache` at the toy frame
size; (3) the grids expanded with the paper profile plus a toy overlay (written to a temporary
profiles folder as `paper`: 3 epochs, 32 px frames, batch 8, one seed, CPU, schedules moved to
epoch 1) and run with `raygap.runner.run_grid` on a local Ray; (4) tables exported. Prints, per grid,
the trials run / failed and the wall time, and exits 1 if any trial failed.

    .venv/bin/python bench/paper_toy.py [--root results/bench/paper-toy] [--grids table2,table3,...]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")      # before Ray is imported

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from raygap.system import ffmpeg_exe  # noqa: E402

GRIDS = ["table2", "table3", "table4", "table5", "table6", "table7", "cpsl"]
SIDE = 32
# the toy overlay, on top of the paper profile's own (which it copies): what makes every row act
# within three epochs (D&R re-initializes after epoch 1 at the earliest)
TOY = {"overlay": {"model": {"backbone": "resnet18"},
                   "train": {"epochs": 3, "batch_size": 8, "device": "cpu", "threads": 1, "num_workers": 0,
                             "checkpoint_every": 1}},
       "overlay_by": {"method.name": {"gap_adaptive": {"method": {"warmup_epochs": 1}},
                                      "opm_ogm": {"method": {"warmup_epochs": 1}},
                                      "gblending": {"method": {"super_epoch": 1}},
                                      "dnr": {"method": {"every": 1}}},
                      "data.name": {d: {"data": {"image_size": SIDE}} for d in ("cremad", "ave", "ks")}},
       "seeds": [0], "resources": {"cpu": 1, "gpu": 0}}


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def video(path: Path, seconds: int, freq: float, size: str = "96x72") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=5:duration={seconds},hue=h={freq % 360:.0f}",
           "-f", "lavfi", "-i", f"sine=frequency={freq:.0f}:sample_rate=44100:duration={seconds}",
           "-shortest", "-pix_fmt", "yuv420p", str(path))


def raw_cremad(raw: Path, per_class: int) -> None:
    emotions = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    clips = [f"{1001 + j}_DFA_{e}_XX" for e in emotions for j in range(per_class)]
    for i, c in enumerate(clips):
        (raw / "AudioWAV").mkdir(parents=True, exist_ok=True)
        ffmpeg("-f", "lavfi", "-i", f"sine=frequency={300 + 40 * i}:sample_rate=16000:duration=2",
               str(raw / "AudioWAV" / f"{c}.wav"))
        video(raw / "VideoFlash" / f"{c}.flv", 2, 300 + 40 * i)
    test = clips[::per_class]                          # one clip per emotion
    (raw / "train.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in clips if c not in test))
    (raw / "test.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in test))


def raw_ave(raw: Path, per_class: int) -> None:
    lists = {"trainSet.txt": [], "valSet.txt": [], "testSet.txt": []}
    for k, cls in enumerate(["Dog", "Bus", "Church bell"]):
        for j in range(per_class + 2):
            vid = f"v{k}{j:02d}"
            video(raw / "AVE" / f"{vid}.mp4", 5, 400 + 250 * k + 10 * j)
            name = "valSet.txt" if j == 0 else "testSet.txt" if j == 1 else "trainSet.txt"
            lists[name].append(f"{cls}&{vid}&good&0&4")
    for name, rows in lists.items():
        (raw / name).write_text("\n".join(rows) + "\n")


def raw_ks(raw: Path, per_class: int) -> None:
    rows = {"my_train.txt": [], "my_test.txt": []}
    for k in range(3):
        for j in range(per_class + 1):
            clip = f"ks{k}{j:02d}_{j}_{j + 10}"
            video(raw / f"class{k}" / f"{clip}.mp4", 3, 500 + 300 * k + 10 * j)
            rows["my_test.txt" if j == 0 else "my_train.txt"].append(f"{clip},10,{k}")
    for name, r in rows.items():
        (raw / name).write_text("\n".join(r) + "\n")


def mosi(path: Path, n: dict[str, int]) -> None:
    """A features file in MMSA's aligned_50.pkl format (docs/datasets.md): per split text (L, 768),
    audio (L, 5), vision (L, 20), lengths, regression labels in [-3, 3], ids."""
    rng = np.random.default_rng(0)
    data = {}
    for split, count in n.items():
        y = rng.uniform(-3, 3, count).astype(np.float32)
        d = {"text": rng.standard_normal((count, 50, 768)).astype(np.float32),
             "audio": rng.standard_normal((count, 50, 5)).astype(np.float32),
             "vision": rng.standard_normal((count, 50, 20)).astype(np.float32),
             "audio_lengths": np.full(count, 50, dtype=np.int64), "vision_lengths": np.full(count, 50, dtype=np.int64),
             "regression_labels": y, "classification_labels": (y >= 0).astype(np.float32),
             "id": [f"vid{split}{i}$_${i}" for i in range(count)], "raw_text": ["a b c"] * count}
        d["text"][:, :, 0] += y[:, None]               # some signal to learn
        data[split] = d
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f)


def raygap(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "raygap", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"raygap {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "results" / "bench" / "paper-toy"))
    ap.add_argument("--grids", default=",".join(GRIDS))
    ap.add_argument("--per-class", type=int, default=4, help="training clips per class")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs for the local Ray (default: all usable)")
    ap.add_argument("--columns", default=None,
                    help="comma-separated datasets to run (default: each grid's own columns; cpsl keeps mosi)")
    args = ap.parse_args()
    root = Path(args.root)
    data = root / "data"
    t0 = time.perf_counter()
    # (1) + (2): raw media, prepare, cache (kept when already there)
    makers = {"cremad": raw_cremad, "ave": raw_ave, "ks": raw_ks}
    for name, make in makers.items():
        raw, out = root / "raw" / name, data / name
        if not (out / ".toy-done").exists():
            make(raw, args.per_class)
            raygap("prepare", name, str(raw), str(out), "--option", "cache=false")
            frames = {"cremad": 1, "ave": 4, "ks": 3}[name]
            raygap("cache", name, "--root", str(out), "--frames", str(frames), "--side", str(SIDE))
            (out / ".toy-done").write_text("ok\n")
    mosi(data / "mosi" / "aligned_50.pkl", {"train": 24, "valid": 8, "test": 8})
    print(f"data ready under {data} ({time.perf_counter() - t0:.0f} s)", flush=True)
    os.environ["RAYGAP_DATA"] = str(data)

    # (3): the paper profile + the toy overlay, as a profile named "paper" in a temporary folder
    paper = yaml.safe_load((ROOT / "grids" / "profiles" / "paper.yaml").read_text())
    prof = {"description": "paper profile at toy scale (bench/paper_toy.py)",
            "overlay": _merge(paper.get("overlay") or {}, TOY["overlay"]),
            "overlay_by": _merge(paper.get("overlay_by") or {}, TOY["overlay_by"]),
            "seeds": TOY["seeds"], "resources": TOY["resources"]}
    if args.columns:
        prof["columns"] = {"data.name": args.columns.split(",")}
    pdir = root / "profiles"
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / "paper.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    (pdir / "paper-mosi.yaml").write_text(yaml.safe_dump({k: v for k, v in prof.items() if k != "columns"},
                                                         sort_keys=False))

    import ray

    from raygap.export import export_grid
    from raygap.grid import load_grid
    from raygap.runner import run_grid
    from raygap.store import Store

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    failed_total, report = 0, []
    store = Store(root / "results" / "store.sqlite")
    try:
        for name in args.grids.split(","):
            t = time.perf_counter()
            grid = load_grid(ROOT / "grids" / f"{name}.yaml", profile="paper" if name != "cpsl" or not args.columns
                             else "paper-mosi", profiles_dir=pdir)
            s = run_grid(grid, store, log=lambda line: None)
            export_grid(grid, store, root / "results" / name)
            failed_total += len(s.failed)
            report.append({"grid": name, "trials": s.total, "run": s.done, "reused": s.reused,
                           "failed": {k: v for k, v in s.failed.items()}, "seconds": round(time.perf_counter() - t, 1)})
            print(f"{name}: {s.total} distinct trials, {s.done} run, {s.reused} reused, {len(s.failed)} failed, "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            for key, err in s.failed.items():
                print(f"  failed {key}: {err}", flush=True)
    finally:
        ray.shutdown()
    (root / "report.json").write_text(json.dumps(report, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s; tables under {root / 'results'}; {failed_total} failed")
    return 1 if failed_total else 0


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


FFMPEG = ffmpeg_exe() or "ffmpeg"

if __name__ == "__main__":
    sys.exit(main())
