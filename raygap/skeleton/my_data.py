"""My dataset: a plug-in of this project, the layout to copy for your own data.

`build(params, common)` returns three splits held in memory (raygap.data.base.TensorSplit):
audio as spectrograms (N, 1, F, T), images as frames (N, T, C, H, W), integer labels (N,).
Here they are synthetic -- each class a fixed random pattern in both modalities, the audio
clearer than the image (an imbalanced pair) -- so the project runs anywhere. For your own data,
replace `_arrays` with a function that reads your files (from `common.root`, else
$RAYGAP_DATA/my_data) into the same arrays. torch is imported lazily: validating a grid stays
fast (a plug-in that imports torch at its top works too, it only starts slower).
"""
from dataclasses import dataclass

import numpy as np

from raygap.data.base import DataLayout, DatasetBundle, ModalitySpec, TensorSplit
from raygap.lazy import lazy
from raygap.params import F
from raygap.registry import DATASETS

torch = lazy("torch")

CLASSES = ["zero", "one", "two", "three"]
SIDE = 16                             # spectrograms and images are SIDE x SIDE


@dataclass
class MyDataParams:                   # the dataset's own keys under `data:`, checked at load
    n_train: int = F(512, range=(8, 1_000_000), help="training items (validation and test: a quarter each)")
    audio_noise: float = F(3.0, range=(0.0, 100.0), help="noise over the audio patterns (smaller: clearer)")
    visual_noise: float = F(6.0, range=(0.0, 100.0), help="noise over the image patterns")
    data_seed: int = F(0, range=(0, 2**31 - 1), help="seed of the patterns and the noise")


def _arrays(p: MyDataParams, n: int, split: int):
    """(audio, visual, labels) of one split (0 train, 1 validation, 2 test) as numpy arrays."""
    patterns = np.random.default_rng([p.data_seed, 0])
    audio_of = patterns.standard_normal((len(CLASSES), 1, SIDE, SIDE))
    visual_of = patterns.standard_normal((len(CLASSES), 1, 1, SIDE, SIDE))
    rng = np.random.default_rng([p.data_seed, 1 + split])
    labels = rng.integers(0, len(CLASSES), n)
    audio = audio_of[labels] + p.audio_noise * rng.standard_normal((n, 1, SIDE, SIDE))
    visual = visual_of[labels] + p.visual_noise * rng.standard_normal((n, 1, 1, SIDE, SIDE))
    return audio.astype(np.float32), visual.astype(np.float32), labels


def _split(p: MyDataParams, n: int, split: int) -> TensorSplit:
    audio, visual, labels = _arrays(p, n, split)
    return TensorSplit({"audio": torch.from_numpy(audio), "visual": torch.from_numpy(visual)},
                       torch.from_numpy(labels), [f"{split}-{i}" for i in range(n)])


@DATASETS.register("my_data", params=MyDataParams, in_memory=True,
                   layout=lambda p: DataLayout(["audio", "visual"]))
def build(params: MyDataParams, common) -> DatasetBundle:
    """My dataset: synthetic audio and images of 4 classes, the audio clearer (replace _arrays with your files)."""
    n = params.n_train
    return DatasetBundle("my_data", [ModalitySpec("audio", "spectrogram", (1, SIDE, SIDE)),
                                     ModalitySpec("visual", "frames", (1, 1, SIDE, SIDE))],
                         len(CLASSES), CLASSES, _split(params, n, 0), _split(params, n // 4, 1),
                         _split(params, n // 4, 2))
