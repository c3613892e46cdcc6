"""Reading PyTorch-side checkpoint files safely: safetensors, or ``torch.load(weights_only=True)``.

safetensors carries no checksum, so a flipped bit in tensor data loads silently. Every file effnet_zoo writes
records a CRC32C of its tensors in the safetensors metadata (``effnet_zoo.crc32c``), and every load through
effnet_zoo (``convert``, ``pretrained=True`` from ``local-dir:``, ``hf-hub:`` or a file) checks it.

Before torch, timm or safetensors opens a file, :func:`check_weights_file` reads what it declares (the zip
directory, the pickle's opcodes, the file's size) without running or allocating any of it: a pickle that imports
anything beyond tensors is refused as code, and sizes beyond the model's :class:`WeightsBudget` as a bomb.
"""

from __future__ import annotations

import argparse
import copyreg
import math
import pickle
import pickletools
import re
import traceback
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import google_crc32c
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .common import ConversionError, CorruptWeightsError, WeightsBudget, require_regular_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module")
DIGEST_KEY = "effnet_zoo.crc32c"
MAX_SAFETENSORS_HEADER = 4 * 2**20  # EfficientNet-L2's ~1,700 tensors take about 200 KB
REDO = "delete it and download or convert it again"
# Beyond torch's own allow-list: timm's training checkpoints keep their arguments in a Namespace, and timm's loader
# allows it too (an attribute bag: building one runs nothing)
SAFE_GLOBALS = [argparse.Namespace]
ZIP_MAGIC = b"PK\x03\x04"  # what torch.load tells its zip format from the legacy one by
# torch.save stores zip members uncompressed and float weights deflate under 2x: a member that inflates more than
# this (and past 1 MiB) holds little but repetition, which is what a zip bomb is made of
MAX_INFLATION = 100
LEGACY_PICKLES = 5  # a legacy file: magic number, protocol, sys_info, the object, storage keys; then raw bytes


def unreadable_safetensors(path: str | Path, error: Exception) -> CorruptWeightsError:
    return CorruptWeightsError(f"{path} is not a valid safetensors file, truncated or damaged ({error}); {REDO}")


# Sentences of torch's and timm's messages that advise loading with weights_only=False or allow-listing what was
# refused: for a file nobody vouched for, that is advice to run whatever code it holds. Never relayed.
_ADVICE = re.compile(r"weights.only|safe_globals|trust|arbitrary code|file an issue|documentation", re.IGNORECASE)


def torch_says(error: BaseException) -> str:
    """What torch (or timm around it) said went wrong, in a sentence or two, without its advice (``_ADVICE``)."""
    sentences = re.split(r"(?<=[.!?:])\s+|\n+", str(error.__cause__ or error))  # timm wraps torch's error
    return " ".join(s.strip() for s in sentences if s.strip() and not _ADVICE.search(s)).strip()[:300]


def torch_load_error(path: str | Path, error: BaseException, redo: str = REDO) -> ConversionError:
    """Our error for what ``torch.load(weights_only=True)`` raised: a refused pickle, or a damaged file."""
    said = torch_says(error)
    if imported := re.search(r"GLOBAL (\S+)", said):  # an import torch refused: code to run or an object to build
        return refused_pickle(path, f"it imports {imported.group(1)}")
    return CorruptWeightsError(
        f"{path} is not a readable PyTorch checkpoint, truncated or damaged ({type(error).__name__}"
        + (f": {said}" if said else "")
        + f"); {redo}"
    )


def raised_by_torch_load(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) came out of torch's checkpoint reading code."""
    for e in (error, error.__cause__):
        frames = traceback.extract_tb(e.__traceback__) if e is not None else []
        if any(Path(f.filename).name in ("serialization.py", "_weights_only_unpickler.py") for f in frames):
            return True
    return False


def refused_pickle(path: str | Path, what: str) -> CorruptWeightsError:
    return CorruptWeightsError(
        f"refused to load {path}: it is a pickle that holds code to run or objects beyond plain tensors "
        f"({what}). Nothing from it was executed. Ask its source for the weights as safetensors or as a plain "
        "state_dict (torch.save(model.state_dict(), ...))"
    )


def _tensor_globals() -> set[str]:
    """What ``torch.load(weights_only=True)`` may import: torch's allow-list, what was added to it, and ours."""
    from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals

    ours = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    return {*_get_allowed_globals(), *_get_user_allowed_globals(), *ours}


def _qualified(module: str, name: str) -> str:
    """``module.name`` as torch's unpickler resolves it (Python 2 names mapped as pickle does)."""
    module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
    return f"{module}.{name}"


_PUSH_STRING = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}


def pickle_imports(stream: IO[bytes]) -> Iterator[str]:
    """Every global the pickle at ``stream``'s position imports, from its opcodes, without running any.

    Imports are the only way a pickle reaches code (REDUCE, NEWOBJ, OBJ, INST and BUILD call what was imported):
    GLOBAL and INST name it, EXT1/2/4 through copyreg's registry, and STACK_GLOBAL from the two strings on the
    stack, which are followed through the memo; one built any other way yields a description instead of a name,
    which is in no allow-list. Reads stop at the pickle's STOP; a malformed pickle raises ValueError.
    """
    memo: dict[int, Any] = {}
    top: list[Any] = []  # what each step left on top of the stack, where a string (else None)
    for op, arg, _ in pickletools.genops(stream):
        kind = op.name
        if kind in ("GLOBAL", "INST"):
            yield _qualified(*arg.split(" ", 1))
        elif kind == "STACK_GLOBAL":
            operands = top[-2:]
            named = len(operands) == 2 and all(isinstance(x, str) for x in operands)
            yield _qualified(*operands) if named else "an import STACK_GLOBAL assembles at run time"
        elif kind.startswith("EXT"):
            registered = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
            yield _qualified(*registered) if registered else f"unregistered extension code {arg}"
        if kind in _PUSH_STRING:
            top.append(arg)
        elif kind in _MEMO_GET:
            top.append(memo.get(arg))
        elif kind in _MEMO_PUT or kind == "MEMOIZE":  # stores the top, leaves the stack as it is
            memo[len(memo) if kind == "MEMOIZE" else arg] = top[-1] if top else None
        elif kind not in ("FRAME", "PROTO"):
            top.append(None)
        del top[:-2]


def _check_pickle(path: Path, stream: IO[bytes], allowed: set[str]) -> None:
    for name in pickle_imports(stream):
        if name not in allowed:
            raise refused_pickle(path, f"it imports {name}")


# Bytes per element of the storage types a legacy checkpoint names (torch.FloatStorage & co.)
STORAGE_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8, "IntStorage": 4,
    "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1, "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
}  # fmt: skip


class _StandIn:
    """What every import of a checked pickle becomes while its storages are counted: accepts any construction,
    state, items; holds nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageSizer(pickle.Unpickler):
    """Unpickles a legacy checkpoint's object with stand-ins for its (already allow-listed) imports, collecting
    the bytes each storage declares (``('storage', type, key, location, numel, ...)``) without allocating any."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(stream)
        self.declared: dict[Any, int] = {}

    def find_class(self, module: str, name: str) -> type:
        return type(name, (_StandIn,), {})

    def persistent_load(self, pid: Any) -> _StandIn:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            kind, key, numel = pid[1], pid[2], pid[4]
            size = STORAGE_ITEMSIZE.get(getattr(kind, "__name__", ""), 16)  # the widest, when unknown
            if not isinstance(numel, int) or numel < 0:
                raise ValueError(f"a storage declares {numel!r} elements")
            self.declared[key if isinstance(key, (str, int)) else repr(key)] = numel * size
        return _StandIn()


def _legacy_storage_bytes(stream: IO[bytes]) -> dict[Any, int]:
    """Bytes per storage key that the pickle at ``stream``'s position declares (a legacy torch file)."""
    sizer = _StorageSizer(stream)
    sizer.load()
    return sizer.declared


def _check_zip(path: Path, f: IO[bytes], budget: WeightsBudget, allowed: set[str]) -> None:
    """torch's zip format: sizes from the zip directory (what torch's reader allocates), then every pickle."""
    with zipfile.ZipFile(f) as archive:
        members = archive.infolist()
        budget.take(path, sum(m.file_size for m in members), f"its {len(members)} zip members (uncompressed)")
        for m in members:
            if m.compress_type != zipfile.ZIP_STORED and m.file_size > max(MAX_INFLATION * m.compress_size, 1 << 20):
                raise CorruptWeightsError(
                    f"refused to read {path}: its zip member {m.filename} inflates from {m.compress_size:,} to "
                    f"{m.file_size:,} bytes; torch.save stores tensors uncompressed and weights compress under 2x, "
                    "so this is a zip bomb; nothing was inflated"
                )
        for m in members:
            if m.filename.endswith(".pkl"):
                with archive.open(m) as member:
                    _check_pickle(path, member, allowed)


def check_weights_file(path: Path, budget: WeightsBudget | None) -> None:
    """Refuse, before torch, timm or safetensors opens it, a weights file that is not a regular file, declares
    more bytes than ``budget`` allows, or holds a pickle that imports anything beyond tensors (nothing is run).
    Without a budget (no model to size it by) sizes go unchecked; what safetensors allocates is the file's size.

    torch.load's weights-only unpickler refuses such imports too, but its message advises weights_only=False;
    and the sizes it allocates come from the zip directory and the pickle, before any check of its own.
    """
    require_regular_file(path, "the weights file")
    budget = budget or WeightsBudget(math.inf, "any model")
    if path.suffix == ".safetensors":  # safetensors checks every tensor against the file's length
        budget.take(path, path.stat().st_size, "the file's size")
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
        if header > MAX_SAFETENSORS_HEADER:  # 1.5 M empty tensors in an 89 MB header took 3.8 GB to parse
            raise CorruptWeightsError(
                f"{path} declares a {header:,}-byte header, over the {MAX_SAFETENSORS_HEADER:,} an EfficientNet's "
                f"few thousand tensors need: it is not a model's weights; {REDO}"
            )
        return
    allowed = _tensor_globals()
    try:
        with open(path, "rb") as f:
            if f.read(4) == ZIP_MAGIC:
                f.seek(0)
                _check_zip(path, f, budget, allowed)
                return
            f.seek(0)
            size = path.stat().st_size
            budget.take(path, size, "the file's size")  # what its pickles can build, and its storages' bytes
            declared: dict[Any, int] = {}
            for _ in range(LEGACY_PICKLES):
                if not f.peek(1):
                    break
                start = f.tell()
                _check_pickle(path, f, allowed)  # nothing but tensor globals: safe to walk with stand-ins
                f.seek(start)
                declared.update(_legacy_storage_bytes(f))
            # torch allocates each storage at the size its pickle declares, before reading the file's bytes
            budget.take(path, max(0, sum(declared.values()) - size), "its storages (as declared)")
    except ConversionError:
        raise
    except Exception as e:  # zipfile and pickletools raise many kinds on bytes that are no checkpoint
        raise torch_load_error(path, e) from e


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
    from ..hub.config import read_config_file  # the one bounded config.json reader

    try:
        return read_config_file(path)
    except ValueError as e:
        raise ConversionError(str(e)) from e


def load_state_dict(src: Path, budget: WeightsBudget | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors / pickle checkpoint, within ``budget`` (the model's; every reader passes one); a
    pickle that wants to run code is refused, unexecuted."""
    path = find_weights(src)
    check_weights_file(path, budget)
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise unreadable_safetensors(path, e) from e
        verify_digest(state, path)
    else:
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
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
