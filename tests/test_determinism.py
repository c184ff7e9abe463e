"""Repeatable GPU trials (issue 22): a deterministic trial process gets ``CUBLAS_WORKSPACE_CONFIG``
before CUDA starts (in the process, and through Ray's runtime_env for every worker), and is told
when that came too late; and no op raygap's models and methods run is among those torch has no
deterministic CUDA kernel for (traced on the CPU: the aten ops are the same on CUDA, but for the
cuDNN ones docs/method.md names)."""
from __future__ import annotations

import collections
import json
import os
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from raygap import system
from raygap import trial as T
from raygap.config import resolve
from _tiny import avdigits

FAST = {"data": avdigits(), "model": {"backbone": "small", "width": 4},
        "train": {"epochs": 1, "device": "cpu", "threads": 2}}

# torch.use_deterministic_algorithms' list of ops that have no deterministic CUDA kernel (its
# "will throw a RuntimeError" list; with warn_only they only warn), as the aten ops they dispatch
# to: a trial that ran one would not repeat on a GPU
NONDETERMINISTIC_ON_CUDA = {
    "avg_pool3d_backward", "_adaptive_avg_pool2d_backward", "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward", "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
    "max_unpool2d", "max_unpool3d", "upsample_linear1d_backward", "upsample_bilinear2d_backward",
    "upsample_bicubic2d_backward", "upsample_trilinear3d_backward", "_upsample_bilinear2d_aa_backward",
    "_upsample_bicubic2d_aa_backward", "reflection_pad1d_backward", "reflection_pad2d_backward",
    "reflection_pad3d_backward", "nll_loss2d_forward", "_ctc_loss_backward", "_embedding_bag_backward",
    "_embedding_bag_dense_backward", "put_", "put", "histc", "bincount", "median", "nanmedian",
    "grid_sampler_2d_backward", "grid_sampler_3d_backward", "scatter_reduce", "scatter_reduce_",
    "index_reduce", "index_reduce_", "kthvalue", "mode",
}
# bincount is nondeterministic on CUDA only with weights; CPSL counts labels without: allowed there
ALLOWED = {"bincount": "torch.bincount without weights (CPSL's class counts): integer counts, deterministic"}


class AtenOps(TorchDispatchMode):
    """Counts the aten ops run inside it (forward, backward, in-place, factory: every one)."""

    def __init__(self):
        super().__init__()
        self.seen: collections.Counter = collections.Counter()
        self.calls: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.seen[name] += 1
        if name in NONDETERMINISTIC_ON_CUDA:
            self.calls.append((name, args, kwargs or {}))
        return func(*args, **(kwargs or {}))

    def nondeterministic_on_cuda(self) -> list[str]:
        bad = []
        for name, args, kwargs in self.calls:
            weighted = name == "bincount" and (len(args) > 1 and args[1] is not None or kwargs.get("weights") is not None)
            if name not in ALLOWED or weighted:
                bad.append(name)
        return sorted(set(bad))


def test_the_tracer_sees_the_ops_torch_lists():
    with AtenOps() as ops:
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        torch.nn.AdaptiveAvgPool2d(2)(x).sum().backward()
        torch.bincount(torch.tensor([0, 1, 1]), weights=torch.tensor([1.0, 2.0, 3.0]))
        torch.bincount(torch.tensor([0, 1, 1]))
    assert ops.nondeterministic_on_cuda() == ["_adaptive_avg_pool2d_backward", "bincount"]


@pytest.mark.parametrize("fusion", ["concat", "gated", "shared"])
def test_the_models_run_no_op_without_a_deterministic_cuda_kernel(fusion):
    """ResNet-18 on a spectrogram and on frames (the paper's encoders), the GRU and meanpool
    sequence encoders, each fusion head: forward, cross-entropy, backward."""
    from raygap.data.base import ModalitySpec
    from raygap.models import build_model

    y = torch.tensor([0, 1, 2, 3])
    for specs in ([ModalitySpec("audio", "spectrogram", (1, 64, 48)), ModalitySpec("visual", "frames", (2, 3, 32, 32))],
                  [ModalitySpec("text", "sequence", (7, 30)), ModalitySpec("audio", "vector", (5,))]):
        for seq in ("gru", "meanpool"):
            cfg = types.SimpleNamespace(backbone="resnet18", sequence_backbone=seq, fusion=fusion, hidden=16)
            model = build_model(specs, 6, cfg)
            with AtenOps() as ops:
                out = model({s.name: torch.randn(4, *s.shape) for s in specs})
                loss = torch.nn.functional.cross_entropy(out.fused, y)
                loss = loss + sum(torch.nn.functional.cross_entropy(lg, y) for lg in out.logits.values())
                loss.backward()
            assert ops.seen["nll_loss_backward"] == 3                          # the backward was traced
            assert ("convolution_backward" in ops.seen) == (specs[0].kind == "spectrogram")
            assert ops.nondeterministic_on_cuda() == [], (fusion, seq, [s.kind for s in specs])


# ----------------------------------------------------------------------------- cuBLAS before CUDA starts
@pytest.fixture
def clean_cublas(monkeypatch):
    monkeypatch.delenv(system.CUBLAS_ENV, raising=False)
    monkeypatch.setattr(system, "_cublas_late", [])
    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield monkeypatch
    torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_a_deterministic_trial_process_sets_cublas_workspace_before_cuda_starts(clean_cublas, recwarn):
    monkeypatch = clean_cublas
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    T.prepare_process(resolve(FAST))
    assert os.environ[system.CUBLAS_ENV] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
    assert not [w for w in recwarn if "CUBLAS" in str(w.message)]
    monkeypatch.delenv(system.CUBLAS_ENV)
    T.prepare_process(resolve({**FAST, "train": {**FAST["train"], "deterministic": False}}))
    assert system.CUBLAS_ENV not in os.environ and not torch.are_deterministic_algorithms_enabled()


def test_cuda_started_without_cublas_workspace_is_said_in_every_trial(clean_cublas):
    monkeypatch = clean_cublas
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    for _ in range(2):                       # (a reused Ray actor: the second trial is told too)
        with pytest.warns(RuntimeWarning, match="CUDA started in this process .* before CUBLAS_WORKSPACE_CONFIG"):
            T.prepare_process(resolve(FAST))
    monkeypatch.setattr(system, "_cublas_late", [])
    monkeypatch.setenv(system.CUBLAS_ENV, ":0:0")
    with pytest.warns(RuntimeWarning, match="':0:0' in the environment is not one of cuBLAS's deterministic"):
        T.prepare_process(resolve(FAST))
    assert os.environ[system.CUBLAS_ENV] == ":0:0"


def test_ray_starts_its_workers_with_cublas_workspace(monkeypatch):
    import ray

    from raygap import runner

    monkeypatch.delenv(system.CUBLAS_ENV, raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert runner.worker_runtime_env(True) == {"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}}
    assert runner.worker_runtime_env(False) is None
    monkeypatch.setenv(system.CUBLAS_ENV, ":16:8")          # the driver's own choice goes to the workers
    assert runner.worker_runtime_env(True) == {"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",        # a submitted job that sets it itself
                       json.dumps({"runtime_env": {"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}}}))
    assert runner.worker_runtime_env(True) is None
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv(system.CUBLAS_ENV)
    inits = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: inits.append(kw))
    runner.start_ray("10.0.0.1:6379", None, lambda s: None)            # a joined cluster
    assert inits[-1]["runtime_env"] == {"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}}
    runner.start_ray("10.0.0.1:6379", None, lambda s: None, deterministic=False)
    assert inits[-1]["runtime_env"] is None
