"""The EfficientNet-V1 network: stem, seven stages of MBConv blocks, head; timm's model API."""

# No ``from __future__ import annotations`` here: FX copies forward()'s annotations into the code of its graphs,
# and scripting those graphs cannot read string annotations.
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, List, Optional, Tuple, Union  # noqa: UP035  (TorchScript reads these in forward_intermediates)

import torch
from timm.layers import create_classifier, get_act_layer
from timm.models import checkpoint_seq
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch import nn

from .blocks import MBConv
from .layers import ConvBnAct, Padding, all_finite
from .scaling import (
    BASE_STAGES,
    HEAD_CHANNELS,
    STEM_CHANNELS,
    StageConfig,
    count_params,
    round_channels,
    scale_stages,
)
from .shortcuts import layout_change_allowed, values_readable

ActLayer = str | Callable[[], nn.Module]


OUTPUT_STRIDES = (2, 4, 8, 16, 32)
# Refused before construction: 4x EfficientNet-L2 (480M), 8 GB of float32 weights.
MAX_PARAMS = 2_000_000_000


def ends_a_level(stages: Sequence[StageConfig], index: int) -> bool:
    """Whether stage ``index`` gives a pyramid level: the last map at each resolution (timm's convention for necks).

    One rule for ``feature_info`` and for checking ``out_indices`` before a network is built."""
    return index == len(stages) - 1 or stages[index + 1].stride > 1


def check_out_indices(out_indices: Any, levels: int) -> None:
    """Refuse ``out_indices`` that select no level, a level twice or one the network lacks, saying what is valid.

    timm's semantics, checked up front: an int N is the last N levels, a sequence names levels (negative ones
    count from the last). timm's own wrappers failed on these with a bare AssertionError or IndexError deep
    inside, or built a backbone whose ``feature_info`` disagreed with the maps it returns (a repeated level).
    """
    shown = repr(out_indices) if len(repr(out_indices)) <= 80 else repr(out_indices)[:77] + "..."
    valid = f"this network has {levels} feature levels: 0 to {levels - 1}, or -{levels} to -1 counting from the last"
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 0 < out_indices <= levels:
            raise ValueError(
                f"out_indices={out_indices} asks for the last {out_indices} feature levels; this network has "
                f"{levels}: pass 1 to {levels}, or a tuple of levels (0 to {levels - 1})"
            )
        return
    sized = hasattr(out_indices, "__len__") and hasattr(out_indices, "__iter__")  # a tuple, list, array; no generator
    if isinstance(out_indices, (str, bytes, bool)) or not sized:
        raise TypeError(
            f"out_indices {shown} is neither an int (the last N feature levels, 1 to {levels}) nor a sequence of "
            f"levels, e.g. (1, 2, 3, 4); {valid}"
        )
    if len(out_indices) == 0:
        raise ValueError(f"out_indices {shown} selects no feature level; {valid} (leave it out for all {levels})")
    seen: dict[int, Any] = {}  # absolute level -> as given
    for given in out_indices:
        if isinstance(given, bool) or not hasattr(given, "__index__"):
            raise TypeError(f"out_indices {shown} holds {given!r}, not an integer level; {valid}")
        level = int(given.__index__())
        if not -levels <= level < levels:
            raise ValueError(f"out_indices {shown}: there is no feature level {level}; {valid}")
        absolute = level % levels
        if seen and absolute < max(seen):
            raise ValueError(
                f"out_indices {shown} is not in network order: the maps come out shallow to deep, and feature_info "
                f"would list them in the order given, so a neck sized by channels() breaks; give "
                f"{tuple(sorted(int(i) % levels for i in out_indices))}"
            )
        if absolute in seen:
            also = f" (as {seen[absolute]} and {level})" if seen[absolute] != level else ""
            raise ValueError(
                f"out_indices {shown} names level {absolute} twice{also}; each level's map is returned once, so "
                f"name it once ({valid})"
            )
        seen[absolute] = level


def checked_input(
    x: torch.Tensor,
    in_chans: int,
    min_size: int,
    weight: Optional[torch.Tensor],  # noqa: UP045
    cpu_channels_last: bool,
) -> torch.Tensor:
    """The model's input, checked (a clear error for what would fail or mislead later), on CPU in channels_last.

    A leaf for FX (``torch.fx.wrap`` below): a symbolic trace records one call, and the traced module still checks
    every input it is given. ``weight`` is the stem's (None once quantized), for the dtype check.
    """
    if not torch.jit.is_scripting():  # a scripted FX graph calls this function too: it keeps the layout step
        if not torch.jit.is_tracing():  # a traced graph cannot branch on sizes or values
            _check_input(x, in_chans, min_size, weight)
            if values_readable(x):  # not under torch.func, AOT autograd, make_fx, fake tensors, compile, export
                _check_values(x)
    # oneDNN's kernels (depthwise above all) are much faster on NHWC activations; values are unchanged
    to_nhwc = cpu_channels_last and x.device.type == "cpu"
    if not torch.jit.is_scripting():
        to_nhwc = to_nhwc and layout_change_allowed(x)  # not under vmap, which cannot copy to that layout
    if to_nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


torch.fx.wrap("checked_input")


def handed_out(y: torch.Tensor, x: torch.Tensor, mirrored: bool) -> torch.Tensor:
    """A map as the caller sees it: unmirrored (``optimize_for_inference``) and in the layout of the caller's input
    ``x``, as any PyTorch layer hands it back (NCHW in, NCHW out), however the network ran inside.

    A leaf for FX, like ``checked_input``: the layout test runs on the tensors the traced module is given.
    """
    if mirrored:
        y = y.flip((-2, -1))
    # channels_last back only for a channels_last input (one of 1 channel or 1x1 is both: NCHW wins)
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous()
    return y


torch.fx.wrap("handed_out")


def _check_input(x: torch.Tensor, in_chans: int, min_size: int, weight: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-D image batch (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0)"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels (N, {in_chans}, H, W), got {x.shape[1]} in shape "
            f"{tuple(x.shape)}; channels-last images need x.permute(0, 3, 1, 2), other channel counts "
            "need create_model(..., in_chans=C)"
        )
    if not (x.is_floating_point() or x.is_quantized):
        raise ValueError(
            f"expected a floating-point image batch normalised with the model's mean/std, got {x.dtype}; "
            "preprocess with timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))"
        )
    if (
        isinstance(weight, torch.Tensor)
        and x.is_floating_point()
        and x.dtype != weight.dtype
        and not torch.is_autocast_enabled(x.device.type)
    ):
        raise ValueError(
            f"input dtype {x.dtype} differs from the model's {weight.dtype}; convert one to the other "
            f"(x.to({weight.dtype}) or model.to({x.dtype})), or run under torch.autocast"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"input {x.shape[2]}x{x.shape[3]} is smaller than the network's total stride: expected at least "
            f"{min_size}x{min_size} pixels; resize the image (pretrained_cfg['input_size'] is what the "
            "weights were trained at)"
        )


def _check_values(x: torch.Tensor) -> None:
    """NaN/Inf in the input would only surface as NaN logits; say so where it enters.

    CPU only: on CUDA the test would force a host sync every forward, and compiled graphs cannot branch on values.
    """
    if x.device.type == "cpu" and not all_finite(x):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(
            f"the input holds {bad} NaN/Inf values of {x.numel()}; check the image decoding and normalisation "
            "that produced it"
        )


# What each numeric constructor argument must be, for the checks here and in a model folder's config.json.
ARGUMENT_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "width_mult": ("a number > 0", lambda v: v > 0),
    "depth_mult": ("a number > 0", lambda v: v > 0),
    "drop_rate": ("a rate in [0, 1)", lambda v: 0 <= v < 1),
    "drop_path_rate": ("a rate in [0, 1)", lambda v: 0 <= v < 1),
    "bn_eps": ("a number > 0", lambda v: v > 0),
    "bn_momentum": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "num_classes": ("a whole number >= 0", lambda v: isinstance(v, int) and v >= 0),
    "in_chans": ("a whole number >= 1", lambda v: isinstance(v, int) and v >= 1),
}


def argument_problem(name: str, value: Any) -> str | None:
    """What ``value`` should be if it is out of range for constructor argument ``name``; None if it is fine."""
    expected, ok = ARGUMENT_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        return expected
    return None


def check_arguments(**values: Any) -> None:
    """Refuse a value that builds a meaningless network instead of failing later with a confusing message.

    ``depth_mult=-1`` used to build stages with no blocks, and the weights that do fit were then reported
    as fitting "a different" variant with the very same name.
    """
    for name, value in values.items():
        expected = argument_problem(name, value)
        if expected:
            raise ValueError(f"{name} must be {expected}, got {value!r}")


def _accept_timm_layout(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` (and so timm's ``load_checkpoint``, ``--checkpoint`` of timm's scripts) also takes a
    state dict in timm's ``tf_efficientnet_*`` / ``efficientnet_*`` layout: its keys are renamed to ours in place."""
    if prefix + "conv_stem.weight" not in state_dict:
        return
    from .weights.timm_format import from_timm

    ours = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
    renamed = from_timm({k[len(prefix) :]: v for k, v in ours.items()}, keep_unknown=True)  # strict loads report
    state_dict.update({prefix + k: v for k, v in renamed.items()})


class EfficientNet(nn.Module):
    """EfficientNet-V1 (Tan & Le, ICML 2019), numerically identical to the TensorFlow original.

    Args:
        width_mult, depth_mult: compound-scaling coefficients applied to ``stages``.
        num_classes: classifier outputs; 0 removes the classifier (``forward`` returns pooled features).
        in_chans: input channels.
        drop_rate: dropout before the classifier (0, as in every timm model; the paper trained B0 with 0.2,
            growing to 0.5 for B7: ``Scaling.dropout``, the ``finetune`` command's default).
        drop_path_rate: stochastic-depth rate of the last block; earlier blocks get a linear ramp (0; the paper
            trained with 0.2).
        global_pool: timm pool type ('avg', 'max', 'avgmax', '' for none).
        padding: 'same' (TensorFlow, for Google's checkpoints) or 'symmetric' (torchvision / timm-native).
        bn_eps, bn_momentum: BatchNorm settings; the defaults are TF's 1e-3 and 0.99 decay.
        act_layer: activation, a timm name ('silu', 'relu6', ...) or a module class.
        stages, stem_channels, head_channels: the unscaled base network (B0 by default).
        fix_stem_head: keep stem and head channels unscaled (as EfficientNet-Lite does).
        fix_first_last: keep the first and last stages' repeats unscaled (EfficientNet-Lite).
        se_ratio: override every stage's squeeze-excitation ratio (0 removes SE, as in Lite).
        output_stride: 32, or 16 / 8 (2 / 4) for dense prediction: once the running stride reaches it, later
            strided stages keep their resolution and dilate their depthwise convs instead (timm's semantics).
        device, dtype: where and in what float type to create the parameters (``device="meta"``: no memory).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        padding: Padding = "same",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        act_layer: ActLayer = "silu",
        stages: Sequence[StageConfig] = BASE_STAGES,
        stem_channels: int = STEM_CHANNELS,
        head_channels: int = HEAD_CHANNELS,
        fix_stem_head: bool = False,
        fix_first_last: bool = False,
        se_ratio: float | None = None,
        output_stride: int = 32,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_arguments(
            width_mult=width_mult, depth_mult=depth_mult, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            bn_eps=bn_eps, bn_momentum=bn_momentum, num_classes=num_classes, in_chans=in_chans,
        )  # fmt: skip
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        act = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
        # What rebuilds this network (config.json's model_args); num_classes / global_pool are read live.
        self.model_args = dict(
            width_mult=width_mult, depth_mult=depth_mult, in_chans=in_chans, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum,
            act_layer=act_layer, fix_stem_head=fix_stem_head,
            fix_first_last=fix_first_last, se_ratio=se_ratio, output_stride=output_stride,
        )  # fmt: skip
        norm = dict(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        # On CPU, oneDNN's kernels (depthwise above all) are much faster on NHWC activations: inputs are moved
        # to channels_last inside the network; values are unchanged. Set False to keep NCHW throughout.
        self.cpu_channels_last = True
        # Set by ``optimize_for_inference``: the network runs on spatially flipped maps with flipped kernels,
        # where TF's "SAME" padding is static and symmetric (see effnet_zoo/inference.py). Inputs are flipped on
        # the way in and every map handed out is flipped back, so callers see no difference.
        self.mirrored = False
        stages = tuple(stages) if se_ratio is None else tuple(replace(s, se_ratio=se_ratio) for s in stages)
        self.stage_configs = scale_stages(stages, width_mult, depth_mult, fix_first_last)
        stem_out = stem_channels if fix_stem_head else round_channels(stem_channels, width_mult)
        head_out = head_channels if fix_stem_head else round_channels(head_channels, width_mult)
        params = count_params(self.stage_configs, stem_out, head_out, in_chans, num_classes)
        if params > MAX_PARAMS:
            raise ValueError(
                f"width_mult={width_mult}, depth_mult={depth_mult} make a network of {params:,} parameters "
                f"({params * 4 / 2**30:,.1f} GiB in float32), over the {MAX_PARAMS:,} this library builds; "
                "EfficientNet-L2 is width 4.3, depth 5.3 (480M)"
            )

        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.stem = ConvBnAct(in_chans, stem_out, 3, stride=2, act_layer=act, **norm)

            num_blocks = sum(s.repeats for s in self.stage_configs)
            block_idx, channels, reduction, dilation = 0, stem_out, 2, 1
            stage_modules: list[nn.Module] = []
            self.feature_info = []
            for stage_idx, cfg in enumerate(self.stage_configs):
                # Past output_stride a strided stage keeps resolution: its first block runs at the dilation so far,
                # the rest at the dilation times the stride it gave up (timm's rule, so the same weights agree).
                stride, next_dilation = cfg.stride, dilation
                if stride > 1 and reduction * stride > output_stride:
                    stride, next_dilation = 1, dilation * stride
                reduction *= stride
                blocks = []
                for i in range(cfg.repeats):
                    blocks.append(
                        MBConv(
                            channels,
                            cfg.out_channels,
                            cfg.kernel_size,
                            stride if i == 0 else 1,
                            cfg.expand_ratio,
                            cfg.se_ratio,
                            drop_path_rate * block_idx / num_blocks,
                            act_layer=act,
                            dilation=dilation if i == 0 else next_dilation,
                            **norm,
                        )
                    )
                    channels = cfg.out_channels
                    block_idx += 1
                dilation = next_dilation
                stage_modules.append(nn.Sequential(*blocks))
                if ends_a_level(self.stage_configs, stage_idx):
                    self.feature_info.append(
                        dict(num_chs=channels, reduction=reduction, module=f"blocks.{stage_idx}", stage=stage_idx + 1)
                    )
            self.blocks = nn.Sequential(*stage_modules)
            self.stage_ends = [info["stage"] for info in self.feature_info]

            self.head = ConvBnAct(channels, head_out, 1, act_layer=act, **norm)
            self.num_features = head_out
            self.head_drop = nn.Dropout(drop_rate)
            self.global_pool, self.classifier = create_classifier(head_out, num_classes, pool_type=global_pool)
            self.head_hidden_size = head_out * self.global_pool.feat_mult()
            self._init_weights()
        if dtype is not None:
            self.to(dtype=dtype)
        self.register_load_state_dict_pre_hook(_accept_timm_layout)

    @property
    def conv_stem(self) -> nn.Conv2d:
        """The stem convolution under timm's EfficientNet name (``pretrained_cfg['first_conv']`` is ours)."""
        return self.stem.conv

    __jit_unused_properties__ = ["conv_stem"]  # noqa: RUF012  (TorchScript's opt-out list)

    def _init_weights(self) -> None:
        """TF's initialisers: conv normal(0, sqrt(2 / fan_out)), dense uniform(+-1/sqrt(fan_out)).

        Skipped on the meta device (structure-only builds: converters, suggestions, summaries), where there are no
        values to set and torch's reference ``normal_`` would take most of the build time.
        """
        if self.stem.conv.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    # ---- timm model API -------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=[(r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None), (r"^head\.", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_lean_training(self, enable: bool = True) -> None:
        """In training, run each block's layers as units that keep about a third of what autograd would keep for
        backward, with the same gradients (effnet_zoo.fused; on by default). False: the modules as written."""
        for module in self.modules():
            if isinstance(module, MBConv):
                module.lean_training = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """BatchNorm affine parameters and biases: decaying them only hurts (timm's convention)."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (e.g. for fine-tuning); ``num_classes=0`` removes it.

        The new pool and classifier take the model's device, dtype and train/eval mode.
        """
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        ref = next(self.parameters())
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.classifier.to(device=ref.device, dtype=ref.dtype)
        self.global_pool.train(self.training)
        self.classifier.train(self.training)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            weight = self.stem.conv.weight  # a method, not a tensor, once quantized; an FX proxy while traced
            weight = weight if isinstance(weight, (torch.Tensor, torch.fx.Proxy)) else None
            x = checked_input(x, self.in_chans, self.feature_info[-1]["reduction"], weight, self.cpu_channels_last)
        elif self.cpu_channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self._unmirror(x)

    def _unmirror(self, x: torch.Tensor) -> torch.Tensor:
        """Flip the input into the mirrored orientation (``optimize_for_inference``); ``handed_out`` flips back."""
        return x.flip((-2, -1)) if self.mirrored else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(self._prepare_input(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            y = checkpoint_seq(self.blocks, y)
        else:
            y = self.blocks(y)
        return handed_out(self.head(y), x, self.mirrored)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- features for detection / segmentation necks -------------------------------------------
    def _take_indices(
        self,
        indices: Optional[Union[int, List[int]]],  # noqa: UP006, UP007, UP045
        extra_blocks: bool,
    ) -> Tuple[List[int], List[int], int]:  # noqa: UP006
        """timm's index semantics: (indices taken, the stages that end them (0 = stem), the last stage needed).

        Feature levels index ``feature_info``; with ``extra_blocks`` every stage is an index, the stem 0.
        """
        if extra_blocks:
            take, max_index = feature_take_indices(len(self.blocks) + 1, indices)
            return take, take, max_index
        take, max_index = feature_take_indices(len(self.stage_ends), indices)
        return take, [self.stage_ends[i] for i in take], self.stage_ends[max_index]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,  # noqa: UP006, UP007, UP045
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        extra_blocks: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:  # noqa: UP006, UP007
        """Pyramid maps at ``feature_info`` levels (strides 2..32); timm's semantics for every argument.

        Written for TorchScript too (typing names, no break over the stages): scripted ``features_only``
        backbones and the necks built on them call it.
        """
        if output_fmt != "NCHW":
            raise ValueError("output_fmt must be 'NCHW', got " + output_fmt)
        final, intermediates = self._forward_intermediates(x, indices, stop_early, extra_blocks, intermediates_only)
        if intermediates_only:
            return intermediates
        return final, intermediates

    def _forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]],  # noqa: UP006, UP007, UP045
        stop_early: bool,
        extra_blocks: bool,
        intermediates_only: bool,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:  # noqa: UP006
        """forward_intermediates with one return type, for scripted callers that iterate the maps."""
        _, take_stages, max_stage = self._take_indices(indices, extra_blocks)
        last_stage = max_stage if stop_early or intermediates_only else len(self.blocks)
        intermediates: List[torch.Tensor] = []  # noqa: UP006
        y = self.stem(self._prepare_input(x))
        if 0 in take_stages:
            intermediates.append(handed_out(y, x, self.mirrored))
        stage_idx = 0
        for stage in self.blocks:
            stage_idx += 1
            if stage_idx <= last_stage:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    y = checkpoint_seq(stage, y)
                else:
                    y = stage(y)
                if stage_idx in take_stages:
                    intermediates.append(handed_out(y, x, self.mirrored))
        if not intermediates_only and last_stage == self.stage_ends[-1]:  # the head follows the last stage only
            y = self.head(y)
        elif len(intermediates) > 0 and last_stage in take_stages:  # the final map is the last level: one tensor
            return intermediates[-1], intermediates
        return handed_out(y, x, self.mirrored), intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,  # noqa: UP006, UP007
        prune_norm: bool = False,
        prune_head: bool = True,
        extra_blocks: bool = False,
    ) -> List[int]:  # noqa: UP006
        """Drop the stages after the last requested level (and the head) for a lean backbone.

        Once the head goes, ``num_features`` / ``head_hidden_size`` are the width of the last kept map, so
        ``reset_classifier`` builds a classifier that fits it.
        """
        take, _, max_stage = self._take_indices(indices, extra_blocks)
        channels = self.stage_configs[max_stage - 1].out_channels if max_stage else self.stem.conv.out_channels
        prune_end = prune_norm or prune_head or max_stage < len(self.blocks)
        self.blocks = self.blocks[:max_stage]
        if prune_end:
            self.head = nn.Identity()
            self.num_features = channels
            self.reset_classifier(0, "")
        return take

    def get_features(self, x: torch.Tensor, strides: Sequence[int] = (2, 4, 8, 16, 32)) -> list[torch.Tensor]:
        """Multi-scale maps for a neck, one per requested output stride (default: all five levels)."""
        available = [info["reduction"] for info in self.feature_info]
        unknown = [s for s in strides if s not in available]
        if unknown:
            raise ValueError(f"strides {unknown} are not feature levels of this network; choose from {available}")
        indices = sorted(available.index(s) for s in strides)
        return self.forward_intermediates(x, indices=indices, intermediates_only=True)


def _accept_unwrapped_backbone(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """A backbone's ``load_state_dict`` also takes the keys of an unwrapped network: timm's own ``features_only``
    ``tf_efficientnet_*`` (``conv_stem.weight``, ...) or our full model's trunk (``stem.conv.weight``, ...).
    They are moved under ``model.``, where the network's own hook renames timm's layout."""
    if prefix + "conv_stem.weight" not in state_dict and prefix + "stem.conv.weight" not in state_dict:
        return
    keys = [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "model.")]
    for key in keys:
        state_dict[prefix + "model." + key[len(prefix) :]] = state_dict.pop(key)


class EfficientNetFeatures(FeatureGetterNet):
    """timm's ``features_only`` wrapper (``forward_intermediates`` at ``out_indices``), with gradient checkpointing.

    timm's ``FeatureGetterNet`` does not forward ``set_grad_checkpointing``, which segmentation and detection
    code calls on the encoder, and its ``forward`` is typed as ``forward_intermediates`` (a list or a tuple), which
    scripted necks cannot iterate.
    """

    def __init__(self, model: nn.Module, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        if self.output_fmt != "NCHW":
            fmt = getattr(self.output_fmt, "value", self.output_fmt)
            raise ValueError(f"output_fmt must be 'NCHW' for effnet_zoo backbones, got {fmt!r}")
        self.register_load_state_dict_pre_hook(_accept_unwrapped_backbone)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:  # noqa: UP006
        # one return type (forward_intermediates may return a tuple): scripted callers iterate the maps
        return self.model._forward_intermediates(x, self.out_indices, True, False, True)[1]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def set_lean_training(self, enable: bool = True) -> None:
        self.model.set_lean_training(enable)
