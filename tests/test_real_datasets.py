"""The file-backed datasets (cremad, ave, ks) and `raygap prepare`, on tiny trees built here.

Every fixture is generated in tmp_path: sine-tone WAVs (soundfile) and small solid-colour
JPEG frames (PIL) in each dataset's documented layout. Spectrograms are computed for real.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import raygap.data  # noqa: F401  (registers the datasets)
from raygap.cli import main as cli_main
from raygap.data import media
from raygap.data import prepare as prep
from raygap.data.base import DataCommon
from raygap.data.prepare import layouts
from raygap.errors import DataError
from raygap.registry import DATASETS
from raygap.system import ffmpeg_exe

EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
FRAME_NAMES = ["1.jpg", "2.jpg", "10.jpg"]     # lexicographic order (1, 10, 2) differs from numeric
SIZE = 32


# ----------------------------------------------------------------------------- fixture builders
def tone(rate: int, seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, rate: int, seconds: float, freq: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(rate, seconds, freq), rate, subtype="PCM_16")


def write_frames(folder: Path, names=FRAME_NAMES) -> None:
    """Solid grey frames whose level encodes the frame number (brighter = later)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        n = int(Path(name).stem)
        Image.new("RGB", (40, 30), (20 + 10 * n,) * 3).save(folder / name, quality=95)


def build(name: str, root: Path, **params):
    entry = DATASETS.get(name)
    common_keys = {"val_fraction", "split_seed", "on_bad_media", "train_augment"}
    common = DataCommon(root=str(root), **{k: v for k, v in params.items() if k in common_keys})
    p = entry.params(image_size=SIZE, **{k: v for k, v in params.items() if k not in common_keys})
    return entry.obj(p, common)


def cremad_tree(root: Path, actors=range(1001, 1007), sentences=("DFA", "IEO")) -> dict[str, list[str]]:
    """72 clips (6 actors x 2 sentences x 6 emotions). Test: each emotion from one actor (a
    different actor per emotion), so train and test share actors as the official lists do."""
    actors = list(actors)
    clips = [f"{a}_{s}_{e}_XX" for a in actors for s in sentences for e in EMOTIONS]
    test = [c for c in clips if (actors.index(int(c[:4])) + EMOTIONS.index(c.split("_")[2])) % 6 == 0]
    train = [c for c in clips if c not in test]
    for i, c in enumerate(clips):
        write_wav(root / "AudioWAV" / f"{c}.wav", 16000, 1.2 + 0.1 * (i % 5), 200 + 100 * EMOTIONS.index(c.split("_")[2]))
        write_frames(root / "Image-01-FPS" / c)
    for fname, rows in (("train.csv", train), ("test.csv", test)):
        (root / fname).write_text("".join(f"{c},{c.split('_')[2]}\n" for c in rows))
    return {"train": train, "test": test}


AVE_CLASSES = ["Dog", "Church bell", "Acoustic guitar"]


def ave_tree(root: Path) -> None:
    """3 classes x (3 train, 1 val, 1 test); trainSet.txt starts with a header line."""
    lists = {"trainSet.txt": ["Category&VideoID&Quality&StartTime&EndTime"], "valSet.txt": [], "testSet.txt": []}
    for k, cls in enumerate(AVE_CLASSES):
        for j, fname in enumerate(["trainSet.txt"] * 3 + ["valSet.txt", "testSet.txt"]):
            vid = f"v{k}{j}x-Y_z"
            lists[fname].append(f"{cls}&{vid}&good&{j}&{j + 3}")
            write_wav(root / "Audio" / f"{vid}.wav", 16000, 2.0, 300 + 200 * k)
            write_frames(root / "Image-01-FPS-SE" / vid, [f"{i:05d}.jpg" for i in range(1, 4)])
    for fname, rows in lists.items():
        (root / fname).write_text("\n".join(rows) + "\n")


KS_LABELS = ["10", "2", "0", "1"]


def ks_tree(root: Path) -> None:
    """4 integer labels (0, 1, 2, 10) x (5 train, 1 test)."""
    train, test = [], []
    for k, label in enumerate(KS_LABELS):
        for j in range(6):
            clip = f"yt-{k}_{j}_{30 + j}"
            (test if j == 5 else train).append(f"{clip},10,{label}")
            write_wav(root / "Audio" / f"{clip}.wav", 16000, 3.0, 400 + 300 * k)
            write_frames(root / "Image-01-FPS" / clip)
    (root / "my_train.txt").write_text("\n".join(train) + "\n")
    (root / "my_test.txt").write_text("\n".join(test) + "\n")


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad")
    cremad_tree(root)
    return root


@pytest.fixture(scope="module")
def ave_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ave")
    ave_tree(root)
    return root


@pytest.fixture(scope="module")
def ks_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ks")
    ks_tree(root)
    return root


# ----------------------------------------------------------------------------- front-ends
def test_front_end_shapes_and_tone_peaks():
    for fe, shape in ((media.cremad_front_end(), (257, 188)), (media.ave_front_end(), (257, 1004)),
                      (media.ave_front_end(22050), (257, 1004)), (media.ks_front_end(), (1024, 128))):
        assert fe.shape == shape
        out = fe(tone(fe.sample_rate, 1.5, 1000.0))
        assert tuple(out.shape) == shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    # a 1 kHz tone peaks in FFT bin 1000 * 512 / rate
    assert int(media.cremad_spectrogram(tone(22050, 3, 1000.0)).mean(1).argmax()) == round(1000 * 512 / 22050)
    ave = media.ave_spectrogram(tone(16000, 10, 1000.0))
    assert int(ave.mean(1).argmax()) == 32
    assert abs(float(ave.mean())) < 1e-4 and abs(float(ave.std()) - 1) < 1e-3       # z-scored
    # fbank: (time, mel); a higher tone peaks in a higher mel bin; 10 s -> 998 frames + padding
    low, high = (media.ks_fbank(tone(16000, 10, f)) for f in (500.0, 3000.0))
    assert int(low[:998].mean(0).argmax()) < int(high[:998].mean(0).argmax())
    assert torch.allclose(low[998:], torch.full_like(low[998:], 4.503877 / (2 * 5.141276)))


def test_cremad_stft_matches_librosa_semantics():
    """The CREMA-D front-end equals a direct numpy STFT with librosa's conventions
    (periodic Hann, frames centred with reflect padding, hop 353)."""
    wave = np.random.default_rng(0).uniform(-1.2, 1.2, 40000).astype(np.float32)
    x = np.clip(np.tile(wave, 2)[:66150], -1, 1).astype(np.float64)
    x = np.pad(x, 256, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    frames = np.stack([x[i * 353: i * 353 + 512] * window for i in range(188)], axis=1)
    reference = np.log(np.abs(np.fft.rfft(frames, axis=0)) + 1e-7)
    ours = media.cremad_spectrogram(wave).numpy()
    assert ours.shape == reference.shape == (257, 188)
    assert np.allclose(ours, reference, atol=2e-3)


def test_fit_length_and_frame_helpers(tmp_path):
    assert media.fit_length(np.arange(3.0), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert media.fit_length(np.arange(10.0), 4).tolist() == [0, 1, 2, 3]
    assert media.sample_frame_indices(10, 3) == [1, 5, 8]
    assert media.sample_frame_indices(1, 3) == [0, 0, 0]
    assert media.sample_frame_indices(4, 4) == [0, 1, 2, 3]
    write_frames(tmp_path / "f", ["10.jpg", "9.jpg", "00002.jpg", "1.jpg"])
    assert media.list_frames(tmp_path / "f") == ["1.jpg", "00002.jpg", "9.jpg", "10.jpg"]
    assert media.list_frames(tmp_path / "missing") == []


def test_read_wav_resamples_and_names_bad_files(tmp_path):
    write_wav(tmp_path / "a.wav", 16000, 1.0, 440.0)
    assert len(media.read_wav(tmp_path / "a.wav", 22050)) == 22050
    with pytest.raises(DataError, match="nope.wav: audio file missing"):
        media.read_wav(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wav" * 10)
    with pytest.raises(DataError, match="bad.wav: cannot read audio"):
        media.read_wav(tmp_path / "bad.wav")
    (tmp_path / "lfs.wav").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    with pytest.raises(DataError, match="lfs.wav: a git-lfs pointer"):
        media.read_wav(tmp_path / "lfs.wav")


# ----------------------------------------------------------------------------- CREMA-D
def test_cremad_official_split_shapes_and_numeric_frame_order(cremad_root):
    b = build("cremad", cremad_root, num_frames=3, train_augment=False)
    assert b.class_names == EMOTIONS and b.num_classes == 6
    assert b.info["list_counts"] == {"train.csv": 60, "test.csv": 12}
    assert (len(b.train), len(b.val), len(b.test)) == (54, 6, 12)
    assert b.info["class_counts"]["val"] == [1] * 6                 # stratified 9:1 carve
    assert not set(b.val.ids) & set(b.train.ids)
    assert b.info["shared_ids"] == {"train&val": 0, "train&test": 0, "val&test": 0}
    assert b.modalities[0].shape == (1, 257, 188) and b.modalities[1].shape == (3, 3, SIZE, SIZE)

    item = b.test[0]
    assert tuple(item["audio"].shape) == (1, 257, 188) and item["audio"].dtype == torch.float32
    assert tuple(item["visual"].shape) == (3, 3, SIZE, SIZE)
    assert item["label"] == EMOTIONS.index(b.test.ids[0].split("_")[2]) and item["index"] == 0
    # frames come in numeric order 1, 2, 10 (brightness rises); lexicographic would give 1, 10, 2
    brightness = item["visual"].mean(dim=(1, 2, 3))
    assert brightness[0] < brightness[1] < brightness[2]

    batch = next(iter(torch.utils.data.DataLoader(b.train, batch_size=4)))
    assert tuple(batch["audio"].shape) == (4, 1, 257, 188) and tuple(batch["visual"].shape) == (4, 3, 3, SIZE, SIZE)


def test_cremad_val_carving_is_deterministic(cremad_root):
    a, b = build("cremad", cremad_root), build("cremad", cremad_root)
    assert a.val.ids == b.val.ids and a.train.ids == b.train.ids
    other = build("cremad", cremad_root, split_seed=1)
    assert other.val.ids != a.val.ids and sorted(other.val.ids + other.train.ids) == sorted(a.val.ids + a.train.ids)
    assert build("cremad", cremad_root).train.train and not build("cremad", cremad_root, train_augment=False).train.train
    item = a.train[0]                                                # train-time crops keep the shape
    assert tuple(item["visual"].shape) == (1, 3, SIZE, SIZE)


def test_cremad_actor_disjoint_split(cremad_root):
    b = build("cremad", cremad_root, split="actor_disjoint")
    actors = {s: set(b.split(s).extras["actor"]) for s in ("train", "val", "test")}
    assert all(actors.values())
    assert not actors["train"] & actors["val"] and not actors["train"] & actors["test"] and not actors["val"] & actors["test"]
    assert len(b.train) + len(b.val) + len(b.test) == 72
    official = build("cremad", cremad_root)
    assert set(official.train.extras["actor"]) & set(official.test.extras["actor"])   # the leak it avoids


def test_missing_media_error_names_the_file_and_skip_counts(tmp_path):
    root = tmp_path / "cremad"
    lists = cremad_tree(root, actors=[1001, 1002], sentences=("DFA",))
    gone_wav = lists["train"][0]
    gone_frames = lists["test"][0]
    (root / "AudioWAV" / f"{gone_wav}.wav").unlink()
    shutil.rmtree(root / "Image-01-FPS" / gone_frames)

    with pytest.raises(DataError) as e:
        build("cremad", root)
    assert str(root / "AudioWAV" / f"{gone_wav}.wav") in str(e.value) or str(root / "Image-01-FPS" / gone_frames) in str(e.value)
    assert "1 more clips" in str(e.value) and "on_bad_media=skip" in str(e.value)

    b = build("cremad", root, on_bad_media="skip")
    assert b.info["skipped_total"] == 2
    skipped = b.train.skipped + b.val.skipped + b.test.skipped
    assert sorted(skipped) == sorted([gone_wav, gone_frames]) and gone_frames in b.test.skipped
    assert len(b.train) + len(b.val) + len(b.test) == 10
    assert gone_wav not in b.train.ids + b.val.ids


def test_corrupt_wav_fails_at_load_or_is_skipped_when_verified(tmp_path):
    root = tmp_path / "cremad"
    lists = cremad_tree(root, actors=[1001, 1002], sentences=("DFA",))
    bad = lists["test"][0]
    (root / "AudioWAV" / f"{bad}.wav").write_bytes(b"garbage!" * 100)
    b = build("cremad", root)                                         # the existence scan passes
    with pytest.raises(DataError, match=f"{bad}.wav: cannot read audio"):
        b.test[b.test.ids.index(bad)]
    v = build("cremad", root, on_bad_media="skip", verify_media=True)
    assert v.test.skipped == [bad]
    (root / "AudioWAV" / f"{bad}.wav").write_bytes(b"RIFF" + bytes(40))   # header-sized: caught by the cheap scan
    assert build("cremad", root, on_bad_media="skip").test.skipped == [bad]


def test_missing_root_and_split_file_point_at_prepare(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="raygap prepare cremad"):
        build("cremad", tmp_path / "nowhere")
    monkeypatch.setenv("RAYGAP_DATA", str(tmp_path))
    (tmp_path / "ks").mkdir()
    entry = DATASETS.get("ks")
    with pytest.raises(DataError) as e:
        entry.obj(entry.params(), DataCommon())
    assert str(tmp_path / "ks" / "my_train.txt") in str(e.value) and "raygap prepare ks" in str(e.value)
    monkeypatch.delenv("RAYGAP_DATA")
    with pytest.raises(DataError, match="RAYGAP_DATA"):
        entry.obj(entry.params(), DataCommon())


# ----------------------------------------------------------------------------- AVE
def test_ave_own_splits_classes_and_shapes(ave_root):
    b = build("ave", ave_root, train_augment=False)
    assert b.class_names == sorted(AVE_CLASSES)                       # sorted train labels
    assert (len(b.train), len(b.val), len(b.test)) == (9, 3, 3)        # header skipped, own val split
    assert b.info["list_counts"] == {"trainSet.txt": 9, "valSet.txt": 3, "testSet.txt": 3}
    item = b.val[0]
    assert tuple(item["audio"].shape) == (1, 257, 1004) and tuple(item["visual"].shape) == (4, 3, SIZE, SIZE)
    assert b.modalities[0].shape == (1, 257, 1004)
    assert abs(float(item["audio"].mean())) < 1e-3                     # z-scored per clip
    assert tuple(build("ave", ave_root, sample_rate=22050).test[0]["audio"].shape) == (1, 257, 1004)


def test_classes_file_fixes_the_order(tmp_path):
    ave_tree(tmp_path)
    order = ["Church bell", "Acoustic guitar", "Dog", "Unseen class"]
    (tmp_path / "classes.txt").write_text("\n".join(order) + "\n")
    b = build("ave", tmp_path)
    assert b.class_names == order and b.num_classes == 4 and b.info["class_source"].endswith("classes.txt")
    assert b.test[b.test.ids.index("v14x-Y_z")]["label"] == 0          # class 1 (Church bell) listed first
    (tmp_path / "classes.txt").write_text("Dog\nChurch bell\n")
    with pytest.raises(DataError, match="Acoustic guitar"):
        build("ave", tmp_path)


# ----------------------------------------------------------------------------- Kinetics-Sounds
def test_ks_numeric_classes_carving_shapes_and_precomputed_audio(ks_root):
    b = build("ks", ks_root, train_augment=False)
    assert b.class_names == ["0", "1", "2", "10"]                     # numeric, not "0", "1", "10", "2"
    assert (len(b.train), len(b.val), len(b.test)) == (16, 4, 4)
    assert b.info["class_counts"]["val"] == [1, 1, 1, 1]
    item = b.test[0]
    assert tuple(item["audio"].shape) == (1, 1024, 128) and tuple(item["visual"].shape) == (3, 3, SIZE, SIZE)

    clip = b.test.ids[1]
    npy = ks_root / "audio_npy" / f"{clip}.npy"
    npy.parent.mkdir(exist_ok=True)
    try:
        np.save(npy, np.full((1024, 128), 7.0, dtype=np.float32))
        assert torch.equal(b.test[1]["audio"], torch.full((1, 1024, 128), 7.0))
        wave = media.read_wav(ks_root / "Audio" / f"{clip}.wav", 16000)
        np.save(npy, wave)                                              # a 1-D waveform goes through the front-end
        assert torch.allclose(b.test[1]["audio"], media.ks_fbank(wave).unsqueeze(0))
        np.save(npy, np.zeros((128, 1024), dtype=np.float32))
        with pytest.raises(DataError, match=f"{clip}.npy: precomputed audio has shape"):
            b.test[1]
        assert build("ks", ks_root).info["precomputed_audio"] == 1
    finally:
        npy.unlink()


# ----------------------------------------------------------------------------- prepare
def prepare_cli(dataset: str, raw, out, **options) -> int:
    """``raygap prepare DATASET RAW OUT --option KEY=VALUE ...`` in this process: its exit code."""
    return cli_main(["prepare", dataset, str(raw), str(out),
                     *(w for k, v in options.items() for w in ("--option", f"{k}={v}"))])


def test_cremad_label_parsing_and_generated_split():
    assert layouts.cremad_label("1001_DFA_ANG_XX") == "ANG"
    with pytest.raises(ValueError):
        layouts.cremad_label("1001_DFA_XYZ_XX")
    with pytest.raises(ValueError):
        layouts.cremad_label("notaclip")
    clips = [f"{a}_{s}_{e}_XX" for a in range(1001, 1011) for s in ("DFA", "IEO") for e in EMOTIONS]
    train, test = layouts.cremad_split_rows(clips, seed=0)
    assert len(train) + len(test) == 120 and not {c for c, _ in train} & {c for c, _ in test}
    assert [y for _, y in test].count("ANG") == 2 and len(test) == 12   # 744/7442 of 20 per emotion, stratified
    assert all(c.split("_")[2] == y for c, y in train + test)
    assert layouts.cremad_split_rows(clips, seed=0) == (train, test)
    assert layouts.cremad_split_rows(clips, seed=1) != (train, test)
    # the paper's proportions on CREMA-D's class sizes: 1087 NEU + 5 x 1271 -> 744 test
    sizes = [1087] + [1271] * 5
    full = [f"{1001 + i % 91}_{i:05d}_{e}_XX" for e, n in zip(EMOTIONS, sizes) for i in range(n)]
    train, test = layouts.cremad_split_rows(full)
    assert (len(train), len(test)) == (6698, 744)


def _cremad_raw(raw: Path) -> list[str]:
    clips = [f"{a}_DFA_{e}_XX" for a in (1001, 1002) for e in EMOTIONS]
    for c in clips:
        write_wav(raw / "AudioWAV" / f"{c}.wav", 16000, 1.5, 440.0)
        (raw / "VideoFlash").mkdir(parents=True, exist_ok=True)
        (raw / "VideoFlash" / f"{c}.flv").write_bytes(b"FLV")
    return clips


def test_prepare_cremad_without_ffmpeg_when_frames_exist(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    clips = _cremad_raw(raw)
    for c in clips:                                   # frames already extracted: no ffmpeg needed
        write_frames(out / "Image-01-FPS" / c)
    assert prepare_cli("cremad", raw, out, seed=3) == 0
    assert sorted(p.stem for p in (out / "AudioWAV").glob("*.wav")) == sorted(clips)
    b = build("cremad", out)
    assert len(b.train) + len(b.val) + len(b.test) == 12 and len(b.test) >= 1
    assert tuple(b.test[0]["audio"].shape) == (1, 257, 188)


def test_prepare_reports_missing_ffmpeg_and_bad_options(tmp_path, monkeypatch, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _cremad_raw(raw)
    monkeypatch.setattr(shutil, "which", lambda name: None)          # no system ffmpeg ...
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)         # ... and no bundled one
    assert prepare_cli("cremad", raw, out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ffmpeg not found" in err and "pip install imageio-ffmpeg" in err
    assert "apt-get install ffmpeg" in err
    assert not (out / "train.csv").exists()                      # failed before writing anything
    assert prepare_cli("cremad", raw, out, sed=1) == 2
    assert "nearest: 'seed'" in capsys.readouterr().err
    assert prepare_cli("kss", raw, out) == 2
    assert prepare_cli("ks", tmp_path / "absent", out) == 2



def test_an_option_named_like_an_argument_of_prepare_is_an_unknown_option(tmp_path, capsys):
    # `--option log=1` once replaced prepare()'s log function ('str' object is not callable) and
    # `--option raw_dir=x` collided with its argument: tracebacks. They are options like any other.
    raw, out = tmp_path / "raw", tmp_path / "out"
    _cremad_raw(raw)
    for key in ("log", "dataset", "raw_dir", "out_dir"):
        assert cli_main(["prepare", "cremad", str(raw), str(out), "--option", f"{key}=1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"raygap: error: --option {key}: unknown option for cremad (options: workers, "
                              "overwrite, cache, train_csv, test_csv, seed, test_fraction) (nearest: '")
        assert err.count("\n") == 1 and not out.exists()

# ----------------------------------------------------------------------------- prepare, end to end
FFMPEG = ffmpeg_exe()
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg: none on PATH and imageio-ffmpeg not installed")


def test_without_a_system_ffmpeg_the_bundled_one_is_used(monkeypatch):
    pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    exe = ffmpeg_exe()
    assert exe and "imageio_ffmpeg" in exe
    out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ffmpeg version")


def make_video(path: Path, seconds: int, freq: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc=size=64x48:rate=5:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=44100:duration={seconds}",
                    "-shortest", "-pix_fmt", "yuv420p", str(path)], check=True)


@needs_ffmpeg
def test_prepare_end_to_end_with_ffmpeg(tmp_path):
    # Kinetics-Sounds: mp4s in class sub-folders, integer labels
    raw, out = tmp_path / "ks_raw", tmp_path / "ks"
    rows = {"my_train.txt": [], "my_test.txt": []}
    for k in range(2):
        for j in range(3):
            clip = f"id{k}{j}_{j}"
            make_video(raw / f"class{k}" / f"{clip}.mp4", 3, 500 + 500 * k)
            rows["my_test.txt" if j == 2 else "my_train.txt"].append(f"{clip},10,{k}")
    for fname, r in rows.items():
        (raw / fname).write_text("\n".join(r) + "\n")
    assert prepare_cli("ks", raw, out, workers=2) == 0
    wav = out / "Audio" / "id00_0.wav"
    assert sf.info(str(wav)).samplerate == 16000 and sf.info(str(wav)).channels == 1
    assert len(media.list_frames(out / "Image-01-FPS" / "id00_0")) == 3          # 1 fps over 3 s
    b = build("ks", out)
    assert (len(b.train), len(b.val), len(b.test)) == (2, 2, 2)
    assert tuple(b.test[0]["audio"].shape) == (1, 1024, 128) and tuple(b.test[0]["visual"].shape) == (3, 3, SIZE, SIZE)
    assert prep.prepare("ks", raw, out, log=lambda s: None)["jobs"] == 0           # everything kept on a re-run

    # AVE: frames only within the event segment
    raw, out = tmp_path / "ave_raw", tmp_path / "ave"
    lists = {"trainSet.txt": [], "valSet.txt": [], "testSet.txt": []}
    for k, cls in enumerate(["Dog", "Bus"]):
        for j, fname in enumerate(lists):
            vid = f"a{k}{j}"
            make_video(raw / "AVE" / f"{vid}.mp4", 4, 700 + 300 * k)
            lists[fname].append(f"{cls}&{vid}&good&1&3")
    for fname, r in lists.items():
        (raw / fname).write_text("\n".join(r) + "\n")
    assert prepare_cli("ave", raw, out) == 0
    assert len(media.list_frames(out / "Image-01-FPS-SE" / "a00")) == 2          # seconds 1..3 of 4
    b = build("ave", out)
    assert tuple(b.val[0]["audio"].shape) == (1, 257, 1004) and tuple(b.val[0]["visual"].shape) == (4, 3, SIZE, SIZE)

    # CREMA-D: .flv videos, WAVs copied, lists generated; a missing video is reported (exit 1)
    raw, out = tmp_path / "cremad_raw", tmp_path / "cremad"
    clips = [f"{a}_DFA_{e}_XX" for a in (1001, 1002) for e in EMOTIONS[:2]]
    for c in clips:
        write_wav(raw / "AudioWAV" / f"{c}.wav", 16000, 2.0, 440.0)
        make_video(raw / "VideoFlash" / f"{c}.flv", 2, 440)
    (raw / "train.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in clips[:3] + ["1003_DFA_NEU_XX"]))
    (raw / "test.csv").write_text(f"{clips[3]},{clips[3].split('_')[2]}\n")
    assert prepare_cli("cremad", raw, out) == 1
    assert "1003_DFA_NEU_XX" in (out / "prepare_failures.txt").read_text()
    b = build("cremad", out, on_bad_media="skip")
    assert b.info["skipped_total"] == 1 and len(b.test) == 1
    assert tuple(b.test[0]["audio"].shape) == (1, 257, 188)
