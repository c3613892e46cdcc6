"""``effnet-zoo convert``: any supported EfficientNet checkpoint -> a Hub-ready folder timm loads.

The folder holds ``model.safetensors`` (our key names), ``config.json`` (timm's Hub config, with the
``model_args`` that rebuild exactly what the source computed) and ``README.md`` (a model card). It is
written into a temporary folder beside ``out`` and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .._io import check_output
from .._text import markdown_code, printable
from ..hub.config import check_layout, export_config, in_layout
from ..hub.folders import DTYPES, model_card, write_model_folder
from . import keras_h5, lukemelas, seed, tf_ckpt, timm_format, torchvision_format, transformers_format
from .common import (
    ConversionError,
    Converted,
    CorruptWeightsError,
    WeightsBudget,
    check_ranks,
    fits,
    fits_hint,
    load_checked,
    shapes_of,
)

FORMATS: dict[str, Callable[[Path, nn.Module], Converted]] = {
    "tf-ckpt": tf_ckpt.read,
    "keras-h5": keras_h5.read,
    "timm": timm_format.read,
    "torchvision": torchvision_format.read,
    "lukemelas": lukemelas.read,
    "seed": seed.read,
    "transformers": transformers_format.read,
}


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
    layout: str = "effnet_zoo",
) -> ConversionResult:
    """Convert ``src`` (in ``fmt``) to the registered ``model_name`` (``arch`` or ``arch.tag``) into ``out``.

    ``layout="timm"`` writes timm's own ``tf_efficientnet_*`` names, which stock timm loads without effnet_zoo.
    """
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if not src.exists() and not Path(f"{src}.index").exists():  # a TF checkpoint prefix names no file itself
        raise ConversionError(f"{src} does not exist")
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    check_output(out, [src, Path(f"{src}.index")] if not src.exists() else [src])
    arch = model_name.split(".", 1)[0]
    if arch not in timm.list_models("effnet_*"):
        raise ConversionError(
            f"unknown model {model_name!r}; expected one of {', '.join(timm.list_models('effnet_*'))}"
        )
    try:
        check_layout(arch, layout)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    user_args = dict(model_args or {})

    try:
        with torch.device("meta"):  # the block structure, to map flat source numbering onto it
            skeleton = timm.create_model(arch, **user_args)
    except (TypeError, KeyError, AttributeError, ValueError, AssertionError) as e:  # --model-arg foo=1, act=nope
        shown = ", ".join(f"{k}={v!r}" for k, v in user_args.items())
        raise ConversionError(f"{arch} cannot be built with {printable(shown)[:200]} ({type(e).__name__}: "
                              f"{printable(str(e))[:200]}); check --model-arg") from e  # fmt: skip
    try:
        converted = FORMATS[fmt](src, skeleton)
    except ConversionError as e:
        if isinstance(e, CorruptWeightsError) or (other := fitting_variant(fmt, src, exclude=arch)) is None:
            raise
        raise ConversionError(f"{e}{fits_hint(other)}") from e
    check_ranks(shapes_of(converted.state_dict), src)  # before num_classes is read from the classifier
    args = {k: v for k, v in converted.model_args.items() if v is not None}
    args.update(user_args)
    if "padding" not in args:
        raise ConversionError(
            f"{src} does not say which padding its model computed with: pass --padding same (TF-ported weights, "
            "e.g. tf_efficientnet_*) or --padding symmetric (PyTorch-trained, e.g. timm efficientnet_*)"
        )
    if "classifier.weight" in converted.state_dict:
        args.setdefault("num_classes", converted.state_dict["classifier.weight"].shape[0])
    model = timm.create_model(model_name, **args).eval()
    load_checked(model, converted.state_dict, model_name)

    # preprocessing of the named checkpoint set (or the variant's default), not a tag the weights do not carry
    config = export_config(model, converted.label_names, converted.data_config, keep_tag="." in model_name)
    try:
        state, config = in_layout(model, config, layout)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    result = ConversionResult(out, model, converted, config)
    if verify:
        result.max_abs_diff, result.verify_note = verify_against_source(fmt, src, model, model_name)
    tag = f", checkpoint set `{config['pretrained_cfg']['tag']}`" if "tag" in config["pretrained_cfg"] else ""
    origin = f"Converted by `effnet-zoo convert --from {fmt}` from {markdown_code(converted.source)}{tag}."
    card = model_card(config, f"{model_name} converted by effnet_zoo", origin)
    try:
        write_model_folder(out, state, config, card, dtype, force)
    except FileExistsError as e:
        raise ConversionError(str(e)) from e
    result.files = sorted(p.name for p in out.iterdir())
    return result


def fitting_variant(fmt: str, src: Path, exclude: str) -> str | None:
    """The registered variant a checkpoint maps onto with every shape right (each tried on the meta device).

    Sources that number blocks flat (TF, Keras, torchvision, ...) fail on a wrong variant before any shape is
    compared, so each variant's block structure is tried in turn; only on this error path.
    """
    for arch in timm.list_models("effnet_*"):
        if arch in (exclude, "effnet_v1_phi"):
            continue
        with torch.device("meta"):
            skeleton = timm.create_model(arch)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = FORMATS[fmt](src, skeleton)
        except ConversionError:
            continue
        if fits(arch, shapes_of(converted.state_dict)):
            return arch
    return None


def verify_against_source(fmt: str, src: Path, model: nn.Module, model_name: str) -> tuple[float | None, str]:
    """Run the source library's own model on a fixed input beside ours; (max |difference|, what was compared)."""
    try:
        reference = _source_model(fmt, src, model, model_name)
    except ImportError as e:
        return None, f"not verified: the source library is not importable ({e.name})"
    except (ValueError, RuntimeError, KeyError) as e:
        return None, f"not verified: the source library could not rebuild this model ({type(e).__name__}: {e})"
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
        ref.load_state_dict(load_state_dict(src, WeightsBudget.of(model)))
        return ref.eval()
    if fmt == "torchvision":
        import torchvision

        ref = getattr(torchvision.models, f"efficientnet_{variant}")(num_classes=model.num_classes)
        ref.load_state_dict(load_state_dict(src, WeightsBudget.of(model)))
        return ref.eval()
    if fmt == "lukemelas":
        from efficientnet_pytorch import EfficientNet as LukeEfficientNet

        ref = LukeEfficientNet.from_name(f"efficientnet-{variant}", num_classes=model.num_classes)
        ref.load_state_dict(load_state_dict(src, WeightsBudget.of(model)))
        return ref.eval()
    if fmt == "transformers" and src.is_dir():
        from transformers import EfficientNetForImageClassification

        return EfficientNetForImageClassification.from_pretrained(src).eval()
    return None
