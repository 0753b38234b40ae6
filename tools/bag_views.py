"""Generated lost-bag search data: the same bag seen several times (development only; never deployed).

A bag's identity is its kind, base paint, second colour, pattern and size, drawn by
`tools.belt_scenes`' item painter from the bag's own seed, so every view shows the same bag. A view
puts it under a new pose (any rotation, scale), light (exposure, colour cast, one-sided shading),
partial occlusion (another item or a hand over part of it), background (a belt for the cameras, a
floor, carpet or car boot for a passenger's photo) and camera (blur, noise, JPEG), and crops it the
way the pipeline writes crops: the box of what is visible, with a small margin.

Colours are drawn so that many bags share one: a third of them black, then blue, grey and the
other terms, each from a few exemplar paints with jitter.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from tools.belt_scenes import COLOR_NAMES, EXEMPLARS, _item_sprite, _rotate

# Share of bags per base colour term: black dominates real luggage.
COLOUR_SHARES = {
    "black": 0.32,
    "blue": 0.14,
    "gray": 0.12,
    "red": 0.08,
    "green": 0.07,
    "brown": 0.07,
    "purple": 0.04,
    "pink": 0.04,
    "orange": 0.04,
    "yellow": 0.04,
    "white": 0.04,
}
KINDS = ("suitcase", "suitcase", "duffel", "backpack", "soft", "parcel")
# How a kind is called in a description (what a passenger or the model would say).
KIND_WORDS = {
    "suitcase": "suitcase",
    "duffel": "duffel bag",
    "backpack": "backpack",
    "soft": "bag",
    "parcel": "parcel",
    "pouch": "pouch",
}


@dataclass(frozen=True)
class Bag:
    """One bag's identity: what every view of it shares."""

    ident: int
    kind: str
    colour: str
    second_colour: str
    extra: str  # "ribbon", "strap", "sticker" or "" (plain)
    seed: int

    def description(self) -> str:
        """What its owner would write: "black suitcase with red details"."""
        what = {"ribbon": "a {} ribbon", "strap": "a {} strap", "sticker": "a {} sticker", "": "{} details"}
        return f"{self.colour} {KIND_WORDS[self.kind]} with " + what[self.extra].format(self.second_colour)


def bag(split: str, ident: int) -> Bag:
    rng = np.random.default_rng([0xBA6, 1 if split == "tuning" else 2, ident])
    names = list(COLOUR_SHARES)
    colour = str(rng.choice(names, p=np.array(list(COLOUR_SHARES.values())) / sum(COLOUR_SHARES.values())))
    second = str(rng.choice([n for n in COLOR_NAMES if n != colour]))
    extra = str(rng.choice(["ribbon", "strap", "sticker", ""], p=[0.2, 0.15, 0.15, 0.5]))
    return Bag(ident, str(rng.choice(KINDS)), colour, second, extra, int(rng.integers(1 << 31)))


def _shade(rng: np.random.Generator, rgb: tuple[int, int, int]) -> np.ndarray:
    """Another shade of an exemplar paint: lightness, saturation and hue drawn around it, as real
    luggage of one colour term comes in many shades (navy to royal blue)."""
    c = np.array(rgb, np.float32)
    mean = c.mean()
    c = mean + (c - mean) * rng.uniform(0.7, 1.3)  # saturation
    c = c[[0, 1, 2]] * rng.uniform(0.8, 1.2)  # lightness
    shift = rng.uniform(-0.08, 0.08)  # a little hue: move weight between neighbouring channels
    c = c + shift * (np.roll(c, 1) - c)
    return np.clip(c, 0, 255)


def _paints(rng: np.random.Generator, b: Bag) -> tuple[int, np.ndarray, np.ndarray]:
    """The bag's base exemplar index, base paint and second paint (the first draws of its seed)."""
    exemplar = int(rng.integers(len(EXEMPLARS[b.colour])))
    base = _shade(rng, EXEMPLARS[b.colour][exemplar])
    second = _shade(rng, EXEMPLARS[b.second_colour][int(rng.integers(len(EXEMPLARS[b.second_colour])))])
    return exemplar, base, second


def _sprite(b: Bag) -> tuple[np.ndarray, np.ndarray]:
    """The bag's albedo (float32 0..255) and mask, long side 220 px, unrotated; the same for every
    view. Half the bags carry something their owner would mention: a ribbon or tag at the handle, a
    luggage strap, or a sticker."""
    rng = np.random.default_rng(b.seed)
    _, base, second = _paints(rng, b)
    albedo, mask, _ = _item_sprite(rng, b.kind, base, second, 220.0)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    mark = rng.random()
    if b.extra == "ribbon":  # a ribbon or tag tied near one end
        cy, cx = y0 + (y1 - y0) * rng.uniform(0.3, 0.7), x0 + (x1 - x0) * rng.uniform(0.05, 0.2)
        r = (y1 - y0) * rng.uniform(0.08, 0.14)
        cv2.ellipse(
            albedo,
            (int(cx), int(cy)),
            (int(r * 0.6), int(r)),
            float(rng.uniform(0, 180)),
            0,
            360,
            tuple(float(v) for v in second),
            -1,
        )
    elif b.extra == "strap":  # a luggage strap around the short side
        sx = x0 + (x1 - x0) * rng.uniform(0.35, 0.65)
        half = (x1 - x0) * rng.uniform(0.03, 0.05)
        band = np.zeros_like(mask)
        band[:, int(sx - half) : int(sx + half)] = True
        albedo[band & mask] = second
    elif b.extra == "sticker":  # an airline or destination sticker
        sy, sx = y0 + (y1 - y0) * rng.uniform(0.2, 0.6), x0 + (x1 - x0) * rng.uniform(0.3, 0.7)
        hh, ww = (y1 - y0) * rng.uniform(0.12, 0.2), (x1 - x0) * rng.uniform(0.1, 0.18)
        paper = second if mark < 0.5 else np.array((235, 235, 228), np.float32)
        albedo[int(sy) : int(sy + hh), int(sx) : int(sx + ww)] = paper
    return albedo, mask


def _background(rng: np.random.Generator, h: int, w: int, where: str) -> np.ndarray:
    if where == "belt":
        grey = rng.uniform(30, 110)
        bg = np.full((h, w, 3), grey, np.float32) * rng.uniform(0.95, 1.05, 3)
        ribs = (np.sin(np.arange(w) / rng.uniform(3, 8)) * rng.uniform(1, 5)).astype(np.float32)
        bg += ribs[None, :, None]
    else:  # a floor, carpet or car boot in a passenger's photo
        base = rng.uniform(40, 200, 3)
        bg = np.full((h, w, 3), 1, np.float32) * base
        grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(1, 6))
        bg *= (1 + grain * rng.uniform(0.05, 0.2))[..., None]
    return bg


def view(b: Bag, seed: int, *, where: str = "belt", occlude: float = 0.3) -> Image.Image:
    """One photo crop of bag `b`: pose, light, occlusion, background and camera from `seed`."""
    rng = np.random.default_rng([b.seed, seed])
    albedo, mask = _sprite(b)
    scale = rng.uniform(0.45, 1.0) if where == "belt" else rng.uniform(0.7, 1.3)
    albedo = cv2.resize(albedo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.uint8), (albedo.shape[1], albedo.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    albedo, mask = _rotate(albedo, mask, float(rng.uniform(0, 360)))
    h, w = mask.shape
    pad = int(0.25 * max(h, w))
    canvas = _background(rng, h + 2 * pad, w + 2 * pad, where)
    region = canvas[pad : pad + h, pad : pad + w]
    # one-sided shading across the item, and a soft contact shadow around it
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1 + rng.uniform(0.05, 0.25) * ((xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang))
    shadow = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 6) * rng.uniform(0.2, 0.5)
    region *= (1 - shadow)[..., None]
    region[mask] = (albedo * shade[..., None])[mask]
    visible = np.zeros(canvas.shape[:2], bool)
    visible[pad : pad + h, pad : pad + w] = mask
    if rng.random() < occlude:  # another item or a hand over up to a third of it
        ys, xs = np.nonzero(visible)
        cy, cx = ys[int(rng.integers(len(ys)))], xs[int(rng.integers(len(xs)))]
        r = int(math.sqrt(visible.sum() * rng.uniform(0.08, 0.3)))
        colour = rng.uniform(20, 230, 3)
        cover = np.zeros_like(visible)
        cv2.ellipse(
            cover.view(np.uint8),
            (int(cx), int(cy)),
            (r, int(r * rng.uniform(0.5, 1))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
        canvas[cover] = colour
        visible &= ~cover
    # light: exposure and colour cast of this camera and moment
    gain = rng.uniform(0.65, 1.35) if where == "belt" else rng.uniform(0.6, 1.5)
    canvas *= gain * rng.uniform(0.95, 1.05, 3)
    canvas = cv2.GaussianBlur(canvas, (0, 0), float(rng.uniform(0.3, 1.4)))
    canvas += rng.normal(0, rng.uniform(1, 5), canvas.shape).astype(np.float32)
    ys, xs = np.nonzero(visible)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = 0.04 if where == "belt" else 0.15  # the model's box margin; a passenger frames loosely
    my, mx = int((y1 - y0) * m), int((x1 - x0) * m)
    crop = np.clip(canvas[max(0, y0 - my) : y1 + my, max(0, x0 - mx) : x1 + mx], 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "JPEG", quality=int(rng.integers(70, 92)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


# Look-alike tolerances: below these no view can separate two plain bags of one kind and colour
# term. Aspect: what a rotated, blurred, partly occluded crop pins the object's aspect to.
# Chromaticity: the views' colour cast (+-5 % per channel) moves Oklab (a/L, b/L) by about this.
TWIN_ASPECT = 0.03
TWIN_CHROMA = 0.03


@dataclass(frozen=True)
class Build:
    """What the generator drew for one bag, for the twin ceiling."""

    exemplar: int  # index of the base paint's exemplar in its colour term
    chroma: tuple[float, float]  # the base paint's Oklab (a/L, b/L): unchanged by exposure
    aspect: float  # short / long side of the unrotated sprite
    accent: bool  # anything in the second colour shows (extra, pattern, strap, pocket) or an extra


def build(b: Bag) -> Build:
    """Replays the bag's seed: its paints, its aspect and whether its second colour shows anywhere
    (the sprite is drawn twice from one random state, with and without the second paint)."""
    from segmentation.colors import linear_to_oklch, srgb_to_linear

    rng = np.random.default_rng(b.seed)
    exemplar, base, second = _paints(rng, b)
    state = rng.bit_generator.state
    albedo, mask, _ = _item_sprite(rng, b.kind, base, second, 220.0)
    rng.bit_generator.state = state
    plain, _, _ = _item_sprite(rng, b.kind, base, base, 220.0)
    ys, xs = np.nonzero(mask)
    aspect = (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1)
    L, C, h = linear_to_oklch(srgb_to_linear(base.reshape(1, 3)))
    rad = np.radians(float(h[0]))
    chroma = (float(C[0] * np.cos(rad) / L[0]), float(C[0] * np.sin(rad) / L[0]))
    return Build(exemplar, chroma, float(aspect), bool(b.extra) or not np.array_equal(albedo, plain))


def twins(bags: list[Bag], n_queries: int, *, strict: bool = False) -> list[int]:
    """For each of the first `n_queries` bags, how many other bags in `bags` it cannot be told from
    by construction: plain (no accent of any kind), same kind and colour term, and either the same
    exemplar paint (`strict`) or base chromaticity within TWIN_CHROMA and aspect within TWIN_ASPECT.
    Lightness is not compared: the views' exposure range (x0.6-1.5) covers the paints' (x0.8-1.2)."""
    builds = [build(b) for b in bags]
    counts = []
    for i in range(n_queries):
        bi, qi = bags[i], builds[i]
        n = 0
        for j, (bj, qj) in enumerate(zip(bags, builds, strict=True)):
            if j == i or qi.accent or qj.accent or (bi.kind, bi.colour) != (bj.kind, bj.colour):
                continue
            if strict:
                n += qi.exemplar == qj.exemplar
            else:
                close = math.dist(qi.chroma, qj.chroma) < TWIN_CHROMA and abs(qi.aspect - qj.aspect) < TWIN_ASPECT
                n += close
        counts.append(n)
    return counts


def occluded(b: Bag, seed: int, *, where: str = "belt") -> bool:
    """Whether `view(b, seed, where=where)` puts something over the bag: the occlusion draw comes
    after every other draw but the camera's, so the view without it differs only if it happened."""
    return not np.array_equal(np.asarray(view(b, seed, where=where)), np.asarray(view(b, seed, where=where, occlude=0)))
