"""What a command that only reads configs and the store imports: not torch (seconds), not Ray.

Every raygap command validates its grid against the registries; a fully cached ``raygap run``
does nothing else before it exports (bench/cached_rerun.py). So expanding and validating every
shipped grid under every profile, a dry run and a status must leave torch, torchaudio,
torchvision, Ray, scikit-learn and matplotlib unimported: each check runs in a fresh process and
lists what it finds in ``sys.modules``. The plug-in files import torch through ``raygap.lazy``,
and the encoders / fusion heads are declared in ``raygap/models/__init__.py``
(docs/contributing.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchaudio", "torchvision", "ray", "sklearn", "matplotlib", "scipy.stats")


def loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the HEAVY modules it left in sys.modules."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_probe_sees_torch_when_it_is_imported():
    # the check below can fail: a plug-in's training code imports torch, and the probe notices
    assert "torch" in loaded_after("import raygap.plugins as p\np.load_all()\n"
                                   "from raygap.methods.base import scalar\nscalar(1.0)")
    assert "torch" in loaded_after("from raygap.registry import FUSIONS\nimport raygap.models\n"
                                   "FUSIONS.get('concat').obj")


def test_validating_every_grid_under_every_profile_imports_no_torch():
    code = """
from raygap.grid import load_grid
from raygap.gridfile import PROFILES_DIR
from pathlib import Path
n = 0
for g in sorted(Path("grids").glob("*.yaml")):
    for profile in [None, *sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))]:
        grid = load_grid(g, profile=profile)
        n += len({t.key for t in grid.trials})
        for t in grid.trials:
            t.config.params("method"), t.config.params("data")
assert n > 300, n
"""
    assert loaded_after(code) == []


@pytest.mark.parametrize("verb", [["run", "--dry-run"], ["status"]])
def test_a_dry_run_and_a_status_import_no_torch_nor_ray(tmp_path, verb):
    code = f"""
from raygap.cli import main
code = main([{verb[0]!r}, "grids/table2.yaml", "--profile", "demo", "--results", {str(tmp_path)!r}, *{verb[1:]!r}])
assert code == 0, code
"""
    assert loaded_after(code) == []


def test_a_bad_value_is_still_reported_without_torch(tmp_path):
    # validation is whole without torch: a method's own check (check_config) and a dataset's
    # layout still run, exit 2 with one line
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbase: {data: {name: avdigits, modalities: [audio, vidual]}, method: {name: concat}}\n"
                   "rows: {A: {}}\nseeds: [0]\nmetrics: [acc]\n")
    r = subprocess.run([sys.executable, "-m", "raygap", "run", str(bad), "--dry-run", "--results", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "data.modalities" in r.stderr and "'visual'" in r.stderr and "Traceback" not in r.stderr


def test_declared_encoders_and_heads_are_registered_by_their_modules_with_the_same_meta():
    from raygap.models import SEQUENCE_KINDS
    from raygap.registry import BACKBONES, FUSIONS

    for reg in (BACKBONES, FUSIONS):
        for name in reg.names():
            e = reg.get(name)
            assert e.module is not None, f"{reg.kind} {name} is registered but not declared in raygap/models"
            assert e.obj is not None and e.obj.__module__ == e.module and e.doc   # imports and registers it
    assert BACKBONES.get("gru").meta == {"kinds": SEQUENCE_KINDS}
    # the meta CPSL's config check reads instead of importing the class says what the class has
    assert {n: bool(FUSIONS.get(n).meta.get("head_weight")) for n in FUSIONS.names()} == \
           {n: hasattr(FUSIONS.get(n).obj, "head_weight") for n in FUSIONS.names()} == \
           {"concat": False, "gated": True, "shared": False}


def test_a_declaration_that_disagrees_with_its_registration_is_an_error():
    from raygap.registry import Registry

    reg = Registry("thing")
    reg.declare("a", "raygap.errors", flavour=1)
    with pytest.raises(ValueError, match="declared in raygap.errors with meta"):
        reg.register("a", flavour=2)(type("A", (), {"__module__": "raygap.errors"}))
    reg.declare("b", "raygap.errors")
    with pytest.raises(RuntimeError, match="declared to register 'b' but does not"):
        reg.get("b").obj


def test_lazy_module_imports_on_first_use_and_not_before():
    code = """
import sys
from raygap.lazy import lazy
w = lazy("wave")
assert "wave" not in sys.modules
assert w.Error is sys.modules["wave"].Error and "(imported)" in repr(w)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
