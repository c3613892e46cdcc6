"""timm's model API on our EfficientNet, checked against timm's own tf_efficientnet where it has one."""

import math

import pytest
import timm
import torch
from conftest import assert_rel_close, timm_reference
from timm.optim import create_optimizer_v2
from timm.optim._param_groups import group_parameters

from effnet_zoo.weights.timm_format import from_timm


@pytest.fixture(scope="module")
def pair():
    ref = timm_reference("tf_efficientnet_b0", seed=21)
    ours = timm.create_model("effnet_v1_b0").eval()
    ours.load_state_dict(from_timm(ref.state_dict()))
    return ref, ours


def _x(size=224, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size))


def test_forward_features_and_head(pair):
    ref, ours = pair
    x = _x()
    with torch.no_grad():
        f, rf = ours.forward_features(x), ref.forward_features(x)
        assert f.shape == (2, 1280, 7, 7)
        assert_rel_close(f, rf)
        assert_rel_close(ours.forward_head(f, pre_logits=True), ref.forward_head(rf, pre_logits=True))
        assert_rel_close(ours.forward_head(f), ref.forward_head(rf))


def test_forward_intermediates_matches_timm(pair):
    ref, ours = pair
    x = _x(225)
    with torch.no_grad():
        final, inter = ours.forward_intermediates(x)
        rfinal, rinter = ref.forward_intermediates(x)
        assert_rel_close(final, rfinal)
        assert [t.shape for t in inter] == [t.shape for t in rinter]
        for a, e in zip(inter, rinter, strict=True):
            assert_rel_close(a, e)
        picked = ours.forward_intermediates(x, indices=[1, 3], intermediates_only=True, stop_early=True)
        assert_rel_close(picked[1], rinter[3])


def test_get_features_default_and_selected_strides(pair):
    ref, ours = pair
    x = _x(256, batch=1)
    with torch.no_grad():
        maps = ours.get_features(x)
        ref_maps = ref.forward_intermediates(x, intermediates_only=True)
        assert [m.shape[-1] for m in maps] == [128, 64, 32, 16, 8]
        for a, e in zip(maps, ref_maps, strict=True):
            assert_rel_close(a, e)
        assert [m.shape[1] for m in ours.get_features(x, strides=(8, 16, 32))] == [40, 112, 320]
    with pytest.raises(ValueError, match=r"strides \[64\].*choose from \[2, 4, 8, 16, 32\]"):
        ours.get_features(x, strides=(64,))


def test_classifier_get_and_reset():
    m = timm.create_model("effnet_v1_b0")
    assert m.get_classifier() is m.classifier and m.classifier.out_features == 1000
    m.reset_classifier(7)
    assert m(_x(64, 1)).shape == (1, 7)
    m.reset_classifier(0)
    assert m(_x(64, 1)).shape == (1, 1280)
    m.reset_classifier(5, global_pool="avgmax")
    assert m(_x(64, 1)).shape == (1, 5)


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    m = timm.create_model("effnet_v1_b0", drop_path_rate=0.0, drop_rate=0.0).train()
    x = _x(64)
    m(x).sum().backward()
    plain = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    for a, b in zip(plain, (p.grad for p in m.parameters()), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_group_matcher_with_timm_layer_decay_groups():
    m = timm.create_model("effnet_v1_b0")
    groups = group_parameters(m, m.group_matcher(coarse=True))
    # stem, 7 stages, head(+classifier)
    assert len(groups) == 9
    ref = timm.create_model("tf_efficientnet_b0")
    assert len(group_parameters(ref, ref.group_matcher(coarse=True))) == len(groups)
    create_optimizer_v2(m, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)


def test_no_weight_decay_lists_norm_params_and_biases():
    m = timm.create_model("effnet_v1_b0")
    names = m.no_weight_decay()
    assert "stem.bn.weight" in names and "classifier.bias" in names and "blocks.1.0.se.reduce.bias" in names
    assert "stem.conv.weight" not in names and "classifier.weight" not in names


def test_stochastic_depth_ramps_linearly_to_drop_path_rate():
    m = timm.create_model("effnet_v1_b0", drop_path_rate=0.2)
    blocks = [b for stage in m.blocks for b in stage]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    for i, (b, r) in enumerate(zip(blocks, rates, strict=True)):
        assert r == pytest.approx(0.2 * i / len(blocks) if b.has_shortcut else 0.0)
    assert max(rates) < 0.2


def test_bn_follows_tf_defaults():
    bn = timm.create_model("effnet_v1_b0").stem.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(3, 224, 224), r"4-D image batch \(N, C, H, W\), got a 3-D"),
        (torch.randn(1, 1, 224, 224), r"expected 3 input channels.*got 1"),
        (torch.randn(1, 224, 224, 3), r"expected 3 input channels.*permute"),
        (torch.randn(1, 3, 16, 224), r"16x224 is smaller than the network's total stride.*at least 32x32"),
        (torch.full((1, 3, 64, 64), 128, dtype=torch.uint8), r"floating-point image batch .*got torch.uint8"),
        (torch.randn(1, 3, 64, 64, dtype=torch.float64), r"input dtype torch.float64 differs from .*torch.float32"),
        (torch.randn(1, 3, 64, 64).index_fill_(3, torch.tensor([5]), float("nan")), r"holds 192 NaN/Inf values"),
        (torch.full((1, 3, 64, 64), float("inf")), r"holds 12288 NaN/Inf values"),
    ],
)
def test_bad_inputs_get_clear_errors(x, match):
    m = timm.create_model("effnet_v1_b0").eval()
    with pytest.raises(ValueError, match=match):
        m(x)
    with pytest.raises(ValueError, match=match):
        m.get_features(x)
    features = timm.create_model("effnet_v1_b0", features_only=True)
    with pytest.raises(ValueError, match=match):
        features(x)


def test_mixed_precision_input_is_accepted_under_autocast_only():
    m = timm.create_model("effnet_v1_b0").eval().to(torch.bfloat16)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="differs from the model's torch.bfloat16"):
        m(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(x)).all()


def test_finite_values_whose_sum_overflows_are_not_taken_for_inf():
    m = timm.create_model("effnet_v1_b0").eval()
    x = torch.full((1, 3, 32, 32), 3e38)
    assert torch.isinf(x.sum()) and torch.isfinite(x).all()
    with torch.no_grad():
        m(x)  # no ValueError: the values are finite (what the network makes of them is the caller's affair)


def test_smallest_valid_input_runs():
    m = timm.create_model("effnet_v1_b0").eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 33)).shape == (1, 1000)


def test_inference_fast_path_follows_weight_changes():
    """Eval without autograd folds BN into the convs (cached); new weights, in place or loaded, are picked up."""
    first = timm_reference("tf_efficientnet_b0", seed=31)
    second = timm_reference("tf_efficientnet_b0", seed=32)
    ours = timm.create_model("effnet_v1_b0").eval()
    x = _x(225, 1)
    ours.load_state_dict(from_timm(first.state_dict()))
    with torch.no_grad():
        assert_rel_close(ours(x), first(x), 1e-5)
        ours.load_state_dict(from_timm(second.state_dict()))
        assert_rel_close(ours(x), second(x), 1e-5)
        ours.head.bn.running_var.mul_(2.0)  # an in-place change to one statistic
        second.bn2.running_var.mul_(2.0)
        assert_rel_close(ours(x), second(x), 1e-5)
    with torch.enable_grad():  # the autograd path (unfolded BatchNorm) computes the same
        assert_rel_close(ours(x).detach(), second(x).detach(), 1e-5)


def test_cpu_channels_last_is_internal_only():
    ref = timm_reference("tf_efficientnet_b0", seed=34)
    m = timm.create_model("effnet_v1_b0").eval()
    m.load_state_dict(from_timm(ref.state_dict()))
    x = _x(224, 1)
    with torch.no_grad():
        expected = ref(x)
        assert_rel_close(m(x), expected, 1e-5)
        layouts = []
        m.stem.conv.register_forward_pre_hook(
            lambda mod, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        maps = m.get_features(x)
        assert layouts == [True]  # NHWC inside the network ...
        assert all(t.is_contiguous() for t in maps)  # ... and NCHW maps handed back, as the input came
        m.cpu_channels_last = False
        assert_rel_close(m(x), expected, 1e-5)
        assert m.get_features(x)[0].is_contiguous() and layouts[-1] is False


def test_optimize_for_inference_folds_batchnorm_and_makes_padding_static():
    import effnet_zoo
    from effnet_zoo.layers import Conv2dSame

    ref = timm_reference("tf_efficientnet_b0", seed=33)
    ours = timm.create_model("effnet_v1_b0").eval()
    ours.load_state_dict(from_timm(ref.state_dict()))
    fast = effnet_zoo.optimize_for_inference(ours)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, Conv2dSame)) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())  # the original is untouched
    assert fast.mirrored and not ours.mirrored
    # Even sizes (asymmetric TF padding, the mirrored case), odd sizes (symmetric) and non-square inputs.
    for shape in ((2, 3, 224, 224), (2, 3, 225, 225), (1, 3, 161, 256)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            assert_rel_close(fast(x), ref(x), 1e-5)
            assert_rel_close(fast.forward_features(x), ref.forward_features(x), 1e-5)
            want = ref.forward_intermediates(x, intermediates_only=True)
            for got, expected in zip(fast.get_features(x), want, strict=True):
                assert_rel_close(got, expected, 1e-5)


def test_optimize_for_inference_on_a_features_only_backbone():
    import effnet_zoo

    ref = timm_reference("tf_efficientnet_b0", seed=35)
    ours = timm.create_model("effnet_v1_b0", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    missing, _ = ours.model.load_state_dict(from_timm(ref.state_dict()), strict=False)
    assert not missing  # the pruned backbone takes every tensor it has from the full network
    fast = effnet_zoo.optimize_for_inference(ours)
    x = _x(256, 1)
    with torch.no_grad():
        got, want = fast(x), ref.forward_intermediates(x, indices=(1, 2, 3, 4), intermediates_only=True)
    assert [t.shape for t in got] == [t.shape for t in want]
    for g, w in zip(got, want, strict=True):
        assert_rel_close(g, w, 1e-5)


def test_fresh_weights_follow_tensorflows_initialisers():
    """TF's efficientnet_model.py: conv kernels normal(0, sqrt(2 / fan_out)) with fan_out = kh * kw * out_filters
    of the TF kernel shape (depthwise [kh, kw, in, 1]: out_filters 1), untruncated; the dense kernel
    uniform(+-1 / sqrt(units)); BN gamma 1, beta 0. Checked per layer and pooled over the whole network."""
    torch.manual_seed(0)
    model = timm.create_model("effnet_v1_b1", num_classes=1000)
    pooled = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            out, _, kh, kw = m.weight.shape
            tf_out_filters = 1 if m.groups == m.in_channels == out else out  # depthwise: depth multiplier 1
            std = math.sqrt(2.0 / (kh * kw * tf_out_filters))
            z = m.weight.detach().flatten() / std
            if z.numel() >= 5000:
                assert abs(z.std().item() - 1) < 0.06, (name, z.std().item())
            pooled.append(z)
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert bool((m.weight == 1).all() and (m.bias == 0).all()), name
    z = torch.cat(pooled)
    assert z.numel() > 5_000_000
    assert abs(z.std().item() - 1) < 0.01 and abs(z.mean().item()) < 0.01
    assert abs((z.abs() > 2).float().mean().item() - 0.0455) < 0.002  # a normal's tails: not truncated at 2 sigma
    dense = model.classifier
    bound = 1 / math.sqrt(dense.out_features)
    w = dense.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.999 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.01 * bound  # uniform's std
    assert bool((dense.bias == 0).all())
