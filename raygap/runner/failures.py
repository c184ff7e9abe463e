"""Which failures of a trial count against ``--max-failures``: a trial's own errors do, the loss
of the node it ran on does not.

Ray Tune 2.60 counts both alike (``ray/tune/experiment/trial.py``, ``Trial.handle_error``):
every exception its trainable raised (a ``RayTaskError``) and every death of its actor (a
``RayActorError``) adds one to ``num_failures``, except an actor error whose ``preempted`` flag
is set, which Ray sets only when the autoscaler drained the node for a preemption
(``ray/exceptions.py``, ``ActorDiedError``: ``NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED``). A spot
instance that vanishes, or a raylet that is killed, is no drain: Tune counts it, so with
``--max-failures 0`` one preemption failed the trial. raygap therefore lets Tune retry every
failure (``FailureConfig(max_failures=-1)``) and keeps the two counts itself
(:mod:`raygap.runner.callback`): a trial's own errors up to ``--max-failures`` retries, node
losses up to :data:`NODE_LOSSES_MAX` (a trial that brings its node down each time still ends).

A failure is a node loss (:func:`node_lost`) when Tune's exception is an actor error (directly,
or as a task error's cause, which Tune unwraps the same way) and

* its ``preempted`` flag is set (Tune's own rule), or
* it is an ``ActorUnavailableError``: the actor's node stopped answering (a machine that
  vanishes is seen this way within a second, long before Ray's health check marks the node
  dead), or
* the node the trial was running on (the one it last reported from, or the one the error
  names) is no longer alive in ``ray.nodes()``: its raylet died.

Anything else is the trial's own: an exception its code raised, or its process dying on a
node that is still alive (a segfault, an out-of-memory kill), which the same config may well
repeat.
"""
from __future__ import annotations

import re

NODE_LOSSES_MAX = 10      # a trial whose node is lost more often than this fails (it may be what kills them)


def node_lost(exc, last_node: str | None, alive: set[str]) -> str | None:
    """Why ``exc`` (the exception Tune caught for a trial) is the loss of the trial's node rather
    than an error of the trial, in a few words; None when it is the trial's own. ``last_node``:
    the Ray node the trial last reported from since it (re)started; ``alive``: the node ids
    alive now."""
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    if isinstance(exc, RayTaskError):
        cause = exc.as_instanceof_cause()       # as Tune unwraps it (Trial._handle_ray_task_error)
        if not isinstance(cause, RayActorError):
            return None                         # the trial's code raised
        exc = exc.cause if isinstance(exc.cause, RayActorError) else cause     # (the cause's own message)
    if not isinstance(exc, RayActorError):
        return None
    if exc.preempted:
        return "its node was drained for a preemption"
    if isinstance(exc, ActorUnavailableError):
        return "its node stopped answering"
    named = re.findall(r"Node Id: ([0-9a-f]{16,})", str(exc))    # "The actor died because its node has died. Node Id: .."
    for node in [last_node, *named]:
        if node and node not in alive:
            return f"its node {node[:12]} died"
    return None                                 # its process died on a live node: the trial's own


def alive_nodes() -> set[str]:
    """The ids of the Ray nodes alive now."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def last_error(trial):
    """The exception Tune handled last for ``trial`` (the pickled copy Tune writes beside its
    error file, ``Trial.handle_error``), or None when there is none or it cannot be read."""
    path = getattr(trial, "pickled_error_file", None)
    if not path:
        return None
    try:
        from ray import cloudpickle

        with open(path, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # noqa: BLE001 -- unreadable: the failure then counts as the trial's own
        return None
