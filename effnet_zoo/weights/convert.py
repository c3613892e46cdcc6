"""``effnet-zoo convert``: any supported EfficientNet checkpoint -> a Hub-ready folder timm loads.

The folder holds ``model.safetensors`` (our key names), ``config.json`` (timm's Hub config, with the
``model_args`` that rebuild exactly what the source computed) and ``README.md`` (a model card). It is
written into a temporary folder beside ``out`` and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg
from torch import nn

from ..hub import PRETRAINED_CFG_KEYS
from . import keras_h5, lukemelas, seed, tf_ckpt, timm_format, torchvision_format, transformers_format
from .common import ConversionError, Converted, load_checked

FORMATS: dict[str, Callable[[Path, nn.Module], Converted]] = {
    "tf-ckpt": tf_ckpt.read,
    "keras-h5": keras_h5.read,
    "timm": timm_format.read,
    "torchvision": torchvision_format.read,
    "lukemelas": lukemelas.read,
    "seed": seed.read,
    "transformers": transformers_format.read,
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Arguments the registry fills in per variant; recorded in config.json only when they differ.
_ARCH_DEFAULTS = ("width_mult", "depth_mult", "drop_rate")


@dataclass
class ConversionResult:
    out: Path
    model: nn.Module
    converted: Converted
    config: dict[str, Any]
    max_abs_diff: float | None = None
    verify_note: str = ""
    files: list[str] = field(default_factory=list)


def convert(
    src: str | Path,
    fmt: str,
    model_name: str,
    out: str | Path,
    dtype: str = "fp32",
    model_args: dict[str, Any] | None = None,
    force: bool = False,
    verify: bool = False,
) -> ConversionResult:
    """Convert ``src`` (in ``fmt``) to the registered ``model_name`` (``arch`` or ``arch.tag``) into ``out``."""
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if not src.exists():
        raise ConversionError(f"{src} does not exist")
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    arch = model_name.split(".", 1)[0]
    if arch not in timm.list_models("effnet_*"):
        raise ConversionError(
            f"unknown model {model_name!r}; expected one of {', '.join(timm.list_models('effnet_*'))}"
        )
    user_args = dict(model_args or {})

    with torch.device("meta"):  # the block structure, to map flat source numbering onto it
        skeleton = timm.create_model(arch, **user_args)
    converted = FORMATS[fmt](src, skeleton)
    args = {k: v for k, v in converted.model_args.items() if v is not None}
    args.update(user_args)
    if "padding" not in args:
        raise ConversionError(
            f"{src} does not say which padding its model computed with: pass --padding same (TF-ported weights, "
            "e.g. tf_efficientnet_*) or --padding symmetric (PyTorch-trained, e.g. timm efficientnet_*)"
        )
    if "classifier.weight" in converted.state_dict:
        args.setdefault("num_classes", converted.state_dict["classifier.weight"].shape[0])
    model = timm.create_model(arch, **args).eval()
    load_checked(model, converted.state_dict, model_name)

    config = hub_config_for(model, model_name, args, converted)
    result = ConversionResult(out, model, converted, config)
    if verify:
        result.max_abs_diff, result.verify_note = verify_against_source(fmt, src, model, model_name)
    _write_folder(out, model, config, model_card(model_name, fmt, config, converted), DTYPES[dtype], force)
    result.files = sorted(p.name for p in out.iterdir())
    return result


def hub_config_for(model: nn.Module, model_name: str, args: dict[str, Any], converted: Converted) -> dict[str, Any]:
    """timm's Hub config: architecture, sizes, the args that rebuild this model, preprocessing, labels."""
    arch = model_name.split(".", 1)[0]
    source_cfg = get_pretrained_cfg(model_name).to_dict()
    pretrained_cfg = {k: source_cfg[k] for k in PRETRAINED_CFG_KEYS if source_cfg.get(k) is not None}
    pretrained_cfg.update(converted.data_config)
    pretrained_cfg["num_classes"] = model.num_classes
    if "." not in model_name:  # preprocessing of the variant's default set, but not its checkpoint-set tag
        pretrained_cfg.pop("tag", None)
    with torch.device("meta"):
        defaults = timm.create_model(arch)
    model_args = {k: v for k, v in args.items() if k not in _ARCH_DEFAULTS or getattr(defaults, k, None) != v}
    model_args.pop("num_classes", None)
    config = {
        "architecture": arch,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": model.global_pool.pool_type,
        "model_args": model_args,
        "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained_cfg.items()},
    }
    labels = converted.label_names
    if labels is None and model.num_classes == 1000:
        labels = timm.data.ImageNetInfo().label_names()  # ImageNet-1k synsets, the originals' class order
    if labels is not None:
        config["label_names"] = list(labels)
    return config


def model_card(model_name: str, fmt: str, config: dict[str, Any], converted: Converted) -> str:
    cfg = config["pretrained_cfg"]
    params = sum(p.numel() for p in timm.create_model(config["architecture"], **config["model_args"],
                                                         num_classes=config["num_classes"]).parameters())  # fmt: skip
    return f"""---
tags:
- image-classification
- timm
- effnet_zoo
library_name: timm
license: {cfg.get("license", "apache-2.0")}
---
# {model_name} converted by effnet_zoo

EfficientNet ({config["architecture"]}, {params:,} parameters, {config["num_classes"]} classes), converted from
{converted.source} (format `{fmt}`{", checkpoint set `" + cfg["tag"] + "`" if cfg.get("tag") else ""}).

Model arguments: `{json.dumps(config["model_args"])}`.

Preprocessing: input {cfg["input_size"][1]}x{cfg["input_size"][2]}, center crop {cfg["crop_pct"]},
{cfg["interpolation"]} resize, mean {tuple(cfg["mean"])}, std {tuple(cfg["std"])}.

```python
import timm
import effnet_zoo  # registers the effnet_* architectures with timm

model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()   # or "local-dir:PATH"
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
```
"""


def _write_folder(out: Path, model: nn.Module, config: dict, card: str, dtype: torch.dtype, force: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
        if out.exists():
            if not force:
                raise ConversionError(f"{out} already exists; pass --force to replace it")
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_against_source(fmt: str, src: Path, model: nn.Module, model_name: str) -> tuple[float | None, str]:
    """Run the source library's own model on a fixed input beside ours; (max |difference|, what was compared)."""
    try:
        reference = _source_model(fmt, src, model, model_name)
    except ImportError as e:
        return None, f"not verified: the source library is not importable ({e.name})"
    if reference is None:
        return None, f"not verified: no runnable reference for format {fmt!r}"
    size = 224 if model.pretrained_cfg["input_size"][-1] % 2 == 0 else 225
    x = torch.randn(2, model.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = reference(x)
        ref = getattr(ref, "logits", ref)
        diff = (model(x) - ref).abs().max().item()
    return diff, f"max |logit difference| vs the source library on a fixed {size}x{size} batch: {diff:.3g}"


def _source_model(fmt: str, src: Path, model: nn.Module, model_name: str) -> nn.Module | None:
    from .torch_file import load_state_dict, read_config

    variant = model_name.split(".", 1)[0].rsplit("_", 1)[-1]
    if fmt == "timm":
        arch = read_config(src).get("architecture") or f"tf_efficientnet_{variant}"
        ref = timm.create_model(arch, num_classes=model.num_classes)
        ref.load_state_dict(load_state_dict(src))
        return ref.eval()
    if fmt == "torchvision":
        import torchvision

        ref = getattr(torchvision.models, f"efficientnet_{variant}")(num_classes=model.num_classes)
        ref.load_state_dict(load_state_dict(src))
        return ref.eval()
    if fmt == "lukemelas":
        from efficientnet_pytorch import EfficientNet as LukeEfficientNet

        ref = LukeEfficientNet.from_name(f"efficientnet-{variant}", num_classes=model.num_classes)
        ref.load_state_dict(load_state_dict(src))
        return ref.eval()
    if fmt == "transformers" and src.is_dir():
        from transformers import EfficientNetForImageClassification

        return EfficientNetForImageClassification.from_pretrained(src).eval()
    return None
