"""A test-only writer of TensorFlow's checkpoint format (TensorBundle V2), from the format's public spec.

It exists to feed the reader checkpoints hypothesis invents (and precise damage a real file cannot carry
without breaking its checksums first). ``test_tf_reader`` checks that, given the tensors of a checkpoint
TensorFlow itself wrote, it reproduces TensorFlow's files byte for byte.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass

from effnet_zoo.weights.tf_bundle import TABLE_MAGIC, masked_crc32c

RESTART_INTERVAL = 16  # LevelDB's default, as TensorFlow's table builder uses


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value & 0xFFFFFFFFFFFFFFFF) if value else b""


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<I", value)


def field_any(number: int, wire: int, payload: bytes) -> bytes:
    """A field of any wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32) built from ``payload``."""
    if wire == 0:
        return varint(number << 3) + varint(int.from_bytes(payload[:8], "little"))
    if wire == 2:
        return field_bytes(number, payload)
    size = 8 if wire == 1 else 4
    return varint(number << 3 | wire) + payload[:size].ljust(size, b"\0")


@dataclass
class Entry:
    """One BundleEntryProto. ``size``, ``crc`` and ``offset`` default to the truth; tests override them to lie."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    data: bytes
    shard: int = 0
    size: int | None = None
    crc: int | None = None
    offset: int | None = None
    with_crc: bool = True
    extra: bytes = b""  # raw fields appended to the record (a later field overrides an earlier one)

    def proto(self, offset: int) -> bytes:
        dims = b"".join(field_bytes(2, field_varint(1, d)) for d in self.shape)
        size = len(self.data) if self.size is None else self.size
        crc = masked_crc32c(self.data) if self.crc is None else self.crc
        return (
            field_varint(1, self.dtype)
            + field_bytes(2, dims)
            + field_varint(3, self.shard)
            + field_varint(4, offset if self.offset is None else self.offset)
            + field_varint(5, size)
            + (field_fixed32(6, crc) if self.with_crc else b"")
            + self.extra
        )


def block(items: list[tuple[bytes, bytes]]) -> bytes:
    """A table block: prefix-compressed keys, a restart point every 16 keys, then the trailer."""
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % RESTART_INTERVAL == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    out += b"".join(struct.pack("<I", r) for r in restarts or [0]) + struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def _trailed(contents: bytes) -> bytes:
    return contents + b"\x00" + struct.pack("<I", masked_crc32c(contents + b"\x00"))


def _short_successor(key: bytes) -> bytes:
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


def table(items: list[tuple[bytes, bytes]], data_block: bytes | None = None) -> bytes:
    """A one-data-block SSTable file: data block, empty metaindex block, index block, footer.

    ``data_block`` replaces the encoded block contents (to hand the reader arbitrary bytes behind a valid CRC).
    """
    contents = block(items) if data_block is None else data_block
    data = _trailed(contents)
    meta_off, meta = len(data), _trailed(block([]))
    last = items[-1][0] if items else b""
    index_off = meta_off + len(meta)
    index = _trailed(block([(_short_successor(last), varint(0) + varint(len(contents)))]))
    handles = varint(meta_off) + varint(len(meta) - 5) + varint(index_off) + varint(len(index) - 5)
    footer = handles.ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return data + meta + index + footer


def write(prefix: str, entries: list[Entry], num_shards: int = 1) -> None:
    """``prefix.index`` + ``prefix.data-SSSSS-of-NNNNN``, tensors laid out in name order as TensorFlow does.

    An entry may name a shard at or past ``num_shards`` (a lie the reader must catch); its bytes go nowhere.
    """
    header = field_varint(1, num_shards) + field_bytes(3, field_varint(1, 1))  # VersionDef{producer: 1}
    shards = defaultdict(bytearray)
    items = [(b"", header)]
    for e in sorted(entries, key=lambda e: e.name):
        items.append((e.name.encode(), e.proto(len(shards[e.shard]))))
        shards[e.shard] += e.data
    with open(f"{prefix}.index", "wb") as f:
        f.write(table(items))
    for i in range(num_shards):
        shard = shards[i]
        with open(f"{prefix}.data-{i:05d}-of-{num_shards:05d}", "wb") as f:
            f.write(shard)
