"""Fill the registries (methods, datasets, mixtures, backbones, fusions) before any config is
validated: the built-in packages, then plug-ins from outside the package.

A plug-in is a Python module that registers names on import (``METHODS.register(...)``, as a
built-in file does; docs/contributing.md). raygap finds them in two places:

* **installed packages**: every entry point of the group ``raygap.plugins`` (in the package's
  ``pyproject.toml``: ``[project.entry-points."raygap.plugins"] mine = "mypkg.plugin"``), loaded
  by :func:`load_all` in every process, as pytest loads ``pytest11``;
* **a plain checkout**: a ``plugins:`` list in a grid file or a trial config file, each item a
  module name (``mypkg.plugin``, importable where raygap runs) or a ``.py`` file, relative to
  that file (:func:`load_plugins`). A file ``x.py`` is imported as the module ``x``.

Each entry records its origin (``built-in raygap.methods.concat``, ``entry point mine of mypkg
1.0 (mypkg.plugin)``, ``file /home/me/proj/my_method.py``): ``raygap list`` shows it. A name
that is registered twice, a plug-in that cannot be imported (a syntax error, a missing
import) or a file that is not there is one :class:`~raygap.errors.ConfigError` line naming the
file (and both origins of a clash), exit 2, no traceback.

Ray workers import the same plug-ins: :func:`worker_env` is the part of the run's
``runtime_env`` that ships every file plug-in (``py_modules``: the file alone) and names the
plug-in modules in ``RAYGAP_PLUGINS``, which :func:`load_all` imports in each worker.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

from .errors import ConfigError, nearest
from .registry import BACKBONES, DATASETS, FUSIONS, METHODS, MIXTURES, Clash, registering_from

GROUP = "raygap.plugins"          # the entry-point group of installed plug-ins
ENV = "RAYGAP_PLUGINS"            # in a Ray worker: the driver's plug-in modules, comma-separated
KEY = "plugins"                   # the key of a grid file or a trial config file

REGISTRIES = (METHODS, DATASETS, MIXTURES, BACKBONES, FUSIONS)

_loaded = False
_files: dict[str, str] = {}       # module name -> the file plug-in imported as it (absolute path)
_modules: list[str] = []          # the modules plugins: lists loaded in this process, in order


def load_all() -> None:
    """The built-in packages, the installed plug-ins (entry points) and, in a Ray worker, the
    driver's plug-ins (``RAYGAP_PLUGINS``); once per process."""
    global _loaded
    if _loaded:
        return
    from . import data, methods, mixtures, models  # noqa: F401  (each registers its files)
    _loaded = True
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"entry point {ep.name} of {dist.name} {dist.version} ({ep.value})" if dist else \
            f"entry point {ep.name} ({ep.value})"
        _run_import(lambda ep=ep: ep.load(), origin, f"entry point {ep.name} ({ep.value})", None)
    for name in filter(None, os.environ.get(ENV, "").split(",")):
        _import_module(name, f"module {name} (the driver's plug-in)", f"{ENV}={os.environ[ENV]}")


def plugin_list(value, file: str | None) -> list[str]:
    """The ``plugins:`` value of ``file`` checked for its shape: a list of non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"expected a list of module names or .py files, got {value!r}"[:200], file=file, key=KEY,
                          hint="e.g. plugins: [my_method.py, mypkg.plugin]")
    return [v.strip() for v in value]


def load_plugins(specs: list[str], file: str | None) -> list[str]:
    """Import the plug-ins ``file``'s ``plugins:`` list names (after :func:`load_all`): module
    names, or ``.py`` files relative to ``file``'s folder. Returns the modules imported; a
    plug-in imported before is not imported again."""
    load_all()
    base = Path(file).resolve().parent if file else Path.cwd()
    out = []
    for spec in specs:
        if spec.endswith(".py") or "/" in spec or os.sep in spec:
            out.append(_import_file(base / spec, spec, file))
        else:
            if not all(part.isidentifier() for part in spec.split(".")):
                raise ConfigError(f"{spec!r} is neither a module name nor a .py file", file=file, key=KEY)
            _import_module(spec, f"module {spec}", file)
            out.append(spec)
        if out[-1] not in _modules:
            _modules.append(out[-1])
    return out


def _import_file(path: Path, spec: str, file: str | None) -> str:
    path = path.resolve()
    if not path.is_file():
        have = sorted(p.name for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
        raise ConfigError(f"{spec}: no such file ({path})", file=file, key=KEY,
                          hint=f"nearest: {nearest(path.name, have)!r}" if have else None)
    name = path.stem
    if not name.isidentifier():
        raise ConfigError(f"{spec}: {path.name} cannot be a module name (letters, digits, '_')", file=file, key=KEY,
                          hint=f"rename it, e.g. {''.join(c if c.isalnum() else '_' for c in name)}.py")
    if _files.get(name) == str(path):
        return name
    if name in _files or name in sys.modules:
        other = _files.get(name) or getattr(sys.modules[name], "__file__", None) or "a module already imported"
        raise ConfigError(f"{spec}: its module name {name!r} is taken by {other}", file=file, key=KEY,
                          hint="rename the plug-in file")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module

    def run():
        module_spec.loader.exec_module(module)
    try:
        _run_import(run, f"file {path}", str(path), file, path)
    except ConfigError:
        sys.modules.pop(name, None)
        raise
    _files[name] = str(path)
    return name


def _import_module(name: str, origin: str, file: str | None) -> None:
    if name in sys.modules:
        return
    _run_import(lambda: importlib.import_module(name), origin, f"module {name}", file)


def _run_import(run, origin: str, shown: str, file: str | None, path: Path | None = None) -> None:
    """``run()`` (an import) with its registrations from ``origin``; any failure one line, and
    what the plug-in had registered before it failed is taken back."""
    before = {reg: set(reg._entries) for reg in REGISTRIES}
    try:
        with registering_from(origin):
            run()
    except BaseException as e:  # noqa: BLE001 -- a plug-in's own error, reported in one line
        for reg, names in before.items():
            for name in set(reg._entries) - names:
                del reg._entries[name]
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _one_line(e, shown, file, path) from None


def _one_line(e: BaseException, shown: str, file: str | None, path: Path | None) -> ConfigError:
    """What importing a plug-in raised, as one ConfigError line (a clash names both origins; any
    other error its type, first line and, for a plug-in file, the file's line it came from)."""
    key = KEY if file else None
    if isinstance(e, Clash):
        return ConfigError(str(e), file=file, key=key, hint=f"rename the {e.kind} in the plug-in")
    what = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    where = ""
    if path is not None and not isinstance(e, SyntaxError):
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == path]
        where = f" (line {lines[-1]})" if lines else ""
    return ConfigError(f"{shown}: the plug-in failed to import{where}: {what}", file=file, key=key)


def worker_env() -> dict:
    """Ray's ``runtime_env`` entries that make every worker, on any node, import the plug-ins
    this process loaded from ``plugins:`` lists: each file plug-in shipped alone (``py_modules``;
    a module name must be importable there itself) and the modules in ``RAYGAP_PLUGINS``.
    Empty when there are none (installed plug-ins load themselves: :func:`load_all`)."""
    if not _modules:
        return {}
    files = [_files[m] for m in _modules if m in _files]
    return {**({"py_modules": files} if files else {}), "env_vars": {ENV: ",".join(_modules)}}
