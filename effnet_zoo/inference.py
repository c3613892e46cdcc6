"""An inference-only copy of a model: BatchNorm folded, static padding, NHWC weights.

TF's "SAME" padding puts the extra pixel of a stride-2 convolution on an even-sized map at the bottom/right,
which PyTorch's symmetric ``padding=`` cannot express, so the eager model pays for an ``F.pad`` copy there.
Flip the map in both spatial dims and that extra pixel moves to the top/left, where it is the one a symmetric
``padding=k // 2`` adds and a stride of 2 never reads past. So the TF network equals a network with ordinary
static symmetric padding run on the flipped input with every kernel flipped (the same products, summed in
another order; parity tests hold it to float rounding). Flipping the input and the output maps costs two small
copies instead of one per strided layer, and the result has no run-time padding logic: plain ``nn.Conv2d``
modules that trace, script, export and compile cleanly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import ConvBnAct
from .model import EfficientNet


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ConvBnAct's BatchNorm into its convolution (in place): the model can no longer be trained."""
    for module in model.modules():
        if isinstance(module, ConvBnAct) and isinstance(module.bn, nn.BatchNorm2d):
            with torch.no_grad():
                weight, bias = module.fold()
                module.conv.weight = nn.Parameter(weight, requires_grad=False)
                module.conv.bias = nn.Parameter(bias, requires_grad=False)
            module.bn = nn.Identity()
    return model


def _static_conv(conv: nn.Conv2d, mirror: bool) -> nn.Conv2d:
    """A plain, symmetrically padded ``nn.Conv2d`` with ``conv``'s (optionally flipped) weights."""
    k, d = conv.kernel_size, conv.dilation
    static = nn.Conv2d(
        conv.in_channels, conv.out_channels, k, conv.stride, (d[0] * (k[0] // 2), d[1] * (k[1] // 2)),
        dilation=d, groups=conv.groups, bias=conv.bias is not None, device=conv.weight.device,
        dtype=conv.weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        static.weight.copy_(conv.weight.flip((-2, -1)) if mirror else conv.weight)
        if conv.bias is not None:
            static.bias.copy_(conv.bias)
    static.requires_grad_(False)
    return static


def mirror_padding(model: EfficientNet) -> EfficientNet:
    """Switch a TF-padded network (in place) to the mirrored domain, where its padding is static and symmetric."""
    if model.mirrored or model.model_args["padding"] != "same":
        return model
    for module in model.modules():
        if isinstance(module, ConvBnAct):
            module.conv = _static_conv(module.conv, mirror=module.conv.kernel_size != (1, 1))
    model.mirrored = True
    return model


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference only, equal up to float rounding.

    BatchNorm folded into the convolutions for good, TF padding made static (mirrored domain, see the module
    docstring), channels_last weights. Works on a classifier or a ``features_only`` backbone. The copy is not
    for training or for saving as ordinary weights: its ``state_dict`` has no BatchNorm and flipped kernels.
    """
    fast = fold_batchnorm(copy.deepcopy(model).eval())
    for module in fast.modules():
        if isinstance(module, EfficientNet):
            mirror_padding(module)
    return fast.to(memory_format=torch.channels_last)
