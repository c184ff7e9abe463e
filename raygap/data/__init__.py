"""Datasets; importing this package registers every loader."""
from . import avdigits  # noqa: F401  (registers the "avdigits" dataset)
from . import ave, cremad, ks  # noqa: F401  (register "ave", "cremad", "ks": file-backed, docs/datasets.md)
from . import mosi  # noqa: F401  (registers "mosi": CMU-MOSI feature pickles, in memory, docs/datasets.md)
