"""``python -m raygap.cli``: the same as ``raygap`` and ``python -m raygap``."""
from . import entry

entry()
