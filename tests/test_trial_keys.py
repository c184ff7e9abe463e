"""Trial keys are the identity of stored results (a done key is never run again): a change to how
raygap finds its plug-ins, validates configs or expands grids must leave every key as it was, or
stored trials are orphaned and run again. ``tests/data/trial_keys.json`` pins the key of every
trial of every shipped grid, without a profile and under each profile, as the code had them when
the file was written; this test recomputes them and names every key that moved.

A change that is meant to move keys (a grid edited, a method's ``version=`` bumped, a new hashed
config key) rewrites the file on purpose, and the diff shows which trials it re-runs:

    .venv/bin/python tests/test_trial_keys.py --write
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINNED = ROOT / "tests" / "data" / "trial_keys.json"


def all_trial_keys() -> dict:
    """{grid file: {profile or "-": {"<label> | <column> | seed <k>": key}}} for every shipped grid."""
    from raygap.grid import load_grid
    from raygap.gridfile import PROFILES_DIR

    out: dict = {}
    for grid_path in sorted((ROOT / "grids").glob("*.yaml")):
        per = out[grid_path.name] = {}
        for profile in [None, *sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))]:
            grid = load_grid(grid_path, profile=profile)
            per[profile or "-"] = {f"{t.label} | {', '.join(map(str, t.column.values())) or '-'} | seed {t.seed}": t.key
                                   for t in grid.trials}
    return out


def test_every_trial_key_of_every_shipped_grid_is_unchanged():
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    now = all_trial_keys()
    assert sorted(now) == sorted(pinned), "grids added or removed: rewrite tests/data/trial_keys.json (--write)"
    moved = [f"{g} [{p}] {cell}: {pinned[g][p].get(cell)} -> {key}"
             for g in now for p in now[g] for cell, key in now[g][p].items() if pinned[g].get(p, {}).get(cell) != key]
    gone = [f"{g} [{p}] {cell}" for g in pinned for p in pinned[g] for cell in pinned[g][p]
            if cell not in now[g].get(p, {})]
    assert not moved and not gone, (f"{len(moved)} trial key(s) changed, {len(gone)} trial(s) gone:\n"
                                    + "\n".join((moved + gone)[:20]))
    assert sum(len(cells) for per in now.values() for cells in per.values()) > 500    # every grid was expanded


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write   (rewrites {PINNED.relative_to(ROOT)} from the code as it is)")
    sys.path.insert(0, str(ROOT))
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps(all_trial_keys(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {PINNED}")
