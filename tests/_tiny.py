"""The avdigits the tests train on: the shipped dataset (every image, every voice) with its audio
window cut to a quarter second and 8 mel bins. The spectrogram then has 1/20 of the full one's
values (8 x 32 for 40 x 126), so an epoch of the small CNN costs about a fifth (measured: a 3-epoch
trial 5.6 s -> 0.9 s on one thread) while every code path -- two modalities, corruption, the
imbalance knobs -- stays the same. A test about the data itself builds its own."""
from __future__ import annotations

TINY_AUDIO = {"n_mels": 8, "clip_seconds": 0.25}


def avdigits(**keys) -> dict:
    """A ``data:`` section: avdigits with the tiny audio and ``keys`` (e.g. ``visual_corrupt=0.3``)."""
    return {"name": "avdigits", **TINY_AUDIO, **keys}
