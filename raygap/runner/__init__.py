"""Runs a grid's missing trials as Ray Tune trials: the only package that imports Ray, and only
inside its functions (importing it costs nothing). One job a module:

``driver`` (:func:`run_grid`: batches, claims renewal, teardown) -> ``batch`` (one Tune
experiment) -> ``worker`` (the trainable, in a Ray worker) and ``callback`` (what the workers
report, written to the store), which talk through ``protocol`` (one encode, one decode);
``cluster`` (starting or joining Ray, the resource and storage checks), ``storage`` (the one
place a checkpoint URI is read), ``warmups`` (shared warm-up planning), ``shared_data`` (in-memory
datasets built once), ``trackers`` (``--tracker``), ``summary`` (:class:`RunSummary`).
"""
from .cluster import (LOOPBACK_ENV, addable_node_types, check_resources, check_storage, mount_fs_type,
                      node_hosts, private_token, start_ray, worker_runtime_env)
from .driver import run_grid
from .protocol import TRACKER_EXCLUDES
from .storage import checkpoint_at, checkpoint_uri, delete_checkpoint, keep_checkpoint, resume_candidates, trial_checkpoints
from .summary import RunSummary
from .trackers import TRACKER_NEEDS, TRACKERS, mlflow_ui, mlflow_uri, tracker_callbacks, tracker_problem
from .warmups import drop_finished_warmups, plan_warmups, say_warmups
from .worker import trainable

__all__ = ["LOOPBACK_ENV", "TRACKERS", "TRACKER_EXCLUDES", "TRACKER_NEEDS",
           "RunSummary", "addable_node_types", "check_resources", "check_storage", "checkpoint_at", "checkpoint_uri",
           "delete_checkpoint", "drop_finished_warmups", "keep_checkpoint", "mlflow_ui", "mlflow_uri",
           "mount_fs_type", "node_hosts", "plan_warmups", "private_token", "resume_candidates", "run_grid", "trial_checkpoints", "say_warmups",
           "start_ray", "tracker_callbacks", "tracker_problem", "trainable", "worker_runtime_env"]
