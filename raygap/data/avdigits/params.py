"""avdigits' own keys of the ``data`` section: size, splits, the imbalance knobs of each
stream, the optional text stream and the target."""
from __future__ import annotations

from dataclasses import dataclass, field

from .text import TEXT_DIM, TEXT_LEN


@dataclass
class AVDigitsParams:
    """avdigits' own keys of the ``data`` section."""
    num_samples: int = field(default=0, metadata={
        "range": (0, 500_000),
        "help": "total samples over all splits; 0 = one per image (1797). When larger, images "
                "are reused within their own split, each time with a freshly augmented clip"})
    test_fraction: float = field(default=0.2, metadata={
        "range": (0.05, 0.5), "help": "fraction of the images held out for test (stratified)"})
    heldout_voices: int = field(default=0, metadata={
        "range": (0, 39), "help": "voices used only for val/test (0: every split draws from all voices)"})
    image_size: int = field(default=8, metadata={
        "range": (8, 128), "help": "image side in pixels; > 8 upsamples the 8x8 digits bilinearly"})
    visual_noise: float = field(default=0.0, metadata={
        "range": (0.0, 10.0), "help": "std of Gaussian noise added to every image (pixels in [0, 1])"})
    visual_corrupt: float = field(default=0.0, metadata={
        "range": (0.0, 1.0), "help": "fraction of samples in every split whose image is corrupted"})
    visual_corrupt_mode: str = field(default="noise", metadata={
        "choices": ["noise", "blank", "shuffle"],
        "help": "noise: uniform [0,1] noise; blank: zeros; shuffle: the image of a sample with another label"})
    audio_corrupt: float = field(default=0.0, metadata={
        "range": (0.0, 1.0), "help": "fraction of samples in every split whose audio is corrupted"})
    audio_corrupt_mode: str = field(default="noise", metadata={
        "choices": ["noise", "silence", "shuffle"],
        "help": "noise: white noise at the level of a random clip; silence: zeros; "
                "shuffle: the clip of a sample with another label"})
    audio_snr_db: float = field(default=20.0, metadata={
        "range": (-20.0, 100.0), "help": "SNR of the additive white noise on every clip (dB)"})
    audio_speed: float = field(default=0.1, metadata={
        "range": (0.0, 0.5), "help": "speed perturbation: resample by a factor in [1-s, 1+s]"})
    audio_shift: float = field(default=1.0, metadata={
        "range": (0.0, 1.0), "help": "random time shift as a fraction of the free room in the window (0: centred)"})
    audio_gain_db: float = field(default=6.0, metadata={
        "range": (0.0, 30.0), "help": "random gain in [-g, +g] dB"})
    clip_seconds: float = field(default=1.0, metadata={
        "range": (0.25, 4.0), "help": "audio window; clips are padded / cropped to it (8 kHz)"})
    n_mels: int = field(default=40, metadata={
        "range": (8, 128), "help": "mel bins of the log-mel spectrogram (n_fft 256, hop 64)"})
    nan_train: int = field(default=0, metadata={
        "range": (0, 100_000),
        "help": "fault injection: this many training spectrograms are NaN (what a corrupt "
                "precomputed feature file decodes to); exercises divergence handling"})
    text: bool = field(default=False, metadata={
        "help": "add a third modality 'text': the digit's word with typos, one-hot characters "
                f"({TEXT_LEN} x {TEXT_DIM}, kind sequence)"})
    text_typo: float = field(default=0.3, metadata={
        "range": (0.0, 1.0),
        "help": "per-character typo probability of the text: substitution, deletion, insertion or "
                "adjacent swap, equally likely"})
    text_corrupt: float = field(default=0.0, metadata={
        "range": (0.0, 1.0),
        "help": "fraction of samples in every split whose word is replaced by another digit's word"})
    target: str = field(default="class", metadata={
        "choices": ["class", "regression"],
        "help": "class: the digit (10 classes); regression: the score digit*6/9 - 3 in [-3, 3]"})
