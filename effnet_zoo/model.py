"""The EfficientNet-V1 network: stem, seven stages of MBConv blocks, head; timm's model API."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from timm.layers import create_classifier, get_act_layer
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import nn

from .blocks import MBConv
from .layers import ConvBnAct, Padding
from .scaling import BASE_STAGES, HEAD_CHANNELS, STEM_CHANNELS, StageConfig, round_channels, scale_stages

ActLayer = str | Callable[[], nn.Module]


class EfficientNet(nn.Module):
    """EfficientNet-V1 (Tan & Le, ICML 2019), numerically identical to the TensorFlow original.

    Args:
        width_mult, depth_mult: compound-scaling coefficients applied to ``stages``.
        num_classes: classifier outputs; 0 removes the classifier (``forward`` returns pooled features).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate of the last block; earlier blocks get a linear ramp.
        global_pool: timm pool type ('avg', 'max', 'avgmax', '' for none).
        padding: 'same' (TensorFlow, for Google's checkpoints) or 'symmetric' (torchvision / timm-native).
        bn_eps, bn_momentum: BatchNorm settings; the defaults are TF's 1e-3 and 0.99 decay.
        act_layer: activation, a timm name ('silu', 'relu6', ...) or a module class.
        stages, stem_channels, head_channels: the unscaled base network (B0 by default).
        fix_stem_head: keep stem and head channels unscaled (as EfficientNet-Lite does).
        fix_first_last: keep the first and last stages' repeats unscaled (EfficientNet-Lite).
        se_ratio: override every stage's squeeze-excitation ratio (0 removes SE, as in Lite).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,
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
    ) -> None:
        super().__init__()
        act = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
        # What rebuilds this network (config.json's model_args); num_classes / global_pool are read live.
        self.model_args = dict(
            width_mult=width_mult, depth_mult=depth_mult, in_chans=in_chans, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum,
            act_layer=act_layer, fix_stem_head=fix_stem_head,
            fix_first_last=fix_first_last, se_ratio=se_ratio,
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
        self.stem = ConvBnAct(in_chans, stem_out, 3, stride=2, act_layer=act, **norm)

        num_blocks = sum(s.repeats for s in self.stage_configs)
        block_idx, channels, reduction = 0, stem_out, 2
        stage_modules: list[nn.Module] = []
        self.feature_info = []
        for stage_idx, cfg in enumerate(self.stage_configs):
            blocks = []
            for i in range(cfg.repeats):
                blocks.append(
                    MBConv(
                        channels,
                        cfg.out_channels,
                        cfg.kernel_size,
                        cfg.stride if i == 0 else 1,
                        cfg.expand_ratio,
                        cfg.se_ratio,
                        drop_path_rate * block_idx / num_blocks,
                        act_layer=act,
                        **norm,
                    )
                )
                channels = cfg.out_channels
                block_idx += 1
            stage_modules.append(nn.Sequential(*blocks))
            reduction *= cfg.stride
            # A pyramid level is the last map at each resolution (timm's convention for necks).
            is_last = stage_idx == len(self.stage_configs) - 1
            if is_last or self.stage_configs[stage_idx + 1].stride > 1:
                self.feature_info.append(
                    dict(num_chs=channels, reduction=reduction, module=f"blocks.{stage_idx}", stage=stage_idx + 1)
                )
        self.blocks = nn.Sequential(*stage_modules)
        self.stage_ends = [info["stage"] for info in self.feature_info]

        head_out = head_channels if fix_stem_head else round_channels(head_channels, width_mult)
        self.head = ConvBnAct(channels, head_out, 1, act_layer=act, **norm)
        self.num_features = self.head_hidden_size = head_out
        self.head_drop = nn.Dropout(drop_rate)
        self.global_pool, self.classifier = create_classifier(head_out, num_classes, pool_type=global_pool)
        self._init_weights()

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
    def no_weight_decay(self) -> set[str]:
        """BatchNorm affine parameters and biases: decaying them only hurts (timm's convention)."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (e.g. for fine-tuning); ``num_classes=0`` removes it."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        ref = next(self.parameters())
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.classifier.to(device=ref.device, dtype=ref.dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"expected a 4-D image batch (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0)"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels (N, {self.in_chans}, H, W), got {x.shape[1]} in shape "
                f"{tuple(x.shape)}; channels-last images need x.permute(0, 3, 1, 2), other channel counts "
                "need create_model(..., in_chans=C)"
            )
        if not (x.is_floating_point() or x.is_quantized):
            raise ValueError(
                f"expected a floating-point image batch normalised with the model's mean/std, got {x.dtype}; "
                "preprocess with timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))"
            )
        weight = getattr(self.stem.conv, "weight", None)  # a method, not a tensor, once quantized
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
        min_size = self.feature_info[-1]["reduction"]
        if x.shape[2] < min_size or x.shape[3] < min_size:
            raise ValueError(
                f"input {x.shape[2]}x{x.shape[3]} is smaller than the network's total stride: expected at least "
                f"{min_size}x{min_size} pixels; resize the image (pretrained_cfg['input_size'] is what the "
                "weights were trained at)"
            )

    def _check_values(self, x: torch.Tensor) -> None:
        """NaN/Inf in the input would only surface as NaN logits; say so where it enters.

        CPU eager only: on CUDA the test would force a host sync every forward, and traced or compiled graphs
        cannot branch on values.
        """
        # one sum (0.3 ms for 16 images at 224 px; isfinite().all() takes 11 ms) is finite unless a value is not,
        # or unless huge finite values overflow it: the exact count below then decides
        if x.device.type == "cpu" and not torch.isfinite(x.sum()) and (bad := (~torch.isfinite(x)).sum().item()):
            raise ValueError(
                f"the input holds {bad} NaN/Inf values of {x.numel()}; check the image decoding and normalisation "
                "that produced it"
            )

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
            if not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()):
                self._check_values(x)
        x = self._unmirror(x)
        if self.cpu_channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _unmirror(self, x: torch.Tensor) -> torch.Tensor:
        """Flip a map between the caller's orientation and the mirrored one (an involution)."""
        return x.flip((-2, -1)) if self.mirrored else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self._prepare_input(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self._unmirror(self.head(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- features for detection / segmentation necks -------------------------------------------
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Pyramid maps at ``feature_info`` levels (strides 2..32); timm's semantics for ``indices``."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        x = self._prepare_input(x)
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        take_stages = {self.stage_ends[i] for i in take_indices}
        last_stage = self.stage_ends[max_index] if stop_early else len(self.blocks)
        intermediates = []
        x = self.stem(x)
        for stage_idx, stage in enumerate(self.blocks):
            if stage_idx >= last_stage:
                break
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if stage_idx + 1 in take_stages:
                intermediates.append(self._unmirror(x))
        if intermediates_only:
            return intermediates
        return self._unmirror(self.head(x)), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last requested level (and the head) for a lean backbone."""
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        self.blocks = self.blocks[: self.stage_ends[max_index]]
        if prune_head or prune_norm or self.stage_ends[max_index] < len(self.stage_configs):
            self.head = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices

    def get_features(self, x: torch.Tensor, strides: Sequence[int] = (2, 4, 8, 16, 32)) -> list[torch.Tensor]:
        """Multi-scale maps for a neck, one per requested output stride (default: all five levels)."""
        available = [info["reduction"] for info in self.feature_info]
        unknown = [s for s in strides if s not in available]
        if unknown:
            raise ValueError(f"strides {unknown} are not feature levels of this network; choose from {available}")
        indices = sorted(available.index(s) for s in strides)
        return self.forward_intermediates(x, indices=indices, intermediates_only=True)
