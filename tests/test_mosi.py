"""The ``mosi`` loader on small pickles built here in both published layouts (MMSA's
aligned_50.pkl / unaligned_50.pkl and MulT's mosi_data.pkl): shapes, labels, targets,
sanitising, format detection, and one clear line for each bad file."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

import raygap.data  # noqa: F401  (registers the datasets)
from raygap.config import resolve
from raygap.data.base import DataCommon, TensorSplit
from raygap.data.mosi import MosiParams, binary_labels, build, seven_class_labels
from raygap.errors import ConfigError, DataError
from raygap.registry import DATASETS

COUNTS = {"train": 12, "valid": 4, "test": 6}
# unaligned-style: each modality its own (L, D)
SHAPES = {"text": (5, 8), "audio": (7, 3), "vision": (6, 4)}
TEST_SCORES = [-3.0, -1.4, -0.2, 0.0, 0.5, 2.6]     # hand-checked targets below
TRAIN_SCORES = [-2.8, -2.5, -1.5, -0.6, -0.4, 0.0, 0.2, 1.0, 1.5, 2.4, 3.0, 3.4]


def scores(split: str) -> np.ndarray:
    if split == "test":
        return np.array(TEST_SCORES)
    if split == "train":
        return np.array(TRAIN_SCORES)
    return np.array([-1.0, 0.0, 0.6, 2.0])


def features(split: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, list(COUNTS).index(split)])
    return {k: rng.standard_normal((COUNTS[split], *SHAPES[k])).astype(np.float32) for k in SHAPES}


def mmsa(seed: int = 0) -> dict:
    data = {}
    for s, n in COUNTS.items():
        d = features(s, seed)
        d["audio_lengths"] = np.full(n, SHAPES["audio"][0], dtype=np.int64) - np.arange(n) % 3
        d["vision_lengths"] = np.full(n, SHAPES["vision"][0], dtype=np.int64)
        d["regression_labels"] = scores(s).astype(np.float32)
        d["classification_labels"] = binary_labels(scores(s)).astype(np.float32)
        d["id"] = [f"vid{s}{i}$_${i + 1}" for i in range(n)]
        d["raw_text"] = [f"words {i}" for i in range(n)]
        data[s] = d
    data["train"]["audio"][0, 0, 0] = -np.inf      # as in common copies of MOSI's COVAREP audio
    data["train"]["audio"][3, 2, 1] = -np.inf
    data["test"]["vision"][1, 2, 0] = np.nan
    return data


def mult(seed: int = 1) -> dict:
    data = {}
    for s, n in COUNTS.items():
        d = features(s, seed)
        d["labels"] = scores(s).astype(np.float32).reshape(n, 1, 1)
        d["id"] = np.array([[f"v{s}{i}", str(i)] for i in range(n)])
        data[s] = d
    data["valid"]["audio"][2, 0, 0] = np.inf
    return data


def write(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def load(tmp_path, obj=None, file="aligned_50.pkl", **kw):
    if obj is not None:
        write(tmp_path / file, obj)
    return build(MosiParams(file=file, **kw), DataCommon(root=str(tmp_path)))


# ----------------------------------------------------------------------------- contract
def test_registered_in_memory_with_validating_params():
    entry = DATASETS.get("mosi")
    assert entry.obj is build and entry.params is MosiParams and entry.meta.get("in_memory")
    for f in dataclasses.fields(MosiParams):
        assert f.metadata.get("help"), f.name
        if "choices" in f.metadata:
            assert f.default in f.metadata["choices"], f.name
    cfg = resolve({"data": {"name": "mosi", "target": "7class", "format": "mult"}})
    assert cfg.params("data").target == "7class" and cfg.params("data").file == "aligned_50.pkl"
    with pytest.raises(ConfigError) as e:
        resolve({"data": {"name": "mosi", "target": "ternary"}})
    assert "data.target" in e.value.line()


def test_mmsa_shapes_labels_and_extras(tmp_path):
    data = mmsa()
    b = load(tmp_path, data)
    assert b.name == "mosi" and b.task == "regression" and b.num_classes == 1
    assert b.modality_names == ["text", "audio", "vision"]
    assert {m.name: (m.kind, m.shape) for m in b.modalities} == {k: ("sequence", v) for k, v in SHAPES.items()}
    assert b.info["format"] == "mmsa" and b.info["format_source"] == "detected"
    assert b.info["counts"] == {"train": 12, "val": 4, "test": 6}
    for s, fs in (("train", "train"), ("val", "valid"), ("test", "test")):
        split = b.split(s)
        assert isinstance(split, TensorSplit)
        assert split.labels.dtype == torch.float32 and split.labels.shape == (COUNTS[fs],)
        assert np.array_equal(split.labels.numpy(), scores(fs).astype(np.float32))
        assert split.ids == data[fs]["id"]                # the file's own valid split is validation
        assert np.array_equal(split.extras["audio_lengths"], data[fs]["audio_lengths"])
        assert np.array_equal(split.extras["vision_lengths"], data[fs]["vision_lengths"])
        assert list(split.extras["raw_text"]) == data[fs]["raw_text"]
        for k in SHAPES:
            t = split.tensors[k]
            assert t.dtype == torch.float32 and tuple(t.shape) == (COUNTS[fs], *SHAPES[k])
            assert torch.isfinite(t).all()
        item = split[1]
        assert set(item) == {"text", "audio", "vision", "label", "index"} and item["index"] == 1
    assert torch.equal(b.val.tensors["text"], torch.from_numpy(data["valid"]["text"]))
    sub = b.train.subset(np.array([1, 3]))           # extras follow a subset
    assert sub.ids == [data["train"]["id"][1], data["train"]["id"][3]]
    assert sub.extras["audio_lengths"].tolist() == data["train"]["audio_lengths"][[1, 3]].tolist()


def test_nonfinite_values_become_zero_and_are_counted(tmp_path):
    data = mmsa()
    b = load(tmp_path, data)
    assert b.info["nonfinite"]["train"] == {"text": 0, "audio": 2, "vision": 0}
    assert b.info["nonfinite"]["val"] == {"text": 0, "audio": 0, "vision": 0}
    assert b.info["nonfinite"]["test"] == {"text": 0, "audio": 0, "vision": 1}
    assert b.info["nonfinite_total"] == 3
    a = b.train.tensors["audio"]
    assert a[0, 0, 0] == 0 and a[3, 2, 1] == 0
    keep = np.isfinite(data["train"]["audio"])
    assert np.array_equal(a.numpy()[keep], data["train"]["audio"][keep])
    assert b.test.tensors["vision"][1, 2, 0] == 0


def test_targets_derived_from_the_score(tmp_path):
    write(tmp_path / "aligned_50.pkl", mmsa())
    two = load(tmp_path, target="binary")
    assert two.task == "classification" and two.num_classes == 2
    assert two.class_names == ["negative", "non-negative"]
    # [-3.0, -1.4, -0.2, 0.0, 0.5, 2.6]: negative < 0 <= non-negative
    assert two.test.labels.tolist() == [0, 0, 0, 1, 1, 1] and two.test.labels.dtype == torch.long
    seven = load(tmp_path, target="7class")
    assert seven.num_classes == 7 and seven.class_names == ["-3", "-2", "-1", "0", "1", "2", "3"]
    # round(clip(y, -3, 3)) + 3; 0.5 rounds to even (0), as numpy (and the field's Acc-7) does
    assert seven.test.labels.tolist() == [0, 2, 3, 3, 3, 6]
    # train: [-2.8, -2.5, -1.5, -0.6, -0.4, 0, 0.2, 1, 1.5, 2.4, 3, 3.4 (clipped)]
    assert seven.train.labels.tolist() == [0, 1, 1, 2, 3, 3, 3, 4, 5, 5, 6, 6]
    assert seven.info["class_counts"]["test"] == [1, 0, 1, 3, 0, 0, 1]
    for b in (two, seven):                           # the score stays available
        assert np.array_equal(b.test.extras["score"], np.array(TEST_SCORES, dtype=np.float32))
    assert seven_class_labels(np.array([-3.5, 2.5, -0.5])).tolist() == [0, 5, 3]


def test_mult_format_detected_labels_and_ids(tmp_path):
    data = mult()
    path = write(tmp_path / "mosi_data.pkl", data)
    b = build(MosiParams(file=path), DataCommon())       # an absolute file needs no data root
    assert b.info["format"] == "mult" and b.task == "regression"
    assert np.array_equal(b.test.labels.numpy(), np.array(TEST_SCORES, dtype=np.float32))
    assert b.train.ids[:2] == ["vtrain0_0", "vtrain1_1"]
    assert list(b.train.extras["raw_id"][1]) == ["vtrain1", "1"]
    assert b.info["nonfinite"]["val"]["audio"] == 1 and b.val.tensors["audio"][2, 0, 0] == 0
    explicit = build(MosiParams(file=path, format="mult", target="binary"), DataCommon())
    assert explicit.info["format_source"] == "data.format" and explicit.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataError, match="'regression_labels' missing for format mmsa"):
        build(MosiParams(file=path, format="mmsa"), DataCommon())


def test_data_root_from_environment(tmp_path, monkeypatch):
    (tmp_path / "mosi").mkdir()
    write(tmp_path / "mosi" / "unaligned_50.pkl", mmsa())
    monkeypatch.setenv("RAYGAP_DATA", str(tmp_path))
    b = build(MosiParams(file="unaligned_50.pkl"), DataCommon())
    assert b.info["file"] == str(tmp_path / "mosi" / "unaligned_50.pkl")
    monkeypatch.delenv("RAYGAP_DATA")
    with pytest.raises(DataError, match="no data root") as e:
        build(MosiParams(file="unaligned_50.pkl"), DataCommon())
    assert "\n" not in str(e.value)


def test_modality_selection(tmp_path):
    write(tmp_path / "aligned_50.pkl", mmsa())
    from raygap.trial import load_data

    b = load_data(resolve({"data": {"name": "mosi", "root": str(tmp_path), "modalities": ["vision", "text"]}}))
    assert b.modality_names == ["vision", "text"]


# ----------------------------------------------------------------------------- bad files
def _drop(split: str, key: str):
    def edit(d):
        del d[split][key]
    return edit


def _cut(split: str, key: str):
    def edit(d):
        d[split][key] = d[split][key][:-1]
    return edit


def _bert_only(d):
    for s in d.values():
        n = len(s["text"])
        del s["text"]
        s["text_bert"] = np.zeros((n, 3, 5), dtype=np.float32)


def _no_labels(d):
    del d["train"]["regression_labels"]


BAD = {
    "missing split": (lambda d: d.pop("valid"), "split 'valid' missing"),
    "missing modality": (_drop("test", "vision"), "split 'test' key 'vision' missing"),
    "missing label": (_drop("valid", "regression_labels"), "key 'regression_labels' missing"),
    "no label key": (_no_labels, "neither 'regression_labels' (MMSA) nor 'labels' (MulT)"),
    "bert only": (_bert_only, "only 'text_bert'"),
    "modality length": (_cut("train", "audio"), "'audio' has 11 items, 'text' has 12"),
    "label length": (_cut("test", "regression_labels"), "'regression_labels' has shape (5,) for 6 items"),
    "id length": (_cut("train", "id"), "'id' has 11 items"),
    "lengths length": (_cut("valid", "audio_lengths"), "'audio_lengths' has shape (3,) for 4 items"),
    "flat feature": (lambda d: d["train"].update(text=np.zeros((12, 5))), "expected (N, L, D)"),
    "split shapes": (lambda d: d["test"].update(vision=np.zeros((6, 6, 5), np.float32)),
                     "'vision' has a different (L, D) in each split"),
    "nan label": (lambda d: d["train"]["regression_labels"].__setitem__(2, np.nan), "1 non-finite labels"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_content_is_one_line(tmp_path, case):
    edit, words = BAD[case]
    data = mmsa()
    edit(data)
    path = write(tmp_path / "aligned_50.pkl", data)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    msg = str(e.value)
    assert words in msg and msg.startswith(path) and "\n" not in msg


def test_bert_message_names_file_and_key(tmp_path):
    data = mmsa()
    _bert_only(data)
    path = write(tmp_path / "aligned_50.pkl", data)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    assert path in str(e.value) and "text_bert" in str(e.value) and "split 'train'" in str(e.value)


@pytest.mark.parametrize("content, words", [
    (None, "feature file is missing"),
    (b"this is not a pickle", "not a readable mosi feature pickle (UnpicklingError"),
    (pickle.dumps(mmsa())[:200], "not a readable mosi feature pickle"),
    (pickle.dumps([1, 2, 3]), "expected a dict with splits train / valid / test, got list"),
    (pickle.dumps({"train": [1], "valid": {}, "test": {}}), "split 'train' is a list"),
])
def test_bad_file_is_one_line(tmp_path, content, words):
    path = tmp_path / "aligned_50.pkl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    msg = str(e.value)
    assert words in msg and str(path) in msg and "\n" not in msg


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "mosi.yaml"
    cfg.write_text(f"data: {{name: mosi, root: '{tmp_path}', file: nowhere.pkl}}\n"
                   "train: {epochs: 1, device: cpu}\n")
    from raygap.cli import main

    assert main(["train", str(cfg), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere.pkl") in lines[0] and "missing" in lines[0]


def test_trains_one_epoch(tmp_path):
    """The bundle runs through a trial: regression on three sequence modalities."""
    from raygap.trial import run_trial

    write(tmp_path / "aligned_50.pkl", mmsa())
    cfg = resolve({"data": {"name": "mosi", "root": str(tmp_path)},
                   "model": {"fusion": "gated", "sequence_backbone": "meanpool", "hidden": 8},
                   "method": {"name": "concat"}, "optim": {"name": "adam", "lr": 1e-3},
                   "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "threads": 1, "checkpoint": False}})
    r = run_trial(cfg)
    from raygap.trial import load_data

    n = len(load_data(cfg).test)
    h = r.history[0]
    assert r.metrics["mae"] == h["test_mae"] and 0 < r.metrics["mae"] < 6      # labels in [-3, 3]
    assert r.metrics["acc7"] == h["test_acc7"]
    assert r.metrics["acc7"] * n == pytest.approx(round(r.metrics["acc7"] * n))  # a count of test samples
    assert {f"mae_{m}" for m in ("text", "audio", "vision")} <= set(r.metrics)
