"""Instances: the found items at working resolution, their calibrated confidence, and their
conversion to `Detection`s (mask scaled up, size and shape words).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from segmentation.detections import Box, Detection
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams
from segmentation.offline.scene import SceneCheck

LABEL = "item"


@dataclass(frozen=True)
class _Instance:
    mask: Any  # bool array at working resolution
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 at working resolution (exclusive max)
    score: float
    color: str
    colors: list[tuple[str, float]]
    belt_share: float
    elongation: float
    angle: float
    fill: float
    features: tuple = ()  # the confidence's inputs (see _calibrated_score)


@dataclass
class _Analysis:
    shape: tuple[int, int]
    instances: list[_Instance]
    belt_area: int
    scene: SceneCheck


def _calibrated_score(
    contrast: float,
    edge: float,
    area_frac: float,
    thickness: float,
    belt_frac: float,
    solidity: float,
    *,
    params: OfflineParams = P,
) -> float:
    x = (
        math.log(max(contrast, 1e-6)),
        min(edge, 0.5),
        math.log(max(area_frac, 1e-9)),
        min(thickness, 30) / 10,
        belt_frac,
        solidity,
    )
    z = params.cal_b + sum(
        w * (v - mu) / sd for w, v, mu, sd in zip(params.cal_w, x, params.cal_mu, params.cal_sd, strict=False)
    )
    return 1 / (1 + math.exp(-z))


def _shape(ys, xs) -> tuple[float, float]:
    """Elongation (ratio of the principal axes) and orientation in degrees (0 = along x)."""
    import numpy as np

    y = ys.astype(np.float64) - ys.mean()
    x = xs.astype(np.float64) - xs.mean()
    cxx, cyy, cxy = (x * x).mean(), (y * y).mean(), (x * y).mean()
    tr, det = cxx + cyy, cxx * cyy - cxy * cxy
    disc = math.sqrt(max(tr * tr / 4 - det, 0))
    l1, l2 = tr / 2 + disc, max(tr / 2 - disc, 1e-9)
    angle = math.degrees(0.5 * math.atan2(2 * cxy, cxx - cyy)) % 180
    return math.sqrt(l1 / l2), angle


def _size_word(share: float) -> str:
    if share < 0.01:
        return "small"
    if share < 0.05:
        return "medium-sized"
    return "large"


def _shape_word(elongation: float) -> str:
    if elongation < 1.3:
        return "compact"
    if elongation < 2.0:
        return "oblong"
    return "elongated"


def _to_detection(
    inst: _Instance, sx: float, sy: float, out_size: tuple[int, int], *, params: OfflineParams = P
) -> Detection | None:
    import cv2
    import numpy as np

    x0, y0, x1, y1 = inst.box
    ox0, oy0 = math.floor(x0 * sx), math.floor(y0 * sy)
    ox1, oy1 = min(out_size[0], math.ceil(x1 * sx)), min(out_size[1], math.ceil(y1 * sy))
    if ox1 <= ox0 or oy1 <= oy0:
        return None
    # resample the mask: pixel centres of the output box mapped into the working mask
    pad = cv2.copyMakeBorder(inst.mask.astype(np.float32), 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0)
    if params.mask_smooth > 0:
        pad = cv2.GaussianBlur(pad, (0, 0), params.mask_smooth)
    to_work = np.array([[1 / sx, 0, (ox0 + 0.5) / sx - 0.5 - x0 + 2], [0, 1 / sy, (oy0 + 0.5) / sy - 0.5 - y0 + 2]])
    big = cv2.warpAffine(
        pad,
        to_work,
        (ox1 - ox0, oy1 - oy0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    on = big >= params.mask_level
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if not len(rows):
        return None
    bx0, bx1, by0, by1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    crop = on[by0:by1, bx0:bx1]
    box = Box(ox0 + bx0, oy0 + by0, ox0 + bx1, oy0 + by1)
    mask = Image.fromarray(crop.astype(np.uint8) * np.uint8(255), "L")
    colors = inst.colors
    main = inst.color
    second = next(((n, s) for n, s in colors[1:] if s >= 0.15), None)
    pct = inst.belt_share * 100
    general = f"{main} item, {_size_word(inst.belt_share)} ({pct:.1f}% of the belt), {_shape_word(inst.elongation)}"
    colour_text = f"dominant colour {main} ({colors[0][1] * 100:.0f}% of its pixels)" if colors else f"colour {main}"
    if second:
        colour_text += f", secondary {second[0]} ({second[1] * 100:.0f}%)"
    detailed = (
        f"Unclassified item found by the offline detector: {colour_text}; "
        f"covers {pct:.1f}% of the belt in view; {box.width}x{box.height} px box, "
        f"elongation {inst.elongation:.1f} (principal axes), long axis at {inst.angle:.0f} deg to the image x axis; "
        f"fills {inst.fill * 100:.0f}% of its box."
    )
    return Detection(
        box=box,
        label=LABEL,
        color=main,
        general_description=general,
        detailed_description=detailed,
        mask=mask,
        score=inst.score,
    )
