"""The detection-neck use: torchvision's FeaturePyramidNetwork on a features_only backbone."""

from collections import OrderedDict

import timm
import torch
from torchvision.ops import FeaturePyramidNetwork


def test_fpn_on_features_only_backbone():
    backbone = timm.create_model("effnet_v1_b0", features_only=True, out_indices=(2, 3, 4)).eval()
    fpn = FeaturePyramidNetwork(in_channels_list=backbone.feature_info.channels(), out_channels=64).eval()
    x = torch.randn(2, 3, 320, 256)
    with torch.no_grad():
        feats = backbone(x)
        out = fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
    strides = backbone.feature_info.reduction()
    assert strides == [8, 16, 32]
    for (name, level), stride in zip(out.items(), strides, strict=True):
        assert level.shape == (2, 64, -(-320 // stride), -(-256 // stride)), name
    # the neck is trainable end to end through the backbone
    backbone.train()
    fpn.train()
    loss = sum(level.mean() for level in fpn(OrderedDict((str(i), f) for i, f in enumerate(backbone(x)))).values())
    loss.backward()
    assert backbone.model.stem.conv.weight.grad is not None
