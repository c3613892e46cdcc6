"""``pretrained=True`` end to end through the real timm and huggingface_hub loaders.

The offline Hub cache (see conftest) holds ``model.safetensors`` files in the layout of timm's
``timm/tf_efficientnet_bN.<tag>`` repos, written from timm's own model. timm loading its own
``tf_efficientnet_b0`` from the same cache is the reference our model must reproduce.
"""

import pytest
import timm
import torch
from conftest import add_hub_repo, assert_rel_close, json_bytes, safetensors_bytes, timm_reference

from effnet_zoo.hub.config import hub_config
from effnet_zoo.zoo import PretrainedWeightsUnavailable


@pytest.fixture(scope="module")
def b0_hub_weights(tmp_path_factory):
    ref = timm_reference("tf_efficientnet_b0", seed=11)
    for tag in ("aa_in1k", "ap_in1k"):
        add_hub_repo(
            f"timm/tf_efficientnet_b0.{tag}",
            {"model.safetensors": safetensors_bytes(ref.state_dict(), tmp_path_factory.mktemp(tag))},
        )
    return ref


def _x(size=224, channels=3, batch=2):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(size + channels))


def test_pretrained_matches_timm_loading_the_same_hub_file(b0_hub_weights):
    ours = timm.create_model("effnet_v1_b0.aa_in1k", pretrained=True).eval()
    ref = timm.create_model("tf_efficientnet_b0.aa_in1k", pretrained=True).eval()
    x = _x()
    with torch.no_grad():
        assert_rel_close(ours(x), ref(x), 1e-5)
        assert_rel_close(ours(x), b0_hub_weights(x), 1e-5)


def test_pretrained_cfg_follows_the_tag(b0_hub_weights):
    ap = timm.create_model("effnet_v1_b0.ap_in1k", pretrained=True)
    assert ap.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert ap.pretrained_cfg["hf_hub_id"] == "timm/tf_efficientnet_b0.ap_in1k"


def test_num_classes_reinitialises_only_the_head(b0_hub_weights):
    ours = timm.create_model("effnet_v1_b0.aa_in1k", pretrained=True, num_classes=10).eval()
    ref = timm.create_model("tf_efficientnet_b0.aa_in1k", pretrained=True, num_classes=10).eval()
    x = _x()
    assert ours.get_classifier().out_features == 10
    with torch.no_grad():
        assert_rel_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                         ref.forward_head(ref.forward_features(x), pre_logits=True), 1e-5)  # fmt: skip
        # a fresh head, not the 1000-class one cut down
        assert not torch.allclose(ours.classifier.weight, b0_hub_weights.classifier.weight[:10])


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_adapts_the_stem_like_timm(b0_hub_weights, in_chans):
    ours = timm.create_model("effnet_v1_b0.aa_in1k", pretrained=True, in_chans=in_chans).eval()
    ref = timm.create_model("tf_efficientnet_b0.aa_in1k", pretrained=True, in_chans=in_chans).eval()
    x = _x(channels=in_chans)
    with torch.no_grad():
        assert_rel_close(ours(x), ref(x), 1e-5)


def test_features_only_backbone_loads_pretrained(b0_hub_weights):
    ours = timm.create_model("effnet_v1_b0.aa_in1k", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4))
    ref = timm.create_model("tf_efficientnet_b0.aa_in1k", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4))
    assert ours.feature_info.channels() == ref.feature_info.channels() == [24, 40, 112, 320]
    assert ours.feature_info.reduction() == ref.feature_info.reduction()
    x = _x(size=225)
    with torch.no_grad():
        for a, e in zip(ours.eval()(x), ref.eval()(x), strict=True):
            assert_rel_close(a, e, 1e-5)


def test_missing_hub_weights_fail_offline_with_the_repo_named():
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        timm.create_model("effnet_v1_b1.aa_in1k", pretrained=True)
    assert "'timm/tf_efficientnet_b1.aa_in1k'" in str(info.value)
    assert "HF_HUB_CACHE" in str(info.value)


def test_our_own_hub_repo_loads_through_hf_hub(b0_hub_weights, tmp_path):
    """A repo in our key layout, with the config.json from hub_configs/, rebuilds through ``hf-hub:``."""
    base = timm.create_model("effnet_v1_b0.aa_in1k", pretrained=True).eval()
    add_hub_repo(
        "acme/effnet-b0-test",
        {
            "config.json": json_bytes(hub_config("effnet_v1_b0.aa_in1k")),
            "model.safetensors": safetensors_bytes(base.state_dict(), tmp_path),
        },
    )
    loaded = timm.create_model("hf-hub:acme/effnet-b0-test", pretrained=True).eval()
    assert loaded.pretrained_cfg["hf_hub_id"] == "acme/effnet-b0-test"
    x = _x()
    with torch.no_grad():
        assert torch.equal(loaded(x), base(x))
