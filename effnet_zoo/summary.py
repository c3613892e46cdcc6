"""The compound-scaled design of a model, measured on the meta device (no memory, no weights).

Parameters are counted from the built modules and FLOPs by ``torch.utils.flop_counter`` while
a meta tensor flows through, so the figures describe the real module graph, not a formula.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import EfficientNet


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resolve_model_name(name: str) -> str:
    """Accept ``effnet_v1_b3``, ``effnet_v1_b3.aa_in1k`` or the short ``b3``."""
    if "." not in name and not name.startswith("effnet_"):
        name = f"effnet_v1_{name}"
    arch = name.split(".", 1)[0]
    if arch not in timm.list_models("effnet_*"):
        known = ", ".join(timm.list_models("effnet_*"))
        raise ValueError(f"unknown model {name!r}; expected one of: {known} (optionally with a .tag)")
    return name


def summarize(name: str = "effnet_v1_b0", phi: float | None = None, img_size: int | None = None) -> dict[str, Any]:
    """Per-stage design, totals and feature pyramid of a registered model (or of a custom ``phi``)."""
    kwargs: dict[str, Any] = {}
    if phi is not None:
        name, kwargs = "effnet_v1_phi", {"phi": phi}
    name = resolve_model_name(name)
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs).eval()
    assert isinstance(model, EfficientNet)
    res = img_size or model.pretrained_cfg["input_size"][-1]

    stage_inputs: list[tuple[int, ...]] = []
    hooks = [s.register_forward_pre_hook(lambda _m, a: stage_inputs.append(tuple(a[0].shape))) for s in model.blocks]
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        logits_shape = tuple(model(torch.empty(1, model.in_chans, res, res, device="meta")).shape)
    for h in hooks:
        h.remove()
    flops = {k.removeprefix("EfficientNet.").removeprefix("EfficientNet"): sum(v.values())
             for k, v in counter.get_flop_counts().items()}  # fmt: skip

    stages = []
    for idx, (cfg, stage, shape) in enumerate(zip(model.stage_configs, model.blocks, stage_inputs, strict=True)):
        stages.append(
            dict(
                stage=idx + 1,
                input_resolution=list(shape[2:]),
                in_channels=shape[1],
                out_channels=cfg.out_channels,
                repeats=cfg.repeats,
                kernel_size=cfg.kernel_size,
                stride=cfg.stride,
                expand_ratio=cfg.expand_ratio,
                se_ratio=cfg.se_ratio,
                params=_params(stage),
                flops=flops.get(f"blocks.{idx}", 0),
            )
        )
    features = []
    for i, info in enumerate(model.feature_info):
        side = [-(-res // info["reduction"])] * 2  # TF "SAME": ceil(size / stride) at every stride
        features.append(dict(index=i, module=info["module"], reduction=info["reduction"],
                             channels=info["num_chs"], resolution=side))  # fmt: skip
    total_flops = flops.get("", 0)
    return dict(
        model=name,
        phi=phi,
        width_mult=model.model_args["width_mult"],
        depth_mult=model.model_args["depth_mult"],
        input_size=[model.in_chans, res, res],
        stem=dict(
            out_channels=model.stem.conv.out_channels,
            kernel_size=3,
            stride=2,
            params=_params(model.stem),
            flops=flops.get("stem", 0),
        ),  # fmt: skip
        stages=stages,
        head=dict(
            in_channels=model.head.conv.in_channels,
            out_channels=model.num_features,
            params=_params(model.head),
            flops=flops.get("head", 0),
        ),  # fmt: skip
        classifier=dict(
            num_classes=logits_shape[-1], params=_params(model.classifier), flops=flops.get("classifier", 0)
        ),  # fmt: skip
        total_params=_params(model),
        total_flops=total_flops,
        total_macs=total_flops // 2,
        features=features,
    )
