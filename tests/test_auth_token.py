"""The embedded Ray instance's token (issue 25), through real ``raygap run`` processes: token
authentication with a fresh token of this run, in a file only the user can read (0600, in a 0700
folder), given to every process of the run and removed at the end; a client without it is refused.
An environment that disables authentication keeps it off, with one warning line."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from _proc import Raygap
from _tiny import avdigits

BASE = {"data": avdigits(), "model": {"backbone": "small", "width": 4},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "threads": 1}}
JOIN = ("import os, ray, sys\n"         # (os._exit: the answer is in; Ray's exit hooks may take minutes)
        "try:\n"
        "    ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "    print('JOINED', flush=True)\n"
        "except Exception as e:\n"
        "    print('REFUSED', type(e).__name__, ' '.join(str(e).split())[:300], flush=True)\n"
        "os._exit(0)\n")


def grid(tmp_path: Path, epochs: int = 1) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"name": "g", "base": {**BASE, "train": {**BASE["train"], "epochs": epochs}}, "rows": {"Concat": {"method": {"name": "concat"}}},
                                 "seeds": [0], "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}))
    return p


def join(gcs: str, env: dict, home: Path) -> str:
    """A client process joining the GCS at ``gcs`` as a local user would, Ray's defaults but the
    loopback setting (without it, Ray 2.60 dials the machine's outward address, which the embedded
    instance does not listen on: every client, token or not, would be refused for that alone)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", JOIN, gcs],
                       env={**clean, "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env},
                       capture_output=True, text=True, timeout=400)
    return (r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "") + "\n" + r.stderr


def test_the_embedded_instance_takes_only_this_runs_token(tmp_path):
    home = tmp_path / "home"          # a home without ~/.ray/auth_token: the client has no token of its own
    home.mkdir()
    # (empty: whatever this environment sets, raygap's token is the one in force)
    env = {"HOME": str(home), "RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN": ""}
    run = Raygap("run", grid(tmp_path, epochs=10_000), "--results", tmp_path / "results", "--num-cpus", "1", env=env)
    run.wait_for(r"grid: 0/1 done, 1 running")          # the trial runs on: Ray is up until we stop it
    raylet = next(p for p in run.tree() if p.name() == "raylet")
    renv = raylet.environ()
    token = Path(renv["RAY_AUTH_TOKEN_PATH"])
    assert renv["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in renv
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert token.stat().st_uid == os.getuid() and len(token.read_text()) == 64
    gcs = next(a.split("=", 1)[1] for a in raylet.cmdline() if a.startswith("--gcs-address="))
    # a client with no token (another local user: Ray's defaults, no ~/.ray/auth_token) is refused
    # (a refused client tries ~20 times, seconds each, minutes on a loaded machine: 3 tries here)
    said = join(gcs, {"RAY_gcs_server_port_wait_time_s": "3"}, home)
    assert said.startswith("REFUSED") and "Unauthenticated" in said, said[-3000:]   # for its token, not its route
    # the same client given the run's token joins (the refusal above is the token's doing)
    said = join(gcs, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}, home)
    assert said.startswith("JOINED\n"), said[-3000:]
    run.send(2)                                        # SIGINT: the run stops, and its token goes with it
    code, out = run.finish(300)
    assert code == 130, out
    assert not token.exists() and not token.parent.exists()           # removed with the run
    assert not (home / ".ray" / "auth_token").exists()                 # Ray's default token was never made


def test_an_environment_that_disables_authentication_gets_one_warning(tmp_path):
    run = Raygap("run", grid(tmp_path), "--results", tmp_path / "results", "--num-cpus", "1",
                 env={"RAY_AUTH_MODE": "disabled"}, split_stderr=True)
    code, out = run.finish(300)
    assert code == 0, out + run.errors
    warnings = [ln for ln in run.errors.splitlines() if "RAY_AUTH_MODE=disabled" in ln]
    assert len(warnings) == 1 and "any user of this machine can connect to it" in warnings[0], run.errors
