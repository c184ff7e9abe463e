"""The options of ``raygap prepare`` (``--option KEY=VALUE``): those of every dataset and each
dataset's own, their types and defaults, and the check that turns the command line's strings
into them."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from .layouts import CREMAD_TEST_FRACTION


@dataclass(frozen=True)
class Option:
    type: type
    default: Any
    help: str


COMMON_OPTIONS = {
    "workers": Option(int, min(8, os.cpu_count() or 1), "parallel ffmpeg processes"),
    "overwrite": Option(bool, False, "redo outputs that already exist"),
    "cache": Option(bool, True, "then decode the layout into the tensor cache (`raygap cache`: the "
                                "dataset's default frames and image size) for data.pipeline: cache"),
}
DATASET_OPTIONS: dict[str, dict[str, Option]] = {
    "cremad": {
        "train_csv": Option(str, "", "use this train.csv instead of generating one"),
        "test_csv": Option(str, "", "use this test.csv instead of generating one"),
        "seed": Option(int, 0, "seed of the generated train / test split"),
        "test_fraction": Option(float, CREMAD_TEST_FRACTION, "share of clips held out for test when generating"),
    },
    "ave": {},
    "ks": {
        "train_list": Option(str, "", "my_train.txt to use (default: RAW_DIR/my_train.txt)"),
        "test_list": Option(str, "", "my_test.txt to use (default: RAW_DIR/my_test.txt)"),
    },
}


def _convert(key: str, value: Any, opt: Option) -> Any:
    if opt.type is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected true/false, got {value!r}", key=key)
    try:
        return opt.type(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected {opt.type.__name__}, got {value!r}", key=key) from None


def parse_options(dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``options`` (strings from the command line, or typed values) and fill defaults."""
    if dataset not in DATASET_OPTIONS:
        near = difflib.get_close_matches(dataset, list(DATASET_OPTIONS), n=1, cutoff=0.0)
        raise ConfigError(f"cannot prepare {dataset!r} (choices: {', '.join(DATASET_OPTIONS)})",
                          key="dataset", hint=f"nearest: {near[0]!r}" if near else None)
    spec = {**COMMON_OPTIONS, **DATASET_OPTIONS[dataset]}
    out = {k: o.default for k, o in spec.items()}
    for key, value in (options or {}).items():
        if key not in spec:
            near = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.0)
            raise ConfigError(f"unknown option for {dataset} (options: {', '.join(spec)})",
                              key=f"--option {key}", hint=f"nearest: {near[0]!r}" if near else None)
        out[key] = _convert(f"--option {key}", value, spec[key])
    if out["workers"] < 1:
        raise ConfigError("must be at least 1", key="--option workers")
    if "seed" in out and out["seed"] < 0:
        raise ConfigError("must be 0 or more", key="--option seed")
    if "test_fraction" in out and not 0 < out["test_fraction"] < 1:
        raise ConfigError("must be between 0 and 1", key="--option test_fraction")
    return out
