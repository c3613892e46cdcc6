"""The abhuse pytorch-efficientnet layout this project grew from -> our keys.

``init_conv.conv.conv`` (a same-padding wrapper around the conv), ``stages.S.layers.L.{expand_conv,
dp_conv, se.dim_reduce, se.dim_restore, project_conv}``, ``head_conv``, ``fc``; TF "SAME" padding, eps 1e-3.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .common import Converted, WeightsBudget, block_pairs, map_modules
from .torch_file import load_state_dict

_EXPANDING = {"expand_conv.conv": "expand.conv", "expand_conv.bn": "expand.bn", "dp_conv.conv.conv": "dw.conv",
              "dp_conv.bn": "dw.bn", "se.dim_reduce": "se.reduce", "se.dim_restore": "se.expand",
              "project_conv.conv": "project.conv", "project_conv.bn": "project.bn"}  # fmt: skip
_PLAIN = {k: v for k, v in _EXPANDING.items() if not v.startswith("expand.")}


def read(src: Path, model: nn.Module) -> Converted:
    state = load_state_dict(src, WeightsBudget.of(model))
    blocks = [f"stages.{s}.layers.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    pairs = [("init_conv.conv.conv", "stem.conv"), ("init_conv.bn", "stem.bn"), ("head_conv.conv", "head.conv"),
             ("head_conv.bn", "head.bn"), ("fc", "classifier")]  # fmt: skip
    pairs += block_pairs(model, blocks, _EXPANDING, _PLAIN)
    return Converted(
        map_modules(state, pairs, "seed (abhuse pytorch-efficientnet)"),
        source=f"abhuse pytorch-efficientnet checkpoint ({src.name})",
        model_args={"padding": "same", "bn_eps": 1e-3},
    )
