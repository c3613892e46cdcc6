"""Hugging Face Hub configs for our models (what a Hub repo of ours carries in ``config.json``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg

from ._io import atomic_write_text

# The pretrained_cfg fields timm's own Hub repos carry (source fields such as hf_hub_id are dropped:
# the repo *is* the source). A fixed list, so the files do not change with timm's dataclass.
PRETRAINED_CFG_KEYS = (
    "tag", "custom_load", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode",
    "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "license",
)  # fmt: skip


@functools.cache
def _arch_head(arch: str) -> tuple[int, int, str]:
    """(num_classes, num_features, global_pool) of an architecture, built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(arch)
    return model.num_classes, model.num_features, model.global_pool.pool_type


def hub_config(model_name: str) -> dict[str, Any]:
    """The ``config.json`` for ``arch.tag``, built from timm's registry."""
    cfg = get_pretrained_cfg(model_name).to_dict()
    num_classes, num_features, global_pool = _arch_head(model_name.split(".", 1)[0])
    return {
        "architecture": cfg["architecture"],
        "num_classes": num_classes,
        "num_features": num_features,
        "global_pool": global_pool,
        "pretrained_cfg": {k: _jsonable(cfg[k]) for k in PRETRAINED_CFG_KEYS if cfg.get(k) is not None},
    }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def pretrained_names() -> list[str]:
    """Every ``arch.tag`` of ours that has published weights."""
    return timm.list_pretrained("effnet_*")


def render_hub_config(model_name: str) -> str:
    return json.dumps(hub_config(model_name), indent=2) + "\n"


def write_hub_configs(out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<arch.tag>/config.json`` for every pretrained tag (atomically, one by one)."""
    return [
        atomic_write_text(Path(out_dir) / name / "config.json", render_hub_config(name)) for name in pretrained_names()
    ]
