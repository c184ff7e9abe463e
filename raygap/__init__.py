"""raygap: run, resume and report grids of multimodal-imbalance training runs."""

__version__ = "0.1.0"

# Part of every trial's key: bump when a change alters results without touching any
# config key (a bug fix in the engine or a dataset), so stored results do not outlive it.
RESULTS_VERSION = 1
