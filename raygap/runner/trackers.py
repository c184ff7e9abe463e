"""``--tracker``: Ray Tune's own logger callbacks (TensorBoard, MLflow, W&B), set up before any
trial starts, and the check that the packages a tracker needs are installed. Every epoch's
scalars are logged; the report parts of :mod:`raygap.runner.protocol` (JSON strings) are not."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from .protocol import TRACKER_EXCLUDES

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
# the modules each tracker needs, and the raygap extra that installs them (pyproject.toml)
TRACKER_NEEDS = {"tensorboard": (("tensorboardX",), None), "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
                 "wandb": (("wandb",), "wandb")}


def tracker_problem(tracker: str) -> str | None:
    """Why ``--tracker`` cannot work here (a package it needs is missing), or None."""
    import importlib.util

    if tracker in (None, "none"):
        return None
    modules, extra = TRACKER_NEEDS[tracker]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    how = (f"install raygap's {extra!r} extra: RAYGAP_EXTRAS={extra} bash scripts/setup.sh (docs/install.md)" if extra
           else f"pip install {' '.join(missing)}")
    return f"--tracker {tracker} needs {', '.join(missing)}, not installed here: {how}"


def mlflow_uri(results: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite database in the results folder (MLflow 3 refuses
    its old ./mlruns file store unless told to; SQLite is its replacement)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(results) / 'mlflow.db').resolve()}"


def mlflow_ui(uri: str) -> str:
    """Where to look at the runs of ``uri``: a tracking server's page, else the command that
    starts MLflow's UI on it. The extra installs mlflow-skinny (client and SQLite store); the UI
    is in the full mlflow package, whose pyarrow pin clashes with Ray's, so it runs in an
    environment of its own (``uvx``, which setup.sh puts beside this Python)."""
    import shlex
    import sys
    from importlib.metadata import PackageNotFoundError, version

    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri}"
    try:
        version("mlflow")
        return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
    except PackageNotFoundError:
        pass
    uvx = Path(sys.executable).with_name("uvx")
    return (f"{shlex.quote(str(uvx)) if uvx.exists() else 'uvx'} --from mlflow=={version('mlflow-skinny')} "
            f"mlflow ui --backend-store-uri {shlex.quote(uri)}")


def tracker_callbacks(tracker: str | None, grid, experiment, log, results: Path) -> list:
    """Ray Tune's own logger callback for ``tracker``: TensorBoard event files in each trial's
    folder, an MLflow run or a W&B run per trial (named like the trial folder), every epoch's
    scalars logged at its step (1, 2, ...: Tune's training iteration). ``experiment``: the Tune
    experiment folder (a path, or a URI with remote storage); ``results``: the results folder
    (where MLflow's database goes by default). One line says where to look. The callback is set
    up here, before any trial starts: a tracking URI or a W&B login that cannot work is one line
    (ConfigError, exit 2), not a traceback from inside Tune."""
    if tracker in (None, "none"):
        return []
    if tracker == "tensorboard":
        from ray.tune.logger import TBXLoggerCallback

        log(f"TensorBoard: tensorboard --logdir {experiment}")
        return [TBXLoggerCallback()]
    if tracker == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = mlflow_uri(results)
        tags = {"raygap_grid": grid.name, "raygap_profile": grid.profile or "", "raygap_variant": grid.variant}
        cb = MLflowLoggerCallback(tracking_uri=uri, experiment_name=grid.name, tags=tags, save_artifact=False)
        _set_up(cb, f"MLflow cannot use {uri}", "set MLFLOW_TRACKING_URI to a usable tracking URI, or unset it "
                                                "(then: a SQLite database in the results folder)")
        log(f"MLflow: experiment {grid.name!r} at {uri}, one run per trial; to browse: {mlflow_ui(uri)}")
        return [cb]
    # wandb.init runs in a Ray actor, whose environment is the cluster's: the driver's mode and
    # folder are passed to it
    init = {k: os.environ[v] for k, v in (("mode", "WANDB_MODE"), ("dir", "WANDB_DIR")) if os.environ.get(v)}
    if "dir" in init:
        init["dir"] = str(Path(init["dir"]).resolve())
    cb = _wandb_callback(project=f"raygap-{grid.name}", group=grid.variant, log_config=False, excludes=TRACKER_EXCLUDES,
                         upload_checkpoints=False, tags=[grid.name[:64], grid.variant[:64]], **init)  # tags: 1-64 chars
    _set_up(cb, "W&B cannot log", "log in (wandb login, or WANDB_API_KEY), or set WANDB_MODE=offline")
    where = f"{init['dir'] if 'dir' in init else str(experiment) + '/*'}/wandb/offline-run-*"
    log(f"W&B: project raygap-{grid.name}, group {grid.variant}, one run per trial"
        + (f"; offline runs in {where} (to upload: wandb sync {where})" if init.get("mode") in ("offline", "dryrun")
           else f" (https://wandb.ai, your entity's project raygap-{grid.name})"))
    return [cb]


def _set_up(callback, what: str, hint: str) -> None:
    """``callback.setup()`` now (Tune calls it again, harmlessly): its failure as one ConfigError."""
    try:
        callback.setup()
    except Exception as e:  # noqa: BLE001 -- whatever the tracker raises is said in one line
        text = " ".join(str(e).split())
        raise ConfigError(f"{what}: {type(e).__name__}: {text[:300]}", key="--tracker", hint=hint) from None


def _wandb_callback(**kwargs):
    """Ray's ``WandbLoggerCallback``, which also says when a trial's W&B run failed: each run
    lives in a Ray actor, and Ray's callback ends a finished actor without looking at its error
    (a run wandb.init refused was otherwise lost without a word)."""
    import sys

    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback

    class WandbCallback(WandbLoggerCallback):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.failed_runs: set[str] = set()         # said once each (Ray may start a trial's actor again)

        def _cleanup_logging_actor(self, trial):
            future = self._trial_logging_futures.get(trial)
            if future is not None and ray.wait([future], timeout=0)[0]:
                try:
                    ray.get(future)
                except Exception as e:  # noqa: BLE001 -- said; the trial's results are unaffected
                    if str(trial) not in self.failed_runs:
                        self.failed_runs.add(str(trial))
                        cause = getattr(e, "cause", None) or e
                        print(f"raygap: the W&B run of trial {trial} failed: {type(cause).__name__}: "
                              f"{' '.join(str(cause).split())[:300]}", file=sys.stderr, flush=True)
            super()._cleanup_logging_actor(trial)

    return WandbCallback(**kwargs)

