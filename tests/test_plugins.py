"""Plug-ins from outside the package (raygap.plugins): a method or dataset in the user's own files,
named by a grid's or a config's `plugins:` list, or installed with a `raygap.plugins` entry point.
Each is registered before any config is validated, says where it comes from, keys its trials by
its name and version, has its file digested for stale code; a clash and a broken file are one
line, exit 2. A real `raygap run` trains a plug-in method on the embedded Ray."""
from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from raygap import plugins
from raygap.config import load_config, resolve
from raygap.errors import ConfigError
from raygap.grid import load_grid
from raygap.registry import BACKBONES, DATASETS, FUSIONS, METHODS, MIXTURES, _file_digest
from _tiny import avdigits

METHOD = '''\
"""A plug-in method, outside the package."""
from raygap.methods.base import Method
from raygap.registry import METHODS


@METHODS.register("{name}", params=None, version={version})
class Mine(Method):
    """Mine: the plain task loss, from a plug-in file."""

    tasks = ("classification",)
'''

DATASET = '''\
"""A plug-in dataset: 8x8 random audio and visual inputs, two classes (bench/scale.py's)."""
from raygap.data.base import DataLayout, DatasetBundle, ModalitySpec, TensorSplit
from raygap.registry import DATASETS


def build(params, common):
    """Tiny random data, two classes."""
    import torch

    def split(n, seed):
        g = torch.Generator().manual_seed(seed)
        return TensorSplit({{"audio": torch.randn(n, 1, 8, 8, generator=g),
                            "visual": torch.randn(n, 1, 1, 8, 8, generator=g)}},
                           torch.arange(n) % 2, [f"{{seed}}-{{i}}" for i in range(n)])

    return DatasetBundle("{name}", [ModalitySpec("audio", "spectrogram", (1, 8, 8)),
                                    ModalitySpec("visual", "frames", (1, 1, 8, 8))],
                         2, ["a", "b"], split(16, 0), split(8, 1), split(8, 2))


DATASETS.register("{name}", params=None, in_memory=True, layout=lambda p: DataLayout(["audio", "visual"]))(build)
'''

BASE = {"data": avdigits(), "model": {"backbone": "small", "width": 4},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "threads": 1}}


@pytest.fixture
def isolated(tmp_path):
    """Every registration and plug-in import of the test undone afterwards (the built-ins loaded
    before; of the modules imported meanwhile only the test's own files are dropped)."""
    plugins.load_all()
    regs = {r: dict(r._entries) for r in (METHODS, DATASETS, MIXTURES, BACKBONES, FUSIONS)}
    files, modules, mods = dict(plugins._files), list(plugins._modules), set(sys.modules)
    yield
    for r, entries in regs.items():
        r._entries = entries
    plugins._files.clear()
    plugins._files.update(files)
    plugins._modules[:] = modules
    for m in set(sys.modules) - mods:
        if str(getattr(sys.modules[m], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[m]


def grid_file(folder: Path, rows: dict, plugin_list: list, name: str = "mine", **extra) -> Path:
    g = folder / f"{name}.yaml"
    g.write_text(yaml.safe_dump({"name": name, "plugins": plugin_list, "base": BASE, "rows": rows, "seeds": [0],
                                 "metrics": ["acc"], **extra}, sort_keys=False))
    return g


def test_a_grid_names_a_plugin_file_and_its_method_is_validated_keyed_and_digested(tmp_path, isolated):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "my_method.py").write_text(METHOD.format(name="mine", version=3))
    (tmp_path / "grids").mkdir()
    g = grid_file(tmp_path / "grids", {"Mine": {"method": {"name": "mine"}}, "Concat": {}}, ["../plug/my_method.py"])
    grid = load_grid(g)
    assert [t.config.method.name for t in grid.trials] == ["mine", "concat"]
    path = (tmp_path / "plug" / "my_method.py").resolve()
    assert METHODS.get("mine").origin == f"file {path}"
    assert METHODS.get("concat").origin == "built-in raygap.methods.concat"
    assert DATASETS.get("avdigits").origin == "built-in raygap.data.avdigits"
    assert BACKBONES.get("small").origin == "built-in raygap.models.backbones"
    # the stale-code digest is the plug-in file's: sha256 of its bytes, 12 hex digits
    assert METHODS.source("mine") == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    # the key carries the method's name and its registered version, as a built-in's does
    key3 = grid.trials[0].key
    raw = {**BASE, "method": {"name": "mine"}}
    assert resolve(raw).key() == key3
    METHODS._entries["mine"].meta["version"] = 4
    assert resolve(raw).key() != key3
    METHODS._entries["mine"].meta["version"] = 3
    assert resolve({**BASE, "method": {"name": "concat"}}).key() == grid.trials[1].key != key3
    # loading the grid again (another verb, a profile) imports nothing twice
    assert len(load_grid(g, profile="demo").trials) == 2 * 3       # (the demo profile: seeds 0, 1, 2)
    # what Ray workers get: the file shipped alone, and the module they import
    assert plugins.worker_env() == {"py_modules": [str(path)], "env_vars": {"RAYGAP_PLUGINS": "my_method"}}


def test_a_config_file_names_plugins_too_a_dataset_and_a_method(tmp_path, isolated):
    (tmp_path / "my_method.py").write_text(METHOD.format(name="mine", version=1))
    (tmp_path / "my_data.py").write_text(DATASET.format(name="tinyrand"))
    cfg = tmp_path / "trial.yaml"
    cfg.write_text(yaml.safe_dump({"plugins": ["my_method.py", "my_data.py"], **BASE,
                                   "data": {"name": "tinyrand"}, "method": {"name": "mine"}}))
    c = load_config(cfg)
    assert (c.method.name, c.data.name) == ("mine", "tinyrand")
    assert DATASETS.get("tinyrand").origin == f"file {(tmp_path / 'my_data.py').resolve()}"
    # a bad modality for the plug-in dataset's declared layout fails at load, as for a built-in
    with pytest.raises(ConfigError, match="dataset tinyrand has no modality 'text'"):
        load_config(cfg, ["data.modalities=[audio,text]"])


def test_clashes_and_broken_plugins_are_one_line_naming_the_files(tmp_path, isolated):
    (tmp_path / "a.py").write_text(METHOD.format(name="twin", version=1))
    (tmp_path / "b.py").write_text(METHOD.format(name="twin", version=1))
    (tmp_path / "c.py").write_text(METHOD.format(name="concat", version=1))
    (tmp_path / "syntax.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "missing.py").write_text(METHOD.format(name="half", version=1) + "import not_a_module_anywhere_26\n")
    rows = {"A": {}}
    a, b, c = (str((tmp_path / f"{n}.py").resolve()) for n in "abc")
    with pytest.raises(ConfigError) as e:
        load_grid(grid_file(tmp_path, rows, ["a.py", "b.py"], "two"))
    assert e.value.line() == (f"{tmp_path / 'two.yaml'}: plugins: method 'twin' is registered by file {b} and "
                              f"already by file {a} (rename the method in the plug-in)")
    with pytest.raises(ConfigError) as e:
        load_grid(grid_file(tmp_path, rows, ["c.py"], "builtin"))
    assert f"method 'concat' is registered by file {c} and already by built-in raygap.methods.concat" in e.value.line()
    with pytest.raises(ConfigError) as e:
        load_grid(grid_file(tmp_path, rows, ["syntax.py"], "syn"))
    assert e.value.line().startswith(f"{tmp_path / 'syn.yaml'}: plugins: {tmp_path / 'syntax.py'}: the plug-in "
                                     "failed to import: SyntaxError: ")
    assert "line 1" in e.value.line()
    with pytest.raises(ConfigError) as e:
        load_grid(grid_file(tmp_path, rows, ["missing.py"], "imp"))
    assert e.value.line() == (f"{tmp_path / 'imp.yaml'}: plugins: {tmp_path / 'missing.py'}: the plug-in failed to "
                              "import (line 11): ModuleNotFoundError: No module named 'not_a_module_anywhere_26'")
    assert "missing" not in sys.modules and "half" not in METHODS     # a failed import leaves nothing behind
    with pytest.raises(ConfigError, match=r"plugins: mising\.py: no such file .*\(nearest: 'missing\.py'\)"):
        load_grid(grid_file(tmp_path, rows, ["mising.py"], "typo"))
    with pytest.raises(ConfigError, match="plugins: expected a list of module names or .py files"):
        load_grid(grid_file(tmp_path, rows, [{"a": 1}], "shape"))
    with pytest.raises(ConfigError, match="'no such' is neither a module name nor a .py file"):
        load_grid(grid_file(tmp_path, rows, ["no such"], "name"))
    (tmp_path / "json.py").write_text("")
    with pytest.raises(ConfigError, match="its module name 'json' is taken by"):
        load_grid(grid_file(tmp_path, rows, ["json.py"], "taken"))


def _proc():
    sys.path.insert(0, str(Path(__file__).parent))
    import _proc

    return _proc


def test_raygap_commands_say_a_clash_and_a_broken_plugin_in_one_line(tmp_path):
    raygap = _proc().raygap
    (tmp_path / "c.py").write_text(METHOD.format(name="concat", version=1))
    (tmp_path / "broken.py").write_text("x = (\n")
    for plugin, want in [("c.py", f"method 'concat' is registered by file {(tmp_path / 'c.py').resolve()} and "
                                  "already by built-in raygap.methods.concat"),
                         ("broken.py", f"{(tmp_path / 'broken.py').resolve()}: the plug-in failed to import: "
                                       "SyntaxError: ")]:
        g = grid_file(tmp_path, {"A": {}}, [plugin], name=plugin[:-3])
        for verb in (["run", str(g), "--dry-run", "--results", str(tmp_path / "r")], ["list", "methods", str(g)]):
            code, out, err = raygap(*verb, timeout=120)
            assert code == 2 and err.count("\n") == 1 and want in err and "Traceback" not in err, (verb, out, err)


def test_an_installed_plugin_is_found_by_its_entry_point(tmp_path):
    """A package installed with a `raygap.plugins` entry point (a dist-info folder on the path, as
    pip leaves it): every command registers its method, and `raygap list` names the distribution."""
    raygap = _proc().raygap
    site = tmp_path / "site"
    (site / "mypkg").mkdir(parents=True)
    (site / "mypkg" / "__init__.py").write_text("")
    (site / "mypkg" / "plugin.py").write_text(METHOD.format(name="installed_mine", version=2))
    info = site / "mypkg-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[raygap.plugins]\nmine = mypkg.plugin\n")
    env = {"PYTHONPATH": str(site)}
    code, out, err = raygap("list", "methods", env=env, timeout=120)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("installed_mine "))
    assert line.endswith("[v2] (from entry point mine of mypkg 1.2 (mypkg.plugin))"), line
    g = grid_file(tmp_path, {"A": {"method": {"name": "installed_mine"}}}, [], name="ep")
    code, out, err = raygap("run", str(g), "--dry-run", "--results", str(tmp_path / "r"), env=env, timeout=120)
    assert code == 0 and "1 distinct trials" in out, (out, err)
    (site / "mypkg" / "plugin.py").write_text("raise ImportError('needs libfoo')\n")
    code, out, err = raygap("list", "methods", env=env, timeout=120)
    assert code == 2 and err.strip() == ("raygap: error: entry point mine (mypkg.plugin): the plug-in failed to "
                                         "import: ImportError: needs libfoo"), err


def test_raygap_run_trains_a_plugin_method_on_the_embedded_ray(tmp_path):
    """`plugins: [my_method.py]` in a real grid run: the trial trains in a Ray worker (which imports
    the file Ray shipped), is stored with the file's digest, and `raygap list` names the file."""
    import sqlite3

    raygap = _proc().raygap
    method = tmp_path / "my_method.py"
    method.write_text(METHOD.format(name="mine", version=1) + textwrap.dedent('''
        import os

        def _end(self, st):
            return {"plugin_copy": float(os.path.realpath(__file__) != %r)}

        Mine.on_epoch_end = _end
        ''' % str(method.resolve())))
    g = grid_file(tmp_path, {"Mine": {"method": {"name": "mine"}}}, ["my_method.py"])
    results = tmp_path / "results"
    code, out, err = raygap("run", str(g), "--results", str(results), "--num-cpus", "1", timeout=400)
    assert code == 0, out + err
    assert "1 run now, 0 failed" in out, out
    db = sqlite3.connect(results / "store.sqlite")
    rows = db.execute("SELECT status, history, info FROM trials").fetchall()
    assert len(rows) == 1 and rows[0][0] == "done", rows
    import json

    history, info = json.loads(rows[0][1]), json.loads(rows[0][2])
    assert [h["plugin_copy"] for h in history] == [1.0]          # the worker imported Ray's copy of the file
    assert info["method_source"] == hashlib.sha256(method.read_bytes()).hexdigest()[:12]
    code, out, err = raygap("list", "methods", str(g), timeout=120)
    assert code == 0 and any(ln.startswith("mine ") and ln.endswith(f"(from file {method.resolve()})")
                             for ln in out.splitlines()), out


def test_file_digest_follows_the_file(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("a = 1\n")
    assert _file_digest(str(p)) == hashlib.sha256(b"a = 1\n").hexdigest()[:12]


def test_a_plugin_that_imports_torch_at_its_top_still_works(tmp_path, isolated):
    (tmp_path / "heavy.py").write_text("import torch\n\n" + METHOD.format(name="heavy", version=1).replace(
        '    tasks = ("classification",)', '    tasks = ("classification",)\n    scale = torch.tensor(2.0)'))
    grid = load_grid(grid_file(tmp_path, {"H": {"method": {"name": "heavy"}}}, ["heavy.py"]))
    assert grid.trials[0].config.method.name == "heavy" and float(METHODS.get("heavy").obj.scale) == 2.0
