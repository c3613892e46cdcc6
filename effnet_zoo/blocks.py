"""The MBConv block (inverted residual + squeeze-excitation) that every EfficientNet stage repeats."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import DropPath
from torch import nn

from .fused import block_forward, block_fusable
from .layers import ConvBnAct, Padding, SqueezeExcite
from .shortcuts import shortcut_allowed, training_shortcut_allowed


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand (1x1) -> depthwise kxk -> SE -> project (1x1, linear).

    The identity shortcut, with stochastic depth, exists only when the block keeps resolution
    and channels. ``dilation`` applies to the depthwise conv (stages run dilated under
    ``output_stride``). ``expand`` is absent for ``expand_ratio == 1`` (the first stage), as in the
    original, so the parameter count matches it exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        se_ratio: float = 0.25,
        drop_path_rate: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
        padding: Padding = "same",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        bn = dict(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        mid_channels = in_channels * expand_ratio
        self.expand = ConvBnAct(in_channels, mid_channels, 1, act_layer=act_layer, **bn) if expand_ratio != 1 else None
        self.dw = ConvBnAct(
            mid_channels, mid_channels, kernel_size, stride, groups=mid_channels, act_layer=act_layer,
            dilation=dilation, **bn,
        )  # fmt: skip
        # The SE bottleneck is sized from the block's *input* channels, as in the TF original.
        self.se = SqueezeExcite(mid_channels, max(1, int(in_channels * se_ratio)), act_layer) if se_ratio > 0 else None
        self.project = ConvBnAct(mid_channels, out_channels, 1, act_layer=None, **bn)
        self.has_shortcut = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path_rate) if self.has_shortcut and drop_path_rate > 0 else nn.Identity()
        self.lean_training = True  # EfficientNet.set_lean_training: False runs the modules as written in training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.training and self._lean_allowed(x):
                return block_forward(self, x)  # saves about a third of what the modules would (effnet_zoo.fused)
        shortcut = x
        if self.expand is not None:
            x = self.expand(x)
        x = self.dw(x)
        if self.se is not None:
            x = self.se(x, True) if self._gate_inplace(x) else self.se(x)  # any module swapped in gets (x)
        x = self.project(x)
        if self.has_shortcut:
            x = self.drop_path(x) + shortcut
        return x

    def _lean_allowed(self, x: torch.Tensor) -> bool:
        """The fused training path: the exact layer types it was written for, in train mode, nothing watching."""
        # getattr: a whole-model pickle from before the units has no lean_training
        return (
            getattr(self, "lean_training", True)
            and block_fusable(self)
            and training_shortcut_allowed(x, *self.modules())
        )

    def _gate_inplace(self, x: torch.Tensor) -> bool:
        """May SE gate the depthwise output in place? Not under autograd (backward needs it), and not when
        anything could hold it: hooks on the depthwise ConvBnAct or any of its parts, or on SE itself."""
        if not torch.jit.is_scripting():
            if not torch.is_grad_enabled() and type(self.se) is SqueezeExcite:
                return shortcut_allowed(x, self.se, self.dw, self.dw.conv, self.dw.bn, self.dw.act)
        return False
