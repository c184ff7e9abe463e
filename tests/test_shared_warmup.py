"""Shared warm-up stages (issue 15): a gap_adaptive variant started from another variant's
warm-up checkpoint ends with exactly the history and metrics of the same variant trained
alone (CPU, deterministic); what the warm-up depends on gets a different warm-up key."""
import pytest
import torch

import raygap.methods  # noqa: F401  (registers the methods)
from raygap.config import resolve
from raygap.errors import CheckpointMismatch
from raygap.trial import CHECKPOINT, run_trial
from _tiny import avdigits

E, W = 4, 2
BASE = {"data": avdigits(visual_corrupt=0.3), "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.05}, "train": {"epochs": E, "batch_size": 128, "device": "cpu", "threads": 2,
                                         "checkpoint_every": 100},   # no regular checkpoint: only the warm-up's
        "method": {"name": "gap_adaptive", "warmup_epochs": W}}
TIMING = ("train_seconds", "epoch_seconds")


def cfg(**method):
    return resolve({**BASE, "method": {**BASE["method"], **method}})


def strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_warmup_key_follows_what_the_warmup_depends_on():
    full = cfg()
    key, w = full.warmup()
    assert w == W
    # keys that act only after the switch: the same warm-up
    for after in ({"alpha": 0.0}, {"gamma": 0.0}, {"rho": 0.5}, {"posterior_weights": False},
                  {"unimodal_loss": False}, {"purify_tau": 0.5}, {"reset_optimizer": False},
                  {"mixture": "smm"}, {"dominant": "config"}, {"refit_every": 0}):
        c = cfg(**after)
        assert c.key() != full.key()
        assert c.warmup() == (key, W), after
    # what the first W epochs depend on: another warm-up
    others = [cfg(gap="kl"), cfg(pair=["visual", "audio"]), cfg(gap_source="eval"), cfg(warmup_epochs=1),
              resolve({**BASE, "optim": {"lr": 0.01}}), resolve({**BASE, "seed": 1}),
              resolve({**BASE, "train": {**BASE["train"], "epochs": 5}}),
              resolve({**BASE, "resources": {"cpu": 2}})]
    keys = {c.warmup()[0] for c in others}
    assert len(keys) == len(others) and key not in keys
    assert resolve({**BASE, "method": {"name": "warmup_objective"}}).warmup() is None
    assert resolve({**BASE, "method": {"name": "concat"}}).warmup() is None
    assert cfg(warmup_epochs=0).warmup() is None


@pytest.fixture(scope="module")
def leader(tmp_path_factory):
    """The leader trains all E epochs with ``keep_warmup``; its checkpoints are kept per epoch."""
    c = cfg()
    d = tmp_path_factory.mktemp("leader")
    kept, seen = {}, []

    def keep(record, ckpt):
        seen.append((record["epoch"], ckpt is not None))
        if ckpt is not None:
            kept[record["epoch"]] = torch.load(ckpt / CHECKPOINT, weights_only=False)

    result = run_trial(c, checkpoint_dir=d / "run", keep_warmup=True, report=keep)
    return c, result, kept, seen


def test_a_variant_started_from_a_shared_warmup_ends_exactly_as_trained_alone(tmp_path, leader):
    lead_cfg, lead, kept, seen = leader
    assert seen == [(0, False), (1, True), (2, False), (3, True)]   # the warm-up's end kept, then the final one
    ck = kept[W - 1]
    assert ck["epoch"] == W - 1 and ck["key"] == lead_cfg.key() and ck["warmup_key"] == lead_cfg.warmup()[0]

    for variant in ({"purify_tau": 0.4}, {"reset_optimizer": False, "rho": 0.5}):   # (alpha=0: test_runner)
        c = cfg(**variant)
        alone = run_trial(c, checkpoint_dir=tmp_path / f"alone-{c.key()}")
        d = tmp_path / f"fork-{c.key()}"
        d.mkdir()
        torch.save(ck, d / CHECKPOINT)
        ran = []
        forked = run_trial(c, checkpoint_dir=d, report=lambda r, _c: ran.append(r["epoch"]))
        assert ran == list(range(W, E))                     # only the adaptive stage trained
        assert strip(forked.history) == strip(alone.history), variant
        assert forked.metrics == alone.metrics
        assert forked.info["warmup_from"] == lead_cfg.key()
        assert "warmup_from" not in alone.info
        assert forked.metrics != lead.metrics               # the variants differ after the switch
    assert [h["stage"] for h in forked.history] == ["warmup", "warmup", "adaptive", "adaptive"]


def test_a_checkpoint_of_another_warmup_or_epoch_is_refused(tmp_path, leader):
    lead_cfg, _, kept, _ = leader
    other = tmp_path / "kl"
    other.mkdir()
    torch.save(kept[W - 1], other / CHECKPOINT)
    with pytest.raises(CheckpointMismatch):                 # a KL variant's warm-up gathers other gaps
        run_trial(cfg(gap="kl"), checkpoint_dir=other)
    late = tmp_path / "late"
    late.mkdir()
    torch.save({**kept[E - 1], "warmup_key": lead_cfg.warmup()[0]}, late / CHECKPOINT)
    with pytest.raises(CheckpointMismatch):                 # past the warm-up: not a shared state
        run_trial(cfg(alpha=0.0), checkpoint_dir=late)


def test_dry_run_counts_the_warmups_shared_among_the_trials_to_run(tmp_path):
    import yaml

    from raygap.grid import load_grid
    from raygap.status import describe
    from raygap.store import Store

    m = BASE["method"]
    rows = {"Full": {"method": m}, "a0": {"method": {**m, "alpha": 0.0}}, "KL": {"method": {**m, "gap": "kl"}},
            "Control": {"method": {"name": "concat"}}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": {k: v for k, v in BASE.items() if k != "method"},
                                    "rows": rows, "seeds": [0, 1]}))
    grid = load_grid(path)
    store = Store(tmp_path / "store.sqlite")
    # per seed: Full and a0 share a warm-up (W = 2), KL trains its own, concat has none
    assert describe(grid, store).splitlines()[-1] == (
        "shared warm-ups: 2 warm-up(s) for 4 of the trials to run, 4 epochs not trained again "
        "(--no-shared-warmups: each trains its own)")
    a0 = next(t for t in grid.trials if t.label == "a0" and t.seed == 0)
    store.save_done(a0.key, {"acc": 0.5}, [], 1.0, {})     # done: seed 0's Full has no one to share with
    assert describe(grid, store).splitlines()[-1].startswith("shared warm-ups: 1 warm-up(s) for 2 of the trials")


@pytest.fixture
def numpy_drawing_method():
    """gap_adaptive plus one draw from numpy's global generator per batch in both stages, which
    scales the adaptive stage's loss: a fork that did not restore numpy's state would see other
    draws after the switch than the trial trained alone."""
    import numpy as np

    from raygap.methods.gap_adaptive import GapAdaptive, GapAdaptiveParams
    from raygap.registry import METHODS

    @METHODS.register("test_gap_numpy", params=GapAdaptiveParams, version=1, min_modalities=2, reports=("data_pct",))
    class GapNumpy(GapAdaptive):
        def loss(self, out, batch, st):
            loss, logs = super().loss(out, batch, st)
            r = float(np.random.rand())
            return (loss * (0.5 + r) if self.stage(st.epoch) == "adaptive" else loss), logs

    yield "test_gap_numpy"
    METHODS._entries.pop("test_gap_numpy")


def test_a_fork_continues_numpys_generator_as_trained_alone(tmp_path, numpy_drawing_method):
    kept = {}

    def keep(record, ckpt):
        if ckpt is not None and record["epoch"] == W - 1:
            kept["ck"] = torch.load(ckpt / CHECKPOINT, weights_only=True)

    lead = cfg(name=numpy_drawing_method)
    run_trial(lead, checkpoint_dir=tmp_path / "leader", keep_warmup=True, report=keep)
    assert kept["ck"]["rng_numpy"]["kind"] == "MT19937" and kept["ck"]["rng_numpy"]["keys"].shape == (624,)
    variant = cfg(name=numpy_drawing_method, purify_tau=0.4)
    assert variant.warmup() == lead.warmup()
    alone = run_trial(variant, checkpoint_dir=tmp_path / "alone")
    d = tmp_path / "fork"
    d.mkdir()
    torch.save(kept["ck"], d / CHECKPOINT)
    forked = run_trial(variant, checkpoint_dir=d)
    assert forked.info["warmup_from"] == lead.key()
    assert strip(forked.history) == strip(alone.history)
    assert forked.metrics == alone.metrics
