"""EfficientNet-V1, TF-exact, as a timm plugin: ``import effnet_zoo`` registers ``effnet_v1_*`` with timm.

The rest of the public API is imported when first used (PEP 562), so ``import effnet_zoo`` costs what registering
costs. The ``effnet-zoo`` command (``effnet_zoo_cli``) defers even the registration to the command it runs, so that
``--help`` and argument errors answer without importing torch and timm.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "CheckpointError": ".weights.tf_bundle",
    "ConversionError": ".weights.common",
    "CorruptWeightsError": ".weights.torch_file",
    "EfficientNet": ".model",
    "HubPublishError": ".hub",
    "PretrainedWeightsUnavailable": ".zoo",
    "Scaling": ".scaling",
    "StageConfig": ".scaling",
    "VARIANTS": ".scaling",
    "optimize_for_inference": ".inference",
    "push_to_hub": ".hub",
    "save_pretrained": ".hub",
    "scaling_from_phi": ".scaling",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):  # noqa: ANN202  (any of the public objects)
    if name not in _PUBLIC:
        raise AttributeError(f"module 'effnet_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


def register() -> None:
    """Register ``effnet_v1_*`` and ``effnet_lite*`` with timm (done by ``import effnet_zoo``; idempotent)."""
    from . import zoo  # noqa: F401


if "effnet_zoo_cli" not in sys.modules:  # imported by a program: register now, as timm users expect
    register()
