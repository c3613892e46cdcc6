"""The ``config.json`` of a model folder: registry configs (``hub_configs/``), the checks a folder's file passes
before timm builds from it, and the config of any model instance, in our layout or timm's own."""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from .._io import atomic_write_text
from .._text import printable
from ..model import ARGUMENT_RANGES, argument_problem
from ..options import LAYOUTS, MAX_INPUT_SIDE

PRETRAINED_CFG_KEYS = (
    "tag", "custom_load", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode",
    "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "license",
)  # fmt: skip
WEIGHTS_NAME, CONFIG_NAME, CARD_NAME = "model.safetensors", "config.json", "README.md"


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ---- registry configs (hub_configs/) -------------------------------------------------------------------


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


# Bounds on what a config.json may ask for. Every route that reads one (local-dir:, hf-hub:, a registered tag, a
# pretrained_cfg passed in Python, the command line) checks it against these before anything is allocated.
MAX_CONFIG_BYTES = 8 * 2**20  # ImageNet-22k's 21,843 label names with descriptions take about 1.5 MB
MIN_CROP_PCT = 0.25  # the eval resize is input / crop_pct: 0.01 resized a photo to 22400 px (3.6 GB)
MAX_CLASSES = 100_000  # ImageNet-22k has 21,843
# The eval resize is to input / crop_pct before the crop, and the long side follows the aspect ratio: with an
# input of 1600 at crop_pct 0.25, a 72-byte 32x1 PNG took 5.9 GB. The resize's short side stays within this.
MAX_RESIZE_SIDE = 2048
# The deepest feature map's side (input / output_stride) within this: output_stride 2 at 1600 px took 8 GB for
# four images. EfficientNet-L2 at 800 px with output_stride 4 is 200.
MAX_FEATURE_SIDE = 200
MIN_STD, MAX_MEAN = 1e-3, 10.0  # pixels are normalised from [0, 1]: std 1/255 for 0-255 inputs is 0.0039
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")  # what timm's eval transform takes
CROP_MODES = ("center", "squash", "border")
# A Hub license identifier (apache-2.0, mit, cc-by-nc-4.0, other): written into the model card's YAML header, so
# nothing else may pass (a newline there injected keys such as `widget:` / `inference:`)
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


def read_config_file(path: Path) -> dict[str, Any]:
    """A ``config.json`` as a dict, read only if it is a regular file of at most MAX_CONFIG_BYTES (a FIFO would
    block, a 2 GB file took 4.8 GB of memory); one ValueError naming the file otherwise."""
    from ..weights.common import special_file

    if kind := special_file(path):
        raise ValueError(f"{path} is {kind}, not a regular file: a model folder's config.json must be a file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e})") from e
    if size > MAX_CONFIG_BYTES:  # said as it is, not as "not valid JSON"
        raise ValueError(
            f"{path} is {size:,} bytes, over the {MAX_CONFIG_BYTES:,} a model config can need (ImageNet-22k's "
            "labels take 1.5 MB); it is not a model folder's config.json"
        )
    try:
        with open(path, "rb") as f:
            config = json.loads(f.read(MAX_CONFIG_BYTES + 1).decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({e})") from e
    except (ValueError, RecursionError) as e:  # JSONDecodeError, and ints past Python's 4300 digits
        raise ValueError(f"{path} is not valid JSON ({e}); save the model again with effnet_zoo") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the file should be a JSON object, got {_shown(config)}")
    return config


def _shown(value: Any) -> str:
    """A value from a config, short and printable, for an error message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return printable(text if len(text) <= 80 else text[:77] + "...")


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pretrained_cfg_problems(cfg: dict[str, Any], in_chans: int = 3) -> list[tuple[str, str, Any]]:
    """(key, what it should be, what it is) for each preprocessing / label field that timm or the tasks would
    crash on or turn into nonsense (a KeyError deep in the transform, a 22400 px resize, a shuttle for a cat)."""
    problems: list[tuple[str, str, Any]] = []
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes"):
        if key in cfg and cfg[key] is None:  # timm's transforms read these without a default
            problems.append((key, "a value (leave the key out for the default)", None))
    for key in ("input_size", "test_input_size", "min_input_size"):
        size = cfg.get(key)
        if size is not None and not (
            isinstance(size, (list, tuple))
            and len(size) == 3
            and _whole(size[0], 1, 2**16)
            and all(_whole(v, 1, MAX_INPUT_SIDE) for v in size[1:])
        ):
            problems.append((key, f"[channels, height, width], whole numbers, sides at most {MAX_INPUT_SIDE}", size))
    for key in ("crop_pct", "test_crop_pct"):
        value = cfg.get(key)
        if value is not None and not (_number(value) and MIN_CROP_PCT <= value <= 1):
            problems.append((key, f"a number in [{MIN_CROP_PCT}, 1] (the published models use 0.875-0.96)", value))
    for size_key, crop_key in (("input_size", "crop_pct"), ("test_input_size", "test_crop_pct")):
        size, crop = cfg.get(size_key), cfg.get(crop_key, cfg.get("crop_pct"))
        if (
            not any(k in (size_key, crop_key) for k, _, _ in problems)
            and isinstance(size, (list, tuple))
            and len(size) == 3
            and _number(crop)
            and crop > 0
            and min(size[1:]) / crop > MAX_RESIZE_SIDE
        ):
            problems.append((crop_key, f"at least {min(size[1:]) / MAX_RESIZE_SIDE:.3g} for an input of "
                             f"{min(size[1:])} px (the resize before the crop, input / crop_pct, stays within "
                             f"{MAX_RESIZE_SIDE} px)", crop))  # fmt: skip
    if cfg.get("custom_load") not in (None, False):  # timm then calls model.load_pretrained, which ours lack
        problems.append(
            ("custom_load", "false (effnet_zoo models load through timm's standard loader)", cfg["custom_load"])
        )
    if cfg.get("fixed_input_size") not in (None, False):  # timm then passes img_size, which ours do not take
        problems.append(("fixed_input_size", "false (effnet_zoo models take any input size)", cfg["fixed_input_size"]))
    if cfg.get("label_offset") is not None and not _whole(cfg["label_offset"], 0, 1):
        problems.append(
            ("label_offset", "0 or 1 (1: the checkpoint has a background class first)", cfg["label_offset"])
        )
    for key in ("hf_hub_id", "hf_hub_filename", "hf_hub_revision", "url", "file", "source", "origin_url", "notes"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            problems.append((key, "a string", cfg[key]))
    value = cfg.get("interpolation")
    if value is not None and value not in INTERPOLATIONS:
        problems.append(("interpolation", f"one of {', '.join(INTERPOLATIONS)}", value))
    value = cfg.get("crop_mode")
    if value is not None and value not in CROP_MODES:
        problems.append(("crop_mode", f"one of {', '.join(CROP_MODES)}", value))
    # one value per input channel; timm keeps the RGB triple for in_chans != 3 models, and one value broadcasts
    lengths = sorted({1, 3, in_chans})
    for key in ("mean", "std"):
        value = cfg.get(key)
        if value is not None and not (
            isinstance(value, (list, tuple))
            and len(value) in lengths
            and all(
                _number(v) and (-MAX_MEAN <= v <= MAX_MEAN if key == "mean" else MIN_STD <= v <= 1 / MIN_STD)
                for v in value
            )
        ):  # std 1e-300 divided every pixel to Inf; mean 1e308 made NaN, both blamed on the image
            what = (
                f"numbers in [-{MAX_MEAN:g}, {MAX_MEAN:g}]"
                if key == "mean"
                else f"numbers in [{MIN_STD:g}, {1 / MIN_STD:g}]"
            )
            problems.append((key, f"a list of {' or '.join(map(str, lengths))} {what} (one per input channel)", value))
    num_classes = cfg.get("num_classes")
    if num_classes is not None and not _whole(num_classes, 0, MAX_CLASSES):
        problems.append(("num_classes", f"a whole number in [0, {MAX_CLASSES:,}]", num_classes))
        num_classes = None
    labels = cfg.get("label_names")
    if labels is not None and not (
        isinstance(labels, (list, tuple))
        and all(isinstance(n, str) for n in labels)
        and (num_classes is None or len(labels) == num_classes)
    ):
        problems.append(("label_names", f"a list of {num_classes or 'num_classes'} strings, one per class", labels))
    descriptions = cfg.get("label_descriptions")
    if descriptions is not None and not (
        isinstance(descriptions, dict) and all(isinstance(v, str) for v in descriptions.values())
    ):
        problems.append(("label_descriptions", "an object mapping label names to strings", descriptions))
    pool = cfg.get("pool_size")
    if pool is not None and not (
        isinstance(pool, (list, tuple)) and len(pool) == 2 and all(_whole(v, 1, MAX_INPUT_SIDE) for v in pool)
    ):
        problems.append(("pool_size", "[height, width], two whole numbers", pool))
    for key in ("first_conv", "classifier", "tag", "architecture"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            problems.append((key, "a string", cfg[key]))
    license_id = cfg.get("license")
    if license_id is not None and not (isinstance(license_id, str) and LICENSE_ID.fullmatch(license_id)):
        problems.append(("license", "a Hub license identifier (apache-2.0, mit, cc-by-4.0, other, ...)", license_id))
    return problems


def check_pretrained_cfg(cfg: dict[str, Any], source: str, in_chans: int = 3, prefix: str = "") -> None:
    """Raise one ValueError naming ``source`` and the first bad field of a model's pretrained_cfg."""
    if problems := pretrained_cfg_problems(cfg, in_chans):
        key, expected, value = problems[0]
        raise ValueError(f"{source}: '{prefix}{key}' should be {expected}, got {_shown(value)}")


def _model_arg_keys(architecture: str) -> set[str] | None:
    """The ``model_args`` an architecture of ours takes (None for timm's own, whose builder checks its own)."""
    if not architecture.startswith("effnet_"):
        return None
    from ..model import EfficientNet
    from ..zoo import TIMM_ALIASES

    return set(inspect.signature(EfficientNet).parameters) - {"device", "dtype", "stages"} | set(TIMM_ALIASES)


@functools.cache
def _pretrained_cfg_fields() -> set[str]:
    import dataclasses

    from timm.models import PretrainedCfg

    return {f.name for f in dataclasses.fields(PretrainedCfg)}


def check_config(config: Any, source: str) -> dict[str, Any]:
    """The one validation of a model config (a folder's or a Hub repo's config.json): a ValueError naming
    ``source`` and the key for anything timm would crash on deep inside the build, or that would only give
    nonsense. Returns ``config``."""

    def bad(key: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"{source}: {key} should be {expected}, got {_shown(value)}")

    if not isinstance(config, dict):
        raise bad("the file", "a JSON object", config)
    arch = config.get("architecture")
    # ours, or timm's own tf_efficientnet_* (the timm layout save_pretrained / convert / finetune can write)
    if not isinstance(arch, str) or arch not in timm.list_models(["effnet_*", "tf_efficientnet_*"]):
        raise bad(
            "'architecture'",
            f"one of effnet_zoo's models ({', '.join(timm.list_models('effnet_v1_b*')[:3])}, ...) or timm's "
            "tf_efficientnet_*",
            arch,
        )
    for key in ("num_classes", "num_features"):
        if key in config and not _whole(config[key], 0, MAX_CLASSES if key == "num_classes" else 2**20):
            limit = f"{MAX_CLASSES:,}" if key == "num_classes" else f"{2**20:,}"
            raise bad(f"'{key}'", f"a whole number in [0, {limit}]", config[key])
    for key in ("model_args", "pretrained_cfg", "label_descriptions"):
        if key in config and not isinstance(config[key], dict):
            raise bad(f"'{key}'", "a JSON object", config[key])
    if "global_pool" in config and not isinstance(config["global_pool"], str):
        raise bad("'global_pool'", "a timm pool type ('avg', 'max', ...)", config["global_pool"])
    model_args = config.get("model_args", {})
    known = _model_arg_keys(arch)
    if known is not None and (unknown := sorted(set(model_args) - known)):
        raise ValueError(
            f"{source}: 'model_args' holds {_shown(unknown[0])}, which {arch} does not take (it takes "
            f"{', '.join(sorted(known))})"
        )
    for key, value in model_args.items():
        if value is None:  # timm drops None arguments on one route and passes them on another
            raise bad(f"'model_args.{key}'", "a value (leave the key out for the default)", value)
    for key in sorted(ARGUMENT_RANGES.keys() & model_args.keys()):
        expected = argument_problem(key, model_args[key])
        if expected:
            raise bad(f"'model_args.{key}'", expected, model_args[key])
    for key in ("padding", "global_pool", "pad_type"):
        if key in model_args and not isinstance(model_args[key], str):
            raise bad(f"'model_args.{key}'", "a string", model_args[key])
    for key in ("fix_stem_head", "fix_first_last"):
        if key in model_args and not isinstance(model_args[key], bool):
            raise bad(f"'model_args.{key}'", "true or false", model_args[key])
    for key in ("se_ratio", "stem_channels", "head_channels", "output_stride"):
        value = model_args.get(key)
        if value is not None and not (_number(value) and value >= 0):
            raise bad(f"'model_args.{key}'", "a number >= 0", value)
    act = model_args.get("act_layer")
    if act is not None:
        from timm.layers import get_act_layer

        try:
            if not isinstance(act, str):
                raise TypeError(act)
            get_act_layer(act)
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise bad("'model_args.act_layer'", "a timm activation name ('silu', 'relu6', ...)", act) from e
    cfg = {**config.get("pretrained_cfg", {})}
    if unknown := sorted(set(cfg) - _pretrained_cfg_fields()):  # timm's PretrainedCfg(**cfg) raised TypeError
        raise ValueError(f"{source}: 'pretrained_cfg' holds {_shown(unknown[0])}, which is not a timm "
                         "pretrained_cfg field (input_size, crop_pct, interpolation, mean, std, ...)")  # fmt: skip
    for key in ("num_classes", "label_names", "label_descriptions"):  # timm moves these into pretrained_cfg
        if key in config:
            cfg[key] = config[key]
    in_chans = model_args.get("in_chans", 3)
    for key, expected, value in pretrained_cfg_problems(cfg, in_chans):
        top = key in ("label_names", "label_descriptions") or (key == "num_classes" and "num_classes" in config)
        raise bad(f"'{key if top else 'pretrained_cfg.' + key}'", expected, value)
    stride, size = model_args.get("output_stride", 32), cfg.get("input_size") or [3, 224, 224]
    if _number(stride) and stride > 0 and max(size[1:]) / stride > MAX_FEATURE_SIDE:
        raise bad(
            "'model_args.output_stride'",
            f"at least {math.ceil(max(size[1:]) / MAX_FEATURE_SIDE)} for {max(size[1:])} px inputs (the deepest "
            f"feature map, input / output_stride, stays within {MAX_FEATURE_SIDE} px: memory grows with its area)",
            stride,
        )
    try:  # what the checks above cannot see (a size over the parameter limit, arguments that contradict)
        with torch.device("meta"):
            timm.create_model(arch, num_classes=cfg.get("num_classes", 1000), **model_args)
    except (ValueError, TypeError, KeyError, AssertionError, RuntimeError) as e:
        raise ValueError(f"{source}: 'model_args' do not build {arch} ({printable(str(e))[:200]})") from e
    return config


def check_model_config(path: Path) -> dict[str, Any]:
    """A folder's ``config.json``, read within bounds and checked before timm builds from it."""
    return check_config(read_config_file(path), str(path))


def pretrained_names() -> list[str]:
    """Every ``arch.tag`` of ours that has published weights."""
    return timm.list_pretrained("effnet_*")


def render_hub_config(model_name: str) -> str:
    return json.dumps(hub_config(model_name), indent=2) + "\n"


def write_hub_configs(out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<arch.tag>/config.json`` for every pretrained tag (atomically, one by one)."""
    out = Path(out_dir)
    return [atomic_write_text(out / name / CONFIG_NAME, render_hub_config(name)) for name in pretrained_names()]


# ---- any model instance -> Hub folder -----------------------------------------------------------------


def model_args_of(model: nn.Module) -> dict[str, Any]:
    """The arguments that rebuild ``model`` with ``timm.create_model(architecture, **args)``.

    ``num_classes`` is not among them: timm reads it from the config's top level, and transformers passes it
    itself (``model_args`` holding it too made every folder fail there with "multiple values for num_classes").
    """
    args = {k: v for k, v in model.model_args.items() if v is not None}
    if model.global_pool.pool_type != "avg":  # timm does not read the top-level global_pool back
        args["global_pool"] = model.global_pool.pool_type
    for key, value in args.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"model argument {key}={value!r} cannot be written to config.json; use a timm name")
    return args


@functools.cache
def _imagenet_1k() -> tuple[str, ...]:
    return tuple(timm.data.ImageNetInfo().label_names())  # synsets, in the originals' order


def label_names_of(model: nn.Module, label_names: list[str] | None) -> list[str] | None:
    """The class names a folder records: given, else the model's own (a folder it was loaded from).

    None for ImageNet-1k: timm and transformers then recognise the 1000 classes and show their names ("tabby,
    tabby cat"); recorded synsets would be shown as they are ("n02123045").
    """
    if label_names is None:
        label_names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
        if label_names is not None and len(label_names) != model.num_classes:
            label_names = None  # the classifier was replaced since: the old names no longer apply
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f"{len(label_names)} label names for a {model.num_classes}-class model")
    if label_names is not None and tuple(label_names) == _imagenet_1k():
        return None
    return None if label_names is None else list(label_names)


def export_config(
    model: nn.Module,
    label_names: list[str] | None = None,
    data_config: dict[str, Any] | None = None,
    keep_tag: bool = True,
) -> dict[str, Any]:
    """timm's Hub config for this model: architecture, sizes, ``model_args``, preprocessing, labels."""
    cfg = model.pretrained_cfg
    pretrained_cfg = {k: _jsonable(cfg[k]) for k in PRETRAINED_CFG_KEYS if cfg.get(k) is not None}
    pretrained_cfg.update({k: _jsonable(v) for k, v in (data_config or {}).items()})
    pretrained_cfg["num_classes"] = model.num_classes
    pretrained_cfg["input_size"] = [model.in_chans, *pretrained_cfg["input_size"][1:]]
    if not keep_tag:
        pretrained_cfg.pop("tag", None)
    config = {
        "architecture": cfg["architecture"],
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": model.global_pool.pool_type,
        "model_args": model_args_of(model),
        "pretrained_cfg": pretrained_cfg,
    }
    if (names := label_names_of(model, label_names)) is not None:
        config["label_names"] = names
    return config


# ---- timm's own layout, for users without effnet_zoo -----------------------------------------------------


def timm_architecture(architecture: str) -> str:
    """timm's ``tf_efficientnet_*`` for one of our published variants; ValueError naming why not."""
    from ..scaling import LITE_VARIANTS, VARIANTS

    variant = architecture.rsplit("_", 1)[-1]
    if (architecture.startswith("effnet_v1_") and variant in VARIANTS) or (
        architecture.startswith("effnet_lite") and variant in LITE_VARIANTS
    ):
        return f"tf_efficientnet_{variant}"
    raise ValueError(
        f"{architecture} has no timm architecture: timm builds only the published variants (effnet_v1_b0-b8, l2 "
        "and effnet_lite0-4 as tf_efficientnet_*), not a custom compound coefficient; save it in the effnet_zoo "
        "layout, which loads after `import effnet_zoo`"
    )


def _timm_model_args(architecture: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """Our ``model_args`` as ``tf_efficientnet_*`` arguments; ValueError for one timm cannot build.

    timm's ``tf_efficientnet_*`` shares our defaults (TF padding, eps 1e-3, the variant's activation), except BN
    momentum (torch's 0.1): what differs from ours is passed on, the structure must be the variant's own.
    """
    from ..model import EfficientNet
    from ..scaling import LITE_VARIANTS, VARIANTS
    from ..zoo import LITE_ARGS

    variant = architecture.rsplit("_", 1)[-1]
    lite = architecture.startswith("effnet_lite")
    scaling = (LITE_VARIANTS if lite else VARIANTS)[variant]
    ours = {k: p.default for k, p in inspect.signature(EfficientNet).parameters.items()}
    ours.update(width_mult=scaling.width_mult, depth_mult=scaling.depth_mult, **(LITE_ARGS if lite else {}))
    for key in ("width_mult", "depth_mult", "se_ratio", "fix_stem_head", "fix_first_last"):  # no timm argument
        if model_args.get(key, ours[key]) != ours[key]:
            raise ValueError(
                f"{architecture} with {key}={model_args[key]!r} has no timm equivalent (timm's "
                f"{timm_architecture(architecture)} builds {key}={ours[key]!r}); save it in the effnet_zoo layout, "
                "which loads after `import effnet_zoo`"
            )
    args: dict[str, Any] = {"bn_momentum": model_args.get("bn_momentum", ours["bn_momentum"])}
    timm_names = {"padding": "pad_type"}
    for key in ("padding", "bn_eps", "act_layer", "in_chans", "drop_rate", "drop_path_rate", "output_stride",
                "global_pool"):  # fmt: skip
        if model_args.get(key, ours[key]) != ours[key]:
            args[timm_names.get(key, key)] = model_args[key]
    if "pad_type" in args:
        args["pad_type"] = ""  # symmetric, timm's name for it
    return args


def timm_native(model: nn.Module, config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``model`` and its config in timm's own layout (``tf_efficientnet_*`` architecture and key names): a folder
    that stock timm, and transformers with stock timm, load without effnet_zoo. ValueError if timm cannot build it.
    """
    from ..weights.timm_format import to_timm

    arch = timm_architecture(config["architecture"])
    args = _timm_model_args(config["architecture"], config["model_args"])
    state = to_timm(model.state_dict())
    with torch.device("meta"):
        reference = timm.create_model(arch, num_classes=config["num_classes"], **args)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in state.items()}:  # a guard: the rules above should make them equal
        raise ValueError(f"timm's {arch} with {args} does not have this model's parameters; save it in the effnet_zoo "
                         "layout, which loads after `import effnet_zoo`")  # fmt: skip
    pretrained_cfg = {**config["pretrained_cfg"], "first_conv": "conv_stem", "classifier": "classifier"}
    native = {**config, "architecture": arch, "model_args": args, "pretrained_cfg": pretrained_cfg}
    native["num_features"] = reference.num_features
    return state, native


def check_layout(architecture: str, layout: str, model_args: dict[str, Any] | None = None) -> None:
    """Refuse, before any work is done, a layout a model cannot be saved in (ValueError saying why); without
    ``model_args``, only what the architecture's name decides."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "timm":
        timm_architecture(architecture)
        if model_args is not None:
            _timm_model_args(architecture, model_args)


def in_layout(model: nn.Module, config: dict[str, Any], layout: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, config) of a model folder in ``layout``: ``effnet_zoo`` (ours) or ``timm`` (timm's own)."""
    check_layout(config["architecture"], layout)
    return timm_native(model, config) if layout == "timm" else (model.state_dict(), config)
