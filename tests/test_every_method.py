"""Every registered method trains through ``fit()`` (``run_trial``), is interrupted after an
epoch, resumes from its checkpoint and ends with exactly the history of an uninterrupted run;
the resumed epoch (the method acting, its state restored) uses no op that torch has no
deterministic CUDA kernel for.
A new method is picked up from the registry: if its defaults do not act within three epochs,
give it the keys that make it act here."""
import json
import math

import pytest
import torch

import raygap.methods  # noqa: F401  (registers the methods)
from raygap.config import resolve
from raygap.registry import METHODS
from raygap.trial import run_trial
from test_determinism import AtenOps
from _tiny import avdigits

FAST = {"data": avdigits(visual_corrupt=0.3), "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.05}, "train": {"epochs": 3, "batch_size": 128, "device": "cpu", "threads": 2,
                                         "checkpoint_every": 1}}
# what makes each method act inside 3 epochs (its stage switch, window or first re-initialization
# at epoch 1, so the resumed epoch 2 runs with the method's state restored)
ACTS = {"dnr": {"method": {"every": 1}}, "gap_adaptive": {"method": {"warmup_epochs": 1}},
        "gblending": {"method": {"super_epoch": 1}}, "opm_ogm": {"method": {"warmup_epochs": 1}},
        "cpsl": {"model": {"fusion": "gated"}}}
TIMING = ("train_seconds", "epoch_seconds")


class Crash(Exception):
    pass


def strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_acts_names_only_registered_methods():
    assert set(ACTS) <= set(METHODS.names())


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_is_interrupted_and_resumes_exactly(tmp_path, name):
    acts = ACTS.get(name, {})
    fusion = METHODS.get(name).meta.get("fusion") or "concat"
    cfg = resolve({**FAST, "method": {"name": name, **acts.get("method", {})},
                   "model": {**FAST["model"], "fusion": fusion, **acts.get("model", {})}})
    full = run_trial(cfg, checkpoint_dir=tmp_path / "a")
    assert [h["epoch"] for h in full.history] == [0, 1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in full.history)
    assert full.metrics["acc"] > 0.1                        # 10 classes: above chance

    def crash(record, ckpt):
        if record["epoch"] == 1:
            raise Crash()

    with pytest.raises(Crash):
        run_trial(cfg, checkpoint_dir=tmp_path / "b", report=crash)
    seen = []
    with AtenOps() as ops:         # every op of the epoch the method acts in: hooks, steps, evaluation
        resumed = run_trial(cfg, checkpoint_dir=tmp_path / "b", report=lambda r, c: seen.append(r["epoch"]))
    assert ops.nondeterministic_on_cuda() == []
    assert seen == [2]                                      # only the missing epoch ran
    assert strip(resumed.history) == strip(full.history)
    assert resumed.metrics == full.metrics


# ----------------------------------------------------------------------------- every method acts
# Every method but concat trains differently from concat by the epoch its ACTS keys make it act
# (a new method must say here when). ACTS_AT: the epoch at which the method (FAST data, its ACTS
# keys, seed 0) first trains differently, and the run it equals in every epoch before that:
# concat on the method's fusion (None), or, where the method differs from concat from its first
# step by design, the run it does equal until it acts. "Differently": its training loss or any
# tensor of its model after the epoch's training pass differs, bit for bit, from that run's under
# the same seed, data and batches.
ACTS_AT = {
    "agm": (0, None),               # k_m scales each modality's response-score gradient from the first batch (window 0..20)
    "cpsl": (0, None),              # aux + statistical losses and the conflict penalty (vs concat on gated)
    "mla": (0, None),               # one step per modality per batch (vs concat on the shared head)
    "mmcosine": (0, None),          # cosine logits without bias
    "ogm_ge": (0, None),            # window 0..50, both included: the dominant encoder's gradient scaled, GE noise
    "pmr": (0, None),               # start_epoch 0: the weaker modality's prototype CE
    "warmup_objective": (0, None),  # L_f + sum_m L_m
    "dnr": (2, None),               # plain CE; the first re-initialization (every: 1) is at the start of epoch 2
    "opm_ogm": (1, None),           # warmup_epochs 1: epoch 0 is plain CE, OPM and OGM from epoch 1
    # not equal to concat before it acts, by design:
    "gap_adaptive": (1, {"name": "warmup_objective"}),   # its warm-up (W = 1) is the control's objective
    "gblending": (1, {"name": "gblending", "super_epoch": 2}),  # uniform weights until the first estimate
    "greedy": (1, {"name": "greedy", "start_epoch": 2}),        # MMTM blocks from the first step; curation
}                                                               # windows from start_epoch 1
# data for these runs: 600 samples (about 430 to train on, 4 batches of 128)
ACTS_DATA = {**FAST, "data": {**FAST["data"], "num_samples": 600}}
CONCAT = {"name": "concat"}


class Enough(Exception):
    """Stops a run once the epochs a comparison needs are trained."""


def fusion_of(name: str) -> str:
    return ACTS.get(name, {}).get("model", {}).get("fusion") or METHODS.get(name).meta.get("fusion") or "concat"


def method_keys(name: str) -> dict:
    return {"name": name, **ACTS.get(name, {}).get("method", {})}


def train_epochs(method: dict, fusion: str, epochs: int) -> list[tuple[float, dict]]:
    """(train_loss, a copy of every model tensor after the training pass) of epochs 0 .. epochs - 1
    of ``method`` (its name and keys) on ``fusion``. The model is read through the method's
    ``on_epoch_end`` hook, which the loop calls after the training pass, before evaluation."""
    cfg = resolve({**ACTS_DATA, "method": method, "model": {**ACTS_DATA["model"], "fusion": fusion}})
    cls = METHODS.get(method["name"]).obj
    hook = cls.on_epoch_end
    states, losses = [], []

    def spy(self, st):
        states.append({k: v.detach().clone() for k, v in st.model.state_dict().items()})
        return hook(self, st)

    def report(record, ckpt):
        losses.append(record["train_loss"])
        if len(losses) == epochs:
            raise Enough()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "on_epoch_end", spy)
        with pytest.raises(Enough):
            run_trial(cfg, report=report)
    assert len(states) == len(losses) == epochs
    return list(zip(losses, states))


_RUNS: dict[tuple, list] = {}


def trained(method: dict, fusion: str, epochs: int) -> list[tuple[float, dict]]:
    """``train_epochs``, each run trained once for this module (its longest request)."""
    key = (json.dumps(method, sort_keys=True), fusion)
    if len(_RUNS.get(key, ())) < epochs:
        _RUNS[key] = train_epochs(method, fusion, epochs)
    return _RUNS[key][:epochs]


def first_difference(run, ref) -> tuple[int, str] | None:
    """The first epoch whose training loss or model tensors (those ``ref``'s model has) differ
    between two ``train_epochs`` results, and what differs; None when every epoch is equal."""
    assert len(run) == len(ref)
    for epoch, ((loss, state), (ref_loss, ref_state)) in enumerate(zip(run, ref)):
        assert set(ref_state) <= set(state), sorted(set(ref_state) - set(state))
        moved = [k for k in ref_state if not torch.equal(state[k], ref_state[k])]
        if moved or loss != ref_loss:
            return epoch, f"train_loss {loss!r} vs {ref_loss!r}, {len(moved)} of {len(ref_state)} tensors ({moved[:2]})"
    return None


def test_acts_at_names_every_method_but_concat():
    assert set(ACTS_AT) == set(METHODS.names()) - {"concat"}
    assert all(epoch < FAST["train"]["epochs"] for epoch, _ in ACTS_AT.values())


def test_concat_trains_bit_for_bit_the_same_twice():
    """The control: what the next test calls a difference is the method's, not the machine's."""
    diff = first_difference(train_epochs(CONCAT, "concat", 3), trained(CONCAT, "concat", 3))
    assert diff is None, diff


@pytest.mark.parametrize("name", sorted(set(METHODS.names()) - {"concat"}))
def test_every_method_acts_by_the_epoch_its_keys_say(name):
    assert name in ACTS_AT, f"say in ACTS_AT at which epoch {name} first trains unlike concat"
    epoch, before = ACTS_AT[name]
    fusion = fusion_of(name)
    run = trained(method_keys(name), fusion, epoch + 1)
    # equal to the run it follows in every epoch before `epoch`, different at `epoch`
    diff = first_difference(run, trained({**CONCAT, **(before or {})}, fusion, epoch + 1))
    assert diff is not None and diff[0] == epoch, f"{name}: expected to act first at epoch {epoch}, got {diff}"
    if before is not None:              # and unlike concat from its first epoch
        diff = first_difference(run[:1], trained(CONCAT, fusion, 1))
        assert diff is not None and diff[0] == 0, f"{name}: expected to differ from concat at epoch 0"
