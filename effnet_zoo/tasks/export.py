"""Export a model to ONNX, TorchScript or a ``torch.export`` program, and check the file against eager PyTorch.

The exported network is ``optimize_for_inference``'s: BatchNorm folded and TF padding static, so the graph
has no run-time padding logic and a dynamic batch dimension costs nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import resolve_data_config

from .._io import atomic_write, check_replaceable_file, no_space
from ..inference import optimize_for_inference
from ..options import EXPORT_FORMATS, MIN_CALIBRATION_IMAGES
from .common import load_pretrained
from .quantize import Agreement, agreement, image_batches, quantize_onnx, split_images

FORMATS = EXPORT_FORMATS
SUFFIXES = {
    "onnx": (".onnx",),
    "torchscript": (".pt", ".pth", ".ts", ".jit", ".torchscript"),
    "torch-export": (".pt2",),
}
MARK = "effnet_zoo.export"  # an extra file (TorchScript, .pt2) or metadata entry (ONNX) naming the format


@dataclass
class ExportResult:
    out: Path
    fmt: str
    input_shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    checked_batch: int
    int8: Agreement | None = None  # --int8: agreement with fp32 on the folder's images that did not calibrate it
    calibrated_on: int = 0
    calibration_unreadable: int = 0


@contextlib.contextmanager
def _pt2_quiet():
    """torch's .pt2 packager warns about tensors that share storage "when your weights are not on CPU"; these are."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        yield


def write_exported(fmt: str, model: torch.nn.Module, x: torch.Tensor, path: str, dynamic_batch: bool) -> None:
    """Write ``model`` traced on ``x`` as ``fmt`` to ``path``: what ``export`` writes (benchmarks/bench.py too)."""
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise RuntimeError("ONNX export needs the export extra: pip install 'effnet_zoo[export]'") from e
        dynamic = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
        program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic, input_names=["x"],
                                    output_names=["logits"], verbose=False)  # fmt: skip
        program.model.metadata_props[MARK] = fmt  # what `export --force` may replace later
        program.save(path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still widely deployed
            torch.jit.script(model).save(path, _extra_files={MARK: fmt})
    else:
        dynamic = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
        # as an open file: given the temporary file's name (not *.pt2) torch logs a warning on save and load
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
        with open(path, "wb") as f, _pt2_quiet():
            torch.export.save(program, f, extra_files={MARK: fmt})


def _onnx_session(path: Path):  # noqa: ANN202  (onnxruntime is optional)
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError("checking an ONNX file needs onnxruntime: pip install 'effnet_zoo[export]'") from e
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run_session(session, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _mark_onnx(path: Path) -> None:
    """Name the format in the file's metadata (what ``--force`` looks for), where a rewrite dropped it."""
    import onnx

    model = onnx.load(str(path))
    if {p.key: p.value for p in model.metadata_props}.get(MARK) != "onnx":
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, MARK: "onnx"})
        onnx.save(model, str(path))


def _run_exported(fmt: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    """Run the file as a deployment would: a fresh load, not the in-memory object."""
    if fmt == "onnx":
        return _run_session(_onnx_session(path), x)
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    with open(path, "rb") as f, _pt2_quiet():
        return torch.export.load(f).module()(x)


def _export_kind(path: Path) -> str | None:
    """Which format ``path`` holds if effnet_zoo's export wrote it (the mark it leaves in every file); None for
    anything else, a user's own TorchScript or ONNX model included."""
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                marks = [n for n in z.namelist() if n.split("/", 1)[-1] == f"extra/{MARK}"]
                kind = z.read(marks[0])[:32].decode("ascii", "replace") if len(marks) == 1 else None
        except (zipfile.BadZipFile, OSError, KeyError):
            return None
        return kind if kind in ("torchscript", "torch-export") else None
    if path.stat().st_size > 2**31:  # protobuf's own limit: no ONNX file of ours is larger (and it is read whole)
        return None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises DecodeError and others on what is not an ONNX protobuf
        return None
    return "onnx" if {p.key: p.value for p in model.metadata_props}.get(MARK) == "onnx" else None


def check_replaceable_export(path: Path, fmt: str) -> None:
    """``--force`` replaces only a previous export of the same format: never a model folder's weights, a
    checkpoint, a file of another kind, a link or a special file (a TorchScript file written over a folder's
    model.safetensors made the folder unloadable)."""
    from ..hub.config import CONFIG_NAME
    from ..weights.torch_file import WEIGHT_FILES

    if not path.exists() and not path.is_symlink():
        return
    check_replaceable_file(path)
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link; --force replaces only a file export wrote: choose "
                              "another path")  # fmt: skip
    if path.name in WEIGHT_FILES or path.name == CONFIG_NAME or (path.parent / CONFIG_NAME).exists():
        raise FileExistsError(
            f"{path} is part of a model folder ({path.parent}); --force never replaces a model's own files: "
            "choose another path for the export"
        )
    kind = _export_kind(path)
    if kind != fmt:
        what = f"a {kind} export" if kind else "not a file that effnet-zoo export wrote"
        raise FileExistsError(f"{path} is {what}; --force replaces only a previous {fmt} export: choose another path")


def _check_space(out: Path, model: torch.nn.Module, copies: int = 1) -> None:
    """Refuse an export the disk cannot hold, before writing: torch's TorchScript and .pt2 writers abort the whole
    process (C++ terminate) when the disk fills, so nothing could be cleaned up or explained afterwards."""
    import shutil

    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 1.1 * copies + 2**20
    folder = next(p for p in [out.parent, *out.parent.parents] if p.exists())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise no_space(
            f"the disk holding {out.parent} has {free / 2**20:,.1f} MiB free, and the export needs about "
            f"{need / 2**20:,.1f} MiB; nothing was written. Free some space, or choose another --out"
        )


def export(
    model_name: str,
    fmt: str,
    out: str,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    img_size: int | None = None,
    force: bool = False,
    seed: int = 0,
    int8: str | None = None,
    calibration_images: int | None = None,
) -> ExportResult:
    """Export ``model_name``'s inference copy as ``fmt`` to ``out`` and check the written file against eager.

    ``int8``: a folder of images; the ONNX file is then quantized to INT8 (:mod:`.quantize`), calibrated on up to
    ``calibration_images`` (default 200) of them and checked on others (top-1 agreement with fp32, not a
    tolerance).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if int8 is not None and fmt != "onnx":
        raise ValueError(f"--int8 quantizes an ONNX file (ONNX Runtime's static quantization); got --format {fmt}")
    if calibration_images is not None and int8 is None:
        raise ValueError("--calibration-images goes with --int8 DIR (the images that calibrate INT8)")
    if calibration_images is not None and calibration_images < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"--calibration-images must be at least {MIN_CALIBRATION_IMAGES}, got {calibration_images}")
    out_path = Path(out)
    check_replaceable_export(out_path, fmt)  # an existing file that is not ours is named for what it is
    if out_path.suffix.lower() not in SUFFIXES[fmt]:  # `--format onnx --out x.pt` was written silently
        raise ValueError(
            f"--out {out} does not end in {' / '.join(SUFFIXES[fmt])}, what {fmt} files are named (runtimes and "
            f"viewers go by it); name it {out_path.with_suffix(SUFFIXES[fmt][0]).name}"
        )
    if (out_path.exists() or out_path.is_symlink()) and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    calibrate, check_images = split_images(int8, calibration_images or 200) if int8 is not None else ([], [])
    model = load_pretrained(model_name).eval()
    fast = optimize_for_inference(model)
    cfg = resolve_data_config({}, model=model)
    chans, height, width = cfg["input_size"]
    if img_size:
        height = width = img_size
    gen = torch.Generator().manual_seed(seed)
    dynamic_batch = dynamic_batch or int8 is not None  # calibrated and checked in batches of any size
    if dynamic_batch:  # torch.export specialises a size-1 dim to a constant: trace with 2, any size runs
        batch_size = max(batch_size, 2)
    x = torch.randn(batch_size, chans, height, width, generator=gen)
    # Check against the eager model (not the fast copy), on another batch size when it is dynamic.
    check = torch.randn(batch_size + 1 if dynamic_batch else batch_size, chans, height, width, generator=gen)
    with torch.no_grad():
        expected = model(check)
    if not torch.isfinite(expected).all():
        raise ValueError(
            f"{model_name} gives NaN/Inf logits on a random input: its weights are damaged; nothing exported"
        )
    _check_space(out_path, fast, copies=3 if int8 is not None else 1)
    outputs = {}

    def write(tmp: Path) -> None:
        with torch.inference_mode(False), torch.no_grad():
            if int8 is None:
                write_exported(fmt, fast, x, str(tmp), dynamic_batch)
            else:
                with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".fp32-") as folder:
                    float_file = Path(folder) / "model.onnx"
                    write_exported(fmt, fast, x, str(float_file), dynamic_batch)
                    read = quantize_onnx(float_file, tmp, image_batches(model, calibrate, img_size))
                if read < MIN_CALIBRATION_IMAGES:
                    raise ValueError(f"only {read} of the {len(calibrate)} calibration images could be read; "
                                     f"calibration needs at least {MIN_CALIBRATION_IMAGES}")  # fmt: skip
                outputs["calibrated_on"] = read
                outputs["calibration_unreadable"] = len(calibrate) - read
                _mark_onnx(tmp)
            outputs["got"] = got = _run_exported(fmt, tmp, check).float()  # the file as written, before renaming
            if not torch.isfinite(got).all():  # raised inside the write: the half-checked file is not kept
                raise ValueError(f"the exported {fmt} model gives NaN/Inf where the model does not; nothing exported")
            if int8 is not None:
                session = _onnx_session(tmp)
                outputs["int8"] = agreement(model, lambda b: _run_session(session, b), check_images, img_size)

    atomic_write(out_path, write)
    got = outputs["got"]
    diff = (got - expected).abs().max().item()
    return ExportResult(out_path, fmt, tuple(x.shape), diff, diff / expected.abs().max().item(), check.shape[0],
                        outputs.get("int8"), outputs.get("calibrated_on", 0),
                        outputs.get("calibration_unreadable", 0))  # fmt: skip
