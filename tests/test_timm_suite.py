"""timm's own model tests (``tests/test_models.py`` of the installed timm's sdist) on our models.

The file is fetched with pip at test time (it is timm's, not ours to copy) and run in a fresh pytest process with
``timm_suite_plugin``, which runs every model-parametrised test for timm's TF port (the control) and for ours.
Where the control passes, ours must pass; what the control fails does not apply to EfficientNet (ViT / Swin /
NaFlex arguments and attributes).
"""

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm
from timm_suite_plugin import ALL_PAIRS

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def timm_tests(tmp_path_factory) -> Path:
    """timm's tests/ folder from the sdist of the timm installed here."""
    where = tmp_path_factory.mktemp("timm_sdist")
    spec = f"timm=={timm.__version__}"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(where), spec],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"pip could not fetch the {spec} sdist (needs the package index):\n{run.stderr}"
    (sdist,) = where.glob("timm-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name and m.isfile()]
        tar.extractall(where, members=members, filter="data")
    (tests,) = where.glob("timm-*/tests")
    assert (tests / "test_models.py").is_file()
    return tests


def _outcomes(report: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        tags = {child.tag for child in case}
        outcomes[case.get("name")] = (
            "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
        )
    return outcomes


@pytest.mark.parametrize("control", list(ALL_PAIRS))
def test_timm_model_tests_pass_wherever_timms_tf_port_passes(control, timm_tests, tmp_path):
    ours = ALL_PAIRS[control]
    report = tmp_path / "report.xml"
    env = {**os.environ, "EFFNET_ZOO_TIMM_CONTROLS": control, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "test_models.py", "-p", "timm_suite_plugin", "-q", "-p", "no:cacheprovider",
         "-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={report}"],
        cwd=timm_tests, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert report.is_file(), f"timm's tests did not run:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    outcomes = _outcomes(report)
    applies = sorted(name for name, outcome in outcomes.items() if control in name and outcome == "passed")
    regressions = [
        (name.replace(control, ours), outcomes.get(name.replace(control, ours), "missing"))
        for name in applies
        if outcomes.get(name.replace(control, ours)) != "passed"
    ]
    assert not regressions, (
        f"timm's tests that pass for {control} but not for {ours}: {regressions}\n{run.stdout[-6000:]}"
    )
    # a floor, so that a harness that collects nothing cannot pass: timm 1.0.31 runs 31 such tests per pair
    assert len(applies) >= 25, f"only {len(applies)} of timm's tests ran and passed for {control}: {applies}"
    ran = {n.split("[")[0] for n in outcomes if control in n}
    not_applicable = sorted(ran - {n.split("[")[0] for n in applies})
    print(f"{len(applies)} of timm's tests pass for {control} and {ours}; not applicable: {not_applicable}")
