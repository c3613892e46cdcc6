"""Every command and Python block in README.md and docs/ runs as written, in page order, offline.

Each page runs in its own empty folder, which holds only the inputs a reader would bring (photos, an image
folder, a TensorFlow checkpoint), and against a Hub cache laid out here with random weights for every model
name the page's blocks use, so a tag that does not exist fails. Blocks are pasted in order into one shell and
one Python session per page, as a reader following the page would.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tf_bundle_writer as writer
import timm
import torch
from conftest import add_hub_repo, cli, console_script, randomize_bn, safetensors_bytes
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- recipe: \w+ -->\n)?```(bash|python)\n(.*?)```", re.S)
PHOTOS = ROOT / "effnet_zoo" / "demo_photos"
MODEL_NAME = re.compile(r"effnet_(?:v1_b\d|v1_l2|lite\d)(?:\.\w+)?")

# Commands this suite does not run, each with the reason and where what it does is tested.
NOT_RUN = {
    "make demo": "installs the demo environment; effnet-zoo demo itself runs in tests/test_demo.py",
    "make test": "is this suite",
    "pip install -e '.[demo]'": "installs the package, as .ci/run does before this suite",
    "OUT=gpu-results bash tools/gpu_check.sh": "needs a CUDA GPU (tests/test_cuda.py on the device)",
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0:29400 "
    "$(which effnet-zoo) predict /data/photos --model effnet_v1_b0.aa_in1k --out /data/labels.jsonl": "needs two "
    "machines; tests/test_predict_stream.py runs predict and validate as 2 nodes x 1 over the loopback rendezvous",
}
NOT_RUN[
    "torchrun --nproc_per_node 2 $(which effnet-zoo) predict photos/ --model effnet_v1_b0.aa_in1k --out labels-2.jsonl"
] = (
    "tests/test_predict_stream.py runs predict and validate under torchrun (2 processes, 2 nodes x 1) against one "
    "process; starting two more torch processes here cost the suite 20 s"
)
# timm's scripts live only in timm's git repository (not in its package): the route itself is tested in
# tests/test_timm_scripts.py with a script that does what they do with a model
TIMM_SCRIPTS = "needs timm's scripts from its git repository; the route is tested in tests/test_timm_scripts.py"
NOT_RUN.update(
    {
        line: TIMM_SCRIPTS
        for line in (
            "python -m effnet_zoo.run validate.py --model effnet_v1_b0.aa_in1k --pretrained --data-dir imagenet/val",
            "python -m effnet_zoo.run validate.py --model effnet_v1_b0 --checkpoint output/train/last.pth.tar "
            "--aot-autograd --data-dir imagenet/val",
            "python -m effnet_zoo.run benchmark.py --model effnet_v1_b3 --bench inference --aot-autograd",
            "python -m effnet_zoo.run inference.py --model effnet_v1_b0.aa_in1k --pretrained --data-dir photos/",
            "python train.py --device-modules effnet_zoo --model effnet_v1_b0 --data-dir fruit --num-classes 2",
            "torchrun --nproc_per_node 2 -m effnet_zoo.run train.py --model effnet_v1_b0 --data-dir fruit "
            "--num-classes 2",
        )
    }
)


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of each block a reader runs. The recipes in docs/features.md run in test_clients.py,
    as written, beside timm's port."""
    return [(lang, code) for recipe, lang, code in BLOCK.findall(page.read_text()) if not recipe]


def model_names(page: Path) -> set[str]:
    return {m for _, code in blocks(page) for m in MODEL_NAME.findall(code)}


def lay_out_weights(name: str, tmp: Path) -> None:
    """The Hub repo behind ``name`` (a registered tag, or an architecture's default), with random weights."""
    if "." in name:
        assert name in timm.list_pretrained("effnet_*"), f"the docs use {name!r}, which is not a registered tag"
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg is not None and cfg.hf_hub_id, name
    arch = cfg.hf_hub_id.split("/", 1)[1].split(".")[0]  # timm's tf_efficientnet_*: the layout the Hub holds
    torch.manual_seed(0)
    state = randomize_bn(timm.create_model(arch)).state_dict()
    add_hub_repo(cfg.hf_hub_id, {"model.safetensors": safetensors_bytes(state, tmp)})


def tf_checkpoint(arch: str, prefix: Path) -> None:
    """A checkpoint laid out as Google's released ones: variables under ``efficientnet-bN/`` named as the TF
    model names them, each with its ExponentialMovingAverage shadow (random values)."""
    model = randomize_bn(timm.create_model(arch))
    v: dict[str, torch.Tensor] = {}

    def conv(scope, weight):  # [out, in, kh, kw] -> TF [kh, kw, in, out]
        v[f"{scope}/kernel"] = weight.permute(2, 3, 1, 0)

    def bn(scope, m):
        for tf_name, t in (("gamma", m.weight), ("beta", m.bias), ("moving_mean", m.running_mean),
                           ("moving_variance", m.running_var)):  # fmt: skip
            v[f"{scope}/{tf_name}"] = t

    norm = "tpu_batch_normalization"
    conv("stem/conv2d", model.stem.conv.weight)
    bn(f"stem/{norm}", model.stem.bn)
    for k, block in enumerate(b for stage in model.blocks for b in stage):
        scope, convs, norms = f"blocks_{k}", ["conv2d", "conv2d_1"], [norm, f"{norm}_1", f"{norm}_2"]
        if getattr(block, "expand", None) is not None:
            conv(f"{scope}/{convs.pop(0)}", block.expand.conv.weight)
            bn(f"{scope}/{norms.pop(0)}", block.expand.bn)
        v[f"{scope}/depthwise_conv2d/depthwise_kernel"] = block.dw.conv.weight.permute(2, 3, 0, 1)
        bn(f"{scope}/{norms.pop(0)}", block.dw.bn)
        for tf_se, ours in (("se/conv2d", block.se.reduce), ("se/conv2d_1", block.se.expand)):
            conv(f"{scope}/{tf_se}", ours.weight)
            v[f"{scope}/{tf_se}/bias"] = ours.bias
        conv(f"{scope}/{convs.pop(0)}", block.project.conv.weight)
        bn(f"{scope}/{norms.pop(0)}", block.project.bn)
    conv("head/conv2d", model.head.conv.weight)
    bn(f"head/{norm}", model.head.bn)
    v["head/dense/kernel"], v["head/dense/bias"] = model.classifier.weight.t(), model.classifier.bias
    root = "efficientnet-" + arch.rsplit("_", 1)[1]
    entries = []
    for name, t in v.items():
        data = t.detach().contiguous().numpy().tobytes()
        for suffix in ("", "/ExponentialMovingAverage"):
            entries.append(writer.Entry(f"{root}/{name}{suffix}", 1, tuple(t.shape), data))
    prefix.parent.mkdir(parents=True)
    writer.write(str(prefix), entries)


def reader_inputs(page: Path, where: Path) -> None:
    """What a reader of the page brings: photographs, image folders, Google's checkpoint."""
    text = page.read_text()
    photos = sorted(PHOTOS.glob("*.jpg"))
    if "photos/" in text:
        shutil.copytree(PHOTOS, where / "photos", ignore=shutil.ignore_patterns("*.md"))
    if "shots/" in text:
        (where / "shots" / "day1").mkdir(parents=True)
        shutil.copy(photos[0], where / "shots" / "day1" / "a.jpg")
        Image.open(photos[1]).save(where / "cat.png")
    if "--int8 calib/" in text:  # calibration needs 12 images or more: crops of the photographs
        (where / "calib").mkdir()
        for i in range(15):
            img = Image.open(photos[i % len(photos)])
            w, h = img.size
            img.crop((i * w // 60, i * h // 60, w - i * w // 60, h)).resize((160, 120)).save(
                where / "calib" / f"{i}.jpg"
            )
    if "imagenet/val" in text:  # ImageNet synset folders
        for synset, photo in (("n02123045", "cat.jpg"), ("n07920052", "espresso.jpg")):
            (where / "imagenet" / "val" / synset).mkdir(parents=True)
            shutil.copy(PHOTOS / photo, where / "imagenet" / "val" / synset / photo)
    if "--data fruit" in text:
        for split, n in (("train", 2), ("val", 1)):
            for c, fruit in enumerate(("apple", "banana")):
                (where / "fruit" / split / fruit).mkdir(parents=True)
                for i in range(n):
                    Image.open(photos[(c + i) % len(photos)]).resize((96, 64)).save(
                        where / "fruit" / split / fruit / f"{i}.jpg"
                    )
    for match in re.finditer(r"efficientnet-(b\d)/model\.ckpt", text):
        if not (where / f"efficientnet-{match[1]}").exists():
            tf_checkpoint(f"effnet_v1_{match[1]}", where / f"efficientnet-{match[1]}" / "model.ckpt")


def run_shell_line(line: str) -> None:
    if line in NOT_RUN:
        return
    words = shlex.split(line.replace("$(which effnet-zoo)", console_script()))
    if words[0] == "effnet-zoo":
        done = cli(*words[1:])
    else:
        assert words[0] == "torchrun", f"a command this runner does not know: {line!r}"
        words[0] = str(Path(sys.executable).parent / "torchrun")  # this environment's, as on a reader's PATH
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(words, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_runs_as_written(page, tmp_path, monkeypatch):
    where = tmp_path / "reader"
    where.mkdir()
    for name in sorted(model_names(page)):
        lay_out_weights(name, tmp_path)
    reader_inputs(page, where)
    monkeypatch.chdir(where)
    session: dict = {}
    for lang, code in blocks(page):
        if lang == "python":
            exec(compile(code, f"{page.name} python block", "exec"), session)
            continue
        for line in code.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                run_shell_line(line)


def test_commands_not_run_are_still_shown():
    """The NOT_RUN list cannot hide a command that no page shows any more."""
    shown = {line.split("  #", 1)[0].strip() for page in PAGES for lang, code in blocks(page) if lang == "bash"
             for line in code.splitlines()}  # fmt: skip
    assert set(NOT_RUN) <= shown, set(NOT_RUN) - shown
