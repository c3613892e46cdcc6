"""The pure-Python TensorFlow checkpoint reader against what TensorFlow wrote, and against anything at all.

Property: whatever bytes sit in ``.index`` and ``.data-*``, reading either yields exactly the tensors that
were written or raises :class:`CheckpointError`: never another exception, a wrong tensor, a hang, or an
allocation sized by a length field instead of by the file.
"""

from __future__ import annotations

import math
import shutil
import struct
import tempfile
import tracemalloc
from pathlib import Path

import pytest
import tf_bundle_writer as writer
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effnet_zoo.weights.tf_bundle import _DTYPES, DT_STRING, CheckpointError, TensorBundle, read_index

FIXTURES = Path(__file__).parent / "fixtures"
# How many examples, and whether they are drawn at random, comes from the profile (tests/conftest.py): the
# suite runs a fixed 150 per property; HYPOTHESIS_PROFILE=explore draws 3000 fresh ones.
PROPERTY = settings(deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def read_all(prefix: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    """Every numeric tensor as (dtype, shape, raw bytes): bitwise, so NaN payloads compare too."""
    with TensorBundle(prefix) as bundle:
        out = {}
        for name in bundle.names():
            if bundle.is_numeric(name):
                t = bundle.tensor(name)
                out[name] = (t.dtype, tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return out


def entries_of(prefix: Path) -> list[writer.Entry]:
    """The entries of a TensorFlow-written checkpoint, as the test writer describes them."""
    raw = Path(f"{prefix}.data-00000-of-00001").read_bytes()
    _, entries = read_index(Path(f"{prefix}.index"))
    return [
        writer.Entry(
            n, e.dtype, e.shape, raw[e.offset : e.offset + e.size], crc=e.crc32c if e.dtype == DT_STRING else None
        )  # fmt: skip
        for n, e in entries.items()
    ]


@pytest.mark.parametrize("fixture", ["dtypes_tf1", "tiny_tf1", "noema_tf1"])
def test_the_test_writer_reproduces_tensorflow_byte_for_byte(tmp_path, fixture):
    """So checkpoints it invents below are ones TensorFlow could have written. (TensorFlow checksums string
    tensors its own way; the one string tensor's CRC is copied.)"""
    src = FIXTURES / fixture / "model.ckpt"
    writer.write(str(tmp_path / "m"), entries_of(src))
    assert (tmp_path / "m.index").read_bytes() == Path(f"{src}.index").read_bytes()
    assert (tmp_path / "m.data-00000-of-00001").read_bytes() == Path(f"{src}.data-00000-of-00001").read_bytes()


# ---- precise damage a real file cannot carry without first failing its block checksum ----------------------


def _f32(name: str, values: list[float], **overrides) -> writer.Entry:
    return writer.Entry(name, 1, (len(values),), struct.pack(f"<{len(values)}f", *values), **overrides)


@pytest.mark.parametrize(
    "entries, num_shards, message",
    [
        ([_f32("w", [1, 2, 3, 4, 5], size=24)], 1, r"'w': shape \[5\] needs 20 bytes but the index says 24"),
        ([writer.Entry("w", 1, (2, 3), b"\0" * 20)], 1, r"'w': shape \[2, 3\] needs 24 bytes but the index says 20"),
        ([_f32("w", [1, 2], crc=12345)], 1, "checksum mismatch for 'w'"),
        ([_f32("w", [1, 2], shard=1)], 1, "points at shard 1, but the checkpoint has 1"),
        ([_f32("w", [1, 2], shard=1)], 2, "the shard is truncated"),  # data written into a shard we then empty
        ([writer.Entry("w", 21, (2,), b"\0" * 8)], 1, "has TF dtype 21, which holds no numeric weights"),
        # zero elements, so zero bytes, yet strides torch cannot represent (found by the property test below)
        ([writer.Entry("w", 1, (0, 4124, 2**51), b"")], 1, r"shape \[0, 4124, 2251799813685248\] is impossibly large"),
        # a number where the shape message belongs (found by the property test below)
        ([_f32("w", [1.0], extra=writer.field_fixed32(2, 7))], 1, "a message field of the index record of 'w' holds a"),
    ],
)
def test_index_entries_that_lie_are_refused(tmp_path, entries, num_shards, message):
    writer.write(str(tmp_path / "m"), entries, num_shards)
    if num_shards == 2:
        (tmp_path / "m.data-00001-of-00002").write_bytes(b"")
    with pytest.raises(CheckpointError, match=message), TensorBundle(tmp_path / "m") as bundle:
        bundle.tensor("w")


def test_a_missing_second_shard_is_named(tmp_path):
    writer.write(str(tmp_path / "m"), [_f32("a", [1.0]), _f32("b", [2.0], shard=1)], num_shards=2)
    (tmp_path / "m.data-00001-of-00002").unlink()
    with TensorBundle(tmp_path / "m") as bundle:
        assert bundle.tensor("a").tolist() == [1.0]
        with pytest.raises(CheckpointError, match="missing data shard m.data-00001-of-00002"):
            bundle.tensor("b")


@pytest.mark.parametrize("fixture", ["dtypes_tf1", "noema_tf1"])
def test_every_single_byte_change_to_the_index_reads_right_or_is_refused(tmp_path, fixture):
    """Exhaustive over each byte of a TensorFlow-written index and three bit patterns. Without the table blocks'
    checksum, 28 one-bit changes to dtypes_tf1's index alone read as other names, shapes or dtypes."""
    src = FIXTURES / fixture
    expected = read_all(src / "model.ckpt")
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    index = tmp_path / "model.ckpt.index"
    original = index.read_bytes()
    wrong = []
    for position in range(len(original)):
        for xor in (0x01, 0x80, 0xFF):
            damaged = bytearray(original)
            damaged[position] ^= xor
            index.write_bytes(bytes(damaged))
            try:
                if read_all(tmp_path / "model.ckpt") != expected:
                    wrong.append((position, xor))
            except CheckpointError:
                pass
    assert wrong == []


# ---- properties ---------------------------------------------------------------------------------------------

_NUMERIC = sorted(_DTYPES)


@st.composite
def checkpoints(draw) -> list[writer.Entry]:
    names = draw(st.lists(st.text("abz/_09", min_size=1, max_size=10), min_size=1, max_size=40, unique=True))
    entries = []
    for name in names:
        dtype = draw(st.sampled_from(_NUMERIC))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        entries.append(writer.Entry(name, dtype, shape, draw(st.binary(min_size=nbytes, max_size=nbytes))))
    return entries


def _expected(entries: list[writer.Entry]) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    return {e.name: (_DTYPES[e.dtype], e.shape, e.data) for e in entries}


@PROPERTY
@given(checkpoints())
def test_round_trip_of_any_checkpoint(entries):
    with tempfile.TemporaryDirectory() as d:
        writer.write(f"{d}/m", entries)
        assert read_all(Path(d) / "m") == _expected(entries)


def _read_or_refuse(prefix: Path, expected: dict) -> None:
    """Reading gives the written tensors, or CheckpointError for any tensor; nothing else, ever."""
    try:
        bundle = TensorBundle(prefix)
    except CheckpointError:
        return
    with bundle:
        assert set(n for n in bundle.names() if bundle.is_numeric(n)) == set(expected)
        for name, (dtype, shape, data) in expected.items():
            try:
                t = bundle.tensor(name)
            except CheckpointError:
                continue
            assert (t.dtype, tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()) == (dtype, shape, data)


@PROPERTY
@given(
    which=st.sampled_from(["index", "data"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=4),
    keep=st.none() | st.floats(0, 1),
)
def test_damaged_tensorflow_checkpoint_reads_right_or_refuses(which, flips, keep):
    src = FIXTURES / "dtypes_tf1"
    expected = read_all(src / "model.ckpt")
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(src, d, dirs_exist_ok=True)
        path = Path(d) / ("model.ckpt.index" if which == "index" else "model.ckpt.data-00000-of-00001")
        data = bytearray(path.read_bytes())
        for where, xor in flips:
            data[int(where * len(data))] ^= xor
        path.write_bytes(bytes(data[: int(keep * len(data))] if keep is not None else data))
        _read_or_refuse(Path(d) / "model.ckpt", expected)


@PROPERTY
@given(index=st.binary(max_size=600), data=st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_with_our_error(index, data):
    with tempfile.TemporaryDirectory() as d:
        Path(d, "m.index").write_bytes(index)
        Path(d, "m.data-00000-of-00001").write_bytes(data)
        _read_or_refuse(Path(d) / "m", {})


_FIELD = st.integers(0, 64) | st.integers(0, 2**63 - 1)  # small and plausible, or anything a field holds


@st.composite
def lying_entries(draw) -> writer.Entry:
    """A true entry (dtype, shape and bytes agree), then any of its fields replaced by a lie: dtype, shape
    (huge dims too), shard, offset, size, CRC, no CRC at all, or extra fields of any number and wire type
    (a number where a message belongs, and the reverse)."""
    dtype = draw(st.sampled_from(_NUMERIC))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    data = draw(st.binary(min_size=math.prod(shape) * _DTYPES[dtype].itemsize,
                          max_size=math.prod(shape) * _DTYPES[dtype].itemsize))  # fmt: skip
    lie = st.none() | st.just("lie")
    if draw(lie):
        dtype = draw(st.sampled_from([*_NUMERIC, 0, DT_STRING, 21]))
    if draw(lie):
        shape = tuple(draw(st.lists(st.integers(0, 3) | st.integers(0, 2**62), max_size=4)))
    size = None
    if draw(lie):  # often consistent with the (lying) shape, so only the shard's bounds can refuse it
        consistent = math.prod(shape) * _DTYPES[dtype].itemsize if dtype in _DTYPES else 0
        size = draw(st.just(consistent) | _FIELD)
    return writer.Entry(
        draw(st.text("ab", min_size=1, max_size=4)),
        dtype,
        shape,
        data,
        shard=draw(st.just(0) | st.integers(0, 2)),
        size=size,
        offset=draw(st.none() | _FIELD),
        crc=draw(st.none() | st.integers(0, 2**32 - 1)),
        with_crc=draw(st.booleans()),
        extra=b"".join(
            writer.field_any(n, w, p)
            for n, w, p in draw(
                st.lists(st.tuples(st.integers(1, 7), st.sampled_from([0, 1, 2, 5]), st.binary(max_size=9)), max_size=2)
            )
        ),
    )


@PROPERTY
@given(
    entries=st.lists(lying_entries(), max_size=6, unique_by=lambda e: e.name),
    num_shards=st.integers(1, 2),
    block=st.binary(max_size=400),
    raw_records=st.lists(st.tuples(st.text("ab", min_size=1, max_size=4), st.binary(max_size=40)), max_size=8),
)
def test_anything_behind_valid_checksums_parses_or_refuses_within_bounded_memory(
    entries, num_shards, block, raw_records
):
    """Past the CRCs: entries whose fields lie, arbitrary table blocks, arbitrary entry records. Every tensor
    read is exactly as long as its bytes in the shard, and Python-side allocations stay within a small
    multiple of the files' sizes whatever a length, count, shape or size field claims."""
    with tempfile.TemporaryDirectory() as d:
        prefix = Path(d) / "m"
        writer.write(str(prefix), entries, num_shards)
        _read_within_bounds(prefix)
        index = prefix.with_name("m.index")
        index.write_bytes(writer.table([], data_block=block))
        _read_within_bounds(prefix)
        index.write_bytes(writer.table([(b"", b""), *sorted({n.encode(): v for n, v in raw_records}.items())]))
        _read_within_bounds(prefix)


def _read_within_bounds(prefix: Path) -> None:
    files = [p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name)]
    total = sum(p.stat().st_size for p in files)
    tracemalloc.start()
    try:
        try:
            with TensorBundle(prefix) as bundle:
                for name in bundle.names():
                    try:
                        t = bundle.tensor(name)
                    except CheckpointError:
                        continue
                    entry = bundle.entries[name]
                    shard = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{bundle.num_shards:05d}").read_bytes()
                    assert t.reshape(-1).view(torch.uint8).numpy().tobytes() == shard[entry.offset :][: entry.size]
                    assert t.numel() * t.element_size() == entry.size
        except CheckpointError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024 + 16 * total, peak
