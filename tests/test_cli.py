"""``effnet-zoo summary``: the installed console script, offline."""

import json
import subprocess

import pytest
import timm
import torch
from conftest import cli, console_script
from torch.utils.flop_counter import FlopCounterMode

EXE = console_script()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)


def _timm_flops(arch: str, size: int) -> int:
    with torch.device("meta"):
        model = timm.create_model(arch).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def test_default_summary_is_b0():
    out = run("summary")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("effnet_v1_b0: width x1.0, depth x1.0, input 224x224")
    assert "5,288,548 parameters" in text
    for stage_row in ("1          112x112      32->16", "7              7x7    192->320"):
        assert stage_row in text
    assert "stride 32,  320 channels,       7x7  (blocks.6)" in text


def test_json_summary_matches_timm_counts():
    out = cli("summary", "effnet_v1_b3", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    ref = timm.create_model("tf_efficientnet_b3")
    assert s["total_params"] == sum(p.numel() for p in ref.parameters())
    assert s["total_flops"] == _timm_flops("tf_efficientnet_b3", 300)
    assert (
        sum(st["params"] for st in s["stages"]) + s["stem"]["params"] + s["head"]["params"] + s["classifier"]["params"]
        == s["total_params"]
    )
    assert [st["repeats"] for st in s["stages"]] == [len(stage) for stage in ref.blocks]
    assert [f["channels"] for f in s["features"]] == [f["num_chs"] for f in ref.feature_info]
    # each stage's input resolution is the previous stride's TF "SAME" output: ceil(size / stride)
    assert [st["input_resolution"][0] for st in s["stages"]] == [150, 150, 75, 38, 19, 19, 10]


def test_phi_summary():
    s = json.loads(cli("summary", "--phi", "2.5", "--json").stdout)
    assert s["model"] == "effnet_v1_phi" and s["phi"] == 2.5
    assert s["width_mult"] == pytest.approx(1.1**2.5, rel=1e-5)
    assert s["input_size"] == [3, 320, 320]


def test_unknown_model_is_a_clear_error():
    out = cli("summary", "effnet_v1_b9")
    assert out.returncode == 2
    assert "unknown model 'effnet_v1_b9'" in out.stderr and "effnet_v1_b7" in out.stderr
    assert "Traceback" not in out.stderr


def test_version_and_help_defaults():
    """No --version existed; --help showed no defaults (epochs 10, lr 1e-3, batch 32, warmup) and --topk had no
    description."""
    from importlib.metadata import version

    assert cli("--version").stdout.strip() == f"effnet-zoo {version('effnet-zoo')}"
    finetune = cli("finetune", "--help").stdout
    for shown in ("(default: 10)", "(default: 0.001)", "per process (default: 32)",
                  "lr / 100, at most a fifth of the run (default: 1.0)"):  # fmt: skip
        assert shown in " ".join(finetune.split()), shown
    predict = " ".join(cli("predict", "--help").stdout.split())
    assert "--topk TOPK how many classes to show per image (default: 5)" in predict
    assert "(default: None)" not in finetune + predict and "(default: False)" not in finetune + predict


def test_a_closed_pipe_ends_quietly():
    """`effnet-zoo summary --json | head` ended in "error: [Errno 32] Broken pipe"."""
    done = subprocess.Popen([console_script(), "summary", "--phi", "3", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    done.stdout.close()  # the reader is gone before anything is written
    assert done.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell reports for cat
    assert done.stderr.read() == b""


def test_small_things_a_newcomer_hit(tmp_path):
    """Issue 21's smaller list: `finetune --help` said `--no-progress ... (default: True)`; `export --format onnx
    --out x.pt` was written silently; `validate` printed top-5 for a 2-class model (every image is in it)."""
    import io
    from contextlib import redirect_stdout

    from effnet_zoo.cli import build_parser
    from effnet_zoo.tasks.validate import ValidateResult, format_result

    text = io.StringIO()
    with redirect_stdout(text), pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    flag = next(line for line in text.getvalue().splitlines() if "--no-progress" in line and "progress bars" in line)
    assert "default" not in flag, flag

    result = cli("export", "--model", "effnet_v1_b0.aa_in1k", "--format", "onnx", "--out", tmp_path / "x.pt")
    assert result.returncode == 2 and "does not end in .onnx" in result.stderr and "name it x.onnx" in result.stderr
    assert not (tmp_path / "x.pt").exists()

    two = ValidateResult("m", "d", 10, 90.0, None, 0.3, 5.0, "cpu", False)
    assert "top-5" not in format_result(two) and "top-1 90.000%" in format_result(two)


HEAVY = ("torch", "timm", "numpy", "PIL", "huggingface_hub", "safetensors")


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        *[
            [command, "--help"]
            for command in ("summary", "convert", "push", "demo", "predict", "validate", "finetune", "export")
        ],  # fmt: skip
        ["predict", "--topk", "0", "x.jpg"],  # an argument error
        ["convert", "x", "--from", "caffe", "--model", "b0", "--out", "y"],  # a choice error
        ["nonsense"],
        ["summary", "--phi", "nan"],  # took 6 s to say so from inside the library
    ],
    ids=lambda a: " ".join(a),
)
def test_help_and_argument_errors_import_nothing_heavy(args):
    """--help and argument errors answer at once: the console script imports neither torch nor timm for them
    (they took 4-7 s here). Counted from Python's own import log, not timed."""
    import sys

    out = subprocess.run([sys.executable, "-X", "importtime", EXE, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 2), out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "effnet_zoo.cli" in imported  # the log is real: the command's own module is in it
    assert not {m for m in imported if m.split(".")[0] in HEAVY}, sorted(m for m in imported if "." not in m)
    assert (out.stdout if out.returncode == 0 else out.stderr).strip()


def test_the_cli_names_are_the_librarys():
    """The parser's choices (effnet_zoo.options, torch-free) are the ones the library acts on."""
    from effnet_zoo import options
    from effnet_zoo.hub.folders import DTYPES
    from effnet_zoo.tasks.export import FORMATS as EXPORTS
    from effnet_zoo.weights.convert import FORMATS

    assert tuple(FORMATS) == options.SOURCE_FORMATS and tuple(DTYPES) == options.DTYPE_NAMES
    assert EXPORTS == options.EXPORT_FORMATS


def test_import_effnet_zoo_registers_and_the_public_api_resolves():
    """A program's `import effnet_zoo` registers the models (the command line alone defers it)."""
    import sys

    code = (
        "import sys, effnet_zoo, timm; assert 'effnet_v1_b0' in timm.list_models('effnet_v1_*');"
        "from effnet_zoo import EfficientNet, push_to_hub, CheckpointError;"
        "assert all(getattr(effnet_zoo, n) is not None for n in effnet_zoo.__all__); print(len(effnet_zoo.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "16", out.stderr[-2000:]
