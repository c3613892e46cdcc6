"""Registry, pretrained cfgs (against timm's own cfgs for the same source checkpoints) and hub_configs/."""

import json
from pathlib import Path

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

from effnet_zoo.hub.config import pretrained_names, render_hub_config

HUB_CONFIGS = Path(__file__).resolve().parent.parent / "hub_configs"
EXPECTED_TAGS = {
    "in1k": ["b0", "b1", "b2", "b3", "b4", "b5"],
    "aa_in1k": ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"],
    "ra_in1k": ["b5", "b7", "b8"],
    "ap_in1k": ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"],
    "ns_jft_in1k": ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "l2"],
}
EXPECTED = sorted(
    [f"effnet_v1_{v}.{tag}" for tag, vs in EXPECTED_TAGS.items() for v in vs]
    + ["effnet_v1_l2.ns_jft_in1k_475"]
    + [f"effnet_lite{i}.in1k" for i in range(5)]
)


def source_name(name: str) -> str:
    """timm's name for the same Google checkpoint: effnet_v1_b3.x -> tf_efficientnet_b3.x, effnet_lite0 -> ..."""
    return "tf_efficientnet_" + name.removeprefix("effnet_v1_").removeprefix("effnet_")


PREPROCESSING = ("input_size", "crop_pct", "interpolation", "mean", "std", "pool_size", "num_classes", "crop_mode")


def test_models_registered_on_import():
    assert {f"effnet_v1_{v}" for v in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2")} <= set(
        timm.list_models("effnet_v1_*")
    )
    assert {f"effnet_lite{i}" for i in range(5)} <= set(timm.list_models("effnet_lite*"))
    assert sorted(pretrained_names()) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_pretrained_cfg_equals_timms_cfg_for_the_same_checkpoint(name):
    ours = get_pretrained_cfg(name).to_dict()
    source = get_pretrained_cfg(source_name(name)).to_dict()
    assert {k: ours[k] for k in PREPROCESSING} == {k: source[k] for k in PREPROCESSING}
    assert ours["hf_hub_id"] == source["hf_hub_id"] == "timm/" + source_name(name)


def test_default_tag_is_timms_default():
    for v in ("b0", "b3", "b7", "b8", "l2"):
        assert get_pretrained_cfg(f"effnet_v1_{v}").tag == get_pretrained_cfg(f"tf_efficientnet_{v}").tag


def test_hub_configs_have_not_drifted_from_the_registry():
    committed = sorted(p.name for p in HUB_CONFIGS.iterdir() if p.is_dir())
    assert committed == EXPECTED, "regenerate with: python tools/gen_hub_configs.py"
    heads = {}  # one meta-device build of timm's source per architecture, not per tag
    for name in EXPECTED:
        text = (HUB_CONFIGS / name / "config.json").read_text()
        assert text == render_hub_config(name), f"{name} drifted; regenerate with: python tools/gen_hub_configs.py"
        cfg = json.loads(text)
        assert cfg["architecture"] == name.split(".")[0] and cfg["pretrained_cfg"]["tag"] == name.split(".", 1)[1]
        arch = source_name(name.split(".")[0])
        if arch not in heads:
            with torch.device("meta"):
                source = timm.create_model(arch)
            heads[arch] = (source.num_features, source.num_classes)
        assert (cfg["num_features"], cfg["num_classes"]) == heads[arch]
