"""Accuracy, macro-F1 and cross-entropy on hand-computed numbers; the learning-rate schedules by
hand; bf16 autocast on the CPU through the one-trial engine."""
import math

import numpy as np
import pytest
import torch

from raygap.config import resolve
from raygap.metrics import accuracy, classification_metrics, cross_entropy, macro_f1
from raygap.trial import build_scheduler, run_trial
from _tiny import avdigits

Y = np.array([0, 0, 1, 1, 2, 2])
PRED = np.array([0, 1, 1, 1, 2, 0])


def test_accuracy_and_macro_f1_by_hand():
    assert accuracy(PRED, Y) == pytest.approx(4 / 6)
    # per class: 0: P 1/2, R 1/2 -> F1 0.5; 1: P 2/3, R 1 -> 0.8; 2: P 1, R 1/2 -> 2/3
    assert macro_f1(PRED, Y) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class predicted but never present scores 0 (zero_division=0): (2/3 + 0) / 2
    assert macro_f1(np.array([0, 1]), np.array([0, 0])) == pytest.approx(1 / 3)
    assert math.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_cross_entropy_and_the_per_modality_metrics_by_hand():
    logits = 2.0 * np.eye(3)[PRED]                  # 2 on the predicted class, 0 elsewhere
    # -log p = log(e^2 + 2) - 2 where right, log(e^2 + 2) where wrong: 4 right, 2 wrong
    z = math.log(math.exp(2) + 2)
    want = (4 * (z - 2) + 2 * z) / 6
    assert cross_entropy(logits, Y) == pytest.approx(want, abs=1e-12)
    m = classification_metrics({"fused": logits, "audio": 2.0 * np.eye(3)[Y]}, Y, 3)
    assert m["acc"] == pytest.approx(4 / 6) and m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["loss"] == pytest.approx(want)
    assert m["acc_audio"] == 1.0 and m["macro_f1_audio"] == 1.0 and m["loss_audio"] == pytest.approx(z - 2)
    # against scikit-learn's own log_loss (an independent implementation: it takes probabilities)
    from sklearn.metrics import log_loss
    rng = np.random.default_rng(0)
    lg = rng.normal(0, 2, (50, 4))
    y = rng.integers(0, 4, 50)
    p = np.exp(lg - lg.max(1, keepdims=True))
    assert cross_entropy(lg, y) == pytest.approx(log_loss(y, p / p.sum(1, keepdims=True), labels=range(4)), rel=1e-9)
    # confident logits: the log-softmax keeps the precision a clipped probability loses
    assert cross_entropy(np.array([[0.0, -50.0]]), np.array([1])) == pytest.approx(50.0, abs=1e-9)


def _lrs(optim: dict, epochs: int) -> list[float]:
    cfg = resolve({"optim": optim})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    sched = build_scheduler(cfg.optim, opt, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_and_cosine_schedules_by_hand():
    assert _lrs({"lr": 0.1, "scheduler": "step", "step_size": 2, "gamma": 0.5}, 5) == \
        pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    # cosine over 4 epochs: lr (1 + cos(pi e / 4)) / 2
    assert _lrs({"lr": 1.0, "scheduler": "cosine"}, 4) == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    assert build_scheduler(resolve({}).optim, None, 4) is None


def test_bf16_autocast_on_the_cpu_trains_and_steps_the_schedule():
    base = {"data": avdigits(visual_corrupt=0.3), "model": {"backbone": "small", "width": 4},
            "optim": {"lr": 0.1, "scheduler": "step", "step_size": 1, "gamma": 0.5},
            "train": {"epochs": 2, "batch_size": 128, "device": "cpu", "threads": 2, "checkpoint": False}}
    fp32 = run_trial(resolve(base))
    bf16 = run_trial(resolve({**base, "train": {**base["train"], "amp": "bf16"}}))
    # each epoch's record carries the learning rate the schedule set for the next: 0.05, 0.025
    assert [h["lr"] for h in bf16.history] == pytest.approx([0.05, 0.025])
    a, b = fp32.history[0]["train_loss"], bf16.history[0]["train_loss"]
    assert math.isfinite(b) and a != b                      # autocast ran: bf16 rounding changed the loss
    assert b == pytest.approx(a, rel=0.05)                  # ... by rounding, not by training something else
    assert bf16.metrics["acc"] > 0.3                        # 10 classes: it learned
