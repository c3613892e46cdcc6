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


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU of compute capability 8.0 or later, or a CPU with
    AVX512-BF16 or AMX (oneDNN's test). Elsewhere bf16 is emulated and runs several times slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    test = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(test is not None and test())


def bf16_autocast(device: torch.device | str = "cpu") -> torch.autocast:
    """bfloat16 autocast on ``device``, refused where bf16 is not native (it would be slower than fp32, not faster).

    1.5-1.9x the fp32 fast path's speed on this project's CPU (AVX512-BF16, B0 / Lite0, batch 16), at a cost in
    agreement with fp32 that docs/performance.md measures: the weights are what bf16's 8-bit mantissa cannot carry.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bf16 on cuda was asked for, but torch sees no CUDA device")
    if not native_bf16(device):
        what = "this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu" else f"{device} has no native bf16"
        raise RuntimeError(
            f"bf16 was asked for, but {what}: it would be emulated, several times slower than fp32. Run in fp32 "
            "(drop --amp; in Python, leave out bf16_autocast), or use a machine with native bf16"
        )
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compile_for_inference(fast: nn.Module) -> nn.Module:
    """``torch.compile`` of an :func:`optimize_for_inference` copy with inductor's ``freezing``: its weights become
    constants, prepacked for oneDNN, and the activations fuse into the kernels around them.

    Run it under ``torch.no_grad()`` or ``torch.inference_mode()`` (freezing applies only there), in fp32 or under
    :func:`bf16_autocast`. On this project's CPU the bf16 compiled model runs Lite0 / B0 at batch 16 about 1.4x as
    fast as eager bf16; fp32 gains less (docs/performance.md). The first call of each input shape compiles (seconds
    to a minute) and needs a C++ compiler.
    """
    if not isinstance(fast, nn.Module):
        raise TypeError(f"compile_for_inference takes an nn.Module (optimize_for_inference's copy), got {type(fast)}")
    if fast.training:  # BatchNorm would use each batch's statistics, silently
        raise ValueError("compile_for_inference needs a model in eval mode: pass effnet_zoo.optimize_for_inference("
                         "model), which is one")  # fmt: skip
    return torch.compile(fast, options={"freezing": True})


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
