"""Encoders (``BACKBONES``) and fusion heads (``FUSIONS``): ``nn.Module`` classes, so importing
their modules imports torch. Each name is declared here with the module that registers it:
configs are validated against these names without torch, and the module is imported when the
name's code is first used (``BACKBONES.get(name).obj``). A new encoder or head is registered in
its module and declared here (with the same meta: ``register`` checks they agree)."""
from ..registry import BACKBONES, FUSIONS

SEQUENCE_KINDS = ("sequence", "vector")

BACKBONES.declare("resnet18", f"{__name__}.backbones")
BACKBONES.declare("small", f"{__name__}.backbones")
BACKBONES.declare("gru", f"{__name__}.sequence", kinds=SEQUENCE_KINDS)
BACKBONES.declare("meanpool", f"{__name__}.sequence", kinds=SEQUENCE_KINDS)
FUSIONS.declare("concat", f"{__name__}.fusion")
FUSIONS.declare("gated", f"{__name__}.fusion", head_weight=True)
FUSIONS.declare("shared", f"{__name__}.fusion")


def __getattr__(name: str):
    """``ModelOutput``, ``MultimodalNet`` and ``build_model`` from ``net``, imported on first use."""
    if name in ("ModelOutput", "MultimodalNet", "build_model"):
        from . import net

        return getattr(net, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
