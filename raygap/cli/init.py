"""``raygap init DIR``: a project of one's own -- a method and a dataset as plug-in files, a grid
that runs the method beside Concat, OGM-GE and PMR, a quick profile, a README and a test -- copied
from ``raygap/skeleton`` (``examples/own_method`` is the same project) into a new or empty folder."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError

SKELETON = Path(__file__).resolve().parent.parent / "skeleton"
RUN = "raygap run grids/mine.yaml --profile demo"          # what the project's README says to run


def skeleton_files() -> list[Path]:
    """The project's files, relative to the skeleton (caches left out)."""
    return sorted(p.relative_to(SKELETON) for p in SKELETON.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def cmd_init(args) -> int:
    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        raise ConfigError("is a file: raygap init writes a project into a new or empty folder", file=str(target))
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError("is not empty: raygap init writes a project into a new or empty folder, so that nothing "
                          "of yours is overwritten", file=str(target), hint="name a new folder")
    files = skeleton_files()
    for rel in files:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SKELETON / rel, target / rel)
    print(f"wrote {len(files)} files in {target}: {', '.join(str(f) for f in files)}")
    print(f"run it: cd {target} && {RUN}   (the README says what is where)")
    return 0
