"""EfficientNet-V1, TF-exact, as a timm plugin: ``import effnet_zoo`` registers ``effnet_v1_*`` with timm.

The rest of the public API is imported when first used (PEP 562), so ``import effnet_zoo`` costs what registering
costs. The ``effnet-zoo`` command (``effnet_zoo_cli``) defers even the registration to the command it runs, so that
``--help`` and argument errors answer without importing torch and timm.
"""

import importlib as _importlib
import sys as _sys

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
    "bf16_autocast": ".inference",
    "compile_for_inference": ".inference",
    "native_bf16": ".inference",
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
    value = getattr(_importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*(n for n in globals() if not n.startswith("_")), *_PUBLIC, "__version__"})


def register() -> None:
    """Register ``effnet_v1_*`` and ``effnet_lite*`` with timm (done by ``import effnet_zoo``; idempotent)."""
    from . import zoo  # noqa: F401


if "effnet_zoo_cli" not in _sys.modules:  # imported by a program: register now, as timm users expect
    register()
