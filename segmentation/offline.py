"""A weight-free detector for items on a conveyor belt (NumPy + OpenCV, no model, no network).

Class-agnostic: it finds and segments *items* (anything on the belt that is not belt), it does
not know what they are, so every detection is labelled "item" and described by measured facts
(colour, size as a share of the belt, elongation). It is the local default when Gemini has no
credentials, the empty-belt gate before a Gemini call, and the fallback when Gemini keeps failing.

How it works, on a copy whose longest side is `work_side` (448) pixels:

1. **Background model.** With a reference photo of the empty scene from the same camera, the
   reference, corrected for the change of light (a per-channel gain plus a smooth gain field
   fitted on the pixels that still look like background). Without one, the belt is modelled from
   the image itself, in log intensity, as row profile + column profile + smooth residual (the
   profiles are the commonest level of each line; lines found mostly foreground against them,
   covered by items or given an item's level, are interpolated from their neighbours, except
   between two clearly different levels such as a rail and the belt). A belt is
   constant along its running direction and across it up to its seams, so the row and column
   profiles take in the rails, ribs, seams, lane lines and most of the uneven light (a vignette or
   a gradient is separable); the residual takes in spots. The belt's running direction is found
   first (the profile across the belt explains more of the image), and in the profiles a pixel
   counts by how close its chroma is to the belt's (the commonest chroma), so a crowded belt
   whose lines are mostly covered by coloured items still gets the belt's level.
2. **Evidence.** Per pixel, the log-brightness ratio to the model and the chroma difference
   (the colour change after removing brightness), both against thresholds scaled to the measured
   noise; and the colour gradient.
3. **Regions.** Marker-controlled watershed on the log image: one marker for the belt (flat pixels
   that match the model), one per flat patch of foreground. Flooding stops at sharp edges.
4. **Shadows and paint.** A region that is only darker than the belt, with no colour of its
   own, is a shadow or a dark item. A shadow's border with the belt is soft (penumbra); a dark
   item's is a sharp edge. Regions with a soft belt border go back to the belt, unless they are
   deeper than SHADOW_MAX_DEPTH noise thresholds (a black item on a dark belt has a small step,
   so a small gradient, at its edge; a deep shadow lies against the item that casts it). Thin
   strokes (painted words and arrows, seams) are too thin to hold a marker and are flooded by
   the belt.
5. **Instances.** The item mask (holes filled, thin bridges cut) is split where items touch or
   overlap: one marker per bulge of its distance transform, flooded by colour; two bulges are
   joined again when no neck separates them and their commonest colours agree. The pieces are
   then cut along colour: the blob's pixels are clustered (k-means in log chroma and damped log
   brightness, close centres joined) and each piece falls into its connected colour regions, so
   two differently painted items that touch or lie on each other without a neck come apart.
   The pieces are then joined into items (joins of one paint first, each kind cheapest first)
   by convexity (an item is about convex; two items that touch or overlap leave a concavity
   where they meet): pieces smaller than an item join the neighbour they share most border
   with; neighbours of the same colour (chroma, brightness damped: shading and highlights)
   join when the join adds little concavity;
   a patch of another colour (stripes, straps, a logo, a highlight) joins only when, in addition,
   it borders the belt along a minority of its outline (the item's outline encloses it), which an
   item lying on another does not, and other pieces only of its own or the item's paint (an
   item half hidden between two others borders both); the item keeps the colour of its paint,
   not of its patches, so the parts of an item cut by a strap join again across it. Before the
   joins, pieces are also cut along closed sharp edges inside the blob (a same-coloured item
   lying on another shows its outline across the lower one).
   Last, parts of one paint that do not touch (cut apart by a strap or band as dark as the belt,
   by a patch of another colour, or by another item lying across) are joined when the convex
   hull of their union holds no belt but thin strips (two separate items leave a wedge of belt);
   pieces lying inside that hull are patches of the item and join it too.
   Then an item that is still clearly concave is cut along the straight line between two deep
   notches of its outline when both pieces are about convex and of one paint: two items of one
   colour that touch or lie on each other without a neck leave a notch on each side where their
   outlines cross (one notch must open onto the belt; a notch filled by another item is that
   item lying over this one).
   Last, two touching parts of one paint are joined when the convex hull of their union adds
   almost no belt beyond the parts' own hulls: what it adds is covered by the parts and by other
   items. The parts of one item cut apart by another lying across or into it (the occluder fills
   the concavity) pass; two items of one paint side by side leave a wedge of belt open where
   their outlines meet, and do not.
6. **Confidence.** A logistic function of contrast to the belt, edge sharpness, size,
   thickness, solidity and the share of the outline that borders the belt (the typical false
   positive is a fragment of a split item or two items merged), calibrated on the tuning split.
7. **Masks.** Scaled up from the working resolution after a slight blur, cut above half level
   (the working-resolution mask takes in the item's soft edge and contact shadow).
8. **Colour.** The item's own pixels (edges eroded, belt-like pixels left out), white-balanced
   against the belt (taken as neutral) and corrected for the local light, named pixel by pixel
   with `segmentation.colors` and counted.

The empty-belt gate (`segmentation.gate`) compares a frame with the camera's empty-scene
reference using steps 1 and 2 and the helpers here; `OfflineDetector.gate` hands it out.

The scene check (`scene_refusal`) makes `detect` refuse a frame it cannot analyse
(`UnsupportedSceneError`, error_type `unsupported_scene`) instead of returning guesses: when the
belt model (or the empty-scene reference) fits no quarter of the image, or when too many candidate
regions are left below 0.5 confidence (clutter). Both measures come from the analysis itself.

NumPy and OpenCV are imported on first use, so importing this module is cheap.
"""

from __future__ import annotations

import functools
import io
import math
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from segmentation.detections import Box, Detection, DetectionResult, Usage
from segmentation.errors import UnsupportedSceneError
from segmentation.images import ModelInput, to_rgb

MODEL = "offline-belt-v1"
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


@dataclass(frozen=True)
class SceneCheck:
    """What the scene check measured on one frame (see `scene_refusal`)."""

    misfit: float  # the best-fitting quarter of the image is at most this far from the belt model (log units)
    unsure: int  # candidate regions below 0.5 confidence
    reference: bool  # judged against an empty-scene reference (the difference image)


@dataclass
class _Analysis:
    shape: tuple[int, int]
    instances: list[_Instance]
    belt_area: int
    scene: SceneCheck


class OfflineDetector:
    """Finds items on a belt photo; see the module docstring.

    `background` is an optional photo of the empty scene from the same camera. Tunables:
    `work_side` (analysis resolution), `min_area` (smallest item, as a fraction of the image).
    """

    name = "offline"
    model = MODEL

    def __init__(
        self,
        *,
        background: Image.Image | None = None,
        work_side: int = 448,
        min_area: float = 0.0015,
        max_items: int = 50,
    ):
        self.background = to_rgb(background) if background is not None else None
        self.work_side = work_side
        self.min_area = min_area
        self.max_items = max_items
        self._background_cache: dict[tuple[int, int], Any] = {}

    # --- public API ------------------------------------------------------------------------

    def detect(self, model_input: ModelInput, image_size: tuple[int, int], *, deadline: float) -> DetectionResult:
        """Detections for the model input (decoded here), in pixels of the original `image_size`.
        Raises `UnsupportedSceneError` for a frame that is not a belt scene it can analyse
        (`scene_refusal`), rather than returning guesses."""
        started = time.perf_counter()
        image = Image.open(io.BytesIO(model_input.data))
        image.draft("RGB", _draft_size(image.size, self.work_side))  # JPEG: decode at reduced size
        image = to_rgb(image.convert("RGB") if image.mode != "RGB" else image)
        analysis = self._analyze(image)
        why = scene_refusal(analysis.scene)
        if why:
            hint = ("is the camera's empty-scene reference still its view?" if analysis.scene.reference else
                    "an empty-scene photo from the same camera at BACKGROUNDS_PREFIX<camera>.jpg "
                    "(default backgrounds/) helps")
            raise UnsupportedSceneError(
                f"the offline detector cannot analyse this image: {why}. It is made for plain conveyor belts "
                f"and baggage carousels seen by a fixed camera; {hint}")
        detections = [d for d, _ in self._detections(analysis, image_size)]
        return DetectionResult(
            detections=detections,
            detector=self.name,
            model=self.model,
            usage=Usage(),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def close(self) -> None:
        """Nothing to release (the `Detector` protocol's close)."""

    def detect_image(self, image: Image.Image) -> list[Detection]:
        """Detections for a PIL image, in its own pixel coordinates, most confident first."""
        return [d for d, _ in self._detect(to_rgb(image), image.size)]

    def detect_scored(self, image: Image.Image) -> list[tuple[Detection, float]]:
        """`detect_image` with each detection's confidence (0-1), for evaluation. Neither refuses
        a scene (only `detect` does), so the evaluation scores every frame."""
        return self._detect(to_rgb(image), image.size)

    @functools.cached_property
    def gate(self):
        """The empty-belt gate against this camera's reference (`segmentation.gate`), or None
        without a reference: then nothing is ever called empty."""
        from segmentation.gate import EmptySceneGate

        return EmptySceneGate(self.background) if self.background is not None else None

    def belt_is_empty(self, image: Image.Image) -> bool:
        """The gate's answer for `image`; always False without a reference."""
        return self.gate is not None and self.gate.is_empty(image)

    # --- pipeline --------------------------------------------------------------------------

    def _detect(self, image: Image.Image, out_size: tuple[int, int]) -> list[tuple[Detection, float]]:
        return self._detections(self._analyze(image), out_size)

    def _detections(self, analysis: _Analysis, out_size: tuple[int, int]) -> list[tuple[Detection, float]]:
        height, width = analysis.shape
        sx, sy = out_size[0] / width, out_size[1] / height
        results = []
        for inst in analysis.instances[: self.max_items]:
            detection = _to_detection(inst, sx, sy, out_size)
            if detection is not None:
                results.append((detection, inst.score))
        return results

    def _analyze(self, image: Image.Image) -> _Analysis:
        work = _work_array(image, self.work_side)
        return _analyze(work, self._reference(work), min_area=self.min_area)

    def _reference(self, work):
        """The background reference at the size of `work`, resampled like the image (cached per
        size), or None."""
        if self.background is None:
            return None
        key = (work.shape[1], work.shape[0])
        ref = self._background_cache.get(key)
        if ref is None:
            ref = self._background_cache[key] = _reference_like(self.background, work.shape[:2], max(key))
        return ref


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


# ------------------------------------------------------------------------------------------
# The analysis itself (module-level functions on NumPy arrays).

# Tuned on the generator's "tuning" split (never on "heldout").
BELT_SAMPLES_X = 100  # samples per row / column the belt's profiles are taken from
BELT_SAMPLES_Y = 72
OTHER_COLOUR_MAX_CONCAVITY = 1.0  # pieces of different colours join only if their union is this convex
PATCH_MAX_OUTLINE = 0.35  # ... and only if the smaller borders the belt along at most this share of its outline
PATCH_MAX_FOREIGN = 0.15  # ... and pieces of a third paint along at most this share of it
MASK_SMOOTH = 0.8  # the mask is smoothed (working pixels) and cut at MASK_LEVEL when scaled up;
MASK_LEVEL = 0.75  # above 0.5 it sheds the item's soft edge and contact shadow (masks ran ~6 % large)
SHADOW_MAX_DEPTH = 3.0  # noise thresholds: a colourless region darker than this is an item, not a shadow
_K = 8.0  # offset of the log intensity: keeps noise in dark pixels from exploding
_LOG_SCALE = 255 / math.log((255 + _K) / _K)  # log image -> 0..255 for the watershed


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
def _log_tables():
    """log(v + _K) for the 256 values of a uint8 pixel (float32), and the same scaled to 0..255
    for the watershed (uint8): made once, computed by the very operations that would otherwise
    run on every pixel (so the values are the same), and looked up with cv2.LUT, which is
    several times faster than the logarithm."""
    import numpy as np

    log = np.log(np.arange(256, dtype=np.float32) + _K)
    return {"log": log, "image8": np.clip((log - math.log(_K)) * _LOG_SCALE, 0, 255).astype(np.uint8)}


def _log(arr):
    import cv2
    import numpy as np

    if arr.dtype == np.uint8:
        return cv2.LUT(arr, _log_tables()["log"])
    return np.log(arr.astype(np.float32) + _K)


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


def _evidence(lg, model):
    """Log-brightness ratio `m` and chroma difference `cd` of the image against the model."""
    import numpy as np

    import cv2

    d = lg - model
    m = cv2.transform(d, _mat([[1 / 3, 1 / 3, 1 / 3]]))
    cd = cv2.transform(np.multiply(d, d, out=d), _mat([[1, 1, 1]]))
    # sqrt(max(sq - 3 m^2, 0)), in place (the same operations in the same order)
    m3 = 3 * m
    m3 *= m
    np.subtract(cd, m3, out=cd)
    np.maximum(cd, 0, out=cd)
    return m, np.sqrt(cd, out=cd)


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


def _thresholds(m, cd) -> tuple[float, float]:
    return max(0.07, 4.0 * _noise(m)), max(0.06, 4.0 * _noise(cd))


def _components(mask, connectivity: int):
    """Connected components of a 0/1 uint8 mask: count (background included), labels and each
    one's pixel count. (OpenCV's own statistics take several times as long as the labelling.)"""
    import cv2
    import numpy as np

    n, labels = cv2.connectedComponents(mask, connectivity=connectivity)
    return n, labels, np.bincount(labels.ravel(), minlength=n)


def _modes(x, axis: int, bins: int = 96, line_index=None, lines: int | None = None, weights=None):
    """Per row (axis=1) or column (axis=0) of x (H x W x 3), the most frequent value of each
    channel: the belt is the commonest single level of a line across it even when items cover
    more of the line than belt does (they spread over many levels, the belt over a few)."""
    import numpy as np

    if line_index is None:  # one line per row (axis=1) or column (axis=0) of x
        height, width, channels = x.shape
        if axis == 0:
            # (pixels in x's own order, not transposed: each column's pixels still come top to
            # bottom, so every bin adds up the same values in the same order, without a copy)
            lines, line_index = width, np.tile(np.arange(width), height)
        else:
            lines, line_index = height, np.repeat(np.arange(height), width)
    else:  # x is 1 x N x 3, grouped by line_index (labels)
        channels = x.shape[2]
    wt = None
    if weights is not None:
        wt = weights.ravel().astype(np.float64)
    # each line's histogram has an empty bin at either end, so the three-bin windows are sums of
    # shifted views (the same additions, in the same order, as with the ends handled apart), and
    # the windows of the sums are only added up at the chosen bin
    slots = bins + 2
    base = line_index * slots + 1
    rows = np.arange(lines)
    out = np.empty((lines, channels), np.float32)
    for c in range(channels):
        v = x[..., c].ravel()
        lo, hi = float(v.min()), float(v.max())
        if hi - lo < 1e-6:
            out[:, c] = lo
            continue
        codes = base + ((v - lo) * ((bins - 1) / (hi - lo))).astype(np.int32)
        counts = np.bincount(codes, weights=wt, minlength=lines * slots).reshape(lines, slots).astype(np.float32)
        sums = np.bincount(codes, weights=v if wt is None else v * wt, minlength=lines * slots).reshape(lines, slots)
        c3 = counts[:, 1:-1] + counts[:, :-2]
        c3 += counts[:, 2:]
        best = np.argmax(c3, axis=1)
        s3 = sums[rows, best + 1] + sums[rows, best] + sums[rows, best + 2]
        out[:, c] = s3 / np.maximum(c3[rows, best], 1e-9)
    return out[:, None, :] if axis == 1 else out[None, :, :]


def _runs_vertically(lg) -> bool:
    """Whether the belt runs along y: a belt is constant along its running direction, so the
    profile across it (modes per column for a vertical belt) explains more of the image."""
    import numpy as np

    h, w = lg.shape[:2]
    sx, sy = max(1, w // BELT_SAMPLES_X), max(1, h // BELT_SAMPLES_Y)
    sample = lg[::sy, ::sx]
    along_x = np.abs(sample - _modes(sample, axis=1))  # residual of a per-row profile
    along_y = np.abs(sample - _modes(sample, axis=0))  # residual of a per-column profile
    # the mean, not the median: the rails are a minority of the pixels, but a profile that
    # misses them leaves large residuals there
    return float(along_y.mean()) < float(along_x.mean())


def _belt_model(lg):
    """Profile across the belt + profile along it (modes) + smooth residual. A belt running
    along y is modelled transposed."""
    import numpy as np

    if _runs_vertically(lg):
        model, fg = _belt_model_rows(np.ascontiguousarray(lg.transpose(1, 0, 2)))
        return np.ascontiguousarray(model.transpose(1, 0, 2)), np.ascontiguousarray(fg.T)
    return _belt_model_rows(lg)


def _outer_sum(rows, cols):
    """rows (H x 1 x 3) + cols (1 x W x 3) as an H x W x 3 image (OpenCV's replication is several
    times faster than NumPy broadcasting over a last axis of 3)."""
    import cv2

    size = (cols.shape[1], rows.shape[0])
    out = cv2.resize(rows, size, interpolation=cv2.INTER_NEAREST)
    out += cv2.resize(cols, size, interpolation=cv2.INTER_NEAREST)
    return out


def _foreground(lg, model):
    """Pixels that differ from the model by more than the noise thresholds, dilated."""
    import cv2
    import numpy as np

    m, cd = _evidence(lg, model)
    tm, tc = _thresholds(m, cd)
    return cv2.dilate(((np.abs(m) > tm) | (cd > tc)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def _belt_model_rows(lg):
    """Row profile + column profile (modes) + smooth residual, for a belt running along x."""
    import numpy as np

    h, w = lg.shape[:2]
    sx, sy = max(1, w // BELT_SAMPLES_X), max(1, h // BELT_SAMPLES_Y)
    x_rows, x_cols = lg[:, ::sx], lg[::sy]  # the samples the profiles are taken from
    # pixels of the belt's own chroma count fully in the profiles, others (items) little, so a
    # line mostly covered by coloured items still gets the belt's level
    chroma = _belt_chroma(x_cols)
    w_rows, w_cols = _belt_chroma_weights(x_rows, chroma), _belt_chroma_weights(x_cols, chroma)
    rows = _modes(x_rows, axis=1, weights=w_rows)
    cols = _modes(x_cols - rows[::sy], axis=0, weights=w_cols)
    profiles = _outer_sum(rows, cols)
    fg = _foreground(lg, profiles)
    # lines mostly covered by items, or whose commonest level is an item's (a white parcel is
    # flatter than the belt's texture): interpolated from the lines around them
    bad_rows, bad_cols = fg[:, ::sx].mean(axis=1) > 0.45, fg[::sy].mean(axis=0) > 0.45
    if bad_rows.any() or bad_cols.any():
        rows = _interpolate_unreliable(rows, bad_rows, axis=0)
        cols = _interpolate_unreliable(cols, bad_cols, axis=1)
        profiles = _outer_sum(rows, cols)
        fg = _foreground(lg, profiles)
    model = profiles + _masked_blur(lg - profiles, (~fg).astype(np.float32), sigma=max(h, w) / 10)
    return model, fg


BELT_CHROMA_SIGMA = 0.12  # log-chroma distance at which a pixel counts ~1/3 in the belt profiles


def _chroma(x):
    """Log chroma (R - G, B - G of the log image) of an H x W x 3 array, H x W x 2."""
    import numpy as np

    return np.stack([x[..., 0] - x[..., 1], x[..., 2] - x[..., 1]], axis=-1)


def _belt_chroma(x):
    """The belt's chroma: the commonest chroma of x (log image)."""
    return _modes(_chroma(x).reshape(1, -1, 2), axis=1).reshape(2)


def _belt_chroma_weights(x, mode):
    """Per pixel of x (log image), 1 for the belt's chroma `mode` falling towards 0.05 away from it."""
    import numpy as np

    green = x[..., 1]
    dr = x[..., 0] - green - np.float32(mode[0])
    db = x[..., 2] - green - np.float32(mode[1])
    return np.exp((dr * dr + db * db) * np.float32(-1 / BELT_CHROMA_SIGMA ** 2)) + np.float32(0.05)


INTERPOLATE_MAX_STEP = 0.3  # log brightness: a run of lines between levels this far apart stays as it is


def _interpolate_unreliable(profile, bad, axis: int):
    """`profile` (H x 1 x 3 or 1 x W x 3) with the entries flagged `bad` linearly interpolated
    from the good ones (unchanged when too few are good). A run of bad lines between two good
    lines of clearly different levels (a rail and the belt) stays as it is: the level between
    them is unknown."""
    import numpy as np

    if not bad.any() or bad.mean() > 0.7:
        return profile
    flat = profile.reshape(-1, 3).copy()
    idx = np.arange(len(flat))
    good = ~bad
    fill = bad.copy()
    starts = np.flatnonzero(bad & ~np.concatenate([[False], bad[:-1]]))
    ends = np.flatnonzero(bad & ~np.concatenate([bad[1:], [False]])) + 1
    for a, b in zip(starts, ends):
        if a > 0 and b < len(flat) and np.abs(flat[a - 1] - flat[b]).mean() > INTERPOLATE_MAX_STEP:
            fill[a:b] = False
    for c in range(3):
        flat[fill, c] = np.interp(idx[fill], idx[good], flat[good, c])
    return flat.reshape(profile.shape)


def _reference_model(lg, lr):
    """The reference image's log `lr` (filtered like the image's, `lg`), corrected for the change
    of light between the two photos."""
    import cv2
    import numpy as np

    d = lg - lr
    h, w = lg.shape[:2]
    offset = np.median(d[::2, ::2].reshape(-1, 3), axis=0)
    model = lr + offset
    for _ in range(2):
        m, cd = _evidence(lg, model)
        tm, tc = _thresholds(m, cd)
        fg = (np.abs(m) > tm) | (cd > tc)
        fg = cv2.dilate(fg.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        model = lr + _masked_blur(d, (~fg).astype(np.float32), sigma=max(h, w) / 8)
    return model


def _analyze(work, ref, *, min_area: float) -> _Analysis:
    import cv2
    import numpy as np

    h, w = work.shape[:2]
    blurred = cv2.GaussianBlur(work, (0, 0), 1.0)
    lg = _log(blurred)
    if ref is not None:
        model = _reference_model(lg, _log(cv2.GaussianBlur(ref, (0, 0), 1.0)))
    else:
        model = _belt_model(lg)[0]
    m, cd = _evidence(lg, model)
    tm, tc = _thresholds(m, cd)
    misfit = _quarter_misfit(m, cd)

    # gradient of the log image (max over channels)
    gx = cv2.Sobel(lg, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lg, cv2.CV_32F, 0, 1, ksize=3)
    g2 = np.multiply(gx, gx, out=gx)
    g2 += np.multiply(gy, gy, out=gy)
    # (the channels split by OpenCV: NumPy is slow on a last axis of 3)
    grad, g2_1, g2_2 = cv2.split(g2)
    np.maximum(grad, g2_1, out=grad)
    np.maximum(grad, g2_2, out=grad)
    grad = np.sqrt(grad, out=grad)
    grad /= 8  # per-pixel log step

    beltlike = (np.abs(m) < tm) & (cd < tc)
    notbelt = ~beltlike
    strong = (m > 2 * tm) | (m < -0.45) | (cd > 2 * tc)
    flat = grad < max(0.035, 2.5 * _noise(grad) + float(_median(grad[::3, ::3])))

    # markers: 1 = belt, 2.. = flat patches of foreground
    k3 = np.ones((3, 3), np.uint8)
    belt_marker = beltlike & flat
    belt_marker &= cv2.dilate(notbelt.astype(np.uint8), k3) == 0
    # strong markers: clearly not belt (colour, brighter, much darker), textured or not;
    # weak markers: flat patches that are only somewhat darker (a shadow or a dark item)
    strong_u8 = strong.astype(np.uint8)
    strong_core = cv2.erode(strong_u8, k3)
    weak_core = cv2.erode((notbelt & flat & (cv2.dilate(strong_u8, np.ones((5, 5), np.uint8)) == 0)).astype(np.uint8), k3)
    markers = np.zeros((h, w), np.int32)
    next_label = 2
    min_marker = max(6, int(0.00006 * h * w))
    for core in (strong_core, weak_core):
        n_core, core_labels, core_area = _components(core, 4)
        keep = np.zeros(n_core, bool)
        keep[1:] = core_area[1:] >= min_marker
        # a marker must be thick: at least a 5x5 block of the core (painted strokes are thinner)
        thick = cv2.erode(core, np.ones((5, 5), np.uint8))
        keep &= np.bincount(core_labels[thick > 0], minlength=n_core) > 0
        keep[0] = False
        remap = np.zeros(n_core, np.int32)
        remap[keep] = np.arange(next_label, next_label + keep.sum())
        next_label += int(keep.sum())
        core_markers = remap[core_labels]
        markers = np.where(core_markers > 0, core_markers, markers)
    markers[belt_marker] = 1

    image8 = cv2.LUT(blurred, _log_tables()["image8"])  # = clip((lg - log K) * _LOG_SCALE, 0, 255) as uint8
    labels = cv2.watershed(image8, markers)
    lab_f = labels.astype(np.float32)
    ridge = labels < 0
    lab_f[ridge] = 0
    labels = np.where(ridge, cv2.dilate(lab_f, k3), lab_f).astype(np.int32)
    labels[labels < 1] = 1
    n = int(labels.max()) + 1

    # region statistics (of the foreground regions only: the belt, label 1, is most pixels)
    in_region = labels > 1
    region = labels[in_region]
    area = np.bincount(region, minlength=n).astype(np.float64)
    strong_frac = np.bincount(region, weights=strong[in_region], minlength=n) / np.maximum(area, 1)
    m_mean = np.bincount(region, weights=m[in_region], minlength=n) / np.maximum(area, 1)
    cd_mean = np.bincount(region, weights=cd[in_region], minlength=n) / np.maximum(area, 1)

    length, sharp = _belt_borders(labels, grad, n)

    regions = _DisjointSet(n)
    union = regions.union

    # 1) shadows: regions darker than the belt and colourless whose border with the belt is soft
    # (plain Python floats in the loop: NumPy scalars are slow one at a time)
    area_l, length, sharp = area.tolist(), length.tolist(), sharp.tolist()
    strong_frac, m_mean, cd_mean = strong_frac.tolist(), m_mean.tolist(), cd_mean.tolist()
    for r in range(2, n):
        if area_l[r] == 0:
            continue
        ln, sh = length[r], sharp[r]
        shadowish = -SHADOW_MAX_DEPTH * tm < m_mean[r] < 0 and cd_mean[r] < 1.5 * tc and strong_frac[r] < 0.5
        if shadowish and ln > 0 and sh < 0.12:
            union(1, r)
        elif strong_frac[r] < 0.15 and abs(m_mean[r]) < 1.2 * tm and cd_mean[r] < 1.2 * tc:
            union(1, r)  # faint, belt-like: noise, wear, dirt

    groups = np.array(regions.roots(), np.int32)
    fg = groups[labels] != 1

    # 2) the items' outline: fill holes (belt-coloured parts of an item), cut thin bridges
    fg = _fill_holes(fg, max_hole=0.05 * h * w)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, k3)
    # 3) separate touching and overlapping items: one marker per bulge of the distance
    #    transform, flooded by colour, bulges joined again unless a neck separates them
    edge_level = EDGE_LEVEL
    inst = _split_touching(fg, image8, lg, grad, min_px=max(20, 0.3 * min_area * h * w), edge_level=edge_level)
    # 4) join the parts of an item that a strap, a seam-coloured band or another item cut apart
    inst = _join_across_gaps(inst, lg)
    # 5) cut items of one paint that touch without a neck at the notches where their outlines cross
    inst = _cut_at_defects(inst, lg, min_px=min_area * h * w)
    # 6) join touching parts of one paint whose union's hull adds no belt (an item cut by an occluder)
    inst = _join_occluded(inst, lg, min_px=min_area * h * w)

    # instances
    counts = np.bincount(inst.ravel())
    ids = np.flatnonzero(counts)
    counts = counts[ids]
    min_px = min_area * h * w
    belt_mask = inst == 0
    model_lum = cv2.transform(model, _mat([[1 / 3, 1 / 3, 1 / 3]]))
    belt_area = _belt_area(model_lum, h, w)
    neutral, light = _illumination(blurred, model_lum, belt_mask)
    instances = []
    boxes = _label_boxes(inst, int(ids[-1]) + 1)[0]
    for rid, cnt in zip(ids, counts):
        if rid == 0 or cnt < min_px:
            continue
        bx0, by0, bx1, by1 = boxes[rid].tolist()
        cy0, cy1 = max(0, by0 - 1), min(h, by1 + 1)
        cx0, cx1 = max(0, bx0 - 1), min(w, bx1 + 1)
        crop = cv2.morphologyEx((inst[cy0:cy1, cx0:cx1] == rid).astype(np.uint8), cv2.MORPH_OPEN, k3) > 0
        ys, xs = _nonzero(crop)
        if len(ys) < min_px:
            continue
        ys, xs = ys + cy0, xs + cx0
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        sub = crop[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        dist = cv2.distanceTransform(cv2.copyMakeBorder(sub.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0),
                                     cv2.DIST_L2, 3)
        if dist.max() < 3.0:  # a stroke, not an object
            continue
        contrast = float(np.abs(m[y0:y1, x0:x1][sub]).mean() + cd[y0:y1, x0:x1][sub].mean())
        edge = float(np.mean(grad[y0:y1, x0:x1][_border(sub)]))
        # share of the outline that borders the belt (a piece of a wrongly split item borders
        # its other pieces along much of its outline)
        py0, px0, py1, px1 = max(0, y0 - 1), max(0, x0 - 1), min(h, y1 + 1), min(w, x1 + 1)
        around = inst[py0:py1, px0:px1]
        own = np.zeros(around.shape, bool)
        own[y0 - py0:y1 - py0, x0 - px0:x1 - px0] = sub
        ring = (cv2.dilate(own.astype(np.uint8), k3) > 0) & ~own
        belt_frac = float(np.mean(around[ring] == 0)) if ring.any() else 1.0
        area_px, gap = _hull_gap(sub)
        solidity = area_px / (area_px + gap)
        features = (contrast / (tm + tc), edge, len(ys) / (h * w), float(dist.max()), belt_frac, solidity)
        score = max(0.0001, round(float(_calibrated_score(*features)), 4))
        colors = _colors(blurred[y0:y1, x0:x1], sub, beltlike[y0:y1, x0:x1], neutral, light[y0:y1, x0:x1])
        elong, angle = _shape(ys, xs)
        instances.append(_Instance(
            mask=sub, box=(x0, y0, x1, y1), score=score,
            color=colors[0][0] if colors else "gray", colors=colors,
            belt_share=len(ys) / max(belt_area, 1), elongation=elong, angle=angle,
            fill=len(ys) / float(sub.size), features=features,
        ))
    instances.sort(key=lambda i: -i.score)
    scene = SceneCheck(misfit=misfit, unsure=sum(1 for i in instances if i.score < 0.5), reference=ref is not None)
    return _Analysis(shape=(h, w), instances=instances, belt_area=belt_area, scene=scene)


# The scene check, chosen on the tuning split of tools/belt_scenes.py and on 9 of the 17 COCO photos
# with luggage (figures: python -m tools.eval_offline --scenes). A belt scene shows the belt over at
# least a quarter of the frame, where the belt model fits to within the noise: synthetic belt scenes,
# crowded ones included, <= 0.07 (median 0.013); everyday photos 0.025-0.71 (median 0.13).
SCENE_MISFIT_MAX = 0.08
# The same limit holds against an empty-scene reference: a real fixed camera whose textured belt has
# run on since its reference differs by up to 0.07 (a reference of another scene: 0.04 and more).
# More candidate regions below 0.5 confidence than this is clutter, not items on a belt: belt scenes of
# up to 8 items <= 9, everyday photos 8-32 (every region of theirs is below 0.5).
SCENE_MAX_UNSURE = 11


def _quarter_misfit(m, cd) -> float:
    """The 25th percentile of |log-brightness ratio| + chroma difference against the model, on
    every 4th pixel: how far the best-fitting quarter of the image is from the belt model."""
    import numpy as np

    values = (np.abs(m[::4, ::4]) + cd[::4, ::4]).ravel()
    if values.size == 0:
        return 0.0
    k = values.size // 4
    return float(np.partition(values, k)[k])


def scene_refusal(check: SceneCheck) -> str | None:
    """Why the frame is not a belt scene the offline detector can analyse, or None when it is.
    A pure function of the analysis' own measures (`SceneCheck`), so the check costs nothing more."""
    limit = SCENE_MISFIT_MAX
    if check.misfit > limit:
        if check.reference:
            return (f"three quarters of it differ from the camera's empty-scene reference by more than "
                    f"{check.misfit:.2f} (log brightness + chroma; the same scene: at most {limit}), so it shows "
                    "another scene or the camera moved")
        return (f"no belt model fits it: three quarters of it differ from the best one by more than "
                f"{check.misfit:.2f} (log brightness + chroma; a belt scene: at most {limit})")
    if check.unsure > SCENE_MAX_UNSURE:
        return (f"too much clutter: {check.unsure} candidate regions below 0.5 confidence (a belt scene: at "
                f"most {SCENE_MAX_UNSURE})")
    return None


def _belt_borders(labels, grad, n: int):
    """Per region (labels 2..n-1 of `labels`, where the belt is 1 and no label is below 1), the
    length of its border with the belt (4-neighbour pixel pairs) and that border's mean sharpness
    (gradient, the larger of the two pixels across it); 0 and 0 for a region not touching the
    belt."""
    import numpy as np

    regions, gvals = [], []
    for a, b, g1, g2 in ((labels[:, :-1], labels[:, 1:], grad[:, :-1], grad[:, 1:]),
                         (labels[:-1], labels[1:], grad[:-1], grad[1:])):
        diff = a != b
        a, b = a[diff], b[diff]
        belt = np.minimum(a, b) == 1
        regions.append(np.maximum(a, b)[belt])
        gvals.append(np.maximum(g1[diff], g2[diff])[belt])
    regions = np.concatenate(regions)
    length = np.bincount(regions, minlength=n).astype(np.float64)
    sharp = np.bincount(regions, weights=np.concatenate(gvals), minlength=n) / np.maximum(length, 1)
    return length, sharp


def _fill_holes(fg, *, max_hole: float, min_hole: float = 0):
    """`fg` with its holes (background not connected to the image border) of `min_hole` to
    `max_hole` pixels filled."""
    import cv2
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


def _split_touching(fg, image8, lg, grad, *, min_px: float, edge_level: float, neck: float = 0.72,
                    max_color_dist: float = 0.35, merge_gap: float = 0.15):
    """Instance labels (0 = background, 1.. = items) for the foreground mask `fg`.

    Two bulges of a blob without a neck between them join when their commonest colours differ
    by at most `max_color_dist` (L1, log units). It was 0.3; 0.35 keeps the bulges of one item
    whose shading or pattern shifts its commonest colour together (fewer fragments: mask AP50 up
    on four sets of 150 tuning scenes, by 0.0002-0.0125; the later colour split still separates
    clearly different paints)."""
    import cv2
    import numpy as np

    h, w = fg.shape
    # (the BBDT algorithm: the same labels as the default, its statistics several times faster)
    n, comp, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(fg, 8, cv2.CV_32S, cv2.CCL_BBDT)
    out = np.zeros((h, w), np.int32)
    next_id = 1
    for c in range(1, n):
        x, y, bw, bh, area = stats[c]
        if area < min_px:
            continue
        x0, y0, x1, y1 = max(0, x - 2), max(0, y - 2), min(w, x + bw + 2), min(h, y + bh + 2)
        mask = comp[y0:y1, x0:x1] == c
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        peak_level = cv2.dilate(dist, np.ones((7, 7), np.uint8))
        peaks = (dist >= peak_level - 1e-3) & (dist >= 3)
        npk, pk = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
        if npk <= 2:
            if area >= 2 * min_px:
                single = mask.astype(np.int32)
                single = _colour_refine(single, mask, lg[y0:y1, x0:x1], min_px=min_px)
                single = _edge_refine(single, mask, grad[y0:y1, x0:x1], min_px=min_px, level=edge_level)
                if single.max() > 1:
                    single = _merge_convex(single, lg[y0:y1, x0:x1], min_px=min_px, max_gap=merge_gap)
                next_id = _write_pieces(out[y0:y1, x0:x1], single, mask, next_id)
                continue
            out[y0:y1, x0:x1][mask] = next_id
            next_id += 1
            continue
        markers = pk.astype(np.int32) + 1  # peaks 2.., background 1
        markers[~peaks & mask] = 0
        markers[~mask] = 1
        ws = cv2.watershed(np.ascontiguousarray(image8[y0:y1, x0:x1]), markers)
        wf = ws.astype(np.float32)
        wf[ws < 0] = 0
        ws = np.where(ws < 0, cv2.dilate(wf, np.ones((3, 3), np.uint8)), wf).astype(np.int32)
        ws[~mask] = 1
        k = int(ws.max()) + 1
        # each piece's deepest point (a per-label maximum by a histogram of quarter pixels)
        levels = np.minimum(dist * 4, 1023).astype(np.int64).ravel()
        hist = np.bincount(ws.ravel().astype(np.int64) * 1024 + levels, minlength=k * 1024).reshape(k, 1024) > 0
        peak_value = (1023 - np.argmax(hist[:, ::-1], axis=1)) / 4.0
        # joins: mean distance along the border between two bulges vs the smaller bulge's peak
        bulges = _DisjointSet(k)

        pairs = []
        for a, b, d1, d2 in ((ws[:, :-1], ws[:, 1:], dist[:, :-1], dist[:, 1:]), (ws[:-1], ws[1:], dist[:-1], dist[1:])):
            diff = (a != b) & (a > 1) & (b > 1)
            lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
            pairs.append((lo.astype(np.int64) * k + hi, np.minimum(d1[diff], d2[diff])))
        codes = np.concatenate([p[0] for p in pairs])
        # each piece's commonest colour (a mode per channel: stripes and highlights do not count);
        # pieces of clearly different colours stay apart even without a neck between them
        color = _modes(lg[y0:y1, x0:x1].reshape(1, -1, 3), axis=1, bins=48, line_index=ws.ravel(), lines=k)
        color = color.reshape(k, 3)
        if len(codes):
            vals = np.concatenate([p[1] for p in pairs])
            uniq, inv = np.unique(codes, return_inverse=True)
            border_max = np.zeros(len(uniq))
            np.maximum.at(border_max, inv, vals)
            order = np.argsort(-border_max / np.maximum([min(peak_value[c // k], peak_value[c % k]) for c in uniq], 1e-3))
            for i in order:
                a, b = int(uniq[i] // k), int(uniq[i] % k)
                ra, rb = bulges.find(a), bulges.find(b)
                if ra == rb:
                    continue
                if border_max[i] >= neck * min(peak_value[ra], peak_value[rb]) and \
                        np.abs(color[ra] - color[rb]).sum() <= max_color_dist:
                    bulges.attach(rb, ra)
                    peak_value[ra] = max(peak_value[ra], peak_value[rb])
        roots = np.array(bulges.roots())
        merged = roots[ws]
        merged[~mask] = 0
        stray = mask & (merged == 1)  # flooded from outside the blob: give it to the nearest piece
        if stray.any() and (mask & ~stray).any():
            _, near = cv2.distanceTransformWithLabels((merged <= 1).astype(np.uint8), cv2.DIST_L2, 3,
                                                      labelType=cv2.DIST_LABEL_PIXEL)
            owner = np.zeros(int(near.max()) + 1, np.int32)
            seeds = merged > 1
            owner[near[seeds]] = merged[seeds]
            merged[stray] = owner[near[stray]]
        merged = _colour_refine(merged, mask, lg[y0:y1, x0:x1], min_px=min_px)
        merged = _edge_refine(merged, mask, grad[y0:y1, x0:x1], min_px=min_px, level=edge_level)
        merged = _merge_convex(merged, lg[y0:y1, x0:x1], min_px=min_px, max_gap=merge_gap)
        next_id = _write_pieces(out[y0:y1, x0:x1], merged, mask, next_id)
    return out


def _write_pieces(out, pieces, mask, next_id: int) -> int:
    """Write the pieces (labels 1.. inside `mask`, 0 outside it) into `out` as next_id, next_id +
    1, ... in the order of their labels; returns the next free id. (One lookup instead of a
    comparison of the whole crop per piece.)"""
    import numpy as np

    ids = np.flatnonzero(np.bincount(pieces[mask]))
    ids = ids[ids > 0]
    lut = np.zeros(int(pieces.max()) + 1, np.int32)
    lut[ids] = np.arange(next_id, next_id + len(ids))
    inside = pieces > 0
    out[inside] = lut[pieces[inside]]
    return next_id + len(ids)


# Colour split of a blob (see _colour_refine) and the colour test of _merge_convex.
COLOUR_K = 6  # k-means clusters of a blob's colours (before close centres are joined)
COLOUR_SAMPLES = 2000  # pixels the clusters are fitted on
COLOUR_LUM_WEIGHT = 0.25  # weight of log brightness against log chroma (shading, highlights)
COLOUR_MERGE = 0.5  # cluster centres closer than this (L1, log units) are one colour
MERGE_LUM_WEIGHT = 0.2  # _merge_convex: weight of the brightness part of a colour difference
MAX_COLOR_DIST = 0.5  # _merge_convex: pieces whose colours differ by at most this are one paint


def _paint_distance(dc) -> float:
    """Difference of two log colours (`dc`, one minus the other): chroma (L1) plus brightness
    damped by MERGE_LUM_WEIGHT (shading and highlights change brightness, not paint)."""
    d0, d1, d2 = dc.tolist()  # plain floats: this runs for every pair of pieces
    dl = (d0 + d1 + d2) / 3
    return abs(d0 - dl) + abs(d1 - dl) + abs(d2 - dl) + MERGE_LUM_WEIGHT * 3 * abs(dl)


@functools.cache
def _colour_features():
    """The 3 x 4 matrix from a log colour to _colour_refine's features (made once)."""
    import numpy as np

    return np.hstack([np.eye(3) - 1 / 3, np.full((3, 1), COLOUR_LUM_WEIGHT / 3)]).astype(np.float32)


def _colour_refine(labels, mask, lg, *, min_px: float):
    """Pieces (labels 1.. inside `mask`) cut further along colour: the blob's pixels are
    clustered by colour (k-means in log chroma + damped log brightness, centres closer than
    COLOUR_MERGE joined), the cluster map is cleaned (median) and each piece is cut into its
    connected colour regions; regions smaller than a quarter of `min_px` go to the nearest
    larger region. _merge_convex then joins what belongs to one item."""
    import cv2
    import numpy as np

    px = lg[mask]
    if len(px) < 50:
        return labels
    # features: log chroma (each channel minus the brightness) and damped brightness, as one
    # matrix product (NumPy broadcasting over 3 channels is slow)
    feat = px @ _colour_features()
    step = max(1, len(feat) // COLOUR_SAMPLES)
    sample = np.ascontiguousarray(feat[::step])
    k = min(COLOUR_K, len(sample) // 20)
    if k < 2:
        return labels
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1e-3)
    cv2.setRNGSeed(1)
    _, _, centres = cv2.kmeans(sample, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)
    # join close centres (union-find on L1 distance)
    group = list(range(k))
    for i in range(k):
        for j in range(i + 1, k):
            if np.abs(centres[i] - centres[j]).sum() < COLOUR_MERGE:
                gi, gj = group[i], group[j]
                group = [gi if g == gj else g for g in group]
    if len(set(group)) < 2:
        return labels
    # nearest centre: argmin of |c|^2 - 2 f.c (|f|^2 is the same for every centre)
    d = (centres * centres).sum(axis=1)[None, :] - 2 * (feat @ centres.T)
    cl = np.asarray(group)[np.argmin(d, axis=1)]
    cmap = np.zeros(mask.shape, np.uint8)
    cmap[mask] = cl.astype(np.uint8) + 1
    cmap = cv2.medianBlur(cmap, 5)
    cmap[~mask] = 0
    cmap[mask & (cmap == 0)] = 1
    combo = np.zeros(mask.shape, np.int32)
    combo[mask] = labels[mask] * 8 + cmap[mask]
    # connected regions of each (piece, colour) pair: one labelling of the pixels whose
    # 4-neighbours all carry the same code (the one-pixel seams between codes go to the
    # nearest region below, with the regions too small to stand alone)
    same = mask.copy()
    same[:, 1:] &= combo[:, 1:] == combo[:, :-1]
    same[:, :-1] &= combo[:, :-1] == combo[:, 1:]
    same[1:] &= combo[1:] == combo[:-1]
    same[:-1] &= combo[:-1] == combo[1:]
    n_c, cc, cc_area = _components(same.astype(np.uint8), 4)
    keep = cc_area >= 0.25 * min_px
    keep[0] = False
    remap = np.zeros(n_c, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    out = remap[cc]
    nxt = int(keep.sum()) + 1
    if nxt <= 2:
        return labels
    small = mask & (out == 0)
    if small.any():
        _, near = cv2.distanceTransformWithLabels((out == 0).astype(np.uint8), cv2.DIST_L2, 3,
                                                  labelType=cv2.DIST_LABEL_PIXEL)
        owner = np.zeros(int(near.max()) + 1, np.int32)
        seeds = out > 0
        owner[near[seeds]] = out[seeds]
        out[small] = owner[near[small]]
    return out


EDGE_LEVEL = 0.05  # _edge_refine: log step per pixel of an edge that may cut a piece


def _edge_refine(labels, mask, grad, *, min_px: float, level: float):
    """Pieces (labels 1.. inside `mask`) cut along closed sharp edges inside the blob: where a
    same-coloured item lies on another, the upper one's outline (and its contact shadow) crosses
    the lower one. Pieces an edge does not cut through stay whole; regions smaller than a quarter
    of `min_px` (and the edge pixels) go to the nearest larger region. _merge_convex joins again
    what an item's own lines (grooves, seams, tape) cut."""
    import cv2
    import numpy as np

    k3 = np.ones((3, 3), np.uint8)
    inner = cv2.erode(mask.astype(np.uint8), k3) > 0
    cut = mask & ~(inner & (grad > level))
    same = cut.copy()
    same[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    same[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    same[1:] &= labels[1:] == labels[:-1]
    same[:-1] &= labels[:-1] == labels[1:]
    n_c, cc, cc_area = _components(same.astype(np.uint8), 4)
    keep = cc_area >= 0.25 * min_px
    keep[0] = False
    n_keep = int(keep.sum())
    if n_keep <= np.count_nonzero(np.bincount(labels[mask])):  # (the number of labels in the blob)
        return labels  # nothing was cut
    remap = np.zeros(n_c, np.int32)
    remap[keep] = np.arange(1, n_keep + 1)
    out = remap[cc]
    rest = mask & (out == 0)
    if rest.any():
        _, near = cv2.distanceTransformWithLabels((out == 0).astype(np.uint8), cv2.DIST_L2, 3,
                                                  labelType=cv2.DIST_LABEL_PIXEL)
        owner = np.zeros(int(near.max()) + 1, np.int32)
        seeds = out > 0
        owner[near[seeds]] = out[seeds]
        out[rest] = owner[near[rest]]
    return out


GAP_REACH = 11  # _join_across_gaps: pieces up to this far apart (working pixels) may be one item
# (was 9: a wider strap or band, or an item lying across, left the parts of one item apart; 11 gained
# AP on three sets of 150 tuning scenes and AP50 on two; 13 joined separate items more often)
GAP_THIN = 4  # belt strips narrower than 2 * GAP_THIN + 1 pixels inside an item's hull: straps, seams
GAP_MAX_CONCAVITY = 0.15  # belt wider than that inside the union's hull, relative to the smaller part
PATCH_INSIDE = 0.7  # a piece with this share of its area inside the union's hull is a patch of it


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
    box = np.stack([in_col.argmax(axis=1), in_row.argmax(axis=1), w - in_col[:, ::-1].argmax(axis=1),
                    h - in_row[:, ::-1].argmax(axis=1)], axis=1).astype(np.int64)
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


def _join_across_gaps(inst, lg):
    """Instance labels with the parts of one item joined: parts of the same paint that do not
    touch (a strap or band painted like the belt, a patch of another colour, or another item lying
    across cut them apart) and whose union's convex hull is filled by them, by pieces inside the
    hull (patches: absorbed), by other items (occluders) and by thin strips of belt only. Two
    separate items of one colour leave a wide wedge of belt inside their hull."""
    import cv2
    import numpy as np

    k = int(inst.max()) + 1
    if k <= 2:
        return inst
    h, w = inst.shape
    area = np.bincount(inst.ravel(), minlength=k).astype(np.float64)
    box, ys, xs, own = _label_boxes(inst, k)  # x0, y0, x1, y1 (exclusive)
    adjacent = {divmod(int(c), k) for c in _touching(inst, k, np.arange(k) > 0)[0]}
    reach = np.ones((2 * GAP_REACH + 1, 2 * GAP_REACH + 1), np.uint8)
    near_pairs = set()
    for r in range(1, k):
        if area[r] == 0:
            continue
        x0, y0, x1, y1 = box[r]
        cx0, cy0 = max(0, x0 - GAP_REACH), max(0, y0 - GAP_REACH)
        cx1, cy1 = min(w, x1 + GAP_REACH), min(h, y1 + GAP_REACH)
        crop = inst[cy0:cy1, cx0:cx1]
        near = cv2.dilate((crop == r).astype(np.uint8), reach) > 0
        neighbours = np.flatnonzero(np.bincount(crop[near], minlength=k)[r + 1:]) + r + 1
        near_pairs.update((r, o) for o in neighbours.tolist() if (r, o) not in adjacent)
    if not near_pairs:
        return inst
    # each piece's paint: its commonest colour (stripes, straps and highlights do not count),
    # for the pieces near another only
    involved = np.zeros(k, bool)
    involved[list({r for pair in near_pairs for r in pair})] = True
    sel = involved[own]
    paint = _modes(lg[ys[sel], xs[sel]][None], axis=1, bins=48, line_index=own[sel], lines=k).reshape(k, 3)
    candidates = {(r, o) for r, o in near_pairs if _paint_distance(paint[r] - paint[o]) <= MAX_COLOR_DIST}
    if not candidates:
        return inst
    out = inst.copy()
    groups = _DisjointSet(k)
    thin = np.ones((2 * GAP_THIN + 1, 2 * GAP_THIN + 1), np.uint8)

    def hull_cost(ra: int, rb: int):
        """(cost, geometry) of joining groups ra and rb, or None when the convex hull of their
        union holds too much wide belt."""
        x0, y0 = min(box[ra, 0], box[rb, 0]), min(box[ra, 1], box[rb, 1])
        x1, y1 = max(box[ra, 2], box[rb, 2]), max(box[ra, 3], box[rb, 3])
        crop = out[y0:y1, x0:x1]
        ma, mb = crop == ra, crop == rb  # a group's pieces carry its root's label in `out`
        pts = np.column_stack(_nonzero(ma | mb)[::-1]).astype(np.int32)
        hull = np.zeros(crop.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
        hull = hull > 0
        belt_gap = hull & (crop == 0)
        wide = cv2.morphologyEx(belt_gap.astype(np.uint8), cv2.MORPH_OPEN, thin) > 0
        cost = float(np.count_nonzero(wide)) / max(min(area[ra], area[rb]), 1.0)
        return None if cost > GAP_MAX_CONCAVITY else (cost, (x0, y0, crop, ma, mb, hull, belt_gap & ~wide))

    def join(ra: int, rb: int, geometry) -> None:
        """Join group rb, the pieces inside the hull (patches) and the belt bridging the two
        (a strap, a band: thin gap components touching both) into group ra."""
        x0, y0, crop, ma, mb, hull, thin_gap = geometry
        inside = hull & ~ma & ~mb & (crop > 0)
        patches = [o for o in np.unique(crop[inside]).tolist()
                   if np.count_nonzero(crop[inside] == o) >= PATCH_INSIDE * area[o]]
        n_gap, gap_labels = cv2.connectedComponents(thin_gap.astype(np.uint8), connectivity=4)
        k3 = np.ones((3, 3), np.uint8)
        touch_a = np.unique(gap_labels[cv2.dilate(ma.astype(np.uint8), k3) > 0])
        touch_b = np.unique(gap_labels[cv2.dilate(mb.astype(np.uint8), k3) > 0])
        bridge = thin_gap & np.isin(gap_labels, np.intersect1d(touch_a, touch_b)[1:] if n_gap > 1 else [])
        changed = {ra}
        for o in [rb] + [groups.find(p) for p in patches]:
            if o != ra:
                groups.attach(o, ra)
                area[ra] += area[o]
                changed.add(o)
                ox0, oy0, ox1, oy1 = box[o]
                sub = out[oy0:oy1, ox0:ox1]
                sub[sub == o] = ra
                box[ra, :2] = np.minimum(box[ra, :2], box[o, :2])
                box[ra, 2:] = np.maximum(box[ra, 2:], box[o, 2:])
        bh, bw = bridge.shape
        out[y0:y0 + bh, x0:x0 + bw][bridge] = ra
        for key in [key for key in costs if changed & set(key)]:
            del costs[key]

    costs: dict[tuple[int, int], Any] = {}  # group pair -> hull_cost; dropped when a group changes
    while (best := _cheapest_pair(candidates, groups, costs, hull_cost, rank=lambda entry: entry[0])) is not None:
        join(*best, costs[best][1])
    return out


def _cheapest_pair(pairs, groups, costs: dict, cost, *, rank=lambda entry: entry):
    """The pair of groups (roots, smaller first) of two pieces in `pairs` that are not yet one group
    and whose cost ranks lowest, or None. `cost(ra, rb)` gives a pair's entry (None: never join),
    kept in `costs` until the caller drops it; `rank(entry)` is what is compared (the first
    cheapest wins a tie)."""
    best, best_rank = None, math.inf
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


def _merge_convex(labels, lg, *, min_px: float, max_gap: float = 0.15, max_gap_other: float = 0.07,
                  max_color_dist: float | None = None):
    """Join adjacent pieces (labels 1..) of one foreground blob into items.

    Pieces smaller than `min_px` join the neighbour they share the longest border with. Then,
    cheapest first, two neighbours join when their union is about as convex as one item: of the
    same colour (mean log colours within `max_color_dist`), when the join adds little concavity
    (hull gap of the union minus those of the pieces, relative to the smaller piece, at most
    `max_gap`); of different colours (stripes, straps, a logo, a highlight), only when the join
    adds almost none (`max_gap_other`), the union is not far from convex
    (OTHER_COLOUR_MAX_CONCAVITY) and the smaller piece borders the outside of the blob along at
    most PATCH_MAX_OUTLINE of its outline (the item's outline encloses it; an item lying on
    another item sticks out) and pieces of a third paint along at most PATCH_MAX_FOREIGN of it
    (an item half hidden between two others borders both).

    `max_gap_other` was 0.04; 0.07 lets a stripe, strap or logo cut out of its item by the colour
    split join again a little more often (mask AP50 +0.001-0.002 on each of three sets of 150
    tuning scenes, AP unchanged; the patch tests above still keep items lying on others apart)."""
    import cv2
    import numpy as np

    if max_color_dist is None:
        max_color_dist = MAX_COLOR_DIST
    labels = labels.copy()
    k = int(labels.max()) + 1
    if k <= 2:
        return labels
    flat = labels.ravel()
    area = np.bincount(flat, minlength=k).astype(np.float64)
    csum = np.stack([np.bincount(flat, weights=lg[..., c].ravel(), minlength=k) for c in range(3)], 1)
    carea = area.copy()  # pixels the colour (csum) is taken over: the item's paint, not its patches
    # each piece's convex hull, from its outline pixels only (the hull of all its pixels)
    outline = np.ones(labels.shape, bool)
    outline[1:-1, 1:-1] = ((labels[1:-1, 1:-1] != labels[:-2, 1:-1]) | (labels[1:-1, 1:-1] != labels[2:, 1:-1])
                           | (labels[1:-1, 1:-1] != labels[1:-1, :-2]) | (labels[1:-1, 1:-1] != labels[1:-1, 2:]))
    ys, xs = _nonzero(outline & (labels > 0))
    lab = labels[ys, xs]
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(k + 1))
    pts = np.stack([xs[order], ys[order]], 1).astype(np.int32)
    hulls = {}
    for r in range(1, k):
        if bounds[r + 1] > bounds[r]:
            hulls[r] = cv2.convexHull(pts[bounds[r]:bounds[r + 1]]).reshape(-1, 2)
    adj: dict[tuple[int, int], int] = {}
    outside = np.zeros(k)  # border length of each piece with the outside of the blob (belt)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        diff = a != b
        lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
        codes, counts = np.unique(lo.astype(np.int64) * k + hi, return_counts=True)
        for c, n in zip(codes.tolist(), counts.tolist()):
            key = divmod(c, k)
            if key[0] == 0:
                outside[key[1]] += n
            else:
                adj[key] = adj.get(key, 0) + n

    def hull_area(h):
        if len(h) < 3:
            return 0.5 * len(h)
        return cv2.contourArea(h) + 0.5 * cv2.arcLength(h.reshape(-1, 1, 2), True) + 1.0

    gap = {r: max(0.0, hull_area(h) - area[r]) for r, h in hulls.items()}
    pieces = _DisjointSet(k)

    def join(a: int, b: int) -> None:  # b into a
        pieces.attach(b, a)
        area[a] += area[b]
        outside[a] += outside[b]
        if _paint_distance(csum[a] / max(carea[a], 1) - csum[b] / max(carea[b], 1)) <= MAX_COLOR_DIST:
            csum[a] += csum[b]
            carea[a] += carea[b]
        elif carea[b] > carea[a]:  # a patch of another colour: the larger part's colour stays
            csum[a], carea[a] = csum[b], carea[b]
        hulls[a] = cv2.convexHull(np.concatenate([hulls[a], hulls.pop(b)])).reshape(-1, 2)
        gap[a] = max(0.0, hull_area(hulls[a]) - area[a])
        for key in [key for key in costs if a in key or b in key]:
            del costs[key]
        for (p, q), n in list(adj.items()):
            if b in (p, q):
                del adj[(p, q)]
                o = q if p == b else p
                if o != a:
                    key = (min(a, o), max(a, o))
                    adj[key] = adj.get(key, 0) + n

    # pair -> (may join, (other paint, cost)); dropped on joins. Joins of one paint go first, so
    # an item split in pieces is whole before it is tested as a patch of another
    costs: dict[tuple[int, int], tuple[bool, tuple[bool, float]]] = {}

    def pair_cost(a: int, b: int) -> tuple[bool, tuple[bool, float]]:
        union = hull_area(cv2.convexHull(np.concatenate([hulls[a], hulls[b]])))
        smaller = max(min(area[a], area[b]), 1.0)
        total_gap = max(0.0, union - area[a] - area[b])
        same = _paint_distance(csum[a] / carea[a] - csum[b] / carea[b]) <= max_color_dist
        cost = (total_gap - gap[a] - gap[b]) / smaller
        if same:
            return cost <= max_gap, (False, cost)
        # a patch of another colour belongs to the item whose outline encloses it: it borders
        # the belt only where it reaches the item's edge (stripes, straps, a logo)
        # and other pieces only of its own or the item's paint (an item lying between two
        # others borders both)
        # (the outline tests, which walk the adjacency, only when the hull tests pass)
        if not (cost <= max_gap_other and total_gap / smaller <= OTHER_COLOUR_MAX_CONCAVITY):
            return False, (True, cost)
        patch, host = (a, b) if area[a] <= area[b] else (b, a)
        perimeter = outside[patch] + sum(n for key, n in adj.items() if patch in key)
        foreign = sum(n for key, n in adj.items() if patch in key and host not in key
                      and not one_paint(key[0] if key[1] == patch else key[1], (patch, host)))
        ok = outside[patch] <= PATCH_MAX_OUTLINE * perimeter and foreign <= PATCH_MAX_FOREIGN * perimeter
        return ok, (True, cost)

    def one_paint(r: int, others) -> bool:
        """Whether piece r has the paint of one of the pieces `others`."""
        colour = csum[r] / max(carea[r], 1)
        return any(_paint_distance(colour - csum[o] / max(carea[o], 1)) <= max_color_dist for o in others)

    while adj:
        small = [r for r in hulls if area[r] < min_px and any(r in key for key in adj)]
        if small:
            r = min(small, key=lambda q: area[q])
            (p, q), _ = max(((key, n) for key, n in adj.items() if r in key), key=lambda kv: kv[1])
            o = q if p == r else p
            join(o, r)
            continue
        best, best_cost = None, (True, math.inf)
        for a, b in adj:
            if (a, b) not in costs:
                costs[(a, b)] = pair_cost(a, b)
            ok, cost = costs[(a, b)]
            if ok and cost < best_cost:
                best, best_cost = (a, b), cost
        if best is None:
            break
        join(*best)
    return np.array(pieces.roots())[labels]


def _border(sub):
    import cv2
    import numpy as np

    m8 = sub.astype(np.uint8)
    return (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0




# Confidence = logistic function of standardised features; the weights were fitted once, offline
# (logistic regression, L2 0.01, target: the share of the IoU thresholds 0.50:0.95 a detection
# meets), on 120 tuning scenes; halves fitted on either half gave the same AP on the other half.
# (Fitted on the first, narrower tuning split; a refit on the widened split, with a neighbour-colour
# feature added, changed AP50 by under 0.01 across halves, so the weights stayed.)
# Features: log contrast (in noise thresholds), edge sharpness, log area share, thickness
# (distance-transform peak / 10, capped at 3), share of the outline bordering the belt, solidity.
_CAL_MU = (1.8881, 0.2705, -4.2708, 1.9435, 0.7113, 0.9199)
_CAL_SD = (0.5058, 0.0917, 1.0996, 0.8526, 0.2871, 0.0916)
_CAL_W = (0.5839, -0.2130, 0.2606, 0.7220, 0.8072, 0.4448)
_CAL_B = 0.7065


def _calibrated_score(contrast: float, edge: float, area_frac: float, thickness: float, belt_frac: float,
                      solidity: float) -> float:
    x = (math.log(max(contrast, 1e-6)), min(edge, 0.5), math.log(max(area_frac, 1e-9)), min(thickness, 30) / 10,
         belt_frac, solidity)
    z = _CAL_B + sum(w * (v - mu) / sd for w, v, mu, sd in zip(_CAL_W, x, _CAL_MU, _CAL_SD))
    return 1 / (1 + math.exp(-z))


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

    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0) > 0
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


def _to_detection(inst: _Instance, sx: float, sy: float, out_size: tuple[int, int]) -> Detection | None:
    import cv2
    import numpy as np

    x0, y0, x1, y1 = inst.box
    ox0, oy0 = int(math.floor(x0 * sx)), int(math.floor(y0 * sy))
    ox1, oy1 = min(out_size[0], int(math.ceil(x1 * sx))), min(out_size[1], int(math.ceil(y1 * sy)))
    if ox1 <= ox0 or oy1 <= oy0:
        return None
    # resample the mask: pixel centres of the output box mapped into the working mask
    pad = cv2.copyMakeBorder(inst.mask.astype(np.float32), 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0)
    if MASK_SMOOTH > 0:
        pad = cv2.GaussianBlur(pad, (0, 0), MASK_SMOOTH)
    to_work = np.array([[1 / sx, 0, (ox0 + 0.5) / sx - 0.5 - x0 + 2], [0, 1 / sy, (oy0 + 0.5) / sy - 0.5 - y0 + 2]])
    big = cv2.warpAffine(pad, to_work, (ox1 - ox0, oy1 - oy0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    big = big >= MASK_LEVEL
    rows, cols = np.flatnonzero(big.any(axis=1)), np.flatnonzero(big.any(axis=0))
    if not len(rows):
        return None
    bx0, bx1, by0, by1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    crop = big[by0:by1, bx0:bx1]
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


DEFECT_SOLIDITY = 0.9  # _cut_at_defects: only items less convex than this (area / hull area) are cut
DEFECT_DEPTH = 0.15  # a notch deeper than this share of the item's equivalent radius may end a cut
DEFECT_FREE = 2  # a notch with no other item this close (working pixels) is open to the belt
DEFECT_PIECE_SOLIDITY = 0.85  # both pieces of a cut must be at least this convex ...
DEFECT_GAP_LEFT = 0.6  # ... and keep at most this share of the whole's concavity (hull gap) between them
DEFECT_CUTS = 2  # cuts per item at most
DEFECT_ONE_PAINT = 0.8  # the two pieces' commonest colours differ by at most this (_paint_distance)


def _cut_at_defects(inst, lg, *, min_px: float):
    """Instance labels with items cut along the straight line between two notches of their
    outline when that leaves two convex pieces: two items of one paint that touch or lie on each
    other without a neck, which the colour and edge cuts cannot part, leave a notch where their
    outlines cross. One end of the cut must be a notch open to the belt (a notch filled by
    another item is that item lying over this one, and cutting there would split an occluded
    item); the other may also face another item (a pile). A cut is kept when both pieces are
    about convex (DEFECT_PIECE_SOLIDITY) and together keep at most DEFECT_GAP_LEFT of the whole's
    concavity, and when the pieces' commonest colours differ by at most DEFECT_ONE_PAINT (a
    cut between two paints is the colour cut's to make: a convex-looking cut through a pile of
    several paints can give one item's half to another); of several, the one that removes the
    most concavity."""
    import cv2
    import numpy as np

    h, w = inst.shape
    counts = np.bincount(inst.ravel())
    todo = {}  # label -> (x0, y0, x1, y1, cuts so far)
    for r in np.flatnonzero(counts >= 2 * min_px).tolist():
        if r > 0:
            m = inst == r
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            todo[r] = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, 0)
    out = inst
    next_id = int(inst.max()) + 1
    queue = list(todo)
    while queue:
        r = queue.pop()
        x0, y0, x1, y1, cuts = todo[r]
        if cuts >= DEFECT_CUTS:
            continue
        x0, y0, x1, y1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
        crop = out[y0:y1, x0:x1]
        piece = (crop == r).astype(np.uint8)
        area = float(cv2.countNonZero(piece))
        contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if area < 2 * min_px or not contours:
            continue
        gap = _contours_hull_gap(contours, area)
        if area >= DEFECT_SOLIDITY * (area + gap):
            continue
        cnt = max(contours, key=cv2.contourArea)
        if len(cnt) < 5:
            continue
        try:
            defects = cv2.convexityDefects(cnt, cv2.convexHull(cnt, returnPoints=False))
        except cv2.error:  # a self-touching outline
            continue
        if defects is None:
            continue
        min_depth = max(2.5, DEFECT_DEPTH * math.sqrt(area / math.pi))
        notches = [(int(cnt[d[2]][0][0]), int(cnt[d[2]][0][1])) for d in defects.reshape(-1, 4)
                   if d[3] / 256.0 >= min_depth]
        if len(notches) < 2:
            continue
        others = (crop > 0) & (piece == 0)
        rr = DEFECT_FREE
        blocked = [bool(others[max(0, py - rr):py + rr + 1, max(0, px - rr):px + rr + 1].any()) for px, py in notches]
        notches = [p for _, p in sorted(zip(blocked, notches), key=lambda pair: pair[0])]  # open ones first
        n_free = blocked.count(False)
        cands = []
        for i in range(n_free):
            for j in range(i + 1, len(notches)):
                cut = piece.copy()
                cv2.line(cut, notches[i], notches[j], 0, 2)
                n_p, plab, pst, _ = cv2.connectedComponentsWithStats(cut, connectivity=4)
                if n_p < 3:
                    continue
                big = np.argsort(-pst[1:, cv2.CC_STAT_AREA])[:2] + 1
                if pst[big[1], cv2.CC_STAT_AREA] < min_px:
                    continue
                left = 0.0
                for b in big:
                    pa, pg = _hull_gap(plab == b)
                    if pa < DEFECT_PIECE_SOLIDITY * (pa + pg):
                        break
                    left += pg
                else:
                    if left <= DEFECT_GAP_LEFT * gap:
                        cands.append((left, len(cands), plab, big))
        best = None
        for left, _, plab, big in sorted(cands, key=lambda c: c[:2]):
            sel = (plab == big[0]) | (plab == big[1])
            paint = _modes(lg[y0:y1, x0:x1][sel][None], axis=1, bins=48,
                           line_index=(plab[sel] == big[1]).astype(np.int64), lines=2).reshape(2, 3)
            if _paint_distance(paint[0] - paint[1]) > DEFECT_ONE_PAINT:
                continue
            best = (left, plab, big)
            break
        if best is None:
            continue
        _, plab, big = best
        if out is inst:
            out = inst.copy()
            crop = out[y0:y1, x0:x1]
        # each pixel of the item (the cut line and specks included) goes to the nearer piece
        d0 = cv2.distanceTransform((plab != big[0]).astype(np.uint8), cv2.DIST_L2, 3)
        d1 = cv2.distanceTransform((plab != big[1]).astype(np.uint8), cv2.DIST_L2, 3)
        crop[(piece > 0) & (d1 < d0)] = next_id
        for q in (r, next_id):
            qy, qx = np.nonzero(crop == q)
            todo[q] = (int(qx.min()) + x0, int(qy.min()) + y0, int(qx.max()) + x0 + 1, int(qy.max()) + y0 + 1, cuts + 1)
            queue.append(q)
        next_id += 1
    return out


OCCLUDED_ONE_PAINT = 0.3  # _join_occluded: the parts' commonest colours differ by at most this (_paint_distance)
OCCLUDED_BELT_GAP = 0.05  # ... and the hull of their union adds at most this much belt, relative to the smaller part
# (Chosen on tuning scenes: on pairs of touching parts left after the cuts, this belt share
# separated the parts of one item from two items better than the union's convexity did. Sweeps
# on four sets of 150 tuning scenes: 0.03 lower AP50 than 0.05 on three sets, 0.08 on two; 0.5
# for the paint about the same as 0.3; also joining parts of two paints, at a belt share of 0,
# lowered AP50 on two sets and colour on two, at 0.02 AP50 on all four; not counting strips of
# belt narrower than 3 or 5 pixels raised AP50 on two sets, lowered it on one.)


def _join_occluded(inst, lg, *, min_px: float):
    """Instance labels with touching parts of one item joined: two touching pieces (each at
    least `min_px`) of one paint (OCCLUDED_ONE_PAINT) whose union's convex hull adds, beyond the
    pieces' own hulls, almost no belt (OCCLUDED_BELT_GAP of the smaller piece), only pixels of
    the pieces and of other items; cheapest first. Two items of one paint side by side leave a
    wedge of belt open where their outlines meet; the parts of one item cut apart by another
    lying across or into it (the occluder fills the concavity), or by the cuts before, do not."""
    import cv2
    import numpy as np

    counts = np.bincount(inst.ravel())
    big = counts >= min_px
    big[0] = False
    if np.count_nonzero(big) < 2:
        return inst
    # touching pairs (4-neighbours) of pieces that are large enough to be items
    n = len(counts)
    uniq, n_border = _touching(inst, n, big)
    pairs = [divmod(int(c), n) for c, nb in zip(uniq, n_border) if nb >= 3]
    if not pairs:
        return inst
    label_boxes = _label_boxes(inst, n)[0]
    box, area, hulls = {}, {}, {}  # each group's bounding box, pixels and convex hull (image coordinates)
    for r in {r for pair in pairs for r in pair}:
        x0, y0, x1, y1 = box[r] = [int(v) for v in label_boxes[r]]
        area[r] = float(counts[r])
        contours, _ = cv2.findContours((inst[y0:y1, x0:x1] == r).astype(np.uint8),
                                       cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hulls[r] = cv2.convexHull(np.concatenate(contours)) + (x0, y0)
    out = inst.copy()
    groups = _DisjointSet(n)

    def cost(ra: int, rb: int):
        """The belt the hull of the union adds, relative to the smaller part, or None."""
        x0, y0 = min(box[ra][0], box[rb][0]), min(box[ra][1], box[rb][1])
        x1, y1 = max(box[ra][2], box[rb][2]), max(box[ra][3], box[rb][3])
        crop = out[y0:y1, x0:x1]
        ha, hb = hulls[ra] - (x0, y0), hulls[rb] - (x0, y0)
        hull = np.zeros(crop.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate([ha, hb])), 1)
        cv2.fillConvexPoly(hull, ha, 0)
        cv2.fillConvexPoly(hull, hb, 0)
        c = float(np.count_nonzero((hull > 0) & (crop == 0))) / max(min(area[ra], area[rb]), 1.0)
        if c > OCCLUDED_BELT_GAP:
            return None
        ma, mb = crop == ra, crop == rb
        both = ma | mb
        paint = _modes(lg[y0:y1, x0:x1][both][None], axis=1, bins=48, line_index=mb[both].astype(np.int64),
                       lines=2).reshape(2, 3)
        return c if _paint_distance(paint[0] - paint[1]) <= OCCLUDED_ONE_PAINT else None

    costs: dict[tuple[int, int], Any] = {}
    while (best := _cheapest_pair(pairs, groups, costs, cost)) is not None:
        ra, rb = best
        groups.attach(rb, ra)
        x0, y0, x1, y1 = box[rb]
        sub = out[y0:y1, x0:x1]
        sub[sub == rb] = ra
        box[ra] = [min(box[ra][0], x0), min(box[ra][1], y0), max(box[ra][2], x1), max(box[ra][3], y1)]
        area[ra] += area[rb]
        hulls[ra] = cv2.convexHull(np.concatenate([hulls[ra], hulls.pop(rb)]))
        for key in [key for key in costs if ra in key or rb in key]:
            del costs[key]
    return out
