"""Images are decoded in bounded memory (issue 20: memory bombs). The weights readers' bounds are in
tests/test_weights_bounds.py, config.json's in tests/test_config_validation.py.

Two 1.4 MB 16-bit PNGs took 5 GB in `validate` (a whole-image float64 conversion), and PIL only warns about an
image up to twice its pixel limit, then decodes it.
"""

from pathlib import Path

import numpy as np
import pytest
from conftest import peak_growth
from PIL import Image

from effnet_zoo.tasks.common import open_image


def test_a_16_bit_png_converts_in_bounded_memory(tmp_path):
    side = 6000
    path = tmp_path / "scan.png"
    Image.fromarray(np.full((side, side), 40000, np.uint16)).save(path)  # 36 M pixels in a 100 KB file
    with peak_growth() as growth:
        img = open_image(path)
    assert img.size == (side, side) and img.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257, rounded
    # decoded 16-bit (2 bytes a pixel), its array (2), the 8-bit result (1) and RGB (3): about 8 bytes a pixel;
    # the float64 conversion took 17
    assert growth.mb < side * side * 10 / 2**20, f"{growth.mb:.0f} MB for {side}x{side}"


def test_an_image_over_pils_pixel_limit_is_skipped_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((9000, 10000), np.uint8)).save(path)  # 90 M pixels: PIL would only warn
    assert 9000 * 10000 > Image.MAX_IMAGE_PIXELS
    with peak_growth() as growth, pytest.raises(ValueError, match="too large to decode safely .* 90,000,000 pixels"):
        open_image(Path(path))
    assert growth.mb < 50
