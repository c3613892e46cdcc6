"""keras.applications EfficientNet weights -> our keys.

Two HDF5 layouts: the legacy one of the keras.applications downloads (``/<layer>/<layer>/<var>:0``, also
inside ``model_weights/`` for a whole saved model), and Keras 3's ``.weights.h5`` (``layers/<layer>/vars/<i>``,
where layers are named by class and creation order, so they are matched to the network in order).
Keras' EfficientNet rescales by 1/255 and normalises inside the model; that Normalization layer's
statistics become the converted model's mean/std.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_STD
from torch import nn

from .._text import first_line
from .common import (
    BN_PARAMS,
    ConversionError,
    Converted,
    WeightsBudget,
    block_expands,
    block_prefixes,
    conv_from_tf,
    dense_from_tf,
    depthwise_from_tf,
    require_regular_file,
)

Read = Callable[[Any], torch.Tensor]  # one dataset's values, its size counted first


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConversionError("reading Keras .h5 files needs h5py: pip install 'effnet-zoo[keras]'") from e
    return h5py


def _layers(model: nn.Module) -> list[tuple[str, str, str]]:
    """(keras layer name, keras class, our module) for every weighted layer, in Keras' creation order."""
    out = [("stem_conv", "conv2d", "stem.conv"), ("stem_bn", "batch_normalization", "stem.bn")]
    for prefix in block_prefixes(model):
        _, s, b = prefix.split(".")
        name = f"block{int(s) + 1}{chr(97 + int(b))}_"
        if block_expands(model, prefix):
            out += [(name + "expand_conv", "conv2d", f"{prefix}.expand.conv")]
            out += [(name + "expand_bn", "batch_normalization", f"{prefix}.expand.bn")]
        out += [
            (name + "dwconv", "depthwise_conv2d", f"{prefix}.dw.conv"),
            (name + "bn", "batch_normalization", f"{prefix}.dw.bn"),
        ]
        if model.get_submodule(prefix).se is not None:
            out += [
                (name + "se_reduce", "conv2d", f"{prefix}.se.reduce"),
                (name + "se_expand", "conv2d", f"{prefix}.se.expand"),
            ]
        out += [(name + "project_conv", "conv2d", f"{prefix}.project.conv")]
        out += [(name + "project_bn", "batch_normalization", f"{prefix}.project.bn")]
    out += [("top_conv", "conv2d", "head.conv"), ("top_bn", "batch_normalization", "head.bn")]
    out += [("predictions", "dense", "classifier")]
    return out


def _to_ours(kind: str, module: str, values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    if kind == "batch_normalization":
        # Keras' order: gamma, beta, moving_mean, moving_variance
        return {f"{module}.{p}": v for p, v in zip(BN_PARAMS, values, strict=True)}
    if kind == "dense":
        return {f"{module}.weight": dense_from_tf(values[0]), f"{module}.bias": values[1]}
    transform = depthwise_from_tf if kind == "depthwise_conv2d" else conv_from_tf
    out = {f"{module}.weight": transform(values[0])}
    if len(values) > 1:
        out[f"{module}.bias"] = values[1]
    return out


def _tensor(dataset: Any, src: Path, budget: WeightsBudget) -> torch.Tensor:
    """A dataset's values, once its declared shape and type (which h5py reads without the data) are counted
    against ``budget``: a 7 KB file can declare gigabytes stored as a fill value or in chunks never written."""
    if getattr(dataset, "shape", None) is None or dataset.dtype.kind not in "fiub":
        kind = dataset.dtype if hasattr(dataset, "dtype") else "a group"
        raise ConversionError(f"{src}: {dataset.name} holds {kind}, not numbers: the file does not hold Keras weights")
    nbytes = math.prod(dataset.shape) * dataset.dtype.itemsize
    budget.take(src, nbytes, f"dataset {dataset.name} (shape {list(dataset.shape)}, {dataset.dtype})")
    return torch.as_tensor(np.array(dataset[()]))


def _legacy_values(group: Any, tensor: Read) -> list[torch.Tensor]:
    """A legacy layer group's weights in Keras order (kernel, bias / gamma, beta, moving_mean, moving_variance)."""
    names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
    if not names:  # fall back to the datasets below the group
        names = []
        group.visititems(lambda n, o: names.append(n) if hasattr(o, "shape") else None)
    return [tensor(group[n]) for n in names]


def _read_legacy(f: Any, model: nn.Module, tensor: Read) -> tuple[dict[str, torch.Tensor], Any]:
    root = f["model_weights"] if "model_weights" in f else f
    out: dict[str, torch.Tensor] = {}
    for layer, kind, module in _layers(model):
        if layer not in root:
            raise ConversionError(f"the Keras file has no layer {layer!r}: it does not fit the model (check --model)")
        out.update(_to_ours(kind, module, _legacy_values(root[layer], tensor)))
    norm = _legacy_values(root["normalization"], tensor) if "normalization" in root else None
    return out, norm


def _read_keras3(f: Any, model: nn.Module, tensor: Read) -> tuple[dict[str, torch.Tensor], Any]:
    groups = f["layers"]
    by_kind: dict[str, list[str]] = {}
    for name in groups:
        m = re.fullmatch(r"([a-z_0-9]+?)(?:_(\d+))?", name)
        if m and "vars" in groups[name] and len(groups[name]["vars"]):
            by_kind.setdefault(m.group(1), []).append(name)
    for names in by_kind.values():
        names.sort(key=lambda n: int(n.rsplit("_", 1)[1]) if re.search(r"_\d+$", n) else 0)
    out: dict[str, torch.Tensor] = {}
    cursor = {kind: 0 for kind in by_kind}
    for layer, kind, module in _layers(model):
        if cursor.get(kind, 0) >= len(by_kind.get(kind, [])):
            raise ConversionError(
                f"the Keras 3 file has too few {kind} layers for the model (at {layer}): check --model"
            )
        group = groups[by_kind[kind][cursor[kind]]]["vars"]
        cursor[kind] += 1
        out.update(_to_ours(kind, module, [tensor(group[str(i)]) for i in range(len(group))]))
    extra = {kind: len(names) - cursor.get(kind, 0) for kind, names in by_kind.items() if kind != "normalization"}
    if any(extra.values()):
        raise ConversionError(f"the Keras 3 file has layers the model does not use ({extra}): check --model")
    norm = None
    if "normalization" in by_kind:
        group = groups[by_kind["normalization"][0]]["vars"]
        norm = [tensor(group[str(i)]) for i in range(len(group))]
    return out, norm


def _normalization(mean: list[float], var: list[float]) -> dict[str, Any]:
    """Keras computes (x / 255 - mean) / sqrt(var): timm's mean/std on [0, 1] pixels are mean and sqrt(var).

    keras.applications' ImageNet files store the std itself as the "variance" and the model divides once more
    by sqrt(std) in a Rescaling layer that is not in the file (keras-team/keras issue on EfficientNet
    normalisation); for those files the std is the stored value itself.
    """
    if all(abs(v - s) < 1e-3 for v, s in zip(var, IMAGENET_DEFAULT_STD, strict=False)) and len(var) == 3:
        std = var
    else:
        std = [v**0.5 for v in var]
    return {"mean": tuple(round(m, 6) for m in mean), "std": tuple(round(s, 6) for s in std)}


def _check_self_contained(h5py: Any, src: Path, f: Any) -> None:
    """Refuse anything that takes its bytes from outside the file, before a single value is read.

    HDF5 can point into other files (external and soft links, virtual datasets) or store a dataset's bytes in
    another file ("external storage"): a crafted .h5 would then copy a local file, byte for byte, into the
    converted weights, or hang on a FIFO. Keras never writes any of these. Links are inspected without being
    followed; hard-linked groups are visited once (they may form cycles).
    """
    seen: set = set()
    stack = [("", f)]
    while stack:
        path, group = stack.pop()
        for name in group:
            where = f"{path}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise ConversionError(
                    f"{src}: {where} is {kind}; only data stored inside the file is read (Keras writes no links), "
                    "so this file is refused"
                )
            obj = group[name]
            if isinstance(obj, h5py.Dataset):
                if obj.external or obj.is_virtual:
                    kind = "stored in another file" if obj.external else "a virtual dataset over other files"
                    raise ConversionError(
                        f"{src}: dataset {where} is {kind}; only data stored inside the file is read, so this file "
                        "is refused"
                    )
            elif isinstance(obj, h5py.Group) and obj.id not in seen:
                seen.add(obj.id)
                stack.append((where, obj))


def read(src: Path, model: nn.Module) -> Converted:
    h5py = _h5py()
    require_regular_file(src, "the Keras file")
    tensor = functools.partial(_tensor, src=src, budget=WeightsBudget.of(model))
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise ConversionError(f"{src} is not a readable HDF5 file ({e}); expected a Keras .h5 / .weights.h5") from e
    with f:
        _check_self_contained(h5py, src, f)
        keras3 = "layers" in f and "model_weights" not in f
        try:
            state, norm = (_read_keras3 if keras3 else _read_legacy)(f, model, tensor)
        except ConversionError:
            raise
        except (KeyError, TypeError, ValueError, OSError, IndexError) as e:  # h5py's and numpy's on a file that lies
            raise ConversionError(
                f"{src} is not a Keras EfficientNet weights file ({type(e).__name__}: {first_line(e)}); "
                "expected keras.applications' .h5 or a Keras 3 .weights.h5"
            ) from e
    data: dict[str, Any] = {}
    if norm is not None and len(norm) >= 2:
        data = _normalization(norm[0].flatten().double().tolist(), norm[1].flatten().double().tolist())
    kind = "Keras 3 .weights.h5" if keras3 else "legacy Keras HDF5"
    return Converted(
        state, source=f"{kind} ({src.name})", model_args={"padding": "same", "bn_eps": 1e-3}, data_config=data
    )
