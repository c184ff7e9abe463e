"""The one-trial engine: end to end on avdigits, resume, selection on validation, failures."""
import math

import pytest
import torch

from raygap.config import resolve
from raygap.selection import final_metrics, select_epoch
from raygap.trial import TrialDiverged, checkpoint_due, load_data, run_trial
from _tiny import avdigits

FAST = {"data": avdigits(visual_corrupt=0.3),
        "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.05}, "train": {"epochs": 4, "batch_size": 128, "device": "cpu", "threads": 2, "checkpoint_every": 1}}

TIMING = ("train_seconds", "epoch_seconds")


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


class Crash(Exception):
    pass


def test_resumed_trial_ends_with_the_same_metrics(tmp_path):
    cfg = resolve(FAST)
    full = run_trial(cfg, checkpoint_dir=tmp_path / "a")

    def crash_after_epoch_1(record, ckpt):
        if record["epoch"] == 1:
            raise Crash()

    with pytest.raises(Crash):
        run_trial(cfg, checkpoint_dir=tmp_path / "b", report=crash_after_epoch_1)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    seen = []
    resumed = run_trial(cfg, checkpoint_dir=tmp_path / "b", report=lambda r, c: seen.append(r["epoch"]))
    assert seen == [2, 3]                       # only the missing epochs ran
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.metrics == pytest.approx({k: v for k, v in full.metrics.items()})


def test_same_seed_same_numbers_and_every_metric_present(tmp_path):
    cfg = resolve({**FAST, "train": {**FAST["train"], "epochs": 2}})
    a = run_trial(cfg)
    b = run_trial(cfg)
    assert _strip(a.history) == _strip(b.history)
    # every metric is the test value of the epoch validation picked (the first of ties), the
    # last_ ones the last epoch's, the val_ ones validation's at the picked epoch
    best = max(range(2), key=lambda e: (a.history[e]["val_acc"], -e))
    assert a.metrics["best_epoch"] == best
    for k in ("acc", "macro_f1", "acc_audio", "acc_visual", "macro_f1_audio", "macro_f1_visual", "loss"):
        assert a.metrics[k] == a.history[best][f"test_{k}"] and math.isfinite(a.metrics[k])
        assert a.metrics[f"last_{k}"] == a.history[-1][f"test_{k}"]
        assert a.metrics[f"val_{k}"] == a.history[best][f"val_{k}"]
    assert a.metrics["acc"] > 0.2       # 10 classes: clearly above chance after two epochs


def test_reported_epoch_is_chosen_on_validation_not_test():
    history = [
        {"epoch": 0, "val_acc": 0.5, "test_acc": 0.9, "test_macro_f1": 0.9},
        {"epoch": 1, "val_acc": 0.7, "test_acc": 0.6, "test_macro_f1": 0.6},
        {"epoch": 2, "val_acc": 0.7, "test_acc": 0.8, "test_macro_f1": 0.8},
    ]
    assert select_epoch(history, "acc") == 1            # best val; earliest of ties
    m = final_metrics(history, "acc")
    assert m["acc"] == 0.6 and m["best_epoch"] == 1 and m["last_acc"] == 0.8
    assert select_epoch([{"val_loss": 2.0}, {"val_loss": 1.0}], "loss") == 1


def test_diverging_trial_raises():
    cfg = resolve({**FAST, "data": {**FAST["data"], "nan_train": 1}, "train": {**FAST["train"], "epochs": 3}})
    with pytest.raises(TrialDiverged, match="not finite at epoch 0"):
        run_trial(cfg)


def test_modalities_subset_and_unknown_modality():
    cfg = resolve({**FAST, "data": {**FAST["data"], "modalities": ["visual"]}, "train": {**FAST["train"], "epochs": 1}})
    r = run_trial(cfg)
    assert "acc_visual" in r.metrics and "acc_audio" not in r.metrics
    from raygap.errors import ConfigError
    with pytest.raises(ConfigError):
        load_data(resolve({**FAST, "data": {**FAST["data"], "modalities": ["smell"]}}))


def test_metric_names_are_the_names_the_evaluations_return():
    import numpy as np

    from raygap.metrics import classification_metrics, metric_names, regression_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    cls = classification_metrics({"fused": rng.normal(size=(50, 3)), "audio": rng.normal(size=(50, 3))}, y, 3)
    reg = regression_metrics({"fused": rng.normal(size=(50, 1)), "text": rng.normal(size=(50, 1))},
                             rng.normal(size=50))
    assert set(cls) <= metric_names("classification", ["audio"])
    assert set(reg) <= metric_names("regression", ["text"])
    assert {"val_acc_audio", "last_macro_f1", "best_epoch", "data_pct"} <= metric_names("classification", ["audio"],
                                                                                       ("data_pct",))
    assert "acc_visual" not in metric_names("classification", ["audio"]) and "mae" not in metric_names(
        "classification", ["audio"])


def test_checkpoint_cadence():
    def due(epochs, every, final):
        return [e for e in range(epochs) if checkpoint_due(e, every, epochs, final)]

    # 100 epochs every 5 in a grid: after epochs 4, 9, ..., 94 (0-based); none after epoch 99
    assert due(100, 5, False) == [4, 9, 14, 19, 24, 29, 34, 39, 44, 49, 54, 59, 64, 69, 74, 79, 84, 89, 94]
    assert due(100, 5, True)[-2:] == [94, 99]           # raygap train keeps the trained model
    assert due(3, 1, False) == [0, 1] and due(3, 1, True) == [0, 1, 2]
    assert due(12, 5, False) == [4, 9] and due(4, 5, False) == [] and due(1, 1, False) == []


def test_train_keeps_the_final_checkpoint_a_grid_does_not(tmp_path):
    cfg = resolve({**FAST, "train": {**FAST["train"], "epochs": 2, "checkpoint_every": 5}})
    seen = {True: [], False: []}
    for final in (True, False):
        run_trial(cfg, checkpoint_dir=tmp_path / str(final), final_checkpoint=final,
                  report=lambda rec, ck, f=final: seen[f].append(ck is not None))
    assert seen == {True: [False, True], False: [False, False]}
    assert (tmp_path / "True" / "checkpoint.pt").is_file() and not (tmp_path / "False" / "checkpoint.pt").exists()


def test_channels_last_changes_neither_the_trial_nor_its_numbers_beyond_rounding():
    base = {**FAST, "train": {**FAST["train"], "epochs": 2, "checkpoint": False}}
    plain = resolve(base)
    nhwc = resolve({**base, "train": {**base["train"], "channels_last": "on"}})
    assert plain.key() == nhwc.key()                      # how it runs, not what it computes
    a, b = run_trial(plain), run_trial(nhwc)
    for ha, hb in zip(a.history, b.history, strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-3)    # rounding, grown over steps
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-3)
