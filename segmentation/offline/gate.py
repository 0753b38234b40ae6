"""The empty-belt gate: is this frame the calibrated camera's empty scene, nothing on it?

Before a Gemini call, for a camera enabled in EMPTY_BELT_GATE_CAMERAS, the frame is compared with
the camera's empty-scene reference (registered, shift-tolerant, light-corrected, the belt band
re-registered); "empty" only when nothing the size of a small item is left unexplained, so in doubt
a frame is not empty. How: docs/offline-detector-method.md; tunables: the `gate_*` fields of
`params.OfflineParams`. NumPy and OpenCV are imported on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from segmentation.images import to_rgb
from segmentation.offline.arrays import _components, _log, _mat, _reference_like, _work_array
from segmentation.offline.belt import _reference_model
from segmentation.offline.evidence import _evidence, _fill_holes, _thresholds
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams

MODEL = "empty-scene-gate-v2"  # the `model` of an image the gate recorded as empty


@dataclass(frozen=True)
class GateCheck:
    """One comparison of a frame with the reference."""

    empty: bool
    blob_share: float  # largest unexplained blob, share of the image (1.0: camera moved)
    camera_shift: tuple[float, float]  # registered shift, in pixels of the frame
    belt_run: float | None = None  # how far the belt band ran on, frame pixels (None: not tried)

    @property
    def camera_moved(self) -> bool:
        return self.blob_share >= 1.0


class EmptySceneGate:
    """The gate of one camera, built from its empty-scene reference; safe to share between threads
    once built (the reference copies are cached per frame shape)."""

    def __init__(
        self,
        reference: Image.Image,
        *,
        side: int | None = None,
        min_area: float | None = None,
        params: OfflineParams = P,
    ):
        self.reference = to_rgb(reference)
        self.params = params
        self.side = params.gate_side if side is None else side
        self.min_area = params.gate_min_blob if min_area is None else min_area
        self._copies: dict[tuple[int, int], Any] = {}
        self._moved_reported = False

    def first_move(self) -> bool:
        """True the first time it is asked (report a moved camera once per gate, not per frame)."""
        first, self._moved_reported = not self._moved_reported, True
        return first

    def is_empty(self, image: Image.Image) -> bool:
        return self.check(image).empty

    def check(self, image: Image.Image) -> GateCheck:
        work = _work_array(to_rgb(image), self.side)
        scale = image.size[0] / work.shape[1]
        share, shift, run = _unexplained_share(work, self._reference_copy(work.shape[:2]), params=self.params)
        return GateCheck(
            empty=share < self.min_area,
            blob_share=share,
            camera_shift=(shift[0] * scale, shift[1] * scale),
            belt_run=None if run is None else run * scale,
        )

    def _reference_copy(self, shape: tuple[int, int]):
        ref = self._copies.get(shape)
        if ref is None:
            ref = self._copies[shape] = _reference_like(self.reference, shape, self.side)
        return ref


def _unexplained_share(work, ref, *, params: OfflineParams = P) -> tuple[float, tuple[float, float], float | None]:
    """The largest blob the reference does not explain (share of the image), the camera shift
    registered away and the belt band's run (gate pixels; None when not tried)."""
    import numpy as np

    lg, lr = _log(work, params=params), _log(ref, params=params)
    h, w = lg.shape[:2]
    if min(h, w) < 2 * params.gate_opening:
        return _blob_share(_not_explained(lg, lr, params=params), params=params), (0.0, 0.0), None
    limit = max(1, math.ceil(params.gate_max_camera_shift * max(h, w)))
    dx, dy = _best_shift(_gray(lr), _gray(lg), limit, limit, params=params)
    if max(abs(dx), abs(dy)) >= limit - 0.5:  # at the edge of the search: moved further than that
        return 1.0, (dx, dy), None
    lr = _shifted(lr, dx, dy)
    differs = _not_explained(lg, lr, params=params)
    best = _blob_share(differs, params=params)
    if best == 0.0:
        return best, (dx, dy), None
    run = None
    for along_rows in (True, False):  # a belt running across the frame, then one running down it
        band = _moving_band(differs.mean(axis=1 if along_rows else 0), params=params)
        if band is None:
            continue
        if along_rows:
            moved, r = _band_run_on(lr, lg, *band, params=params)
        else:  # the same on the transposed frame
            moved, r = _band_run_on(lr.transpose(1, 0, 2), lg.transpose(1, 0, 2), *band, params=params)
            moved = moved.transpose(1, 0, 2)
        share = _blob_share(_not_explained(lg, np.ascontiguousarray(moved), params=params), params=params)
        if share < best:
            best, run = share, r
    return best, (dx, dy), run


def _band_run_on(lr, lg, a: int, b: int, *, params: OfflineParams = P):
    """The reference `lr` with its rows [a, b) moved along their length onto the frame `lg` (a belt
    that ran on), and how far they moved."""
    import numpy as np

    strip = np.ascontiguousarray(lr[a:b])
    run = _best_shift(
        _gray(strip),
        _gray(np.ascontiguousarray(lg[a:b])),
        strip.shape[1] // 2 - 3,
        1,
        exclude=2,
        periodic=True,
        params=params,
    )[0]
    moved = lr.copy()
    moved[a:b] = _shifted(strip, run, 0)
    return moved, run


def _gray(lg):
    import cv2

    return cv2.transform(lg, _mat([[1 / 3, 1 / 3, 1 / 3]]))


def _shifted(a, dx: float, dy: float):
    import cv2
    import numpy as np

    return cv2.warpAffine(
        a,
        np.array([[1, 0, dx], [0, 1, dy]], np.float32),
        (a.shape[1], a.shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _best_shift(
    ref, img, max_dx: int, max_dy: int, *, exclude: int = 0, periodic: bool = False, params: OfflineParams = P
) -> tuple[float, float]:
    """The shift (dx, dy) that moves `ref` onto `img`, searched within +-max_dx, +-max_dy by phase
    correlation, leaving out |shift| < `exclude` along the longer search axis; with `periodic`,
    the shortest shift whose match is nearly the best (a belt repeats itself). Sub-pixel by the
    weighted centroid of the peak."""
    import cv2
    import numpy as np

    h, w = ref.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    cross = np.fft.rfft2((img - img.mean()) * window) * np.conj(np.fft.rfft2((ref - ref.mean()) * window))
    cross /= np.maximum(np.abs(cross), 1e-9)
    surface = np.fft.fftshift(np.fft.irfft2(cross, s=(h, w)))
    cy, cx = h // 2, w // 2
    max_dx, max_dy = min(max_dx, cx - 1), min(max_dy, cy - 1)
    sub = surface[cy - max_dy : cy + max_dy + 1, cx - max_dx : cx + max_dx + 1].copy()
    if exclude:
        if max_dx >= max_dy:
            sub[:, max(0, max_dx - exclude + 1) : max_dx + exclude] = -np.inf
        else:
            sub[max(0, max_dy - exclude + 1) : max_dy + exclude, :] = -np.inf
    iy, ix = np.unravel_index(int(np.argmax(sub)), sub.shape)
    if periodic:
        near = np.argwhere(sub >= params.gate_periodic_match * sub[iy, ix])
        best = min(near.tolist(), key=lambda p: abs(p[0] - max_dy) + abs(p[1] - max_dx))
        iy, ix = np.intp(best[0]), np.intp(best[1])
    y0, y1, x0, x1 = max(0, iy - 2), min(sub.shape[0], iy + 3), max(0, ix - 2), min(sub.shape[1], ix + 3)
    weights = np.nan_to_num(np.maximum(sub[y0:y1, x0:x1], 0), posinf=0.0)
    total = float(weights.sum())
    if total <= 0:
        return float(ix - max_dx), float(iy - max_dy)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return float((weights * xx).sum() / total - max_dx), float((weights * yy).sum() / total - max_dy)


def _moving_band(cover, *, params: OfflineParams = P) -> tuple[int, int] | None:
    """The run of lines [a, b) where most still differs (a belt that ran on), or None."""
    import numpy as np

    on = np.concatenate([[0], (cover > params.gate_belt_band_cover).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(on))
    runs = [(float(cover[a:b].sum()), int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=False)]
    if not runs:
        return None
    _, a, b = max(runs)
    return (a, b) if b - a >= params.gate_belt_band_min_lines else None


def _not_explained(lg, lr, *, params: OfflineParams = P):
    """Pixels of the frame (log `lg`) unlike the reference (log `lr`, registered) anywhere within
    `gate_envelope` pixels, after correcting the reference for the change of light; thresholds scaled
    to what is left of the noise (never below _thresholds' floors)."""
    import cv2
    import numpy as np

    model = _reference_model(lg, lr)
    kernel = np.ones((2 * params.gate_envelope + 1, 2 * params.gate_envelope + 1), np.uint8)
    light = model - lr
    lo, hi = cv2.erode(lr, kernel) + light, cv2.dilate(lr, kernel) + light
    m, cd = _evidence(lg, np.minimum(np.maximum(lg, lo), hi))
    tm, tc = _thresholds(m, cd)
    return (np.abs(m) >= tm) | (cd >= tc)


def _blob_share(differs, *, params: OfflineParams = P) -> float:
    """The largest thick blob of `differs`, holes of item size filled, as a share of the image."""
    import cv2
    import numpy as np

    size = differs.size
    low, high = params.gate_holes
    mask = _fill_holes(differs, min_hole=low * size, max_hole=high * size).astype(np.uint8)
    core = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((params.gate_opening, params.gate_opening), np.uint8))
    blob = cv2.dilate(core, np.ones((2 * params.gate_grow + 1, 2 * params.gate_grow + 1), np.uint8)) & mask
    n, _, area = _components(blob, 8)
    return int(area[1:].max()) / size if n > 1 else 0.0
