"""My method trains on my dataset, and its loss is the fused loss plus the unimodal term.
Run: python -m pytest tests (from the project's folder)."""
from pathlib import Path

import pytest

from raygap.config import resolve
from raygap.grid import load_grid
from raygap.trial import run_trial

ROOT = Path(__file__).resolve().parent.parent


def test_mine_trains_and_its_loss_adds_the_unimodal_term():
    grid = load_grid(ROOT / "grids" / "mine.yaml", profile="demo")      # imports the plug-ins it names
    raw = next(t for t in grid.trials if t.label == "Mine").config.to_dict()
    raw["train"].update(epochs=1, checkpoint=False)
    h = run_trial(resolve(raw)).history[0]
    assert h["train_loss_uni"] > 0
    assert h["train_loss"] == pytest.approx(h["train_loss_f"] + h["train_loss_uni"], abs=1e-4)
