"""What a trial's worker tells the driver: one encode, one decode (no Ray, no torch).

Every ``tune.report`` of the trainable (:mod:`raygap.runner.worker`) is one flat dict of
metrics: the epoch record's plain scalars (what Tune and the trackers see), ``pid`` and
``node`` (the worker process and its Ray node), and the parts below, each a JSON string under
``<kind>_json`` (Tune's metrics are flat; these parts are nested). The store callback
(:mod:`raygap.runner.callback`) reads a result back with :func:`decode`.

============  =====================================================================================
kind          what it holds, and when it is sent
============  =====================================================================================
``record``    an epoch's record (what ``fit`` reports), after every epoch
``final``     the finished trial, ``{"metrics", "history", "info"}``: the last report
``failed``    a failure the same config would repeat, or a trial out of retries (``give_up``),
              ``{"error", "traceback"}`` (a path, or None): the last report, instead of an
              exception Tune would retry
``resumed``   with the first epoch after a resume or a start from a shared warm-up: ``{"epoch",
              "uri", "history", "warmup_from"?, "note"}``, or only ``{"note"}`` (no checkpoint used)
``warnings``  the Python warnings raised in the trial since the last report, one line each (with
              any report: an epoch's, the final or the failed one)
``warmup``    with the epoch that ends a shared warm-up its leader kept: ``{"wkey", "epoch", "uri"}``
============  =====================================================================================

The trackers log every metric but these strings (:data:`TRACKER_EXCLUDES`).
"""
from __future__ import annotations

import json
import math

KINDS = ("record", "final", "failed", "resumed", "warnings", "warmup")


def key(kind: str) -> str:
    """The metric that carries the part ``kind``."""
    return f"{kind}_json"


TRACKER_EXCLUDES = [key(k) for k in KINDS]      # JSON strings, not scalars: no tracker logs them


def scalars(record: dict) -> dict:
    """The plain values of an epoch record (NaNs left out): the metrics Tune and the trackers see."""
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and math.isnan(v))}


def encode(pid: int, node: str, **parts) -> dict:
    """The metrics of one report: each part given (by kind; None: not sent) as JSON under its
    key, in the order given, after the scalars of ``record`` when it is one of them, then
    ``pid`` and ``node``."""
    unknown = sorted(set(parts) - set(KINDS))
    if unknown:
        raise ValueError(f"not a kind of report part: {', '.join(unknown)} (kinds: {', '.join(KINDS)})")
    metrics = scalars(parts["record"]) if parts.get("record") is not None else {}
    metrics.update({key(k): json.dumps(v, default=str) for k, v in parts.items() if v is not None})
    metrics.update(pid=pid, node=node)
    return metrics


def decode(result: dict) -> dict:
    """The parts one reported result carries, by kind (those it lacks left out); the epoch
    record gains ``worker_pid`` and ``worker_node``, where it was trained."""
    parts = {k: json.loads(result[key(k)]) for k in KINDS if key(k) in result}
    if "record" in parts:
        parts["record"]["worker_pid"], parts["record"]["worker_node"] = result.get("pid"), result.get("node")
    return parts
