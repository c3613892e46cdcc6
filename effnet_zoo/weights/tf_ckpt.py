"""Google's original TensorFlow EfficientNet checkpoints (``efficientnet-bN/blocks_K/...``) -> our keys.

The released checkpoints hold each variable, its ``ExponentialMovingAverage`` shadow (what Google's
evaluation uses, and what the published accuracies are for), RMSProp slots and ``global_step``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .common import (
    ConversionError,
    Converted,
    WeightsBudget,
    block_expands,
    block_prefixes,
    conv_from_tf,
    dense_from_tf,
    depthwise_from_tf,
)
from .tf_bundle import TensorBundle

EMA_SUFFIX = "/ExponentialMovingAverage"
_SKIP = re.compile(r"(/RMSProp(_\d+)?|/Momentum|/Adam(_\d+)?)$|^global_step$")
_TF_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def read_variables(path: str | Path, budget: WeightsBudget | None = None) -> tuple[str, dict[str, torch.Tensor], str]:
    """(model scope, {variable name without scope: tensor}, which weights) preferring EMA shadows.

    With ``budget``, the sizes the index declares for them are counted first: index entries may all point at the
    same bytes of a shard, so a small checkpoint can declare any amount.
    """
    with TensorBundle(path) as bundle:
        names = [n for n in bundle.names() if bundle.is_numeric(n) and not _SKIP.search(n)]
        roots = {n.split("/", 1)[0] for n in names if "/" in n}
        scopes = sorted(r for r in roots if r.startswith("efficientnet"))
        if len(scopes) != 1:
            raise ConversionError(
                f"{path} is a TensorFlow checkpoint, but not of one EfficientNet: expected variables under a single "
                f"'efficientnet-*' scope, found scopes {sorted(roots)[:8]}"
            )
        scope = scopes[0]
        raw = [n for n in names if n.startswith(scope + "/") and not n.endswith(EMA_SUFFIX)]
        with_ema = [n for n in raw if n + EMA_SUFFIX in bundle.entries]
        if with_ema:
            missing = [n for n in raw if n + EMA_SUFFIX not in bundle.entries]
            if missing:
                warnings.warn(
                    f"{len(missing)} variables have no ExponentialMovingAverage shadow, their raw values are used "
                    f"(first: {missing[0]})",
                    stacklevel=2,
                )
            which = "ExponentialMovingAverage weights"
        else:
            warnings.warn(
                "the checkpoint has no ExponentialMovingAverage shadows; converting the raw training variables, "
                "which usually evaluate worse than the EMA weights Google's results use",
                stacklevel=2,
            )
            which = "raw training variables (no EMA shadows found)"
        chosen = {n[len(scope) + 1 :]: n + EMA_SUFFIX if n + EMA_SUFFIX in bundle.entries else n for n in raw}
        if budget is not None:
            budget.take(path, sum(bundle.entries[n].size for n in chosen.values()), f"its {len(chosen)} variables")
        tensors = {name: bundle.tensor(n) for name, n in chosen.items()}
    return scope, tensors, which


def _bn(out: dict, ours: str, tf: dict[str, torch.Tensor], scope: str) -> None:
    for tf_name, our_name in _TF_BN.items():
        out[f"{ours}.{our_name}"] = _take(tf, f"{scope}/{tf_name}")


def _take(tf: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tf:
        raise ConversionError(f"the checkpoint lacks {name!r}; it does not fit the requested model (check --model)")
    return tf.pop(name)


def map_to_ours(tf: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the original variables. Which ``conv2d`` / ``tpu_batch_normalization_N`` is which depends on whether
    the block has an expansion conv (it then comes first)."""
    tf = dict(tf)
    bn = "tpu_batch_normalization" if any("tpu_batch_normalization" in k for k in tf) else "batch_normalization"
    out: dict[str, torch.Tensor] = {"stem.conv.weight": conv_from_tf(_take(tf, "stem/conv2d/kernel"))}
    _bn(out, "stem.bn", tf, f"stem/{bn}")
    prefixes = block_prefixes(model)
    in_ckpt = {int(m.group(1)) for k in tf if (m := re.match(r"blocks_(\d+)/", k))}
    if len(in_ckpt) != len(prefixes):
        raise ConversionError(
            f"the checkpoint has {len(in_ckpt)} blocks but the model has {len(prefixes)}: check --model"
        )
    for k, ours in enumerate(prefixes):
        b = f"blocks_{k}"
        convs, norms = ["conv2d", "conv2d_1"], [bn, f"{bn}_1", f"{bn}_2"]
        if block_expands(model, ours):
            out[f"{ours}.expand.conv.weight"] = conv_from_tf(_take(tf, f"{b}/{convs.pop(0)}/kernel"))
            _bn(out, f"{ours}.expand.bn", tf, f"{b}/{norms.pop(0)}")
        out[f"{ours}.dw.conv.weight"] = depthwise_from_tf(_take(tf, f"{b}/depthwise_conv2d/depthwise_kernel"))
        _bn(out, f"{ours}.dw.bn", tf, f"{b}/{norms.pop(0)}")
        if model.get_submodule(ours).se is not None:
            for tf_se, our_se in (("se/conv2d", "se.reduce"), ("se/conv2d_1", "se.expand")):
                out[f"{ours}.{our_se}.weight"] = conv_from_tf(_take(tf, f"{b}/{tf_se}/kernel"))
                out[f"{ours}.{our_se}.bias"] = _take(tf, f"{b}/{tf_se}/bias")
        out[f"{ours}.project.conv.weight"] = conv_from_tf(_take(tf, f"{b}/{convs.pop(0)}/kernel"))
        _bn(out, f"{ours}.project.bn", tf, f"{b}/{norms.pop(0)}")
    out["head.conv.weight"] = conv_from_tf(_take(tf, "head/conv2d/kernel"))
    _bn(out, "head.bn", tf, f"head/{bn}")
    out["classifier.weight"] = dense_from_tf(_take(tf, "head/dense/kernel"))
    out["classifier.bias"] = _take(tf, "head/dense/bias")
    if tf:
        raise ConversionError(f"the checkpoint has variables the model does not use, e.g. {sorted(tf)[:3]}")
    return out


def read(src: Path, model: nn.Module) -> Converted:
    scope, tf, which = read_variables(src, WeightsBudget.of(model))
    return Converted(
        map_to_ours(tf, model),
        source=f"TensorFlow checkpoint '{scope}' ({which})",
        model_args={"padding": "same", "bn_eps": 1e-3},
    )
