"""Building layers: TF-exact "SAME" convolution, conv-BN-act, squeeze-excitation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .shortcuts import shortcut_allowed, watch_forward

Padding = Literal["same", "symmetric"]
PADDINGS = ("same", "symmetric")


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "SAME" padding for one spatial dim: (before, after); the extra pixel goes after.

    ``size`` may be a 0-dim tensor (a size under ``torch.jit.trace``): the arithmetic then stays in the trace.
    """
    # Integer ceil-division: with symbolic sizes (torch.compile dynamic=True) float ``math.ceil`` makes
    # every guard a sympy float expression and compilation crawls.
    out = -(-size // stride)
    total = (out - 1) * stride + (kernel_size - 1) * dilation + 1 - size
    if isinstance(total, torch.Tensor):
        total = total.clamp(min=0)
    else:
        total = max(total, 0)
    return total // 2, total - total // 2


def same_padding_2d(
    x: torch.Tensor, kernel_size: list[int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """TF "SAME" padding of ``x``'s two spatial dims: (top, bottom, left, right)."""
    top, bottom = same_padding(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    return top, bottom, left, right


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``: one sum (0.3 ms for 16 images at 224 px; ``isfinite().all()`` takes 11 ms) is finite
    unless a value is not, or unless huge finite values overflow it, which the exact test then settles."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def conv2d_same(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """A convolution with TF "SAME" padding computed from ``x``'s size at every call.

    A leaf for FX (``torch.fx.wrap`` below): a symbolic trace records one call that pads for whatever size it
    later sees, with any tracer (timm's, torchvision's ``create_feature_extractor``, plain ``symbolic_trace``).
    Under ``torch.jit.trace`` the sizes are traced tensors, so the padding arithmetic is recorded too and the
    traced module stays right at other input sizes.
    """
    top, bottom, left, right = same_padding_2d(x, weight.shape[-2:], stride, dilation)
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():  # traced sizes: all four sides as recorded arithmetic, none baked in
            return F.conv2d(F.pad(x, [left, right, top, bottom]), weight, bias, stride, 0, dilation, groups)
    if bottom != top or right != left:
        x = F.pad(x, (0, right - left, 0, bottom - top))
    return F.conv2d(x, weight, bias, stride, (top, left), dilation, groups)


torch.fx.wrap("conv2d_same")


class Conv2dSame(nn.Conv2d):
    """Strided convolution with TensorFlow's "SAME" padding at any input size.

    TF pads asymmetrically when the input size is even (one more pixel at the bottom/right).
    When the padding happens to be symmetric (odd inputs) it is handed to the convolution
    itself, so only the asymmetric case pays for an extra padded copy, and that copy is the
    input plus a single row/column.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return conv2d_same(x, weight, bias, self.stride, self.dilation, self.groups)


# The convolutions ConvBnAct's BatchNorm fold calls ``_conv_forward`` of (a subclass may change what forward does).
_FOLDABLE_CONVS = (nn.Conv2d, Conv2dSame)


def create_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: Padding = "same",
    dilation: int = 1,
) -> nn.Conv2d:
    """A convolution padded like TF "SAME" or symmetrically (torchvision / timm-native weights).

    For stride 1 and odd kernels both are the same static symmetric padding (``dilation * (k // 2)``, also
    for the dilated stages of ``output_stride``), so a plain ``nn.Conv2d`` is returned and nothing is computed
    per call.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"only odd kernel sizes are supported, got {kernel_size}")
    if padding == "same" and stride > 1:
        return Conv2dSame(
            in_channels, out_channels, kernel_size, stride, padding=0, dilation=dilation, groups=groups, bias=bias
        )
    pad = dilation * (kernel_size // 2)
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=pad, dilation=dilation, groups=groups, bias=bias
    )


def _act(act_layer: Callable[[], nn.Module] | None) -> nn.Module:
    """The activation module, out of place: what a hook, a backward hook or a captured input sees is what any
    ``nn.Module`` gives. Running it in place is a shortcut ``ConvBnAct`` takes when nothing watches."""
    return nn.Identity() if act_layer is None else act_layer()


# The in-place forms ConvBnAct may call instead of an activation module of exactly these types.
_INPLACE_ACTS: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.SiLU: lambda t: F.silu(t, inplace=True),
    nn.ReLU: torch.relu_,
    nn.ReLU6: lambda t: F.relu6(t, inplace=True),
    nn.Hardswish: lambda t: F.hardswish(t, inplace=True),
}


@watch_forward  # the training units (effnet_zoo.fused) skip it
class ConvBnAct(nn.Module):
    """Convolution (no bias) -> BatchNorm -> optional activation.

    The shortcut: with the BatchNorm in eval mode (running statistics, constants there) it is folded into the
    convolution, one pass over the activations instead of two, with the same numbers. The fold is recomputed at
    every call from the tensors as they are (a cache keyed on tensor versions missed writes that bypass them:
    fused optimizers, ``.data``, running statistics updated by BatchNorm itself, a new ``eps``); on B0 that costs
    5-9% at batch 1 and 2-4% at 16 on a 2-core CPU. Under autograd gradients reach the conv and BN parameters through
    it. It runs only where :func:`~effnet_zoo.shortcuts.shortcut_allowed` says nothing can tell: with a hook,
    parametrization or pruning mask on any part, under ``torch.func`` / ``make_fx`` / fake tensors, in
    recorded graphs (``torch.jit.trace``, FX) and in scripted models, the modules run as written: conv -> BN -> act.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act_layer: Callable[[], nn.Module] | None = nn.SiLU,
        padding: Padding = "same",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv = create_conv2d(
            in_channels, out_channels, kernel_size, stride, groups, padding=padding, dilation=dilation
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = _act(act_layer)

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the conv with the BatchNorm (running statistics) folded in.

        Any BatchNorm2d with running statistics: without affine parameters too, and after a conv given a bias.
        """
        conv, bn = self.conv, self.bn
        scale = (bn.running_var + bn.eps).rsqrt_()  # few ops: this runs for every layer of every eval forward
        if bn.weight is not None:
            scale = scale * bn.weight
        mean = bn.running_mean if conv.bias is None else bn.running_mean - conv.bias
        bias = -(mean * scale) if bn.bias is None else bn.bias - mean * scale  # addcmul would round differently
        weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        return weight, bias.to(conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # a scripted model runs conv -> BN -> act as written
            conv, bn, act = self.conv, self.bn, self.act  # looked up once: this runs for every layer of every forward
            # one decision for the layer: when anything watches a part of it, the whole layer runs as written
            if not shortcut_allowed(x, conv, bn, act):
                return act(bn(conv(x)))
            # BN folded into the conv: a BatchNorm in eval mode (its own mode: test-time adaptation sets only the
            # BatchNorms to train) on running statistics, after the exact convs the fold was written for
            foldable = (
                not bn.training
                and type(bn) is nn.BatchNorm2d
                and bn.running_mean is not None
                and bn.running_var is not None
                and type(conv) in _FOLDABLE_CONVS
            )
            y = conv._conv_forward(x, *self.fold()) if foldable else bn(conv(x))
            inplace = _INPLACE_ACTS.get(type(act))  # on the fresh map nobody else holds
            return act(y) if inplace is None else inplace(y)
        return self.act(self.bn(self.conv(x)))


@watch_forward
class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> reduce (1x1) -> act -> expand (1x1) -> sigmoid gate.

    ``inplace=True`` gates ``x`` in place, saving a full-size allocation (13% of B0's CPU inference time at batch
    16). Only the caller knows whether anything else holds ``x``: ``MBConv`` asks ``shortcut_allowed``.
    """

    def __init__(self, channels: int, reduced_channels: int, act_layer: Callable[[], nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1, bias=True)
        self.act = _act(act_layer)
        self.expand = nn.Conv2d(reduced_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s))).sigmoid()
        return x.mul_(s) if inplace else x * s
