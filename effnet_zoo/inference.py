"""An inference-only copy of a model: BatchNorm folded into the convolutions for good, NHWC weights.

The default eval path (``model.eval()`` under ``torch.no_grad`` / ``inference_mode``) already folds BatchNorm
on the fly (cached) and runs NHWC on CPU; this makes it permanent, for export and for devices where the
weights should not be kept twice. Tracing and freezing with TorchScript was measured slower here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import ConvBnAct


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ConvBnAct's BatchNorm into its convolution (in place): the model can no longer be trained."""
    for module in model.modules():
        if isinstance(module, ConvBnAct) and isinstance(module.bn, nn.BatchNorm2d):
            with torch.no_grad():
                weight, bias = module.fold()
                module.conv.weight = nn.Parameter(weight, requires_grad=False)
                module.conv.bias = nn.Parameter(bias, requires_grad=False)
            module.bn = nn.Identity()
            module._folded = None
    return model


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference only, equal up to float rounding: BN folded, channels_last weights."""
    return fold_batchnorm(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)
