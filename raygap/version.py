"""raygap's version, and the results version that is part of every trial's key."""

__version__ = "0.1.0"

# Part of every trial's key: bump when a change alters results without touching any
# config key (a bug fix in the engine or a dataset), so stored results do not outlive it.
RESULTS_VERSION = 1
