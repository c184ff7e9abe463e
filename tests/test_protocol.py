"""What a trial's worker reports and the driver reads back (raygap/runner/protocol.py): every
kind of part survives encode -> decode, and the keys the trackers leave out are the protocol's
own (no Ray started: the protocol is plain JSON)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from raygap.runner import protocol

# one part of each kind, as the trainable (raygap/runner/worker.py) sends it
EXAMPLES = {
    "record": {"epoch": 2, "val_acc": 0.75, "lr": float("nan"), "stage": "adaptive", "gap_hist": [3, 1]},
    "final": {"metrics": {"acc": 0.5, "best_epoch": 1}, "history": [{"epoch": 0}, {"epoch": 1}],
              "info": {"device": "cpu", "resumed_from_epoch": None, "wall_seconds": 1.5}},
    "failed": {"error": "DataError: /data/cremad: no train.csv", "traceback": None},
    "resumed": {"epoch": 1, "uri": "s3://bucket/exp/trial/checkpoint_000001", "history": [{"epoch": 0}, {"epoch": 1}],
                "warmup_from": "4f0c", "note": "checkpoint /gone not usable (FileNotFoundError)"},
    "warnings": ["UserWarning: a warning (media.py:12)", "RuntimeWarning: another (trial.py:3)"],
    "warmup": {"wkey": "w0123456789abcde", "epoch": 1, "uri": "/results/ray/warmups/w0123456789abcde"},
}


def same(a, b) -> bool:
    """Equal, NaN equal to NaN (an epoch record may hold NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_the_examples_cover_every_kind():
    # a kind added to the protocol needs an example here, and so is checked below
    assert set(EXAMPLES) == set(protocol.KINDS) == {"record", "final", "failed", "resumed", "warnings", "warmup"}


@pytest.mark.parametrize("kind", protocol.KINDS)
def test_each_kind_of_part_survives_encode_then_decode(kind):
    sent = protocol.encode(4242, "node-a", **{kind: EXAMPLES[kind]})
    got = protocol.decode(sent)
    assert list(got) == [kind]
    expected = dict(EXAMPLES[kind]) if kind != "warnings" else list(EXAMPLES[kind])
    if kind == "record":                           # where it was trained, read from the report's pid and node
        expected.update(worker_pid=4242, worker_node="node-a")
    assert same(got[kind], expected)
    assert sent["pid"] == 4242 and sent["node"] == "node-a"


def test_an_epoch_report_is_flat_scalars_beside_its_parts_in_the_order_sent():
    record = {"epoch": 0, "val_acc": 0.5, "lr": float("nan"), "stage": "warmup", "gap_hist": [1, 2], "on": True}
    sent = protocol.encode(7, "n0", warmup=None, record=record, warnings=["W: x (a.py:1)"], resumed=None)
    assert sent == {"epoch": 0, "val_acc": 0.5, "stage": "warmup", "on": True,     # NaN and the list left out
                    "record_json": '{"epoch": 0, "val_acc": 0.5, "lr": NaN, "stage": "warmup", "gap_hist": [1, 2], '
                                   '"on": true}',
                    "warnings_json": '["W: x (a.py:1)"]', "pid": 7, "node": "n0"}
    assert list(sent) == ["epoch", "val_acc", "stage", "on", "record_json", "warnings_json", "pid", "node"]


def test_every_part_of_one_report_comes_back():
    sent = protocol.encode(1, "n", **EXAMPLES)
    got = protocol.decode(sent)
    assert set(got) == set(protocol.KINDS)
    for kind in ("final", "failed", "resumed", "warnings", "warmup"):
        assert same(got[kind], EXAMPLES[kind]), kind


def test_a_report_without_parts_decodes_to_nothing_and_an_unknown_kind_is_refused():
    assert protocol.decode({"epoch": 3, "pid": 1, "node": "n", "training_iteration": 4}) == {}
    with pytest.raises(ValueError, match="not a kind of report part: recrod"):
        protocol.encode(1, "n", recrod={"epoch": 0})


def test_the_keys_trackers_leave_out_are_exactly_the_parts_the_protocol_writes():
    written = set()
    for kind, part in EXAMPLES.items():
        sent = protocol.encode(1, "n", **{kind: part})
        plain = set(protocol.scalars(part)) if kind == "record" else set()
        written |= set(sent) - plain - {"pid", "node"}
    assert written == {"record_json", "final_json", "failed_json", "resumed_json", "warnings_json", "warmup_json"}
    assert sorted(protocol.TRACKER_EXCLUDES) == sorted(written)


def test_the_wandb_tracker_is_given_the_protocols_exclusions(monkeypatch, tmp_path):
    from raygap.runner import trackers

    given = {}
    monkeypatch.setattr(trackers, "_wandb_callback", lambda **kw: given.update(kw) or "callback")
    monkeypatch.setattr(trackers, "_set_up", lambda callback, what, hint: None)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    grid = SimpleNamespace(name="table3", variant="demo", profile="demo")
    lines = []
    assert trackers.tracker_callbacks("wandb", grid, Path(tmp_path), lines.append, tmp_path) == ["callback"]
    assert given["excludes"] == protocol.TRACKER_EXCLUDES and given["mode"] == "offline"
