"""Image arrays and small array helpers shared by the stages: the working copy, log intensity,
masked blurs, noise estimates, connected components, disjoint sets and convex-hull gaps.
"""

from __future__ import annotations

import functools
import math

from PIL import Image

from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams


class _DisjointSet:
    """Union-find over 0..n-1 (path halving): which regions have been merged into which."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def attach(self, child_root: int, root: int) -> None:
        """Merge the set rooted at `child_root` into the one rooted at `root`."""
        self.parent[child_root] = root

    def union(self, a: int, b: int) -> None:
        """Merge the sets of `a` and `b`; the smaller root id stays the root."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.attach(max(ra, rb), min(ra, rb))

    def roots(self) -> list[int]:
        return [self.find(a) for a in range(len(self.parent))]


def _mat(rows):
    import numpy as np

    return np.array(rows, np.float32)


def _draft_size(size: tuple[int, int], work_side: int) -> tuple[int, int]:
    w, h = size
    f = max(1.0, max(w, h) / (2 * work_side))
    return int(w / f), int(h / f)


def _reference_like(reference: Image.Image, shape: tuple[int, int], side: int):
    """An empty-scene reference as a working array of `shape` (rows, columns): resampled like a
    frame to `side`, then resized when its aspect differs from the frame's."""
    import cv2

    ref = _work_array(reference, side)
    if ref.shape[:2] != shape:
        ref = cv2.resize(ref, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return ref


def _work_array(image: Image.Image, work_side: int):
    import cv2
    import numpy as np

    arr = np.asarray(image)
    h, w = arr.shape[:2]
    f = work_side / max(h, w)
    while f <= 0.5:  # halve first (2x2 means, OpenCV's fast path), then the rest
        h, w = max(1, h // 2), max(1, w // 2)  # a 1-pixel side stays 1 (a 1x20000 strip)
        arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
        f = work_side / max(h, w)
    if f < 1:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        # (by a non-integer factor OpenCV resamples float32 ~1.5x as fast as uint8, same values)
        arr = np.rint(cv2.resize(arr.astype(np.float32), size, interpolation=cv2.INTER_AREA)).astype(np.uint8)
    return np.ascontiguousarray(arr)


@functools.cache
def _log_tables(*, params: OfflineParams = P):
    """log(v + log_offset) for the 256 values of a uint8 pixel (float32), and the same scaled to 0..255
    for the watershed (uint8): made once, computed by the very operations that would otherwise
    run on every pixel (so the values are the same), and looked up with cv2.LUT, which is
    several times faster than the logarithm."""
    import numpy as np

    k = params.log_offset
    log = np.log(np.arange(256, dtype=np.float32) + k)
    scale = 255 / math.log((255 + k) / k)  # log image -> 0..255 for the watershed
    return {"log": log, "image8": np.clip((log - math.log(k)) * scale, 0, 255).astype(np.uint8)}


def _log(arr, *, params: OfflineParams = P):
    import cv2
    import numpy as np

    if arr.dtype == np.uint8:
        return cv2.LUT(arr, _log_tables(params=params)["log"])
    return np.log(arr.astype(np.float32) + params.log_offset)


def _masked_blur(values, weights, sigma: float):
    """Normalised convolution: Gaussian average of `values` over the pixels where `weights` > 0."""
    import cv2
    import numpy as np

    small = 4
    h, w = weights.shape
    size = (max(2, w // small), max(2, h // small))
    weights = weights.astype(np.float32, copy=False)
    wv = cv2.resize(weights, size, interpolation=cv2.INTER_AREA)
    if values.ndim == 3:
        # (a channel-replicated copy: NumPy broadcasting over 3 channels is several times slower)
        vv = cv2.resize(values * cv2.cvtColor(weights, cv2.COLOR_GRAY2BGR), size, interpolation=cv2.INTER_AREA)
        num = cv2.GaussianBlur(vv, (0, 0), sigma / small)
        den = cv2.GaussianBlur(wv, (0, 0), sigma / small)[..., None]
    else:
        vv = cv2.resize(values * weights, size, interpolation=cv2.INTER_AREA)
        num = cv2.GaussianBlur(vv, (0, 0), sigma / small)
        den = cv2.GaussianBlur(wv, (0, 0), sigma / small)
    out = num / np.maximum(den, 1e-3)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def _median(values):
    """np.median of a float array without NaNs, the same value (the mean of the two middle
    values in the array's own precision) without np.median's overhead: it runs ~17 times per
    image, on arrays of a few thousand pixels, where the overhead is most of its cost."""
    import numpy as np

    flat = values.ravel()
    half = flat.size // 2
    if flat.size % 2:
        return np.partition(flat, half)[half]
    part = np.partition(flat, (half - 1, half))
    return (part[half - 1] + part[half]) / 2


def _noise(values) -> float:
    import numpy as np

    sample = values[::4, ::4]
    med = _median(sample)
    return float(1.4826 * _median(np.abs(sample - med)))


def _components(mask, connectivity: int):
    """Connected components of a 0/1 uint8 mask: count (background included), labels and each
    one's pixel count. (OpenCV's own statistics take several times as long as the labelling.)"""
    import cv2
    import numpy as np

    n, labels = cv2.connectedComponents(mask, connectivity=connectivity)
    return n, labels, np.bincount(labels.ravel(), minlength=n)


def _nonzero(mask):
    """np.nonzero of a 2-D boolean mask: the same row and column indices in the same (raster)
    order, by boolean indexing of the index grids, several times faster than np.nonzero."""
    import numpy as np

    h, w = mask.shape
    return np.broadcast_to(np.arange(h)[:, None], (h, w))[mask], np.broadcast_to(np.arange(w), (h, w))[mask]


def _label_boxes(labels, k: int):
    """Bounding boxes (x0, y0, x1, y1, exclusive) of the labels 1..k-1 of `labels`, a k x 4 array
    (zeros for 0 and for labels not present), and the labelled pixels (ys, xs and their labels,
    in raster order). Taken from the rows and columns each label occupies (no sort by label)."""
    import numpy as np

    h, w = labels.shape
    labelled = labels > 0
    ys, xs = _nonzero(labelled)
    own = labels[labelled]
    in_row = np.zeros((k, h), bool)
    in_row[own, ys] = True
    in_col = np.zeros((k, w), bool)
    in_col[own, xs] = True
    box = np.stack(
        [
            in_col.argmax(axis=1),
            in_row.argmax(axis=1),
            w - in_col[:, ::-1].argmax(axis=1),
            h - in_row[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.int64)
    box[~in_row.any(axis=1)] = 0
    return box, ys, xs, own


def _touching(labels, k: int, keep):
    """The pairs of labels (below `k`, both with `keep[label]` true) that touch as 4-neighbours,
    as sorted codes smaller * k + larger, and each pair's border length in neighbour pairs."""
    import numpy as np

    codes = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        diff = a != b
        la, lb = a[diff], b[diff]
        both = keep[la] & keep[lb]
        la, lb = la[both], lb[both]
        codes.append(np.minimum(la, lb).astype(np.int64) * k + np.maximum(la, lb))
    return np.unique(np.concatenate(codes), return_counts=True)


def _cheapest_pair(pairs, groups, costs: dict, cost, *, rank=lambda entry: entry) -> tuple[int, int] | None:
    """The pair of groups (roots, smaller first) of two pieces in `pairs` that are not yet one group
    and whose cost ranks lowest, or None. `cost(ra, rb)` gives a pair's entry (None: never join),
    kept in `costs` until the caller drops it; `rank(entry)` is what is compared (the first
    cheapest wins a tie)."""
    best: tuple[int, int] | None = None
    best_rank = math.inf
    for a, b in pairs:
        ra, rb = groups.find(a), groups.find(b)
        if ra == rb:
            continue
        key = (min(ra, rb), max(ra, rb))
        if key not in costs:
            costs[key] = cost(*key)
        if costs[key] is not None and rank(costs[key]) < best_rank:
            best, best_rank = key, rank(costs[key])
    return best


def _hull_gap(piece) -> tuple[float, float]:
    """Pixels of a mask and the area its convex hull adds to it (0 for a convex shape)."""
    import cv2
    import numpy as np

    area = float(np.count_nonzero(piece))
    contours, _ = cv2.findContours(piece.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return area, _contours_hull_gap(contours, area)


def _contours_hull_gap(contours, area: float) -> float:
    """The area the convex hull of a mask's outer `contours` adds to its `area` pixels."""
    import cv2
    import numpy as np

    if not contours:
        return 0.0
    hull = cv2.convexHull(np.concatenate(contours))
    # a pixel mask covers its contour polygon plus about half a pixel along the outline
    return max(0.0, cv2.contourArea(hull) + 0.5 * cv2.arcLength(hull, True) - area)


def _border(sub):
    import cv2
    import numpy as np

    m8 = sub.astype(np.uint8)
    return (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0
