"""raygap: run, resume and report grids of multimodal-imbalance training runs.

``raygap.results(...)`` (raygap/dataframes.py) reads a grid's results into pandas DataFrames."""

from .version import RESULTS_VERSION, __version__

__all__ = ["RESULTS_VERSION", "Results", "__version__", "results"]


def __getattr__(name: str):
    # raygap.results is imported when first used (pandas and the grid code load then), so
    # `import raygap` -- each Ray worker, each CLI start -- stays cheap. No raygap module imports
    # this package's __init__ (the versions live in raygap/version.py), so this makes no cycle.
    if name in ("results", "Results"):
        from . import dataframes

        return getattr(dataframes, name)
    raise AttributeError(f"module 'raygap' has no attribute {name!r}")
