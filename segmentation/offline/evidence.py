"""Evidence against the belt model: log-brightness ratio and chroma difference, their noise-scaled
thresholds, the belt borders of regions and hole filling (docs/offline-detector-method.md, step 2).
"""

from __future__ import annotations

from segmentation.offline.arrays import _components, _mat, _noise


def _evidence(lg, model):
    """Log-brightness ratio `m` and chroma difference `cd` of the image against the model."""
    import cv2
    import numpy as np

    d = lg - model
    m = cv2.transform(d, _mat([[1 / 3, 1 / 3, 1 / 3]]))
    cd = cv2.transform(np.multiply(d, d, out=d), _mat([[1, 1, 1]]))
    # sqrt(max(sq - 3 m^2, 0)), in place (the same operations in the same order)
    m3 = 3 * m
    m3 *= m
    np.subtract(cd, m3, out=cd)
    np.maximum(cd, 0, out=cd)
    return m, np.sqrt(cd, out=cd)


def _thresholds(m, cd) -> tuple[float, float]:
    return max(0.07, 4.0 * _noise(m)), max(0.06, 4.0 * _noise(cd))


def _belt_borders(labels, grad, n: int):
    """Per region (labels 2..n-1 of `labels`, where the belt is 1 and no label is below 1), the
    length of its border with the belt (4-neighbour pixel pairs) and that border's mean sharpness
    (gradient, the larger of the two pixels across it); 0 and 0 for a region not touching the
    belt."""
    import numpy as np

    parts, gvals = [], []
    for a, b, g1, g2 in (
        (labels[:, :-1], labels[:, 1:], grad[:, :-1], grad[:, 1:]),
        (labels[:-1], labels[1:], grad[:-1], grad[1:]),
    ):
        diff = a != b
        a, b = a[diff], b[diff]
        belt = np.minimum(a, b) == 1
        parts.append(np.maximum(a, b)[belt])
        gvals.append(np.maximum(g1[diff], g2[diff])[belt])
    regions = np.concatenate(parts)
    length = np.bincount(regions, minlength=n).astype(np.float64)
    sharp = np.bincount(regions, weights=np.concatenate(gvals), minlength=n) / np.maximum(length, 1)
    return length, sharp


def _fill_holes(fg, *, max_hole: float, min_hole: float = 0):
    """`fg` with its holes (background not connected to the image border) of `min_hole` to
    `max_hole` pixels filled."""
    import numpy as np

    bg = (~fg).astype(np.uint8)
    n, labels, area = _components(bg, 4)
    if n <= 2:
        return fg
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = np.zeros(n, bool)
    fill[1:] = (area[1:] <= max_hole) & (area[1:] >= min_hole)
    fill[border] = False
    return fg | fill[labels]
