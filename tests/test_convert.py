"""``effnet-zoo convert``: every source format against the output of the library that produced it.

TF / Keras fixtures were written by Keras' own EfficientNet and TensorFlow's own Saver
(tools/make_tf_fixtures.py) together with Keras' logits; PyTorch formats are random-initialised models of
timm, torchvision, efficientnet_pytorch and transformers, converted and run beside the original.
"""

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from conftest import add_hub_repo, assert_rel_close, cli, randomize_bn, timm_reference
from safetensors.torch import load_file, save_file

from effnet_zoo.weights.common import ConversionError
from effnet_zoo.weights.convert import convert

FIXTURES = Path(__file__).parent / "fixtures"
TINY = {"width_mult": 0.1, "depth_mult": 0.3}  # the Keras fixture network


@pytest.fixture(scope="module")
def keras_reference():
    return load_file(str(FIXTURES / "tiny_reference.safetensors"))


@pytest.mark.parametrize(
    "src, fmt",
    [
        ("tiny_tf1", "tf-ckpt"),
        ("tiny_tf1/model.ckpt", "tf-ckpt"),  # the prefix, as TensorFlow names a checkpoint
        ("tiny_keras_legacy.h5", "keras-h5"),
        ("tiny.weights.h5", "keras-h5"),
    ],
)
def test_tf_and_keras_sources_reproduce_keras_logits(tmp_path, keras_reference, src, fmt):
    out = tmp_path / "converted"
    convert(FIXTURES / src, fmt, "effnet_v1_b0", out, model_args=TINY)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    if fmt == "keras-h5":  # Keras normalises inside the model: its Normalization statistics travel into the config
        assert tuple(model.pretrained_cfg["mean"]) == (0.0, 0.0, 0.0)
        assert tuple(model.pretrained_cfg["std"]) == (1.0, 1.0, 1.0)
    with torch.no_grad():  # the fixture input is what Keras' network saw after its own 1/255 rescale
        assert_rel_close(model(keras_reference["input"]), keras_reference["logits"], 1e-4)


def test_tf_checkpoint_uses_ema_shadows_and_skips_optimizer_slots(tmp_path):
    from effnet_zoo.weights.tf_bundle import TensorBundle
    from effnet_zoo.weights.tf_ckpt import read_variables

    scope, tensors, which = read_variables(FIXTURES / "tiny_tf1" / "model.ckpt.index")
    assert scope == "efficientnet-tiny" and "ExponentialMovingAverage" in which
    assert not any("RMSProp" in k or "global_step" in k for k in tensors)
    with TensorBundle(FIXTURES / "tiny_tf1") as bundle:
        ema = bundle.tensor("efficientnet-tiny/stem/conv2d/kernel/ExponentialMovingAverage")
        raw = bundle.tensor("efficientnet-tiny/stem/conv2d/kernel")
        assert bundle.tensor("global_step").item() == 123456
    assert torch.equal(tensors["stem/conv2d/kernel"], ema) and not torch.equal(ema, raw)


def test_tf_checkpoint_without_ema_falls_back_to_raw_variables_with_a_warning():
    from effnet_zoo.weights.tf_ckpt import read_variables

    with pytest.warns(UserWarning, match="no ExponentialMovingAverage shadows"):
        scope, tensors, which = read_variables(FIXTURES / "noema_tf1")
    assert scope == "efficientnet-tiny" and which.startswith("raw training variables")
    assert list(tensors) == ["stem/conv2d/kernel"]  # the RMSProp slot and global_step are skipped
    expected = torch.arange(3 * 3 * 3 * 8, dtype=torch.float32).reshape(3, 3, 3, 8) / 100.0  # as the TF script wrote
    assert torch.allclose(tensors["stem/conv2d/kernel"], expected)


def test_tensorbundle_reads_every_dtype():
    from effnet_zoo.weights.tf_bundle import TensorBundle

    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 8.0 - 1.0  # what the TF script wrote
    with TensorBundle(FIXTURES / "dtypes_tf1" / "model.ckpt") as b:
        assert b.tensor("f32").dtype == torch.float32 and torch.equal(b.tensor("f32"), base)
        assert b.tensor("f16").dtype == torch.float16 and torch.equal(b.tensor("f16"), base.half())
        assert b.tensor("bf16").dtype == torch.bfloat16 and torch.equal(b.tensor("bf16"), base.bfloat16())
        assert torch.equal(b.tensor("i64"), torch.arange(-3, 3))
        assert b.tensor("scalar").shape == () and b.tensor("scalar").item() == 2.5
        assert not b.is_numeric("text")


def _copy_ckpt(tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "tiny_tf1", dst)
    return dst


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _flip(d / "model.ckpt.data-00000-of-00001", _offset_of(d, _EMA_HEAD)), "checksum mismatch for"),
        (lambda d: _truncate(d / "model.ckpt.data-00000-of-00001", 1000), "beyond the end of its data shard"),
        (lambda d: (d / "model.ckpt.data-00000-of-00001").unlink(), "missing data shard"),
        (lambda d: _truncate(d / "model.ckpt.index", 30), "too short for a TensorFlow checkpoint index"),
        (lambda d: _truncate(d / "model.ckpt.index", 10000), "bad table magic"),
        (lambda d: _flip(d / "model.ckpt.index", 100), "checksum mismatch in"),
    ],
)
def test_broken_tf_checkpoints_fail_clearly(tmp_path, damage, message):
    from effnet_zoo.weights.tf_bundle import CheckpointError

    ckpt = _copy_ckpt(tmp_path)
    damage(ckpt)
    with pytest.raises(CheckpointError, match=message):
        convert(ckpt, "tf-ckpt", "effnet_v1_b0", tmp_path / "out", model_args=TINY)
    assert not (tmp_path / "out").exists()


_EMA_HEAD = "efficientnet-tiny/head/dense/kernel/ExponentialMovingAverage"


def _offset_of(ckpt: Path, name: str) -> int:
    """A byte inside a tensor the conversion uses (a flipped bit in an unused optimizer slot changes nothing)."""
    from effnet_zoo.weights.tf_bundle import TensorBundle

    with TensorBundle(ckpt) as bundle:
        entry = bundle.entries[name]
    return entry.offset + entry.size // 2


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def test_wrong_variant_is_named(tmp_path):
    ref = timm_reference("tf_efficientnet_b1", seed=1)
    torch.save(ref.state_dict(), tmp_path / "b1.pth")
    with pytest.raises(ConversionError, match=r"It fits effnet_v1_b1: .*--model effnet_v1_b1"):
        convert(tmp_path / "b1.pth", "timm", "effnet_v1_b2", tmp_path / "out", model_args={"padding": "same"})


def test_timm_bare_state_dict_needs_padding(tmp_path):
    torch.save(timm_reference("tf_efficientnet_b0").state_dict(), tmp_path / "w.pth")
    with pytest.raises(ConversionError, match="--padding same"):
        convert(tmp_path / "w.pth", "timm", "effnet_v1_b0", tmp_path / "out")


def _save_hf_style(folder: Path, state: dict, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("arch, padding", [("tf_efficientnet_b0", "same"), ("efficientnet_b0", "symmetric")])
def test_timm_checkpoints(tmp_path, arch, padding):
    ref = timm_reference(arch, seed=2)
    src = _save_hf_style(tmp_path / "src", ref.state_dict(), {"architecture": arch, "num_classes": 1000})
    result = convert(src, "timm", "effnet_v1_b0", tmp_path / "out", verify=True)
    assert result.config["model_args"]["padding"] == padding
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert_rel_close(model(x), ref(x), 1e-5)
    # ImageNet-1k: no synsets recorded, so timm and transformers show the class names they know
    assert "label_names" not in result.config and "num_classes" not in result.config["model_args"]
    assert timm.data.infer_imagenet_subset(model) == "imagenet-1k"


def test_torchvision_checkpoint(tmp_path):
    import torchvision

    torch.manual_seed(3)
    ref = randomize_bn(torchvision.models.efficientnet_b0(), 3).eval()
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    result = convert(tmp_path / "tv.pth", "torchvision", "effnet_v1_b0", tmp_path / "out", verify=True)
    assert (result.config["model_args"]["padding"], result.config["model_args"]["bn_eps"]) == ("symmetric", 1e-5)
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    for size in (224, 225):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert_rel_close(model(x), ref(x), 1e-5)


def test_lukemelas_checkpoint(tmp_path):
    from efficientnet_pytorch import EfficientNet as LukeEfficientNet

    torch.manual_seed(4)
    ref = randomize_bn(LukeEfficientNet.from_name("efficientnet-b0"), 4).eval()
    torch.save(ref.state_dict(), tmp_path / "luke.pth")
    result = convert(tmp_path / "luke.pth", "lukemelas", "effnet_v1_b0", tmp_path / "out", verify=True)
    assert result.max_abs_diff < 1e-5
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(2, 3, 224, 224)  # efficientnet_pytorch pads statically for its image size
    with torch.no_grad():
        assert_rel_close(model(x), ref(x), 1e-5)


def test_transformers_checkpoint(tmp_path):
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    torch.manual_seed(5)
    config = EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280,
                                num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
                                label2id={"cat": 0, "dog": 1, "bird": 2})  # fmt: skip
    ref = EfficientNetForImageClassification(config)
    randomize_bn(ref, 5).eval()
    ref.save_pretrained(tmp_path / "hf")
    result = convert(tmp_path / "hf", "transformers", "effnet_v1_b0", tmp_path / "out", verify=True)
    assert result.config["label_names"] == ["cat", "dog", "bird"]
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    assert model.num_classes == 3
    x = torch.randn(2, 3, 224, 224)  # transformers pads like TF for even sizes only
    with torch.no_grad():
        assert_rel_close(model(x), ref(x).logits, 1e-5)


def test_seed_checkpoint(tmp_path):
    """The abhuse layout, written out key by key from the documented module names, around timm's weights."""
    ref = timm_reference("tf_efficientnet_b0", seed=6)
    names = {"conv_stem": "init_conv.conv.conv", "bn1": "init_conv.bn", "conv_head": "head_conv.conv",
             "bn2": "head_conv.bn", "classifier": "fc"}  # fmt: skip
    ir = {"conv_pw": "expand_conv.conv", "bn1": "expand_conv.bn", "conv_dw": "dp_conv.conv.conv", "bn2": "dp_conv.bn",
          "se.conv_reduce": "se.dim_reduce", "se.conv_expand": "se.dim_restore", "conv_pwl": "project_conv.conv",
          "bn3": "project_conv.bn"}  # fmt: skip
    ds = {"conv_dw": "dp_conv.conv.conv", "bn1": "dp_conv.bn", "se.conv_reduce": "se.dim_reduce",
          "se.conv_expand": "se.dim_restore", "conv_pw": "project_conv.conv", "bn2": "project_conv.bn"}  # fmt: skip
    seed_state = {}
    for key, value in ref.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            s, b, rest = parts[1], parts[2], ".".join(parts[3:])
            module, param = rest.rsplit(".", 1)
            table = ir if s != "0" else ds
            seed_state[f"stages.{s}.layers.{b}.{table[module]}.{param}"] = value
        else:
            seed_state[f"{names[parts[0]]}.{parts[1]}"] = value
    torch.save(seed_state, tmp_path / "seed.pth")
    convert(tmp_path / "seed.pth", "seed", "effnet_v1_b0", tmp_path / "out")
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_rel_close(model(x), ref(x), 1e-5)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"conv_stem.weight": torch.zeros(1), "x": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="refused to load .*Nothing from it was executed"):
        convert(tmp_path / "evil.pth", "timm", "effnet_v1_b0", tmp_path / "out", model_args={"padding": "same"})
    assert not marker.exists()


def test_dtype_and_existing_output(tmp_path):
    ref = timm_reference("tf_efficientnet_b0", seed=7)
    src = _save_hf_style(tmp_path / "src", ref.state_dict(), {"architecture": "tf_efficientnet_b0"})
    out = tmp_path / "out"
    convert(src, "timm", "effnet_v1_b0.ap_in1k", out, dtype="bf16")
    stored = load_file(str(out / "model.safetensors"))
    assert stored["stem.conv.weight"].dtype == torch.bfloat16
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["pretrained_cfg"]["tag"] == "ap_in1k"
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        convert(src, "timm", "effnet_v1_b0", out)
    assert (out / "model.safetensors").read_bytes() == before
    convert(src, "timm", "effnet_v1_b0", out, dtype="fp16", force=True)
    assert load_file(str(out / "model.safetensors"))["stem.conv.weight"].dtype == torch.float16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folders left behind


def test_converted_folder_loads_through_hf_hub(tmp_path, keras_reference):
    out = tmp_path / "converted"
    convert(FIXTURES / "tiny_tf1", "tf-ckpt", "effnet_v1_b0", out, model_args=TINY)
    add_hub_repo("acme/effnet-tiny-converted", {p.name: p.read_bytes() for p in out.iterdir()})
    model = timm.create_model("hf-hub:acme/effnet-tiny-converted", pretrained=True).eval()
    with torch.no_grad():
        assert_rel_close(model(keras_reference["input"]), keras_reference["logits"], 1e-4)


def test_cli_convert(tmp_path):
    out = tmp_path / "cli_out"
    args = ["convert", str(FIXTURES / "tiny_tf1"), "--from", "tf-ckpt", "--model", "effnet_v1_b0",
            "--out", str(out), "--model-arg", "width_mult=0.1", "--model-arg", "depth_mult=0.3"]  # fmt: skip
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "ExponentialMovingAverage weights" in done.stdout and "47,052 parameters" in done.stdout
    again = cli(*args)
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    assert "Traceback" not in again.stderr
    card = (out / "README.md").read_text()
    assert "TensorFlow checkpoint 'efficientnet-tiny'" in card and 'timm.create_model("hf-hub:' in card


def test_arguments_that_change_the_shape_are_named_not_the_model_itself(tmp_path):
    """A checkpoint of the very variant asked for, refused because of --model-arg width_mult=0.5: the hint names
    the arguments, not "--model effnet_v1_b0", which the user already passed."""
    torch.save(timm.create_model("tf_efficientnet_b0").state_dict(), tmp_path / "t.pth")
    done = cli("convert", tmp_path / "t.pth", "--from", "timm", "--model", "effnet_v1_b0", "--out", tmp_path / "o",
               "--padding", "same", "--model-arg", "width_mult=0.5")  # fmt: skip
    assert done.returncode != 0 and "leave out the arguments that change its shape" in done.stderr, done.stderr
    assert "--model effnet_v1_b0" not in done.stderr
