"""Broken and hostile inputs on the weight-loading and Hub paths: each fails with one clear message, runs
nothing it should not, and leaves the user's files as they were (docs/reliability.md lists every case)."""

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import timm
import torch
from conftest import add_hub_repo, cli, randomize_bn, timm_reference
from PIL import Image
from safetensors.torch import save_file

import effnet_zoo
from effnet_zoo.tasks.common import load_pretrained
from effnet_zoo.weights.common import ConversionError
from effnet_zoo.weights.convert import convert
from effnet_zoo.weights.tf_bundle import CheckpointError
from effnet_zoo.weights.torch_file import CorruptWeightsError
from effnet_zoo.zoo import PretrainedWeightsUnavailable

TINY = dict(width_mult=0.1, depth_mult=0.3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A folder written by effnet_zoo (model.safetensors + config.json + README.md)."""
    model = randomize_bn(timm.create_model("effnet_v1_b0", num_classes=4, **TINY), seed=5).eval()
    return effnet_zoo.save_pretrained(model, tmp_path_factory.mktemp("saved") / "tiny")


def _data_start(path: Path) -> int:
    """safetensors: an 8-byte little-endian header length, the JSON header, then the tensor bytes."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or damaged"),
    "empty": (lambda p: p.write_bytes(b""), "truncated or damaged"),
    "header bit flipped": (lambda p: _flip(p, 8), "truncated or damaged"),
    "data bit flipped": (lambda p: _flip(p, (_data_start(p) + p.stat().st_size) // 2), "fails its checksum"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_safetensors_is_refused_on_every_load_path(saved, tmp_path, damage):
    hurt, message = DAMAGE[damage]
    folder = Path(shutil.copytree(saved, tmp_path / "copy"))
    timm.create_model(f"local-dir:{folder}", pretrained=True)  # intact: loads, checksum verified
    hurt(folder / "model.safetensors")
    damaged = (folder / "model.safetensors").read_bytes()
    with pytest.raises(CorruptWeightsError, match=message):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    repo = f"acme/damaged-{damage.replace(' ', '-')}"
    add_hub_repo(repo, {p.name: p.read_bytes() for p in folder.iterdir()})
    with pytest.raises(CorruptWeightsError, match=f"{repo}.*{message}.*delete it and download"):
        timm.create_model(f"hf-hub:{repo}", pretrained=True)
    done = cli("predict", _image(tmp_path), "--model", folder)
    assert done.returncode == 2 and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert (folder / "model.safetensors").read_bytes() == damaged  # nothing rewritten


def test_truncated_third_party_safetensors_is_refused_by_convert(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in timm_reference("tf_efficientnet_b0").state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CorruptWeightsError, match="not a valid safetensors file, truncated or damaged"):
        convert(path, "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same"})
    assert not (tmp_path / "out").exists()


GARBAGE = {"random bytes": bytes(range(256)) * 12, "text": b"hello, not a checkpoint\n", "empty": b""}
# where each --from format looks for its file
SOURCE_FILE = {"tf-ckpt": "model.ckpt.index", "keras-h5": "weights.h5", "timm": "w.pth", "torchvision": "w.pth",
               "lukemelas": "w.pth", "seed": "w.pth", "transformers": "model.safetensors"}  # fmt: skip


@pytest.mark.parametrize("fmt", list(SOURCE_FILE))
def test_every_source_format_refuses_garbage_with_our_error(tmp_path, fmt):
    """Whatever torch.load, h5py or safetensors raise on junk (IndexError, KeyError, EOFError, ...) reaches the
    user as ConversionError / CheckpointError with the file named."""
    from effnet_zoo.weights.convert import FORMATS

    assert set(SOURCE_FILE) == set(FORMATS)
    for kind, data in GARBAGE.items():
        folder = tmp_path / kind.replace(" ", "_")
        folder.mkdir()
        (folder / SOURCE_FILE[fmt]).write_bytes(data)
        src = (
            folder / "model.ckpt"
            if fmt == "tf-ckpt"
            else folder
            if fmt == "transformers"
            else folder / SOURCE_FILE[fmt]
        )
        with pytest.raises((ConversionError, CheckpointError)) as info:
            convert(src, fmt, "effnet_v1_b0", tmp_path / f"out-{folder.name}", model_args={"padding": "same"})
        assert str(folder) in str(info.value), (kind, str(info.value))
        assert not (tmp_path / f"out-{folder.name}").exists()


def test_garbage_pytorch_weights_on_the_pretrained_path(saved, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    for data in GARBAGE.values():
        (folder / "pytorch_model.bin").write_bytes(data)
        with pytest.raises(CorruptWeightsError, match="is not a readable PyTorch checkpoint, truncated or damaged"):
            timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_pickle_that_runs_code_is_refused_on_the_pretrained_path(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    torch.save({"stem.conv.weight": torch.zeros(1), "x": Exploit()}, folder / "pytorch_model.bin")
    with pytest.raises(CorruptWeightsError, match=r"refused to load .*evil.*Nothing from it was executed"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert not marker.exists()


def test_weights_of_another_variant_name_the_one_they_fit(tmp_path):
    b1 = timm.create_model("effnet_v1_b1")
    path = tmp_path / "b1.safetensors"
    save_file(b1.state_dict(), str(path))
    for kwargs in ({}, {"num_classes": 10}):  # fine-tuning a new head does not hide the mismatch
        with pytest.raises(ConversionError) as info:
            timm.create_model("effnet_v1_b2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        message = str(info.value)
        assert "does not fit effnet_v1_b2" in message and "It fits effnet_v1_b1" in message
        # stage 2 is 40 channels wide in B1, 48 in B2 (round_filters(40 * 1.1) in the paper's code)
        assert "first: blocks.2.0.project.conv.weight: checkpoint [40, 144, 1, 1] vs model [48, 144, 1, 1]" in message
    # and the same file for the right variant loads, exactly
    ours = timm.create_model("effnet_v1_b1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), b1.state_dict().values(), strict=True))


def test_partial_checkpoint_is_refused_unless_timms_pretrained_strict_is_off(tmp_path):
    full = timm.create_model("effnet_v1_b0", **TINY)
    path = tmp_path / "no_head.safetensors"
    save_file({k: v for k, v in full.state_dict().items() if not k.startswith("head.")}, str(path))
    overlay = dict(file=str(path))
    with pytest.raises(ConversionError, match=r"5 differences; first: missing head.conv.weight \[128, 32, 1, 1\]"):
        timm.create_model("effnet_v1_b0", pretrained=True, pretrained_cfg_overlay=overlay, **TINY)
    part = timm.create_model("effnet_v1_b0", pretrained=True, pretrained_cfg_overlay=overlay, pretrained_strict=False,
                             **TINY)  # fmt: skip
    assert torch.equal(part.blocks[-1][-1].project.conv.weight, full.blocks[-1][-1].project.conv.weight)


def test_flat_numbered_source_of_another_variant_names_the_one_it_fits(tmp_path):
    """efficientnet_pytorch numbers blocks 0..N-1: a B3 file given as B1 fails on block count, not on a shape."""
    from efficientnet_pytorch import EfficientNet as LukeEfficientNet

    torch.save(LukeEfficientNet.from_name("efficientnet-b3").state_dict(), tmp_path / "b3.pth")
    with pytest.raises(ConversionError, match="It fits effnet_v1_b3: .*--model effnet_v1_b3 on the") as info:
        convert(tmp_path / "b3.pth", "lukemelas", "effnet_v1_b1", tmp_path / "out")
    assert "66 keys are not part of an EfficientNet of this size in the efficientnet_pytorch layout" in str(info.value)
    # a TensorFlow checkpoint of no registered size: the error says so, without a wrong suggestion
    with pytest.raises(ConversionError, match="blocks but the model has 16: check --model$"):
        convert(Path(__file__).parent / "fixtures" / "tiny_tf1", "tf-ckpt", "effnet_v1_b0", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_forced_conversion_keeps_the_previous_output(tmp_path):
    src = Path(shutil.copytree(Path(__file__).parent / "fixtures" / "tiny_tf1", tmp_path / "ckpt"))
    out = tmp_path / "out"
    convert(src, "tf-ckpt", "effnet_v1_b0", out, model_args=TINY)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    shard = src / "model.ckpt.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="the shard is truncated"):
        convert(src, "tf-ckpt", "effnet_v1_b0", out, model_args=TINY, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]  # no temporary leftovers


# ---- the Hub: offline, missing repo, missing file, refused token --------------------------------------------


def _image(folder: Path) -> Path:
    path = folder / "gray.png"
    Image.new("L", (40, 30), 128).save(path)
    return path


def test_offline_without_a_cached_copy(saved, tmp_path):
    for name, cached in (("hf-hub:acme/never-downloaded", False), ("hf-hub:acme/config-only", True)):
        if cached:
            add_hub_repo("acme/config-only", {"config.json": (saved / "config.json").read_bytes()})
        with pytest.raises(PretrainedWeightsUnavailable, match="not in the local cache .*HF_HUB_OFFLINE=1 is set"):
            load_pretrained(name)
        done = cli("predict", _image(tmp_path), "--model", name)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "HF_HUB_CACHE" in done.stderr


def test_hub_errors_online(saved, tmp_path):
    """huggingface_hub's real client against a local server that answers as the Hub does on failure."""
    import hub_errors_server

    server, endpoint = hub_errors_server.start()
    push_src = Path(shutil.copytree(saved, tmp_path / "to-push"))
    before = {p.name: p.read_bytes() for p in push_src.iterdir()}
    image = str(_image(tmp_path))
    cases = {
        "missing repo": ["predict", image, "--model", "hf-hub:acme/no-such-repo"],
        "missing file": ["predict", image, "--model", "hf-hub:acme/no-weights"],
        "missing tag repo": ["predict", image, "--model", "effnet_v1_b1.aa_in1k"],
        "refused token": ["push", str(push_src), "--repo-id", "acme/fruit"],
        "lost connection": ["push", str(push_src), "--repo-id", "acme/lost-connection"],
    }
    script = (
        "import contextlib, io, json, sys\n"
        "from effnet_zoo.cli import main\n"
        "out = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        out[name] = [main(argv), err.getvalue()]\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HUB_CACHE=tempfile.mkdtemp(dir=tmp_path),
               HF_TOKEN="hf_rejected_by_the_server", HF_HUB_DISABLE_TELEMETRY="1")  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    expected = {
        "missing repo": "could not load 'hf-hub:acme/no-such-repo': no such repo on the Hub",
        "missing file": "from 'acme/no-weights': the repo lacks a file it needs",
        "missing tag repo": "effnet_v1_b1.aa_in1k from 'timm/tf_efficientnet_b1.aa_in1k': no such repo on the Hub",
        "refused token": "could not publish to 'acme/fruit': the Hub refused the credentials (HTTP 401)",
        "lost connection": f"could not publish to 'acme/lost-connection': could not reach the Hub at {endpoint} (",
    }
    for name, text in expected.items():
        code, stderr = results[name]
        assert code == 2 and text in stderr, (name, stderr)
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, (name, stderr)
    assert {p.name: p.read_bytes() for p in push_src.iterdir()} == before


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    """Checkpoints, exports and config files go through atomic_write: a failure mid-write changes nothing."""
    from effnet_zoo._io import atomic_write

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"previous, complete")

    def dies_half_way(tmp: Path) -> None:
        tmp.write_bytes(b"half of the new")
        raise KeyboardInterrupt  # what Ctrl-C does at this point

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_half_way)
    assert target.read_bytes() == b"previous, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_cli_reports_os_errors_in_one_line(tmp_path):
    """e.g. an output folder that cannot be created: no traceback, exit status 2."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = cli("convert", Path(__file__).parent / "fixtures" / "tiny_tf1", "--from", "tf-ckpt", "--model",
               "effnet_v1_b0", "--out", blocker / "out", "--model-arg", "width_mult=0.1", "--model-arg",
               "depth_mult=0.3")  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("effnet-zoo: error: ") and done.stderr.count("\n") == 1
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "x.jpg", "--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
        (["predict", "x.jpg", "--topk", "three"], "argument --topk: expected a positive integer, got 'three'"),
        (["validate", "--data", "d", "--model", "m", "--workers", "-1"], "--workers: expected an integer >= 0"),
        (["finetune", "--data", "d", "--model", "m", "--out", "o", "--lr", "0"], "--lr: expected a number > 0"),
        (["finetune", "--data", "d", "--model", "m", "--out", "o", "--label-smoothing", "1.5"],
         "argument --label-smoothing: expected a number in [0, 1), got 1.5"),
        (["export", "--model", "m", "--format", "onnx", "--out", "x", "--img-size", "-224"],
         "argument --img-size: expected an integer from 32 to 1600, got -224"),
    ],
)  # fmt: skip
def test_cli_refuses_out_of_range_arguments_before_doing_anything(argv, message):
    done = cli(*argv)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def _keras_file_pointing_outside(tmp_path: Path, kind: str) -> Path:
    """The real Keras fixture with its classifier kernel replaced by data from outside the file."""
    import h5py
    import numpy as np

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(128 * 10, dtype=np.float32).tobytes())  # a "local secret" of the kernel's size
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as o:
        o["kernel"] = np.ones((128, 10), np.float32)
    dst = tmp_path / f"{kind}.h5"
    shutil.copy(Path(__file__).parent / "fixtures" / "tiny_keras_legacy.h5", dst)
    with h5py.File(dst, "a") as f:
        group = f["predictions/predictions"]
        del group["kernel"]
        if kind == "external-storage":
            group.create_dataset("kernel", (128, 10), np.float32, external=[(str(secret), 0, 128 * 10 * 4)])
        elif kind == "external-link":
            group["kernel"] = h5py.ExternalLink(str(other), "/kernel")
        elif kind == "soft-link":
            f["elsewhere"] = np.ones((128, 10), np.float32)
            group["kernel"] = h5py.SoftLink("/elsewhere")
        elif kind == "virtual":
            layout = h5py.VirtualLayout((128, 10), np.float32)
            layout[:] = h5py.VirtualSource(str(other), "kernel", shape=(128, 10))
            group.create_virtual_dataset("kernel", layout)
        elif kind == "fifo-link":
            os.mkfifo(tmp_path / "fifo.h5")
            group["kernel"] = h5py.ExternalLink(str(tmp_path / "fifo.h5"), "/kernel")
    return dst


@pytest.mark.parametrize("kind", ["external-storage", "external-link", "soft-link", "virtual", "fifo-link"])
def test_keras_file_that_reads_outside_itself_is_refused(tmp_path, kind):
    """A crafted .h5 cannot copy another file's bytes into the converted weights, nor hang on a FIFO."""
    src = _keras_file_pointing_outside(tmp_path, kind)
    out = tmp_path / "out"
    with pytest.raises(
        ConversionError, match=r"kernel is (an external link|a soft link|stored in another file|a virt)"
    ):
        convert(src, "keras-h5", "effnet_v1_b0", out, model_args=TINY)
    assert not out.exists()
    result = cli("convert", src, "--from", "keras-h5", "--model", "effnet_v1_b0", "--out", out,
                 "--model-arg", "width_mult=0.1", "--model-arg", "depth_mult=0.3")  # fmt: skip
    assert result.returncode == 2 and "only data stored inside the file is read" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize("damage", ["nan", "inf", "int8", "bool"])
def test_weights_that_can_only_give_nonsense_are_refused(tmp_path, damage):
    """NaN/Inf weights (predict printed 'nan%') and integer/bool tensors (cast silently, 100%-confident nonsense)
    are refused by convert and by pretrained=True; export refuses a model whose logits are not finite."""
    ref = timm_reference("tf_efficientnet_b0", seed=3)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    key = "blocks.2.0.conv_pw.weight"
    if damage in ("nan", "inf"):
        state[key].view(-1)[7] = float(damage)
    else:
        state[key] = (state[key] * 100).to(torch.int8 if damage == "int8" else torch.bool)
    src = tmp_path / "w.safetensors"
    save_file(state, str(src))
    message = "hold NaN or Inf" if damage in ("nan", "inf") else "not floating point"
    with pytest.raises(
        ConversionError, match=f"1 weight tensors {'' if damage in ('nan', 'inf') else 'are '}{message}"
    ):
        convert(src, "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same"})
    assert not (tmp_path / "out").exists()
    add_hub_repo(f"acme/damaged-{damage}", {"model.safetensors": src.read_bytes(), "config.json": json.dumps(
        {"architecture": "effnet_v1_b0", "num_classes": 1000, "pretrained_cfg": {}}).encode()})  # fmt: skip
    with pytest.raises(ConversionError, match=message):
        timm.create_model(f"hf-hub:acme/damaged-{damage}", pretrained=True)


def test_export_of_a_model_with_nan_weights_fails_clearly(tmp_path):
    """export said "max abs diff nan" and exited 0; now the load refuses the weights and nothing is written."""
    model = timm.create_model("effnet_v1_b0", num_classes=10)
    with torch.no_grad():
        model.classifier.bias[3] = float("nan")
    folder = effnet_zoo.save_pretrained(model, tmp_path / "m")
    result = cli("export", "--model", f"local-dir:{folder}", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.returncode == 2 and "hold NaN or Inf (first: classifier.bias)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.onnx").exists()


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if the code under test blocks on a FIFO or an endless read."""
    import signal

    def expire(*_):
        raise TimeoutError("blocked for 30 s: a special file was read")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", ["fifo-safetensors", "fifo-tf-index", "index-links-to-dev-zero"])
def test_special_files_are_refused_not_read(tmp_path, no_hang, case):
    """convert waited forever on a FIFO model.safetensors or TF index, and read /dev/zero until MemoryError."""
    src = tmp_path / "src"
    src.mkdir()
    if case == "fifo-safetensors":
        os.mkfifo(src / "model.safetensors")
        fmt, match = "timm", r"model.safetensors is a FIFO \(named pipe\), not a regular file"
    else:
        if case == "fifo-tf-index":
            os.mkfifo(src / "model.ckpt.index")
        else:
            (src / "model.ckpt.index").symlink_to("/dev/zero")
        (src / "model.ckpt.data-00000-of-00001").write_bytes(b"")
        fmt, match = "tf-ckpt", r"model.ckpt.index is not a regular file"
    result = cli(
        "convert", src, "--from", fmt, "--model", "effnet_v1_b0", "--out", tmp_path / "out", "--padding", "same"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(match, result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


def test_fifo_weights_behind_local_dir_are_refused(tmp_path, no_hang):
    folder = effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=3), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    with pytest.raises(ConversionError, match="is a FIFO"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_recursive_search_does_not_follow_a_folder_linking_to_itself(tmp_path, no_hang):
    from effnet_zoo.tasks.common import expand_image_paths

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    expected = [tmp_path / "a" / "x.jpg"]
    assert expand_image_paths([str(tmp_path)]) == expected
    assert expand_image_paths([f"{tmp_path}/**/*.jpg"]) == expected


def test_outputs_get_the_users_permissions_and_force_leaves_nothing_behind(tmp_path):
    """Folders were created 0700 and files 0600 whatever the umask; --force onto a file or a link left .old-*."""
    from effnet_zoo._io import atomic_write_text

    previous = os.umask(0o022)
    try:
        model = timm.create_model("effnet_v1_b0", num_classes=3)
        folder = effnet_zoo.save_pretrained(model, tmp_path / "m")
        assert folder.stat().st_mode & 0o777 == 0o755
        assert {(p.name, p.stat().st_mode & 0o777) for p in folder.iterdir()} == {
            ("model.safetensors", 0o644), ("config.json", 0o644), ("README.md", 0o644)
        }  # fmt: skip
        assert atomic_write_text(tmp_path / "notes.txt", "x").stat().st_mode & 0o777 == 0o644
        (tmp_path / "file").write_text("old")
        (tmp_path / "link").symlink_to(tmp_path / "notes.txt")
        for target in ("file", "link"):  # --force replaces only a model folder of ours: never a user's file
            with pytest.raises(FileExistsError, match="replaces only a model folder effnet-zoo wrote"):
                effnet_zoo.save_pretrained(model, tmp_path / target, force=True)
        assert (tmp_path / "file").read_text() == "old" and (tmp_path / "link").is_symlink()
        before = (folder / "model.safetensors").stat().st_ino
        effnet_zoo.save_pretrained(model, folder, force=True)  # our own folder: replaced, nothing left beside it
        assert (folder / "model.safetensors").stat().st_ino != before
        assert (tmp_path / "notes.txt").read_text() == "x"
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    finally:
        os.umask(previous)


def test_force_never_replaces_the_inputs_or_other_peoples_files(tmp_path):
    """convert --force with --out on the source (or its parent) deleted the checkpoint and a .tex beside it;
    export --force onto a device file replaced it; finetune --out inside the data replaced a class folder."""
    src = tmp_path / "ckpt"
    src.mkdir()
    ref = timm_reference("tf_efficientnet_b0", seed=1)
    save_file(ref.state_dict(), str(src / "model.safetensors"))
    (tmp_path / "thesis.tex").write_text("\\\\documentclass{article}")
    before = {p: p.read_bytes() for p in [src / "model.safetensors", tmp_path / "thesis.tex"]}
    for out in (src, tmp_path, src / "inside"):
        result = cli("convert", src, "--from", "timm", "--model", "effnet_v1_b0", "--out", out, "--padding", "same",
                     "--force")  # fmt: skip
        assert result.returncode == 2 and "would overlap the input" in result.stderr, out
    other = tmp_path / "results"
    other.mkdir()
    (other / "table.csv").write_text("a,b")
    result = cli("convert", src, "--from", "timm", "--model", "effnet_v1_b0", "--out", other, "--padding", "same",
                 "--force")  # fmt: skip
    assert result.returncode == 2 and "a folder holding files effnet-zoo did not write (table.csv)" in result.stderr
    assert {p: p.read_bytes() for p in before} == before and (other / "table.csv").read_text() == "a,b"

    folder = effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=3), tmp_path / "m")
    os.mkfifo(tmp_path / "device")
    result = cli(
        "export", "--model", f"local-dir:{folder}", "--format", "onnx", "--out", tmp_path / "device", "--force"
    )
    assert result.returncode == 2 and "not a regular file" in result.stderr
    assert stat.S_ISFIFO((tmp_path / "device").stat().st_mode)

    data = tmp_path / "data"
    (data / "train" / "model").mkdir(parents=True)
    (data / "train" / "model" / "img.png").write_bytes(b"x")
    result = cli("finetune", "--data", data, "--model", f"local-dir:{folder}", "--out", data / "train", "--force")
    assert result.returncode == 2 and "would overlap the input" in result.stderr
    assert (data / "train" / "model" / "img.png").read_bytes() == b"x"


CONFIG_DAMAGE = {
    "num_classes a string": (lambda c: c.update(num_classes="abc"), "'num_classes' should be a whole number"),
    "no architecture": (lambda c: c.pop("architecture"), "'architecture' should be one of effnet_zoo's models"),
    "architecture an int": (lambda c: c.update(architecture=3), "'architecture' should be one of"),
    "another timm model": (lambda c: c.update(architecture="resnet50"), 'got "resnet50"'),
    "model_args a list": (lambda c: c.update(model_args=[1, 2]), "'model_args' should be a JSON object"),
    "unknown act_layer": (lambda c: c["model_args"].update(act_layer="nope"), "'model_args.act_layer' should be"),
    "pretrained_cfg a string": (lambda c: c.update(pretrained_cfg="x"), "'pretrained_cfg' should be a JSON object"),
    "input_size strings": (lambda c: c["pretrained_cfg"].update(input_size=["3", "a", "b"]), "input_size' should be"),
    "input_size zero": (lambda c: c["pretrained_cfg"].update(input_size=[3, 0, 224]), "input_size' should be"),
    "depth_mult negative": (
        lambda c: c["model_args"].update(depth_mult=-1),
        "'model_args.depth_mult' should be a number > 0",
    ),
    "width_mult NaN": (lambda c: c["model_args"].update(width_mult=float("nan")), "'model_args.width_mult' should be"),
    "bn_eps zero": (lambda c: c["model_args"].update(bn_eps=0), "'model_args.bn_eps' should be a number > 0"),
    "std zero": (lambda c: c["pretrained_cfg"].update(std=[0.2, 0, 0.2]), "'pretrained_cfg.std' should be a list"),
    "mean too short": (lambda c: c["pretrained_cfg"].update(mean=[0.5, 0.5]), "'pretrained_cfg.mean' should be"),
}


@pytest.mark.parametrize("damage", [*CONFIG_DAMAGE, "null", "list", "not JSON", "weights a folder", "broken link"])
def test_damaged_model_folders_get_one_line_naming_the_file(tmp_path, damage):
    """Wrong types in config.json gave raw TypeError / KeyError / AttributeError; a folder or broken link as
    model.safetensors gave 'effnet-zoo: error: ' and nothing more."""
    folder = effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=3), tmp_path / "m")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if damage in CONFIG_DAMAGE:
        edit, message = CONFIG_DAMAGE[damage]
        edit(config)
        config_path.write_text(json.dumps(config))
    elif damage in ("null", "list"):
        config_path.write_text("null" if damage == "null" else "[]")
        message = "the file should be a JSON object"
    elif damage == "not JSON":
        config_path.write_text("{not json")
        message = "is not valid JSON"
    else:
        (folder / "model.safetensors").unlink()
        if damage == "weights a folder":
            (folder / "model.safetensors").mkdir()
        else:
            (folder / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
        message = "model.safetensors is a folder" if damage == "weights a folder" else "is a broken link"
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    result = cli("predict", tmp_path / "x.png", "--model", f"local-dir:{folder}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    if damage not in ("weights a folder", "broken link"):
        assert str(config_path) in result.stderr


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth_mult=-1), dict(depth_mult=0), dict(width_mult=float("nan")), dict(width_mult=float("inf")),
        dict(bn_eps=0), dict(bn_eps=-1e-3), dict(drop_rate=1.0), dict(drop_path_rate=-0.1), dict(num_classes=-1),
        dict(in_chans=0), dict(bn_momentum=2.0), dict(width_mult="1.0"),
    ],
)  # fmt: skip
def test_meaningless_constructor_arguments_are_refused_by_name(kwargs):
    """depth_mult=-1 built stages with no blocks; its own weights were then said to fit 'effnet_lite0' instead
    of effnet_lite0. Each value is refused by name before anything is built."""
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=rf"^{name} must be .*, got {re.escape(repr(value))}$"):
        timm.create_model("effnet_lite0", **kwargs)
