"""The docs build with MkDocs in strict mode, and every ``effnet-zoo`` command they show is one the CLI accepts
(what each command does is tested in test_tasks.py, test_finetune.py, test_convert.py, test_publish.py,
test_cli.py; the offline ``summary`` commands are run here for real)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from effnet_zoo.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) for every effnet-zoo invocation in a bash block; ``torchrun ... $(which effnet-zoo)`` too."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.splitlines():
                line = line.split("  #", 1)[0].strip()
                if "effnet-zoo" not in line or line.startswith("#"):
                    continue
                words = shlex.split(line.replace("$(which effnet-zoo)", "effnet-zoo"))
                found.append((page.name, words[words.index("effnet-zoo") + 1 :]))
    return found


def test_mkdocs_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "workflows" / "index.html").is_file()


def test_docs_show_every_subcommand():
    shown = {argv[0] for _, argv in shown_commands()}
    assert shown >= {"summary", "convert", "push", "predict", "validate", "finetune", "export"}, shown


@pytest.mark.parametrize("page,argv", shown_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_shown_command_is_accepted(page, argv):
    if any(set(arg) & set("[]|<>") for arg in argv):
        pytest.fail(f"{page}: {argv} is a synopsis, not a runnable command; write it as one")
    args = build_parser().parse_args(argv)  # argparse exits on anything the CLI does not accept
    assert args.command == argv[0]


@pytest.mark.parametrize("argv", [a for _, a in shown_commands() if a[0] == "summary"], ids=" ".join)
def test_shown_summary_commands_run(argv):
    from conftest import cli

    done = cli(*argv)
    assert done.returncode == 0, done.stderr


def test_every_test_the_docs_cite_exists():
    """docs/reliability.md (and any page) cites ``tests/FILE.py::test_name``: each must be a real test."""
    cited = {(page.name, f, name) for page in PAGES
             for f, name in re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", page.read_text())}  # fmt: skip
    assert len(cited) >= 30
    missing = [c for c in cited if f"def {c[2]}(" not in (ROOT / c[1]).read_text()]
    assert not missing, missing
