"""Nothing of the user's is replaced, lost or published by accident (issue 20: data loss and publishing).

Each test here failed before its fix: ``--force`` replaced a model folder's weights with an export, a user's
checkpoint and model folder; ``push`` published garbage; ``--resume`` tracebacked on a foreign checkpoint; a full
disk and SIGTERM left raw errors and temporaries behind.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import cli, timm_reference
from PIL import Image
from safetensors.torch import save_file

import effnet_zoo
from effnet_zoo.tasks.finetune import LOCK


def tiny_model(**kwargs) -> torch.nn.Module:
    return timm.create_model("effnet_v1_b0", width_mult=0.25, depth_mult=0.25, num_classes=2, **kwargs).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return effnet_zoo.save_pretrained(tiny_model(), tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def finetune(data: Path, model: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return cli("finetune", "--data", data, "--model", f"local-dir:{model}", "--out", out, "--epochs", "1",
               "--batch-size", "2", "--img-size", "32", "--workers", "0", "--no-progress", *extra)  # fmt: skip


def test_export_force_replaces_only_a_previous_export_of_the_same_format(folder, tmp_path):
    """`export --force --out MODEL/model.safetensors` wrote TorchScript over the folder's weights."""
    model_copy = tmp_path / "model"
    shutil.copytree(folder, model_copy)
    before = snapshot(model_copy)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(tiny_model().state_dict(), checkpoint)  # a torch zip, but no TorchScript
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes")
    for target, expected in (
        (model_copy / "model.safetensors", "part of a model folder"),
        (model_copy / "config.json", "part of a model folder"),
        (checkpoint, "not a file that effnet-zoo export wrote"),
        (notes, "not a file that effnet-zoo export wrote"),
    ):
        result = cli("export", "--model", f"local-dir:{folder}", "--format", "torchscript", "--out", target,
                     "--img-size", "64", "--force")  # fmt: skip
        assert result.returncode == 2 and expected in result.stderr, (target, result.stderr)
    assert snapshot(model_copy) == before and notes.read_text() == "my notes"
    timm.create_model(f"local-dir:{model_copy}", pretrained=True)  # still loads

    out = tmp_path / "model.pt"
    args = ("export", "--model", f"local-dir:{folder}", "--out", out, "--img-size", "64")
    assert cli(*args, "--format", "torchscript").returncode == 0
    first = out.read_bytes()
    wrong = cli(*args, "--format", "torch-export", "--force")  # a TorchScript file is no torch.export program
    assert wrong.returncode == 2 and "is a torchscript export; --force replaces only a previous torch-export" in (
        wrong.stderr
    )
    assert out.read_bytes() == first
    again = cli(*args, "--format", "torchscript", "--force")  # the same kind: replaced
    assert again.returncode == 0, again.stderr
    torch.jit.load(str(out))


def test_finetune_force_decides_before_training_and_keeps_what_it_did_not_write(folder, data, tmp_path):
    """--force on an --out with a foreign model/ trained every epoch, then refused; a user's checkpoint.pt was
    overwritten silently."""
    # a model/ folder that timm wrote (no effnet_zoo checksum): someone else's
    foreign = tmp_path / "run1"
    timm_model = timm.create_model("tf_efficientnet_b0", num_classes=2)
    timm.models.save_for_hf(timm_model, str(foreign / "model"), safe_serialization=True)
    # a user's own checkpoint.pt (a plain state dict) beside metrics of their own
    mine = tmp_path / "run2"
    mine.mkdir()
    torch.save({"weights": torch.ones(3)}, mine / "checkpoint.pt")
    (mine / "metrics.jsonl").write_text('{"loss": 1}\n')
    for out, expected in ((foreign, "model: a model folder effnet-zoo did not write"),
                          (mine, "checkpoint.pt: not a checkpoint a run wrote")):  # fmt: skip
        before = snapshot(out)
        result = finetune(data, folder, out, "--force")
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert "epoch 1/1" not in result.stdout + result.stderr  # decided before training
        assert snapshot(out) == before

    ours = tmp_path / "run3"  # a run of ours: --force starts over in it
    assert finetune(data, folder, ours).returncode == 0
    again = finetune(data, folder, ours, "--force")
    assert again.returncode == 0, again.stderr


def test_resume_reads_only_our_checkpoints_and_names_what_does_not_fit(folder, data, tmp_path):
    """A valid torch list, or a dict without our keys, gave AttributeError / KeyError; after the base model
    changed, a 4 KB raw state-dict error."""
    out = tmp_path / "run"
    assert finetune(data, folder, out).returncode == 0
    good = (out / "checkpoint.pt").read_bytes()
    for state, expected in (
        ([1, 2, 3], "is not a checkpoint effnet-zoo finetune wrote (a list without epoch"),
        ({"epoch": 0, "model": {}}, "(a dict without updates, history, classes, config)"),
    ):
        torch.save(state, out / "checkpoint.pt")
        result = finetune(data, folder, out, "--resume")
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    (out / "checkpoint.pt").write_bytes(good)
    # the base model folder now holds another model (wider): the checkpoint no longer fits it
    other = effnet_zoo.save_pretrained(
        timm.create_model("effnet_v1_b0", width_mult=0.5, depth_mult=0.25, num_classes=2), tmp_path / "other"
    )
    shutil.rmtree(folder.parent / "swap", ignore_errors=True)
    result = finetune(data, other, out, "--resume")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    # the model name changed too, which the settings check names first; with the same name, the fit is named
    assert "--model" in lines[0] or "does not fit the model" in lines[0], lines[0]
    swapped = tmp_path / "base"
    shutil.copytree(folder, swapped)
    run = tmp_path / "run_swapped"
    assert finetune(data, swapped, run).returncode == 0
    shutil.rmtree(swapped)
    shutil.copytree(other, swapped)
    result = finetune(data, swapped, run, "--resume")
    assert result.returncode == 2 and "does not fit the model" in result.stderr, result.stderr
    assert "base model changed" in result.stderr and len(result.stderr) < 1500


def test_push_checks_the_folder_before_anything_leaves(folder, tmp_path):
    """Garbage config.json, random bytes as weights, or weights failing their checksum passed --dry-run (exit 0)
    and a real push went on to create the repo."""
    cases = {}
    garbage_config = tmp_path / "garbage_config"
    shutil.copytree(folder, garbage_config)
    (garbage_config / "config.json").write_text("{ not json")
    cases[garbage_config] = "is not valid JSON"
    random_weights = tmp_path / "random_weights"
    shutil.copytree(folder, random_weights)
    (random_weights / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    cases[random_weights] = "it is not a model's weights"  # its first 8 bytes declare a 506 PB header
    flipped = tmp_path / "flipped"
    shutil.copytree(folder, flipped)
    raw = bytearray((flipped / "model.safetensors").read_bytes())
    raw[-100] ^= 0x10
    (flipped / "model.safetensors").write_bytes(bytes(raw))
    cases[flipped] = "fails its checksum"
    nan = tmp_path / "nan"
    model = tiny_model()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    effnet_zoo.save_pretrained(model, nan)
    cases[nan] = "hold NaN or Inf"
    wrong_arch = tmp_path / "wrong_arch"
    shutil.copytree(folder, wrong_arch)
    config = json.loads((wrong_arch / "config.json").read_text())
    config["model_args"]["width_mult"] = 0.5  # the weights are width 0.25
    (wrong_arch / "config.json").write_text(json.dumps(config))
    cases[wrong_arch] = "does not fit"
    for bad, expected in cases.items():
        for dry in (["--dry-run"], []):  # a real push fails locally too: nothing is contacted (offline suite)
            result = cli("push", bad, "--repo-id", "org/name", *dry)
            assert result.returncode == 2, (bad.name, result.stdout)
            assert "is not a model folder that loads, so nothing was published" in result.stderr, result.stderr
            assert expected in result.stderr, (bad.name, result.stderr)
    ok = cli("push", folder, "--repo-id", "org/name", "--dry-run")
    assert ok.returncode == 0 and "model.safetensors" in ok.stdout


def test_license_cannot_inject_into_the_model_card(tmp_path):
    """A license with a newline wrote arbitrary keys (widget:, inference:) into the card's YAML header."""
    model = tiny_model()
    model.pretrained_cfg = {**model.pretrained_cfg, "license": "mit\nwidget:\n- text: pwned"}
    with pytest.raises(ValueError, match="'license' should be a Hub license identifier"):
        effnet_zoo.save_pretrained(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    folder = tmp_path / "ok"
    model.pretrained_cfg = {**model.pretrained_cfg, "license": "cc-by-nc-4.0"}
    effnet_zoo.save_pretrained(model, folder)
    header = (folder / "README.md").read_text().split("---")[1]
    assert 'license: "cc-by-nc-4.0"' in header.splitlines()
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["license"] = "mit\ninference: false"  # edited by hand, then pushed
    (folder / "config.json").write_text(json.dumps(config))
    result = cli("push", folder, "--repo-id", "org/name", "--dry-run", "--layout", "timm")
    assert result.returncode == 2 and "'pretrained_cfg.license' should be a Hub license identifier" in result.stderr


needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0,
    reason="needs `unshare -rm` (user and mount namespaces) to mount a small tmpfs as a full disk",
)


@needs_unshare
def test_a_full_disk_is_named_and_nothing_is_lost(folder, tmp_path):
    """A full disk during convert gave a SafetensorError traceback, during a checkpoint save torch's
    "[enforce fail at inline_container.cc:672] unexpected pos"."""
    disk = tmp_path / "disk"
    disk.mkdir()
    source = tmp_path / "tf_b0.safetensors"  # 21 MB of weights to convert onto a 4 MB disk
    save_file(timm_reference("tf_efficientnet_b0").state_dict(), str(source))
    script = textwrap.dedent(f"""
        import functools, sys
        from pathlib import Path
        import torch
        from effnet_zoo._io import atomic_write
        from effnet_zoo.cli import main
        disk = Path({str(disk)!r})
        (disk / "checkpoint.pt").write_bytes(b"previous")
        big = {{"w": torch.zeros(2_000_000)}}  # 8 MB into a 4 MB disk
        try:
            atomic_write(disk / "checkpoint.pt", functools.partial(torch.save, big))
        except OSError as e:
            print("SAVE:", e)
        assert (disk / "checkpoint.pt").read_bytes() == b"previous"
        print("LEFT:", sorted(p.name for p in disk.iterdir()))
        code = main(["convert", {str(source)!r}, "--from", "timm", "--model", "effnet_v1_b0", "--out",
                     str(disk / "converted"), "--padding", "same"])
        # torch's TorchScript writer aborts the process on a full disk: export must refuse before writing
        import shutil
        with open(disk / "filler", "wb") as f:
            f.write(bytes(shutil.disk_usage(disk).free - 200_000))
        print("EXPORT:", main(["export", "--model", "local-dir:{folder}", "--format", "torchscript", "--out",
                               str(disk / "m.pt"), "--img-size", "64"]), flush=True)
        sys.exit(code)
    """)
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=4m tmpfs "{disk}" && exec "$0" -c "$1"',
         sys.executable, script],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "SAVE: no space left on the disk holding" in result.stdout, result.stdout + result.stderr
    assert "nothing was lost: checkpoint.pt is as it was before" in result.stdout
    assert "LEFT: ['checkpoint.pt']" in result.stdout  # the partial file was removed
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("effnet-zoo: error: no space left on the disk holding"), result.stderr
    assert "Traceback" not in result.stderr
    assert "EXPORT: 2" in result.stdout and "MiB free, and the export needs about" in result.stderr, result.stderr


def test_sigterm_mid_write_cleans_up_and_a_killed_runs_lock_is_taken_over(folder, data, tmp_path):
    """SIGTERM (timeout, docker, SLURM) mid-write left .checkpoint.pt.*.tmp and a stale .effnet-zoo.lock."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import glob, os, signal, sys, threading, time
        from effnet_zoo.cli import main
        def terminate_mid_write():  # as `timeout` would, at the worst moment: while the checkpoint is written
            while not glob.glob({str(out)!r} + "/.checkpoint.pt.*.tmp"):
                time.sleep(0.0005)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=terminate_mid_write, daemon=True).start()
        sys.exit(main(["finetune", "--data", {str(data)!r}, "--model", "local-dir:{folder}", "--out", {str(out)!r},
                       "--epochs", "1", "--batch-size", "2", "--img-size", "32", "--workers", "0", "--no-progress"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "effnet-zoo: terminated (SIGTERM)" in result.stderr
    assert not out.exists(), [
        p.name for p in out.iterdir()
    ]  # no temporary, no lock: the run folder it had created, empty, is gone too

    # SIGKILL cannot be caught: what it leaves (a lock file naming a dead pid, a temporary) is taken over
    out.mkdir()
    (out / LOCK).write_text("999999")
    (out / ".checkpoint.pt.x1y2.tmp").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="took over .* pid 999999, which is no longer running") as record:
        result = finetune(data, folder, out, "--force")
    assert result.returncode == 0, result.stderr
    assert any(".checkpoint.pt.x1y2.tmp" in str(w.message) for w in record)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_the_run_lock_is_never_followed_or_read_without_bound(folder, data, tmp_path):
    """A run lock linked to a user's file overwrote it with the pid (and printed its content as "pid ..."); one
    linked to /dev/zero was read until memory ran out; a FIFO gave "File or stream is not seekable"."""
    precious = tmp_path / "thesis.txt"
    precious.write_text("three years of work")
    for name, make, expected in (
        ("linked", lambda p: p.symlink_to(precious), "is a symbolic link, not the lock file a run writes"),
        ("zero", lambda p: p.symlink_to("/dev/zero"), "is a device, not the lock file a run writes"),
        ("fifo", os.mkfifo, "is a FIFO (named pipe), not the lock file a run writes"),
    ):
        out = tmp_path / name
        out.mkdir()
        make(out / LOCK)
        result = finetune(data, folder, out)
        assert result.returncode == 2 and expected in result.stderr, (name, result.stderr)
    assert precious.read_text() == "three years of work"


def test_resume_bounds_a_checkpoint_before_inflating_it(folder, data, tmp_path):
    """A 2 MB checkpoint.pt whose zip member inflates to 2 GiB was inflated (2.8 GB) before being refused."""
    import zipfile

    from conftest import peak_growth

    out = tmp_path / "run"
    assert finetune(data, folder, out).returncode == 0
    bomb = tmp_path / "bomb.pt"
    torch.save({"epoch": 0, "model": torch.zeros(64 * 2**20)}, bomb)  # 256 MiB of zeros, over the tiny budget
    with zipfile.ZipFile(bomb) as src, zipfile.ZipFile(out / "checkpoint.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    assert (out / "checkpoint.pt").stat().st_size < 2**20
    with peak_growth() as growth:
        result = finetune(data, folder, out, "--resume")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert growth.mb < 100, f"{growth.mb:.0f} MB"


def test_force_keeps_what_only_looks_like_ours(folder, data, tmp_path):
    """A second outside attack: a README.md that was a folder of the user's files was deleted by convert --force;
    a user's metrics.jsonl (with "epoch" keys) and the base model folder inside --out were replaced by finetune
    --force; a user's own TorchScript model was replaced by export --force."""
    source = tmp_path / "tf_b0.safetensors"
    save_file(timm_reference("tf_efficientnet_b0").state_dict(), str(source))
    disguised = tmp_path / "disguised"
    shutil.copytree(folder, disguised)
    (disguised / "README.md").unlink()
    (disguised / "README.md").mkdir()
    (disguised / "README.md" / "thesis.txt").write_text("draft")
    result = cli("convert", source, "--from", "timm", "--model", "effnet_v1_b0", "--out", disguised, "--padding",
                 "same", "--force")  # fmt: skip
    assert result.returncode == 2 and "(README.md)" in result.stderr, result.stderr
    assert (disguised / "README.md" / "thesis.txt").read_text() == "draft"

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.93, "note": "three days of GPU"}\n')
    result = finetune(data, folder, run, "--force")
    assert result.returncode == 2 and "metrics.jsonl: not the metrics a run writes" in result.stderr, result.stderr

    ours = tmp_path / "ours"
    assert finetune(data, folder, ours).returncode == 0
    result = finetune(data, ours / "model", ours, "--force")  # the base model is the run's own output
    assert result.returncode == 2 and "would overlap the input" in result.stderr, result.stderr

    theirs = tmp_path / "detector.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 4))).save(str(theirs))
    before = theirs.read_bytes()
    result = cli("export", "--model", f"local-dir:{folder}", "--format", "torchscript", "--out", theirs,
                 "--img-size", "64", "--force")  # fmt: skip
    assert result.returncode == 2 and "not a file that effnet-zoo export wrote" in result.stderr, result.stderr
    assert theirs.read_bytes() == before


def test_push_refuses_unchecked_pickles_and_cards_cannot_be_injected_by_names(folder, tmp_path):
    """A code-running pytorch_model.bin beside checked weights was listed for upload; a source file named with a
    newline and a markdown heading put the heading into the published card."""
    import pickle

    beside = tmp_path / "beside"
    shutil.copytree(folder, beside)
    (beside / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": 1}))
    result = cli("push", beside, "--repo-id", "org/name", "--dry-run")
    assert result.returncode == 2 and "holds weights in pickle format (pytorch_model.bin)" in result.stderr

    evil = tmp_path / "evil\n# Pwned <img src=x onerror=alert(1)> [click](javascript:x).safetensors"
    save_file(timm_reference("tf_efficientnet_b0").state_dict(), str(evil))
    out = tmp_path / "card"
    result = cli("convert", evil, "--from", "timm", "--model", "effnet_v1_b0", "--out", out, "--padding", "same")
    assert result.returncode == 0, result.stderr
    card = (out / "README.md").read_text()
    assert not [line for line in card.splitlines() if "Pwned" in line and not line.startswith("Converted by")]
    # one line, inside a code span, where markdown and HTML are shown as text: no heading, tag or link
    shown = "evil\\n# Pwned <img src=x onerror=alert(1)> [click](javascript:x).safetensors"
    assert f"from `timm EfficientNet ({shown})`" in card
