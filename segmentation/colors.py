"""Basic colour terms (Berlin and Kay's eleven) for pixels, robust to the light they were seen in.

Colours are judged in Oklab (Ottosson 2020), a perceptual space whose hue angle is close to
constant along lines of equal perceived hue (CIELAB bends blue into purple). Two properties make
the rules hold up under changing light:

- scaling the light by k scales Oklab L, a and b alike (by k**(1/3)), so the ratio C/L
  ("saturation") and the hue angle do not change with exposure; the chromatic decisions use those;
- only black / grey / white and the dark-or-light splits (brown vs orange, pink vs red) use L,
  with generous margins; callers remove colour casts and uneven light first (see `white_balance`).

    >>> basic_color_name((200, 30, 30)), basic_color_name((30, 70, 160)), basic_color_name((128, 128, 128))
    ('red', 'blue', 'gray')
    >>> basic_color_name((139, 69, 19)), basic_color_name((255, 140, 0)), basic_color_name((255, 105, 180))
    ('brown', 'orange', 'pink')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TERMS = ("black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
BLACK, WHITE, GRAY, RED, ORANGE, YELLOW, GREEN, BLUE, PURPLE, PINK, BROWN = range(len(TERMS))

# Oklab thresholds (L in 0..1). Chosen from the CSS/X11 colours whose basic term is unambiguous
# (crimson, firebrick, darkorange, gold, forestgreen, royalblue, navy, indigo, hotpink,
# saddlebrown, sienna, slategray, ...), with margins for a +-30 % exposure error.
ACHROMATIC_C = 0.03  # C below this is achromatic whatever the lightness
ACHROMATIC_SAT = 0.075  # ... and so is C / L below this (slate grey 0.05, light pink 0.085)
BLACK_L = 0.37  # achromatic L below: black; above WHITE_L: white; between: grey
WHITE_L = 0.80
# Yellow hue (h >= 88) darker than 0.66 is still yellow if at least this light and this saturated,
# so yellow items in shade or dim light are not called brown or green (browns stay below hue 82).
YELLOW_DIM_L = 0.5
YELLOW_DIM_SAT = 0.16

_M1 = np.array(
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ],
    np.float32,
)
_M2 = np.array(
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ],
    np.float32,
)
_LINEAR_LUT = None


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB 0..255 (any shape ...x3, any dtype) -> linear light 0..1, float32."""
    global _LINEAR_LUT
    values = np.asarray(rgb)
    if values.dtype == np.uint8:
        if _LINEAR_LUT is None:
            c = np.arange(256, dtype=np.float64) / 255
            _LINEAR_LUT = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)
        return _LINEAR_LUT[values]
    c = np.clip(values.astype(np.float32) / 255, 0, 1)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_oklch(linear: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear RGB (...x3, 0..1) -> Oklab lightness L, chroma C and hue angle h in degrees [0, 360)."""
    lms = np.cbrt(np.maximum(linear.reshape(-1, 3) @ _M1.T, 0))
    lab = lms @ _M2.T
    shape = linear.shape[:-1]
    L = lab[:, 0].reshape(shape)
    C = np.hypot(lab[:, 1], lab[:, 2]).reshape(shape)
    h = (np.degrees(np.arctan2(lab[:, 2], lab[:, 1])) % 360).reshape(shape)
    return L, C, h


def name_oklch(L: np.ndarray, C: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Index into `TERMS` for each Oklab (L, C, h); vectorised."""
    L = np.asarray(L, np.float32)
    C = np.asarray(C, np.float32)
    h = np.asarray(h, np.float32)
    sat = C / np.maximum(L, 1e-3)
    out = np.full(L.shape, GRAY, np.int8)
    achromatic = (C < ACHROMATIC_C) | (sat < ACHROMATIC_SAT)
    out[achromatic & (L < BLACK_L)] = BLACK
    out[achromatic & (L > WHITE_L)] = WHITE
    chroma = ~achromatic
    # Very dark pixels with a little chroma are black (noise and dark casts), unless clearly coloured.
    chroma &= ~((L < 0.22) & (sat < 0.25))
    out[~achromatic & ~chroma] = BLACK

    def put(cond, term):
        out[chroma & cond] = term

    pinkish = (h >= 340) | (h < 14)
    put(pinkish & (L >= 0.55), PINK)
    put(pinkish & (L < 0.55), RED)
    reds = (h >= 14) & (h < 40)
    put(reds, RED)
    put(reds & (L > 0.78) & (sat < 0.16), PINK)  # light salmon pinks
    put(reds & (L < 0.5) & (sat < 0.24), BROWN)  # reddish browns (sienna-like)
    oranges = (h >= 40) & (h < 80)
    put(oranges, BROWN)
    put(oranges & (sat >= 0.185) & (L >= 0.5), ORANGE)
    yellows = (h >= 80) & (h < 112)
    put(yellows & (L >= 0.66), YELLOW)
    put(yellows & (L < 0.66) & (h < 100), BROWN)
    put(yellows & (L < 0.66) & (h >= 100), GREEN)
    # a saturated yellow in shade or dim light stays yellow (the browns are duller and redder)
    put(yellows & (h >= 88) & (L >= YELLOW_DIM_L) & (sat >= YELLOW_DIM_SAT), YELLOW)
    put((h >= 112) & (h < 200), GREEN)
    put((h >= 200) & (h < 290), BLUE)
    put((h >= 290) & (h < 320), PURPLE)
    magentas = (h >= 320) & (h < 340)
    put(magentas & (L < 0.62), PURPLE)
    put(magentas & (L >= 0.62), PINK)
    return out


def basic_color_name(rgb: Sequence[float]) -> str:
    """The basic colour term of one sRGB colour (0..255 per channel)."""
    L, C, h = linear_to_oklch(srgb_to_linear(np.asarray(rgb, np.float32).reshape(1, 3)))
    return TERMS[int(name_oklch(L, C, h)[0])]


def dominant_colors(pixels: np.ndarray, *, weights: np.ndarray | None = None) -> list[tuple[str, float]]:
    """Colour terms of `pixels` (N x 3 sRGB, 0..255) with their shares, largest first.

    Each pixel is named on its own and the names are counted (a histogram over the eleven
    terms), so small highlights, seams or a strap do not shift the answer the way a mean colour
    would. Shares add up to 1. Empty input gives [].

    >>> dominant_colors(np.array([[200, 30, 30]] * 3 + [[240, 240, 240]]))
    [('red', 0.75), ('white', 0.25)]
    """
    px = np.asarray(pixels).reshape(-1, 3)
    if not len(px):
        return []
    L, C, h = linear_to_oklch(srgb_to_linear(px))
    names = name_oklch(L, C, h)
    counts = np.bincount(names, weights=weights, minlength=len(TERMS)).astype(np.float64)
    total = counts.sum()
    if total <= 0:
        return []
    order = np.argsort(-counts, kind="stable")
    return [(TERMS[i], round(float(counts[i] / total), 4)) for i in order if counts[i] > 0]


def white_balance(pixels: np.ndarray, neutral_linear: Sequence[float], *, gain: float = 1.0) -> np.ndarray:
    """Linear-RGB `pixels` corrected so that `neutral_linear` (a colour known to be grey, e.g. the
    belt's average) comes out grey, and multiplied by `gain` (local light compensation)."""
    neutral = np.maximum(np.asarray(neutral_linear, np.float32), 1e-6)
    scale = (neutral.mean() / neutral) * gain
    return np.asarray(pixels, np.float32) * scale


def linear_to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Linear 0..1 -> sRGB uint8."""
    c = np.clip(linear, 0, 1)
    s = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return np.clip(np.round(s * 255), 0, 255).astype(np.uint8)
