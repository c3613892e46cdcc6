"""Reading PyTorch-side checkpoint files safely: safetensors, or ``torch.load(weights_only=True)``.

safetensors carries no checksum, so a flipped bit in tensor data loads silently. Every file effnet_zoo writes
records a CRC32C of its tensors in the safetensors metadata (``effnet_zoo.crc32c``), and every load through
effnet_zoo (``convert``, ``pretrained=True`` from ``local-dir:``, ``hf-hub:`` or a file) checks it.
"""

from __future__ import annotations

import json
import pickle
import re
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import google_crc32c
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .common import ConversionError, require_regular_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module")
DIGEST_KEY = "effnet_zoo.crc32c"
REDO = "delete it and download or convert it again"


class CorruptWeightsError(ConversionError):
    """A weights file that is truncated, damaged, or fails its recorded checksum."""


def unreadable_safetensors(path: str | Path, error: Exception) -> CorruptWeightsError:
    return CorruptWeightsError(f"{path} is not a valid safetensors file, truncated or damaged ({error}); {REDO}")


def torch_load_error(path: str | Path, error: BaseException, redo: str = REDO) -> ConversionError:
    """Our error for what ``torch.load(weights_only=True)`` raised: a refused pickle, or a damaged file."""
    cause = error if isinstance(error, pickle.UnpicklingError) else error.__cause__
    # torch's message is paragraphs long; the line after "WeightsUnpickler error:" says what it met
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(cause)) if cause is not None else None
    if detail and "allowed global" in detail.group(1):  # a GLOBAL: code to run or an object to build
        return refused_pickle(path, detail.group(1).split(". ")[0])
    first = detail.group(1) if detail else str(error).splitlines()[0] if str(error) else ""
    return CorruptWeightsError(
        f"{path} is not a readable PyTorch checkpoint, truncated or damaged ({type(error).__name__}: {first}); {redo}"
    )


def raised_by_torch_load(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) came out of torch's checkpoint reading code."""
    for e in (error, error.__cause__):
        frames = traceback.extract_tb(e.__traceback__) if e is not None else []
        if any(Path(f.filename).name in ("serialization.py", "_weights_only_unpickler.py") for f in frames):
            return True
    return False


def refused_pickle(path: str | Path, what: str) -> ConversionError:
    return ConversionError(
        f"refused to load {path}: it is a pickle that asks to run code or build objects beyond plain tensors "
        f"({what}). Nothing from it was executed. If you trust its origin, re-save it as a "
        "plain state_dict (torch.save(model.state_dict(), ...)) or as safetensors"
    )


def tensors_digest(state: Mapping[str, torch.Tensor]) -> str:
    """CRC32C over every tensor's name, dtype, shape and bytes, in key order (hex)."""
    crc = 0
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        crc = google_crc32c.extend(crc, f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        crc = google_crc32c.extend(crc, t.reshape(-1).view(torch.uint8).numpy())
    return f"{crc:08x}"


def verify_digest(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Check ``state`` (as loaded from the safetensors file ``path``) against the digest the file records."""
    try:
        with safe_open(str(path), "pt") as f:
            expected = (f.metadata() or {}).get(DIGEST_KEY)
    except (SafetensorError, OSError) as e:
        raise unreadable_safetensors(path, e) from e
    if expected is not None and tensors_digest(state) != expected:
        raise CorruptWeightsError(
            f"{path} fails its checksum (recorded {DIGEST_KEY} {expected}): its tensor data is damaged; {REDO}"
        )


def find_weights(src: Path) -> Path:
    if src.is_dir():
        for name in WEIGHT_FILES:
            require_regular_file(src / name, "the weights file")
            if (src / name).is_file():
                return src / name
        candidates = sorted(
            p for suffix in ("safetensors", "pth", "bin", "pt") for p in src.glob(f"*.{suffix}") if p.is_file()
        )
        if len(candidates) != 1:
            raise ConversionError(
                f"{src} should hold one weights file (.safetensors/.pth/.bin); found {len(candidates)}"
            )
        return candidates[0]
    require_regular_file(src, "the weights file")
    if not src.is_file():
        raise ConversionError(f"{src} does not exist")
    return src


def read_config(src: Path) -> dict[str, Any]:
    """The ``config.json`` beside the weights (timm / transformers folders), or {}."""
    folder = src if src.is_dir() else src.parent
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from e


def load_state_dict(src: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors / pickle checkpoint; a pickle that wants to run code is refused, unexecuted."""
    path = find_weights(src)
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise unreadable_safetensors(path, e) from e
        verify_digest(state, path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # on bytes that are no checkpoint, torch.load raises anything (IndexError, KeyError...)
            raise torch_load_error(path, e) from e
    return unwrap(state, path)


def unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """Training checkpoints nest the weights (``{'state_dict': ...}``); DDP prefixes keys with ``module.``."""
    for _ in range(3):
        if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in _CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} holds no state_dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state
