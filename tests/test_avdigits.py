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
from raygap.data.avdigits import AVDigitsParams, build, regression_target
from raygap.data.avdigits.sources import CLASS_NAMES, load_bank, load_images
from raygap.data.avdigits.text import ALPHABET, PAD, TEXT_DIM, TEXT_LEN, decode_text, typo
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
        if f.type in (bool, "bool"):
            assert isinstance(f.default, bool), f.name
        elif "choices" in meta:
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


# ----------------------------------------------------------------------------- text stream, regression target
WORD_LEN = np.array([len(w) for w in CLASS_NAMES])     # zero..nine: 4 3 3 5 4 4 3 5 5 4 (mean 4.0)


@pytest.fixture(scope="module")
def with_text():
    return make(text=True)


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_typo_operations_by_hand():
    z = np.zeros(5, dtype=np.int64)

    def t(word, at, op, letter=0, shift=1):
        hit = np.isin(np.arange(5), at)
        return typo(word, hit, np.full(5, op), np.full(5, letter), np.full(5, shift))

    assert t("seven", [], 0) == "seven"
    assert t("two", [0], 0, shift=1) == "uwo"            # substitution: t + 1 = u
    assert t("zero", [0], 0, shift=1) == "aero"          # cyclic: z + 1 = a
    assert t("two", [1], 1) == "to"                      # deletion
    assert t("six", [0], 2, letter=25) == "szix"         # insertion after the character
    assert t("nine", [1], 3) == "nnie"                   # swap with the next character
    assert t("one", [2], 3) == "oen"                     # the last one swaps with the previous
    assert t("one", [0, 2], 1) == "n"                    # two deletions
    assert t("two", [0, 1, 2], 0, shift=25) == "svn"     # every character substituted (-1 each)
    assert typo("four", z.astype(bool), z, z, z + 1) == "four"


def test_text_off_by_default(default):
    p = AVDigitsParams()
    assert p.text is False and p.text_typo == 0.3 and p.text_corrupt == 0.0 and p.target == "class"
    assert default.modality_names == ["audio", "visual"] and default.task == "classification"
    assert "text" not in default.info and "target" not in default.info
    assert set(default.train.extras) == {"corrupt_visual", "corrupt_audio", "image_index", "voice"}
    assert default.train.labels.dtype == torch.long


def test_text_adds_a_modality_and_leaves_the_rest_identical(default, with_text):
    b = with_text
    assert b.modality_names == ["audio", "visual", "text"]
    spec = b.modalities[2]
    assert spec.kind == "sequence" and spec.shape == (TEXT_LEN, TEXT_DIM) == (8, 27)
    for s in SPLITS:
        x, y = b.split(s), default.split(s)
        assert x.ids == y.ids and torch.equal(x.labels, y.labels)
        for k in ("audio", "visual"):
            assert torch.equal(x.tensors[k], y.tensors[k]), (s, k)
        for k in y.extras:
            assert np.array_equal(x.extras[k], y.extras[k]), (s, k)
        assert set(x[0]) == {"audio", "visual", "text", "label", "index"}
    assert b.num_classes == 10 and b.class_names == default.class_names


def test_text_one_hot_is_valid(with_text):
    for s in SPLITS:
        split = with_text.split(s)
        x = split.tensors["text"]
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (TEXT_LEN, TEXT_DIM)
        assert set(x.unique().tolist()) == {0.0, 1.0} and (x.sum(-1) == 1).all()
        idx = x.argmax(-1)
        is_pad = idx == PAD
        # padding only after the last letter: once padded, padded to the end
        assert (is_pad.int().cummax(dim=1).values == is_pad.int()).all()
        assert [decode_text(r) for r in x] == split.extras["text"].tolist()
        assert all(set(t) <= set(ALPHABET) for t in split.extras["text"])


def test_text_typo_statistics(with_text):
    """Default text_typo 0.3 over the 1797 samples (split_seed 0), against values worked out
    by hand: every character is hit with probability 0.3 and each typo is one of four
    operations with probability 1/4, so
      * typos per character: 0.3 (binomial over ~7200 characters: sd 0.005);
      * words left intact: mean over the ten words of 0.7^len
        = (3 * 0.343 + 4 * 0.2401 + 3 * 0.16807) / 10 = 0.2494 (sd 0.010);
      * length: +1 per insertion, -1 per deletion, equally likely: mean 4.0 (sd ~0.016);
      * each operation: 1/4 of the typos (about 2160 typos: sd 0.009)."""
    words, digits, typos = [], [], []
    for s in SPLITS:
        split = with_text.split(s)
        words += split.extras["text"].tolist()
        digits += split.extras["text_digit"].tolist()
        typos += split.extras["text_typos"].tolist()
        assert np.array_equal(split.extras["text_digit"], split.labels.numpy())   # text_corrupt 0
        assert not split.extras["corrupt_text"].any()
    digits, typos = np.array(digits), np.array(typos)
    chars = WORD_LEN[digits]
    assert abs(typos.sum() / chars.sum() - 0.3) < 0.02
    assert (typos <= chars).all()
    intact = np.array([w == CLASS_NAMES[d] for w, d in zip(words, digits, strict=True)])
    assert abs(intact.mean() - 0.2494) < 0.04
    assert np.array_equal(intact[typos == 0], np.ones((typos == 0).sum(), dtype=bool))
    assert abs(np.mean([len(w) for w in words]) - chars.mean()) < 0.08
    # a swap is two Levenshtein edits, every other typo one
    assert all(levenshtein(w, CLASS_NAMES[d]) <= 2 * k for w, d, k in zip(words, digits, typos, strict=True))
    ops = {k: sum(with_text.info["text"]["typo_ops"][s][k] for s in SPLITS)
           for k in ("substitution", "deletion", "insertion", "swap")}
    assert sum(ops.values()) == typos.sum()
    assert all(abs(v / typos.sum() - 0.25) < 0.04 for v in ops.values()), ops
    assert with_text.info["text"]["truncated"] == {"train": 0, "val": 0, "test": 0}


def test_typo_probability_extremes():
    clean = make(num_samples=200, text=True, text_typo=0.0)
    full = make(num_samples=200, text=True, text_typo=1.0)
    for s in SPLITS:
        y = clean.split(s).labels.numpy()
        assert clean.split(s).extras["text"].tolist() == [CLASS_NAMES[d] for d in y]
        assert (clean.split(s).extras["text_typos"] == 0).all()
        assert np.array_equal(full.split(s).extras["text_typos"], WORD_LEN[full.split(s).labels.numpy()])


def test_text_corrupt_replaces_the_word_only(with_text):
    b = make(text=True, text_corrupt=0.25)
    for s in SPLITS:
        split, ref = b.split(s), with_text.split(s)
        n, mask = len(split), split.extras["corrupt_text"]
        assert mask.dtype == bool and mask.sum() == round(0.25 * n)
        y, written = split.labels.numpy(), split.extras["text_digit"]
        assert (written[mask] != y[mask]).all() and np.array_equal(written[~mask], y[~mask])
        # the typo draws do not depend on the word: unaffected samples keep their text
        assert np.array_equal(split.extras["text"][~mask], ref.extras["text"][~mask])
        assert torch.equal(split.tensors["text"][torch.from_numpy(~mask)], ref.tensors["text"][torch.from_numpy(~mask)])
        for k in ("audio", "visual"):
            assert torch.equal(split.tensors[k], ref.tensors[k])
    assert b.info["text"]["corrupt_text"]["train"] == pytest.approx(0.25, abs=0.01)


def text_probe(bundle) -> float:
    """Test accuracy of a logistic regression on the letter counts (order-free)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    def feats(split):
        return split.tensors["text"].sum(1).numpy()

    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=300).fit(feats(bundle.train), bundle.train.labels.numpy())
    return clf.score(feats(bundle.test), bundle.test.labels.numpy())


def test_text_is_the_strong_modality(with_text):
    """Typos leave the word recognisable: the letter-count probe (0.97) beats the image and
    audio probes (0.95 / 0.94, docs/avdigits.md); fully corrupted text is near chance."""
    assert text_probe(with_text) > max(probe(with_text, "visual"), probe(with_text, "audio"))
    assert text_probe(make(text=True, text_corrupt=1.0)) < CHANCE + 0.12


def test_regression_target(small_clean):
    assert regression_target(np.arange(10)).tolist() == pytest.approx(
        [-3, -7 / 3, -5 / 3, -1, -1 / 3, 1 / 3, 1, 5 / 3, 7 / 3, 3])
    b = make(num_samples=400, target="regression")
    assert b.task == "regression" and b.num_classes == 1 and b.class_names == ["score"]
    for s in SPLITS:
        split, ref = b.split(s), small_clean.split(s)
        digit = ref.labels.numpy()
        assert split.labels.dtype == torch.float32
        assert np.array_equal(split.labels.numpy(), (digit * 6 / 9 - 3).astype(np.float32))
        assert split.labels.min() >= -3 and split.labels.max() <= 3
        assert np.array_equal(split.extras["digit"], digit)
        assert split.ids == ref.ids
        for k in ref.tensors:
            assert torch.equal(split.tensors[k], ref.tensors[k])
    assert b.info["class_counts"] == small_clean.info["class_counts"]


def test_modalities_key_orders_and_selects_the_text():
    from raygap.config import resolve
    from raygap.errors import ConfigError
    from raygap.trial import load_data

    cfg = resolve({"data": {"name": "avdigits", "num_samples": 100, "text": True, "target": "regression",
                            "modalities": ["text", "audio"]}})
    b = load_data(cfg)
    assert b.modality_names == ["text", "audio"] and b.task == "regression"
    with pytest.raises(ConfigError, match="data.target"):
        resolve({"data": {"name": "avdigits", "target": "regresion"}})
    with pytest.raises(ConfigError, match="data.text_typo"):
        resolve({"data": {"name": "avdigits", "text_typo": 1.5}})
