"""The safe YAML reader: every YAML file raygap reads (grids, profiles, trial configs, and
their descriptions for ``raygap list``) goes through :func:`read_yaml`.

A regular UTF-8 file of at most :data:`MAX_FILE_BYTES`, one document, no duplicate keys,
nesting at most :data:`MAX_DEPTH` deep, at most :data:`MAX_VALUES` values once aliases are
expanded; PyYAML's safe constructors only. Any problem is one
:class:`~raygap.errors.ConfigError` line naming the file (and the line and column where YAML
gives one).
"""
from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# Limits on the YAML files raygap reads (grids, profiles, trial configs). The shipped grids
# are a few KB with a nesting depth under 8; these bounds turn hostile or broken files into
# one line within a second instead of a traceback or minutes of parsing.
MAX_FILE_BYTES = 1 << 20          # 1 MiB
MAX_DEPTH = 32                    # nesting levels of mappings / lists
MAX_VALUES = 200_000              # values after YAML aliases are expanded


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and nesting deeper than MAX_DEPTH
    (PyYAML's composer is recursive: a 5,000-deep file would end in a RecursionError)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping_no_duplicates(loader: _SafeLoader, node):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":       # `<<: *base` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_SafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)

_BOMS = [(b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
         (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")]


def _decode(data: bytes, file: str) -> str:
    for bom, enc in _BOMS:
        if data.startswith(bom):
            raise ConfigError(f"is {enc} text; raygap reads UTF-8", file=file, hint="save the file as UTF-8")
    if b"\x00" in data:
        raise ConfigError("contains NUL bytes: not a text file (or UTF-16 without a byte-order mark)",
                          file=file, hint="give a UTF-8 YAML file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line}, column {col}", file=file,
                          hint="save the file as UTF-8") from None


def _check_size_and_depth(doc, file: str) -> None:
    """Walk the loaded document without recursion: at most MAX_VALUES values (aliases
    expanded) and MAX_DEPTH levels."""
    stack = [(doc, 1)]
    n = 0
    while stack:
        obj, depth = stack.pop()
        n += 1
        if n > MAX_VALUES:
            raise ConfigError(f"holds more than {MAX_VALUES} values once YAML aliases are expanded", file=file)
        if isinstance(obj, (dict, list)):
            if depth > MAX_DEPTH:
                raise ConfigError(f"nested deeper than {MAX_DEPTH} levels (through YAML aliases)", file=file)
            stack.extend((v, depth + 1) for v in (obj.values() if isinstance(obj, dict) else obj))


def too_long(e: ValueError) -> str:
    """The problem in a ValueError PyYAML lets through: only an integer longer than Python
    converts raises one (its message names the digit limit)."""
    msg = str(e)
    if "digits" in msg:
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return msg.splitlines()[0] if msg else type(e).__name__


def read_yaml(path: str | Path) -> Any:
    """Read one YAML file as raygap's inputs allow: a regular UTF-8 file of at most
    MAX_FILE_BYTES, one document, no duplicate keys, nesting at most MAX_DEPTH deep.
    Any problem is one :class:`ConfigError` line naming the file."""
    p = Path(path)
    file = str(p)
    if "\x00" in file:
        raise ConfigError("a file name cannot hold a NUL character", file=file.replace("\x00", "\\0"))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=file) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("not a regular file", file=file, hint="give a YAML file")
    if st.st_size > MAX_FILE_BYTES:
        raise ConfigError(f"is {st.st_size / 2**20:.1f} MiB; raygap reads YAML files of at most "
                          f"{MAX_FILE_BYTES >> 20} MiB", file=file,
                          hint="a grid lists rows, columns and seeds; use `sweep` for long value lists")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=file) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"is larger than {MAX_FILE_BYTES >> 20} MiB", file=file)
    text = _decode(data, file)
    try:
        doc = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}invalid YAML: {problem}", file=file) from None
    except RecursionError:
        raise ConfigError(f"invalid YAML: nested too deeply (at most {MAX_DEPTH} levels)", file=file) from None
    except ValueError as e:     # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ConfigError(f"invalid YAML: {too_long(e)}", file=file) from None
    _check_size_and_depth(doc, file)
    return doc
