"""What every format mapping shares: the result type, tensor layout transforms, and a checked load."""

from __future__ import annotations

import functools
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import all_finite

BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


class ConversionError(ValueError):
    """A source checkpoint that cannot become the requested model; the message says why and what to do."""


class CorruptWeightsError(ConversionError):
    """A weights file that is truncated, damaged or fails its checksum, or that was refused unread (a pickle that
    runs code, sizes no checkpoint of the model has): the file itself is the problem, so no other variant is tried
    on it."""


# What a checkpoint of one model may declare, checked before anything is allocated (docs/reliability.md): four
# float32 copies of the model's tensors (weights, EMA and Adam's two moments; or two float64 copies), the
# classifier counted with up to BUDGET_CLASSES classes (ImageNet-21k's 21,843 is the largest label set EfficientNet
# weights are published for), plus BUDGET_SLACK for the pickle, zip and HDF5 bookkeeping around the tensors.
BUDGET_COPIES = 4
BUDGET_CLASSES = 21843
BUDGET_SLACK = 16 << 20


@dataclass
class WeightsBudget:
    """The bytes one read of a checkpoint may allocate, from the model it is read for (a meta-device skeleton
    will do): every reader counts what a file declares here *before* reading it, so a 6 MB zip or a 7 KB HDF5
    file that declares gigabytes is refused unread instead of exhausting memory."""

    limit: float
    model: str
    used: int = 0

    @classmethod
    def of(cls, model: nn.Module) -> WeightsBudget:
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        body = sum(t.numel() for k, t in model.state_dict().items() if not k.startswith("classifier."))
        head = (getattr(model, "num_features", 0) + 1) * max(getattr(model, "num_classes", 0) or 0, BUDGET_CLASSES)
        return cls(BUDGET_COPIES * 4 * (body + head) + BUDGET_SLACK, name)

    def take(self, path: str | Path, nbytes: int, what: str) -> None:
        """Count ``nbytes`` that reading ``what`` of ``path`` is about to allocate; refuse past the limit."""
        self.used += nbytes
        if self.used > self.limit:
            raise CorruptWeightsError(
                f"refused to read {path}: {what} would bring what it declares to {self.used:,} bytes, more than a "
                f"checkpoint of {self.model} holds (at most {self.limit:,}: {BUDGET_COPIES} float32 copies of its "
                f"tensors with a head of up to {BUDGET_CLASSES:,} classes). It is a checkpoint of a larger model "
                "(check --model) or a file built to exhaust memory; nothing more was read"
            )


@dataclass
class Converted:
    """A source checkpoint mapped onto our key names, plus what the source implies about the model."""

    state_dict: dict[str, torch.Tensor]
    source: str  # e.g. "TensorFlow checkpoint efficientnet-b0 (ExponentialMovingAverage weights)"
    model_args: dict[str, Any] = field(default_factory=dict)  # e.g. padding / bn_eps the source computed with
    data_config: dict[str, Any] = field(default_factory=dict)  # e.g. mean / std the source was trained with
    label_names: list[str] | None = None


def block_prefixes(model: nn.Module) -> list[str]:
    """``blocks.S.B`` of every MBConv block, in network order (sources that number blocks flat map onto these)."""
    return [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]


def block_expands(model: nn.Module, prefix: str) -> bool:
    return model.get_submodule(prefix).expand is not None


def conv_from_tf(kernel: torch.Tensor) -> torch.Tensor:
    """TF conv kernel [kh, kw, in, out] -> PyTorch [out, in, kh, kw]."""
    return kernel.permute(3, 2, 0, 1).contiguous()


def depthwise_from_tf(kernel: torch.Tensor) -> torch.Tensor:
    """TF depthwise kernel [kh, kw, C, 1] -> PyTorch grouped conv [C, 1, kh, kw]."""
    return kernel.permute(2, 3, 0, 1).contiguous()


def dense_from_tf(kernel: torch.Tensor) -> torch.Tensor:
    """TF dense kernel [in, out] -> PyTorch linear [out, in]."""
    return kernel.t().contiguous()


def shapes_of(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


# The tensors the stem's input channels and the number of classes are read from (timm adapts both after the
# checks), by key in our layout and timm's: any other rank crashed with IndexError deep inside.
RANKS = {
    "stem.conv.weight": (4, "stem convolution weight"),
    "conv_stem.weight": (4, "stem convolution weight"),
    "classifier.weight": (2, "classifier weight"),
    "classifier.bias": (1, "classifier bias"),
}


def check_ranks(shapes: Mapping[str, tuple[int, ...]], source: str | Path) -> None:
    """Raise :class:`CorruptWeightsError` naming the key if a stem or classifier tensor has the wrong rank (no
    variant can fit it, so none is tried)."""
    for key, (rank, role) in RANKS.items():
        if key in shapes and len(shapes[key]) != rank:
            raise CorruptWeightsError(
                f"{source}: {key} has shape {list(shapes[key])}, {len(shapes[key])}-D, but an EfficientNet "
                f"{role} is {rank}-D; the file is damaged or not an EfficientNet checkpoint"
            )


def check_fits(
    model: nn.Module, state_dict: dict[str, torch.Tensor], model_name: str, skip: tuple[str, ...] = ()
) -> None:
    """Raise :class:`ConversionError` unless every key and shape matches (keys starting with ``skip`` aside).

    The message lists the first differences and names the registered variant the checkpoint does fit.
    """
    given = shapes_of(state_dict)
    check_ranks(given, "the checkpoint")
    expected = {k: s for k, s in shapes_of(model.state_dict()).items() if not k.startswith(skip)}
    problems = [f"missing {k} {list(s)}" for k, s in expected.items() if k not in given]
    problems += [f"unexpected {k} {list(s)}" for k, s in given.items() if k not in expected and not k.startswith(skip)]
    problems += [
        f"{k}: checkpoint {list(given[k])} vs model {list(s)}"
        for k, s in expected.items()
        if k in given and given[k] != s
    ]
    if problems:
        hint = suggest_model(given)
        raise ConversionError(
            f"the checkpoint does not fit {model_name} ({len(problems)} differences; first: "
            + "; ".join(problems[:5])
            + ")"
            + (
                fits_hint(hint, model_name)
                if hint
                else ". Check the model name (--model) and the source format (--from)"
            )
        )


def fits_hint(arch: str, asked: str = "") -> str:
    """The sentence that names the variant a mismatching checkpoint does fit (``asked``: the model the caller
    named, when its own arguments, not its name, are what differ)."""
    if arch == asked.split(".", 1)[0]:
        return (f". It fits {arch} with that variant's own arguments: leave out the arguments that change its "
                "shape (width_mult, depth_mult, se_ratio, ...; --model-arg on the command line)")  # fmt: skip
    return f". It fits {arch}: create_model('{arch}', ...), or --model {arch} on the command line"


def special_file(path: Path) -> str | None:
    """What ``path`` is if it exists and is not a regular file (after links): 'a FIFO', 'a device', ...; else None.

    Reading a FIFO blocks forever and a device such as /dev/zero never ends: weights come from regular files only.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken link" if path.is_symlink() else None
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def require_regular_file(path: Path, what: str) -> None:
    """Raise :class:`ConversionError` if ``path`` exists but is not a regular file (nothing is opened)."""
    if kind := special_file(path):
        raise ConversionError(f"{what} {path} is {kind}, not a regular file: weights are read from regular files only")


def check_values(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights that can only give nonsense: NaN/Inf values, or integer / bool tensors where floats belong
    (cast silently, they predict with 100% confidence). BatchNorm's ``num_batches_tracked`` is an integer."""
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and not v.is_meta}
    wrong = [f"{k} ({v.dtype})" for k, v in tensors.items() if not v.is_floating_point() and "num_batches" not in k]
    if wrong:
        raise ConversionError(
            f"{source}: {len(wrong)} weight tensors are not floating point (first: {', '.join(wrong[:3])}); "
            "EfficientNet weights are float16 / bfloat16 / float32 / float64, so the file is damaged or not weights"
        )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not all_finite(v)]
    if bad:
        raise ConversionError(
            f"{source}: {len(bad)} weight tensors hold NaN or Inf (first: {', '.join(bad[:3])}); a model with them "
            "predicts NaN. Convert or download the weights again from a healthy checkpoint"
        )


def load_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], model_name: str) -> None:
    """Load strictly; on any mismatch, list the first differences and suggest the variant that fits."""
    check_fits(model, state_dict, model_name)
    check_values(state_dict, "the checkpoint")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in model.state_dict()}, strict=False)


@functools.cache
def _variant_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    import timm

    with torch.device("meta"):
        return shapes_of(timm.create_model(arch).state_dict())


def fits(arch: str, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether ``arch``, with some num_classes and in_chans (both >= 1), has exactly these shapes.

    Any shapes at all get an answer: the variant's own (built once, on the meta device) are compared key by key.
    """
    own = _variant_shapes(arch)
    if shapes.keys() != own.keys():
        return False
    head, stem = shapes["classifier.weight"], shapes["stem.conv.weight"]
    if len(head) != 2 or len(stem) != 4 or head[0] < 1 or stem[1] < 1:
        return False
    sized = {  # the head's rows and the stem's input channels are the caller's to choose
        **own,
        "classifier.weight": (head[0], *own["classifier.weight"][1:]),
        "classifier.bias": (head[0],),
        "stem.conv.weight": (own["stem.conv.weight"][0], stem[1], *own["stem.conv.weight"][2:]),
    }
    return dict(shapes) == sized


def suggest_model(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The registered variant whose every parameter shape matches."""
    import timm

    return next((a for a in timm.list_models("effnet_*") if a != "effnet_v1_phi" and fits(a, shapes)), None)


def map_modules(state_dict: dict[str, torch.Tensor], pairs: list[tuple[str, str]], fmt: str) -> dict[str, torch.Tensor]:
    """Rename ``<source module>.<param>`` to ``<our module>.<param>`` for (source module, our module) pairs."""
    table = dict(pairs)
    out, unknown = {}, []
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in table:
            out[f"{table[module]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} keys are not part of an EfficientNet of this size in the {fmt} layout (first: "
            f"{unknown[:3]}); "
            "check --from and --model"
        )
    return out


def block_pairs(model: nn.Module, source_prefixes: list[str], expanding: dict[str, str], plain: dict[str, str]):
    """Module pairs for every block: ``source_prefixes[i]`` is block i; sub-module names differ by expansion."""
    prefixes = block_prefixes(model)
    if len(source_prefixes) != len(prefixes):
        raise ConversionError(
            f"the checkpoint has {len(source_prefixes)} blocks but the model has {len(prefixes)}: check --model"
        )
    pairs = []
    for src, ours in zip(source_prefixes, prefixes, strict=True):
        table = expanding if block_expands(model, ours) else plain
        pairs += [(f"{src}.{a}", f"{ours}.{b}") for a, b in table.items()]
    return pairs
