"""A pure-Python reader for TensorFlow's checkpoint format (TensorBundle V2), so Google's original
EfficientNet checkpoints convert without TensorFlow installed.

A checkpoint ``PREFIX`` is ``PREFIX.index`` (an SSTable mapping tensor names to BundleEntryProto records)
plus ``PREFIX.data-SSSSS-of-NNNNN`` shards (raw little-endian tensor bytes). Every length, offset and count
read from a file is bounds-checked against the file before use, and every tensor's masked CRC32C is
verified: a truncated, corrupt or foreign file raises :class:`CheckpointError`, never a wrong tensor.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import torch

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type + masked crc32c
_CRC_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_STRING, DT_INT64, DT_BFLOAT16, DT_HALF = 1, 2, 3, 7, 9, 14, 19
_DTYPES = {
    DT_FLOAT: torch.float32,
    DT_DOUBLE: torch.float64,
    DT_INT32: torch.int32,
    DT_INT64: torch.int64,
    DT_BFLOAT16: torch.bfloat16,
    DT_HALF: torch.float16,
}


class CheckpointError(ValueError):
    """The file is not a readable TensorFlow checkpoint; the message says what is wrong with it."""


def masked_crc32c(data: bytes | memoryview) -> int:
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


# ---- protobuf wire format (only what BundleEntryProto / BundleHeaderProto need) -------------------


def _varint(buf: bytes | memoryview, pos: int, end: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise CheckpointError(f"truncated varint in {what}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError(f"varint longer than 64 bits in {what}")


def _fields(buf: bytes | memoryview, what: str) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: ints for varint/fixed, bytes for length-delimited."""
    out: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end, what)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end, what)
        elif wire == 1:
            if pos + 8 > end:
                raise CheckpointError(f"truncated fixed64 in {what}")
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise CheckpointError(f"truncated fixed32 in {what}")
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end, what)
            if pos + length > end:
                raise CheckpointError(f"length-delimited field overruns {what}")
            value = bytes(buf[pos : pos + length])
            pos += length
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire} in {what}")
        out.append((field, value))
    return out


def _int(value: int | bytes, what: str) -> int:
    """A varint/fixed field's value; a length-delimited one where a number belongs means a corrupt record."""
    if not isinstance(value, int):
        raise CheckpointError(f"a numeric field of {what} holds bytes: the record is corrupt")
    return value


def _message(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise CheckpointError(f"a message field of {what} holds a number: the record is corrupt")
    return value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: BundleEntryProto."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None

    @staticmethod
    def parse(name: str, data: bytes) -> BundleEntry:
        what = f"the index record of {name!r}"
        dtype, shape, shard, offset, size, crc = 0, (), 0, 0, 0, None
        for field, value in _fields(data, what):
            if field == 1:
                dtype = _int(value, what)
            elif field == 2:
                shape = _parse_shape(_message(value, what), what)
            elif field == 3:
                shard = _int(value, what)
            elif field == 4:
                offset = _signed64(_int(value, what))
            elif field == 5:
                size = _signed64(_int(value, what))
            elif field == 6:
                crc = _int(value, what)
            elif field == 7:
                raise CheckpointError(f"{name!r} is a partitioned (sliced) variable; these are not supported")
        if offset < 0 or size < 0 or shard < 0:
            raise CheckpointError(f"negative offset, size or shard in {what}")
        return BundleEntry(name, dtype, shape, shard, offset, size, crc)


def _parse_shape(data: bytes, what: str) -> tuple[int, ...]:
    dims = []
    for field, value in _fields(data, what):
        if field == 2:  # Dim
            size = 0
            for f, v in _fields(_message(value, what), what):
                if f == 1:
                    size = _signed64(_int(v, what))
            if size < 0:
                raise CheckpointError(f"unknown or negative dimension in {what}")
            dims.append(size)
        elif field == 3 and value:
            raise CheckpointError(f"unknown rank in {what}")
    return tuple(dims)


# ---- SSTable ---------------------------------------------------------------------------------------


def _block_handle(buf: bytes | memoryview, pos: int, end: int, what: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, end, what)
    size, pos = _varint(buf, pos, end, what)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, what: str) -> memoryview:
    if offset + size + BLOCK_TRAILER_SIZE > len(data):
        raise CheckpointError(f"{what} runs past the end of the index file: it is truncated")
    contents = memoryview(data)[offset : offset + size]
    kind = data[offset + size]
    (stored_crc,) = struct.unpack_from("<I", data, offset + size + 1)
    if masked_crc32c(bytes(contents) + bytes([kind])) != stored_crc:
        raise CheckpointError(f"checksum mismatch in {what}: the index file is corrupt")
    if kind != 0:
        raise CheckpointError(f"{what} is compressed (type {kind}); TensorFlow writes checkpoints uncompressed")
    return contents


def _block_entries(block: memoryview, what: str) -> list[tuple[bytes, memoryview]]:
    """Key/value pairs of a block; keys are prefix-compressed against the previous key."""
    if len(block) < 4:
        raise CheckpointError(f"{what} is too short to be a table block")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    entries_end = len(block) - 4 * (num_restarts + 1)
    if num_restarts == 0 or entries_end < 0:
        raise CheckpointError(f"{what} has an impossible restart count ({num_restarts})")
    out: list[tuple[bytes, memoryview]] = []
    pos, key = 0, b""
    while pos < entries_end:
        shared, pos = _varint(block, pos, entries_end, what)
        non_shared, pos = _varint(block, pos, entries_end, what)
        value_len, pos = _varint(block, pos, entries_end, what)
        if shared > len(key) or pos + non_shared + value_len > entries_end:
            raise CheckpointError(f"a key or value overruns {what}")
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        out.append((key, block[pos : pos + value_len]))
        pos += value_len
    return out


MAX_INDEX_BYTES = 256 << 20


def read_index(index_path: Path) -> tuple[int, dict[str, BundleEntry]]:
    """(number of data shards, entries by tensor name) from a ``.index`` file."""
    if index_path.exists() and (not index_path.is_file() or index_path.stat().st_size > MAX_INDEX_BYTES):
        what = "not a regular file" if not index_path.is_file() else f"{index_path.stat().st_size:,} bytes"
        raise CheckpointError(
            f"{index_path} is {what}: a TensorFlow checkpoint index is a regular file of at most "
            f"{MAX_INDEX_BYTES >> 20} MiB (EfficientNet-L2's is under 1 MiB)"
        )
    data = index_path.read_bytes()
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{index_path} is {len(data)} bytes: too short for a TensorFlow checkpoint index")
    footer = data[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != TABLE_MAGIC:
        raise CheckpointError(
            f"{index_path} is not a TensorFlow checkpoint index (bad table magic); pass the checkpoint prefix, "
            "e.g. model.ckpt for model.ckpt.index + model.ckpt.data-00000-of-00001"
        )
    _, _, pos = _block_handle(footer, 0, 40, "the index footer")  # metaindex: unused by TensorBundle
    index_off, index_size, _ = _block_handle(footer, pos, 40, "the index footer")
    body = len(data) - FOOTER_SIZE
    num_shards, entries = 1, {}
    for _, handle in _block_entries(_read_block(data[:body], index_off, index_size, "the index block"), "index"):
        off, size, _ = _block_handle(handle, 0, len(handle), "a block handle")
        block = _read_block(data[:body], off, size, f"data block at {off}")
        for key, value in _block_entries(block, f"data block at {off}"):
            if key == b"":  # BundleHeaderProto
                for field, v in _fields(value, "the checkpoint header"):
                    if field == 1:
                        num_shards = _int(v, "the checkpoint header")
                    elif field == 2 and v != 0:
                        raise CheckpointError("the checkpoint was written big-endian; only little-endian is supported")
                continue
            name = key.decode("utf-8", errors="replace")
            entries[name] = BundleEntry.parse(name, bytes(value))
    if not 1 <= num_shards <= 100_000:
        raise CheckpointError(f"implausible shard count {num_shards} in the checkpoint header")
    return num_shards, entries


class TensorBundle:
    """Read-only access to a TF checkpoint: ``names()``, ``entry(name)``, ``tensor(name)``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.prefix = resolve_prefix(Path(path))
        self.num_shards, self.entries = read_index(Path(f"{self.prefix}.index"))
        self._shards: dict[int, mmap.mmap] = {}

    def names(self) -> list[str]:
        return sorted(self.entries)

    def _shard(self, shard_id: int) -> mmap.mmap:
        if shard_id not in self._shards:
            if shard_id >= self.num_shards:
                raise CheckpointError(f"a tensor points at shard {shard_id}, but the checkpoint has {self.num_shards}")
            path = Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")
            if not path.is_file():
                raise CheckpointError(f"missing data shard {path.name} next to {self.prefix.name}.index")
            with open(path, "rb") as f:
                self._shards[shard_id] = (
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else mmap.mmap(-1, 1)
                )
        return self._shards[shard_id]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor's values (a copy), after checking its size and CRC32C."""
        e = self.entries[name]
        if e.dtype not in _DTYPES:
            raise CheckpointError(f"{name!r} has TF dtype {e.dtype}, which holds no numeric weights")
        dtype = _DTYPES[e.dtype]
        if math.prod(d or 1 for d in e.shape) * dtype.itemsize >= 1 << 62:  # even with a 0 dim, torch cannot stride it
            raise CheckpointError(f"{name!r}: shape {list(e.shape)} is impossibly large; the index is corrupt")
        expected = math.prod(e.shape) * dtype.itemsize
        if e.size != expected:
            raise CheckpointError(f"{name!r}: shape {list(e.shape)} needs {expected} bytes but the index says {e.size}")
        shard = self._shard(e.shard_id)
        if e.offset + e.size > len(shard) or (len(shard) == 1 and e.size):
            raise CheckpointError(f"{name!r} lies beyond the end of its data shard: the shard is truncated")
        raw = shard[e.offset : e.offset + e.size]
        if e.crc32c is not None and masked_crc32c(raw) != e.crc32c:
            raise CheckpointError(f"checksum mismatch for {name!r}: the data shard is corrupt")
        if not raw:
            return torch.empty(e.shape, dtype=dtype)
        return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(e.shape)

    def is_numeric(self, name: str) -> bool:
        return self.entries[name].dtype in _DTYPES

    def close(self) -> None:
        for m in self._shards.values():
            m.close()
        self._shards.clear()

    def __enter__(self) -> TensorBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_prefix(path: Path) -> Path:
    """Accept the prefix (``model.ckpt``), its ``.index`` or ``.data-*`` file, or a folder holding one checkpoint."""
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            found = ", ".join(p.name for p in indexes) or "none"
            raise CheckpointError(f"{path} should hold exactly one TensorFlow checkpoint (*.index); found {found}")
        path = indexes[0]
    name = path.name
    if name.endswith(".index"):
        return path.with_name(name[: -len(".index")])
    if m := re.match(r"(.*)\.data-\d{5}-of-\d{5}$", name):
        return path.with_name(m.group(1))
    if Path(f"{path}.index").is_file():
        return path
    raise CheckpointError(
        f"no TensorFlow checkpoint at {path}: expected {path}.index and {path}.data-00000-of-00001 "
        "(pass the prefix, the .index file, or the folder)"
    )
