"""EfficientNet-V1, TF-exact, as a timm plugin: ``import effnet_zoo`` registers ``effnet_v1_*`` with timm."""

from . import zoo  # noqa: F401  (registers the models with timm)
from .hub import HubPublishError, push_to_hub, save_pretrained
from .inference import optimize_for_inference
from .model import EfficientNet
from .scaling import VARIANTS, Scaling, StageConfig, scaling_from_phi
from .weights.common import ConversionError
from .weights.tf_bundle import CheckpointError
from .weights.torch_file import CorruptWeightsError
from .zoo import PretrainedWeightsUnavailable

__all__ = [
    "CheckpointError",
    "ConversionError",
    "CorruptWeightsError",
    "EfficientNet",
    "HubPublishError",
    "PretrainedWeightsUnavailable",
    "Scaling",
    "StageConfig",
    "VARIANTS",
    "optimize_for_inference",
    "push_to_hub",
    "save_pretrained",
    "scaling_from_phi",
]
__version__ = "0.1.0"
