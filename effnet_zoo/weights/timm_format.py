"""timm's EfficientNet layout (``tf_efficientnet_*`` and ``efficientnet_*``) <-> ours.

The timm Hub repos (``timm/tf_efficientnet_b3.aa_in1k`` ...) hold Google's TF checkpoints
converted to this layout, so this mapping is what ``pretrained=True`` runs at load time.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .common import ConversionError, Converted, WeightsBudget, check_fits, check_ranks, check_values, shapes_of
from .torch_file import load_state_dict, read_config, verify_digest

_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv", "bn2": "head.bn"}
# Blocks with an expansion conv (timm's InvertedResidual) ...
_EXPANDING = {
    "conv_pw": "expand.conv",
    "bn1": "expand.bn",
    "conv_dw": "dw.conv",
    "bn2": "dw.bn",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pwl": "project.conv",
    "bn3": "project.bn",
}
# ... and without (timm's DepthwiseSeparableConv, the expand_ratio=1 first stage): bn1/bn2 mean other things.
_DEPTHWISE = {
    "conv_dw": "dw.conv",
    "bn1": "dw.bn",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pw": "project.conv",
    "bn2": "project.bn",
}
_BLOCK_KEY = re.compile(r"^(blocks\.\d+\.\d+)\.(.+)\.(\w+)$")  # (block, module, parameter), in both layouts


def is_timm_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return "conv_stem.weight" in state_dict


def _rename(
    state_dict: dict[str, torch.Tensor],
    expand_module: str,
    blocks: dict[bool, dict[str, str]],
    top: dict[str, str],
    layout: str,
    keep_unknown: bool = False,
) -> dict[str, torch.Tensor]:
    """Rename module by module, in order: a block's modules through ``blocks[does it expand]`` (a block expands
    when it holds ``expand_module``), the stem and head through ``top``; the classifier keeps its name. A key of
    neither is an error, or with ``keep_unknown`` kept as it is (for ``load_state_dict`` to report or ignore)."""
    expanding = {m.group(1) for k in state_dict if (m := _BLOCK_KEY.match(k)) and m.group(2) == expand_module}
    out = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if m := _BLOCK_KEY.match(key):
            block, inner, param = m.groups()
            table = blocks[block in expanding]
            renamed = f"{block}.{table[inner]}.{param}" if inner in table else None
        else:
            renamed = key if module == "classifier" else f"{top[module]}.{param}" if module in top else None
        if renamed is None:
            if not keep_unknown:
                raise KeyError(f"unexpected key {key!r} in {layout} EfficientNet state dict")
            renamed = key
        out[renamed] = value
    return out


def from_timm(state_dict: dict[str, torch.Tensor], keep_unknown: bool = False) -> dict[str, torch.Tensor]:
    """Rename a timm EfficientNet state dict to our keys; tensors are shared, not copied."""
    return _rename(state_dict, "conv_pwl", {True: _EXPANDING, False: _DEPTHWISE}, _TOP, "a timm", keep_unknown)


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {ours: theirs for theirs, ours in table.items()}


def to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> timm's EfficientNet keys (the inverse of :func:`from_timm`, in the same order); tensors shared."""
    blocks = {True: _inverse(_EXPANDING), False: _inverse(_DEPTHWISE)}
    return _rename(state_dict, "expand.conv", blocks, _inverse(_TOP), "an effnet_zoo")


def weights_source(pretrained_cfg: dict) -> tuple[str, str | None]:
    """Where timm's ``pretrained=True`` reads the weights, in timm's order of precedence:
    ``("local-dir" | "file" | "hf-hub" | "url", location)``."""
    source, file, hub_id = pretrained_cfg.get("source"), pretrained_cfg.get("file"), pretrained_cfg.get("hf_hub_id")
    if source == "local-dir" and file:
        return "local-dir", file
    if file and source != "hf-hub":
        return "file", file
    if hub_id:
        return "hf-hub", hub_id
    return "url", pretrained_cfg.get("url")


def source_file(pretrained_cfg: dict) -> Path | None:
    """The local safetensors file those weights are read from (for a Hub repo: its cached copy), if any."""
    from huggingface_hub import try_to_load_from_cache

    kind, where = weights_source(pretrained_cfg)
    if kind == "local-dir":
        path = Path(where) / "model.safetensors"
    elif kind == "file":
        path = Path(where)
    elif kind == "hf-hub":
        cached = try_to_load_from_cache(where, pretrained_cfg.get("hf_hub_filename") or "model.safetensors")
        path = Path(cached) if isinstance(cached, str) else None
    else:
        return None
    return path if path is not None and path.suffix == ".safetensors" and path.is_file() else None


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, strict: bool = True
) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: check the file's recorded checksum, accept timm-layout checkpoints and our
    own, and refuse one of another variant with the variant it does fit (instead of timm's wall of size errors).
    ``strict=False`` (timm's ``pretrained_strict=False``) leaves partial loads to timm.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if (path := source_file(cfg)) is not None:
        verify_digest(state_dict, path)
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    check_ranks(shapes_of(state_dict), f"the weights of {path or weights_source(cfg)[1] or 'the model'}")
    state_dict = from_timm(state_dict) if is_timm_layout(state_dict) else state_dict
    # timm adapts the classifier (num_classes) and the stem (in_chans) after this filter
    if strict:
        check_fits(model, state_dict, cfg.get("architecture", type(model).__name__), skip=("classifier.", "stem.conv."))
    check_values(state_dict, f"the weights of {source_file(cfg) or cfg.get('architecture', 'the model')}")
    return state_dict


def read(src: Path, model: torch.nn.Module) -> Converted:
    """A timm checkpoint (file or Hub-style folder). ``tf_efficientnet_*`` computed with TF "SAME" padding and
    BN eps 1e-3; native ``efficientnet_*`` with symmetric padding and eps 1e-5. A bare state dict does not say
    which, so then the caller must (``--padding``)."""
    state = load_state_dict(src, WeightsBudget.of(model))
    check_ranks(shapes_of(state), src)
    if not is_timm_layout(state):
        raise ConversionError(f"{src} is not a timm EfficientNet checkpoint (no 'conv_stem.weight')")
    arch = read_config(src).get("architecture", "")
    if arch.startswith("tf_"):
        args: dict = {"padding": "same", "bn_eps": 1e-3}
    elif arch.startswith("efficientnet"):
        args = {"padding": "symmetric", "bn_eps": 1e-5}
    else:
        args = {"padding": None}
    return Converted(from_timm(state), source=f"timm {arch or 'EfficientNet'} ({src.name})", model_args=args)
