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
