"""docs/contributing.md's method example, as a contributor meets it: the file dropped into
raygap/methods/ is found by name, validated at load and trains through the engine."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import raygap.methods
from raygap.config import resolve
from raygap.registry import METHODS
from raygap.trial import run_trial

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_method_file_registers_and_trains(monkeypatch):
    text = (ROOT / "docs" / "contributing.md").read_text()
    section = text.split("## Add a method: one file", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = ROOT / "raygap" / "methods" / "zz_contributing_example.py"
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))   # the registration is undone after
    path.write_text(code)
    try:
        # found by its file name: a fresh `raygap list methods` lists it with its docstring
        out = subprocess.run([sys.executable, "-m", "raygap", "list", "methods"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, check=True).stdout
        assert re.search(r"^\s*mine\b.*One sentence: what it trains", out, re.M), out
        importlib.import_module("raygap.methods.zz_contributing_example")
        assert "mine" in METHODS
        cfg = resolve({"method": {"name": "mine", "alpha": 0.5}, "data": {"name": "avdigits"},
                       "model": {"backbone": "small", "width": 4},
                       "train": {"epochs": 1, "batch_size": 128, "device": "cpu", "threads": 2, "checkpoint": False}})
        h = run_trial(cfg).history[0]
        assert h["train_loss"] > h["train_loss_f"] > 0 and h["train_loss_extra"] > 0
        assert abs(h["train_loss"] - h["train_loss_f"] - h["train_loss_extra"]) < 1e-4
    finally:
        path.unlink()
        sys.modules.pop("raygap.methods.zz_contributing_example", None)
        if hasattr(raygap.methods, "zz_contributing_example"):
            delattr(raygap.methods, "zz_contributing_example")
