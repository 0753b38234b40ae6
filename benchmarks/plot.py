"""Small line plots drawn with Pillow's ImageDraw (matplotlib is not a dependency)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 900, 560
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 230, 50, 70


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: tuple[int, int, int]
    dashed: bool = False
    markers: bool = True
    annotations: Sequence[str] = field(default_factory=list)  # one per point, drawn next to it


def _font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _dashed_line(
    draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], color, width: int, dash: float = 9.0
) -> None:
    length = math.dist(a, b)
    if length == 0:
        return
    steps = int(length // dash)
    for i in range(0, steps + 1, 2):
        t0, t1 = i * dash / length, min(1.0, (i + 1) * dash / length)
        draw.line(
            [
                (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1),
            ],
            fill=color,
            width=width,
        )


def log_log_plot(
    path: Path,
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_ticks: Sequence[float],
    y_ticks: Sequence[float],
) -> Path:
    """A log-log line plot of `series` saved as PNG at `path`."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small, big = _font(15), _font(13), _font(18)
    left, top = MARGIN_LEFT, MARGIN_TOP
    right, bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM
    x_min, x_max = math.log10(min(x_ticks)), math.log10(max(x_ticks))
    y_min, y_max = math.log10(min(y_ticks)), math.log10(max(y_ticks))

    def at(x: float, y: float) -> tuple[float, float]:
        px = left + (math.log10(x) - x_min) / (x_max - x_min) * (right - left)
        py = bottom - (math.log10(max(y, 10**y_min)) - y_min) / (y_max - y_min) * (bottom - top)
        return px, py

    for x in x_ticks:
        px, _ = at(x, 10**y_min)
        draw.line([(px, top), (px, bottom)], fill=(225, 225, 225))
        draw.text((px, bottom + 8), f"{x:g}", fill="black", font=font, anchor="mt")
    for y in y_ticks:
        _, py = at(10**x_min, y)
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        draw.text((left - 8, py), f"{y:g}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, 18), title, fill="black", font=big, anchor="mt")
    draw.text(((left + right) / 2, HEIGHT - 22), x_label, fill="black", font=font, anchor="mb")
    label = Image.new("RGBA", (bottom - top, 24), (255, 255, 255, 0))
    ImageDraw.Draw(label).text(((bottom - top) / 2, 12), y_label, fill="black", font=font, anchor="mm")
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (12, top), rotated)

    for i, s in enumerate(series):
        pixels = [at(x, y) for x, y in s.points]
        for a, b in itertools.pairwise(pixels):
            if s.dashed:
                _dashed_line(draw, a, b, s.color, 2)
            else:
                draw.line([a, b], fill=s.color, width=3)
        if s.markers:
            for px, py in pixels:
                draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=s.color, outline="black")
        for (px, py), text in zip(pixels, s.annotations, strict=False):
            draw.text((px + 8, py + 6), text, fill=s.color, font=small, anchor="lt")
        # legend
        ly = top + 10 + i * 26
        lx = right + 18
        if s.dashed:
            _dashed_line(draw, (lx, ly + 8), (lx + 34, ly + 8), s.color, 2)
        else:
            draw.line([(lx, ly + 8), (lx + 34, ly + 8)], fill=s.color, width=3)
        if s.markers:
            draw.ellipse([lx + 12, ly + 3, lx + 22, ly + 13], fill=s.color, outline="black")
        draw.text((lx + 42, ly + 8), s.label, fill="black", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG", optimize=True)
    return path
