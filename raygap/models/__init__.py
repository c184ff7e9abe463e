from . import backbones, fusion, sequence  # noqa: F401  (registration)
from .net import ModelOutput, MultimodalNet, build_model  # noqa: F401
