"""Offline detector, no reference: an item of the belt's own hue, darker or lighter than the belt,
is still an item. (A shade model that calls every pixel of the belt's chroma "belt" would erase a
dark green suitcase on a green belt.)"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segmentation.offline import OfflineDetector

SAME_HUE = (90, 60, 230, 170)  # x0, y0, x1, y1: the item of the belt's hue
WHITE = (380, 210, 540, 340)  # a white bag beside it, the control


def _scene(belt: tuple[int, int, int], factor: float, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.empty((400, 640, 3), np.float32)
    img[:] = belt
    x0, y0, x1, y1 = SAME_HUE
    img[y0:y1, x0:x1] = [c * factor for c in belt]
    x0, y0, x1, y1 = WHITE
    img[y0:y1, x0:x1] = (225, 230, 235)
    img += rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("belt", [(45, 105, 75), (40, 70, 140), (200, 110, 40)], ids=["green", "blue", "orange"])
@pytest.mark.parametrize("factor", [0.45, 1.5], ids=["darker", "lighter"])
def test_an_item_of_the_belt_s_hue_is_found_on_a_coloured_belt(belt, factor):
    for seed in range(2):
        found = [
            (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)
            for d, score in OfflineDetector().detect_scored(_scene(belt, factor, seed))
            if score >= 0.5
        ]
        for item in (SAME_HUE, WHITE):
            assert max((_iou(item, box) for box in found), default=0) >= 0.5, (item, found)
