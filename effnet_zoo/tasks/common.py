"""Pieces the tasks share: loading a model by any timm name, its class names, device and precision."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import timm
import torch
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from PIL import Image, UnidentifiedImageError
from timm.data.readers.reader import Reader
from timm.data.readers.reader_image_folder import ReaderImageFolder
from torch import nn

from ..hub.access import (
    HubConfigTooLarge,
    HubServerError,
    HubTimeout,
    cached_hub_file,
    check_cached_ref,
    check_hub_config_size,
    explain_hub_error,
    http_errors,
    hub_deadline,
    hub_unreachable,
    unreachable_message,
)
from ..hub.config import check_model_config, read_config_file
from ..zoo import PretrainedWeightsUnavailable

# What the Hub may answer a model load with, each explained by explain_hub_error
HUB_ERRORS = (
    EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, HubTimeout, HubServerError, HubConfigTooLarge,
    *http_errors(),
)  # fmt: skip
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def reachable_name(name: str) -> str:
    """``name`` itself, or for ``hf-hub:ID`` while the Hub cannot be reached, its cached snapshot as
    ``local-dir:``; with nothing cached, fail within seconds (huggingface_hub's retries took ~50 s). A reachable
    repo whose config.json is larger than any model config is refused before it is downloaded."""
    if os.path.isdir(name) and not name.startswith(("local-dir:", "hf-hub:")):
        return f"local-dir:{name}"
    if not name.startswith("hf-hub:"):
        return name
    repo, _, revision = name.removeprefix("hf-hub:").partition("@")
    check_cached_ref(repo, revision or None)
    if (reason := hub_unreachable()) is None:
        check_hub_config_size(repo, revision or None, f"could not load {name!r}")
        return name
    config = cached_hub_file(repo, ("config.json",), revision or None)
    if config is not None and cached_hub_file(repo, ("model.safetensors", "pytorch_model.bin"), revision or None):
        return f"local-dir:{Path(config).parent}"
    raise PretrainedWeightsUnavailable(unreachable_message(f"could not load {name!r}", reason), unreachable=reason)


def load_pretrained(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=True)`` for a registered tag, ``local-dir:DIR`` or ``hf-hub:org/name``.

    A bare folder path is accepted as ``local-dir:``, since a folder written by ``convert`` / ``finetune`` is
    what users most often have at hand.
    """
    try:
        with hub_deadline():  # one deadline for all of it: the checks here, timm's config.json and its weights
            name = reachable_name(name)
            if not name.startswith(("local-dir:", "hf-hub:")) and not timm.list_pretrained(name):
                base = name.split(".")[0]
                tags = timm.list_pretrained(f"{base}.*")
                hint = f"its tags: {', '.join(tags)}" if tags else "see `timm.list_pretrained('effnet_*')`"
                raise ValueError(
                    f"no pretrained weights are registered as {name!r}; {hint}, or pass local-dir:DIR / hf-hub:ID"
                )
            if (config := _config_file(name)) is not None and (config.exists() or config.is_symlink()):
                check_model_config(config)  # a Hub repo's too: timm reads it without checks
            return timm.create_model(name, pretrained=True, **kwargs)
    except HUB_ERRORS as e:  # checking or fetching an hf-hub: config.json
        raise PretrainedWeightsUnavailable(explain_hub_error(e, f"could not load {name!r}")) from e


def count(n: int, singular: str, plural: str | None = None) -> str:
    """'1 epoch', '10 epochs', '1 class', '2 classes'."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _config_file(name: str) -> Path | None:
    """The config.json behind a ``local-dir:`` or (fetched, size-checked first) ``hf-hub:`` name; None for a tag."""
    if name.startswith("local-dir:"):
        return Path(name.removeprefix("local-dir:")) / "config.json"
    if name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        repo, _, revision = name.removeprefix("hf-hub:").partition("@")
        return Path(hf_hub_download(repo, "config.json", revision=revision or None))
    return None


def architecture_of(name: str) -> str:
    """The registered architecture behind a model name: the name itself, or a folder's / Hub repo's config.json's.

    The name comes back unchanged when the config cannot be read here (the model's own load then explains why),
    except when the Hub is too slow or failing: the load would wait as long again.
    """
    try:
        with hub_deadline():
            config = _config_file(reachable_name(name))
            return name if config is None else str(read_config_file(config).get("architecture", name))
    except (HubTimeout, HubServerError, HubConfigTooLarge) as e:
        raise PretrainedWeightsUnavailable(explain_hub_error(e, f"could not load {name!r}")) from e
    except (
        OSError,
        ValueError,
        AttributeError,
        EntryNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        PretrainedWeightsUnavailable,
    ):
        return name


def class_ids(model: nn.Module) -> list[str] | None:
    """The model's class identifiers (its label names, or ImageNet synsets), to match dataset folders by name."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    labels = cfg.get("label_names")
    if labels and len(labels) == model.num_classes:
        return list(labels)
    subset = timm.data.infer_imagenet_subset(model)
    return list(timm.data.ImageNetInfo(subset).label_names()) if subset else None


def class_names(model: nn.Module) -> list[str]:
    """Human-readable class names: the saved descriptions, ImageNet's for synsets, else the ids or indices."""
    ids = class_ids(model)
    if ids is None:
        return [str(i) for i in range(model.num_classes)]
    descriptions = (getattr(model, "pretrained_cfg", {}) or {}).get("label_descriptions")
    if isinstance(descriptions, dict):
        return [descriptions.get(c, c) for c in ids]
    imagenet = timm.data.ImageNetInfo("imagenet-22k" if len(ids) > 1000 else "imagenet-1k")
    synsets = set(imagenet.label_names())
    return [imagenet.label_name_to_description(c) if c in synsets else c for c in ids]


# The eval transform resizes the short side to the model's input and crops the centre: beyond this ratio the
# resized image (and the memory it takes) grows with the long side while the crop sees a sliver of it.
MAX_ASPECT_RATIO = 32


def open_image(source: Path | bytes) -> Image.Image:
    """An RGB image from a file or its bytes, whatever its mode (grayscale, palette, CMYK, alpha); else a
    ValueError saying what is wrong: empty, not an image, damaged, or too large to decode safely."""
    if isinstance(source, Path) and (reason := not_an_image_file(source)):  # a FIFO would block, /dev/zero never end
        raise ValueError(reason)
    if (len(source) if isinstance(source, bytes) else source.stat().st_size) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            width, height = img.size  # from the header: nothing decoded yet
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                # PIL only warns up to twice its limit: a 16-bit image that size took 1.2 GB to decode and convert
                raise Image.DecompressionBombError(
                    f"{width}x{height} = {width * height:,} pixels, over PIL.Image.MAX_IMAGE_PIXELS "
                    f"({Image.MAX_IMAGE_PIXELS:,})"
                )
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                raise ValueError(
                    f"extreme aspect ratio ({width}x{height}, over {MAX_ASPECT_RATIO}:1): resizing its short side to "
                    "the model's input would blow its long side up to millions of pixels; crop it to the region "
                    "to classify first"
                )
            img.load()
            if img.mode.startswith("I;16") or img.mode == "I":
                return _scaled_to_8_bits(img).convert("RGB")
            return img.convert("RGB")
    except UnidentifiedImageError as e:
        raise ValueError("not an image file PIL can read") from e
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"too large to decode safely ({e}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"unreadable image ({e})") from e


def _scaled_to_8_bits(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale as 8 bits, value / 257 rounded: PIL's own convert clips everything
    above 255 (a 16-bit PNG turns white). Converted in strips of rows: with the decoded image and the RGB result,
    about 7 bytes a pixel (a whole-image float64 conversion took 17: 1.1 GB for one 8000x8000 PNG of 140 KB)."""
    import numpy as np

    values = np.asarray(img)
    gray = np.empty(values.shape, dtype=np.uint8)
    for top in range(0, values.shape[0], 256):
        rows = values[top : top + 256].astype(np.float32)
        gray[top : top + 256] = np.clip(np.rint(rows / 257.0), 0, 255)
    return Image.fromarray(gray, mode="L")


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but torch sees no CUDA device; use --device cpu")
    return dev


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision: bfloat16 autocast (needs no loss scaling), refused where bf16 is not native."""
    from ..inference import bf16_autocast

    return bf16_autocast(device) if enabled else contextlib.nullcontext()


def _walk_files(root: Path) -> list[Path]:
    """Every file below ``root``. A linked folder is followed (datasets are often class folders linked in), but
    each real folder is visited once: a folder linking to itself or its parent would never end (two such links
    hung validate), and one visited twice would count its images twice."""
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()  # which of two names for one folder is kept must not depend on the file system's order
        files += [Path(folder) / n for n in names]
    return files


# An image file larger than this is not read (its bytes are held in memory while it decodes); the largest image
# PIL decodes by default (89 M pixels) is far smaller in any compressed format
MAX_IMAGE_BYTES = 512 * 2**20


def not_an_image_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image without risk (a FIFO blocks forever, a device never ends, a huge
    file fills memory); None for a regular file of a sane size."""
    from ..weights.common import special_file

    if kind := special_file(path):
        return f"{kind}, not a regular file"
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size > MAX_IMAGE_BYTES:
        return f"{size:,} bytes, over the {MAX_IMAGE_BYTES:,} an image file is read up to"
    return None


class ImageFolderReader(ReaderImageFolder):
    """timm's image-folder reader (the same classes, labels and order), scanning safely: linked folders are
    visited once each, and files that are not regular or too large are set aside in ``unreadable`` with the
    reason instead of being opened (timm's own scan followed link loops without end and opened FIFOs)."""

    def __init__(self, root: str | Path, class_to_idx: dict[str, int] | None = None) -> None:
        from timm.data.readers.img_extensions import get_img_extensions
        from timm.utils.misc import natural_key

        Reader.__init__(self)
        extensions = get_img_extensions(as_set=True)  # timm's (.png, .jpg, .jpeg): the files timm's validate.py counts
        self.root = str(root)
        self.unreadable: list[tuple[str, str]] = []
        found: list[tuple[str, str]] = []
        for path in _walk_files(Path(root)):
            if path.suffix.lower() not in extensions:
                continue
            if reason := not_an_image_file(path):
                self.unreadable.append((str(path), reason))
                continue
            label = "" if path.parent == Path(root) else path.parent.name  # timm's leaf-folder labels
            found.append((str(path), label))
        if class_to_idx is None:
            class_to_idx = {c: i for i, c in enumerate(sorted({label for _, label in found}, key=natural_key))}
        self.class_to_idx = class_to_idx
        self.samples = sorted(
            ((f, class_to_idx[label]) for f, label in found if label in class_to_idx), key=lambda s: natural_key(s[0])
        )


def image_folder(root: str | Path, class_to_idx: dict[str, int] | None = None, load_bytes: bool = False):
    """timm's ``ImageDataset`` over ``root`` (DIR/<class>/<image>), read with :class:`ImageFolderReader`."""
    from timm.data import ImageDataset

    return ImageDataset(str(root), reader=ImageFolderReader(root, class_to_idx), load_bytes=load_bytes)


def _listed(path: Path) -> bool:
    """Whether a found entry is handed on: anything but a folder. What is not a regular file (a FIFO, a device, a
    broken link, a link this user may not even look at) is then skipped with its reason by the reader, instead of
    vanishing from the count or ending the run."""
    try:
        return not path.is_dir()
    except OSError:
        return True


class ImagePaths(torch.utils.data.Dataset):
    """A list of image files as a dataset of ``(path, -1)``: what :class:`DecodedImages` reads for ``predict``."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Path, int]:
        return self.paths[index], -1


class DecodedImages(torch.utils.data.Dataset):
    """Images decoded (in the loader's workers) from a dataset of ``(path or bytes, target)``, each returned as
    ``(tensor, target, index, reason)``: an unreadable image comes back marked with its reason, and is left out
    of the results by the caller. timm's dataset would substitute the next image, counting that one twice.

    ``indices``: which items of ``source`` this process handles (its :func:`~.distributed.shard`); ``index`` is
    the item's position in ``source``.
    """

    def __init__(
        self, source: torch.utils.data.Dataset, input_size: tuple[int, int, int], indices: range | None = None
    ) -> None:
        self.source, self.input_size = source, input_size
        self.indices = range(len(source)) if indices is None else indices
        self.transform = None  # set by timm's create_loader

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, str]:
        index = self.indices[i]
        raw, target = self.source[index]
        try:
            return self.transform(open_image(raw)), target, index, ""
        except ValueError as e:
            return torch.zeros(self.input_size), target, index, str(e)


def decoded_loader(
    source: torch.utils.data.Dataset,
    indices: range,
    model: nn.Module,
    batch_size: int,
    workers: int,
    device: torch.device,
    img_size: int | None = None,
) -> torch.utils.data.DataLoader:
    """timm's eval loader over :class:`DecodedImages` of ``source`` (the items ``indices`` names), preprocessing
    exactly as the model's ``pretrained_cfg`` says (timm's validate.py transform; ``img_size`` overrides its size),
    in order, with ``workers`` decoding processes."""
    from timm.data import create_loader, resolve_data_config

    cfg = resolve_data_config({"img_size": img_size} if img_size else {}, model=model)
    return create_loader(
        DecodedImages(source, cfg["input_size"], indices), input_size=cfg["input_size"], batch_size=batch_size,
        interpolation=cfg["interpolation"],
        mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode"),
        num_workers=workers, use_prefetcher=False, device=device, persistent_workers=False,
    )  # fmt: skip


def expand_image_paths(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively for image extensions) and glob patterns, in the order given.

    Recursive search (a folder, or ``**`` in a pattern) does not follow linked folders.
    """
    import fnmatch
    import glob

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in _walk_files(p) if _listed(f) and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            paths.append(p)
        else:
            if "**" in item:  # walk from the pattern's literal part; '**/' also matches no folder at all
                base = Path(*[part for part in p.parts[: next(i for i, x in enumerate(p.parts) if glob.has_magic(x))]])
                patterns = (item, item.replace("**/", ""))
                matches = sorted(
                    str(f) for f in _walk_files(base or Path(".")) if any(fnmatch.fnmatch(str(f), q) for q in patterns)
                )
            else:
                matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"{item!r} is not a file, a folder or a glob that matches anything")
            paths += [Path(m) for m in matches if _listed(Path(m))]
    return paths
