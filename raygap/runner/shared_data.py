"""In-memory datasets built once in the driver and handed to every trial that uses them
(``tune.with_parameters``), keyed by :func:`data_key`, under which the trainable looks its
dataset up. The driver builds them in a thread while Ray starts (:class:`DataBuilder`)."""
from __future__ import annotations

import json
import threading


def data_key(cfg) -> str:
    """The key of a trial config's dataset (its ``data:`` section) among the shared ones."""
    return json.dumps(cfg.to_dict()["data"], sort_keys=True)


def _in_memory(spec) -> bool:
    from ..registry import DATASETS

    return bool(DATASETS.get(spec.config.data.name).meta.get("in_memory"))


def _shared_bundles(specs, log) -> dict:
    """Build in-memory datasets once in the driver and hand them to trials (tune.with_parameters)."""
    from ..trial import load_data

    shared = {}
    for s in specs:
        if not _in_memory(s):
            continue
        k = data_key(s.config)
        if k not in shared:
            shared[k] = load_data(s.config)
    if shared:
        log(f"built {len(shared)} in-memory dataset(s) once for all trials")
    return shared


class DataBuilder:
    """In-memory datasets built in a daemon thread while Ray starts (its start-up is mostly
    waiting on subprocesses); an interrupted start-up does not wait for it."""

    def __init__(self, specs, log):
        self.box: dict = {}
        self.log = log
        self.enabled = True
        self.thread = threading.Thread(target=self._build, args=(specs,), name="raygap-data", daemon=True)
        self.thread.start()

    def disable(self) -> None:
        """Not needed after all (trials build their own data on a cluster of several machines, or
        the run ends): not waited for, and a build still going says nothing more."""
        self.enabled = False

    def _build(self, specs):
        try:
            self.box["value"] = _shared_bundles(specs, self._say)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
            self.box["error"] = e

    def _say(self, text: str) -> None:
        if self.enabled:
            self.log(text)

    def result(self, specs) -> dict:
        if not self.enabled:
            return {}
        while self.thread.is_alive():
            self.thread.join(0.2)
        if "error" in self.box:
            raise self.box["error"]
        shared = self.box.setdefault("value", {})
        missing = [s for s in specs if data_key(s.config) not in shared and _in_memory(s)]
        if missing:                  # a later batch with other datasets (rare): build those here
            shared.update(_shared_bundles(missing, self.log))
        return shared
