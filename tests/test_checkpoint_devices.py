"""Checkpoints on any device (issue 22, items 1-3): every checkpoint loads to the CPU through the
weights-only unpickler and each part is moved where it belongs on the trial's device; the
generators' states (CPU, the CUDA default, OPM&OGM's own) come back as CPU ByteTensors to a
generator of the trial's device kind; a checkpoint written on another kind of device is refused
(fit), skipped (the Tune trainable) or one line (``raygap train``).

No GPU here: the load path runs with the ``meta`` device as the trial's device (a non-CPU target:
the old ``map_location=device`` handed ``torch.set_rng_state`` a meta tensor, as it handed it a
CUDA one on a GPU), and torch.cuda's generator calls are recorded by fakes. The tests marked
``gpu`` run the same on CUDA where there is one."""
from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import pytest
import torch
import yaml

import raygap.methods  # noqa: F401  (registers the methods)
from raygap import checkpoint
from raygap import trial as T
from raygap.config import resolve
from raygap.errors import CheckpointDeviceMismatch
from raygap.methods.base import Method, MethodContext
from raygap.registry import METHODS
from raygap.trial import CHECKPOINT, fit, load_data, run_trial
from _tiny import avdigits

FAST = {"data": avdigits(visual_corrupt=0.3), "model": {"backbone": "small", "width": 4},
        "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 2, "batch_size": 256, "device": "cpu",
                                                        "threads": 2, "checkpoint_every": 1}}
# methods whose state holds tensors (AGM's running means, the gap method's gaps and weights,
# MLA's projections, PMR's prototypes), each acting in epoch 1; purification restricts the
# training indices (a numpy array in the loop, a tensor in the checkpoint)
TENSOR_STATE = {"concat": ("concat", {}), "agm": ("agm", {}), "gap_adaptive": ("gap_adaptive", {"warmup_epochs": 1}),
                "purify": ("gap_adaptive", {"warmup_epochs": 1, "purify_tau": 0.5}), "mla": ("mla", {}),
                "pmr": ("pmr", {})}
TIMING = ("train_seconds", "epoch_seconds")


def config(name: str, **method):
    fusion = METHODS.get(name).meta.get("fusion") or "concat"
    return resolve({**FAST, "method": {"name": name, **method}, "model": {**FAST["model"], "fusion": fusion}})


def tensors(obj, path=""):
    """(path, tensor) for every tensor in nested dicts, lists, tuples and object attributes."""
    if torch.is_tensor(obj):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{path}[{i}]")


# ----------------------------------------------------------------------------- the load path, off the CPU
class Finished(dict):
    """Per label: a trial trained to its end on the CPU, its final checkpoint kept; each trained
    when a test first asks for it (one trial per test's setup)."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.tmp = tmp_path_factory

    def __missing__(self, label):
        name, method = TENSOR_STATE[label]
        d = self.tmp.mktemp(label)
        cfg = config(name, **method)
        self[label] = (cfg, run_trial(cfg, checkpoint_dir=d), d)
        return self[label]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return Finished(tmp_path_factory)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")   # (meta copies nothing: fine)
@pytest.mark.parametrize("label", list(TENSOR_STATE))
def test_a_checkpoint_resumes_onto_a_non_cpu_device_with_every_state_where_it_belongs(finished, label, monkeypatch):
    """fit resumes the finished trial on the meta device (nothing is left to train, so the whole
    load path runs and nothing else): the RNG state reaches torch.set_rng_state as a CPU
    ByteTensor, Adam's moments sit on the device and its ``step`` stays on the CPU (torch's policy
    for an optimizer neither capturable nor fused), the method's tensors are on the device."""
    cfg, trained, d = finished[label]
    name = TENSOR_STATE[label][0]
    monkeypatch.setattr(checkpoint, "unusable_on", lambda ck, kind: None)   # (meta: no device kind to match)
    handed, optimizers, methods = [], [], []
    real_set_rng_state = torch.set_rng_state

    def set_rng_state(state):
        handed.append((state.device.type, state.dtype))
        real_set_rng_state(state)

    monkeypatch.setattr(torch, "set_rng_state", set_rng_state)
    real_build = T.build_optimizer
    monkeypatch.setattr(T, "build_optimizer", lambda *a: optimizers.append(real_build(*a)) or optimizers[-1])
    cls = METHODS.get(name).obj
    real_load = cls.load_state_dict

    def load_state_dict(self, state):
        methods.append(self)
        real_load(self, state)

    monkeypatch.setattr(cls, "load_state_dict", load_state_dict)
    meta = torch.device("meta")
    again = fit(cfg, load_data(cfg), device=meta, checkpoint_dir=d)
    assert handed == [("cpu", torch.uint8)]
    assert again.metrics == trained.metrics and again.history == trained.history
    opt = optimizers[-1]
    steps = [s["step"] for s in opt.state.values()]
    moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert steps and all(t.device.type == "cpu" and t.dtype == torch.float32 and float(t) > 0 for t in steps)
    assert moments and all(t.device == meta for t in moments)
    (method,) = methods
    held = list(tensors(vars(method)))
    if name != "concat":
        assert held, "the method keeps tensors: the test must see them"
    assert all(t.device == meta for _, t in held), [(p, t.device) for p, t in held if t.device != meta]


def test_the_cuda_generator_is_saved_and_restored_as_a_cpu_byte_tensor(monkeypatch):
    """The default CUDA generator of the trial's device (GE noise draws from it) is in the
    checkpoint and goes back to that device; torch.cuda's generator calls are recorded by fakes."""
    cuda = torch.device("cuda", 0)
    saved = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)  # (seed, offset)
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)) or saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": calls.append(("set", state.device.type, state.dtype,
                                                                   state.tolist(), device)))
    states = checkpoint.rng_states(cuda)
    assert calls == [("get", cuda)] and states["rng_cuda"] is saved
    assert checkpoint.rng_states(torch.device("cpu"))["rng_cuda"] is None
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": None,
          "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "method": {}, **states}
    checkpoint.restore(ck, cuda, model=model, optimizer=opt, scheduler=None,
                       scaler=torch.amp.GradScaler("cpu", enabled=False), method=Method(None, None))
    assert calls[1:] == [("set", "cpu", torch.uint8, saved.tolist(), cuda)]


def test_opm_generator_state_goes_to_a_generator_of_the_trial_device_kind_only():
    from raygap.methods.opm_ogm import OPMOGM

    cfg = config("opm_ogm", warmup_epochs=1)
    ctx = MethodContext(["audio", "visual"], 10, 100, cfg, torch.device("cpu"))
    a = OPMOGM(cfg.params("method"), ctx)
    torch.rand(5, generator=a.gen)
    a.rng.random()
    state = a.state_dict()
    assert state["gen_device"] == "cpu" and state["gen"].device.type == "cpu" and state["gen"].dtype == torch.uint8
    b = OPMOGM(cfg.params("method"), ctx)
    b.load_state_dict(state)
    assert torch.equal(torch.rand(5, generator=b.gen), torch.rand(5, generator=a.gen))
    assert b.rng.random() == a.rng.random()
    with pytest.raises(CheckpointDeviceMismatch, match="a cuda generator's; this trial draws on cpu"):
        OPMOGM(cfg.params("method"), ctx).load_state_dict({**state, "gen_device": "cuda"})


# ----------------------------------------------------------------------------- weights only
class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_everywhere(tmp_path):
    cfg = config("concat")
    marker = tmp_path / "ran"
    d = tmp_path / "trial"
    d.mkdir()
    torch.save({"epoch": 0, "key": cfg.key(), "payload": RunsCode(marker)}, d / CHECKPOINT)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_trial(cfg, checkpoint_dir=d)
    assert not marker.exists()
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump(FAST))
    (d / "config.json").unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-m", "raygap", "train", str(c), "--out", str(d)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--out: its checkpoint.pt is not a raygap checkpoint that can be read safely (UnpicklingError" in r.stderr
    assert "pass --fresh" in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("label", list(TENSOR_STATE))
def test_every_checkpoint_holds_only_tensors_and_plain_values(finished, label):
    _, result, d = finished[label]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(d / CHECKPOINT) == []
    ck = checkpoint.load(d / CHECKPOINT)
    assert ck["device"] == "cpu" and ck["rng_cuda"] is None
    assert all(t.device.type == "cpu" for _, t in tensors(ck))
    if label == "purify":                                   # purification's subset of the training split
        kept = ck["train_indices"]
        assert kept.dtype == torch.int64 and 0 < len(kept) < result.info["n_train"]


def test_an_old_checkpoint_without_a_device_record_counts_where_its_tensors_were_saved(finished, tmp_path,
                                                                                        monkeypatch):
    _, _, d = finished["concat"]
    old = {k: v for k, v in torch.load(d / CHECKPOINT, weights_only=True).items() if k not in ("device", "rng_cuda")}
    torch.save(old, tmp_path / "cpu.pt")
    assert checkpoint.load(tmp_path / "cpu.pt")["device"] == "cpu"
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")   # as torch.save on a GPU
    torch.save(old, tmp_path / "gpu.pt")
    monkeypatch.undo()
    ck = checkpoint.load(tmp_path / "gpu.pt")
    assert ck["device"] == "cuda" and all(t.device.type == "cpu" for _, t in tensors(ck))
    assert "written without the CUDA generator's state" in checkpoint.unusable_on(ck, "cuda")


# ----------------------------------------------------------------------------- across devices: refused
def on_the_other_device(src, dst):
    ck = torch.load(src, weights_only=True)
    torch.save({**ck, "device": "cuda", "rng_cuda": torch.zeros(16, dtype=torch.uint8)}, dst)


def test_fit_refuses_a_checkpoint_written_on_another_device(finished, tmp_path):
    cfg, _, d = finished["concat"]
    (tmp_path / "x").mkdir()
    on_the_other_device(d / CHECKPOINT, tmp_path / "x" / CHECKPOINT)
    with pytest.raises(CheckpointDeviceMismatch, match="written on cuda, this trial trains on cpu"):
        run_trial(cfg, checkpoint_dir=tmp_path / "x")


def test_raygap_train_refuses_a_checkpoint_of_another_device_in_one_line(finished, tmp_path):
    cfg, _, d = finished["concat"]
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"                          # what `raygap train --out` left, from a GPU
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"key": cfg.key()}))
    on_the_other_device(d / CHECKPOINT, out / CHECKPOINT)
    before = (out / CHECKPOINT).read_bytes()
    r = subprocess.run([sys.executable, "-m", "raygap", "train", str(c), "--out", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert str(out) in r.stderr and "written on cuda, this trial trains on cpu" in r.stderr
    assert "pass --fresh to start over on cpu" in r.stderr and "Traceback" not in r.stderr
    assert (out / CHECKPOINT).read_bytes() == before and not (out / "result.json").exists()


class FakeRay:
    """What the trainable reads of Ray and Tune, outside a Tune session."""

    def __init__(self, monkeypatch):
        import ray
        from ray import tune

        self.reports = []
        monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
        monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: self.reports.append(metrics))
        monkeypatch.setattr(tune, "get_context", lambda: (_ for _ in ()).throw(RuntimeError("no session")))
        monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"get_node_id": lambda s: "n0"})())
        monkeypatch.setattr("warnings.showwarning", __import__("warnings").showwarning)   # the trainable sets it


def test_the_trainable_skips_a_checkpoint_of_another_device_and_says_why(finished, tmp_path, monkeypatch):
    from raygap.runner import trainable

    cfg, trained, d = finished["concat"]
    other = tmp_path / "checkpoint_000001"
    other.mkdir()
    on_the_other_device(d / CHECKPOINT, other / CHECKPOINT)
    ray = FakeRay(monkeypatch)
    trainable({"t": {"key": cfg.key(), "label": "x", "trial": cfg.to_dict(), "resume": [str(other)]}})
    first, final = ray.reports[0], json.loads(ray.reports[-1]["final_json"])
    note = json.loads(first["resumed_json"])["note"]
    assert note == (f"checkpoint {other} not usable (written on cuda, this trial trains on cpu: a resume across "
                    "devices cannot continue exactly (other kernels, other random generators)); started over")
    assert [h["epoch"] for h in final["history"]] == [0, 1] and final["info"]["resumed_from_epoch"] is None
    strip = lambda hs: [{k: v for k, v in h.items() if k not in TIMING} for h in hs]  # noqa: E731
    assert strip(final["history"]) == strip(json.loads(json.dumps(trained.history, default=str)))


def test_a_device_mismatch_is_a_failure_the_runner_does_not_retry(tmp_path, monkeypatch):
    """Raised in fit (the trainable's own check passed it, or OPM&OGM's generator refused it),
    it is reported as the trial's final failure, not raised for Tune to retry."""
    from raygap.runner import trainable

    cfg = config("concat")

    def refuse(*a, **kw):
        raise CheckpointDeviceMismatch("x/checkpoint.pt: written on cuda, this trial trains on cpu")

    monkeypatch.setattr(T, "fit", refuse)
    ray = FakeRay(monkeypatch)
    trainable({"t": {"key": cfg.key(), "label": "x", "trial": cfg.to_dict()}})
    (failed,) = [json.loads(r["failed_json"]) for r in ray.reports if "failed_json" in r]
    assert failed["error"] == "CheckpointDeviceMismatch: x/checkpoint.pt: written on cuda, this trial trains on cpu"


@pytest.mark.parametrize("where", ["load_data", "fit"])
def test_a_bad_data_layout_or_a_compile_limit_hit_is_a_failure_the_runner_does_not_retry(where, monkeypatch):
    """A dataset that cannot be loaded (raised while the trainable loads it, before fit) and a
    compile-limit hit (raised in fit) fail the same way on every retry: reported as final."""
    from raygap.errors import DataError
    from raygap.models.compiled import CompileLimitHit
    from raygap.runner import trainable

    cfg = config("concat")
    error = DataError("/data/cremad: no train.csv") if where == "load_data" else CompileLimitHit("f needed more")

    def fail(*a, **kw):
        raise error

    monkeypatch.setattr(T, where, fail)
    ray = FakeRay(monkeypatch)
    trainable({"t": {"key": cfg.key(), "label": "x", "trial": cfg.to_dict()}})
    (failed,) = [json.loads(r["failed_json"]) for r in ray.reports if "failed_json" in r]
    assert failed["error"] == f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("then", ["fails", "finishes"])
def test_a_warning_after_the_last_epoch_report_reaches_the_driver(then, monkeypatch):
    """A warning raised where no epoch report follows (before a failure the runner does not
    retry, or after the last epoch) travels with the trial's last report, failed or final."""
    from types import SimpleNamespace

    from raygap.errors import DataError
    from raygap.runner import trainable

    cfg = config("concat")

    def fit_then(cfg, bundle, *, report, **kw):
        report({"epoch": 0, "val_acc": 0.5}, None)
        __import__("warnings").warn(f"raised after the epoch report, then the trial {then}", UserWarning)
        if then == "fails":
            raise DataError("/data/x: a split file went missing")
        return SimpleNamespace(metrics={"acc": 0.5}, history=[{"epoch": 0, "val_acc": 0.5}], info={})

    monkeypatch.setattr(T, "fit", fit_then)
    ray = FakeRay(monkeypatch)
    trainable({"t": {"key": cfg.key(), "label": "x", "trial": cfg.to_dict()}})
    first, last = ray.reports
    assert "warnings_json" not in first and ("failed_json" if then == "fails" else "final_json") in last
    (said,) = json.loads(last["warnings_json"])
    assert said.startswith(f"UserWarning: raised after the epoch report, then the trial {then} (test_checkpoint_devices.py:")


# ----------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ogm_ge", "opm_ogm", "gap_adaptive"])
def test_on_the_gpu_a_resumed_trial_ends_exactly_as_an_uninterrupted_one(tmp_path, name):
    """GE noise (the default CUDA generator), OPM's drop masks (its own CUDA generator) and the
    gap method's device state, through a resume on CUDA with deterministic kernels."""
    acts = {"opm_ogm": {"warmup_epochs": 1}, "gap_adaptive": {"warmup_epochs": 1}}.get(name, {})
    cfg = resolve({**FAST, "method": {"name": name, **acts},
                   "train": {**FAST["train"], "epochs": 3, "device": "cuda"}})
    full = run_trial(cfg, checkpoint_dir=tmp_path / "a")

    class Crash(Exception):
        pass

    def crash(record, ckpt):
        if record["epoch"] == 1:
            raise Crash()

    with pytest.raises(Crash):
        run_trial(cfg, checkpoint_dir=tmp_path / "b", report=crash)
    ck = checkpoint.load(tmp_path / "b" / CHECKPOINT)
    assert ck["device"] == "cuda" and ck["rng_cuda"].dtype == torch.uint8
    resumed = run_trial(cfg, checkpoint_dir=tmp_path / "b")
    strip = lambda hs: [{k: v for k, v in h.items() if k not in TIMING} for h in hs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert all(math.isfinite(h["train_loss"]) for h in full.history)
