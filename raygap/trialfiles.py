"""The names of files in a trial's folder that more than one module spells, here once and
without torch: the trial engine writes them (:mod:`raygap.checkpoint`), the driver copies and
opens them on the run's storage (:mod:`raygap.runner.storage`) without importing torch, and
``raygap train --fresh`` knows which files are its own (:mod:`raygap.cli`)."""

CHECKPOINT = "checkpoint.pt"    # a trial's checkpoint (raygap.checkpoint.save writes it through CHECKPOINT + ".tmp")
