"""Training methods; importing this package registers every method file."""
from . import concat, gap_adaptive  # noqa: F401
from .base import Method, MethodContext, TrainState  # noqa: F401
