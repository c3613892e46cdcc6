"""lukemelas' efficientnet_pytorch (``_conv_stem``, ``_blocks.N._expand_conv``, ...) -> our keys.

Its blocks are numbered flat; TF "SAME" padding (static for the image size) and BN eps 1e-3, as in TF.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .common import Converted, WeightsBudget, block_pairs, block_prefixes, map_modules
from .torch_file import load_state_dict

_EXPANDING = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv", "_bn1": "dw.bn",
              "_se_reduce": "se.reduce", "_se_expand": "se.expand", "_project_conv": "project.conv",
              "_bn2": "project.bn"}  # fmt: skip
_PLAIN = {k: v for k, v in _EXPANDING.items() if not v.startswith("expand.")}


def read(src: Path, model: nn.Module) -> Converted:
    state = load_state_dict(src, WeightsBudget.of(model))
    pairs = [("_conv_stem", "stem.conv"), ("_bn0", "stem.bn"), ("_conv_head", "head.conv"), ("_bn1", "head.bn"),
             ("_fc", "classifier")]  # fmt: skip
    pairs += block_pairs(model, [f"_blocks.{i}" for i in range(len(block_prefixes(model)))], _EXPANDING, _PLAIN)
    return Converted(
        map_modules(state, pairs, "efficientnet_pytorch"),
        source=f"efficientnet_pytorch (lukemelas) checkpoint ({src.name})",
        model_args={"padding": "same", "bn_eps": 1e-3},
    )
