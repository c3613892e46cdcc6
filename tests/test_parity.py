"""Numerical parity with timm's TF-ported ``tf_efficientnet_bN`` (itself checked against Google's TF
models by timm) under identical random weights with non-trivial BatchNorm statistics."""

import pytest
import timm
import torch
from conftest import assert_rel_close, timm_reference

from effnet_zoo.weights.timm_format import from_timm

NATIVE = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
# Odd sizes exercise the symmetric branch of TF "SAME" padding, even ones the asymmetric branch,
# and 161 makes the stride-2 layers see both parities along the way (161 -> 81 -> 41 -> 21 -> 11).
ODD_SIZES = (225, 161)
# With random weights the 45- and 55-block B6/B7 are chaotic: a change of float32 rounding alone (timm's own model
# in channels_last vs NCHW) moves their logits by ~3%. They are compared in float64, where the same rounding is
# 1e-16 and only a real difference in the computation shows; B0-B5 stay well-conditioned in float32.
DTYPE = {"b6": torch.float64, "b7": torch.float64}
# float64 convolutions are slow on CPU: B6/B7 are checked at 160 (even at every stride-2 layer: the asymmetric
# branch of TF padding) and 161 (the symmetric one); their native 528/600 add minutes and no branch. Their
# features at 64 only (the same feature code B0-B5 check at full size); B0-B5 at every size.
SIZES = {v: (160, 161) if v in DTYPE else (NATIVE[v], *ODD_SIZES) for v in NATIVE}
FEATURE_SIZES = {v: (64,) if v in DTYPE else (NATIVE[v], 161) for v in NATIVE}


def _pair(variant: str, features_only: bool = False):
    """timm's model with random weights, and ours holding the same weights (features_only: both backbones)."""
    ref = timm_reference(f"tf_efficientnet_{variant}", seed=int(variant[1:]))
    ours = timm.create_model(f"effnet_v1_{variant}", features_only=features_only).eval()
    state = from_timm(ref.state_dict())
    if features_only:
        ref_features = timm.create_model(f"tf_efficientnet_{variant}", features_only=True).eval()
        missing, _ = ref_features.load_state_dict(ref.state_dict(), strict=False)  # its head is gone
        assert not missing
        target = ours.model  # FeatureGetterNet wraps the pruned model; its head is gone
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "classifier."))}
        ref = ref_features
    else:
        target = ours
    target.load_state_dict(state, strict=True)
    dtype = DTYPE.get(variant, torch.float32)
    return ref.to(dtype), ours.to(dtype)


@pytest.mark.parametrize("variant", list(NATIVE))
def test_logits_match_timm_tf_port(variant):
    ref, ours = _pair(variant)
    for size in SIZES[variant]:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        x = x.to(DTYPE.get(variant, torch.float32))
        with torch.no_grad():
            expected, actual = ref(x), ours(x)
        assert_rel_close(actual, expected, 1e-4)


@pytest.mark.parametrize("variant", list(NATIVE))
def test_features_only_maps_match_timm(variant):
    ref, ours = _pair(variant, features_only=True)
    assert ours.feature_info.get_dicts(keys=("num_chs", "reduction", "module")) == ref.feature_info.get_dicts(
        keys=("num_chs", "reduction", "module")
    )
    for size in FEATURE_SIZES[variant]:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        x = x.to(DTYPE.get(variant, torch.float32))
        with torch.no_grad():
            expected, actual = ref(x), ours(x)
        assert len(actual) == len(expected) == 5
        for a, e in zip(actual, expected, strict=True):
            assert_rel_close(a, e, 1e-4)


def test_symmetric_padding_matches_timm_native_efficientnet():
    """padding='symmetric' (+ PyTorch's BN eps) reproduces timm's native efficientnet_b0."""
    ref = timm_reference("efficientnet_b0", seed=3)
    ours = timm.create_model("effnet_v1_b0", padding="symmetric", bn_eps=1e-5).eval()
    ours.load_state_dict(from_timm(ref.state_dict()))
    for size in (224, 225):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert_rel_close(ours(x), ref(x), 1e-4)


def test_tf_same_padding_differs_from_symmetric_on_even_inputs():
    """The asymmetric TF padding is real: the same weights give other logits with symmetric padding."""
    ref = timm_reference("tf_efficientnet_b0", seed=4)
    same = timm.create_model("effnet_v1_b0").eval()
    sym = timm.create_model("effnet_v1_b0", padding="symmetric").eval()
    same.load_state_dict(from_timm(ref.state_dict()))
    sym.load_state_dict(from_timm(ref.state_dict()))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (same(x) - sym(x)).abs().max() > 1e-3
        # odd sizes pad symmetrically in TF too
        x = torch.randn(1, 3, 225, 225)
        assert_rel_close(same(x), sym(x), 1e-5)
