"""The libraries that consume timm backbones, used the way their users call them: the recipes of
docs/features.md, run as written and once more with timm's ``tf_efficientnet_b0`` in our model's place.

Both load the same pretrained file through the real timm + huggingface_hub loaders (an offline Hub cache laid out
here), the control's decoder / neck / head weights are copied into ours, and outputs, losses and one training step
must agree within 1e-4.
"""

import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
from conftest import add_hub_repo, assert_rel_close, safetensors_bytes, timm_reference

DOC = Path(__file__).parent.parent / "docs" / "features.md"
OURS, CONTROL = "effnet_v1_b0", "tf_efficientnet_b0"


def recipe(name: str) -> str:
    """The python block that follows ``<!-- recipe: NAME -->`` in docs/features.md."""
    m = re.search(rf"<!-- recipe: {name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"docs/features.md has no recipe {name!r}"
    return m.group(1)


@pytest.fixture(scope="module", autouse=True)
def b0_weights(tmp_path_factory):
    """The file both ``pretrained=True`` loads read: timm's default B0 tag, random weights, non-trivial BN."""
    assert timm.models.get_pretrained_cfg(OURS).hf_hub_id == timm.models.get_pretrained_cfg(CONTROL).hf_hub_id
    ref = timm_reference(CONTROL, seed=41)
    add_hub_repo(
        timm.models.get_pretrained_cfg(CONTROL).hf_hub_id,
        {"model.safetensors": safetensors_bytes(ref.state_dict(), tmp_path_factory.mktemp("b0"))},
    )


def twins(source: str, var: str = "model"):
    """``var`` built by ``source`` as written (ours) and with the control's name; the control's non-backbone
    weights copied into ours (the backbones already share the pretrained file)."""
    built = []
    for name in (OURS, CONTROL):
        namespace: dict = {}
        torch.manual_seed(0)
        exec(compile(source.replace(OURS, name), f"<recipe {name}>", "exec"), namespace)  # noqa: S102
        built.append(namespace)
    ours, control = built[0][var], built[1][var]
    ctrl_state = control.state_dict()
    shared = {k: v for k, v in ctrl_state.items() if k in ours.state_dict() and v.shape == ours.state_dict()[k].shape}
    # everything but the backbone (whose tensors are named differently, and came from the same file)
    assert all(k.startswith(("encoder.model.", "backbone.")) for k in ctrl_state if k not in shared)
    ours.load_state_dict(shared, strict=False)
    # timm's port updates BatchNorm statistics with PyTorch's momentum 0.1, ours with TF's decay 0.99 (momentum
    # 0.01, as the checkpoints were trained): the control's backbone takes TF's, for the training-step comparisons
    efficientnets = (timm.models.efficientnet.EfficientNet, timm.models.efficientnet.EfficientNetFeatures)
    for backbone in (m for m in control.modules() if isinstance(m, efficientnets)):
        for bn in (m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.momentum = 0.01
    return ours, control, built


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def _sgd_step(model, loss):
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.grad is not None], lr=0.05).step()


SMP_CASES = {
    "unet": ("smp", {}),
    "fpn": ("smp", {"smp.Unet(": "smp.FPN("}),
    "pan": ("smp", {"smp.Unet(": "smp.PAN("}),
    "deeplabv3plus-os8": ("deeplab", {}),
    "deeplabv3plus-os16": ("deeplab", {"encoder_output_stride=8": "encoder_output_stride=16"}),
}


@pytest.mark.parametrize("case", list(SMP_CASES))
def test_segmentation_models_pytorch(case):
    name, edits = SMP_CASES[case]
    source = recipe(name)
    for old, new in edits.items():
        source = source.replace(old, new)
    ours, control, _ = twins(source)
    x = _x(2, 3, 128, 160)  # PAN pools the stride-16 map three more times
    with torch.no_grad():
        assert_rel_close(ours.eval()(x), control.eval()(x), 1e-4)
    # The training step in float64: train-mode BatchNorm's backward cancels so much that float32 gradients of two
    # equal networks already differ by ~1e-3 (summed in another order); in float64 only a real difference shows.
    ours, control, x = ours.double(), control.double(), x.double()
    losses = []
    for model in (ours, control):
        model.train()
        torch.manual_seed(1)  # the decoders' dropout
        losses.append(model(x).square().mean())
        _sgd_step(model, losses[-1])
    assert_rel_close(losses[0], losses[1], 1e-4)
    with torch.no_grad():
        assert_rel_close(ours.eval()(x), control.eval()(x), 1e-4)


def test_smp_unet_scripts_and_traces_at_other_sizes():
    ours, control, _ = twins(recipe("smp"))
    ours.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still in use
        scripted = torch.jit.script(ours)
        traced = torch.jit.trace(ours, _x(1, 3, 128, 128))
    x = _x(1, 3, 96, 160)
    with torch.no_grad():
        want = control.eval()(x)
        assert_rel_close(scripted(x), want, 1e-4)
        assert_rel_close(traced(x), want, 1e-4)


def test_effdet_train_and_predict_benches():
    ours, control, built = twins(recipe("effdet"), "model")
    # EfficientDet's class head starts at one bias (p = 0.01 everywhere): spread its scores, so that the top 100
    # detections are decided by the networks, not by float noise between near-equal scores
    with torch.no_grad():
        for p in control.class_net.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    ours.class_net.load_state_dict(control.class_net.state_dict())
    size = built[0]["config"].image_size[0]
    x = _x(2, 3, size, size)
    target = {
        "bbox": torch.tensor([[[40.0, 50.0, 200.0, 220.0], [100.0, 10.0, 300.0, 150.0]]] * 2),  # y1 x1 y2 x2
        "cls": torch.tensor([[1.0, 2.0]] * 2),
        "img_scale": torch.ones(2),
        "img_size": torch.tensor([[size, size]] * 2, dtype=torch.float32),
    }
    with torch.no_grad():
        for got, want in zip(ours.eval()(x), control.eval()(x), strict=True):  # (class maps, box maps) per level
            for g, w in zip(got, want, strict=True):
                assert_rel_close(g, w, 1e-4)
        got, want = (ns["predict_bench"].eval()(x) for ns in built)
    assert got.shape == want.shape == (2, 100, 6)  # box, score, class of the top 100
    assert_rel_close(got, want, 1e-4)
    losses = []
    for ns in built:
        ns["train_bench"].train()
        torch.manual_seed(2)  # the backbone's drop path (backbone_args of the D0 config)
        out = ns["train_bench"](x, target)
        losses.append(out)
        _sgd_step(ns["model"], out["loss"])
    for key in ("loss", "class_loss", "box_loss"):
        assert_rel_close(losses[0][key], losses[1][key], 1e-4)


def test_torchvision_retinanet():
    ours, control, _ = twins(recipe("retinanet"))
    # as for EfficientDet: a class head that starts at p = 0.01 everywhere would leave the ranking to float noise
    with torch.no_grad():
        for p in control.head.classification_head.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    ours.head.load_state_dict(control.head.state_dict())
    images = list(_x(2, 3, 320, 320))
    with torch.no_grad():
        got, want = ours.eval()(images), control.eval()(images)
    for g, w in zip(got, want, strict=True):
        assert len(w["scores"]) > 10
        for key in ("boxes", "scores", "labels"):
            assert_rel_close(g[key].float(), w[key].float(), 1e-4)
    targets = [
        {"boxes": torch.tensor([[30.0, 40.0, 200.0, 220.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 100.0, 150.0, 300.0], [60.0, 60.0, 120.0, 90.0]]),
            "labels": torch.tensor([2, 1]),
        },
    ]
    losses = []
    for model in (ours, control):
        model.train()
        out = model(images, targets)
        losses.append(out)
        _sgd_step(model, sum(out.values()))
    assert set(losses[0]) == {"classification", "bbox_regression"}
    for key in losses[1]:
        assert_rel_close(losses[0][key], losses[1][key], 1e-4)


def test_torchvision_fasterrcnn():
    """The recipe follows the RetinaNet one on the page (it reuses its wrapper), as a reader pastes them."""
    ours, control, _ = twins(recipe("retinanet") + "\n" + recipe("fasterrcnn"))
    # heads that start near zero leave the proposals' ranking (top-k, NMS) to float noise: spread them out
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in (control.rpn.head, control.roi_heads.box_head, control.roi_heads.box_predictor):
            for name, m in head.named_modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):  # box deltas small, scores spread
                    gain = 0.1 if "bbox" in name else 2.0
                    m.weight.normal_(0, gain / m.weight[0].numel() ** 0.5, generator=g)
                    m.bias.zero_()
    for name in ("rpn", "roi_heads"):
        getattr(ours, name).load_state_dict(getattr(control, name).state_dict())
    assert list(ours.rpn.anchor_generator.sizes) == [(32,), (64,), (128,), (256,), (512,)]  # the defaults
    images = list(_x(2, 3, 320, 320))
    ours.eval(), control.eval()
    with torch.no_grad():
        batch, _ = control.transform(images)
        features, theirs = ours.backbone(batch.tensors), control.backbone(batch.tensors)
        assert list(features) == ["0", "1", "2", "3", "pool"]
        assert [f.shape[-1] for f in features.values()] == [80, 40, 20, 10, 5]
        for key in features:
            assert_rel_close(features[key], theirs[key], 1e-4)
        # Random heads give hundreds of near-equal boxes, so which survive the score threshold and NMS is float
        # noise: the heads are compared before those discrete steps, on the control's proposals.
        for got, want in zip(ours.rpn.head(list(features.values())), control.rpn.head(list(theirs.values())),
                             strict=True):  # fmt: skip
            for g, w in zip(got, want, strict=True):
                assert_rel_close(g, w, 1e-4)
        proposals, _ = control.rpn(batch, theirs)
        heads = []
        for model, maps in ((ours, features), (control, theirs)):
            pooled = model.roi_heads.box_roi_pool(maps, proposals, batch.image_sizes)
            heads.append(model.roi_heads.box_predictor(model.roi_heads.box_head(pooled)))
        for g, w in zip(*heads, strict=True):
            assert_rel_close(g, w, 1e-4)
        detections = ours(images)
    assert [set(d) for d in detections] == [{"boxes", "scores", "labels"}] * 2 and len(detections[0]["boxes"]) > 10
    targets = [
        {"boxes": torch.tensor([[30.0, 40.0, 200.0, 220.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 100.0, 150.0, 300.0], [60.0, 60.0, 120.0, 90.0]]),
         "labels": torch.tensor([2, 1])},
    ]  # fmt: skip
    assert set(ours.train()(images, targets)) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                                                  "loss_rpn_box_reg"}  # fmt: skip
    # One training step, the RoI heads again on the control's proposals (which ones NMS keeps is float noise)
    losses = []
    for model in (ours, control):
        model.train()
        batch, boxes = model.transform(images, targets)
        maps = model.backbone(batch.tensors)
        torch.manual_seed(0)  # the anchors and proposals each head trains on are sampled at random: same draws
        out = model.rpn(batch, maps, boxes)[1]
        out.update(model.roi_heads(maps, proposals, batch.image_sizes, boxes)[1])
        losses.append(out)
        _sgd_step(model, sum(out.values()))
    for key in losses[1]:
        assert_rel_close(losses[0][key], losses[1][key], 1e-4)
