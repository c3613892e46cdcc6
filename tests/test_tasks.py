"""The user commands end to end through the CLI's ``main``: predict, validate, export, on real Lite0 ImageNet
weights and real photographs; expected numbers are computed independently in the tests."""

import json
import struct
import subprocess
import zlib

import numpy as np
import pytest
import skimage.data as skimage_data
import timm
import torch
from conftest import cli
from PIL import Image

ESPRESSO, TIGER_CAT, TABBY = "n07920052", "n02123159", "n02123045"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs (one CMYK, one grayscale, one 24-megapixel), plus files that are no usable image."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.chelsea()).save(root / "chelsea.png")
    Image.fromarray(skimage_data.coffee()).save(root / "coffee.jpg")
    Image.fromarray(skimage_data.coffee()).convert("CMYK").save(root / "coffee_cmyk.jpg")
    Image.fromarray(skimage_data.camera()).save(root / "camera_gray.png")
    Image.fromarray(skimage_data.coffee()).resize((6000, 4000)).save(root / "large_coffee.jpg")
    (root / "notes.jpg").write_text("this is not an image")
    (root / "empty.png").write_bytes(b"")
    (root / "bomb.png").write_bytes(_png_header(40_000, 40_000))
    return root


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few dozen bytes: a decompression bomb to PIL."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_predict_real_photos_and_skip_unreadable_files(lite0_dir, photos):
    out = cli("predict", photos, "--model", f"local-dir:{lite0_dir}", "--topk", "3", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_name = {p["path"].rsplit("/", 1)[-1]: p["top"] for p in report["predictions"]}
    assert set(by_name) == {"chelsea.png", "coffee.jpg", "coffee_cmyk.jpg", "camera_gray.png", "large_coffee.jpg"}
    assert by_name["coffee.jpg"][0]["label"] == "espresso" and by_name["coffee.jpg"][0]["probability"] > 0.5
    assert (
        by_name["coffee_cmyk.jpg"][0]["label"] == "espresso" and by_name["large_coffee.jpg"][0]["label"] == "espresso"
    )
    assert by_name["chelsea.png"][0]["label"] in {"tiger cat", "tabby, tabby cat", "Egyptian cat"}
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"notes.jpg", "empty.png", "bomb.png"}
    assert skipped["notes.jpg"] == "not an image file PIL can read" and skipped["empty.png"] == "empty file (0 bytes)"
    assert skipped["bomb.png"].startswith("too large to decode safely") and "1600000000 pixels" in skipped["bomb.png"]
    for name, reason in skipped.items():
        assert f"{name}: {reason}" in out.stderr
    # The same probabilities as timm's own transform + timm's TF port carrying these weights, computed here
    # (predict runs the inference copy: equal to float rounding)
    model = timm.create_model(f"local-dir:{lite0_dir}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    reference = tf_port_with(lite0_dir, "tf_efficientnet_lite0")
    with torch.no_grad():
        probs = reference(transform(Image.open(photos / "coffee.jpg").convert("RGB"))[None]).softmax(-1)[0]
    top = by_name["coffee.jpg"][0]
    assert top["index"] == probs.argmax().item() and abs(top["probability"] - probs.max().item()) < 1e-5


def test_predict_text_output_and_glob(lite0_dir, photos):
    out = cli("predict", f"{photos}/coffee*.jpg", "--model", f"local-dir:{lite0_dir}", "--topk", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("espresso") == 2 and "chelsea" not in out.stdout


def test_predict_nothing_readable_fails(lite0_dir, photos):
    out = cli("predict", photos / "notes.jpg", "--model", f"local-dir:{lite0_dir}")
    assert out.returncode == 1 and "not an image" in out.stderr
    missing = cli("predict", photos / "nope*.png", "--model", f"local-dir:{lite0_dir}")
    assert missing.returncode == 2 and "matches anything" in missing.stderr


def _image_folder(root, classes: dict[str, list[np.ndarray]]):
    for name, images in classes.items():
        (root / name).mkdir(parents=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def _variants(img: np.ndarray) -> list[np.ndarray]:
    h, w = img.shape[:2]
    return [img, img[:, ::-1].copy(), img[h // 8 :, w // 8 :].copy(), img[: h * 3 // 4, : w * 3 // 4].copy()]


def test_validate_matches_an_independent_count(lite0_dir, tmp_path):
    cat, coffee = skimage_data.chelsea(), skimage_data.coffee()
    # tabby holds cat photos too: the model may say "tiger cat" for them, so accuracy is not trivially 100%.
    data = _image_folder(tmp_path / "val", {TIGER_CAT: _variants(cat), ESPRESSO: _variants(coffee),
                                           TABBY: _variants(cat)[:2]})  # fmt: skip
    # files that are no image: skipped and named, not counted (timm's dataset would count a neighbour twice)
    broken = {data / ESPRESSO / "empty.png": (b"", "empty file (0 bytes)"),
              data / TABBY / "notes.jpg": (b"not an image", "not an image file PIL can read")}  # fmt: skip
    for path, (content, _) in broken.items():
        path.write_bytes(content)
    out = cli("validate", "--data", data, "--model", f"local-dir:{lite0_dir}", "--batch-size", "4",
              "--workers", "0", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert sorted(got["skipped"]) == sorted([str(path), why] for path, (_, why) in broken.items())
    assert all(f"skipped {path}" in out.stderr for path in broken)
    for path in broken:
        path.unlink()

    model = timm.create_model(f"local-dir:{lite0_dir}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    synsets = timm.data.ImageNetInfo().label_names()
    top1 = top5 = n = 0
    for folder in sorted(data.iterdir()):
        for f in folder.iterdir():
            with torch.no_grad():
                logits = model(transform(Image.open(f).convert("RGB"))[None])[0]
            target = synsets.index(folder.name)
            top1 += logits.argmax().item() == target
            top5 += target in logits.topk(5).indices.tolist()
            n += 1
    assert got["num_images"] == n == 10
    assert got["top1"] == pytest.approx(100 * top1 / n) and got["top5"] == pytest.approx(100 * top5 / n)
    assert 0 < got["top1"] < 100  # the tabby folder keeps the figure from being a trivial 100%


def test_validate_explains_unmatched_folders(lite0_dir, tmp_path):
    data = _image_folder(tmp_path / "val", {"cats": [skimage_data.chelsea()], "cups": [skimage_data.coffee()]})
    out = cli("validate", "--data", data, "--model", f"local-dir:{lite0_dir}", "--workers", "0")
    assert out.returncode == 2 and "do not name the model's classes" in out.stderr


def test_validate_never_scores_a_named_folder_against_another_class(tmp_path):
    """Folders 'coffee' and 'zebra' for a model of ('cat', 'coffee') were taken in sorted order: 'coffee' was
    scored as 'cat', silently. Some named and some not is refused; none named is taken in order, with a warning."""
    from effnet_zoo import save_pretrained

    torch.manual_seed(0)
    model = save_pretrained(
        timm.create_model("effnet_lite0", num_classes=2), tmp_path / "m", label_names=["cat", "coffee"]
    )
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    mixed = _image_folder(tmp_path / "mixed", {"coffee": photos[1:], "zebra": photos[:1]})
    out = cli("validate", "--data", mixed, "--model", f"local-dir:{model}", "--workers", "0")
    assert out.returncode == 2, out.stderr
    assert "1 of the 2 class folders do not name a class of the model ('zebra') while 'coffee' do" in out.stderr
    unnamed = _image_folder(tmp_path / "unnamed", {"dog": photos[:1], "fish": photos[1:]})
    with pytest.warns(UserWarning, match=r"the 2 folders are taken in sorted order as its outputs \('dog' as 'cat', "
                      r"'fish' as 'coffee'\)"):  # fmt: skip
        out = cli("validate", "--data", unnamed, "--model", f"local-dir:{model}", "--workers", "0", "--json")
    assert out.returncode == 0, out.stderr


def test_export_suggests_force_only_where_it_would_replace(lite0_dir, tmp_path):
    """`export --out notes.onnx` over a user's file said 'pass --force', and --force then refused."""
    notes = tmp_path / "notes.onnx"
    notes.write_text("mine")
    out = cli("export", "--model", f"local-dir:{lite0_dir}", "--format", "onnx", "--out", notes)
    assert out.returncode == 2 and "is not a file that effnet-zoo export wrote" in out.stderr
    assert "--force" not in out.stderr.replace("--force replaces", "") and notes.read_text() == "mine"


def tf_port_with(folder, arch: str) -> torch.nn.Module:
    """timm's TF port (an independent implementation) carrying a model folder's weights."""
    from safetensors.torch import load_file

    from effnet_zoo.weights.timm_format import from_timm

    ref = timm.create_model(arch).eval()
    theirs = ref.state_dict()
    our_key = {id(v): k for k, v in from_timm(theirs).items()}  # from_timm renames, sharing the tensors
    weights = load_file(folder / "model.safetensors")
    ref.load_state_dict({k: weights[our_key[id(v)]] for k, v in theirs.items()})
    return ref


def run_exported_file(fmt: str, path, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file the way its users load it, with nothing from effnet_zoo."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        if fmt == "torchscript":
            return torch.jit.load(str(path))(x)
        return torch.export.load(str(path)).module()(x)


@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torchscript", "pt"), ("torch-export", "pt2")])
def test_export_round_trip(lite0_dir, tmp_path, fmt, suffix):
    """The exported file, loaded independently, computes what timm's TF port computes with the same weights
    (at another batch size than the example: --dynamic-batch)."""
    target = tmp_path / f"lite0.{suffix}"
    out = cli("export", "--model", f"local-dir:{lite0_dir}", "--format", fmt, "--out", target, "--dynamic-batch",
              "--img-size", "64")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert target.is_file() and "checked against eager PyTorch on a batch of 3" in out.stdout
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = tf_port_with(lite0_dir, "tf_efficientnet_lite0")(x)
    got = run_exported_file(fmt, target, x)
    assert got.shape == (5, 1000)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    again = cli("export", "--model", f"local-dir:{lite0_dir}", "--format", fmt, "--out", target)
    assert again.returncode == 2 and "--force" in again.stderr


def test_labels_and_paths_cannot_drive_the_terminal(lite0_dir, photos, tmp_path):
    """A config.json's labels (and file names) are printed with their control characters escaped."""
    import shutil

    import timm

    hostile = tmp_path / "lite0"
    shutil.copytree(lite0_dir, hostile)
    config = json.loads((hostile / "config.json").read_text())
    synsets = timm.data.ImageNetInfo().label_names()
    config["pretrained_cfg"]["label_names"] = list(synsets)
    config["pretrained_cfg"]["label_descriptions"] = {"n07920052": "\x1b[2J\x1b[31mespresso\x1b[0m\r"}
    (hostile / "config.json").write_text(json.dumps(config))
    shutil.copy(photos / "coffee.jpg", tmp_path / "cup\x1b[8m.jpg")
    out = cli("predict", tmp_path / "cup\x1b[8m.jpg", "--model", f"local-dir:{hostile}", "--topk", "1")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\r" not in out.stdout
    assert "\\x1b[2J\\x1b[31mespresso\\x1b[0m\\r" in out.stdout and "cup\\x1b[8m.jpg" in out.stdout


def test_extreme_aspect_ratio_is_skipped_without_the_memory_blowup(lite0_dir, tmp_path):
    """A 20 KB PNG of 20000x1 pixels would take GBs in the short-side resize: skipped, with the reason."""
    import resource

    Image.new("RGB", (20000, 1), (200, 30, 30)).save(tmp_path / "sliver.png")
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.png")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = cli("predict", tmp_path, "--model", f"local-dir:{lite0_dir}", "--topk", "1", "--json")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [p["path"].rsplit("/", 1)[-1] for p in report["predictions"]] == ["coffee.png"]
    (skipped,) = report["skipped"]
    assert skipped["reason"].startswith("extreme aspect ratio (20000x1, over 32:1)")
    assert grown_mib < 1024, f"peak memory grew by {grown_mib:.0f} MiB"


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG decodes to the same picture as an independent reader (imageio) scaled to 8 bits."""
    import imageio.v3 as iio
    import numpy as np

    from effnet_zoo.tasks.common import open_image

    camera16 = (skimage_data.camera().astype(np.uint32) * 257 + 100).clip(0, 65535).astype(np.uint16)  # not x257 only
    Image.fromarray(camera16).save(tmp_path / "camera16.png")
    reference = iio.imread(tmp_path / "camera16.png").astype(np.float64) / 257.0
    assert reference.max() > 200  # a real 16-bit file: clipped to 8 bits it would be almost all white
    rgb = np.asarray(open_image(tmp_path / "camera16.png"))
    assert rgb.shape == (*camera16.shape, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - reference).max() <= 0.5 + 1e-9


def test_skipped_files_are_reported_above_the_progress_bar(lite0_dir, photos, tmp_path):
    """validate printed "skipped ..." onto the progress bar's line; counts are pluralised ("1 unreadable file")."""
    data = _image_folder(tmp_path / "val", {ESPRESSO: [skimage_data.coffee()]})
    (data / ESPRESSO / "notes.jpg").write_text("this is not an image")
    out = cli("validate", "--data", data, "--model", f"local-dir:{lite0_dir}", "--workers", "0")
    assert out.returncode == 0, out.stderr
    lines = [line.rsplit("\r", 1)[-1] for line in out.stderr.split("\n") if "skipped" in line]
    assert lines and all(line.startswith("effnet-zoo: skipped ") for line in lines), out.stderr
    assert "(1 image, " in out.stdout and "; 1 unreadable file skipped, not counted" in out.stdout


def test_torch_export_says_nothing_on_success(lite0_dir, tmp_path):
    """It logged "Unable to load package ... .b3.pt2.*.tmp" (and a warning) on every successful export."""
    from conftest import console_script

    done = subprocess.run([console_script(), "export", "--model", f"local-dir:{lite0_dir}", "--format",
                           "torch-export", "--out", str(tmp_path / "m.pt2"), "--img-size", "64"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
