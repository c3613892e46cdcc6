"""An unreachable Hub is known within seconds wherever users meet it, not after huggingface_hub's retries.

The Hub is a local port that refuses connections (``HF_ENDPOINT``), online mode, a Hub cache the test lays out.
Before, each weights file was retried five times with back-off: ~50 s and ten "Retrying" lines before the error.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
from conftest import add_hub_repo, closed_port, safetensors_bytes, timm_reference
from PIL import Image

import effnet_zoo

# Runs every case in one fresh process (the endpoint is read when huggingface_hub is imported) and reports
# each one's outcome and duration as JSON.
CASES = r"""
import contextlib, io, json, sys, time
import timm, torch
import effnet_zoo
from effnet_zoo.cli import main

work = sys.argv[1]
img, data = f"{work}/photo.png", f"{work}/data"
cases = {
    "python, nothing cached": lambda: timm.create_model("effnet_v1_b0", pretrained=True),
    "python, cached": lambda: timm.create_model("effnet_v1_b0.in1k", pretrained=True),
    "predict": lambda: main(["predict", img, "--model", "effnet_v1_b1"]),
    "validate": lambda: main(["validate", "--data", f"{data}/val", "--model", "effnet_v1_b1", "--workers", "0"]),
    "export": lambda: main(["export", "--model", "effnet_v1_b1", "--format", "onnx", "--out", f"{work}/m.onnx"]),
    "finetune": lambda: main(["finetune", "--data", data, "--model", "effnet_v1_b1", "--out", f"{work}/run",
                              "--workers", "0", "--no-progress"]),
    "predict hf-hub, cached": lambda: main(["predict", img, "--model", "hf-hub:someone/cached-model"]),
    "predict hf-hub, nothing cached": lambda: main(["predict", img, "--model", "hf-hub:someone/elsewhere"]),
}
results = {}
for case, run in cases.items():
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            value = run()
        except Exception as e:
            value = f"{type(e).__name__}: {e}"
    if isinstance(value, torch.nn.Module):
        value = {"stem": value.stem.conv.weight.flatten()[:5].tolist()}
    results[case] = {"value": value, "stderr": err.getvalue(), "seconds": time.perf_counter() - start}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    work = tmp_path_factory.mktemp("unreachable")
    cache = work / "hub-cache"
    ref = timm_reference("tf_efficientnet_b0", seed=3)
    add_hub_repo("timm/tf_efficientnet_b0.in1k", {"model.safetensors": safetensors_bytes(ref.state_dict(), work)},
                 cache)  # fmt: skip
    folder = effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=3), work / "saved")
    add_hub_repo("someone/cached-model", {f.name: f.read_bytes() for f in folder.iterdir()}, cache)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "photo.png")
    for split in ("train", "val"):
        for name in ("a", "b"):
            (work / "data" / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(pixels).save(work / "data" / split / name / f"{i}.png")
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_OFFLINE": "0",
           "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CASES, str(work)], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Retrying" not in done.stderr  # huggingface_hub's back-off never started
    return json.loads(done.stdout.splitlines()[-1]), ref


ROUTES = "connect once (files are cached afterwards), point HF_HUB_CACHE at a cache that holds it"


def test_python_fails_at_once_with_the_routes(outcomes):
    results, _ = outcomes
    case = results["python, nothing cached"]
    assert case["value"].startswith("PretrainedWeightsUnavailable: the pretrained weights of effnet_v1_b0.ns_jft")
    assert "could not be reached (ConnectError" in case["value"] and ROUTES in case["value"]
    assert "local-dir:DIR" in case["value"] and case["value"].endswith("pretrained=False builds the model with "
                                                                       "random weights")  # fmt: skip
    assert case["seconds"] < 20  # huggingface_hub's retries took ~50 s


def test_python_loads_a_cached_copy_without_waiting(outcomes):
    results, ref = outcomes
    case = results["python, cached"]
    assert case["value"] == {"stem": ref.conv_stem.weight.flatten()[:5].tolist()}, case["value"]
    assert case["seconds"] < 20


@pytest.mark.parametrize("command", ["predict", "validate", "export", "finetune", "predict hf-hub, nothing cached"])
def test_every_command_fails_at_once_with_routes_it_has(outcomes, command):
    results, _ = outcomes
    case = results[command]
    assert case["value"] == 2, case
    line = case["stderr"].strip()
    assert line.startswith("effnet-zoo: error: ") and "\n" not in line
    assert "could not be reached (ConnectError" in line and ROUTES in line
    assert "pretrained=False" not in line  # a Python argument the command line does not have
    assert case["seconds"] < 20


def test_a_cached_hub_model_still_runs(outcomes):
    results, _ = outcomes
    case = results["predict hf-hub, cached"]
    assert case["value"] == 0, case
