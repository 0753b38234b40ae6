"""A weight-free image descriptor for lost-bag search: colour in Oklab, texture and shape of the
object in a crop, as one L2-normalised vector (cosine similarity = dot product).

The crop is the model's box, so belt or floor shows in its corners: pixels that look like the
crop's border are weighted down. Colour uses hue and saturation (C / L), which do not change with
exposure, plus coarse lightness; texture is rotation-invariant (local binary patterns, gradient
orientations relative to the dominant one); shape is the aspect ratio and fill of the object.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from segmentation.colors import linear_to_oklch, srgb_to_linear

SIDE = 96  # pixels: the crop's longest side is resized to this before description
BORDER = 0.03  # share of the side read as background around the object
GRID = 11  # chromaticity lattice points per axis
CHROMA_RANGE = 0.5  # a / L and b / L span -this..this on the lattice
CHROMA_SIGMA = 0.06  # soft-binning width on the lattice
LIGHT_CENTRES = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)  # Oklab L centres of the lightness bins
ACCENT_FLOOR = 0.1  # the coloured share below which the chroma histogram is not scaled up further
# Relative weight of each block in the final vector.
WEIGHTS = {"layout": 0.7, "chroma": 1.0, "lightness": 0.5, "texture": 0.35, "orientation": 0.25, "shape": 0.35}
DIM = GRID * GRID + len(LIGHT_CENTRES) + 10 + 8 + 8
VERSION = "oklab-lbp-v1"


def describe(image: Image.Image) -> np.ndarray:
    """The descriptor (float32, length DIM, unit norm) of the object in `image`."""
    rgb = _resized(image)
    L, C, h = linear_to_oklch(srgb_to_linear(rgb))
    w = _object_weights(L, C, h)
    blocks = {
        "chroma": _chroma(L, C, h, w),
        "lightness": _lightness(L, w),
        "texture": _lbp(L, w),
        "orientation": _orientations(L, w),
        "shape": _shape(w),
        "layout": _layout(L, C, h, w),
    }
    parts = [WEIGHTS[k] * _unit(v if k == "layout" else np.sqrt(np.maximum(v, 0))) for k, v in blocks.items()]
    return _unit(np.concatenate(parts).astype(np.float32))


def _resized(image: Image.Image) -> np.ndarray:
    im = image.convert("RGB")
    scale = SIDE / max(im.size)
    im = im.resize((max(8, round(im.width * scale)), max(8, round(im.height * scale))), Image.Resampling.BOX)
    return np.asarray(im)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _lab(L: np.ndarray, C: np.ndarray, h: np.ndarray) -> np.ndarray:
    rad = np.radians(h)
    return np.stack([L, C * np.cos(rad), C * np.sin(rad)], axis=-1)


def _object_weights(L: np.ndarray, C: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per pixel, how surely it belongs to the object: far in Oklab from every background colour
    (k-means of the border ring), times a soft centre prior."""
    import cv2

    lab = _lab(L, C, h).astype(np.float32)
    hh, ww = L.shape
    b = max(2, int(round(BORDER * min(hh, ww))))
    ring = np.ones((hh, ww), bool)
    ring[b:-b, b:-b] = False
    samples = lab[ring]
    k = min(4, len(samples))
    _, _, centres = cv2.kmeans(samples, k, None, (cv2.TERM_CRITERIA_MAX_ITER, 10, 0), 2, cv2.KMEANS_PP_CENTERS)
    d = np.min(np.linalg.norm(lab[:, :, None, :] - centres[None, None], axis=-1), axis=-1)
    far = np.clip((d - 0.03) / 0.07, 0, 1)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    centre = np.exp(-(((yy - hh / 2) / (0.45 * hh)) ** 2 + ((xx - ww / 2) / (0.45 * ww)) ** 2))
    return (far * (1 - 0.15) + 0.15) * centre


def _chroma(L: np.ndarray, C: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Soft 2-D histogram of chromaticity (a / L, b / L: unchanged by exposure) on a GRID x GRID
    lattice, of the coloured pixels only, normalised by their share (at least ACCENT_FLOOR): a red
    ribbon on a black case counts for as much as the red of a red case."""
    rad = np.radians(h)
    Lc = np.maximum(L, 0.05)
    x = C * np.cos(rad) / Lc
    y = C * np.sin(rad) / Lc
    sat = C / Lc
    coloured = w * np.clip((sat - 0.06) / 0.06, 0, 1)
    centres = np.linspace(-CHROMA_RANGE, CHROMA_RANGE, GRID)
    wx = np.exp(-(((x[..., None] - centres) / CHROMA_SIGMA) ** 2))
    wy = np.exp(-(((y[..., None] - centres) / CHROMA_SIGMA) ** 2))
    hist = np.einsum("ij,ija,ijb->ab", coloured, wx, wy).ravel()
    return hist / max(float(coloured.sum()), ACCENT_FLOOR * float(w.sum()), 1e-9)


def _lightness(L: np.ndarray, w: np.ndarray) -> np.ndarray:
    light = np.array([float((w * np.exp(-(((L - c) / 0.1) ** 2))).sum()) for c in LIGHT_CENTRES])
    return light / max(light.sum(), 1e-9)


def _lbp(L: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform local binary patterns (8 neighbours, radius 1): 10 codes."""
    c = L[1:-1, 1:-1]
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    bits = np.stack(
        [L[1 + dy : L.shape[0] - 1 + dy, 1 + dx : L.shape[1] - 1 + dx] >= c + 0.01 for dy, dx in offsets]
    ).astype(np.int8)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(axis=0)
    ones = bits.sum(axis=0)
    code = np.where(transitions <= 2, ones, 9)
    hist = np.bincount(code.ravel(), weights=w[1:-1, 1:-1].ravel(), minlength=10)
    return hist / max(hist.sum(), 1e-9)


def _orientations(L: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Gradient orientations (mod 180 degrees) relative to the dominant one, 8 bins, by magnitude."""
    import cv2

    gx = cv2.Sobel(L.astype(np.float32), cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(L.astype(np.float32), cv2.CV_32F, 0, 1)
    mag = np.hypot(gx, gy) * w
    ang = np.degrees(np.arctan2(gy, gx)) % 180
    hist36 = np.bincount((ang // 5).astype(int).ravel() % 36, weights=mag.ravel(), minlength=36)
    shift = int(np.argmax(hist36))
    rel = ((ang - shift * 5) % 180) // 22.5
    hist = np.bincount(rel.astype(int).ravel() % 8, weights=mag.ravel(), minlength=8)
    return hist / max(hist.sum(), 1e-9)


def _shape(w: np.ndarray) -> np.ndarray:
    """Aspect ratio (short / long side of the object's rotated box) and fill, as soft bins."""
    import cv2

    m = (w > 0.5 * w.max()).astype(np.uint8)
    pts = cv2.findNonZero(m)
    out = np.zeros(8)
    if pts is None or len(pts) < 5:
        return out
    (_, _), (a, b), _ = cv2.minAreaRect(pts)
    aspect = min(a, b) / max(a, b, 1e-6)
    fill = float(m.sum()) / max(a * b, 1.0)
    for i, centre in enumerate(np.linspace(0.3, 1.0, 5)):
        out[i] = np.exp(-(((aspect - centre) / 0.1) ** 2))
    for i, centre in enumerate((0.6, 0.8, 1.0)):
        out[5 + i] = np.exp(-(((fill - centre) / 0.12) ** 2))
    return out


LAYOUT = (8, 4)  # cells along and across the object's long axis


def _layout(L: np.ndarray, C: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The object turned so its long axis is horizontal, cut into LAYOUT cells, each cell's mean
    chromaticity and lightness, averaged over the four flips (a photo may show either end first)."""
    import cv2

    m = (w > 0.5 * w.max()).astype(np.uint8)
    pts = cv2.findNonZero(m)
    if pts is None or len(pts) < 5:
        return np.zeros(LAYOUT[0] // 2 * LAYOUT[1] // 2 * 3, np.float32)
    (cx, cy), (a, b), angle = cv2.minAreaRect(pts)
    if a < b:
        a, b, angle = b, a, angle + 90
    rad = np.radians(h)
    Lc = np.maximum(L, 0.05)
    feat = np.stack([C * np.cos(rad) / Lc, C * np.sin(rad) / Lc, L], axis=-1).astype(np.float32)
    rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    rot[0, 2] += a / 2 - cx
    rot[1, 2] += b / 2 - cy
    size = (max(int(a), LAYOUT[0]), max(int(b), LAYOUT[1]))
    upright = cv2.warpAffine(feat, rot, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    cells = cv2.resize(upright, LAYOUT, interpolation=cv2.INTER_AREA)  # (across, along, 3)
    sym = (cells + cells[::-1] + cells[:, ::-1] + cells[::-1, ::-1]) / 4
    half = sym[: LAYOUT[1] // 2, : LAYOUT[0] // 2]
    half = half - half.mean(axis=(0, 1), keepdims=True) * np.array([0, 0, 1], np.float32)
    return half.ravel()


DIM = GRID * GRID + len(LIGHT_CENTRES) + 10 + 8 + 8 + LAYOUT[0] // 2 * LAYOUT[1] // 2 * 3
