"""Hugging Face transformers' ``EfficientNetForImageClassification`` -> our keys.

transformers pads stride-2 convs as TF does for even input sizes (so: our "same" padding), BN eps from its
config (1e-3); labels come from the folder's ``config.json`` (``id2label``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .common import Converted, WeightsBudget, block_pairs, block_prefixes, map_modules
from .torch_file import load_state_dict, read_config

_EXPANDING = {"expansion.expand_conv": "expand.conv", "expansion.expand_bn": "expand.bn",
              "depthwise_conv.depthwise_conv": "dw.conv", "depthwise_conv.depthwise_norm": "dw.bn",
              "squeeze_excite.reduce": "se.reduce", "squeeze_excite.expand": "se.expand",
              "projection.project_conv": "project.conv", "projection.project_bn": "project.bn"}  # fmt: skip
_PLAIN = {k: v for k, v in _EXPANDING.items() if not v.startswith("expand.")}


def read(src: Path, model: nn.Module) -> Converted:
    state = load_state_dict(src, WeightsBudget.of(model))
    enc = "efficientnet.encoder"
    pairs = [("efficientnet.embeddings.convolution", "stem.conv"), ("efficientnet.embeddings.batchnorm", "stem.bn"),
             (f"{enc}.top_conv", "head.conv"), (f"{enc}.top_bn", "head.bn"), ("classifier", "classifier")]  # fmt: skip
    n = len(block_prefixes(model))
    pairs += block_pairs(model, [f"{enc}.blocks.{i}" for i in range(n)], _EXPANDING, _PLAIN)
    config = read_config(src)
    id2label = config.get("id2label") or {}
    labels = [id2label[str(i)] for i in range(len(id2label))] if id2label and all(
        str(i) in id2label for i in range(len(id2label))) else None  # fmt: skip
    return Converted(
        map_modules(state, pairs, "transformers"),
        source=f"transformers EfficientNetForImageClassification ({src.name})",
        model_args={"padding": "same", "bn_eps": float(config.get("batch_norm_eps", 1e-3))},
        label_names=labels,
    )
