"""Colour: the paint distance between pieces, the features the colour clusters use, and the naming
of an item's colour, white-balanced against the belt and corrected for the local light.
"""

from __future__ import annotations

import functools
import math

from segmentation.offline.arrays import _masked_blur, _median, _nonzero
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams


def _paint_distance(dc, *, params: OfflineParams = P) -> float:
    """Difference of two log colours (`dc`, one minus the other): chroma (L1) plus brightness
    damped by params.merge_lum_weight (shading and highlights change brightness, not paint)."""
    d0, d1, d2 = dc.tolist()  # plain floats: this runs for every pair of pieces
    dl = (d0 + d1 + d2) / 3
    return abs(d0 - dl) + abs(d1 - dl) + abs(d2 - dl) + params.merge_lum_weight * 3 * abs(dl)


@functools.cache
def _colour_features(*, params: OfflineParams = P):
    """The 3 x 4 matrix from a log colour to _colour_refine's features (made once)."""
    import numpy as np

    return np.hstack([np.eye(3) - 1 / 3, np.full((3, 1), params.colour_lum_weight / 3)]).astype(np.float32)


def _belt_area(lum, h: int, w: int) -> int:
    """Pixels of belt in view: where the background model's brightness `lum` (mean log of the
    channels) is within a factor 1.5 of its median (rails and surroundings are brighter or
    darker); the image if that finds little."""
    import numpy as np

    med = float(_median(lum[::2, ::2]))
    area = int((np.abs(lum - med) < math.log(1.5)).sum())
    return area if area > 0.3 * h * w else h * w


def _illumination(blurred, lum, belt_mask):
    """The neutral (belt) colour in linear RGB and the local light relative to its median, from
    the background model's brightness `lum` (mean log of the channels)."""
    import numpy as np

    from segmentation.colors import srgb_to_linear

    lum_s, belt_s = lum[::2, ::2], belt_mask[::2, ::2]
    med = float(_median(lum_s[belt_s])) if belt_s.any() else float(_median(lum_s))
    near = np.abs(lum - med) < math.log(1.5)
    use_s = near[::2, ::2] & belt_s
    if use_s.sum() > 100:  # (every n-th of the masked pixels by index: gathering them all is slower)
        index = np.flatnonzero(use_s)
        index = index[:: max(1, len(index) // 8000)]
        sample = blurred[::2, ::2][index // use_s.shape[1], index % use_s.shape[1]]
    else:
        sample = blurred.reshape(-1, 3)
        sample = sample[:: max(1, len(sample) // 8000)]
    neutral = srgb_to_linear(sample).mean(axis=0)
    smooth = _masked_blur(lum, (near & belt_mask).astype(np.float32), sigma=max(lum.shape) / 12)
    light = np.exp(np.clip(smooth - med, -0.7, 0.7) * 2.2)  # sRGB log ratio -> linear light ratio
    return neutral, light


def _colors(rgb, mask, beltlike, neutral, light):
    import cv2
    import numpy as np

    from segmentation.colors import dominant_colors, linear_to_srgb8, srgb_to_linear, white_balance

    inner = (
        cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    )
    if np.count_nonzero(inner) < 0.25 * np.count_nonzero(mask):
        inner = mask
    own = inner & ~beltlike
    use = own if np.count_nonzero(own) >= 0.3 * np.count_nonzero(inner) else inner
    ys, xs = _nonzero(use)
    step = max(1, len(ys) // 2000)
    ys, xs = ys[::step], xs[::step]  # (only the sampled pixels are gathered)
    lin = srgb_to_linear(rgb[ys, xs]) * (1.0 / light[ys, xs])[:, None]
    balanced = white_balance(lin, neutral)
    colors = dominant_colors(linear_to_srgb8(balanced))
    return [(name, share) for name, share in colors if share >= 0.05]
