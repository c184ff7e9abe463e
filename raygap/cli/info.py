"""What raygap ships and runs with: ``raygap list methods|datasets|mixtures|backbones|fusions|grids|
profiles`` (one line each: name, description and, for a registry entry, where it comes from: a
built-in module, an installed plug-in's entry point or a plug-in file that the grid or config
files given name in ``plugins:``) and the ``--version`` line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ConfigError


def version_line() -> str:
    """``raygap X (torch Y, ray Z; Python W)``: read from package metadata, nothing imported."""
    from importlib.metadata import PackageNotFoundError, version

    from ..version import __version__

    parts = []
    for pkg in ("torch", "ray"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} not installed")
    return f"raygap {__version__} ({', '.join(parts)}; Python {sys.version.split()[0]})"


def _summary(text: str, limit: int = 110, sentence: bool = True) -> str:
    """The first paragraph of a docstring (its first sentence when ``sentence``), at most
    ``limit`` characters."""
    para = []
    for line in (text or "").strip().splitlines():
        if not line.strip():
            break
        para.append(line.strip())
    out = " ".join(para)
    cut = out.find(". ") if sentence else -1
    out = out[:cut + 1] if cut > 0 else out
    return out if len(out) <= limit else out[:limit - 1].rstrip() + "…"


REGISTRIES = ("methods", "datasets", "mixtures", "backbones", "fusions")


def cmd_list(args) -> int:
    """One line per method, dataset, mixture, encoder, fusion head, grid or profile: name and
    description (and where a registry entry comes from)."""
    rows: list[tuple[str, str]] = []
    files = getattr(args, "files", None) or []
    if files and args.what not in REGISTRIES:
        raise ConfigError(f"files name plug-ins, which `raygap list {args.what}` does not show", key="FILE",
                          hint=f"raygap list {{{','.join(REGISTRIES)}}} FILE ...")
    if args.what in REGISTRIES:
        from ..plugins import KEY, load_all, load_plugins, plugin_list
        from ..registry import BACKBONES, DATASETS, FUSIONS, METHODS, MIXTURES
        from ..safe_yaml import read_yaml

        load_all()
        for f in files:                   # a grid or a trial config file: its plug-ins too
            doc = read_yaml(f)
            load_plugins(plugin_list(doc.get(KEY) if isinstance(doc, dict) else None, str(f)), str(f))
        reg = {"methods": METHODS, "datasets": DATASETS, "mixtures": MIXTURES, "backbones": BACKBONES,
               "fusions": FUSIONS}[args.what]
        for name in reg.names():
            e = reg.get(name)
            extra = []
            if args.what == "methods":
                extra.append(f"v{e.meta.get('version', 1)}")
                if e.meta.get("min_modalities", 1) > 1:
                    extra.append(f">= {e.meta['min_modalities']} modalities")
            if args.what == "datasets":
                extra.append("in memory" if e.meta.get("in_memory") else "files / cache")
            rows.append((name, _summary(e.doc) + (f" [{', '.join(extra)}]" if extra else "") + f" (from {e.origin})"))
    else:
        from ..gridfile import PROFILES_DIR
        from ..safe_yaml import read_yaml

        folder = PROFILES_DIR if args.what == "profiles" else PROFILES_DIR.parent
        for path in sorted(folder.glob("*.yaml")):
            try:
                doc = read_yaml(path) or {}
                desc = str(doc.get("description") or "") if isinstance(doc, dict) else ""
            except ConfigError as e:
                desc = f"(unreadable: {e.line()})"
            shown = path.stem
            if args.what == "grids":
                shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
            rows.append((shown, _summary(desc, 150, sentence=False)))
    width = max((len(n) for n, _ in rows), default=0)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0
