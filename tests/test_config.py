import subprocess
import sys

import pytest

from raygap.config import load_config, resolve
from raygap.dotted import parse_set
from raygap.errors import ConfigError


def test_defaults_filled_and_key_stable():
    a, b = resolve({}), resolve({"seed": 0})
    assert a.key() == b.key()
    assert a.optim.lr == pytest.approx(2e-3) and a.optim.momentum == 0.9 and a.method.name == "concat"


def test_resources_do_not_change_the_key():
    a = resolve({"resources": {"cpu": 1}})
    b = resolve({"resources": {"cpu": 4, "gpu": 0.25}})
    assert a.key() == b.key()
    assert a.key() != resolve({"seed": 1}).key()


def test_yaml_scientific_notation_string_is_a_float():
    assert resolve({"optim": {"lr": "2e-3"}}).optim.lr == pytest.approx(0.002)


@pytest.mark.parametrize("raw, key, words", [
    ({"optim": {"lrr": 0.1}}, "optim.lrr", "nearest valid key: optim.lr"),
    ({"trian": {}}, "trian", "nearest valid key: train"),
    ({"optim": {"lr": -1}}, "optim.lr", "out of range"),
    ({"optim": {"name": "sgdd"}}, "optim.name", "nearest: 'sgd'"),
    ({"method": {"name": "concatt"}}, "method.name", "nearest: 'concat'"),
    ({"train": {"epochs": "many"}}, "train.epochs", "expected an integer"),
    ({"train": {"checkpoint": "yes"}}, "train.checkpoint", "expected true/false"),
    ({"data": {"name": "avdigits", "visual_corupt": 0.1}}, "data.visual_corupt", "data.visual_corrupt"),
    ({"method": {"name": "concat", "rho": 0.9}}, "method.rho", "unknown key"),
    ({"seed": -3}, "seed", "out of range"),
])
def test_bad_values_name_the_key_and_the_nearest_choice(raw, key, words):
    with pytest.raises(ConfigError) as e:
        resolve(raw)
    assert e.value.key == key
    assert words in e.value.line()
    assert "\n" not in e.value.line()


@pytest.mark.parametrize("value", [[], 0, False, ""])
def test_a_section_that_is_not_a_mapping_is_an_error_even_when_empty(value):
    # `train: []` is no mapping of train keys (only a bare `train:`, YAML's null, means "all defaults")
    with pytest.raises(ConfigError) as e:
        resolve({"train": value})
    assert e.value.line() == f"train: expected a mapping, got {value!r}"
    assert resolve({"train": None}).train.epochs == 100


def test_set_overrides_and_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 3}\n")
    cfg = load_config(p, ["train.epochs=5", "optim.lr=1e-2", "data.val_fraction=0.2"])
    assert cfg.train.epochs == 5 and cfg.optim.lr == pytest.approx(0.01) and cfg.data.val_fraction == 0.2
    with pytest.raises(ConfigError) as e:
        load_config(p, ["train.epoch=5"])
    assert e.value.file == str(p) and "train.epochs" in e.value.line()
    assert parse_set(["a.b=[1, 2]"]) == [("a.b", [1, 2])]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("optim: {lr: 0.1, momentun: 0.9}\n")
    r = subprocess.run([sys.executable, "-m", "raygap", "train", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(p) in lines[0] and "optim.momentun" in lines[0] and "optim.momentum" in lines[0]
    q = tmp_path / "broken.yaml"
    q.write_text("optim: {lr: [0.1\n")
    from raygap.cli import main

    capsys.readouterr()
    assert main(["train", str(q)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid YAML" in err


def test_with_seed_is_resolve_with_that_seed_and_copies_nothing_shared():
    raw = {"method": {"name": "gap_adaptive"}, "data": {"modalities": ["audio", "visual"]}, "seed": 3}
    a = resolve(raw)
    b = a.with_seed(11)
    assert b.to_dict() == resolve({**raw, "seed": 11}).to_dict()
    assert b.key() == resolve({**raw, "seed": 11}).key() != a.key()
    b.data.modalities.append("text")             # the two configs share no list
    assert a.data.modalities == ["audio", "visual"]
    for bad in (-1, 2**31, "x"):
        with pytest.raises(ConfigError) as e:
            a.with_seed(bad)
        assert e.value.key == "seed"


def test_flat_of_a_reseeded_config_is_flatten_of_it_and_survives_pickling():
    import pickle

    from raygap.dotted import flatten

    a = resolve({"method": {"name": "gap_adaptive"}, "seed": 3})
    a.flat()                                    # the sibling's flat is made first, then shared
    b = a.with_seed(8)
    assert b.flat() == flatten(b.to_dict()) and b.flat()["seed"] == 8 and a.flat()["seed"] == 3
    b.flat()["method.pair"].append("text")      # a copy each call
    assert b.flat()["method.pair"] == ["audio", "visual"]
    c = pickle.loads(pickle.dumps(b))
    assert c.flat() == b.flat() and c.key() == b.key() and "_sibling" not in pickle.dumps(b).decode("latin-1")
