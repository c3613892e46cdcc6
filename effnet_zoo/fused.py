"""MBConv training that saves about a third of what plain autograd saves for backward, with the same gradients.

Plain autograd keeps, for every conv -> BatchNorm -> activation, the conv's input, the BatchNorm's input and the
activation's input: three full-size maps per layer, and four around squeeze-excitation. Here each layer of a
block is one autograd function, a *unit*: (previous activation [x SE gate]) -> conv -> BatchNorm. A unit keeps
only its normalised map ``x̂`` (the BatchNorm output before its scale and shift, what BatchNorm's backward needs);
its input, the previous unit's output ``z = γ·x̂ + β``, and that activation are recomputed from the previous
unit's ``x̂`` in backward, which is cheap next to the convolutions. The depthwise unit of a block with
squeeze-excitation also applies its activation and SE's squeeze, so that the squeeze and the project unit share
one activated map. The block keeps its input (for the first convolution and the residual), one map per unit and
the SE gate:

    plain autograd, per block       x, expand (conv out, BN out, act out), depthwise (conv out, BN out, act out,
                                    SE-gated map), project (conv out)
    here                            x, x̂ of expand, x̂ of depthwise, x̂ of project, the gate

Nothing is divided by γ (in-place-activated BatchNorm recovers x̂ from its output, which fails where γ is 0), so
the gradients are plain autograd's up to float rounding. BatchNorm's running statistics are updated by the same
kernel as ``nn.BatchNorm2d`` (``torch.native_batch_norm``), with the same momentum rules.

:func:`block_forward` runs only where :func:`~effnet_zoo.shortcuts.training_shortcut_allowed` says nothing can
tell the difference (no hooks, parametrizations, transforms, tracers or ``torch.compile``), with gradients on, for
the exact module types it was written for, in train mode; everywhere else MBConv runs its modules as written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .layers import Conv2dSame, ConvBnAct, SqueezeExcite, same_padding_2d

# The activations a unit can recompute: (act, its derivative at z (aten's own backward kernels), act written into
# a given tensor).
_ACTS = {
    nn.SiLU: (F.silu, torch.ops.aten.silu_backward, lambda z, out: torch.ops.aten.silu.out(z, out=out)),
    nn.ReLU: (
        F.relu,
        lambda g, z: torch.ops.aten.threshold_backward(g, z, 0),
        lambda z, out: torch.clamp(z, 0, out=out),
    ),
    nn.ReLU6: (
        F.relu6,
        lambda g, z: torch.ops.aten.hardtanh_backward(g, z, 0.0, 6.0),
        lambda z, out: torch.ops.aten.hardtanh.out(z, 0.0, 6.0, out=out),
    ),
}


def _act_padded(z: torch.Tensor, act: tuple, extra: tuple[int, int]) -> torch.Tensor:
    """act(z) with ``extra`` zero rows / columns at the bottom / right, written once into its final place (F.pad
    would fill the whole padded map with zeros, then copy act(z) in)."""
    n, c, h, w = z.shape
    channels_last = z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
    out = torch.empty((n, c, h + extra[0], w + extra[1]), dtype=z.dtype, device=z.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)  # fmt: skip
    out[:, :, h:].zero_()
    out[:, :, :h, w:].zero_()
    act[2](z, out[:, :, :h, :w])
    return out


def _padding(conv: nn.Conv2d, x: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """(symmetric padding for the conv, extra bottom/right padding) as the module itself pads ``x``."""
    if type(conv) is Conv2dSame:  # what conv2d_same does: the symmetric part to the conv, the rest padded
        top, bottom, left, right = same_padding_2d(x, conv.kernel_size, conv.stride, conv.dilation)
        return (top, left), (bottom - top, right - left)
    return conv.padding, (0, 0)


def _momentum(bn: nn.BatchNorm2d) -> float:
    """What ``nn.BatchNorm2d.forward`` does in train mode before normalising: count the batch, pick the factor."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def _affine(xh: torch.Tensor, bn: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """BatchNorm's scale and shift: z = γ·x̂ + β, in x̂'s dtype."""
    weight, bias = bn
    shape = (1, -1, 1, 1)
    return torch.addcmul(bias.reshape(shape), xh, weight.reshape(shape)).to(xh.dtype)


RAW, Z, ACT = "raw", "z", "act"  # what a unit is given: the block's input, or the previous unit's z or act(z)


def _recompute_input(kind: str, kept: torch.Tensor, prev: tuple, act: tuple | None, extra: tuple[int, int]):  # noqa: ANN202
    """The conv's (padded) input again, and what the input gradient needs: (padded or None, z_prev, act(z_prev))."""
    if kind == RAW:
        return (F.pad(kept, (0, extra[1], 0, extra[0])) if extra != (0, 0) else kept), None, None
    z_prev = _affine(kept, prev)
    if kind == Z and extra != (0, 0):
        return _act_padded(z_prev, act, extra), z_prev, None
    return None, z_prev, act[0](z_prev)


class _Unit(torch.autograd.Function):
    """Input -> conv -> BatchNorm [-> act, SE's squeeze]; keeps x̂ (and the block's input, for the first unit).

    The input (``kind``) is the block's input (RAW, kept as it is), the previous unit's z (Z: this unit applies the
    previous activation) or the previous unit's act(z), times the SE gate (ACT). The output is z, or with
    ``act_out`` act(z) and the squeeze mean(act(z)), so that SE's squeeze and the next unit share one map.
    """

    @staticmethod
    def forward(ctx, src, gate, weight, bn_weight, bn_bias, prev_xh, prev_w, prev_b, spec):  # noqa: ANN001, ANN205
        conv, bn, act, momentum, kind, act_out = spec  # act: the previous unit's activation
        sym, extra = _padding(conv, src)
        if kind == Z and extra != (0, 0):
            a = _act_padded(src, act, extra)
        else:
            a = act[0](src) if kind == Z else src * gate if gate is not None else src
            a = F.pad(a, (0, extra[1], 0, extra[0])) if extra != (0, 0) else a
        y = F.conv2d(a, weight, None, conv.stride, sym, conv.dilation, conv.groups)  # autocast: in bf16
        F._verify_batch_size(y.size())  # F.batch_norm's own refusal, before any statistic moves
        xh, mean, invstd = torch.native_batch_norm(y, None, None, bn.running_mean, bn.running_var, True, momentum,
                                                   bn.eps)  # fmt: skip
        out = _affine(xh, (bn_weight, bn_bias))
        squeeze = out.new_empty(0)
        if act_out is not None:
            act_out[2](out, out)  # in place: z itself is not needed again
            squeeze = out.mean((2, 3), keepdim=True)
        ctx.spec = (conv, act, act_out, kind, sym, extra, y.dtype, weight.dtype, src.dtype)
        ctx.save_for_backward(src if kind == RAW else prev_xh, gate, weight, bn_weight, bn_bias, invstd, xh, prev_w,
                              prev_b)  # fmt: skip
        ctx.mark_non_differentiable(xh)
        if act_out is None:
            ctx.mark_non_differentiable(squeeze)
        return out, xh, squeeze

    @staticmethod
    @once_differentiable  # a second derivative (create_graph=True) is refused loudly: set_lean_training(False)
    def backward(ctx, g_out, _gxh, g_squeeze):  # noqa: ANN001, ANN205
        conv, act, act_out, kind, sym, extra, conv_dtype, w_dtype, src_dtype = ctx.spec
        kept, gate, weight, bn_weight, bn_bias, invstd, xh, prev_w, prev_b = ctx.saved_tensors
        need_src, need_gate, need_w, need_g, need_b = ctx.needs_input_grad[:5]
        if act_out is not None:  # the output was act(z) (and its squeeze): back through the activation
            if g_out is None:
                g_out = torch.zeros_like(xh)
            if g_squeeze is not None:
                g_out = g_out + (g_squeeze / (xh.shape[-2] * xh.shape[-1])).to(g_out.dtype)
            g_out = act_out[1](g_out, _affine(xh, (bn_weight, bn_bias)))
        # BatchNorm's backward on x̂ (mean 0, invstd 1) with weight γ·invstd: dy, dγ = Σ g·x̂, dβ = Σ g
        scale = (bn_weight * invstd).to(bn_weight.dtype)
        zeros, ones = torch.zeros_like(invstd), torch.ones_like(invstd)
        dy, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            g_out.to(xh.dtype), xh, scale, None, None, zeros, ones, True, 0.0, [True, need_g, need_b]
        )
        # the conv's input again: kept, or recomputed from the previous unit's x̂ (through its activation)
        padded, z_prev, a_prev = _recompute_input(kind, kept, (prev_w, prev_b), act, extra)
        if padded is None:
            padded = a_prev * gate if gate is not None else a_prev
            if extra != (0, 0):
                padded = F.pad(padded, (0, extra[1], 0, extra[0]))
        w = weight.to(conv_dtype)  # the dtype the conv ran in (bf16 under autocast), as autocast's cast does
        da, dw, _ = torch.ops.aten.convolution_backward(
            dy.to(conv_dtype), padded.to(conv_dtype), w, None, conv.stride, sym, conv.dilation, False, (0, 0),
            conv.groups, [need_src or need_gate, need_w, False],
        )  # fmt: skip
        dsrc = dgate = None
        if da is not None:
            if extra != (0, 0):
                da = da[..., : da.shape[-2] - extra[0], : da.shape[-1] - extra[1]]
            da = da.to(src_dtype)
            if kind == Z:
                dsrc = act[1](da, z_prev)
            elif kind == RAW or gate is None:
                dsrc = da
            else:  # ACT with the SE gate: src was act(z_prev), gated
                if need_gate:
                    acc = torch.promote_types(gate.dtype, torch.float32)  # bf16 sums are accumulated in fp32
                    dgate = (da * a_prev).sum((2, 3), keepdim=True, dtype=acc).to(gate.dtype)
                dsrc = da.mul_(gate)  # da is no longer needed
        dw = None if dw is None else dw.to(w_dtype)
        return dsrc, dgate, dw, dgamma, dbeta, None, None, None, None


def _unit(src, gate, cba: ConvBnAct, prev: tuple | None, kind: str, act_out: bool = False):  # noqa: ANN001, ANN202
    """Run ConvBnAct ``cba``'s conv and BatchNorm (and with ``act_out`` its activation and SE's squeeze) as a unit;
    ``prev`` = (x̂, γ, β, act) of the unit before. Returns (output, squeeze, this unit's ``prev``)."""
    bn = cba.bn
    momentum = _momentum(bn)
    prev_xh, prev_w, prev_b, act = prev if prev is not None else (None, None, None, None)
    own_act = _ACTS.get(type(cba.act))
    spec = (cba.conv, bn, act, momentum, kind, own_act if act_out else None)
    out, xh, squeeze = _Unit.apply(src, gate, cba.conv.weight, bn.weight, bn.bias, prev_xh, prev_w, prev_b, spec)
    return out, squeeze, (xh, bn.weight.detach(), bn.bias.detach(), own_act)


def _fusable(cba: ConvBnAct | None, linear: bool = False) -> bool:
    """``cba`` is the exact ConvBnAct the units were written for (``linear``: with no activation), training."""
    if cba is None:
        return True
    bn, conv = cba.bn, cba.conv
    return (
        type(cba) is ConvBnAct
        and type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.running_mean is not None
        and type(conv) in (nn.Conv2d, Conv2dSame)
        and isinstance(conv.padding, tuple)
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and (type(cba.act) is nn.Identity if linear else type(cba.act) in _ACTS)
    )


def block_fusable(block: nn.Module) -> bool:
    """Whether MBConv ``block``'s layers are the exact types :func:`block_forward` was written for, training."""
    se = block.se
    return (
        _fusable(block.expand)
        and _fusable(block.dw)
        and _fusable(block.project, linear=True)
        and (se is None or (type(se) is SqueezeExcite and type(se.act) in _ACTS))
    )


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MBConv's forward (expand -> depthwise -> SE -> project -> residual) as units; the same values."""
    se = block.se
    if block.expand is not None:
        z, _, prev = _unit(x, None, block.expand, None, RAW)
        out, s, prev = _unit(z, None, block.dw, prev, Z, act_out=se is not None)
    else:
        out, s, prev = _unit(x, None, block.dw, None, RAW, act_out=se is not None)
    if se is not None:  # the depthwise unit gave act(z) and its squeeze: SE's small layers run as modules
        gate = se.expand(se.act(se.reduce(s))).sigmoid()
        out, _, _ = _unit(out, gate, block.project, prev, ACT)
    else:
        out, _, _ = _unit(out, None, block.project, prev, Z)
    if block.has_shortcut:
        out = block.drop_path(out) + x
    return out
