"""A weight-free image descriptor for lost-bag search: colour in Oklab, accents, shape and texture of
the object in a crop, as one L2-normalised vector (cosine similarity = dot product).

The crop is a detector's box, so belt or floor shows around the object: the object is the largest
region unlike the crop's border, holes filled. Its colours are read as
- the main colour: the object's median chromaticity (Oklab a/L, b/L, which exposure does not move)
  softly placed on a fine lattice, and its lightness on coarse log-spaced bins (exposure moves it);
- accents: pixels clearly unlike the main colour (a ribbon, strap, sticker, pattern), their
  chromaticity and lightness relative to the main colour, scaled by a saturating function of their
  share so a small ribbon counts, and where they sit along the object's long axis;
and its shape as the aspect ratio and fill of its rotated box. Rotation, exposure and which end of
the bag faces the camera do not change the vector.

`segmentation.search.text` maps a description into the same blocks (`BLOCKS`, `LATTICE`, ...).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from segmentation.colors import linear_to_oklch, srgb_to_linear

VERSION = "oklab-accent-v2"
SIDE = 80  # pixels: the crop's longest side is resized to this before description

# The main colour's chromaticity lattice: a/L and b/L from -CHROMA_RANGE to CHROMA_RANGE.
LATTICE = np.linspace(-0.48, 0.48, 17)
MAIN_SIGMA = 0.035  # soft-placement width on the lattice (the view-to-view spread of one bag is ~0.02)
# Lightness (Oklab L) bin centres for the main colour, log-spaced: exposure scales L.
LIGHT = np.exp(np.linspace(np.log(0.12), np.log(0.95), 8))
LIGHT_SIGMA = 0.22  # in log L
# Accent chromaticity: a coarser lattice, and lightness relative to the main colour.
ACCENT_LATTICE = np.linspace(-0.45, 0.45, 7)
ACCENT_SIGMA = 0.09
RELATIVE_LIGHT = np.log(np.array([0.35, 0.6, 1.0, 1.6, 2.8]))
RELATIVE_SIGMA = 0.3
ACCENT_CHROMA = 0.09  # chromaticity distance from the main colour beyond which a pixel is an accent
ACCENT_LIGHT = 0.5  # ... or |log L ratio| beyond this (shading across a bag stays within +-0.3)
ACCENT_FULL = 0.05  # the accent share at which the accent blocks reach full weight
ASPECT = np.linspace(0.3, 1.0, 15)
ASPECT_SIGMA = 0.04
FILL = np.array([0.7, 0.8, 0.9, 1.0])
FILL_SIGMA = 0.06
THRESHOLDS = (0.08, 0.06, 0.045, 0.035, 0.025)  # Oklab distances from the border colours, tried in turn
SPAN = 0.7  # share of the crop's width and height the object must span
ALONG = 3  # accent position bins from the centre to either end of the long axis

BLOCKS = {
    "main": len(LATTICE) ** 2,
    "light": len(LIGHT),
    "accent": len(ACCENT_LATTICE) ** 2,
    "accent_light": len(RELATIVE_LIGHT),
    "accent_where": ALONG,
    "aspect": len(ASPECT),
    "fill": len(FILL),
}
WEIGHTS = {
    "main": 1.4,
    "light": 0.5,
    "accent": 0.7,
    "accent_light": 0.4,
    "accent_where": 0.3,
    "aspect": 0.6,
    "fill": 0.3,
}
DIM = sum(BLOCKS.values())


def describe(image: Image.Image) -> np.ndarray:
    """The descriptor (float32, length DIM, unit norm) of the object in `image`."""
    rgb = _resized(image)
    L, C, h = linear_to_oklch(srgb_to_linear(rgb))
    L = np.maximum(L, 0.02)
    rad = np.radians(h)
    x, y = C * np.cos(rad) / L, C * np.sin(rad) / L
    mask = _object_mask(L, C * np.cos(rad), C * np.sin(rad))
    return assemble(_blocks(L, x, y, mask))


def assemble(blocks: dict[str, np.ndarray]) -> np.ndarray:
    """Blocks (each already scaled to its own length) weighted, concatenated, unit length."""
    parts = [WEIGHTS[k] * np.asarray(blocks.get(k, np.zeros(n)), np.float64) for k, n in BLOCKS.items()]
    return _unit(np.concatenate(parts)).astype(np.float32)


def lattice_point(x: float, y: float, grid: np.ndarray, sigma: float) -> np.ndarray:
    """A chromaticity softly placed on a `grid` x `grid` lattice (flattened, unit length)."""
    wx = np.exp(-0.5 * ((x - grid) / sigma) ** 2)
    wy = np.exp(-0.5 * ((y - grid) / sigma) ** 2)
    return _unit(np.outer(wx, wy).ravel())


def soft_bins(value: float, centres: np.ndarray, sigma: float) -> np.ndarray:
    return _unit(np.exp(-0.5 * ((value - centres) / sigma) ** 2))


def _resized(image: Image.Image) -> np.ndarray:
    im = image.convert("RGB")
    scale = SIDE / max(im.size)
    size = (max(8, round(im.width * scale)), max(8, round(im.height * scale)))
    return np.asarray(im.resize(size, Image.Resampling.BOX))


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _object_mask(L: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The object: pixels far in Oklab from every colour of the crop's border (k-means of a ring
    two pixels wide), its largest component, holes filled. A crop is a detector's box, so the object
    spans most of it: the distance threshold is lowered until the component spans SPAN of the
    crop's width and height (a grey bag on a grey belt), else the central ellipse is used."""
    import cv2

    hh, ww = L.shape
    lab = np.stack([L, a, b], axis=-1).astype(np.float32)
    ring = np.ones((hh, ww), bool)
    ring[2:-2, 2:-2] = False
    cv2.setRNGSeed(1)  # k-means++ seeding: the same crop always gives the same vector
    criteria = (cv2.TERM_CRITERIA_MAX_ITER, 8, 0)
    _, _, centres = cv2.kmeans(lab[ring], 3, None, criteria, 1, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
    d = np.min(np.linalg.norm(lab[:, :, None, :] - centres[None, None], axis=-1), axis=-1)
    kernel = np.ones((3, 3), np.uint8)
    for threshold in THRESHOLDS:
        m = cv2.morphologyEx((d > threshold).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=4)
        if n <= 1:
            continue
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[biggest, cv2.CC_STAT_WIDTH] >= SPAN * ww and stats[biggest, cv2.CC_STAT_HEIGHT] >= SPAN * hh:
            m = (labels == biggest).astype(np.uint8)
            flood = np.pad(1 - m, 1, constant_values=1).astype(np.uint8)  # holes: what the border cannot reach
            cv2.floodFill(flood, None, (0, 0), 2)
            return (flood[1:-1, 1:-1] != 2) | (m > 0)
    yy, xx = np.mgrid[0:hh, 0:ww]
    return ((yy - hh / 2 + 0.5) / (0.45 * hh)) ** 2 + ((xx - ww / 2 + 0.5) / (0.45 * ww)) ** 2 <= 1


def _blocks(L: np.ndarray, x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    import cv2

    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if inner.sum() < 10:
        inner = mask
    logL = np.log(L)
    mx, my = float(np.median(x[inner])), float(np.median(y[inner]))
    ml = float(np.median(logL[inner]))
    wx = np.exp(-0.5 * ((x[inner, None] - LATTICE) / MAIN_SIGMA) ** 2)
    wy = np.exp(-0.5 * ((y[inner, None] - LATTICE) / MAIN_SIGMA) ** 2)
    hist = np.einsum("ni,nj->ij", wx, wy).ravel()
    out = {
        "main": _unit(np.sqrt(hist)),
        "light": soft_bins(ml, np.log(LIGHT), LIGHT_SIGMA),
    }
    # accents
    px, py, pl = x[inner], y[inner], logL[inner] - ml
    accent = (np.hypot(px - mx, py - my) > ACCENT_CHROMA) | (np.abs(pl) > ACCENT_LIGHT)
    share = float(accent.mean())
    strength = min(1.0, share / ACCENT_FULL) ** 0.5
    if accent.any():
        wx = np.exp(-0.5 * ((px[accent, None] - ACCENT_LATTICE) / ACCENT_SIGMA) ** 2)
        wy = np.exp(-0.5 * ((py[accent, None] - ACCENT_LATTICE) / ACCENT_SIGMA) ** 2)
        out["accent"] = strength * _unit(np.einsum("ni,nj->ij", wx, wy).ravel())
        rel = np.exp(-0.5 * ((pl[accent, None] - RELATIVE_LIGHT) / RELATIVE_SIGMA) ** 2).sum(axis=0)
        out["accent_light"] = strength * _unit(rel)
    # shape: the object's rotated box
    pts = cv2.findNonZero(mask.astype(np.uint8))
    (cx, cy), (w, h), angle = cv2.minAreaRect(pts)
    long_side, short_side = max(w, h, 1.0), max(min(w, h), 1.0)
    out["aspect"] = soft_bins(short_side / long_side, ASPECT, ASPECT_SIGMA)
    out["fill"] = soft_bins(float(mask.sum()) / (long_side * short_side), FILL, FILL_SIGMA)
    if accent.any():
        theta = np.radians(angle if w >= h else angle + 90)
        yy, xx = np.nonzero(inner)
        u = np.abs((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / (long_side / 2)
        where = np.bincount(np.minimum((u[accent] * ALONG).astype(int), ALONG - 1), minlength=ALONG)
        out["accent_where"] = strength * _unit(where.astype(np.float64))
    return out
