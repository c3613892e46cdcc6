"""Every wait has a bound (issue 20: hangs on special files and folder links).

A FIFO in place of an image made `validate` and `finetune` wait forever, and a FIFO as the weights in the Hub
cache hung `create_model(..., pretrained=True)`; a folder linking to its parent made `validate` count 246 images
instead of 6, and two such links hung it. Each scenario runs in a subprocess with a deadline, so a regression
fails instead of hanging the suite.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
from conftest import add_hub_repo
from PIL import Image

import effnet_zoo

DEADLINE_S = 60  # what a hang hits; the scenarios themselves take seconds


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    model = timm.create_model("effnet_v1_b0", width_mult=0.25, depth_mult=0.25, num_classes=2)
    return effnet_zoo.save_pretrained(model, tmp_path_factory.mktemp("m") / "model")


def image_tree(root: Path, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def run_cli(*args) -> subprocess.CompletedProcess:
    script = "import sys; from effnet_zoo.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=DEADLINE_S)  # fmt: skip


def test_validate_counts_each_image_once_and_never_opens_a_fifo(folder, tmp_path):
    data = tmp_path / "val"
    image_tree(data)
    (data / "a" / "up").symlink_to(data, target_is_directory=True)  # a loop: a/up/a/up/...
    (data / "b" / "up").symlink_to(data / "a", target_is_directory=True)  # and a second one
    os.mkfifo(data / "b" / "pipe.png")
    (data / "c").symlink_to(data / "a", target_is_directory=True)  # a class folder linked in: followed once
    result = run_cli("validate", "--data", data, "--model", f"local-dir:{folder}", "--workers", "0", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    # 6 images in a/ and b/; c/ is a/ linked in, but a folder is visited once (as a/ or as c/), so no image twice
    assert report["num_images"] == 6, report
    assert [path for path, _ in report["skipped"]] == [str(data / "b" / "pipe.png")]
    assert "a FIFO (named pipe), not a regular file" in report["skipped"][0][1]


def test_finetune_leaves_a_fifo_out_with_a_warning(folder, tmp_path):
    data = tmp_path / "data"
    image_tree(data / "train", 2)
    image_tree(data / "val", 1)
    os.mkfifo(data / "train" / "a" / "pipe.png")
    (data / "train" / "b" / "loop").symlink_to(data / "train", target_is_directory=True)
    result = run_cli("finetune", "--data", data, "--model", f"local-dir:{folder}", "--out", tmp_path / "run",
                     "--epochs", "1", "--batch-size", "2", "--img-size", "32", "--workers", "0",
                     "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 file in" in result.stderr and "pipe.png: a FIFO (named pipe), not a regular file" in result.stderr
    assert "fine-tuned" in result.stdout and "on 2 classes" in result.stdout


def test_a_fifo_in_the_hub_cache_is_refused_not_read(tmp_path):
    """A FIFO as model.safetensors inside the Hub cache hung create_model(..., pretrained=True) for a tag."""
    cache = tmp_path / "hub"
    snapshot = add_hub_repo("timm/tf_efficientnet_lite0.in1k", {"config.json": b"{}"}, cache)
    os.mkfifo(snapshot / "model.safetensors")
    script = textwrap.dedent("""
        import timm, effnet_zoo
        try:
            timm.create_model("effnet_lite0.in1k", pretrained=True)
        except Exception as e:
            print(type(e).__name__, e)
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE_S,
                            env=env)  # fmt: skip
    assert "a FIFO (named pipe), not a regular file" in result.stdout, result.stdout + result.stderr[-2000:]


def test_predict_names_what_it_cannot_read_and_goes_on(folder, tmp_path):
    """A FIFO or /dev/zero given by name was skipped as "empty file (0 bytes)"; a link predict may not even look
    at ended the whole run with "Permission denied"."""
    tree = tmp_path / "photos"
    image_tree(tree, 1)
    os.mkfifo(tree / "a" / "pipe.png")
    (tree / "b" / "zero.png").symlink_to("/dev/zero")
    (tree / "b" / "forbidden.png").symlink_to("/proc/1/cwd/x.png")  # EACCES, even for root, in a container
    result = run_cli("predict", tree, tree / "a" / "pipe.png", "--model", f"local-dir:{folder}", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert "a FIFO (named pipe), not a regular file" in reasons["pipe.png"]
    assert "a device, not a regular file" in reasons["zero.png"]
    # EACCES where /proc/1 is protected (containers, even for root); elsewhere the link is simply broken
    assert "cannot be read" in reasons["forbidden.png"] or "not a regular file" in reasons["forbidden.png"]
    assert len(report["predictions"]) == 2


def test_a_damaged_hub_cache_ref_is_named_not_read_whole(tmp_path):
    """A 1 GiB refs/main in the Hub cache took 8 GB of memory (huggingface_hub reads it whole)."""
    cache = tmp_path / "hub"
    snapshot = add_hub_repo("org/bigref", {"config.json": b"{}"}, cache)
    with open(snapshot.parent.parent / "refs" / "main", "wb") as f:
        f.truncate(2**30)  # sparse
    image_tree(tmp_path / "photos", 1)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    script = "import sys; from effnet_zoo.cli import main; sys.exit(main(sys.argv[1:]))"
    photos = str(tmp_path / "photos")
    result = subprocess.run([sys.executable, "-c", script, "predict", photos, "--model", "hf-hub:org/bigref"],
                            capture_output=True, text=True, timeout=DEADLINE_S, env=env)  # fmt: skip
    assert result.returncode == 2 and "is 1,073,741,824 bytes, not a commit hash" in result.stderr, result.stderr
