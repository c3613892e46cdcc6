"""Compound scaling against the published models: exact parameter counts of Google's originals."""

import math

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effnet_zoo.scaling import (
    BASE_STAGES,
    VARIANTS,
    count_params,
    round_channels,
    round_repeats,
    scale_stages,
    scaling_from_phi,
)

# Parameter counts of Google's released TF checkpoints (1000 classes).
ORIGINAL_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232, "b4": 19_341_616,
    "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960, "b8": 87_413_142, "l2": 480_309_308,
}  # fmt: skip


@pytest.mark.parametrize("variant", list(ORIGINAL_PARAMS))
def test_parameter_count_equals_the_original(variant):
    with torch.device("meta"):  # L2 would take 2 GB of RAM otherwise
        model = timm.create_model(f"effnet_v1_{variant}")
    assert sum(p.numel() for p in model.parameters()) == ORIGINAL_PARAMS[variant]


@pytest.mark.parametrize("variant", list(ORIGINAL_PARAMS))
def test_arithmetic_parameter_count_equals_the_original(variant):
    s = VARIANTS[variant]
    stages = scale_stages(BASE_STAGES, s.width_mult, s.depth_mult)
    assert (
        count_params(stages, round_channels(32, s.width_mult), round_channels(1280, s.width_mult))
        == (ORIGINAL_PARAMS[variant])
    )


@pytest.mark.parametrize("arch,kwargs", [("lite0", {"num_classes": 10, "in_chans": 1}), ("b3", {"num_classes": 0})])
def test_arithmetic_parameter_count_follows_the_head_input_and_lite(arch, kwargs):
    """The count holds for other heads, inputs and Lite's fixed stem/head (timm's port counted as reference)."""
    from effnet_zoo.zoo import LITE_ARGS, LITE_VARIANTS

    lite = arch.startswith("lite")
    s = (LITE_VARIANTS if lite else VARIANTS)[arch]
    stages = scale_stages(
        tuple(type(b)(**{**b.__dict__, "se_ratio": 0.0}) for b in BASE_STAGES) if lite else BASE_STAGES,
        s.width_mult, s.depth_mult, fix_first_last=lite,
    )  # fmt: skip
    stem, head = (32, 1280) if lite else (round_channels(32, s.width_mult), round_channels(1280, s.width_mult))
    with torch.device("meta"):
        ref = timm.create_model(f"tf_efficientnet_{arch}", **kwargs)
    assert LITE_ARGS["fix_stem_head"] or not lite
    assert count_params(stages, stem, head, kwargs.get("in_chans", 3), kwargs["num_classes"]) == sum(
        p.numel() for p in ref.parameters()
    )


@pytest.mark.parametrize("kwargs", [{"width_mult": 1e3}, {"width_mult": 1e6}, {"depth_mult": 1e6}])
def test_absurd_sizes_are_refused_before_allocating(kwargs):
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"make a network of [\d,]+ parameters .* GiB in float32\), over the"):
        timm.create_model("effnet_v1_b0", **kwargs)
    assert time.perf_counter() - start < 5


def test_variant_table_covers_the_paper_and_the_later_releases():
    assert set(VARIANTS) == set(ORIGINAL_PARAMS)
    assert (VARIANTS["b3"].width_mult, VARIANTS["b3"].depth_mult, VARIANTS["b3"].resolution) == (1.2, 1.4, 300)


def test_channel_rounding_follows_tf_round_filters():
    # Stem/head channels of the released models (B7: 64 / 2560, B3: 40 / 1536, L2: 136 / 5504).
    assert [round_channels(32, w) for w in (2.0, 1.2, 4.3)] == [64, 40, 136]
    assert [round_channels(1280, w) for w in (2.0, 1.2, 4.3)] == [2560, 1536, 5504]
    # never more than 10% below the scaled value, always a multiple of 8
    for c in range(8, 400, 3):
        for w in (0.25, 0.5, 1.1, 1.4, 1.8):
            r = round_channels(c, w)
            assert r % 8 == 0 and r >= 0.9 * c * w


def test_repeats_round_up():
    assert round_repeats(1, 1.1) == 2 and round_repeats(4, 3.1) == 13 and round_repeats(3, 1.0) == 3


def test_phi_scaling_is_alpha_beta_gamma_powers():
    s = scaling_from_phi(2.5)
    assert s.depth_mult == pytest.approx(1.2**2.5, rel=1e-6)
    assert s.width_mult == pytest.approx(1.1**2.5, rel=1e-6)
    assert s.resolution % 8 == 0 and abs(s.resolution - 224 * 1.15**2.5) <= 4
    b0 = scaling_from_phi(0)
    assert (b0.width_mult, b0.depth_mult, b0.resolution, b0.dropout) == (1.0, 1.0, 224, 0.2)
    # FLOPs grow ~2^phi by construction: alpha * beta^2 * gamma^2 ~= 2
    assert math.isclose(1.2 * 1.1**2 * 1.15**2, 1.92, rel_tol=0.01)
    with pytest.raises(ValueError, match="phi"):
        scaling_from_phi(-1)


def test_phi_model_builds_at_its_resolution():
    m = timm.create_model("effnet_v1_phi", phi=2.5)
    s = scaling_from_phi(2.5)
    assert m.pretrained_cfg["input_size"] == (3, s.resolution, s.resolution)
    assert m.head.conv.out_channels == round_channels(1280, s.width_mult)
    assert [len(stage) for stage in m.blocks] == [math.ceil(r * s.depth_mult) for r in (1, 2, 2, 3, 3, 4, 1)]
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("effnet_v1_phi", pretrained=True, phi=2.5)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2", "lite3", "lite4"])
def test_lite_matches_timms_tf_port(variant):
    """EfficientNet-Lite: no SE, ReLU6, fixed stem/head and first/last repeats; same parameters and outputs."""
    from conftest import assert_rel_close, timm_reference

    from effnet_zoo.weights.timm_format import from_timm

    ref = timm_reference(f"tf_efficientnet_{variant}", seed=5)
    ours = timm.create_model(f"effnet_{variant}").eval()
    ours.load_state_dict(from_timm(ref.state_dict()))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(1, 3, 161, 161)
    with torch.no_grad():
        assert_rel_close(ours(x), ref(x), 1e-4)


@settings(max_examples=25)
@given(phi=st.floats(0, 7))
def test_phi_model_follows_the_formulas(phi):
    """Any phi: depth 1.2^phi, width 1.1^phi, resolution 224 * 1.15^phi to a multiple of 8, dropout
    0.2 + 0.05 phi capped at 0.5, and TF's eval crop res / (res + 32) (CROP_PADDING 32) in the built model."""
    s = scaling_from_phi(phi)
    assert s.depth_mult == pytest.approx(1.2**phi, rel=1e-5) and s.width_mult == pytest.approx(1.1**phi, rel=1e-5)
    assert s.resolution % 8 == 0 and abs(s.resolution - 224 * 1.15**phi) <= 4
    assert s.dropout == pytest.approx(min(0.5, 0.2 + 0.05 * phi), abs=1e-4)
    model = timm.create_model("effnet_v1_phi", phi=phi, device="meta")
    res = s.resolution
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, res, res) and cfg["pool_size"] == (math.ceil(res / 32),) * 2
    assert cfg["crop_pct"] == pytest.approx(res / (res + 32), abs=0.0015)  # timm rounds the published ones
    assert model.head.conv.out_channels == round_channels(1280, 1.1**phi)
    assert [len(stage) for stage in model.blocks] == [math.ceil(r * 1.2**phi - 1e-9) for r in (1, 2, 2, 3, 3, 4, 1)]
