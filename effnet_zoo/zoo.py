"""timm registration: ``effnet_v1_b0`` ... ``effnet_v1_l2`` and their pretrained tags.

The weights are Google's original TF checkpoints, converted by timm and published on the
Hugging Face Hub as ``timm/tf_efficientnet_bN.<tag>``; timm and huggingface_hub fetch and
cache them, and :func:`checkpoint_filter_fn` renames their keys to ours at load time.
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path
from typing import Any

from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from .hub.access import (
    HubConfigTooLarge,
    HubServerError,
    HubTimeout,
    cached_hub_entries,
    cached_hub_file,
    explain_hub_error,
    http_errors,
    hub_deadline,
    hub_unreachable,
    unreachable_message,
)
from .hub.config import check_pretrained_cfg
from .model import EfficientNet, EfficientNetFeatures, check_out_indices, ends_a_level
from .options import MAX_INPUT_SIDE
from .scaling import BASE_STAGES, LITE_VARIANTS, VARIANTS, Scaling, scaling_from_phi
from .weights.common import WeightsBudget, require_regular_file
from .weights.timm_format import checkpoint_filter_fn, source_file, weights_source
from .weights.torch_file import (
    WEIGHT_FILES,
    CorruptWeightsError,
    check_weights_file,
    raised_by_torch_load,
    torch_load_error,
    unreadable_safetensors,
)

# Checkpoint sets Google released, and the variants each covers. Order matters: a variant's
# first tag is its default, matching timm's ``tf_efficientnet_bN`` (best ImageNet top-1 first).
TAGS: dict[str, tuple[str, ...]] = {
    "ns_jft_in1k": ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "l2"),  # Noisy Student (JFT-300M)
    "ap_in1k": ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"),  # AdvProp
    "ra_in1k": ("b5", "b7", "b8"),  # RandAugment
    "aa_in1k": ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"),  # AutoAugment
    "in1k": ("b0", "b1", "b2", "b3", "b4", "b5"),  # the paper's original release
}
# The L2 Noisy Student model was also released fine-tuned at 475 px (timm lists it first).
EXTRA_RESOLUTIONS = {("l2", "ns_jft_in1k"): 475}

# TF's eval crop (resolution / (resolution + 32), as published, not recomputed).
CROP_PCT = {
    224: 0.875, 240: 0.882, 260: 0.890, 300: 0.904, 380: 0.922, 456: 0.934,
    475: 0.936, 528: 0.942, 600: 0.949, 672: 0.954, 800: 0.96,
}  # fmt: skip


# The Lite checkpoints' evaluation crop and resize, as published with them (and in timm's cfgs).
LITE_EVAL = {
    "lite0": (0.875, "bicubic"),
    "lite1": (0.882, "bicubic"),
    "lite2": (0.890, "bicubic"),
    "lite3": (0.904, "bilinear"),
    "lite4": (0.920, "bilinear"),
}


def crop_pct_for(resolution: int) -> float:
    return CROP_PCT.get(resolution, round(resolution / (resolution + 32), 3))


def _cfg(resolution: int, **kwargs: Any) -> dict[str, Any]:
    pool = math.ceil(resolution / 32)
    return {
        "num_classes": 1000,
        "input_size": (3, resolution, resolution),
        "pool_size": (pool, pool),
        "crop_pct": crop_pct_for(resolution),
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "classifier",
        "license": "apache-2.0",
        **kwargs,
    }


def _tagged_cfgs() -> dict[str, dict[str, Any]]:
    cfgs: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        for tag, variants in TAGS.items():
            if variant not in variants:
                continue
            resolutions = [VARIANTS[variant].resolution]
            if (variant, tag) in EXTRA_RESOLUTIONS:
                resolutions.insert(0, EXTRA_RESOLUTIONS[variant, tag])
            for res in resolutions:
                full_tag = tag if res == VARIANTS[variant].resolution else f"{tag}_{res}"
                extra: dict[str, Any] = {"hf_hub_id": f"timm/tf_efficientnet_{variant}.{full_tag}"}
                if tag == "ap_in1k":  # AdvProp models were trained on [-1, 1] inputs
                    extra.update(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)
                cfgs[f"effnet_v1_{variant}.{full_tag}"] = _cfg(res, **extra)
    for variant, scaling in LITE_VARIANTS.items():
        crop_pct, interpolation = LITE_EVAL[variant]
        cfgs[f"effnet_{variant}.in1k"] = _cfg(
            scaling.resolution,
            hf_hub_id=f"timm/tf_efficientnet_{variant}.in1k",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            interpolation=interpolation,
            crop_pct=crop_pct,
        )
    cfgs["effnet_v1_phi.untrained"] = _cfg(224)
    return cfgs


default_cfgs = generate_default_cfgs(_tagged_cfgs())


# Stochastic depth of the last block in Google's training of every variant (TF's drop_connect_rate).
PAPER_DROP_PATH_RATE = 0.2


def paper_regularization(architecture: str) -> dict[str, float]:
    """The dropout and stochastic-depth rates Google trained ``architecture`` with ({} if not a published variant).

    Our models default to 0 for both, as timm's do; ``finetune`` starts from these instead.
    """
    variant = architecture.split(".")[0].rsplit("_", 1)[-1]
    scaling = VARIANTS.get(variant) if architecture.startswith("effnet_v1_") else LITE_VARIANTS.get(variant)
    if scaling is None:
        return {}
    return {"drop_rate": scaling.dropout, "drop_path_rate": PAPER_DROP_PATH_RATE}


RANDOM_WEIGHTS_ROUTE = "pretrained=False builds the model with random weights"


class PretrainedWeightsUnavailable(RuntimeError):
    """The Hub could not supply a checkpoint (offline without a cached copy, missing repo or file).

    ``python_hint`` is a route only Python callers have (``pretrained=False``): part of the message in Python,
    left out by the command line, which has no such option. ``unreachable`` says why the Hub could not be reached,
    when that was the cause.
    """

    def __init__(self, message: str, python_hint: str | None = None, unreachable: str | None = None) -> None:
        super().__init__(f"{message}. {python_hint}" if python_hint else message)
        self.cli_message = message
        self.unreachable = unreachable


# The arguments timm's tf_efficientnet_bN takes beyond ours: under our name where the meaning is the same, else
# refused with the reason (a TypeError, as for any unknown argument).
TIMM_ALIASES = {"pad_type": "padding"}
TIMM_PAD_TYPES = {"same": "same", "": "symmetric"}
TIMM_REFUSED = {
    "fix_stem": "fix_stem_head=True keeps both stem and head unscaled (EfficientNet-Lite's rule)",
    "stem_kernel_size": "the stem is the paper's 3x3 conv",
    "norm_layer": "BatchNorm is set with bn_eps / bn_momentum",
    "se_layer": "SE is set with se_ratio (0 removes it)",
    "aa_layer": "anti-aliased downsampling is not part of EfficientNet-V1",
    "round_chs_fn": "channels round as the paper's round_filters (effnet_zoo.scaling.round_channels)",
    "channel_divisor": "channels round to multiples of 8, as every released checkpoint",
    "group_size": "depthwise convolutions are what EfficientNet-V1 uses",
    "block_args": "stages are StageConfig dataclasses: pass stages=(StageConfig(...), ...)",
}


def _timm_arguments(kwargs: dict[str, Any]) -> None:
    """Accept timm's EfficientNet argument names that mean the same here; refuse the rest with a reason."""
    for timm_name, ours in TIMM_ALIASES.items():
        if timm_name in kwargs:
            value = kwargs.pop(timm_name)
            if timm_name == "pad_type":
                if value not in TIMM_PAD_TYPES:
                    raise ValueError(f"pad_type must be 'same' (TF) or '' (symmetric), got {value!r}")
                value = TIMM_PAD_TYPES[value]
            kwargs[ours] = value
    for timm_name, reason in TIMM_REFUSED.items():
        if timm_name in kwargs:
            raise TypeError(f"{timm_name!r} is a timm EfficientNet argument that does not apply here: {reason}")


def _build(name: str, pretrained: bool, scaling: Scaling, **kwargs: Any) -> EfficientNet:
    """Every variant's builder. Dropout and stochastic depth stay 0 unless asked for, as in every timm model
    (``Scaling.dropout`` holds the rates the paper trained each variant with)."""
    _timm_arguments(kwargs)
    if kwargs.get("features_only"):
        _check_out_indices(kwargs)
    _check_given_cfg(kwargs)
    if pretrained:
        _check_local_weights(name, kwargs)
    downloads = pretrained and _route_around_an_unreachable_hub(name, kwargs)
    kwargs.setdefault("width_mult", scaling.width_mult)
    kwargs.setdefault("depth_mult", scaling.depth_mult)
    # features_only: timm's getter wrapper over forward_intermediates, with set_grad_checkpointing; a caller's
    # feature_cfg / feature_cls ('fx', 'hook', a class) still decides
    feature_cfg = {"feature_cls": EfficientNetFeatures, **(kwargs.pop("feature_cfg", None) or {})}
    for cfg in (feature_cfg, kwargs):
        if cfg.get("feature_cls") == "getter":
            cfg["feature_cls"] = EfficientNetFeatures
    try:
        with hub_deadline() if downloads else contextlib.nullcontext():  # timm's download ends in time
            return build_model_with_cfg(
                EfficientNet,
                name,
                pretrained,
                pretrained_filter_fn=functools.partial(
                    checkpoint_filter_fn, strict=kwargs.get("pretrained_strict", True)
                ),
                feature_cfg=feature_cfg,
                **kwargs,
            )
    except Exception as e:
        if (error := _load_failure(e, name, kwargs)) is None:
            raise
        raise error from e


TIMM_OUT_INDICES = (0, 1, 2, 3, 4)  # what timm's builder gives features_only when no out_indices is passed


def _check_out_indices(kwargs: dict[str, Any]) -> None:
    """The levels a ``features_only`` call asks for (the caller's, a feature_cfg's or timm's default, as timm picks
    them), checked before anything is built or downloaded: timm's wrappers fail on a bad one with a bare
    AssertionError or IndexError."""
    feature_cfg = kwargs.get("feature_cfg") or {}
    try:
        stages = tuple(kwargs.get("stages", BASE_STAGES))
        levels = sum(ends_a_level(stages, i) for i in range(len(stages)))
    except (TypeError, AttributeError):  # stages that are not StageConfigs: the network's own check explains
        return
    if levels:
        check_out_indices(kwargs.get("out_indices", feature_cfg.get("out_indices", TIMM_OUT_INDICES)), levels)


def _check_given_cfg(kwargs: dict[str, Any]) -> None:
    """A pretrained_cfg that came with the call (a folder's or Hub repo's config.json, or the caller's own) is
    checked like a folder's config.json: timm reads it unchecked, and a bad value crashed deep in the build or the
    transforms, or asked for a 12000 px input."""
    given = kwargs.get("pretrained_cfg")
    given = given.to_dict() if hasattr(given, "to_dict") else given
    cfg = {**(given if isinstance(given, dict) else {}), **(kwargs.get("pretrained_cfg_overlay") or {})}
    if cfg:
        source = cfg.get("hf_hub_id") if cfg.get("source") == "hf-hub" else cfg.get("file")
        where = f"the config.json of {source!r}" if isinstance(source, str) else "pretrained_cfg"
        in_chans = kwargs.get("in_chans", 3)
        check_pretrained_cfg(cfg, where, in_chans if isinstance(in_chans, int) else 3)


# What timm's builder takes for loading and features; the rest of the arguments shape the model
_LOADING_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "pretrained_model_args", "pretrained_strict",
                 "cache_dir", "features_only", "out_indices", "feature_cfg", "feature_cls")  # fmt: skip


def _check_local_weights(name: str, kwargs: dict[str, Any]) -> None:
    """Check the local file timm will open (a local-dir: folder's, a ``file``, a Hub repo's cached copy) before it
    opens it, against the model about to be built: a FIFO would block the load forever, a zip or pickle declaring
    gigabytes would exhaust memory, and torch's own refusal of a pickle that runs code advises running it."""
    import torch
    from timm import create_model
    from timm.models._hub import _EXT_PRIORITY, _PREFERRED_FILES

    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    kind, where = weights_source(cfg.to_dict())
    files: list[Path] = []
    if kind == "local-dir":
        folder = Path(where)
        for file in WEIGHT_FILES:
            require_regular_file(folder / file, "the weights file")
        # the file timm's load_state_dict_from_path opens: the first preferred name there, else by extension
        by_extension = [min(folder.glob(f"*{ext}"), default=None) for ext in _EXT_PRIORITY]
        files = [p for p in [*(folder / f for f in _PREFERRED_FILES), *by_extension] if p and p.exists()][:1]
    elif kind == "file":
        files = [Path(where)]
    elif kind == "hf-hub":  # the copies already cached (one downloaded now is opened by timm unchecked)
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else WEIGHT_FILES
        files = cached_hub_entries(where, names, cfg.to_dict().get("hf_hub_revision"))  # the ref checked first
    if files:
        with torch.device("meta"):
            skeleton = create_model(name, **{k: v for k, v in kwargs.items() if k not in _LOADING_ARGS})
        for path in files:
            check_weights_file(path, WeightsBudget.of(skeleton))


def _route_around_an_unreachable_hub(name: str, kwargs: dict[str, Any]) -> bool:
    """Decide in seconds, not a minute, when the Hub cannot be reached: load a cached copy directly (timm's
    ``file`` source), or fail at once with the routes that exist. True when timm will download from the Hub."""
    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    kind, repo = weights_source(cfg.to_dict())
    if kind != "hf-hub":
        return False
    if (reason := hub_unreachable()) is None:
        return True
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else WEIGHT_FILES
    cached = cached_hub_file(repo, files, cfg.to_dict().get("hf_hub_revision"))
    if cached is not None:
        kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": cached}
        return False
    raise PretrainedWeightsUnavailable(
        unreachable_message(f"the pretrained weights of {name}.{cfg.tag} from {repo!r}", reason),
        python_hint=RANDOM_WEIGHTS_ROUTE,
        unreachable=reason,
    )


def _load_failure(e: Exception, name: str, kwargs: dict[str, Any]) -> Exception | None:
    """One clear error for a pretrained load that failed at its source; None for any other failure."""
    from_torch_load = raised_by_torch_load(e)  # timm re-raises a refused pickle as RuntimeError from it
    if not from_torch_load and not isinstance(
        e,
        (
            EntryNotFoundError,
            HfHubHTTPError,
            HubTimeout,
            HubServerError,
            HubConfigTooLarge,
            SafetensorError,
            CorruptWeightsError,
            *http_errors(),
        ),
    ):
        return None
    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    kind, source = weights_source(cfg.to_dict())
    named_by_caller = kind in ("local-dir", "file") or cfg.source == "hf-hub"  # else a registered tag's source
    what = f"the pretrained weights of {name if named_by_caller else f'{name}.{cfg.tag}'} from {source!r}"
    if from_torch_load:
        return CorruptWeightsError(f"{what}: {torch_load_error(source, e)}")
    if isinstance(e, CorruptWeightsError):  # the checkpoint filter's checksum test
        return CorruptWeightsError(f"{what}: {e}")
    if isinstance(e, SafetensorError):
        return CorruptWeightsError(f"{what}: {unreadable_safetensors(source_file(cfg.to_dict()) or source, e)}")
    return PretrainedWeightsUnavailable(explain_hub_error(e, what), python_hint=RANDOM_WEIGHTS_ROUTE)


def _create(name: str, pretrained: bool, **kwargs: Any) -> EfficientNet:
    return _build(name, pretrained, VARIANTS[name.rsplit("_", 1)[-1]], **kwargs)


# EfficientNet-Lite: the same network made friendly to mobile accelerators and quantisation.
LITE_ARGS = dict(act_layer="relu6", se_ratio=0.0, fix_stem_head=True, fix_first_last=True)


def _create_lite(name: str, pretrained: bool, **kwargs: Any) -> EfficientNet:
    for key, value in LITE_ARGS.items():
        kwargs.setdefault(key, value)
    return _build(name, pretrained, LITE_VARIANTS[name.rsplit("_", 1)[-1]], **kwargs)


@register_model
def effnet_v1_b0(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0: the searched base network, 224 px, 5.3M parameters."""
    return _create("effnet_v1_b0", pretrained, **kwargs)


@register_model
def effnet_v1_b1(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B1: width 1.0, depth 1.1, 240 px."""
    return _create("effnet_v1_b1", pretrained, **kwargs)


@register_model
def effnet_v1_b2(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B2: width 1.1, depth 1.2, 260 px."""
    return _create("effnet_v1_b2", pretrained, **kwargs)


@register_model
def effnet_v1_b3(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B3: width 1.2, depth 1.4, 300 px."""
    return _create("effnet_v1_b3", pretrained, **kwargs)


@register_model
def effnet_v1_b4(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B4: width 1.4, depth 1.8, 380 px."""
    return _create("effnet_v1_b4", pretrained, **kwargs)


@register_model
def effnet_v1_b5(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B5: width 1.6, depth 2.2, 456 px."""
    return _create("effnet_v1_b5", pretrained, **kwargs)


@register_model
def effnet_v1_b6(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B6: width 1.8, depth 2.6, 528 px."""
    return _create("effnet_v1_b6", pretrained, **kwargs)


@register_model
def effnet_v1_b7(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B7: width 2.0, depth 3.1, 600 px."""
    return _create("effnet_v1_b7", pretrained, **kwargs)


@register_model
def effnet_v1_b8(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B8 (AdvProp / RandAugment release): width 2.2, depth 3.6, 672 px."""
    return _create("effnet_v1_b8", pretrained, **kwargs)


@register_model
def effnet_v1_l2(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-L2 (Noisy Student): width 4.3, depth 5.3, 800 px, 480M parameters."""
    return _create("effnet_v1_l2", pretrained, **kwargs)


@register_model
def effnet_lite0(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-Lite0: B0 without SE, with ReLU6; 224 px."""
    return _create_lite("effnet_lite0", pretrained, **kwargs)


@register_model
def effnet_lite1(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-Lite1: width 1.0, depth 1.1; 240 px."""
    return _create_lite("effnet_lite1", pretrained, **kwargs)


@register_model
def effnet_lite2(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-Lite2: width 1.1, depth 1.2; 260 px."""
    return _create_lite("effnet_lite2", pretrained, **kwargs)


@register_model
def effnet_lite3(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-Lite3: width 1.2, depth 1.4; 300 px."""
    return _create_lite("effnet_lite3", pretrained, **kwargs)


@register_model
def effnet_lite4(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """EfficientNet-Lite4: width 1.4, depth 1.8; 380 px."""
    return _create_lite("effnet_lite4", pretrained, **kwargs)


@register_model
def effnet_v1_phi(pretrained: bool = False, phi: float = 1.0, **kwargs: Any) -> EfficientNet:
    """Any point of the paper's compound-scaling curve, e.g. ``create_model("effnet_v1_phi", phi=2.5)``.

    Depth 1.2^phi, width 1.1^phi, resolution 224 * 1.15^phi. No weights exist for these.
    """
    if pretrained and not kwargs.get("pretrained_cfg"):  # a saved folder (local-dir: / hf-hub:) names its weights
        raise ValueError(
            "effnet_v1_phi has no pretrained weights; use pretrained=False, or a published variant such as "
            "effnet_v1_b2 / effnet_v1_b3"
        )
    scaling = scaling_from_phi(phi)
    res = scaling.resolution
    if res > MAX_INPUT_SIDE:
        raise ValueError(
            f"phi={phi!r} asks for {res} px inputs, over the {MAX_INPUT_SIDE} px this library evaluates at "
            "(EfficientNet-L2 uses 800 px); the published variants are phi 0 (B0) to about 7 (B7)"
        )
    overlay = dict(input_size=(3, res, res), pool_size=(math.ceil(res / 32),) * 2, crop_pct=crop_pct_for(res))
    if kwargs.get("pretrained_cfg"):  # a saved folder's config says how it was evaluated (phi is not saved)
        overlay = {}
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    return _build("effnet_v1_phi", pretrained, scaling, pretrained_cfg_overlay=overlay, **kwargs)
