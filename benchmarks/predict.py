"""Throughput of ``effnet-zoo predict`` against the loop a timm user writes, same model and files, in one run.

    python benchmarks/predict.py                                  # 1,024 generated JPEGs, effnet_v1_b0, workers 0,2
    OMP_NUM_THREADS=1 python benchmarks/predict.py --json
    python benchmarks/predict.py --images-dir ~/photos --model effnet_v1_b3 --workers 0,1,2 --batch-size 32

Both sides classify the same folder of images (generated first: JPEGs of a few hundred pixels, quality 90) with
the same random weights, saved once as a model folder and loaded through ``local-dir:FOLDER`` with
``pretrained=True``, so they resize, crop and normalise by the same ``pretrained_cfg``; same batch size, same
loader workers, same torch thread count, on the CPU. Each timed call is the whole job, model creation included:

  ours       ``effnet_zoo.tasks.predict.predict_files`` (``effnet-zoo predict DIR --out X.jsonl``): lists the
             folder, loads the model and makes its inference copy (BatchNorm folded, static padding,
             channels_last), decodes in loader workers with per-image error handling, and writes the top-5 of
             every image to a JSON Lines file (renamed into place and fsynced at the end)
  timm loop  ``timm.create_model(..., pretrained=True).eval()``, ``create_dataset("", root=DIR)``, timm's eval
             ``create_loader`` with the same preprocessing, then ``model(x).softmax(-1).topk(5)`` per batch under
             ``torch.inference_mode``; the results are thrown away (nothing written, no class names looked up)

Calls run interleaved (every (implementation, workers) pair once per round) after one uncounted warm-up of each
pair on a few images (imports, first model creation, first worker start); each pair reports its median.
Absolute rates on a shared machine are noise: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import timm.data
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import effnet_zoo  # noqa: E402
from effnet_zoo.tasks.predict import predict_files  # noqa: E402

IMPLEMENTATIONS = ("ours", "timm_loop")
TIMM_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what timm's folder reader lists; both sides must see the same files


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs (quality 90) of 320-480 x 240-360 pixels: smooth random colour fields with a little noise,
    so decoding and resizing cost what a photograph of that size costs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        width, height = int(rng.integers(320, 481)), int(rng.integers(240, 361))
        coarse = rng.integers(0, 256, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"img{i:05d}.jpg", quality=90)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TIMM_EXTENSIONS)


def save_model(name: str, folder: Path) -> None:
    """Random weights (seeded) as a model folder: both sides load these weights and their preprocessing."""
    torch.manual_seed(0)
    effnet_zoo.save_pretrained(timm.create_model(name), folder, force=True)


def run_ours(images: Path, model_dir: Path, out: Path, batch_size: int, workers: int) -> int:
    """``effnet-zoo predict IMAGES --model local-dir:MODEL --out OUT``; returns the images classified."""
    summary = predict_files([str(images)], f"local-dir:{model_dir}", topk=5, batch_size=batch_size, workers=workers,
                            device="cpu", out=str(out), progress=False, force=True)  # fmt: skip
    if summary is None or summary.skipped:
        raise RuntimeError(f"predict skipped images: {summary}")
    return summary.classified


def run_timm_loop(images: Path, model_dir: Path, batch_size: int, workers: int) -> int:
    """What a timm user writes to classify a folder; returns the images classified."""
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    dataset = timm.data.create_dataset("", root=str(images))
    loader = timm.data.create_loader(
        dataset, input_size=cfg["input_size"], batch_size=batch_size, interpolation=cfg["interpolation"],
        mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"], num_workers=workers, use_prefetcher=False,
    )  # fmt: skip
    done = 0
    with torch.inference_mode():
        for x, _ in loader:
            model(x).softmax(-1).topk(5)
            done += x.shape[0]
    return done


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def benchmark(args: argparse.Namespace, work: Path, say: Callable[[str], None]) -> dict:
    """Set up images and model, warm up each pair, then time the interleaved rounds."""
    images = Path(args.images_dir) if args.images_dir else work / "images"
    if not image_files(images):
        say(f"writing {args.images} JPEGs to {images} ...")
        make_images(images, args.images)
    files = image_files(images)
    warm = work / "warmup"  # a few of the same images, outside the timed folder (both sides list recursively)
    warm.mkdir()
    for f in files[: 2 * args.batch_size]:
        shutil.copy(f, warm / f.name)
    model_dir = work / "model"
    save_model(args.model, model_dir)
    out = work / "predictions.jsonl"

    def call(impl: str, folder: Path, workers: int) -> Callable[[], int]:
        if impl == "ours":
            return lambda: run_ours(folder, model_dir, out, args.batch_size, workers)
        return lambda: run_timm_loop(folder, model_dir, args.batch_size, workers)

    pairs = [(impl, w) for w in args.workers for impl in IMPLEMENTATIONS]
    for impl, w in pairs:
        timed(call(impl, warm, w))
    say(f"warm-up done; timing {len(files)} images, {args.rounds} round(s) of {len(pairs)} calls")
    seconds: dict[tuple[str, int], list[float]] = {p: [] for p in pairs}
    for r in range(args.rounds):
        for impl, w in pairs:
            s, n = timed(call(impl, images, w))
            if n != len(files):
                raise RuntimeError(f"{impl} with {w} workers classified {n} images, not {len(files)}")
            seconds[(impl, w)].append(s)
            say(f"  round {r + 1}  {impl:<9} workers {w}: {s:6.2f} s  {n / s:7.1f} img/s  load {load()}")
    rows = []
    for w in args.workers:
        row: dict = {"workers": w}
        for impl in IMPLEMENTATIONS:
            med = statistics.median(seconds[(impl, w)])
            row[impl] = {"images": len(files), "seconds": [round(s, 3) for s in seconds[(impl, w)]],
                         "median_s": round(med, 3), "img_per_s": round(len(files) / med, 2)}  # fmt: skip
        row["ours_vs_timm_loop"] = round(row["ours"]["img_per_s"] / row["timm_loop"]["img_per_s"], 3)
        rows.append(row)
    base = next((r for r in rows if r["workers"] == 0), rows[0])
    speedup = {
        impl: {str(r["workers"]): round(r[impl]["img_per_s"] / base[impl]["img_per_s"], 3) for r in rows}
        for impl in IMPLEMENTATIONS
    }
    return {"images": len(files), "results": rows, "speedup_from_workers": speedup, "speedup_base": base["workers"]}


def print_table(report: dict) -> None:
    args = report["args"]
    print(f"\n{args['model']}, {report['images']} images, batch {args['batch_size']}, "
          f"{report['machine']['torch_threads']} torch thread(s), median of {args['rounds']} round(s)")  # fmt: skip
    print(f"{'workers':>7}  {'ours img/s':>10}  {'timm loop img/s':>15}  {'ours/timm':>9}")
    for r in report["results"]:
        print(f"{r['workers']:>7}  {r['ours']['img_per_s']:>10.1f}  {r['timm_loop']['img_per_s']:>15.1f}  "
              f"{r['ours_vs_timm_loop']:>9.2f}")  # fmt: skip
    print(f"speedup from workers (img/s / img/s at workers {report['speedup_base']}):")
    for impl, values in report["speedup_from_workers"].items():
        print(f"  {impl:<9} " + "  ".join(f"workers {w}: x{v:.2f}" for w, v in values.items()))
    print(f"load average start {report['load_start']}, end {report['load_end']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024, help="how many JPEGs to generate")
    p.add_argument("--images-dir", help="classify this folder (generated there first if it holds no images)")
    p.add_argument("--model", default="effnet_v1_b0", help="architecture; random weights saved as a model folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", default="0,2", help="comma-separated loader worker counts")
    p.add_argument("--threads", type=int, help="torch threads (default: what torch uses, e.g. OMP_NUM_THREADS)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    info, load_start = machine(), load()
    say(f"torch threads {info['torch_threads']}, os.cpu_count() {info['cpu_count']}, load average {load_start}")
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        report = benchmark(args, Path(tmp), say)
    report = {"machine": info, "args": vars(args), "load_start": load_start, "load_end": load(), **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
