"""A pytest plugin that runs timm's own ``tests/test_models.py`` on our models beside timm's TF port.

Loaded with ``-p timm_suite_plugin`` into a pytest run of the test file from timm's sdist (see
``test_timm_suite.py``). Every test parametrised by ``model_name`` (whatever models timm lists for it:
the whole registry, a module filter such as ``FEAT_INTER_FILTERS``, or a hard-coded list) is re-parametrised
to the controls ``tf_efficientnet_b0`` / ``tf_efficientnet_lite0`` and their counterparts ``effnet_v1_b0`` /
``effnet_lite0`` (tags kept: ``tf_efficientnet_b0.aa_in1k`` pairs with ``effnet_v1_b0.aa_in1k``). Tests that
take no model name never run for the controls and are deselected. Whether a test applies is decided by the
control: where timm's own model passes, ours must pass too.
"""

from __future__ import annotations

import os

import pytest

import effnet_zoo  # noqa: F401  (registers effnet_v1_* with timm before the test file lists models)

ALL_PAIRS = {"tf_efficientnet_b0": "effnet_v1_b0", "tf_efficientnet_lite0": "effnet_lite0"}
# EFFNET_ZOO_TIMM_CONTROLS=tf_efficientnet_b0 runs one pair (the suite splits the work across its workers)
PAIRS = {c: ALL_PAIRS[c] for c in os.environ.get("EFFNET_ZOO_TIMM_CONTROLS", ",".join(ALL_PAIRS)).split(",")}
# They download real weights from the Hub, which this suite never reaches.
PRETRAINED_TESTS = ("test_model_inference", "test_model_load_pretrained", "test_model_features_pretrained")


def _swap(name: str, mapping: dict[str, str]) -> str:
    arch, dot, tag = name.partition(".")
    return mapping.get(arch, arch) + dot + tag


def _model_rows(argnames: list[str], argvalues: list) -> tuple[list, list[str]]:
    """The rows to run, with ids that differ between a control and ours only in the model name.

    Every control (and ours) that timm lists; where the list names neither, both pairs with each row's other
    arguments (a hard-coded list of other models).
    """
    single = len(argnames) == 1
    rows = [(v,) if single else tuple(v) for v in argvalues]
    i = argnames.index("model_name")
    listed = [r for r in rows if r[i].partition(".")[0] in PAIRS]
    if not listed:
        listed = []
        for row in (r[:i] + (control,) + r[i + 1 :] for r in rows for control in PAIRS):
            if row not in listed:
                listed.append(row)
    out, ids = [], []
    for j, r in enumerate(listed):
        for name in (r[i], _swap(r[i], PAIRS)):
            out.append(name if single else r[:i] + (name,) + r[i + 1 :])
            ids.append(name if single else f"{name}-row{j}")
    return out, ids


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    markers = metafunc.definition.own_markers
    for k, mark in enumerate(markers):
        if mark.name != "parametrize":
            continue
        argnames, argvalues = mark.args[0], mark.args[1]
        names = [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
        if "model_name" in names:
            rows, ids = _model_rows(names, list(argvalues))
            markers[k] = pytest.mark.parametrize(argnames, rows, ids=ids).mark


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        runs = params is not None and "model_name" in params.params and item.originalname not in PRETRAINED_TESTS
        (keep if runs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
