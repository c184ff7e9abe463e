"""``avdigits``: an embedded, offline audio-visual digit dataset with imbalance knobs.

Each sample pairs a real handwritten digit image (scikit-learn's ``load_digits``: 1797
8x8 images of the UCI hand-written digits test set) with a spoken clip of the same digit
drawn from a bank of eSpeak NG renderings (``assets/avdigits_bank.npz``, made by
``scripts/render_avdigits_bank.py``: 10 digit words x 40 voices at 8 kHz), expanded with
seeded augmentation (speed, time shift, gain, additive noise). Audio becomes a
standardised log-mel spectrogram (1, n_mels, frames); the image a single frame (1, 1, H, W).

The point of the dataset is controllable modality imbalance: a fraction of the samples
in every split can have its visual or audio stream corrupted (noise / blank / silence /
a shuffled stream of another digit), and Gaussian noise can weaken the visual stream
globally. The per-sample truth is kept in ``split.extras["corrupt_visual"]`` and
``split.extras["corrupt_audio"]``.

Everything is computed in memory in a few seconds and is bit-reproducible for the same
params and ``split_seed``. Every random decision draws from its own generator, seeded by
(``split_seed``, stream, split), so e.g. turning up ``visual_corrupt`` leaves the audio
and the splits untouched. See ``docs/avdigits.md``.

One module a job: ``params`` (the data keys), ``sources`` (the speech bank and the images),
``sampling`` (random streams, splits, corruption masks), ``audio``, ``visual`` and ``text``
(each stream), and here the builder that puts them together.
"""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ...lazy import lazy
from ...registry import DATASETS
from ..base import DataCommon, DataLayout, DatasetBundle, ModalitySpec, TensorSplit
from .audio import HOP, augment_clips, corrupt_audio, log_mel
from .params import AVDigitsParams
from .sampling import SPLITS, allocate, pick_corrupted, rng_for, sample_images, split_images
from .sources import CLASS_NAMES, SAMPLE_RATE, load_bank, load_images
from .text import ALPHABET, TEXT_DIM, TEXT_LEN, TYPO_OPS, one_hot_text, typo_words
from .visual import corrupt_visual, prepare_images

torch = lazy("torch")


def regression_target(digits: np.ndarray) -> np.ndarray:
    """The regression score of a digit: digit * 6/9 - 3, in [-3, 3] (float32)."""
    return (np.asarray(digits, dtype=np.float64) * 6.0 / 9.0 - 3.0).astype(np.float32)



@DATASETS.register("avdigits", params=AVDigitsParams, in_memory=True,
                   layout=lambda p: DataLayout(["audio", "visual"] + (["text"] if p.text else []),
                                               "regression" if p.target == "regression" else "classification"))
def build(params: AVDigitsParams, common: DataCommon) -> DatasetBundle:
    """Embedded audio-visual digits (sklearn digit images + eSpeak NG spoken digits)."""
    p, seed = params, int(common.split_seed)
    bank = load_bank()
    images, labels = load_images()
    num_voices = len(bank["voice_names"])
    if p.heldout_voices >= num_voices:
        raise ConfigError(f"{p.heldout_voices} held-out voices leave none of the bank's "
                          f"{num_voices} for training", key="data.heldout_voices")

    # voices: the held-out ones (if any) serve val/test only
    perm = rng_for(seed, "heldout").permutation(num_voices)
    heldout = np.sort(perm[num_voices - p.heldout_voices:])
    seen = np.sort(perm[: num_voices - p.heldout_voices])
    voices_for = {"train": seen, "val": heldout if len(heldout) else seen,
                  "test": heldout if len(heldout) else seen}

    image_split = split_images(labels, p.test_fraction, common.val_fraction, seed)
    counts = allocate(p.num_samples, {s: len(v) for s, v in image_split.items()})
    pixels = prepare_images(images, p.image_size)

    raw = {}
    for s in SPLITS:
        img, rep = sample_images(image_split[s], labels[image_split[s]], counts[s], rng_for(seed, "order", s))
        y = labels[img]
        n = len(img)

        # audio: a clip of the same digit from an allowed voice, freshly augmented
        rng_a = rng_for(seed, "audio", s)
        voice = voices_for[s][rng_a.integers(0, len(voices_for[s]), n)]
        clips = [bank["clips"][bank["clip_of"][v, d]] for v, d in zip(voice, y, strict=True)]
        wave = augment_clips(clips, p, rng_a)
        rng_ca = rng_for(seed, "corrupt_audio", s)
        mask_a = pick_corrupted(n, p.audio_corrupt, rng_ca)
        wave = corrupt_audio(wave, y, mask_a, p.audio_corrupt_mode, rng_ca)

        # visual: the image, globally noised, then corrupted
        vis = pixels[torch.from_numpy(img)]
        if p.visual_noise > 0:
            noise = rng_for(seed, "visual_noise", s).standard_normal(tuple(vis.shape), dtype=np.float32)
            vis = vis + p.visual_noise * torch.from_numpy(noise)
        rng_v = rng_for(seed, "corrupt_visual", s)
        mask_v = pick_corrupted(n, p.visual_corrupt, rng_v)
        vis = corrupt_visual(vis, y, mask_v, p.visual_corrupt_mode, rng_v)

        raw[s] = dict(img=img, rep=rep, y=y, voice=voice, mel=log_mel(wave, p.n_mels),
                      vis=vis.unsqueeze(1), mask_a=mask_a, mask_v=mask_v)

        if p.text:
            # text: the word of the digit (another digit's word where corrupted), with typos
            rng_ct = rng_for(seed, "corrupt_text", s)
            mask_t = pick_corrupted(n, p.text_corrupt, rng_ct)
            written = y.copy()
            written[mask_t] = (y[mask_t] + rng_ct.integers(1, 10, int(mask_t.sum()))) % 10
            texts, typos, ops = typo_words(written, p.text_typo, rng_for(seed, "text", s))
            raw[s].update(text=one_hot_text(texts), words=np.array(texts, dtype=str), written=written,
                          typos=typos, ops=ops, mask_t=mask_t)

    # standardise audio per mel bin with the clean training clips' statistics
    # (all training clips when every one of them is corrupted)
    train = raw["train"]
    ref = train["mel"][torch.from_numpy(~train["mask_a"])] if (~train["mask_a"]).any() else train["mel"]
    mean = ref.double().mean(dim=(0, 1, 3), keepdim=True)
    std = ref.double().std(dim=(0, 1, 3), keepdim=True).clamp_min(1e-6)

    splits = {}
    for s, r in raw.items():
        audio = ((r["mel"].double() - mean) / std).float()
        if s == "train" and p.nan_train:
            audio[: min(p.nan_train, len(audio))] = float("nan")
        ids = [f"img{i:04d}_v{v:02d}_k{k}" for i, v, k in zip(r["img"], r["voice"], r["rep"], strict=True)]
        tensors = {"audio": audio, "visual": r["vis"].contiguous()}
        extras = {"corrupt_visual": r["mask_v"], "corrupt_audio": r["mask_a"],
                  "image_index": r["img"], "voice": r["voice"]}
        if p.text:
            tensors["text"] = r["text"]
            extras.update(corrupt_text=r["mask_t"], text=r["words"], text_digit=r["written"],
                          text_typos=r["typos"])
        if p.target == "regression":
            labels = torch.from_numpy(regression_target(r["y"]))
            extras["digit"] = r["y"]
        else:
            labels = torch.from_numpy(r["y"])
        splits[s] = TensorSplit(tensors, labels, ids, extras=extras)

    frames = int(round(p.clip_seconds * SAMPLE_RATE)) // HOP + 1
    modalities = [ModalitySpec("audio", "spectrogram", (1, p.n_mels, frames)),
                  ModalitySpec("visual", "frames", (1, 1, p.image_size, p.image_size))]
    if p.text:
        modalities.append(ModalitySpec("text", "sequence", (TEXT_LEN, TEXT_DIM)))
    info = {
        "counts": {s: len(sp) for s, sp in splits.items()},
        "images": {s: len(v) for s, v in image_split.items()},
        "class_counts": {s: np.bincount(raw[s]["y"], minlength=10).tolist() for s in SPLITS},
        "voices": bank["voice_names"],
        "heldout_voices": [bank["voice_names"][v] for v in heldout],
        "bank_version": bank["version"],
        "bank_clips": len(bank["clips"]),
        "bank_bytes": bank["size_bytes"],
        "corrupt_visual": {s: float(r["mask_v"].mean()) for s, r in raw.items()},
        "corrupt_audio": {s: float(r["mask_a"].mean()) for s, r in raw.items()},
        "visual_corrupt_mode": p.visual_corrupt_mode,
        "audio_corrupt_mode": p.audio_corrupt_mode,
        "sample_rate": SAMPLE_RATE,
    }
    if p.text:
        info["text"] = {
            "typo": p.text_typo,
            "alphabet": ALPHABET + " (then pad)",
            "length": TEXT_LEN,
            "corrupt_text": {s: float(r["mask_t"].mean()) for s, r in raw.items()},
            "typos_per_char": {s: float(r["typos"].sum() / max(1, sum(len(CLASS_NAMES[d]) for d in r["written"])))
                               for s, r in raw.items()},
            "typo_ops": {s: dict(zip(TYPO_OPS, r["ops"].tolist(), strict=True)) for s, r in raw.items()},
            "truncated": {s: int(sum(len(t) > TEXT_LEN for t in r["words"])) for s, r in raw.items()},
        }
    if p.target == "regression":
        info["target"] = "regression: digit * 6/9 - 3"
        return DatasetBundle(name="avdigits", modalities=modalities, num_classes=1, class_names=["score"],
                             train=splits["train"], val=splits["val"], test=splits["test"],
                             task="regression", info=info)
    return DatasetBundle(name="avdigits", modalities=modalities, num_classes=10,
                         class_names=list(CLASS_NAMES), train=splits["train"], val=splits["val"],
                         test=splits["test"], info=info)
