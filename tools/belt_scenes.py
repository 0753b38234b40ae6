"""Synthetic conveyor-belt scenes with exact ground truth (development only; never deployed).

    .venv/bin/python -m tools.belt_scenes OUT_DIR [--split tuning|heldout] [--n 40]

writes OUT_DIR/<split>-NNNN.jpg, OUT_DIR/<split>-NNNN-background.jpg for fixed-camera scenes, and
OUT_DIR/<split>.json in COCO format (category "item"; one RLE mask per item covering its VISIBLE
pixels, occlusion by later items applied exactly; `color` = basic colour term of the item's base
paint; `kind`; per image `scene`, `empty` and `background` for fixed-camera scenes).

What is drawn. A belt: dark rubber (or, sometimes, a lighter grey PVC belt), longitudinal ribs,
rubber grain, wear, transverse seams (a little slanted), metal side rails with bolts, faded paint
(text, arrows, chevrons, lane lines). On it, 0-8 items: suitcases (rounded boxes with wheels,
handles, shell grooves, specular highlight), duffel bags (capsules with zip and straps),
backpacks (pocket, handle loop), parcels (tape, shipping label with barcode), soft irregular bags
and small pouches; plain, striped, dotted or with a logo; in many colours, including black items on
a black belt and grey items on a grey belt; rotated; apart, touching or overlapping. Every item
casts a soft shadow and a contact shadow; its edges fall off (bevel) and it is lit from one side.
The whole scene is lit unevenly (gradient, vignetting, a spot), colour-cast, slightly blurred,
noisy and JPEG-compressed. A second scene type, "carousel", is a fixed camera looking at a baggage
carousel in a hall (floor tiles, wall, posters, metal slats); it comes with a reference image of
the same empty scene under different light, for the background-difference path.

Realism constraints (audit of the generator against a fixed conveyor camera; both only reject
or re-shade what a real installation would not show, neither makes scenes easier in general):
- every item shows at least MIN_VISIBLE_AREA (0.15 %) of the image, after occlusion and the
  image border. A belt camera is mounted so that the smallest item it must report spans at least
  that much (the detector's documented `min_area`); every painted item is in the ground truth.
  Placements that would leave an item smaller are rejected and redrawn, like the other placement
  rules (55 % visibility, on the belt).
- an item's base paint differs from the belt's albedo by at least MIN_PAINT_CONTRAST (0.15, about
  16 %) in its strongest channel; otherwise another shade of the same colour term is drawn (from a
  separate random stream, so the rest of the scene is unchanged). A grey bag exactly the belt's
  grey in every channel is invisible to a person except by its shadow; the hard cases the issue
  names stay: black items on the black belt (0.15-0.5 log contrast), grey on the grey belt,
  touching and heavily overlapping items (each still its own ground-truth instance), and items
  cut by the image border.
Ground truth was checked: one instance per item including its patterns (logo patch, stripes,
dots, straps, wheels), covering exactly its visible pixels (later items cut out).

Splits. `tuning` is what the detector was developed on. `heldout` uses disjoint seeds and is
only used to report figures and in the tests. Both span the same parameter ranges (resolutions,
belt directions, crowding), so figures on the tuning split do not flatter the detector; the
held-out scenes themselves were never used to choose anything in the detector.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Basic colour term -> exemplar sRGB base paints of luggage in that colour. Each exemplar is an
# unambiguous member of its term (no teal, olive, khaki, beige, maroon-or-brown cases).
EXEMPLARS: dict[str, list[tuple[int, int, int]]] = {
    "black": [(22, 22, 24), (30, 28, 32), (20, 22, 30), (34, 31, 29)],
    "white": [(236, 236, 230), (226, 229, 234), (242, 239, 226)],
    "gray": [(128, 128, 130), (108, 110, 116), (158, 158, 156), (140, 138, 132)],
    "red": [(185, 30, 35), (205, 40, 42), (160, 22, 32), (215, 55, 50)],
    "orange": [(236, 120, 30), (225, 100, 22), (246, 142, 52)],
    "yellow": [(236, 202, 40), (242, 216, 64), (224, 188, 24)],
    "green": [(40, 132, 62), (62, 152, 72), (30, 96, 56), (92, 168, 62)],
    "blue": [(30, 70, 160), (42, 92, 200), (26, 42, 104), (62, 122, 204)],
    "purple": [(112, 50, 142), (132, 62, 172), (84, 40, 112)],
    "pink": [(240, 142, 182), (228, 112, 160), (248, 172, 202)],
    "brown": [(122, 76, 40), (150, 100, 56), (100, 62, 36), (178, 136, 90)],
}
COLOR_NAMES = tuple(EXEMPLARS)
KINDS = ("suitcase", "duffel", "backpack", "parcel", "soft", "pouch")


@dataclass(frozen=True)
class SplitParams:
    sizes: tuple[tuple[int, int], ...]
    belt_dark_lum: tuple[float, float]
    grey_belt_p: float
    grey_belt_lum: tuple[float, float]
    light_gain: tuple[float, float]
    gradient: float
    vignette: tuple[float, float]
    spot_p: float
    cast: float
    noise: tuple[float, float]
    jpeg_quality: tuple[int, int]
    transpose_p: float
    empty_p: float
    max_items: int
    touch_p: float
    carousel_p: float
    seam_slant_deg: float
    shadow_strength: tuple[float, float]
    shadow_blur: tuple[float, float]
    paint_alpha: tuple[float, float]
    black_item_p: float
    ref_light_change: float


SPLITS: dict[str, SplitParams] = {
    "tuning": SplitParams(
        sizes=((1280, 720), (1440, 810), (1024, 576), (1920, 1080), (800, 600)),
        belt_dark_lum=(30, 76),
        grey_belt_p=0.25,
        grey_belt_lum=(82, 122),
        light_gain=(0.7, 1.25),
        gradient=0.35,
        vignette=(0.0, 0.4),
        spot_p=0.3,
        cast=0.09,
        noise=(1.5, 4.0),
        jpeg_quality=(80, 92),
        transpose_p=0.2,
        empty_p=0.12,
        max_items=8,
        touch_p=0.45,
        carousel_p=0.12,
        seam_slant_deg=2.5,
        shadow_strength=(0.2, 0.55),
        shadow_blur=(4, 12),
        paint_alpha=(0.2, 0.6),
        black_item_p=0.22,
        ref_light_change=0.22,
    ),
    "heldout": SplitParams(
        sizes=((1280, 720), (1600, 900), (1024, 768), (1920, 1080), (960, 720)),
        belt_dark_lum=(32, 74),
        grey_belt_p=0.25,
        grey_belt_lum=(84, 120),
        light_gain=(0.7, 1.25),
        gradient=0.35,
        vignette=(0.05, 0.4),
        spot_p=0.3,
        cast=0.09,
        noise=(1.5, 4.0),
        jpeg_quality=(80, 92),
        transpose_p=0.2,
        empty_p=0.12,
        max_items=8,
        touch_p=0.45,
        carousel_p=0.12,
        seam_slant_deg=2.5,
        shadow_strength=(0.2, 0.55),
        shadow_blur=(4, 12),
        paint_alpha=(0.2, 0.6),
        black_item_p=0.22,
        ref_light_change=0.22,
    ),
}


# Realism floors (see the module docstring, "Realism constraints").
MIN_VISIBLE_AREA = 0.0015  # every item shows at least this share of the image
MIN_PAINT_CONTRAST = 0.15  # |log ratio| of item paint to belt albedo, in the strongest channel


def _paint_contrast(paint: np.ndarray, belt: np.ndarray) -> float:
    """Largest per-channel |log ratio| between an item's base paint and the belt's albedo."""
    return float(np.abs(np.log((np.asarray(paint, np.float64) + 8) / (np.asarray(belt, np.float64) + 8))).max())


@dataclass
class Item:
    kind: str
    color: str
    mask: np.ndarray  # full-image bool mask of the visible part


@dataclass
class Scene:
    image: Image.Image
    items: list[Item]
    kind: str  # "belt" or "carousel"
    background: Image.Image | None = None
    split: str = ""
    index: int = 0
    meta: dict = field(default_factory=dict)


def _rng(split: str, index: int, salt: str = "") -> np.random.Generator:
    digest = hashlib.sha256(f"belt-scenes:{split}:{index}:{salt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(size)))


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), sigma) if sigma > 0 else a


# ---------------------------------------------------------------------------------- belt


def _belt(rng: np.random.Generator, p: SplitParams, width: int, height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Albedo of belt + rails (float32 HxWx3) and the belt's rows [top, bottom)."""
    s = height / 720
    grey = rng.random() < p.grey_belt_p
    lum = _u(rng, p.grey_belt_lum if grey else p.belt_dark_lum)
    tint = rng.normal(0, 0.04, 3)
    base = np.clip(lum * (1 + tint - tint.mean()), 5, 250).astype(np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    # ribs along the running direction, rubber grain, wear patches
    period = rng.uniform(5, 14) * s
    ribs = rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * ys / period + rng.uniform(0, 6))
    grain = _blur(rng.normal(0, 1, (height, width)).astype(np.float32), 1.2) * rng.uniform(0.03, 0.07)
    wear = _blur(rng.normal(0, 1, (height // 8 + 1, width // 8 + 1)).astype(np.float32), 3)
    wear = cv2.resize(wear, (width, height), interpolation=cv2.INTER_LINEAR) * rng.uniform(0.03, 0.08)
    shade = 1 + ribs + grain + wear
    belt = base[None, None, :] * shade[..., None]

    rail_top = int(height * rng.uniform(0.06, 0.12))
    rail_bottom = int(height * rng.uniform(0.06, 0.12))
    top, bottom = rail_top, height - rail_bottom

    # transverse seams, slightly slanted, darker or lighter
    slant = math.tan(math.radians(rng.uniform(-p.seam_slant_deg, p.seam_slant_deg)))
    x = rng.uniform(0, 200 * s)
    seams = np.zeros((height, width), np.float32)
    while x < width + 50 * s:
        center = x + slant * (ys - height / 2)
        half = rng.uniform(1.0, 3.0) * s
        seams += ((np.abs(xs - center) < half) * rng.choice([-0.35, -0.25, 0.2])).astype(np.float32)
        x += rng.uniform(280, 620) * s
    belt *= (1 + _blur(seams, 0.7))[..., None]
    belt = _paint(rng, p, belt, top, bottom, s)

    # metal rails with a cylindrical profile, a specular line and bolts
    image = belt
    for y0, y1, flip in ((0, rail_top, False), (bottom, height, True)):
        h = y1 - y0
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        if flip:
            t = t[::-1]
        metal = rng.uniform(120, 185)
        profile = metal * (0.55 + 0.45 * np.sin(np.pi * (0.15 + 0.8 * t)))
        profile = profile + 60 * np.exp(-(((t - rng.uniform(0.3, 0.6)) / 0.06) ** 2))
        rail = np.repeat(profile, width, axis=1)[..., None] * np.array([1.0, 1.01, 1.04], np.float32)
        rail = rail * (1 + _blur(rng.normal(0, 0.02, (h, width)).astype(np.float32), 1))[..., None]
        image[y0:y1] = rail
        bolt_y = y0 + h // 2
        pitch = rng.uniform(90, 160) * s
        bx = rng.uniform(0, pitch)
        bolts = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(bolts)
        r = max(2, h * 0.12)
        while bx < width:
            draw.ellipse((bx - r, bolt_y - r, bx + r, bolt_y + r), fill=255)
            bx += pitch
        b = np.asarray(bolts, np.float32)[..., None] / 255
        image = image * (1 - 0.55 * b)
    # lip shadow of the rails onto the belt
    lip: np.ndarray = np.ones((height, 1), np.float32)
    d = np.minimum(np.abs(ys - top), np.abs(ys - bottom))
    lip = 1 - 0.25 * np.exp(-d / (6 * s)) * ((ys >= top) & (ys < bottom))
    image = image * lip[..., None]
    return image.astype(np.float32), (top, bottom)


def _paint(rng, p: SplitParams, belt: np.ndarray, top: int, bottom: int, s: float) -> np.ndarray:
    """Faded paint on the belt: words, arrows, chevrons, a lane line (thin strokes, worn)."""
    height, width = belt.shape[:2]
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    words = ["THIS WAY", "CAUTION", "ZONE 3", "BELT 7", "KEEP CLEAR", "FRAGILE", "B12", "OUT"]
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, width * 0.9), rng.uniform(top, bottom - 40 * s)
        draw.text((x, y), str(rng.choice(words)), fill=255, font=_font(rng.uniform(22, 46) * s))
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(top + 30 * s, bottom - 30 * s)
        size = rng.uniform(25, 60) * s
        w = max(2, int(rng.uniform(3, 8) * s))
        direction = rng.choice([-1, 1])
        if rng.random() < 0.5:  # chevron
            draw.line(
                [
                    (cx - direction * size / 2, cy - size / 2),
                    (cx + direction * size / 2, cy),
                    (cx - direction * size / 2, cy + size / 2),
                ],
                fill=255,
                width=w,
                joint="curve",
            )
        else:  # arrow
            draw.line([(cx - direction * size, cy), (cx + direction * size, cy)], fill=255, width=w)
            draw.line(
                [
                    (cx + direction * (size - size / 2.5), cy - size / 2.5),
                    (cx + direction * size, cy),
                    (cx + direction * (size - size / 2.5), cy + size / 2.5),
                ],
                fill=255,
                width=w,
            )
    if rng.random() < 0.3:
        y = rng.uniform(top + 20 * s, bottom - 20 * s)
        draw.line([(0, y), (width, y)], fill=255, width=max(2, int(rng.uniform(2, 6) * s)))
    alpha = np.asarray(layer, np.float32) / 255
    if not alpha.any():
        return belt
    wear = _blur(rng.uniform(0, 1, (height, width)).astype(np.float32), 2.0)
    wear = np.clip((wear - wear.mean()) * 6 + 0.7, 0, 1)
    alpha = _blur(alpha, 0.8) * _u(rng, p.paint_alpha) * wear
    color = np.array(rng.choice([(225, 225, 215), (220, 190, 50), (230, 140, 40)]), np.float32)
    return belt * (1 - alpha[..., None]) + color * alpha[..., None]


# ---------------------------------------------------------------------------------- items


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> np.ndarray:
    c = np.array(rgb, np.float32)
    c = c * rng.uniform(0.92, 1.07)
    mean = c.mean()
    c = mean + (c - mean) * rng.uniform(0.88, 1.1)
    return np.clip(c, 0, 255)


def _pick_color(rng: np.random.Generator, p: SplitParams, belt_grey: bool, exclude: str | None = None) -> str:
    if rng.random() < p.black_item_p and exclude != "black":
        return "black"
    if belt_grey and rng.random() < 0.2 and exclude != "gray":
        return "gray"
    names = [n for n in COLOR_NAMES if n not in ("black", exclude)]
    return str(rng.choice(names))


def _item_sprite(
    rng: np.random.Generator, kind: str, base: np.ndarray, second: np.ndarray, long_side: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """An unrotated item: albedo (h, w, 3 float32) and mask (h, w bool), long side horizontal."""
    aspect = {
        "suitcase": (0.55, 0.8),
        "duffel": (0.36, 0.55),
        "backpack": (0.65, 0.85),
        "parcel": (0.5, 1.0),
        "soft": (0.55, 0.95),
        "pouch": (0.5, 0.8),
    }[kind]
    L = long_side
    S = L * rng.uniform(*aspect)
    pad = int(0.08 * L) + 4
    W, H = int(L + 2 * pad), int(S + 2 * pad)
    x0, y0, x1, y1 = pad, pad, pad + L, pad + S
    mask = Image.new("L", (W, H), 0)
    md = ImageDraw.Draw(mask)
    alb = Image.new("RGB", (W, H), tuple(int(v) for v in base))
    ad = ImageDraw.Draw(alb)
    dark = tuple(int(v) for v in np.clip(base * 0.55, 0, 255))
    black = tuple(int(v) for v in rng.uniform(18, 35, 3))
    info = {"hard": False, "bevel": rng.uniform(0.25, 0.45), "dome": 0.12}

    def both(fn, box, **kw):
        getattr(md, fn)(box, fill=255, **{k: v for k, v in kw.items() if k != "color"})
        getattr(ad, fn)(
            box, fill=kw.get("color", tuple(int(v) for v in base)), **{k: v for k, v in kw.items() if k != "color"}
        )

    if kind == "suitcase":
        info.update(hard=rng.random() < 0.6, dome=0.05)
        r = S * rng.uniform(0.08, 0.2)
        both("rounded_rectangle", (x0, y0, x1, y1), radius=r)
        wr = S * 0.07
        for wy in (y0 + wr * 1.2, y1 - wr * 1.2):  # wheels at one end, sticking out a little
            both("ellipse", (x1 - wr * 1.2, wy - wr, x1 + wr * 0.6, wy + wr), color=black)
        hw = S * rng.uniform(0.25, 0.4)  # telescopic handle housing at the other end
        ad.rounded_rectangle(
            (x0 + S * 0.05, (y0 + y1) / 2 - hw / 2, x0 + S * 0.12, (y0 + y1) / 2 + hw / 2), radius=3, fill=black
        )
        if info["hard"]:
            for k in range(int(rng.integers(3, 6))):
                gy = y0 + S * (0.2 + 0.6 * k / 4)
                ad.line([(x0 + L * 0.15, gy), (x1 - L * 0.15, gy)], fill=dark, width=max(2, int(S * 0.012)))
        elif rng.random() < 0.6:
            ad.rounded_rectangle(
                (x0 + L * 0.2, y0 + S * 0.15, x1 - L * 0.2, y1 - S * 0.15),
                radius=r / 2,
                outline=dark,
                width=max(1, int(S * 0.01)),
            )
        if rng.random() < 0.5:  # carry handle on a long side
            ad.rounded_rectangle(
                ((x0 + x1) / 2 - L * 0.1, y0 + S * 0.03, (x0 + x1) / 2 + L * 0.1, y0 + S * 0.09), radius=3, fill=black
            )
    elif kind == "duffel":
        both("rounded_rectangle", (x0, y0, x1, y1), radius=S / 2)
        ad.line(
            [(x0 + L * 0.18, (y0 + y1) / 2), (x1 - L * 0.18, (y0 + y1) / 2)], fill=dark, width=max(2, int(S * 0.03))
        )
        strap = tuple(int(v) for v in (second if rng.random() < 0.5 else np.array(black)))
        for fx in (0.36, 0.64):
            sx = x0 + L * fx
            ad.rectangle((sx - L * 0.025, y0, sx + L * 0.025, y1), fill=strap)
        md.rounded_rectangle((x0, y0, x1, y1), radius=S / 2, fill=255)
    elif kind == "backpack":
        r = S * rng.uniform(0.2, 0.35)
        both("rounded_rectangle", (x0, y0, x1, y1), radius=r)
        pc = tuple(int(v) for v in (base * 0.85 if rng.random() < 0.6 else second))
        ad.rounded_rectangle(
            (x0 + L * 0.45, y0 + S * 0.18, x1 - L * 0.08, y1 - S * 0.18),
            radius=r * 0.6,
            fill=pc,
            outline=dark,
            width=max(1, int(S * 0.012)),
        )
        ad.rounded_rectangle(
            (x0 + L * 0.04, (y0 + y1) / 2 - S * 0.12, x0 + L * 0.1, (y0 + y1) / 2 + S * 0.12), radius=3, fill=black
        )
    elif kind == "parcel":
        info.update(bevel=rng.uniform(0.18, 0.3), dome=0.0)
        both("rectangle", (x0, y0, x1, y1))
        tape = (200, 170, 110) if rng.random() < 0.5 else tuple(int(v) for v in np.clip(base * 1.12, 0, 255))
        tw = S * rng.uniform(0.1, 0.16)
        ad.rectangle((x0, (y0 + y1) / 2 - tw / 2, x1, (y0 + y1) / 2 + tw / 2), fill=tape)
        if rng.random() < 0.6:
            lx, ly = x0 + L * rng.uniform(0.08, 0.5), y0 + S * 0.08
            lw, lh = L * 0.28, S * 0.26
            ad.rectangle((lx, ly, lx + lw, ly + lh), fill=(235, 235, 232))
            for k in range(12):
                bx = lx + lw * (0.1 + 0.8 * k / 12)
                ad.line([(bx, ly + lh * 0.5), (bx, ly + lh * 0.9)], fill=(20, 20, 20), width=1 + k % 2)
    elif kind in ("soft", "pouch"):
        n = 72
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        rad = np.ones(n)
        if kind == "soft":
            for k in (2, 3, 4):
                rad += rng.uniform(0, 0.12 / (k - 1)) * np.cos(k * th + rng.uniform(0, 6))
        pts = [
            ((x0 + x1) / 2 + L / 2 * r * math.cos(t) / rad.max(), (y0 + y1) / 2 + S / 2 * r * math.sin(t) / rad.max())
            for r, t in zip(rad, th, strict=False)
        ]
        both("polygon", pts)
        if kind == "pouch" and rng.random() < 0.6:
            ad.line(
                [(x0 + L * 0.2, y0 + S * 0.3), (x1 - L * 0.2, y0 + S * 0.3)], fill=dark, width=max(1, int(S * 0.04))
            )
        info.update(dome=0.2 if kind == "soft" else 0.1)

    m = np.asarray(mask) > 127
    a = np.asarray(alb, np.float32).copy()
    # pattern (not on parcels): stripes, dots or a logo patch, always a minority of the item
    if kind not in ("parcel", "pouch") and rng.random() < 0.3:
        style = rng.choice(["stripes", "dots", "logo"])
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        if style == "stripes":
            ang = rng.uniform(0, np.pi)
            period = S * rng.uniform(0.25, 0.45)
            u = (xx * math.cos(ang) + yy * math.sin(ang)) / period
            pat = (u - np.floor(u)) < rng.uniform(0.2, 0.32)
        elif style == "dots":
            period = S * rng.uniform(0.18, 0.3)
            pat = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period * 0.28) ** 2
        else:
            cx, cy = W / 2 + rng.uniform(-0.2, 0.2) * L, H / 2
            pat = (np.abs(xx - cx) < L * 0.15) & (np.abs(yy - cy) < S * 0.18)
        a[pat & m] = second
    # fabric / shell texture
    a *= (1 + _blur(rng.normal(0, 1, (H, W)).astype(np.float32), 0.8) * (0.02 if info["hard"] else 0.05))[..., None]
    return a, m, info


def _rotate(a: np.ndarray, m: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = m.shape
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    W, H = math.ceil(w * c + h * s) + 2, math.ceil(w * s + h * c) + 2
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    M[0, 2] += W / 2 - w / 2
    M[1, 2] += H / 2 - h / 2
    ar = cv2.warpAffine(a, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mr = cv2.warpAffine(m.astype(np.uint8) * 255, M, (W, H), flags=cv2.INTER_LINEAR) > 127
    return ar, mr


@dataclass
class _Placed:
    kind: str
    color: str
    y: int
    x: int
    albedo: np.ndarray
    mask: np.ndarray
    info: dict

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        h, w = self.mask.shape
        y0, x0 = max(0, self.y), max(0, self.x)
        y1, x1 = min(shape[0], self.y + h), min(shape[1], self.x + w)
        if y1 > y0 and x1 > x0:
            out[y0:y1, x0:x1] = self.mask[y0 - self.y : y1 - self.y, x0 - self.x : x1 - self.x]
        return out


def _place_items(
    rng,
    p: SplitParams,
    shape,
    region,
    belt_grey: bool,
    count: int,
    scale: float,
    belt_width: float,
    kinds: tuple[str, ...] | None = None,
    colors: tuple[str, ...] | None = None,
    belt_rgb: np.ndarray | None = None,
    paint_rng: np.random.Generator | None = None,
) -> list[_Placed]:
    """Sprites placed apart, touching or overlapping; every earlier item keeps >= 55 % visible,
    and every item keeps at least MIN_VISIBLE_AREA of the image visible. An item's base paint
    differs from the belt by at least MIN_PAINT_CONTRAST (redrawn from `paint_rng` otherwise)."""
    height, width = shape
    top, bottom, left, right = region
    placed: list[_Placed] = []
    for _ in range(count * 6):
        if len(placed) >= count:
            break
        kind = str(rng.choice(KINDS, p=[0.25, 0.17, 0.14, 0.2, 0.14, 0.10]))
        color = "brown" if kind == "parcel" and rng.random() < 0.6 else _pick_color(rng, p, belt_grey)
        if kind == "parcel" and color not in ("brown", "white") and rng.random() < 0.5:
            color = "white"
        if kinds:
            kind = str(rng.choice(kinds))
        if colors:
            color = str(rng.choice(colors))
        base = _jitter(rng, EXEMPLARS[color][int(rng.integers(len(EXEMPLARS[color])))])
        if belt_rgb is not None and paint_rng is not None:
            for _ in range(8):  # another shade of the same colour term until it differs from the belt
                if _paint_contrast(base, belt_rgb) >= MIN_PAINT_CONTRAST:
                    break
                base = _jitter(paint_rng, EXEMPLARS[color][int(paint_rng.integers(len(EXEMPLARS[color])))])
        second_name = _pick_color(rng, p, belt_grey, exclude=color)
        second = _jitter(rng, EXEMPLARS[second_name][int(rng.integers(len(EXEMPLARS[second_name])))])
        frac = {"pouch": (0.1, 0.17), "parcel": (0.18, 0.45), "soft": (0.18, 0.4)}.get(kind, (0.26, 0.6))
        long_side = belt_width * rng.uniform(*frac)
        a, m, info = _item_sprite(rng, kind, base, second, long_side)
        a, m = _rotate(a, m, rng.uniform(0, 180))
        h, w = m.shape
        candidate = None
        if placed and rng.random() < p.touch_p:
            other = placed[int(rng.integers(len(placed)))]
            oy, ox = other.y + other.mask.shape[0] / 2, other.x + other.mask.shape[1] / 2
            ang = rng.uniform(0, 2 * np.pi)
            overlap = rng.uniform(-2, 0.25 * min(h, w))  # negative: a hair apart, positive: overlapping
            union = np.zeros(shape, bool)
            for q in placed:
                union |= q.full_mask(shape)
            dist = max(h, w) + max(other.mask.shape)
            step = 3
            while dist > 0:
                cy, cx = oy + math.sin(ang) * dist, ox + math.cos(ang) * dist
                y, x = int(cy - h / 2), int(cx - w / 2)
                trial = _Placed(kind, color, y, x, a, m, info)
                if (trial.full_mask(shape) & union).any():
                    dist -= overlap if overlap > 0 else 0
                    cy, cx = oy + math.sin(ang) * dist, ox + math.cos(ang) * dist
                    candidate = (int(cy - h / 2), int(cx - w / 2))
                    break
                dist -= step
        else:
            y = int(rng.uniform(top - h * 0.05, bottom - h * 0.95))
            x = int(rng.uniform(left - w * 0.3, right - w * 0.7))
            candidate = (y, x)
        if candidate is None:
            continue
        trial = _Placed(kind, color, candidate[0], candidate[1], a, m, info)
        tm = trial.full_mask(shape)
        if tm.sum() < 0.6 * m.sum():  # mostly out of frame
            continue
        min_visible = MIN_VISIBLE_AREA * height * width
        if tm.sum() < min_visible:
            continue
        cy = candidate[0] + h / 2
        if cy < top + 0.15 * (bottom - top) or cy > bottom - 0.15 * (bottom - top):
            continue
        # keep on the belt: the item may only just touch the rails
        rows = np.nonzero(tm.any(axis=1))[0]
        if rows[0] < top - 0.02 * height or rows[-1] > bottom + 0.02 * height:
            continue
        # apart unless deliberately touching; earlier items stay >= 55 % visible
        ok = True
        visible_after = []
        for q in placed:
            qm = q.full_mask(shape)
            later = np.zeros(shape, bool)
            for r in placed[placed.index(q) + 1 :]:
                later |= r.full_mask(shape)
            vis = qm & ~later
            if vis.sum() and (vis & ~tm).sum() < max(0.55 * qm.sum(), min_visible):
                ok = False
                break
            visible_after.append(vis)
        if not ok:
            continue
        placed.append(trial)
    return placed


def _render_items(
    rng, p: SplitParams, canvas: np.ndarray, placed: list[_Placed], light_dir: np.ndarray, scale: float
) -> list[Item]:
    height, width = canvas.shape[:2]
    shape = (height, width)
    masks = []
    for q in placed:
        full = q.full_mask(shape)
        # soft cast shadow (offset towards away-from-light) and contact shadow
        strength = _u(rng, p.shadow_strength)
        off = -light_dir * rng.uniform(4, 16) * scale
        M = np.array([[1, 0, off[0]], [0, 1, off[1]]], np.float32)
        f = full.astype(np.float32)
        cast = cv2.warpAffine(f, M, (width, height))
        cast = np.maximum(cast, f)
        cast = _blur(cast, _u(rng, p.shadow_blur) * scale)
        contact = _blur(f, 2.0 * scale)
        shadow = np.clip(1 - strength * cast - 0.25 * contact, 0.2, 1)
        canvas *= shadow[..., None]
        # the item: bevel fall-off at its edges, dome, directional light, specular on hard shells
        h, w = q.mask.shape
        m8 = q.mask.astype(np.uint8)
        dist = cv2.distanceTransform(np.pad(m8, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        bw = rng.uniform(3, 7) * scale
        shade = 1 - q.info["bevel"] * np.exp(-dist / bw)
        size = max(h, w)
        shade *= 1 - q.info["dome"] + q.info["dome"] * np.clip(dist / (0.18 * size), 0, 1)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = ((xx - w / 2) * light_dir[0] + (yy - h / 2) * light_dir[1]) / (size / 2)
        shade *= 1 + 0.08 * proj
        rgb = q.albedo * shade[..., None]
        if q.info["hard"] and rng.random() < 0.7:
            sx, sy = w / 2 + light_dir[0] * size * 0.2, h / 2 + light_dir[1] * size * 0.2
            spec = np.exp(-(((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * (0.09 * size) ** 2)))
            rgb = rgb + (255 - rgb) * (0.45 * spec)[..., None]
        y0, x0 = max(0, q.y), max(0, q.x)
        y1, x1 = min(height, q.y + h), min(width, q.x + w)
        sub_m = q.mask[y0 - q.y : y1 - q.y, x0 - q.x : x1 - q.x]
        sub = rgb[y0 - q.y : y1 - q.y, x0 - q.x : x1 - q.x]
        region = canvas[y0:y1, x0:x1]
        region[sub_m] = sub[sub_m]
        masks.append(full)
    items = []
    for i, q in enumerate(placed):
        vis = masks[i].copy()
        for later in masks[i + 1 :]:
            vis &= ~later
        items.append(Item(q.kind, q.color, vis))
    return items


def _lighting(rng, p: SplitParams, shape: tuple[int, int], strength: float = 1.0) -> np.ndarray:
    height, width = shape
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    ang = rng.uniform(0, 2 * np.pi)
    light = _u(rng, p.light_gain) * (
        1 + strength * p.gradient * rng.uniform(0.3, 1) * (xs * math.cos(ang) + ys * math.sin(ang)) / 2
    )
    light = light * (1 - strength * _u(rng, p.vignette) * (xs**2 + ys**2) / 2)
    if rng.random() < p.spot_p:
        sx, sy, r = rng.uniform(-0.8, 0.8), rng.uniform(-0.6, 0.6), rng.uniform(0.3, 0.7)
        light = light * (
            1 + strength * rng.uniform(0.1, 0.3) * np.exp(-((xs - sx) ** 2 + (ys - sy) ** 2) / (2 * r * r))
        )
    cast = 1 + rng.uniform(-p.cast, p.cast, 3)
    return light[..., None] * (cast / cast.mean()).astype(np.float32)


def _finish(rng, p: SplitParams, radiance: np.ndarray, quality: int) -> Image.Image:
    img = _blur(radiance, rng.uniform(0.5, 0.9))
    sigma = _u(rng, p.noise)
    noise = rng.normal(0, 1, img.shape).astype(np.float32) * (sigma * np.sqrt(0.4 + img / 160))
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


# ---------------------------------------------------------------------------------- carousel


def _carousel_background(
    rng, width: int, height: int, run: float = 0.0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Albedo of the hall and the carousel's band (top, bottom, 0, width); `run`: how far (a share
    of a slat) the slats have moved on."""
    s = height / 720
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.uniform(150, 200, 3)))
    d = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.22, 0.32))
    wall = tuple(int(v) for v in rng.uniform(150, 215, 3))
    d.rectangle((0, 0, width, horizon), fill=wall)
    for _ in range(int(rng.integers(2, 5))):  # posters and signs
        w, h = rng.uniform(80, 220) * s, rng.uniform(50, horizon * 0.7)
        x, y = rng.uniform(0, width - w), rng.uniform(5, horizon - h - 5)
        d.rectangle((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.uniform(20, 240, 3)))
        d.text(
            (x + 8, y + 8),
            str(rng.choice(["ARRIVALS", "BAGGAGE 4", "EXIT", "WELCOME"])),
            fill=(255, 255, 255),
            font=_font(18 * s),
        )
    tile = rng.uniform(60, 110) * s
    floor = tuple(int(v) for v in rng.uniform(150, 200, 3))
    d.rectangle((0, horizon, width, height), fill=floor)
    x = 0.0
    while x < width:
        d.line([(x, horizon), (x - (x - width / 2) * 0.4, height)], fill=(110, 110, 110), width=max(1, int(2 * s)))
        x += tile
    y = float(horizon)
    while y < height:
        d.line([(0, y), (width, y)], fill=(110, 110, 110), width=max(1, int(2 * s)))
        y += tile * (0.6 + (y - horizon) / height)
    # the carousel: a band of overlapping metal slats between a steel edge and the centre island
    top, bottom = int(height * rng.uniform(0.4, 0.46)), int(height * rng.uniform(0.82, 0.9))
    island = tuple(int(v) for v in rng.uniform(60, 110, 3))
    d.rectangle((0, horizon + 10 * s, width, top), fill=island)
    d.rectangle((0, top - 10 * s, width, top), fill=(190, 192, 196))
    slat = rng.uniform(70, 120) * s
    x = -slat * (2 - run)
    tone = rng.uniform(90, 140)
    while x < width + slat:
        d.polygon(
            [(x, top), (x + slat, top), (x + slat * 1.15, bottom), (x + slat * 0.15, bottom)],
            fill=tuple(int(tone * f) for f in (1.0, 1.0, 1.04)),
            outline=(60, 60, 64),
        )
        x += slat
    d.rectangle((0, bottom, width, bottom + 14 * s), fill=(200, 202, 206))
    arr = np.asarray(img, np.float32).copy()
    yy = np.arange(height, dtype=np.float32)[:, None]
    slat_shade = 1 - 0.15 * (((np.arange(width)[None, :] + slat * (1 - run)) % slat) / slat)
    band = (yy >= top) & (yy < bottom)
    arr *= np.where(band, slat_shade, 1.0)[..., None]
    arr *= (1 + _blur(rng.normal(0, 0.03, (height, width)).astype(np.float32), 1.5))[..., None]
    return arr, (top, bottom, 0, width)


# ---------------------------------------------------------------------------------- scenes


def make_scene(
    split: str,
    index: int,
    *,
    kind: str | None = None,
    count: int | None = None,
    size: tuple[int, int] | None = None,
    item_kinds: tuple[str, ...] | None = None,
    item_colors: tuple[str, ...] | None = None,
    salt: str = "",
    reference: bool = False,
    belt_moved: bool = False,
) -> Scene:
    """Scene `index` of `split`, deterministic. `kind` ("belt" or "carousel"), `count`, `size`,
    `item_kinds` and `item_colors` override the random draw; `salt` gives another stream of scenes.
    Carousel scenes always come with a reference photo of the empty scene (other light); belt
    scenes with `reference`. With `belt_moved`, the belt in the reference has run on by a random
    distance (its seams, wear and paint elsewhere; rails and surroundings where they were)."""
    p = SPLITS[split]
    rng = _rng(split, index, salt)
    if kind is None:
        kind = "carousel" if rng.random() < p.carousel_p else "belt"
    width, height = size or tuple(p.sizes[int(rng.integers(len(p.sizes)))])
    transpose = kind == "belt" and rng.random() < p.transpose_p
    if transpose:
        width, height = height, width
    if count is None:
        count = 0 if rng.random() < p.empty_p else int(rng.integers(1, p.max_items + 1))
    scale = height / 720
    if kind == "belt":
        albedo, (top, bottom) = _belt(rng, p, width, height)
        region = (top, bottom, 0, width)
        belt_grey = float(albedo[(top + bottom) // 2].mean()) > 80
        belt_width: float = bottom - top
    else:
        carousel_rng = copy.deepcopy(rng)
        albedo, region = _carousel_background(rng, width, height)
        belt_grey = False
        belt_width = (region[1] - region[0]) * 1.1
    ang = rng.uniform(0, 2 * np.pi)
    light_dir = np.array([math.cos(ang), math.sin(ang)], np.float32)
    belt_rgb = np.median(albedo[region[0] : region[1] : 4, ::4].reshape(-1, 3), axis=0)
    placed = _place_items(
        rng,
        p,
        (height, width),
        region,
        belt_grey,
        count,
        scale,
        belt_width,
        item_kinds,
        item_colors,
        belt_rgb=belt_rgb,
        paint_rng=_rng(split, index, salt + "paint"),
    )
    canvas = albedo.copy()
    items = _render_items(rng, p, canvas, placed, light_dir, scale)
    light = _lighting(rng, p, (height, width))
    quality = int(rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1))
    image = _finish(rng, p, canvas * light, quality)
    background = None
    if kind == "carousel" or reference:
        ref_rng = _rng(split, index, salt + "reference")
        change = 1 + ref_rng.uniform(-p.ref_light_change, p.ref_light_change)
        cast = 1 + ref_rng.uniform(-p.cast, p.cast, 3).astype(np.float32) / 2
        ref_albedo = albedo
        if belt_moved and kind == "carousel":
            ref_albedo = _carousel_background(
                carousel_rng, width, height, run=float(_rng(split, index, salt + "run").uniform(0.1, 0.9))
            )[0]
        elif belt_moved:
            ref_albedo = albedo.copy()
            run = int(_rng(split, index, salt + "run").integers(int(40 * scale), width))
            ref_albedo[region[0] : region[1]] = np.roll(albedo[region[0] : region[1]], run, axis=1)
        background = _finish(ref_rng, p, ref_albedo * light * change * cast, quality)
    if transpose:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        if background is not None:
            background = background.transpose(Image.Transpose.TRANSPOSE)
        for item in items:
            item.mask = item.mask.T.copy()
    return Scene(
        image=image,
        items=items,
        kind=kind,
        background=background,
        split=split,
        index=index,
        meta={"belt_rows": region[:2], "transposed": transpose},
    )


def vibrate(
    image: Image.Image, rng: np.random.Generator, *, max_shift: float = 2.0, exposure: float = 0.1, quality: int = 90
) -> Image.Image:
    """The frame as a vibrating camera with auto-exposure would take it a moment later: shifted
    by up to `max_shift` pixels each way (sub-pixel), brightness scaled by up to +-`exposure`,
    JPEG-compressed again."""
    dx, dy = rng.uniform(-max_shift, max_shift, 2)
    gain = 1 + rng.uniform(-exposure, exposure)
    arr = np.asarray(image, np.float32)
    moved = cv2.warpAffine(
        arr,
        np.array([[1, 0, dx], [0, 1, dy]], np.float32),
        (arr.shape[1], arr.shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    buffer = io.BytesIO()
    Image.fromarray(np.clip(moved * gain, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def to_coco(scenes: list[Scene], file_names: list[str] | None = None) -> dict:
    """COCO dict (images, annotations with RLE of the visible mask, category "item")."""
    from pycocotools import mask as mask_utils

    images: list[dict] = []
    annotations: list[dict] = []
    for i, scene in enumerate(scenes):
        image_id = i + 1
        entry = {
            "id": image_id,
            "width": scene.image.width,
            "height": scene.image.height,
            "file_name": file_names[i] if file_names else f"{scene.split}-{scene.index:04d}.jpg",
            "scene": scene.kind,
            "empty": not scene.items,
            "split": scene.split,
            "index": scene.index,
        }
        if scene.background is not None:
            entry["background"] = str(entry["file_name"]).replace(".jpg", "-background.jpg")
        images.append(entry)
        for item in scene.items:
            rle = mask_utils.encode(np.asfortranarray(item.mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "color": item.color,
                    "kind": item.kind,
                }
            )
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "item"}]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", default="tuning", choices=sorted(SPLITS))
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scenes = [make_scene(args.split, i) for i in range(args.start, args.start + args.n)]
    names = []
    for scene in scenes:
        name = f"{scene.split}-{scene.index:04d}.jpg"
        scene.image.save(args.out / name, quality=95)
        if scene.background is not None:
            scene.background.save(args.out / name.replace(".jpg", "-background.jpg"), quality=95)
        names.append(name)
    (args.out / f"{args.split}.json").write_text(json.dumps(to_coco(scenes, names)))
    print(f"wrote {len(scenes)} scenes and {args.split}.json to {args.out}")


if __name__ == "__main__":
    main()
