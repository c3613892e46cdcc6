"""INT8 ONNX: ONNX Runtime's static quantization of what ``export --format onnx`` writes, calibrated on a user's
images, then checked on images of the same folder that did not calibrate it.

The choices were measured on Lite0-2 with their real ImageNet weights (docs/performance.md, "bf16 and INT8: what
they change in the answers"): QDQ operators
(what every ONNX runtime reads), int8 weights per output channel, uint8 activations, min/max ranges. Percentile and
entropy ranges agreed with fp32 no better and took 3-4x as long to calibrate; keeping the first and last layers in
float agreed no better either (91.7% against 93.3% on Lite0) and was slower, so every layer is quantized.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .._text import printable
from ..options import MIN_CALIBRATION_IMAGES
from .common import ImagePaths, count, decoded_loader, expand_image_paths

CHECK_EVERY = 5  # every 5th image of the folder checks the INT8 model; the others calibrate it
BATCH = 8
# ORT's calibration keeps every layer's output of every batch until it reduces them: B0 at 224 holds ~50 MB per
# image, so the ranges are merged every few batches
MERGE_EVERY = 4


@dataclass
class Agreement:
    """How the INT8 model agrees with the fp32 eager model on the check images."""

    images: int
    top1: float  # fraction of images whose top class is the same
    mean_prob_change: float  # mean |change| of the probability of fp32's top class


def split_images(folder: str, limit: int) -> tuple[list[Path], list[Path]]:
    """At most ``limit`` calibration images and as many check images from ``folder``, spread over its listing."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--int8 {printable(folder)} is not a folder; give a folder of images like the ones "
                                "the model will see (a few hundred is plenty)")  # fmt: skip
    paths = expand_image_paths([folder])
    check = paths[CHECK_EVERY - 1 :: CHECK_EVERY]
    calibrate = [p for i, p in enumerate(paths) if i % CHECK_EVERY != CHECK_EVERY - 1]
    if len(calibrate) < MIN_CALIBRATION_IMAGES:
        needed = MIN_CALIBRATION_IMAGES + (MIN_CALIBRATION_IMAGES - 1) // (CHECK_EVERY - 1)
        raise ValueError(
            f"--int8 {printable(folder)} has {count(len(paths), 'image file')}; calibration needs at least {needed} "
            f"(every {CHECK_EVERY}th is kept back to check the result): add images like the ones the model will see"
        )
    return _spread(calibrate, limit), _spread(check, limit)


def _spread(paths: list[Path], limit: int) -> list[Path]:
    """At most ``limit`` of ``paths``, evenly spaced (a folder's listing is sorted, often by class or date)."""
    return paths if len(paths) <= limit else [paths[i * len(paths) // limit] for i in range(limit)]


def image_batches(model: torch.nn.Module, paths: list[Path], img_size: int | None) -> Iterator[torch.Tensor]:
    """The readable images of ``paths``, preprocessed as the model's pretrained_cfg says, in batches."""
    loader = decoded_loader(ImagePaths(paths), range(len(paths)), model, BATCH, 0, torch.device("cpu"), img_size)
    for images, _, _, reasons in loader:
        readable = [n for n, why in enumerate(reasons) if not why]
        if readable:
            yield images[readable]


def quantize_onnx(src: Path, dst: Path, batches: Iterable[torch.Tensor]) -> int:
    """Write the INT8 model of the fp32 ONNX file ``src`` to ``dst``, calibrated on ``batches``; how many images
    calibrated it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    read = 0
    batches = iter(batches)
    first = next(batches, None)
    if first is None:  # ONNX Runtime would say only "No data is collected."
        raise ValueError("none of the calibration images could be read; give --int8 a folder of readable images")
    batches = itertools.chain([first], batches)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = batches

        def get_next(self) -> dict | None:
            nonlocal read
            batch = next(self.batches, None)
            if batch is None:
                return None
            read += len(batch)
            return {"x": batch.numpy()}

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))  # shapes inferred and the graph folded, as ORT recommends
        quantize_static(
            str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMaxIntermediateOutputs": MERGE_EVERY},
        )  # fmt: skip
    return read


def top1_changes(ref: torch.Tensor, got: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of probabilities ``got`` against ``ref`` ([N, classes]): whether the top class is the same, and
    how much the probability of ``ref``'s top class moved."""
    top = ref.argmax(-1)
    return got.argmax(-1) == top, (got.gather(1, top[:, None]) - ref.gather(1, top[:, None])).abs().squeeze(1)


def agreement(model: torch.nn.Module, run_onnx, images: list[Path], img_size: int | None) -> Agreement:
    """Top-1 agreement of ``run_onnx`` (a function of a batch) with the fp32 eager ``model`` on ``images``."""
    same = seen = 0
    change = 0.0
    with torch.no_grad():
        for batch in image_batches(model, images, img_size):
            kept, moved = top1_changes(model(batch).float().softmax(-1), run_onnx(batch).float().softmax(-1))
            same += int(kept.sum())
            change += float(moved.sum())
            seen += len(batch)
    return Agreement(seen, same / seen if seen else math.nan, change / seen if seen else math.nan)
