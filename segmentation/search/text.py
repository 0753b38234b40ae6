"""A description of a bag ("dark green hard-shell suitcase with a yellow ribbon") as a vector in the
weight-free descriptor's space (`segmentation.search.descriptor`), so a text query ranks crops.

What a description can say is put into the descriptor's blocks; everything else stays zero:
- the colour named first (before "with") is the main colour: the chromaticities the project's colour
  rules (`segmentation.colors.name_oklch`) call that term, as a histogram on the main lattice, and
  its typical lightness ("dark" / "light" shift it); further colours before "with" count less;
- colours after "with" (or "and" after it) are accents, weakly: accent lattice and their lightness
  relative to the main colour; "ribbon", "tag", "strap", "sticker" say where the accent sits;
- words for a kind of bag give the shape blocks (aspect ratio, fill of the rotated box) from common
  luggage proportions: suitcases and hard-shells are boxy, duffels long, backpacks squat.

`text_terms` splits a description into its colour terms and other words for a keyword filter.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

from segmentation.colors import TERMS, linear_to_oklch, name_oklch, srgb_to_linear
from segmentation.search import descriptor as d

# Everyday colour words -> the basic terms of `segmentation.colors`.
SYNONYMS = {
    "grey": "gray",
    "silver": "gray",
    "charcoal": "gray",
    "navy": "blue",
    "turquoise": "blue",
    "teal": "green",
    "olive": "green",
    "khaki": "green",
    "maroon": "red",
    "burgundy": "red",
    "crimson": "red",
    "violet": "purple",
    "lilac": "purple",
    "magenta": "pink",
    "gold": "yellow",
    "golden": "yellow",
    "beige": "brown",
    "tan": "brown",
    "cream": "white",
}
DARKER = {"dark", "deep", "navy", "charcoal", "maroon", "burgundy"}
LIGHTER = {"light", "pale", "pastel", "bright"}
LIGHT_SHIFT = 0.3  # log-lightness shift for "dark" / "light"
SECOND_MAIN = 0.5  # weight of a second colour before "with" ("red and black backpack")
ACCENT_WEIGHT = 1.0  # accent blocks keep the descriptor's weights (half the main colour's)
# Kind words -> (aspect range short/long, fill of the rotated box): common luggage proportions.
SHAPES = {
    "suitcase": ((0.55, 0.8), 0.95),
    "trolley": ((0.55, 0.8), 0.95),
    "hard-shell": ((0.55, 0.8), 0.95),
    "hardshell": ((0.55, 0.8), 0.95),
    "case": ((0.55, 0.8), 0.95),
    "duffel": ((0.35, 0.55), 0.85),
    "duffle": ((0.35, 0.55), 0.85),
    "holdall": ((0.35, 0.55), 0.85),
    "backpack": ((0.65, 0.85), 0.9),
    "rucksack": ((0.65, 0.85), 0.9),
    "parcel": ((0.5, 1.0), 1.0),
    "box": ((0.5, 1.0), 1.0),
}
# Where an accent sits along the long axis (centre .. end), by the word that names it.
PLACES = {
    "ribbon": (0.0, 0.3, 1.0),
    "tag": (0.0, 0.3, 1.0),
    "strap": (1.0, 0.5, 0.0),
    "belt": (1.0, 0.5, 0.0),
    "sticker": (0.6, 1.0, 0.3),
    "label": (0.6, 1.0, 0.3),
}
STOPWORDS = {"a", "an", "the", "with", "and", "of", "on", "in", "some", "details", "colour", "color", "coloured"}


def text_terms(text: str) -> tuple[list[str], list[str]]:
    """(colour terms in order of mention, other words) of a description; colour words are mapped to
    the basic terms ("grey" -> "gray", "navy" -> "blue")."""
    colours: list[str] = []
    others: list[str] = []
    for word in _words(text):
        term = _term(word)
        if term is not None:
            if term not in colours:
                colours.append(term)
        elif word not in STOPWORDS and word not in others:
            others.append(word)
    return colours, others


def describe_text(text: str) -> np.ndarray:
    """The description as a unit float32 vector of length `descriptor.DIM` (zero if it names nothing
    the descriptor can see)."""
    words = _words(text)
    cut = words.index("with") if "with" in words else len(words)
    mains = [(i, t) for i, w in enumerate(words[:cut]) if (t := _term(w)) is not None]
    accents = [(i, t) for i, w in enumerate(words[cut:], cut) if (t := _term(w)) is not None]
    blocks: dict[str, np.ndarray] = {}
    main_light = None
    if mains:
        main = np.zeros(d.BLOCKS["main"])
        for k, (_, term) in enumerate(mains):
            main += (1.0 if k == 0 else SECOND_MAIN) * _term_lattice(term)
        blocks["main"] = d._unit(main)
        i, term = mains[0]
        main_light = _term_light(term) + _shift(words, i)
        blocks["light"] = d.soft_bins(main_light, np.log(d.LIGHT), d.LIGHT_SIGMA)
    if accents:
        accent = np.zeros(d.BLOCKS["accent"])
        relative = np.zeros(d.BLOCKS["accent_light"])
        for i, term in accents:
            x, y, _ = _term_centre(term)
            accent += d.lattice_point(x, y, d.ACCENT_LATTICE, d.ACCENT_SIGMA)
            if main_light is not None:
                rel = _term_light(term) + _shift(words, i) - main_light
                relative += d.soft_bins(rel, d.RELATIVE_LIGHT, d.RELATIVE_SIGMA)
        blocks["accent"] = ACCENT_WEIGHT * d._unit(accent)
        if relative.any():
            blocks["accent_light"] = ACCENT_WEIGHT * d._unit(relative)
        places = [PLACES[w] for w in words[cut:] if w in PLACES]
        if places:
            blocks["accent_where"] = ACCENT_WEIGHT * d._unit(np.sum(places, axis=0))
    shapes = [SHAPES[w] for w in words if w in SHAPES]
    if shapes:
        (lo, hi), fill = shapes[0]
        spread = [d.soft_bins(a, d.ASPECT, d.ASPECT_SIGMA) for a in np.linspace(lo, hi, 6)]
        blocks["aspect"] = d._unit(np.sum(spread, axis=0))
        blocks["fill"] = d.soft_bins(fill, d.FILL, d.FILL_SIGMA)
    if not blocks:
        return np.zeros(d.DIM, np.float32)
    return d.assemble(blocks)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def _term(word: str) -> str | None:
    word = SYNONYMS.get(word, word)
    return word if word in TERMS else None


def _shift(words: list[str], i: int) -> float:
    """Log-lightness shift from the word before a colour ("dark", "light") or the colour word itself."""
    near = {words[i], words[i - 1] if i > 0 else ""}
    return -LIGHT_SHIFT * bool(near & DARKER) + LIGHT_SHIFT * bool(near & LIGHTER)


@cache
def _samples() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A regular sample of the sRGB cube in Oklab chromaticity (a/L, b/L), log L, and its term."""
    g = np.arange(4, 256, 8, dtype=np.float32)
    rgb = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    L, C, h = linear_to_oklch(srgb_to_linear(rgb))
    L = np.maximum(L, 0.02)
    rad = np.radians(h)
    return C * np.cos(rad) / L, C * np.sin(rad) / L, np.log(L), name_oklch(L, C, h)


@cache
def _term_lattice(term: str) -> np.ndarray:
    """Where on the main lattice the colour rules call a colour `term` (sqrt histogram, unit)."""
    x, y, _, names = _samples()
    sel = names == TERMS.index(term)
    wx = np.exp(-0.5 * ((x[sel, None] - d.LATTICE) / d.MAIN_SIGMA) ** 2)
    wy = np.exp(-0.5 * ((y[sel, None] - d.LATTICE) / d.MAIN_SIGMA) ** 2)
    return d._unit(np.sqrt(np.einsum("ni,nj->ij", wx, wy).ravel()))


@cache
def _term_centre(term: str) -> tuple[float, float, float]:
    """Median chromaticity and log lightness of the colours named `term`."""
    x, y, logL, names = _samples()
    sel = names == TERMS.index(term)
    return float(np.median(x[sel])), float(np.median(y[sel])), float(np.median(logL[sel]))


def _term_light(term: str) -> float:
    return _term_centre(term)[2]
