"""The model compiles, exports and scripts: torch.compile without graph breaks (inference and training),
torch.export and TorchScript of the eval model and of the inference fast path, all equal to timm's TF port."""

import warnings

import pytest
import timm
import torch
from conftest import assert_rel_close, timm_reference

import effnet_zoo
from effnet_zoo.model import EfficientNet
from effnet_zoo.weights.timm_format import from_timm


@pytest.fixture(scope="module")
def b0_pair():
    ref = timm_reference("tf_efficientnet_b0", seed=41)
    ours = timm.create_model("effnet_v1_b0").eval()
    ours.load_state_dict(from_timm(ref.state_dict()))
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(41))
    with torch.no_grad():
        expected = ref(x)
    return ours, x, expected


@pytest.fixture(params=["eval", "fast"])
def model(request, b0_pair):
    ours, x, expected = b0_pair
    return (ours if request.param == "eval" else effnet_zoo.optimize_for_inference(ours)), x, expected


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (no recompilation that would turn shapes dynamic)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_inference_has_no_graph_breaks(b0_pair):
    """fullgraph=True makes dynamo raise on any graph break; the backend counts the graphs it is handed."""
    ours, x, expected = b0_pair
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        out = torch.compile(ours, fullgraph=True, backend=counting_backend, dynamic=False)(x)
    assert len(graphs) == 1
    assert_rel_close(out, expected, 1e-5)


def test_fast_path_compiles_with_dynamic_shapes(b0_pair):
    """Static padding: one dynamic graph serves every input size (TF padding makes that crawl, in timm too)."""
    ours, x, _ = b0_pair
    fast = effnet_zoo.optimize_for_inference(ours)
    compiled = torch.compile(fast, fullgraph=True, backend="eager", dynamic=True)
    with torch.no_grad():
        for size in (96, 97):
            y = torch.randn(1, 3, size, size)
            assert_rel_close(compiled(y), ours(y), 1e-5)


def test_compile_training_step_fullgraph():
    """fullgraph=True raises on any graph break; AOT autograd also traces the backward."""
    torch.manual_seed(0)
    net = EfficientNet(width_mult=0.25, depth_mult=0.34, num_classes=10, drop_path_rate=0.2).train()
    assert any(block.has_shortcut for stage in net.blocks for block in stage)  # drop path is exercised
    x = torch.randn(2, 3, 64, 64)

    def step(model):
        torch.manual_seed(1)
        net.zero_grad()
        loss = model(x).logsumexp(1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    loss_eager, grads_eager = step(net)
    loss_compiled, grads_compiled = step(torch.compile(net, fullgraph=True, backend="aot_eager", dynamic=False))
    assert_rel_close(loss_compiled, loss_eager, 1e-5)
    for got, want in zip(grads_compiled, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_torch_export(model):
    module, x, expected = model
    exported = torch.export.export(module, (x,))
    assert_rel_close(exported.module()(x), expected, 1e-5)


def test_torchscript_scripting(model, tmp_path):
    module, x, expected = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still in use
        scripted = torch.jit.script(module)
        scripted.save(str(tmp_path / "m.pt"))
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        assert_rel_close(loaded(x), expected, 1e-5)
