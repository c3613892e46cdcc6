"""torchvision's ``efficientnet_b*`` (symmetric padding, BatchNorm eps 1e-5) -> our keys."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .common import Converted, WeightsBudget, block_pairs, map_modules
from .torch_file import load_state_dict

_EXPANDING = {"0.0": "expand.conv", "0.1": "expand.bn", "1.0": "dw.conv", "1.1": "dw.bn",
              "2.fc1": "se.reduce", "2.fc2": "se.expand", "3.0": "project.conv", "3.1": "project.bn"}  # fmt: skip
_PLAIN = {"0.0": "dw.conv", "0.1": "dw.bn", "1.fc1": "se.reduce", "1.fc2": "se.expand",
          "2.0": "project.conv", "2.1": "project.bn"}  # fmt: skip


def read(src: Path, model: nn.Module) -> Converted:
    state = load_state_dict(src, WeightsBudget.of(model))
    blocks = [f"features.{s + 1}.{b}.block" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    head = len(model.blocks) + 1
    pairs = [("features.0.0", "stem.conv"), ("features.0.1", "stem.bn"), (f"features.{head}.0", "head.conv"),
             (f"features.{head}.1", "head.bn"), ("classifier.1", "classifier")]  # fmt: skip
    pairs += block_pairs(model, blocks, _EXPANDING, _PLAIN)
    return Converted(
        map_modules(state, pairs, "torchvision"),
        source=f"torchvision EfficientNet ({src.name})",
        model_args={"padding": "symmetric", "bn_eps": 1e-5},
    )
