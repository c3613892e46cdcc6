"""A plain ``nn.Module`` to every tool: what hooks, pruning, parametrizations, FLOP counters, attribution and
``torch.func`` see of our model, each checked beside timm's ``tf_efficientnet_b0`` (the control) holding the same
weights. The eval shortcuts (folded BatchNorm, in-place SE gate) must step aside wherever a tool could tell.
"""

import copy
import functools

import pytest
import timm
import torch
from conftest import assert_rel_close, timm_reference
from torch import nn
from torch.nn.utils import parametrize, prune

from effnet_zoo.weights.timm_format import from_timm, to_timm

SIZE = 96  # small inputs keep the suite fast; every code path is the same as at 224


def _pair(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """(ours, control) in eval mode with the same random weights and non-trivial BatchNorm statistics."""
    control = timm_reference("tf_efficientnet_b0").to(dtype)
    ours = timm.create_model("effnet_v1_b0").eval().to(dtype)
    ours.load_state_dict(from_timm(control.state_dict()))
    return ours, control


@functools.cache
def _names() -> dict[str, str]:
    """Our module name -> the control's, for every conv / BN / linear of B0 (from the parameter key mapping)."""
    with torch.device("meta"):
        keys = list(timm.create_model("effnet_v1_b0").state_dict())
    return {o.rpartition(".")[0]: t.rpartition(".")[0] for o, t in zip(keys, to_timm(dict.fromkeys(keys)), strict=True)}


def _edited(edit, ours_name: str, x: torch.Tensor, pair=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ours before, ours after, control after): ``edit(module)`` applied to the same module of ours and of the
    control (named ``ours_name`` in ours). ``edit`` may return a hook handle, removed after the forward."""
    ours, control = pair or _pair()
    with torch.no_grad():
        before = ours(x)
    outs = []
    for model, name in ((ours, ours_name), (control, _names()[ours_name])):
        handle = edit(model.get_submodule(name))
        with torch.no_grad():
            outs.append(model(x))
        if handle is not None:
            handle.remove()
    return before, *outs


def _image(batch: int = 2, size: int = SIZE, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch * size)).to(dtype)


def _conv_bn(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_forward_hooks_on_every_conv_and_bn_fire_in_eval(grad):
    for model in _pair():
        fired, pre = [], []
        for name, module in _conv_bn(model):
            module.register_forward_hook(lambda m, i, o, name=name, fired=fired: fired.append(name))
            module.register_forward_pre_hook(lambda m, i, name=name, pre=pre: pre.append(name))
        with torch.set_grad_enabled(grad):
            model(_image())
        everything = [n for n, _ in _conv_bn(model)]
        assert sorted(fired) == sorted(everything) and sorted(pre) == sorted(everything), type(model).__name__
        assert len(everything) == 130  # B0: 81 convs + 49 BNs (the control's count, too)


def test_global_module_hooks_see_every_layer():
    for model in _pair():
        seen = []
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o, seen=seen: seen.append(m))
        try:
            with torch.no_grad():
                model(_image())
        finally:
            handle.remove()
        assert sum(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in seen) == 130


def test_a_hook_that_edits_an_output_takes_effect_and_matches_the_control():
    pair, x = _pair(), _image()
    # halve a depthwise conv's, a BN's and the head conv's output: each changes the logits as for the control
    for target in ("blocks.3.1.dw.conv", "blocks.5.0.project.bn", "head.conv"):
        before, ours, control = _edited(lambda m: m.register_forward_hook(lambda m, i, o: o * 0.5), target, x, pair)
        assert (ours - before).abs().max() > 1e-3, f"a hook on {target} was ignored"
        assert_rel_close(ours, control)


def test_a_captured_activation_is_not_overwritten_by_the_in_place_shortcuts():
    """Grad-CAM and probes keep the maps hooks saw: neither the in-place activation nor the SE gate may modify
    them afterwards (timm's BatchNormAct2d hands out BN + activation as one module's output)."""
    ours, control = _pair()
    x = _image()
    captured = {}
    for name in ("blocks.2.0.dw.bn", "blocks.2.0.dw.act", "blocks.2.0.dw.conv"):
        ours.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    control.get_submodule(_names()["blocks.2.0.dw.bn"]).register_forward_hook(
        lambda m, i, o: captured.__setitem__("control", o)
    )
    with torch.no_grad():
        ours(x), control(x)
        bn = ours.blocks[2][0].dw.bn
        assert_rel_close(captured["blocks.2.0.dw.bn"], bn(captured["blocks.2.0.dw.conv"]))  # the BN's own output
    assert_rel_close(captured["blocks.2.0.dw.act"], captured["control"])  # activated, not gated
    assert_rel_close(captured["blocks.2.0.dw.act"], nn.functional.silu(captured["blocks.2.0.dw.bn"]))


def _prune_all(model: nn.Module, amount: float = 0.3) -> list[tuple[nn.Module, str]]:
    params = [(m, "weight") for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return params


def test_pruning_a_training_step_then_eval_equals_the_permanent_pruning():
    for model in _pair(torch.float64):
        params = _prune_all(model)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model(_image(4, dtype=torch.float64)).logsumexp(1).mean().backward()
        opt.step()
        model.eval()
        x = _image(dtype=torch.float64)
        with torch.no_grad():
            masked = model(x)
        for module, name in params:
            prune.remove(module, name)
        with torch.no_grad():
            permanent = model(x)
        assert (masked - permanent).abs().max().item() < 1e-9, type(model).__name__


def test_a_weight_parametrization_takes_effect_in_eval():
    class Halve(nn.Module):
        def forward(self, w):
            return w * 0.5

    edit = lambda m: parametrize.register_parametrization(m, "weight", Halve()) and None  # noqa: E731
    before, ours, control = _edited(edit, "blocks.4.2.expand.conv", _image())
    assert (ours - before).abs().max() > 1e-3
    assert_rel_close(ours, control)


def test_weight_norm_and_a_patched_forward_are_followed():
    """torch's weight_norm (a parametrization) and accelerate-style hooks (an instance-level ``forward``)."""

    def weight_norm(conv):
        nn.utils.parametrizations.weight_norm(conv)
        with torch.no_grad():
            conv.parametrizations.weight.original0.mul_(2)  # the norm g doubles: so does the weight

    def patched(conv):
        original = conv.forward
        conv.forward = lambda t: original(t) + 1.0

    pair, x = _pair(), _image()
    for edit, target in ((weight_norm, "blocks.1.0.project.conv"), (patched, "blocks.2.1.dw.conv")):
        before, ours, control = _edited(edit, target, x, pair)
        assert (ours - before).abs().max() > 1e-3, target
        assert_rel_close(ours, control)


def test_flop_counters_that_use_hooks_count_what_the_control_counts():
    import thop  # test extras
    import torchinfo
    from timm.layers import BatchNormAct2d

    counts = []
    for model in _pair():
        info = torchinfo.summary(model, input_size=(1, 3, 224, 224), verbose=0)
        # thop looks layers up by exact type: without this it counts our nn.BatchNorm2d but not the control's
        # BatchNormAct2d subclass (7% of B0's total), a difference of thop's, not of the computation
        bn = {BatchNormAct2d: thop.vision.basic_hooks.count_normalization}
        macs, _ = thop.profile(
            copy.deepcopy(model), inputs=(torch.randn(1, 3, 224, 224),), custom_ops=bn, verbose=False
        )
        counts.append((info.total_mult_adds, macs))
    (info_ours, thop_ours), (info_control, thop_control) = counts
    assert info_control > 3e8 and thop_control > 3e8  # B0 is ~0.39 G mult-adds
    assert abs(info_ours / info_control - 1) < 0.05, (info_ours, info_control)
    assert abs(thop_ours / thop_control - 1) < 0.05, (thop_ours, thop_control)


def test_torch_flop_counter_mode_matches_the_control():
    from torch.utils.flop_counter import FlopCounterMode

    flops = []
    for model in _pair():
        with FlopCounterMode(display=False) as counter:
            model(_image(1, 224))
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 6e8


def test_grad_cam_on_the_head_conv_gives_a_map_like_the_controls():
    from pytorch_grad_cam import GradCAM  # test extra grad-cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours, control = _pair()
    x = _image(1, 128)
    maps = []
    for model, layer in ((ours, ours.head.conv), (control, control.conv_head)):
        with GradCAM(model=model, target_layers=[layer]) as cam:
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(500)]))
    assert maps[0].shape == (1, 128, 128) and maps[0].mean() > 0.1  # normalised to [0, 1]; empty = all zeros
    assert abs(maps[0] - maps[1]).max() < 1e-3


def test_per_sample_gradients_with_torch_func_equal_single_sample_gradients():
    from torch.func import functional_call, grad, vmap

    ours, control = _pair(torch.float64)
    x, y = _image(3, 64, torch.float64), torch.tensor([1, 5, 9])
    per_model = []
    for model in (ours, control):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def loss(p, xi, yi, model=model, buffers=buffers):
            out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return nn.functional.cross_entropy(out, yi.unsqueeze(0))

        batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
        for i in range(len(x)):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
            for name, p in model.named_parameters():
                assert_rel_close(batched[name][i], p.grad, 1e-8)
        per_model.append(batched)
    ours_grads, control_grads = per_model
    for ours_key, control_key in zip(ours_grads, to_timm(ours_grads), strict=True):
        assert_rel_close(ours_grads[ours_key], control_grads[control_key], 1e-8)


def test_aot_autograd_memory_efficient_fusion_matches_eager():
    """What timm's validate.py / benchmark.py run with ``--aot-autograd``."""
    from functorch.compile import memory_efficient_fusion

    ours, control = _pair()
    x = _image()
    with torch.no_grad():
        expected = control(x)
    for model in (ours, control):
        fused = memory_efficient_fusion(model)
        assert_rel_close(fused(x).detach(), expected)


def test_make_fx_and_fake_tensors_see_the_plain_graph():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    ours, control = _pair()
    x = _image()
    graph = make_fx(ours)(x)
    ops = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert sum("batch_norm" in op for op in ops) == 49  # every BN, as the control's graph has
    with torch.no_grad():
        assert_rel_close(graph(x), control(x))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        assert ours(mode.from_tensor(x)).shape == (2, 1000)


def test_shortcuts_still_run_when_nothing_watches():
    """The rule must not disable the fast path itself: unwatched, eval folds every BN (torch's profiler, which
    neither hooks nor patches anything, sees no batch_norm op run)."""
    ours, control = _pair()
    counts = []
    for model in (ours, control):
        with torch.no_grad(), torch.profiler.profile() as prof:
            model(_image())
        counts.append(sum(e.count for e in prof.key_averages() if e.key == "aten::batch_norm"))
    assert counts == [0, 49]


def test_eval_results_do_not_depend_on_which_path_ran():
    """A global hook sends every layer down the plain path; a hook on some layers mixes the two paths."""
    ours, control = _pair()
    x = _image()
    with torch.no_grad():
        fast, expected = ours(x), control(x)
        handle = nn.modules.module.register_module_forward_hook(lambda *_: None)
        try:
            plain = ours(x)
        finally:
            handle.remove()
        for stage in ours.blocks[::2]:
            stage[0].dw.bn.register_forward_pre_hook(lambda *_: None)
        mixed = ours(x)
    for out in (fast, plain, mixed):
        assert_rel_close(out, expected, 1e-5)
    assert not torch.equal(fast, plain)  # the two paths really differ in rounding: both were exercised


# What an outside attack found the earlier cached fold missed: each state below is reached from a first eval
# forward (which used to cache the folded weights), and must give what the modules as they now are compute.


def _bn_modules(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_batchnorm_in_train_mode_alone_uses_batch_statistics():
    """Test-time adaptation: the model in eval, only its BatchNorms in train mode."""
    ours, control = _pair()
    x = _image(4)
    for model in (ours, control):
        with torch.no_grad():
            model(x)
        for bn in _bn_modules(model):
            bn.train()
    with torch.no_grad():
        assert_rel_close(ours(x), control(x))


@pytest.mark.parametrize("edit", ["data", "eps", "conv_bias"])
def test_writes_that_bypass_version_counters_are_seen(edit):
    ours, control = _pair()
    x = _image()
    names = _names()
    with torch.no_grad():
        ours(x)
        for bn in _bn_modules(ours) + _bn_modules(control):
            if edit == "data":
                bn.running_var.data.mul_(4)  # .data writes do not bump the version counter
            elif edit == "eps":
                bn.eps = 0.5
    if edit == "conv_bias":
        for model, name in ((ours, "blocks.1.0.expand.conv"), (control, names["blocks.1.0.expand.conv"])):
            conv = model.get_submodule(name)
            conv.bias = nn.Parameter(torch.linspace(-1, 1, conv.out_channels))
    with torch.no_grad():
        assert_rel_close(ours(x), control(x))


def _control_with(model: nn.Module) -> nn.Module:
    """timm's TF port holding ``model``'s weights as they are now: the independent reference."""
    control = timm.create_model("tf_efficientnet_b0").eval()
    control.load_state_dict(to_timm(model.state_dict()))
    return control


def test_a_fused_optimizer_step_and_re_estimated_statistics_are_seen():
    ours, _ = _pair()
    x = _image(4)
    with torch.no_grad():
        ours(x)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-2, fused=True)  # writes without bumping versions
    ours.train()
    ours(x).logsumexp(1).mean().backward()
    opt.step()
    with torch.no_grad():  # AdaBN: running statistics re-estimated on new data
        ours(_image(4, 64))
    ours.eval()
    with torch.no_grad():
        assert_rel_close(ours(x), _control_with(ours)(x))


def test_a_batchnorm_without_affine_parameters_swapped_in_runs_as_written():
    """The reference is torch's own modules run as written (a global hook turns every shortcut off)."""
    ours, _ = _pair()
    x = _image()
    bn = nn.BatchNorm2d(144, eps=1e-3, affine=False).eval()
    bn.running_var.uniform_(0.5, 2.0)
    ours.blocks[2][0].dw.bn = bn
    with torch.no_grad():
        fast = ours(x)
        handle = nn.modules.module.register_module_forward_hook(lambda *_: None)  # every layer as written
        plain = ours(x)
        handle.remove()
    assert_rel_close(fast, plain, 1e-5)


def test_a_profiler_that_patches_batch_norm_sees_every_call():
    counts = []
    original = nn.functional.batch_norm
    for model in _pair():
        calls = []
        nn.functional.batch_norm = lambda *a, calls=calls, **k: calls.append(1) or original(*a, **k)
        try:
            with torch.no_grad():
                model(_image())
        finally:
            nn.functional.batch_norm = original
        counts.append(len(calls))
    assert counts == [49, 49]


def test_maps_come_back_in_the_callers_layout():
    """NCHW in, NCHW out, as from any PyTorch layer (the CPU model runs NHWC inside): ``.view`` works."""
    ours, control = _pair()
    x = _image()
    backbone = timm.create_model("effnet_v1_b0", features_only=True).eval()
    with torch.no_grad():
        outputs = [ours.forward_features(x), *ours.forward_intermediates(x, intermediates_only=True), *backbone(x)]
        assert all(t.is_contiguous() for t in outputs)
        assert_rel_close(ours.forward_features(x).view(2, -1), control.forward_features(x).view(2, -1))
        nhwc = ours.forward_features(x.contiguous(memory_format=torch.channels_last))
    assert nhwc.is_contiguous(memory_format=torch.channels_last)  # and NHWC in, NHWC out


def test_a_timm_features_only_state_dict_loads_into_our_backbone():
    control = timm.create_model("tf_efficientnet_b0", features_only=True).eval()
    ours = timm.create_model("effnet_v1_b0", features_only=True).eval()
    assert not ours.load_state_dict(control.state_dict()).missing_keys
    x = _image()
    with torch.no_grad():
        for mine, theirs in zip(ours(x), control(x), strict=True):
            assert_rel_close(mine, theirs)


def test_full_backward_hooks_on_a_batchnorm_or_activation_work_as_on_the_control():
    ours, control = _pair()
    x = _image().requires_grad_()
    for model, names in ((ours, ("blocks.2.1.dw.bn", "blocks.2.1.dw.act")), (control, ("blocks.2.1.bn2",))):
        fired = []
        for name in names:
            model.get_submodule(name).register_full_backward_hook(lambda m, gi, go, fired=fired: fired.append(m))
        model(x).sum().backward()
        assert len(fired) == len(names), type(model).__name__
    grad_ours = torch.autograd.grad(ours(x).sum(), x)[0]
    assert_rel_close(grad_ours, torch.autograd.grad(control(x).sum(), x)[0])


def test_a_non_contiguous_nchw_input_gives_nchw_maps():
    ours, control = _pair()
    crop = torch.randn(2, 3, 128, 128)[:, :, 10:106, 5:101]  # a view: neither NCHW- nor NHWC-contiguous
    with torch.no_grad():
        maps = [ours.forward_features(crop), *ours.forward_intermediates(crop, intermediates_only=True)]
        assert all(t.is_contiguous() for t in maps)
        assert_rel_close(maps[0], control.forward_features(crop))
        final, levels = ours.forward_intermediates(_image(), indices=[2], stop_early=True)
    assert final.data_ptr() == levels[-1].data_ptr()  # the same tensor, as the control returns it


def test_a_swapped_out_batchnorm_leaves_a_captured_conv_output_intact():
    ours, _ = _pair()
    block = ours.blocks[1][0]
    block.dw.bn = nn.Identity()  # e.g. fused by hand
    saved = []
    block.dw.conv.register_forward_hook(lambda m, i, o: saved.append((o, o.clone())))
    with torch.no_grad():
        ours(_image())
    output, snapshot = saved[0]
    assert torch.equal(output, snapshot)


def test_a_class_level_patch_of_conv_forward_sees_every_convolution():
    ours, _ = _pair()
    calls = []
    original = nn.Conv2d.forward
    nn.Conv2d.forward = lambda self, t: calls.append(1) or original(self, t)
    try:
        with torch.no_grad():
            ours(_image())
    finally:
        nn.Conv2d.forward = original
    assert len(calls) == sum(isinstance(m, nn.Conv2d) for m in ours.modules()) == 81


def test_a_module_swapped_in_for_se_is_called_as_any_module():
    """Ablations replace SE with nn.Identity or another module: it is called with the map alone."""
    ours, control = _pair()
    for model in (ours, control):  # both name the block blocks.3.0 and its SE module se
        model.blocks[3][0].se = nn.Identity()
    x = _image()
    with torch.no_grad():
        assert_rel_close(ours(x), control(x))
