"""timm's scripts with our models: ``python -m effnet_zoo.run SCRIPT.py ARGS`` registers them first (validate.py,
inference.py and benchmark.py cannot import a plugin), and ``load_checkpoint`` / ``--checkpoint`` takes a file in
timm's own ``tf_efficientnet_*`` layout. timm ships its scripts only in its git repository, not in the package, so
the script here does what they do with a model: ``create_model`` from the command line, ``load_checkpoint``, and
``--aot-autograd`` (functorch's ``memory_efficient_fusion``) or ``--torchscript``; timm's TF port is the control.
"""

import subprocess
import sys

import pytest
import timm
import torch
from conftest import randomize_bn

SCRIPT = """
import argparse
import torch
from timm.models import create_model, load_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--checkpoint", default="")
parser.add_argument("--num-classes", type=int, default=None)
parser.add_argument("--use-ema", action="store_true")
group = parser.add_mutually_exclusive_group()
group.add_argument("--aot-autograd", action="store_true")
group.add_argument("--torchscript", action="store_true")
parser.add_argument("--out", required=True)
args = parser.parse_args()
model = create_model(args.model, num_classes=args.num_classes, scriptable=args.torchscript)
if args.checkpoint:
    load_checkpoint(model, args.checkpoint, args.use_ema)
model.eval()
if args.torchscript:
    model = torch.jit.script(model)
elif args.aot_autograd:
    from functorch.compile import memory_efficient_fusion
    model = memory_efficient_fusion(model)
x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():  # as validate.py and benchmark.py run the model
    torch.save(model(x).clone(), args.out)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint in timm's own layout, as train.py writes it (state_dict and state_dict_ema)."""
    torch.manual_seed(0)
    control = randomize_bn(timm.create_model("tf_efficientnet_b0", num_classes=10))
    where = tmp_path_factory.mktemp("ckpt")
    torch.save({"state_dict": control.state_dict(), "state_dict_ema": control.state_dict()}, where / "last.pth.tar")
    (where / "script.py").write_text(SCRIPT)
    return where


def _run(checkpoint, *extra: str) -> torch.Tensor:
    """Our model through the runner, in a fresh process as a user runs it."""
    out = checkpoint / f"{'_'.join(extra) or 'eager'}.pt"
    run = subprocess.run(
        [sys.executable, "-m", "effnet_zoo.run", str(checkpoint / "script.py"), "--model", "effnet_v1_b0",
         "--num-classes", "10", "--checkpoint", str(checkpoint / "last.pth.tar"), "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out)


def _control(checkpoint) -> torch.Tensor:
    """The same script's computation on timm's TF port, in this process (timm knows its own model)."""
    model = timm.create_model("tf_efficientnet_b0", num_classes=10)
    timm.models.load_checkpoint(model, str(checkpoint / "last.pth.tar"))
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize(
    "extra", [(), ("--aot-autograd",), ("--torchscript", "--use-ema")], ids=["eager", "aot", "jit"]
)
def test_a_timm_script_runs_our_model_on_a_timm_layout_checkpoint(checkpoint, extra):
    ours, control = _run(checkpoint, *extra), _control(checkpoint)
    assert ours.shape == (2, 10)
    assert (ours - control).abs().max() <= 1e-4 * control.abs().max()


def test_without_the_runner_the_script_does_not_know_our_model(checkpoint):
    run = subprocess.run([sys.executable, str(checkpoint / "script.py"), "--model", "effnet_v1_b0", "--out", "x"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode != 0 and "Unknown model (effnet_v1_b0)" in run.stderr


def test_the_runner_explains_itself():
    run = subprocess.run([sys.executable, "-m", "effnet_zoo.run", "no_such_script.py"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2 and "no_such_script.py is not a script" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_load_state_dict_takes_timm_layout_keys_strictly():
    torch.manual_seed(0)
    control = randomize_bn(timm.create_model("tf_efficientnet_lite0")).eval()
    ours = timm.create_model("effnet_lite0").eval()
    assert not ours.load_state_dict(control.state_dict(), strict=True).missing_keys
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (ours(x) - control(x)).abs().max() <= 1e-4 * control(x).abs().max()
    with pytest.raises(RuntimeError, match="Missing key"):  # a partial timm state dict is still refused strictly
        ours.load_state_dict({k: v for k, v in control.state_dict().items() if k != "bn2.bias"})


def test_the_runner_runs_a_script_as_python_would(tmp_path):
    """An absolute ``__file__``, the script's folder (not the working folder) first on sys.path, its exit code,
    and a folder with ``__main__.py``."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "helper.py").write_text("VALUE = 7\n")
    probe = "import os, sys, helper\nprint(os.path.isabs(__file__), sys.path[0] == os.path.dirname(__file__))\n"
    (app / "__main__.py").write_text(probe + "sys.exit(helper.VALUE - 4)\n")
    (app / "script.py").write_text(probe)
    for target, code in (("app/script.py", 0), ("app", 3)):
        run = subprocess.run([sys.executable, "-m", "effnet_zoo.run", target], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert run.returncode == code and run.stdout.split() == ["True", "True"], (target, run.stdout, run.stderr)
