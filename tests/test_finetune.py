"""``effnet-zoo finetune``: learns, resumes exactly after a SIGKILL, runs under torchrun, ends in a loadable folder."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import cli, console_script
from PIL import Image
from safetensors.torch import load_file

EXE = console_script()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two classes that survive timm's training augmentation: horizontal vs vertical noisy stripes."""
    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for name, axis in (("horizontal", 0), ("vertical", 1)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                period = int(rng.integers(6, 12))
                line = ((np.arange(48) + rng.integers(0, period)) // (period // 2)) % 2 * 200 + 20
                img = np.repeat(line[:, None], 48, 1) if axis == 0 else np.repeat(line[None, :], 48, 0)
                img = np.stack([img] * 3, -1) + rng.integers(-20, 20, (48, 48, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def finetune_args(lite0_dir, data, out, epochs=2, *extra):
    return ["finetune", "--data", data, "--model", f"local-dir:{lite0_dir}", "--out", out, "--epochs", str(epochs),
            "--batch-size", "8", "--img-size", "64", "--workers", "0", "--warmup-epochs", "0", "--lr", "1e-3",
            "--no-progress", *extra]  # fmt: skip


def run(args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(lite0_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    done = run(finetune_args(lite0_dir, data, out, 2, "--model-ema", "--ema-decay", "0.5"))
    assert done.returncode == 0, done.stderr[-3000:]
    (out.parent / "full.stdout").write_text(done.stdout)
    return out


def test_finetune_learns_and_ends_in_a_loadable_folder(uninterrupted, data):
    history = metrics(uninterrupted)
    assert [m["epoch"] for m in history] == [1, 2]
    assert all(m["train_img_per_s"] > 0 for m in history)  # throughput, also shown in the progress bar
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_top1"] > 50.0  # better than chance on the held-out images
    folder = uninterrupted / "model"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == ["horizontal", "vertical"] and config["num_classes"] == 2
    # The folder holds the EMA weights of the last checkpoint, and reloads with the same predictions.
    state = torch.load(uninterrupted / "checkpoint.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k]), k
    assert model.pretrained_cfg["label_names"] == ["horizontal", "vertical"]


def test_the_saved_model_evaluates_as_the_run_did(uninterrupted, data):
    """--img-size 64 was trained and evaluated at 64 px but saved as 224, so validate on the saved folder
    disagreed with finetune's own report (75% vs 62.5%). Every per-epoch summary is printed, --no-progress too."""
    config = json.loads((uninterrupted / "model" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    report = cli("validate", "--data", data / "val", "--model", f"local-dir:{uninterrupted / 'model'}", "--json",
                 "--workers", "0")  # fmt: skip
    assert report.returncode == 0, report.stderr
    last = metrics(uninterrupted)[-1]
    assert json.loads(report.stdout)["top1"] == pytest.approx(last["val_top1"])
    stdout = (uninterrupted.parent / "full.stdout").read_text()
    assert "epoch 1/2: train_loss" in stdout and "epoch 2/2: train_loss" in stdout
    assert "(1 process)" in stdout


@pytest.mark.parametrize("change", [("--img-size", "96"), ("--amp",), ("--lr", "2e-3"), ("--epochs", "3")])
def test_resume_refuses_settings_that_would_make_another_run(lite0_dir, data, uninterrupted, tmp_path, change):
    """--resume silently accepted a changed --img-size or a dropped --amp: a different run, reported as one."""
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    before = (out / "checkpoint.pt").read_bytes()
    args = finetune_args(lite0_dir, data, out, 2, "--model-ema", "--ema-decay", "0.5", "--resume")
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args.append(change[0])
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert "--resume: the run was started with other settings (" + change[0] in result.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


def test_sigkill_then_resume_equals_the_uninterrupted_run(lite0_dir, data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    args = [EXE, *map(str, finetune_args(lite0_dir, data, out, 2, "--model-ema", "--ema-decay", "0.5"))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and metrics(out)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "the run finished before it could be killed"
    killed_at = len(metrics(out))
    assert killed_at == 1

    resumed = run(finetune_args(lite0_dir, data, out, 2, "--model-ema", "--ema-decay", "0.5", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    timing = "train_img_per_s"  # throughput is a measurement, not a result
    assert [{k: v for k, v in m.items() if k != timing} for m in metrics(out)] == [
        {k: v for k, v in m.items() if k != timing} for m in metrics(uninterrupted)
    ]
    a, b = load_file(out / "model" / "model.safetensors"), load_file(uninterrupted / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten(lite0_dir, data, uninterrupted):
    before = (uninterrupted / "checkpoint.pt").read_bytes()
    again = cli(*finetune_args(lite0_dir, data, uninterrupted, 1))
    assert again.returncode == 2 and "--resume" in again.stderr and "--force" in again.stderr
    assert (uninterrupted / "checkpoint.pt").read_bytes() == before


def test_resume_from_a_damaged_checkpoint_says_so(lite0_dir, data, uninterrupted, tmp_path):
    out = tmp_path / "damaged"
    out.mkdir()
    good = (uninterrupted / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    done = cli(*finetune_args(lite0_dir, data, out, 2, "--resume"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{out / 'checkpoint.pt'} is not a readable PyTorch checkpoint, truncated or damaged" in done.stderr
    assert "restore it, or start over with --force" in done.stderr
    assert (out / "checkpoint.pt").read_bytes() == good[: len(good) // 2]


# Runs the CLI and, when the process exits, saves the parameters its optimizer last stepped (torch's public
# global optimizer hook): each rank's weights as that rank holds them, not what finetune reports about them.
RANK_WEIGHTS_WRAPPER = """
import atexit, os, sys
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

stepped = {}
register_optimizer_step_post_hook(lambda opt, args, kwargs: stepped.update(opt=opt))
atexit.register(lambda: torch.save(
    [p.detach().clone() for g in stepped["opt"].param_groups for p in g["params"]],
    os.path.join(sys.argv[1], "rank%s.pt" % os.environ["RANK"])))
from effnet_zoo.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_torchrun_two_processes(lite0_dir, data, tmp_path):
    """Both ranks end with identical weights (each rank's own parameters, saved by the process itself), the
    saved model holds them, and one epoch is logged once."""
    torchrun = Path(sys.executable).parent / "torchrun"
    assert torchrun.exists() or shutil.which("torchrun")
    out, probe = tmp_path / "ddp", tmp_path / "probe"
    probe.mkdir()
    (probe / "wrapper.py").write_text(RANK_WEIGHTS_WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(probe / "wrapper.py"), str(probe),
           *map(str, finetune_args(lite0_dir, data, out, 1))]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(2 processes)" in done.stdout and "Grad strides do not match" not in done.stderr
    rank0, rank1 = (torch.load(probe / f"rank{r}.pt") for r in (0, 1))
    assert len(rank0) == len(rank1) > 100
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True)), "the ranks drifted apart"
    before = load_file(lite0_dir / "model.safetensors")
    saved = load_file(out / "model" / "model.safetensors")
    trained = [k for k in saved if saved[k].is_floating_point() and not torch.equal(saved[k], before[k])]
    assert trained  # the run changed the weights...
    for k in trained:  # ...and every changed weight of the saved model is one the ranks hold
        if k.endswith(("weight", "bias")) and "running" not in k:
            assert any(torch.equal(p, saved[k]) for p in rank0 if tuple(p.shape) == tuple(saved[k].shape)), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "probe"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.jsonl", "model"]
    assert len(metrics(out)) == 1


def test_a_second_run_on_the_same_folder_fails_at_once(lite0_dir, data, tmp_path):
    """Two runs on one --out both exited 0 and mixed their files; the second now stops before touching it."""
    import fcntl
    import time

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".effnet-zoo.lock", "w") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        start = time.perf_counter()
        second = cli("finetune", "--data", data, "--model", f"local-dir:{lite0_dir}", "--out", out, "--epochs", "1")
        assert second.returncode == 2 and "another finetune (pid 4242) is writing to" in second.stderr
        assert time.perf_counter() - start < 30
    assert [p.name for p in out.iterdir()] == [".effnet-zoo.lock"]


def _layout(root: Path, source: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    """An image folder with the given number of images per class, taken from the fixture's images."""
    pool = sorted(source.glob("train/*/*.png"))
    for split, counts in (("train", train), ("val", val)):
        for name, n in counts.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                shutil.copy(pool[i], root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "train, val, message",
    [
        ({"a": 4}, {"a": 2}, "holds one class ('a'); fine-tuning a classifier needs at least two"),
        ({"a": 4, "b": 4, "c": 0}, {"a": 2, "b": 2}, "class folder(s) without images in"),
        ({"a": 4, "b": 4}, {"a": 2, "b": 2, "c": 2}, "has class(es) that"),
    ],
)
def test_class_folders_that_would_train_on_silently_are_refused(lite0_dir, data, tmp_path, train, val, message):
    """One class (every loss zero), an empty class folder (the class vanished from the labels) and validation
    classes training never sees (their images were dropped unseen) trained on with exit 0."""
    layout = _layout(tmp_path / "d", data, train, val)
    out = tmp_path / "run"
    result = run(finetune_args(lite0_dir, layout, out, 1))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    assert not out.exists()  # nothing left behind


def test_a_small_folder_trains_with_a_smaller_batch_and_says_so(lite0_dir, data, tmp_path):
    """24 images at the default --batch-size 32 made zero steps: timm's scheduler asserted, exit 1, and an
    empty --out was left. A validation class without images is worth a warning, not a refusal."""
    layout = _layout(tmp_path / "d", data, {"a": 6, "b": 6}, {"a": 2})
    out = tmp_path / "run"
    args = finetune_args(lite0_dir, layout, out, 1)
    args[args.index("--batch-size") + 1] = "32"
    result = run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effnet-zoo: warning: --batch-size 32 is more than the 12 training images allow: using 12" in result.stderr
    assert "has no images of: b; accuracy is measured on the other classes only" in result.stderr
    assert [m["epoch"] for m in metrics(out)] == [1]


def test_the_finetuned_folder_loads_in_transformers_with_its_class_names(uninterrupted):
    from transformers import AutoModelForImageClassification

    folder = uninterrupted / "model"
    hf = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert hf.config.id2label == {0: "horizontal", 1: "vertical"}
    ours = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max() < 1e-4


def test_finetune_saves_timm_layout_on_request_and_refuses_what_timm_cannot_build(lite0_dir, data, tmp_path):
    out = tmp_path / "run"
    done = cli(*finetune_args(lite0_dir, data, out, 1, "--layout", "timm"))
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["label_names"] == ["horizontal", "vertical"]
    trained = timm.create_model("effnet_lite0", num_classes=2).eval()
    trained.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    stock = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()  # timm's own class
    assert type(stock).__module__.startswith("timm.")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (stock(x) - trained(x)).abs().max() < 1e-4
    # a variant timm cannot build: refused before the first epoch, in one line, with nothing written
    import effnet_zoo

    phi = effnet_zoo.save_pretrained(timm.create_model("effnet_v1_phi", phi=0.5, num_classes=2), tmp_path / "phi")
    refused = cli(*finetune_args(phi, data, tmp_path / "phi_run", 1, "--layout", "timm"))
    assert refused.returncode == 2 and "has no timm architecture" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "phi_run" / "metrics.jsonl").exists()


def test_a_short_run_is_not_all_warm_up():
    """With the default --warmup-epochs 1, a 1-epoch run was all warm-up and never reached --lr."""
    from effnet_zoo.tasks.finetune import FinetuneConfig, warmup_steps

    assert warmup_steps(FinetuneConfig("d", "m", "o", epochs=1), 100) == 20  # a fifth of the run
    assert warmup_steps(FinetuneConfig("d", "m", "o"), 100) == 100  # 10 epochs: the one epoch asked for


def test_a_single_step_run_says_so_in_our_words_only(lite0_dir, data, tmp_path):
    """timm's CosineLRScheduler logged 'Cosine annealing scheduler will have no effect on the learning rate since
    t_initial = t_mul = eta_mul = 1.' unprefixed, in its own parameter names, for a run of one step. Every stderr
    line is ours now, and the one warning says what the run did: one step, at the warm-up's starting rate."""
    layout = _layout(tmp_path / "d", data, {"a": 4, "b": 4}, {"a": 2, "b": 2})
    out = tmp_path / "run"
    args = finetune_args(lite0_dir, layout, out, 1)
    args[args.index("--warmup-epochs") + 1] = "1"
    result = run(args)  # a fresh process: logging's last-resort handler writes to its stderr as a user sees it
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("effnet-zoo: ") for line in lines), result.stderr
    assert "Cosine annealing" not in result.stderr
    assert (
        # --warmup-epochs 1 asks for warm-up, but it takes at most a fifth of the run: none of one step, which
        # runs at --lr (it ran at the warm-up's start, lr / 100, before)
        "effnet-zoo: warning: the run is a single training step (1 epoch of 1 batch), taken at lr 0.001: add epochs "
        "or images, or lower --batch-size, for a learning-rate schedule"
    ) in lines, result.stderr


def test_the_card_says_the_base_was_a_local_folder_not_its_path(uninterrupted, lite0_dir):
    """The card of a run from --model local-dir:DIR recorded DIR, a path of this machine, as the base weights."""
    card = (uninterrupted / "model" / "README.md").read_text()
    assert str(lite0_dir) not in card and str(lite0_dir.parent) not in card
    assert "Base weights: a local model folder (its config.json records architecture `effnet_lite0`)." in card


@pytest.mark.parametrize("epochs, steps", [(1, 1), (1, 2), (1, 8), (2, 4), (10, 3), (3, 50)])
def test_the_schedule_warms_up_at_most_a_fifth_and_ends_at_min_lr(epochs, steps):
    """A 2-update run spent half of it warming up and an 8-update run a quarter; the cosine spanned the whole run
    after the warm-up, so it ended above --min-lr (2.6e-5 instead of 1e-6 for the defaults)."""
    from effnet_zoo.tasks.finetune import FinetuneConfig, make_scheduler

    cfg = FinetuneConfig(data="d", model="m", out="o", epochs=epochs, lr=1e-3, min_lr=1e-6, warmup_epochs=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps)
    used = []
    for update in range(1, epochs * steps + 1):
        used.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(update)
    assert sum(lr < used[i + 1] for i, lr in enumerate(used[:-1])) <= len(used) / 5  # rising steps: the warm-up
    assert max(used) == pytest.approx(cfg.lr)  # the run reaches --lr
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.min_lr, rel=1e-9)  # after the last update
