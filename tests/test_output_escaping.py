"""Every line the command line prints is escaped (issue 20: terminal injection).

File names with ESC sequences and newlines were printed raw by `push --dry-run` and by error messages: a name
could recolour or clear the terminal, or forge a line of the upload listing ("  secrets.txt  (12 bytes)").
"""

import timm
from conftest import cli

import effnet_zoo

ESC = "\x1b[2J\x1b[31m"  # clear the screen, then red
FORGED = "x\n  model.safetensors  (1 bytes)"  # a name that would print as one more listing line


def assert_clean(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text, repr(text)


def test_push_listing_escapes_file_names(tmp_path):
    folder = effnet_zoo.save_pretrained(
        timm.create_model("effnet_v1_b0", width_mult=0.25, depth_mult=0.25, num_classes=2), tmp_path / "m"
    )
    (folder / f"{ESC}notes.txt").write_text("hi")
    (folder / FORGED).write_text("hi")
    (folder / f".hidden{ESC}").write_text("secret")
    result = cli("push", folder, "--repo-id", "org/name", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout)
    lines = result.stdout.splitlines()
    # one line per file: the header, model.safetensors, config.json, README.md, the two odd names, one left out
    assert len(lines) == 7, lines
    assert sum("model.safetensors" in line for line in lines) == 2  # the real file, and the escaped forged name
    assert any("x\\n  model.safetensors  (1 bytes)" in line for line in lines)
    assert any("\\x1b[2J\\x1b[31mnotes.txt" in line for line in lines)


def test_error_messages_and_warnings_are_escaped(tmp_path):
    missing = tmp_path / f"{ESC}ckpt\nforged line"
    result = cli("convert", missing, "--from", "timm", "--model", "effnet_v1_b0", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert_clean(result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "\\x1b[2J" in result.stderr, result.stderr
    result = cli("predict", tmp_path / f"{ESC}.jpg", "--model", "effnet_v1_b0.aa_in1k")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert_clean(result.stderr)


def test_argument_errors_are_escaped_and_out_of_range_numbers_refused(tmp_path):
    """argparse repeated what was typed raw (an escape sequence, a carriage return); --lr inf trained to NaN and
    --warmup-epochs inf was an OverflowError traceback; --model-arg foo=1 a TypeError traceback; --img-size 12000
    allocated 8.6 GB before failing."""
    result = cli("summary", "effnet_v1_b0", f"{ESC}FAKE: all checks passed")
    assert result.returncode == 2 and "unrecognized arguments: \\x1b[2J" in result.stderr
    assert_clean(result.stderr)
    result = cli("predict", "x.png", "--topk", "\r\n 0")
    assert result.returncode == 2 and "\\r\\n 0" in result.stderr and "\r" not in result.stderr
    for flag in ("--lr", "--warmup-epochs", "--weight-decay", "--min-lr"):
        result = cli("finetune", "--data", "d", "--model", "m", "--out", "o", flag, "inf")
        assert result.returncode == 2 and "expected a number" in result.stderr and "got inf" in result.stderr
    for size in ("12000", "16"):
        result = cli("export", "--model", "m", "--format", "onnx", "--out", "o", "--img-size", size)
        assert result.returncode == 2 and "expected an integer from 32 to 1600" in result.stderr
    (tmp_path / "src").mkdir()
    result = cli("convert", tmp_path / "src", "--from", "timm", "--model", "effnet_v1_b0", "--out", tmp_path / "o",
                 "--model-arg", "foo=1")  # fmt: skip
    assert result.returncode == 2 and "effnet_v1_b0 cannot be built with foo=1" in result.stderr, result.stderr
