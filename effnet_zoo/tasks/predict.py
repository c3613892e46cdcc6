"""Classify images with any pretrained model, preprocessing exactly as its ``pretrained_cfg`` says."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from tqdm import tqdm

from .._text import printable
from .common import class_names, expand_image_paths, load_pretrained, open_image, resolve_device


@dataclass
class Prediction:
    path: str
    top: list[tuple[int, str, float]]  # (class index, name, probability)


@dataclass
class PredictResult:
    model: str
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "predictions": [
                {"path": p.path, "top": [{"index": i, "label": n, "probability": round(pr, 6)} for i, n, pr in p.top]}
                for p in self.predictions
            ],
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
        }


def predict(
    inputs: list[str],
    model_name: str = "effnet_v1_b0.aa_in1k",
    topk: int = 5,
    batch_size: int = 16,
    device: str | None = None,
    on_skip=None,
) -> PredictResult:
    """Top-k classes of every image in ``inputs`` (files, folders, globs); unreadable files are skipped."""
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    paths = expand_image_paths(inputs)
    if not paths:
        raise FileNotFoundError(f"no image files found in {inputs}")
    dev = resolve_device(device)
    model = load_pretrained(model_name).eval().to(dev)
    return classify(model, model_name, paths, topk, batch_size, on_skip)


def classify(
    model: torch.nn.Module, model_name: str, paths: list[Path], topk: int = 5, batch_size: int = 16, on_skip=None
) -> PredictResult:
    """Top-k classes of each image with a loaded model, preprocessed as its ``pretrained_cfg`` says."""
    dev = next(model.parameters()).device
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    names = class_names(model)
    k = min(topk, model.num_classes)
    result = PredictResult(model=model_name)
    for start in range(0, len(paths), batch_size):
        batch, kept = [], []
        for path in paths[start : start + batch_size]:
            try:
                batch.append(transform(open_image(path)))
                kept.append(path)
            except ValueError as e:
                result.skipped.append((str(path), str(e)))
                if on_skip:
                    on_skip(path, e)
        if not batch:
            continue
        with torch.inference_mode():
            probs = model(torch.stack(batch).to(dev)).float().softmax(-1)
        values, indices = probs.topk(k, dim=-1)
        for path, v, i in zip(kept, values.tolist(), indices.tolist(), strict=True):
            result.predictions.append(Prediction(str(path), [(c, names[c], p) for c, p in zip(i, v, strict=True)]))
    return result


def format_result(result: PredictResult) -> str:
    lines = []
    for p in result.predictions:
        lines.append(printable(p.path))
        lines += [f"  {prob:7.2%}  {printable(name)}  ({idx})" for idx, name, prob in p.top]
    return "\n".join(lines)


def report_skip(path: Path, error: Exception) -> None:
    """One line on stderr, above any progress bar rather than onto it."""
    tqdm.write(f"effnet-zoo: skipped {printable(str(path))}: {printable(str(error))}", file=sys.stderr)
