"""Speed of effnet_zoo against timm's TF port and torchvision, measured in one process.

    python benchmarks/bench.py                       # CPU, B0, inference at batch 1 and 16, training at 16
    python benchmarks/bench.py --models b0,b3 --modes infer,train,fast --json
    python benchmarks/bench.py --device cuda --dtype bf16 --channels-last --batch-sizes 1,256 --compile

Absolute times on a shared machine are noise; the figure is the ratio between candidates timed in the same
rounds. Candidates run interleaved (A, B, C, A, B, C, ...) and each reports its median.

Modes:
  infer  ``create_model(...).eval()`` of each library under ``torch.inference_mode``
  train  forward + backward + SGD step (img/s), also ours with its training units off (``ours_plain``); also peak
         memory of two steps, each library in a fresh process
         (CUDA: max allocated; CPU, Linux: growth of peak RSS over the built model)
  watched  ``infer`` plus ours with a no-op forward hook on every conv and BatchNorm: a watched layer runs the
         plain conv -> BN path (effnet_zoo.shortcuts), so this is what hooks, pruning or a probe cost
  load   pretrained load of the same safetensors file (random weights, timm's tf_ layout; torchvision gets them
         renamed), each library in a fresh process: wall time and peak RSS growth (Linux)
  saved  bytes autograd keeps for backward in one training forward (``saved_tensors_hooks``, distinct storages,
         weights left out), per image, fp32 and bf16 autocast: ours, timm's TF port, timm's native model and
         torchvision. Device-independent: what bounds the batch on a fixed GPU
  fast   each library's documented inference fast path: ours ``effnet_zoo.optimize_for_inference``; torchvision
         with ``torch.fx.experimental.optimization.fuse`` + channels_last (timm's TF model cannot be traced for that:
         its padding is computed at run time), against timm's eager model. On the CPU (fp32) also ONNX Runtime
         running what ``effnet-zoo export --format onnx`` writes (needs the ``export`` extra), the INT8 file
         ``export --int8`` writes (``onnxruntime_int8``), and ours under bf16 autocast where the CPU has native bf16
         (``ours_bf16``); ``--with-compiled`` adds ours through ``effnet_zoo.compile_for_inference`` in fp32 and
         bf16 (``ours_compiled``, ``ours_bf16_compiled``). These are also given as speed-ups over ONNX Runtime fp32
         (issue 22's yardstick).
         ``--models lite0`` (to lite4) runs EfficientNet-Lite in this mode (timm's tf_efficientnet_lite*; no
         torchvision).

    python benchmarks/bench.py --models lite0,b0 --modes fast --batch-sizes 1,16 --with-compiled  # issue 22
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import timm
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import effnet_zoo  # noqa: E402
from effnet_zoo.weights.timm_format import from_timm  # noqa: E402

RESOLUTION = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
# EfficientNet-Lite (fast mode only: torchvision has none): ReLU6, no squeeze-excitation, made to be quantized
RESOLUTION.update({"lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300})


def build(variant: str, library: str) -> torch.nn.Module:
    """The three models with the same weights where the layouts allow (ours <- timm's)."""
    torch.manual_seed(0)
    if library == "timm_tf":
        return timm.create_model(f"tf_efficientnet_{variant}")
    if library == "torchvision":
        return getattr(torchvision.models, f"efficientnet_{variant}")()
    if library == "ours_plain":  # ours running its modules as written in training, what it did before the units
        model = build(variant, "ours")
        model.set_lean_training(False)
        return model
    if library == "timm":  # timm's own (PyTorch-trained) EfficientNet, for the saved-bytes comparison
        return timm.create_model(f"efficientnet_{variant}")
    ours = timm.create_model(f"effnet_{variant}" if variant.startswith("lite") else f"effnet_v1_{variant}")
    ours.load_state_dict(from_timm(build(variant, "timm_tf").state_dict()))
    return ours


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def autocast(args: argparse.Namespace):
    if args.dtype == "bf16":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return nullcontext()


def prepare(model: torch.nn.Module, args: argparse.Namespace, train: bool) -> torch.nn.Module:
    model = model.to(args.device).train(train)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    return model


def make_input(batch: int, size: int, args: argparse.Namespace) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, device=args.device)
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def bench_infer(variant: str, args: argparse.Namespace, mode: str = "infer") -> list[dict]:
    """Eval models under inference_mode; ``mode="watched"`` adds ours with a hook on every conv and BatchNorm."""
    size = RESOLUTION[variant]
    models = {lib: prepare(build(variant, lib), args, train=False) for lib in ("ours", "timm_tf", "torchvision")}
    if mode == "watched":
        models["ours_watched"] = watched(prepare(build(variant, "ours"), args, train=False))
    rows = []
    for batch in args.batch_sizes:
        x = make_input(batch, size, args)

        def run(m, x=x):
            with torch.inference_mode(), autocast(args):
                return m(x)

        med = interleaved({k: (lambda m=m: run(m)) for k, m in models.items()}, args.rounds, args.warmup, args.device)
        rows.append(_row(mode, variant, batch, size, med))
    return rows


def watched(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with a no-op forward hook on every conv and BatchNorm, as a probe or FLOP counter would add."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            module.register_forward_hook(lambda *_: None)
    return model


def bench_watched(variant: str, args: argparse.Namespace) -> list[dict]:
    return bench_infer(variant, args, mode="watched")


def fast_paths(variant: str, args: argparse.Namespace, size: int, batch: int) -> dict[str, Callable[[], object]]:
    from torch.fx.experimental.optimization import fuse

    x = torch.randn(batch, 3, size, size, device=args.device)
    ours = effnet_zoo.optimize_for_inference(build(variant, "ours").to(args.device).eval())
    lite = variant.startswith("lite")
    tv = (
        None
        if lite
        else fuse(build(variant, "torchvision").to(args.device).eval()).to(memory_format=torch.channels_last)
    )
    timm_tf = build(variant, "timm_tf").to(args.device).eval()
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run(m, inp):
        with torch.inference_mode(), autocast(args):
            return m(inp)

    def run_bf16(m):
        with torch.inference_mode(), effnet_zoo.bf16_autocast("cpu"):
            return m(x)

    paths = {"ours": lambda: run(ours, x), "timm_tf": lambda: run(timm_tf, x)}
    if tv is not None:
        paths["torchvision"] = lambda: run(tv, x_cl)
    if args.device == "cpu" and args.dtype == "fp32" and not args.compile:
        bf16 = effnet_zoo.native_bf16("cpu")
        if bf16:
            paths["ours_bf16"] = lambda: run_bf16(ours)
        if args.with_compiled:  # effnet_zoo.compile_for_inference, compiled here by a first call of each
            compiled = effnet_zoo.compile_for_inference(ours)
            paths["ours_compiled"] = lambda: run(compiled, x)
            if bf16:
                compiled_bf16 = effnet_zoo.compile_for_inference(ours)
                paths["ours_bf16_compiled"] = lambda: run_bf16(compiled_bf16)
        for name, int8 in (("onnxruntime", False), ("onnxruntime_int8", True)):
            session = _onnxruntime_session(ours, x, int8)
            if session is not None:
                feed = {session.get_inputs()[0].name: x.numpy()}
                paths[name] = lambda session=session, feed=feed: session.run(None, feed)
    return paths


def _onnxruntime_session(fast: torch.nn.Module, x: torch.Tensor, int8: bool = False):
    """ONNX Runtime on the file ``effnet-zoo export --format onnx`` writes (the same fast path, exported), with
    as many threads as torch uses; None without onnxruntime (the ``export`` extra). ``int8``: the file
    ``export --int8`` writes, calibrated here on the input itself (the ranges change what it computes, not how
    fast)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from effnet_zoo.tasks.export import write_exported
    from effnet_zoo.tasks.quantize import quantize_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.onnx"
        with torch.no_grad():
            write_exported("onnx", fast, x, path, dynamic_batch=False)
        if int8:
            quantize_onnx(Path(path), Path(f"{tmp}/int8.onnx"), [x])
            path = f"{tmp}/int8.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # ORT's idle threads spin by default, taking the cores from the candidates timed between its runs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def bench_fast(variant: str, args: argparse.Namespace) -> list[dict]:
    size = RESOLUTION[variant]
    rows = []
    for batch in args.batch_sizes:
        med = interleaved(fast_paths(variant, args, size, batch), args.rounds, args.warmup, args.device)
        rows.append(_row("fast", variant, batch, size, med))
    return rows


def _train_step_fn(model: torch.nn.Module, batch: int, size: int, args: argparse.Namespace):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = make_input(batch, size, args)
    y = torch.randint(0, 1000, (batch,), device=args.device)

    def step():
        with autocast(args):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, bf16: bool = False) -> int:
    """Bytes autograd keeps for backward during one training forward of ``model`` on ``x``: every distinct storage
    ``saved_tensors_hooks`` sees, the model's own parameters and buffers left out. Device-independent: it is what
    a GPU must hold at the end of the forward besides the weights (batch size on a fixed GPU stops there)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)
    return sum(seen.values())


def bench_saved(variant: str, args: argparse.Namespace) -> list[dict]:
    """Saved-for-backward MiB per image, fp32 and bf16 autocast, for ours, timm's TF port, timm's native model and
    torchvision, in train mode at the variant's size (batch ``--train-batch``, at most 4: the figure is per image)."""
    size = RESOLUTION[variant]
    x = make_input(min(args.train_batch, 4), size, args)
    models = {lib: build(variant, lib).to(args.device).train() for lib in ("ours", "timm_tf", "timm", "torchvision")}
    mib = {}
    for bf16 in (False, True):
        for lib, model in models.items():
            mib[f"{lib}_{'bf16' if bf16 else 'fp32'}"] = saved_activation_bytes(model, x, bf16) / 2**20 / len(x)
    return [
        {
            "mode": "saved",
            "model": variant,
            "size": size,
            "mib_per_image": {k: round(v, 1) for k, v in mib.items()},
            "ours_vs_timm_tf": {p: round(mib[f"ours_{p}"] / mib[f"timm_tf_{p}"], 3) for p in ("fp32", "bf16")},
        }
    ]


def _peak_memory_child(variant: str, library: str, args: argparse.Namespace, queue) -> None:
    size = RESOLUTION[variant]
    model = prepare(build(variant, library), args, train=True)
    if args.grad_checkpointing and library == "ours":
        model.set_grad_checkpointing(True)
    step = _train_step_fn(model, args.train_batch, size, args)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = _reset_peak_rss()
    step()
    step()
    queue.put(torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else _peak_rss_growth_mib(baseline))


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _reset_peak_rss() -> float:
    """Reset the peak-RSS mark (Linux ``clear_refs``) and return the current RSS in MiB.

    ``getrusage``'s ru_maxrss cannot serve: it survives fork + exec, so a child starts with its parent's peak.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status_mib("VmRSS")


def _peak_rss_growth_mib(baseline: float) -> float:
    return _proc_status_mib("VmHWM") - baseline


def _in_fresh_process(target, *args) -> object:
    ctx = multiprocessing.get_context("spawn")  # fork after OpenMP threads started can deadlock
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def peak_memory_mib(variant: str, library: str, args: argparse.Namespace) -> float:
    """Peak memory of two training steps, each library in its own fresh process."""
    return _in_fresh_process(_peak_memory_child, variant, library, args)


def bench_train(variant: str, args: argparse.Namespace) -> list[dict]:
    """Training steps, interleaved; ``ours_plain`` is ours with the units off (``set_lean_training(False)``)."""
    size = RESOLUTION[variant]
    libs = ("ours", "ours_plain", "timm_tf", "torchvision")
    models = {lib: prepare(build(variant, lib), args, train=True) for lib in libs}
    if args.grad_checkpointing:
        models["ours"].set_grad_checkpointing(True)
    steps = {k: _train_step_fn(m, args.train_batch, size, args) for k, m in models.items()}
    med = interleaved(steps, max(3, args.rounds // 2), 1, args.device)
    row = _row("train", variant, args.train_batch, size, med)
    del models, steps
    if args.memory:
        row["peak_mib"] = {lib: round(peak_memory_mib(variant, lib, args), 1) for lib in med}
    return [row]


def _load_child(variant: str, library: str, path: str, queue) -> None:
    import effnet_zoo  # noqa: F401  (registers our models in the fresh process)

    with torch.device("meta"):  # timm's key order (a file's keys come back sorted), outside the measurement
        order = list(timm.create_model(f"tf_efficientnet_{variant}").state_dict())
    baseline, start = _reset_peak_rss(), time.perf_counter()
    if library == "torchvision":
        from safetensors.torch import load_file

        model = getattr(torchvision.models, f"efficientnet_{variant}")()
        model.load_state_dict(_torchvision_keys(load_file(path), order, model), strict=False)
    else:
        name = f"effnet_v1_{variant}" if library == "ours" else f"tf_efficientnet_{variant}"
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path, hf_hub_id=None))
    queue.put((time.perf_counter() - start, _peak_rss_growth_mib(baseline)))


def _torchvision_keys(state_dict: dict, order: list[str], model: torch.nn.Module) -> dict:
    """Timm's tensors under torchvision's names, matched by module order (identical layouts, B0-B7)."""
    skip = "num_batches_tracked"
    tensors = [state_dict[k] for k in order if not k.endswith(skip)]
    names = [k for k in model.state_dict() if not k.endswith(skip)]
    return dict(zip(names, tensors, strict=True))


def bench_load(variant: str, args: argparse.Namespace) -> list[dict]:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.safetensors")
        save_file(build(variant, "timm_tf").state_dict(), path)
        measured = {lib: [] for lib in ("ours", "timm_tf", "torchvision")}
        for _ in range(max(1, args.rounds // 4)):
            for lib, runs in measured.items():
                runs.append(_in_fresh_process(_load_child, variant, lib, path))
    med = {lib: statistics.median(t for t, _ in runs) for lib, runs in measured.items()}
    row = _row("load", variant, 1, RESOLUTION[variant], med)
    row["peak_mib"] = {lib: round(statistics.median(m for _, m in runs), 1) for lib, runs in measured.items()}
    return [row]


LOW_PRECISION = ("ours_compiled", "ours_bf16", "ours_bf16_compiled", "onnxruntime_int8")  # each vs ORT fp32


def _row(mode: str, variant: str, batch: int, size: int, med: dict[str, float]) -> dict:
    return {
        "mode": mode,
        "model": variant,
        "batch": batch,
        "size": size,
        "ms": {k: round(v * 1000, 2) for k, v in med.items()},
        "img_per_s": {k: round(batch / v, 1) for k, v in med.items()},
        "speedup_vs_timm_tf": round(med["timm_tf"] / med["ours"], 3),
        **({"speedup_vs_torchvision": round(med["torchvision"] / med["ours"], 3)} if "torchvision" in med else {}),
        **({"onnxruntime_vs_ours": round(med["ours"] / med["onnxruntime"], 3)} if "onnxruntime" in med else {}),
        # issue 22's goals are set against ONNX Runtime fp32: ours fp32 / bf16, and INT8, each against it
        **(
            {
                f"{k}_vs_onnxruntime": round(med["onnxruntime"] / med[k], 3)
                for k in LOW_PRECISION
                if k in med and "onnxruntime" in med
            }
        ),
        **({"watched_vs_ours": round(med["ours_watched"] / med["ours"], 3)} if "ours_watched" in med else {}),
        **({"units_speedup_vs_plain": round(med["ours_plain"] / med["ours"], 3)} if "ours_plain" in med else {}),
    }


def machine(args: argparse.Namespace) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torchvision": torchvision.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="b0", help="comma-separated variants, e.g. b0,b3,b7")
    p.add_argument("--modes", default="infer,train", help="comma-separated: infer, train, fast, watched, load, saved")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-sizes", default="1,16", help="inference batch sizes")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    p.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile every candidate")
    p.add_argument(
        "--with-compiled",
        action="store_true",
        help="fast: also ours through effnet_zoo.compile_for_inference, fp32 and bf16 (compiles first)",
    )
    p.add_argument("--grad-checkpointing", action="store_true", help="ours with gradient checkpointing (train)")
    p.add_argument("--img-size", type=int, help="override every variant's native resolution (e.g. for a smoke run)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="train: skip the fresh-process peak-memory runs")  # fmt: skip
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.img_size:
        RESOLUTION.update(dict.fromkeys(RESOLUTION, args.img_size))
    lite = [v for v in args.models.split(",") if v.startswith("lite")]
    if lite and set(args.modes.split(",")) - {"fast"}:
        p.error(f"{', '.join(lite)}: EfficientNet-Lite is benchmarked in --modes fast only (torchvision has none)")
    modes = {"infer": bench_infer, "train": bench_train, "fast": bench_fast, "watched": bench_watched,
             "load": bench_load, "saved": bench_saved}  # fmt: skip
    rows = []
    for variant in args.models.split(","):
        for mode in args.modes.split(","):
            rows += modes[mode](variant, args)
            if not args.json:
                _print(rows[-len(args.batch_sizes) if mode in ("infer", "fast", "watched") else -1 :])
    if args.json:
        print(json.dumps({"machine": machine(args), "args": vars(args), "results": rows}, indent=2))
    else:
        print("machine:", json.dumps(machine(args)))
    return 0


def _print(rows: list[dict]) -> None:
    for r in rows:
        if r["mode"] == "saved":
            mib = ", ".join(f"{k} {v:.1f}" for k, v in r["mib_per_image"].items())
            ratio = r["ours_vs_timm_tf"]
            print(f"saved {r['model']:<4} at {r['size']}: MiB per image {mib}  |  ours x{ratio['fp32']:.2f} of timm "
                  f"tf_ in fp32, x{ratio['bf16']:.2f} in bf16", flush=True)  # fmt: skip
            continue
        ms = "  ".join(f"{k} {v:.1f} ms" for k, v in r["ms"].items())
        line = (f"{r['mode']:<6}{r['model']:<4} batch {r['batch']:<4} {ms}  |  ours x{r['speedup_vs_timm_tf']:.2f} "
                f"vs timm tf_")  # fmt: skip
        if "speedup_vs_torchvision" in r:
            line += f", x{r['speedup_vs_torchvision']:.2f} vs torchvision"
        if "onnxruntime_vs_ours" in r:
            line += f", onnxruntime x{r['onnxruntime_vs_ours']:.2f} vs ours"
        for k in LOW_PRECISION:
            if f"{k}_vs_onnxruntime" in r:
                line += f", {k} x{r[f'{k}_vs_onnxruntime']:.2f} vs onnxruntime"
        if "units_speedup_vs_plain" in r:
            line += f"  |  units x{r['units_speedup_vs_plain']:.2f} vs ours plain"
        if "watched_vs_ours" in r:
            line += f"  |  watched (a hook on every conv/BN) takes x{r['watched_vs_ours']:.2f} ours' time"
        if "peak_mib" in r:
            line += "  | peak MiB " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_mib"].items())
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
