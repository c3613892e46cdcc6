"""Top-1 / top-5 over an image folder, with timm's dataset, loader and eval transform (timm's validate.py numbers)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .._text import printable
from .common import autocast, class_ids, count, decoded_loader, image_folder, load_pretrained
from .distributed import Dist, shard


@dataclass
class ValidateResult:
    model: str
    data: str
    num_images: int
    top1: float  # percent
    top5: float | None  # None for 5 classes or fewer, where every image is in the top 5
    loss: float
    img_per_s: float
    device: str
    amp: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): unreadable, not counted

    def to_json(self) -> dict:
        return asdict(self)


def folder_class_map(folder_classes: list[str], model: torch.nn.Module) -> list[int]:
    """For each folder class (sorted as the dataset indexes them), the model output that means it.

    Folders named like the model's classes (ImageNet synsets for ImageNet models, or the labels a fine-tuned
    model was saved with) are matched by name, so a subset of ImageNet's classes works. When no folder names one
    of its classes, folders exactly as many as the model's outputs are taken in sorted order, with a warning
    that says so; some folders named and others not is refused (taking them in order scored a folder named after
    one class against another).
    """
    ids = class_ids(model)
    named = [c for c in folder_classes if ids is not None and c in ids]
    if ids is not None and len(named) == len(folder_classes):
        index = {c: i for i, c in enumerate(ids)}
        return [index[c] for c in folder_classes]
    unnamed = [c for c in folder_classes if c not in named]
    if named:
        raise ValueError(
            f"{len(unnamed)} of the {len(folder_classes)} class folders do not name a class of the model "
            f"({', '.join(map(repr, unnamed[:5]))}{', ...' if len(unnamed) > 5 else ''}) while "
            f"{', '.join(map(repr, named[:3]))}{' ...' if len(named) > 3 else ''} do: rename or remove them, so "
            "that every folder is scored against the class it names"
        )
    if len(folder_classes) == model.num_classes:
        if ids is not None:
            shown = ", ".join(f"{c!r} as {ids[i]!r}" for i, c in enumerate(folder_classes[:3]))
            warnings.warn(
                f"no class folder is named after one of the model's classes; the {len(folder_classes)} folders are "
                f"taken in sorted order as its outputs ({shown}{', ...' if len(folder_classes) > 3 else ''})",
                stacklevel=2,
            )
        return list(range(model.num_classes))
    known = f" (first model classes: {ids[:3]})" if ids else ""
    raise ValueError(
        f"the folder has {len(folder_classes)} class folders ({', '.join(map(repr, folder_classes[:3]))}"
        f"{', ...' if len(folder_classes) > 3 else ''}) that do not name the model's classes{known}, and the model "
        f"has {model.num_classes} outputs; name the folders after the model's classes (e.g. ImageNet synsets like "
        "n01440764) or use a model fine-tuned on these classes"
    )


def validate(
    data: str,
    model_name: str,
    batch_size: int = 64,
    amp: bool = False,
    channels_last: bool = False,
    device: str | None = None,
    workers: int = 2,
    progress: bool = True,
    on_skip: Callable[[Path, Exception], None] | None = None,
) -> ValidateResult:
    """Top-1 / top-5 of ``model_name`` over ``data``; under torchrun each rank scores its share of the images
    (each image once) and the counts are summed, so every rank returns what one process would."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data!r} is not a folder; expected DIR/<class>/<image> (an ImageFolder)")
    env = Dist(device)
    try:
        return _validate(root, data, model_name, batch_size, amp, channels_last, env, workers, progress, on_skip)
    finally:
        env.close()


def _validate(
    root: Path, data: str, model_name: str, batch_size: int, amp: bool, channels_last: bool, env: Dist, workers: int,
    progress: bool, on_skip: Callable[[Path, Exception], None] | None,
) -> ValidateResult:  # fmt: skip
    dev = env.device
    if amp:
        autocast(dev, amp)  # refused where bf16 is not native, before the model loads
    model = load_pretrained(model_name).eval().to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    files = image_folder(root, load_bytes=True)
    if len(files) == 0:
        raise ValueError(f"no images found under {data!r}; expected DIR/<class>/<image>")
    env.check_same_files([f for f, _ in files.reader.samples], f"images under {data!r}")
    skipped: list[tuple[str, str]] = []
    if env.main:
        for path, reason in files.reader.unreadable:  # FIFOs, devices, huge files: never opened
            skipped.append((path, reason))
            if on_skip:
                on_skip(Path(path), ValueError(reason))
    target_map = torch.tensor(folder_class_map(list(files.reader.class_to_idx), model), device=dev)
    loader = decoded_loader(files, shard(len(files), env.rank, env.world), model, batch_size, workers, dev)
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for images, targets, indices, reasons in tqdm(loader, desc=f"validate {printable(model_name)}", unit="batch",
                                                      disable=not (progress and env.main)):  # fmt: skip
            for index, reason in zip(indices.tolist(), reasons, strict=True):
                if reason:
                    path = Path(files.reader.filename(index, absolute=True))
                    skipped.append((str(path), reason))
                    if on_skip and env.main:  # another rank's line would land on rank 0's bar: reported below
                        on_skip(path, ValueError(reason))
            readable = torch.tensor([not r for r in reasons])
            if not readable.any():
                continue
            images, targets = images[readable], targets[readable]
            images = images.to(dev)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = target_map[targets.to(dev)]
            with autocast(dev, amp):
                logits = model(images)
            logits = logits.float()
            loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hits = top5 == targets[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(-1).sum().item()
            seen += targets.numel()
    elapsed = time.perf_counter() - start
    correct1, correct5, seen, loss_sum = env.sum([correct1, correct5, seen, loss_sum])
    elapsed = max(env.gather(elapsed) or [elapsed])  # rank 0: the slowest rank's time
    parts = env.gather(skipped) or [skipped]
    if on_skip and env.main:
        for path, reason in (s for part in parts[1:] for s in part):
            on_skip(Path(path), ValueError(reason))
    skipped = [s for part in parts for s in part]
    if seen == 0:
        raise ValueError(f"none of the {len(files)} files under {data!r} is a readable image")
    return ValidateResult(
        model=model_name, data=str(root), num_images=int(seen), top1=100.0 * correct1 / seen,
        top5=100.0 * correct5 / seen if model.num_classes > 5 else None,
        loss=loss_sum / seen, img_per_s=seen / elapsed, device=str(dev), amp=amp, skipped=skipped,
    )  # fmt: skip


def format_result(r: ValidateResult) -> str:
    return (
        f"{r.model} on {r.data}: top-1 {r.top1:.3f}%  "
        + (f"top-5 {r.top5:.3f}%  " if r.top5 is not None else "")
        + f"loss {r.loss:.4f}  "
        f"({count(r.num_images, 'image')}, {r.img_per_s:.1f} img/s on {r.device}{', bf16 autocast' if r.amp else ''})"
        + (f"; {count(len(r.skipped), 'unreadable file')} skipped, not counted" if r.skipped else "")
    )


__all__ = ["ValidateResult", "validate", "format_result", "folder_class_map"]
