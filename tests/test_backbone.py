"""Backbone use beyond timm's own tests: ``output_stride`` (dilated stages), FX graphs, tracing and scripting of
``features_only`` models, the model-API arguments timm passes. Each compared with timm's TF port under the same
weights."""

import warnings

import pytest
import timm
import torch
from conftest import assert_rel_close, timm_reference

import effnet_zoo
from effnet_zoo.weights.timm_format import from_timm


def _pair(variant: str, seed: int, **kwargs):
    """timm's tf_efficientnet_<variant>(**kwargs) with random weights and ours holding the same weights."""
    ref = timm_reference(f"tf_efficientnet_{variant}", seed=seed, **kwargs)
    ours = timm.create_model(f"effnet_v1_{variant}", **kwargs).eval()
    ours.load_state_dict(from_timm(ref.state_dict()))
    return ref, ours


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("variant,sizes", [("b0", ((1, 3, 224, 224), (1, 3, 161, 193))), ("b3", ((1, 3, 225, 160),))])
def test_output_stride_matches_timm(variant, sizes, output_stride):
    """Dilated stages past output_stride: logits, every pyramid map and its reduction as timm's TF port."""
    ref, ours = _pair(variant, seed=output_stride, output_stride=output_stride)
    reductions = [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    assert [i["reduction"] for i in ours.feature_info] == [i["reduction"] for i in ref.feature_info] == reductions
    dilations = {m.dilation[0] for m in ours.modules() if isinstance(m, torch.nn.Conv2d)}
    assert dilations == {1, *(2**k for k in range(1, 32 // output_stride + 1) if 2**k <= 32 // output_stride)}
    for shape in sizes:
        x = _x(*shape)
        with torch.no_grad():
            assert_rel_close(ours(x), ref(x), 1e-4)
            got = ours.forward_intermediates(x, intermediates_only=True)
            want = ref.forward_intermediates(x, intermediates_only=True)
        assert [g.shape[-2:] for g in got] == [torch.Size((-(-shape[2] // r), -(-shape[3] // r))) for r in reductions]
        for g, w in zip(got, want, strict=True):
            assert_rel_close(g, w, 1e-4)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_features_only_and_fast_path(output_stride):
    """A features_only backbone with dilation equals timm's; optimize_for_inference keeps it exact."""
    ref = timm_reference("tf_efficientnet_b0", seed=5, output_stride=output_stride)
    ref_features = timm.create_model("tf_efficientnet_b0", features_only=True, output_stride=output_stride).eval()
    ref_features.load_state_dict(ref.state_dict(), strict=False)
    ours = timm.create_model("effnet_v1_b0", features_only=True, output_stride=output_stride).eval()
    state = {k: v for k, v in from_timm(ref.state_dict()).items() if not k.startswith(("head.", "classifier."))}
    ours.model.load_state_dict(state)
    assert ours.feature_info.reduction() == ref_features.feature_info.reduction()
    fast = effnet_zoo.optimize_for_inference(ours)
    x = _x(2, 3, 192, 161)
    with torch.no_grad():
        want = ref_features(x)
        for got in (ours(x), fast(x)):
            for g, w in zip(got, want, strict=True):
                assert_rel_close(g, w, 1e-4)


def test_output_stride_is_refused_clearly_and_saved():
    with pytest.raises(ValueError, match=r"output_stride must be one of \(2, 4, 8, 16, 32\), got 12"):
        timm.create_model("effnet_v1_b0", output_stride=12)
    assert timm.create_model("effnet_v1_b0", output_stride=16).model_args["output_stride"] == 16


def test_dropout_and_drop_path_default_to_zero_as_in_timm():
    """No regularisation the user did not ask for (timm's TF port: 0 and 0); the paper's rates on request."""
    from timm.layers import DropPath

    ref = timm.create_model("tf_efficientnet_b3")
    ours = timm.create_model("effnet_v1_b3")
    assert ours.head_drop.p == ref.drop_rate == 0.0
    assert not any(isinstance(m, DropPath) for m in [*ours.modules(), *ref.modules()])
    paper = effnet_zoo.zoo.paper_regularization("effnet_v1_b3.ra_in1k")
    assert paper == {"drop_rate": 0.3, "drop_path_rate": 0.2}
    regularised = timm.create_model("effnet_v1_b3", **paper)
    assert regularised.head_drop.p == 0.3
    assert max(m.drop_prob for m in regularised.modules() if isinstance(m, DropPath)) < 0.2
    assert effnet_zoo.zoo.paper_regularization("effnet_lite4")["drop_rate"] == 0.3
    assert effnet_zoo.zoo.paper_regularization("effnet_v1_phi") == {}


def test_timm_argument_names_mean_the_same_or_are_refused():
    """timm's EfficientNet arguments: the same network as timm's port builds, or a TypeError that says why."""
    ref, ours = _pair("b0", seed=19, pad_type="")  # timm's symmetric padding, the same weights
    assert ours.model_args["padding"] == "symmetric"
    x = _x(1, 3, 224, 224)
    with torch.no_grad():
        assert_rel_close(ours(x), ref(x), 1e-4)
    with pytest.raises(TypeError, match="'norm_layer' is a timm EfficientNet argument .*bn_eps / bn_momentum"):
        timm.create_model("effnet_v1_b0", norm_layer=torch.nn.BatchNorm2d)
    with pytest.raises(TypeError):
        timm.create_model("effnet_v1_b0", not_a_model_arg=1)


def test_device_and_dtype_arguments():
    meta = timm.create_model("effnet_v1_l2", device="meta", dtype=torch.bfloat16)
    tensors = [*meta.parameters(), *meta.buffers()]
    assert all(t.is_meta for t in tensors)
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.bfloat16}
    assert sum(p.numel() for p in meta.parameters()) == sum(
        p.numel() for p in timm.create_model("tf_efficientnet_l2", device="meta").parameters()
    )


def test_reset_classifier_keeps_mode_device_dtype_and_pool_width():
    model = timm.create_model("effnet_v1_b0", num_classes=0, global_pool="catavgmax").eval().double()
    ref = timm.create_model("tf_efficientnet_b0", num_classes=0, global_pool="catavgmax")
    assert model.head_hidden_size == ref.head_hidden_size == 2560
    x = _x(1, 3, 64, 64).double()
    with torch.no_grad():
        assert model(x).shape == (1, 2560)
    model.reset_classifier(7, "avg")
    assert not model.classifier.training and not model.global_pool.training
    assert model.classifier.weight.dtype == torch.float64 and model.head_hidden_size == 1280


def _trace(module, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still in use
        return torch.jit.trace(module, x)  # check_trace: the traced graph reruns and must agree


@pytest.mark.parametrize("grad", [False, True])
def test_jit_trace_is_right_at_other_sizes(grad):
    """A trace records TF's padding arithmetic, not one size's padding, and one path whatever the grad mode."""
    ref, ours = _pair("b0", seed=9)
    with torch.set_grad_enabled(grad):
        traced = _trace(ours, _x(1, 3, 224, 224))
    with torch.no_grad():
        for shape in ((1, 3, 224, 224), (2, 3, 161, 190), (1, 3, 256, 255)):
            x = _x(*shape)
            assert_rel_close(traced(x), ref(x), 1e-4)


def test_fx_graphs_with_torchvision_and_timm_tools():
    """torchvision's create_feature_extractor / get_graph_node_names (no tracer arguments: they fail on timm's TF
    port) and timm's feature_cls='fx' give the maps of timm's port; the graph keeps the input checks."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    ref, ours = _pair("b0", seed=11)
    train_nodes, eval_nodes = get_graph_node_names(ours)
    assert "checked_input" in eval_nodes and any(n.startswith("blocks.5.") for n in eval_nodes)
    nodes = {"blocks.2": "p3", "blocks.4": "p4", "blocks.6": "p5", "classifier": "logits"}
    extractor = create_feature_extractor(ours, return_nodes=nodes)
    x = _x(1, 3, 225, 194)
    with torch.no_grad():
        got = extractor(x)
        want = ref.forward_intermediates(x, indices=[2, 3, 4], intermediates_only=True)
        for name, w in zip(("p3", "p4", "p5"), want, strict=True):
            assert_rel_close(got[name], w, 1e-4)
        assert_rel_close(got["logits"], ref(x), 1e-4)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        extractor(torch.randn(1, 1, 64, 64))

    fx_backbone = timm.create_model("effnet_v1_b0", features_only=True, feature_cls="fx", out_indices=(2, 3, 4))
    state = {f"graph_module.{k}": v for k, v in ours.state_dict().items()}
    fx_backbone.load_state_dict({k: v for k, v in state.items() if k in fx_backbone.state_dict()}, strict=True)
    with torch.no_grad():
        for g, w in zip(fx_backbone.eval()(x), want, strict=True):
            assert_rel_close(g, w, 1e-4)


def test_fx_graph_trains_like_timms_port():
    """A graph traced in eval / no-grad mode does not freeze the folded-BN shortcut or the in-place SE gate:
    trained, it gives timm's gradients (float64, where only a real difference shows)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    ref, ours = _pair("b0", seed=23)
    with torch.no_grad():
        graph = create_feature_extractor(ours, return_nodes={"classifier": "out"})
    graph, ref = graph.double().train(), ref.double().train()
    x = _x(2, 3, 96, 97).double()
    graph(x)["out"].square().mean().backward()
    ref(x).square().mean().backward()
    assert_rel_close(graph.stem.conv.weight.grad, ref.conv_stem.weight.grad, 1e-6)
    se = graph.get_submodule("blocks.3.0.se.reduce")
    assert_rel_close(se.weight.grad, ref.blocks[3][0].se.conv_reduce.weight.grad, 1e-6)


@pytest.mark.parametrize("out_indices", [(1, 2, 3, 4), (0, 2)])
def test_features_only_backbone_scripts_and_traces(out_indices):
    """torch.jit.script / trace of a features_only backbone (as necks and smp encoders script it)."""
    ref = timm_reference("tf_efficientnet_b0", seed=13)
    ours = timm.create_model("effnet_v1_b0", features_only=True, out_indices=out_indices).eval()
    ours.model.load_state_dict(from_timm(ref.state_dict()), strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(ours)
    traced = _trace(ours, _x(1, 3, 128, 128))
    x = _x(1, 3, 161, 130)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
        for module in (scripted, traced):
            got = module(x)
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert_rel_close(g, w, 1e-4)


def test_features_only_grad_checkpointing_gives_the_same_gradients():
    x = _x(2, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone = timm.create_model("effnet_v1_b0", features_only=True).train()
        backbone.set_grad_checkpointing(checkpointing)
        assert backbone.model.grad_checkpointing is checkpointing
        sum(f.square().mean() for f in backbone(x)).backward()
        grads.append([p.grad for p in backbone.parameters()])
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g0)


def test_features_only_refuses_a_layout_it_does_not_produce():
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        timm.create_model("effnet_v1_b0", features_only=True, feature_cfg={"output_fmt": "NHWC"})


def test_extra_blocks_index_every_stage_like_timm():
    ref, ours = _pair("b0", seed=17)
    x = _x(1, 3, 128, 128)
    with torch.no_grad():
        got = ours.forward_intermediates(x, indices=[0, 4, 6], extra_blocks=True, intermediates_only=True)
        want = ref.forward_intermediates(x, indices=[0, 4, 6], extra_blocks=True, intermediates_only=True)
        for g, w in zip(got, want, strict=True):
            assert_rel_close(g, w, 1e-4)
        ours.prune_intermediate_layers([0], extra_blocks=True)
        ref.prune_intermediate_layers([0], extra_blocks=True)
        assert ours.num_features == ref.num_features == 32
        ours.reset_classifier(7, "avg")
        assert ours(x).shape == (1, 7)


@pytest.mark.parametrize("feature_cls", [None, "fx", "hook"])
@pytest.mark.parametrize(
    "out_indices, error, match",
    [
        ((5,), ValueError, r"out_indices \(5,\): there is no feature level 5; .*0 to 4, or -5 to -1"),
        ((-7,), ValueError, r"out_indices \(-7,\): there is no feature level -7; .*0 to 4, or -5 to -1"),
        ((0, 2, 9), ValueError, r"there is no feature level 9"),
        ((0, 0), ValueError, r"out_indices \(0, 0\) names level 0 twice"),
        ((1, -4), ValueError, r"out_indices \(1, -4\) names level 1 twice \(as 1 and -4\)"),
        ((), ValueError, r"out_indices \(\) selects no feature level"),
        (6, ValueError, r"out_indices=6 asks for the last 6 feature levels; this network has 5: pass 1 to 5"),
        (0, ValueError, r"out_indices=0 asks for the last 0 feature levels; this network has 5: pass 1 to 5"),
        (("a",), TypeError, r"out_indices \('a',\) holds 'a', not an integer level; .*0 to 4, or -5 to -1"),
        ((1.0,), TypeError, r"holds 1.0, not an integer level"),
        (3.5, TypeError, r"out_indices 3.5 is neither an int .* nor a sequence of levels"),
        ("01", TypeError, r"out_indices '01' is neither an int"),
        (True, TypeError, r"out_indices True is neither an int"),
        # out of order: the maps come shallow to deep while feature_info listed them as given (FPN crashed)
        ((4, 0), ValueError, r"out_indices \(4, 0\) is not in network order: .*give \(0, 4\)"),
        ((-1, 0), ValueError, r"is not in network order"),
        ((3, 1), ValueError, r"give \(1, 3\)"),
    ],
)
def test_features_only_bad_out_indices_say_what_is_valid(out_indices, error, match, feature_cls):
    """out_indices=(5,) raised a bare AssertionError (timm's own tf_efficientnet_b0: IndexError), (0, 0) built a
    backbone whose feature_info lists two maps but returns one, () one that failed in max(). Every wrapper class
    gets the same message, before any weights are read."""
    kwargs = {"feature_cls": feature_cls} if feature_cls else {}
    with pytest.raises(error, match=match):
        timm.create_model("effnet_v1_b0", features_only=True, out_indices=out_indices, **kwargs)


@pytest.mark.parametrize("out_indices", [None, 5, 1, 3, (4,), (-1,), (-5,), (0, 2, 4), [1, 3], (1, 2, 3, 4), (0, -1),
                                         (2, -1)])  # fmt: skip
def test_features_only_valid_out_indices_match_timm(out_indices):
    """Every valid out_indices gives the maps and feature_info that timm's tf_efficientnet_b0 gives."""
    kwargs = {} if out_indices is None else {"out_indices": out_indices}
    ref = timm.create_model("tf_efficientnet_b0", features_only=True, **kwargs).eval()
    ours = timm.create_model("effnet_v1_b0", features_only=True, **kwargs).eval()
    x = _x(1, 3, 96, 64)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    assert ours.feature_info.channels() == ref.feature_info.channels()
    assert ours.feature_info.reduction() == ref.feature_info.reduction()


def test_bad_out_indices_are_refused_before_weights_are_fetched():
    """The check comes before the download (or the cache lookup), not after a model was built and loaded."""
    with pytest.raises(ValueError, match=r"out_indices \(7,\): there is no feature level 7"):
        timm.create_model("effnet_v1_b0.aa_in1k", pretrained=True, features_only=True, out_indices=(7,))
    with pytest.raises(ValueError, match=r"out_indices \(7,\): there is no feature level 7"):
        timm.create_model("effnet_v1_b0", features_only=True, feature_cfg={"out_indices": (7,)})
