"""The embedded ``avdigits`` dataset: contract, splits, determinism, corruption knobs,
and that each clean modality really carries the label (linear probes)."""
from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest
import torch

import raygap.data  # noqa: F401  (registers the datasets)
from raygap.data.avdigits import AVDigitsParams, build, load_bank, load_images
from raygap.data.base import DataCommon, TensorSplit
from raygap.registry import DATASETS

SPLITS = ("train", "val", "test")
CHANCE = 0.1


def make(**kw):
    return build(AVDigitsParams(**kw), DataCommon())


@pytest.fixture(scope="module")
def default():
    return make()


@pytest.fixture(scope="module")
def small_clean():
    return make(num_samples=400)


def probe(bundle, modality: str) -> float:
    """Test accuracy of a logistic regression trained on the train split's features
    (images flattened; audio: per-mel-bin mean and std over time)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    def feats(split):
        x = split.tensors[modality]
        if modality == "audio":
            x = torch.cat([x.mean(-1), x.std(-1)], dim=-1)
        return x.flatten(1).numpy()

    # one BLAS thread: next to torch's still-spinning OpenMP workers, a multi-threaded
    # BLAS is many times slower on a small machine
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")   # ConvergenceWarning: accuracy is what matters here
        clf = LogisticRegression(max_iter=300).fit(feats(bundle.train), bundle.train.labels.numpy())
    return clf.score(feats(bundle.test), bundle.test.labels.numpy())


# ----------------------------------------------------------------------------- contract
def test_registered_with_validating_params():
    entry = DATASETS.get("avdigits")
    assert entry.obj is build and entry.params is AVDigitsParams
    for f in dataclasses.fields(AVDigitsParams):
        meta = f.metadata
        assert meta.get("help"), f.name
        if "choices" in meta:
            assert f.default in meta["choices"], f.name
        else:
            lo, hi = meta["range"]
            assert lo <= f.default <= hi, f.name


def test_bank_asset():
    bank = load_bank()
    assert len(bank["voice_names"]) >= 30
    assert len(bank["clips"]) == 10 * len(bank["voice_names"])
    assert "eSpeak NG" in bank["version"]
    assert all(0.2 * 8000 < len(c) < 1.0 * 8000 for c in bank["clips"])


def test_images_are_sklearn_digits():
    from sklearn.datasets import load_digits

    images, labels = load_images()
    d = load_digits()
    assert images.shape == (1797, 8, 8)
    assert np.array_equal(images, (d.images / 16.0).astype(np.float32))
    assert np.array_equal(labels, d.target)


def test_shapes_and_specs(default):
    b = default
    assert b.name == "avdigits" and b.num_classes == 10 and b.class_names[9] == "nine"
    assert b.modality_names == ["audio", "visual"]
    kinds = {m.name: m.kind for m in b.modalities}
    assert kinds == {"audio": "spectrogram", "visual": "frames"}
    assert sum(b.info["counts"].values()) == 1797
    for s in SPLITS:
        split = b.split(s)
        assert isinstance(split, TensorSplit)
        for m in b.modalities:
            t = split.tensors[m.name]
            assert t.dtype == torch.float32 and tuple(t.shape[1:]) == m.shape
            assert torch.isfinite(t).all()
        assert split.labels.min() >= 0 and split.labels.max() <= 9
        assert all(re.fullmatch(r"img\d{4}_v\d{2}_k\d+", i) for i in split.ids)
        item = split[0]
        assert set(item) == {"audio", "visual", "label", "index"}
    assert tuple(b.modalities[0].shape) == (1, 40, 126)
    assert tuple(b.modalities[1].shape) == (1, 1, 8, 8)
    v = b.train.tensors["visual"]
    assert v.min() >= 0 and v.max() <= 1
    a = b.train.tensors["audio"]        # standardised per mel bin with train statistics
    assert abs(a.mean().item()) < 1e-3 and abs(a.std().item() - 1) < 1e-2


def test_image_size_upsamples():
    b = make(num_samples=60, image_size=16)
    assert tuple(b.test.tensors["visual"].shape[1:]) == (1, 1, 16, 16)


def test_labels_balanced(default):
    for s in ("train", "test"):
        counts = np.bincount(default.split(s).labels.numpy(), minlength=10)
        assert counts.min() > 0 and counts.max() / counts.min() < 1.2, (s, counts)


# ----------------------------------------------------------------------------- splits
def test_image_level_disjoint_with_reuse():
    b = make(num_samples=2000)
    images = {}
    for s in SPLITS:
        split = b.split(s)
        idx = split.extras["image_index"]
        assert len(set(split.ids)) == len(split), "sample ids must be unique"
        assert [int(i[3:7]) for i in split.ids] == idx.tolist()
        images[s] = set(idx.tolist())
    assert sum(b.info["counts"].values()) == 2000
    assert max(int(i.rsplit("_k", 1)[1]) for i in b.train.ids) >= 1, "images are reused"
    assert not images["train"] & images["val"]
    assert not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    assert len(images["train"] | images["val"] | images["test"]) == 1797


def test_heldout_voices():
    b = make(num_samples=300, heldout_voices=5)
    names = b.info["voices"]
    held = {names.index(v) for v in b.info["heldout_voices"]}
    assert len(held) == 5
    assert not held & set(b.train.extras["voice"].tolist())
    assert set(b.test.extras["voice"].tolist()) <= held
    assert set(b.val.extras["voice"].tolist()) <= held


def test_deterministic_and_seeded():
    kw = dict(num_samples=300, visual_noise=0.2, visual_corrupt=0.3, visual_corrupt_mode="shuffle",
              audio_corrupt=0.3, audio_corrupt_mode="noise")
    b1, b2 = make(**kw), make(**kw)
    for s in SPLITS:
        x, y = b1.split(s), b2.split(s)
        assert x.ids == y.ids and torch.equal(x.labels, y.labels)
        for k in x.tensors:
            assert torch.equal(x.tensors[k], y.tensors[k]), (s, k)
        for k in x.extras:
            assert np.array_equal(x.extras[k], y.extras[k]), (s, k)
    other = build(AVDigitsParams(**kw), DataCommon(split_seed=1))
    assert other.test.ids != b1.test.ids


# ----------------------------------------------------------------------------- corruption
def test_blank_and_silence_masks(small_clean):
    b = make(num_samples=400, visual_corrupt=0.3, visual_corrupt_mode="blank",
             audio_corrupt=0.25, audio_corrupt_mode="silence")
    for s in SPLITS:
        split, n = b.split(s), len(b.split(s))
        mv, ma = split.extras["corrupt_visual"], split.extras["corrupt_audio"]
        assert mv.dtype == bool and ma.dtype == bool
        assert mv.sum() == round(0.3 * n) and ma.sum() == round(0.25 * n)
        vis = split.tensors["visual"].flatten(1)
        assert (vis[torch.from_numpy(mv)] == 0).all()
        assert (vis[torch.from_numpy(~mv)].abs().sum(1) > 0).all()
        clean = small_clean.split(s).tensors["visual"].flatten(1)
        assert torch.equal(vis[torch.from_numpy(~mv)], clean[torch.from_numpy(~mv)])
        # silence: every silenced clip gives the same spectrogram, constant over time
        aud = split.tensors["audio"]
        silent, spoken = aud[torch.from_numpy(ma)], aud[torch.from_numpy(~ma)]
        assert (silent == silent[:1]).all() and (silent.std(-1) == 0).all()
        assert (spoken.flatten(1).std(1) > 0.1).all()


def test_shuffle_uses_another_digit(small_clean):
    b = make(num_samples=400, visual_corrupt=0.5, visual_corrupt_mode="shuffle")
    split, clean = b.test, small_clean.test
    labels = split.labels
    vis, ref = split.tensors["visual"].flatten(1), clean.tensors["visual"].flatten(1)
    for i in np.flatnonzero(split.extras["corrupt_visual"]):
        same = (ref == vis[i]).all(1)
        assert same.any() and (labels[same] != labels[i]).all()


def test_visual_knobs_leave_audio_alone(small_clean):
    b = make(num_samples=400, visual_corrupt=0.7, visual_corrupt_mode="noise", visual_noise=0.5)
    for s in SPLITS:
        assert torch.equal(b.split(s).tensors["audio"], small_clean.split(s).tensors["audio"])
        assert b.split(s).ids == small_clean.split(s).ids


# ----------------------------------------------------------------------------- information content
def test_clean_modalities_are_informative(default):
    assert probe(default, "audio") > 0.8
    assert probe(default, "visual") > 0.85


def test_fully_corrupted_modalities_are_near_chance():
    b = make(visual_corrupt=1.0, visual_corrupt_mode="noise", audio_corrupt=1.0, audio_corrupt_mode="noise")
    assert b.train.extras["corrupt_visual"].all() and b.test.extras["corrupt_audio"].all()
    assert probe(b, "visual") < CHANCE + 0.12
    assert probe(b, "audio") < CHANCE + 0.12
