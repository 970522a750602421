"""Antialiased bicubic resize of uint8 RGB arrays, equal (to rounding) to Pillow's ``Image.resize``.

Pillow's BICUBIC (a = -0.5, support scaled by the downscale factor) is what qwen-vl-utils uses for
images, and torchvision's antialiased bicubic (used for video) implements the same filter.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] for size = (w, h)."""
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return np.asarray(Image.fromarray(rgb, "RGB").resize(size, Image.Resampling.BICUBIC))
