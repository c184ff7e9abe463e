"""The tensor cache (data.pipeline: cache) and batch augmentation on the device.

The layout is made by ffmpeg (raygap.data.synth); the statistics of the batched crops are
compared with torchvision's per-item RandomResizedCrop on the same images.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import raygap.data  # noqa: F401  (registers the datasets)
from raygap.config import resolve
from raygap.data import augment
from raygap.data import cache as tc
from raygap.data.base import DataCommon
from raygap.data.media import frame_transform
from raygap.errors import DataError
from raygap.registry import DATASETS
from raygap.system import ffmpeg_exe
from raygap.trial import load_data, run_trial

needs_ffmpeg = pytest.mark.skipif(ffmpeg_exe() is None, reason="no ffmpeg: none on PATH and imageio-ffmpeg not installed")
SIZE = 32


# ----------------------------------------------------------------------------- augmentation
def test_crop_theta_hand_computed():
    H, W = torch.tensor([240]), torch.tensor([320])
    whole = augment.crop_theta(torch.tensor([[0, 0, 240, 320]]), H, W, torch.tensor([False]))
    assert whole[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    # the right half, rows 60..180: x fraction 0.5..1 -> scale 0.5, shift 0.5; y 0.25..0.75 -> 0.5, 0
    half = augment.crop_theta(torch.tensor([[60, 160, 120, 160]]), H, W, torch.tensor([False]))
    assert half[0].tolist() == [[0.5, 0.0, 0.5], [0.0, 0.5, 0.0]]
    flipped = augment.crop_theta(torch.tensor([[60, 160, 120, 160]]), H, W, torch.tensor([True]))
    assert flipped[0].tolist() == [[-0.5, 0.0, 0.5], [0.0, 0.5, 0.0]]
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    same = augment.resized_crop(img, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]] * 2), 8)
    assert torch.allclose(same, img, atol=1e-4)                      # the whole frame, same size: itself
    mirror = augment.resized_crop(img, torch.tensor([[[-1.0, 0, 0], [0, 1.0, 0]]] * 2), 8)
    assert torch.allclose(mirror, img.flip(-1), atol=1e-4)


def test_crop_boxes_follow_torchvision_including_the_fallback():
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    for h, w in ((360, 480), (50, 400)):                  # 50 x 400: the ratio range forces fallbacks
        n = 3000
        ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
                            for _ in range(n)], dtype=torch.float64)
        ours = augment.crop_boxes(torch.full((n,), h), torch.full((n,), w),
                                  torch.Generator().manual_seed(1)).to(torch.float64)
        assert (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()
        assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
        for col in range(4):                               # top, left, height, width
            p = stats.ks_2samp(ref[:, col].numpy(), ours[:, col].numpy()).pvalue
            assert p > 1e-3, (h, w, col, p)
    # every try fails on a 1 x 400 strip: torchvision's central crop with the ratio clamped
    box = augment.crop_boxes(torch.tensor([1]), torch.tensor([400]), torch.Generator().manual_seed(0))
    assert box[0].tolist() == [0, 199, 1, 1]                # h = 1, w = round(1 * 4/3) = 1, centred: (400-1)//2


def _ramp(w: int, h: int) -> Image.Image:
    """R encodes x, G encodes y (0..255 across the frame), B constant."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


def _crop_stats(frames: torch.Tensor) -> np.ndarray:
    """Per frame (n, 3, S, S) normalised: centre x, centre y, width, height (as fractions of the
    original frame, read off the ramps) and whether it is mirrored."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = frames * std + mean                                  # back to [0, 1]
    r, g = x[:, 0], x[:, 1]
    cx, cy = r.mean((1, 2)), g.mean((1, 2))
    width = (r[:, :, -1].mean(1) - r[:, :, 0].mean(1))
    height = g[:, -1, :].mean(1) - g[:, 0, :].mean(1)
    return torch.stack([cx, cy, width.abs(), height, (width < 0).float()], 1).numpy()


def test_batched_augmentation_has_the_per_item_distribution():
    """Same 4:3 frame: torchvision per item on the original vs the cache path (squashed to S x S
    uint8, original size kept) in batches; the crops' position, size and flips agree."""
    S, n = 48, 1500
    img = _ramp(320, 240)
    torch.manual_seed(0)
    per_item = torch.stack([frame_transform(True, S)(img) for _ in range(n)])
    cached = torch.from_numpy(np.array(img.resize((S, S), Image.BILINEAR))).permute(2, 0, 1)
    frames = cached.expand(n, 1, 3, S, S).contiguous()
    hw = torch.tensor([240, 320]).expand(n, 1, 2)
    batched = augment.frames_batch(frames, hw, S, True, torch.Generator().manual_seed(1))[:, 0]
    a, b = _crop_stats(per_item), _crop_stats(batched)
    for col, name in enumerate(["centre x", "centre y", "width", "height"]):
        assert abs(a[:, col].mean() - b[:, col].mean()) < 0.02, name
        assert stats.ks_2samp(a[:, col], b[:, col]).pvalue > 1e-3, name
    flips = [[int(x[:, 4].sum()), int(n - x[:, 4].sum())] for x in (a, b)]
    assert stats.chi2_contingency(flips).pvalue > 1e-3 and 0.45 < b[:, 4].mean() < 0.55
    # eval: Resize((S, S)) then normalise; from a cache at S the frame is the stored one
    ev = augment.frames_batch(frames[:1], hw[:1], S, False)[0, 0]
    assert torch.allclose(ev, frame_transform(False, S)(img.resize((S, S), Image.BILINEAR)), atol=1e-5)


# ----------------------------------------------------------------------------- the cache on a generated layout
@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    if ffmpeg_exe() is None:
        pytest.skip("ffmpeg is not installed")
    from raygap.data.synth import make_cremad_layout

    root = tmp_path_factory.mktemp("cremad")
    make_cremad_layout(root, 8, frame_size=(64, 48), seconds=2.0, workers=2)
    entry = DATASETS.get("cremad")
    tc.build_dataset("cremad", entry.params(image_size=SIZE), str(root), frames=[1, 2], workers=1, log=lambda s: None)
    return root


def _bundle(root, **common):
    entry = DATASETS.get("cremad")
    nf = common.pop("num_frames", 1)
    split = common.pop("split", "official")
    return entry.obj(entry.params(image_size=SIZE, num_frames=nf, split=split), DataCommon(root=str(root), **common))


@needs_ffmpeg
@pytest.mark.parametrize("split", ["official", "actor_disjoint"])
def test_cache_holds_what_the_files_path_decodes(layout, split):
    files = _bundle(layout, num_frames=2, split=split)
    cached = _bundle(layout, num_frames=2, split=split, pipeline="cache")
    for s in ("train", "val", "test"):
        f, c = files.split(s), cached.split(s)
        assert c.ids == f.ids and c.label_list == f.label_list
    for i in range(len(files.test)):
        a, b = files.test[i], cached.test[i]
        assert b["visual"].shape == a["visual"].shape == (2, 3, SIZE, SIZE)
        assert torch.allclose(a["visual"], b["visual"], atol=1e-5)      # cache side = image size: same pixels
        # fp16: within half a unit in the last place of each value
        assert torch.all((a["audio"] - b["audio"]).abs() <= a["audio"].abs() * 2 ** -11 + 1e-6)
    assert cached.info["pipeline"] == "cache" and cached.info["counts"] == files.info["counts"]


def _cache_error(root, **common) -> str:
    with pytest.raises(DataError) as e:
        _bundle(root, pipeline="cache", **common)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@needs_ffmpeg
def test_stale_truncated_and_mismatched_caches_are_named_with_the_rebuild_command(layout, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(layout, root)                       # copytree keeps modification times
    _bundle(root, pipeline="cache")                     # the copy is valid
    folder = root / "raygap-cache" / f"cremad22050-frames1-side{SIZE}"
    fix = f"raygap cache cremad --root {root} --frames 1 --side {SIZE}"

    msg = _cache_error(root, num_frames=3)                # never built for 3 frames
    assert "no cremad tensor cache" in msg and "--frames 3" in msg and "frames1-side32" in msg

    wav = next((root / "AudioWAV").glob("*.wav"))        # a media file changed since the build
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    msg = _cache_error(root)
    assert "stale" in msg and wav.stem in msg and fix in msg
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    _bundle(root, pipeline="cache")

    train = (root / "train.csv").read_text().splitlines()     # a label changed in the list
    clip, label = train[0].split(",")
    other = "HAP" if label != "HAP" else "SAD"
    (root / "train.csv").write_text("\n".join([f"{clip},{other}", *train[1:]]) + "\n")
    msg = _cache_error(root)
    assert "stale" in msg and clip in msg and "label" in msg and fix in msg
    (root / "train.csv").write_text("\n".join(train) + "\n")

    vis = folder / "visual.npy"                            # truncated
    data = vis.read_bytes()
    vis.write_bytes(data[: len(data) // 2])
    msg = _cache_error(root)
    assert str(vis) in msg and "truncated" in msg and fix in msg
    vis.write_bytes(data)

    man = json.loads((folder / "manifest.json").read_text())   # other parameters, other format
    (folder / "manifest.json").write_text(json.dumps({**man, "params": {**man["params"], "side": 64}}))
    assert "built with side=64" in _cache_error(root)
    (folder / "manifest.json").write_text(json.dumps({**man, "format": 0}))
    assert "cache format 0" in _cache_error(root)
    for doc in ([], {**man, "arrays": []}):                  # JSON, but not a manifest (was a traceback)
        (folder / "manifest.json").write_text(json.dumps(doc))
        assert "not a raygap cache manifest" in _cache_error(root) and fix in _cache_error(root)
    (folder / "manifest.json").unlink()
    assert "did not finish" in _cache_error(root)


@needs_ffmpeg
def test_raygap_train_on_a_stale_cache_exits_2_with_one_line(layout, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(layout, root)
    (root / "raygap-cache" / f"cremad22050-frames1-side{SIZE}" / "labels.npy").write_bytes(b"x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: cremad, root: {root}, pipeline: cache, image_size: {SIZE}}}\n"
                   "model: {backbone: small, width: 4}\ntrain: {epochs: 1, device: cpu}\n")
    p = subprocess.run([sys.executable, "-m", "raygap", "train", str(cfg), "--out", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "labels.npy" in lines[0] and "raygap cache cremad" in lines[0]
    assert "Traceback" not in p.stderr


def test_cache_pipeline_is_refused_for_in_memory_data():
    from raygap.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        resolve({"data": {"name": "avdigits", "pipeline": "cache"}})
    assert e.value.key == "data.pipeline"


def test_pipeline_files_keeps_stored_trials_identity():
    """data.pipeline arrived after results were stored: at its default it is outside the hash,
    so earlier trials keep their keys; set to cache (or a cache_side with it) it is inside."""
    base = {"data": {"name": "cremad"}}
    k = resolve(base).key()
    assert resolve({"data": {"name": "cremad", "pipeline": "files", "cache_side": 64}}).key() == k
    assert resolve({"data": {"name": "cremad", "preload": "off"}}).key() == k
    c = resolve({"data": {"name": "cremad", "pipeline": "cache"}}).key()
    assert c != k and resolve({"data": {"name": "cremad", "pipeline": "cache", "cache_side": 64}}).key() != c
    assert resolve({"data": {"name": "cremad", "pipeline": "cache", "preload": "off"}}).key() == c


CFG = {"model": {"backbone": "small", "width": 4}, "optim": {"lr": 0.05},
       "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "threads": 2, "checkpoint_every": 1}}


class Crash(Exception):
    pass


@needs_ffmpeg
def test_trial_on_the_cache_trains_and_resumes_exactly(layout, tmp_path):
    cfg = resolve({**CFG, "data": {"name": "cremad", "root": str(layout), "pipeline": "cache", "image_size": SIZE}})
    full = run_trial(cfg, checkpoint_dir=tmp_path / "a")
    assert full.info["batches"] == {"train": "streamed", "val": "streamed", "test": "streamed"}
    assert all(math.isfinite(h["train_loss"]) for h in full.history)

    def crash(record, ckpt):
        if record["epoch"] == 0:
            raise Crash()

    with pytest.raises(Crash):
        run_trial(cfg, checkpoint_dir=tmp_path / "b", report=crash)
    resumed = run_trial(cfg, checkpoint_dir=tmp_path / "b")
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)          # crops and order drawn per (seed, epoch)


@needs_ffmpeg
def test_a_resnet18_trial_on_files_through_the_dataloader_with_purification(layout):
    """The file pipeline as the paper profile's files path runs it: a DataLoader with a worker
    process decoding WAVs and JPEGs, ResNet-18 encoders, and Table VII's purification, which
    trains the adaptive stage on a Subset of the training split."""
    cfg = resolve({"data": {"name": "cremad", "root": str(layout), "pipeline": "files", "image_size": SIZE},
                   "model": {"backbone": "resnet18"}, "optim": {"lr": 0.01},
                   "method": {"name": "gap_adaptive", "warmup_epochs": 1, "purify_tau": 0.5},
                   "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "threads": 2, "num_workers": 1,
                             "checkpoint": False}})
    r = run_trial(cfg)
    h = r.history
    n_train = h[0]["train_n"]
    assert n_train == len(load_data(cfg).train) > 0
    assert [x["stage"] for x in h] == ["warmup", "purify", "purify"]
    kept = h[1]["purify_kept"]
    assert 0 < kept <= n_train
    assert [x["train_n"] for x in h[1:]] == [kept, kept]          # the adaptive stage saw the Subset only
    assert all(math.isfinite(x["train_loss"]) for x in h)
    assert r.info["batches"] == {}                                 # no split built its own batches: the DataLoader did
