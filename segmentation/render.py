"""The function's pictures: one JPEG crop per detection, and one annotated overview.

The overview draws, for detection number n (1-based, in list order, the same numbering as the
crops): its mask as a translucent fill, its box outline, and a filled tag "n label" above the box
(inside it when there is no room above), all in the n-th colour of a fixed palette. Line width and
text size grow with the image, so a 640-px and a 4000-px overview read the same; see
`overview_style`.

Labels come from the model and are treated as untrusted data: `clean_label` replaces control and
other non-printable characters and truncates long labels before anything is drawn.

Output JPEGs carry no EXIF (no GPS or camera data from the upload); an RGB ICC profile found in
`image.info` is embedded so colours display as in the original.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from segmentation.detections import Box, Detection
from segmentation.images import encode_jpeg, to_rgb

MAX_LABEL_CHARS = 40
MASK_OPACITY = 0.4
"""How strongly a mask tints the image: 0 invisible, 1 opaque."""

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (255, 225, 25),  # yellow
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (250, 190, 212),  # pink
    (0, 128, 128),  # teal
    (170, 110, 40),  # brown
    (170, 255, 195),  # mint
    (128, 0, 0),  # maroon
    (0, 0, 128),  # navy
)
"""Box colours, assigned in detection order and cycling: 14 of Sasha Trubetskoy's "20 simple,
distinct colours", keeping every pair at least 70 apart in RGB (no black, white, grey, or the
near-duplicates lime, olive, lavender, beige, apricot)."""

_MASK_ALPHA_LUT = [round(value * MASK_OPACITY) for value in range(256)]


@dataclass(frozen=True)
class OverviewStyle:
    """Sizes, in pixels, used to draw the overview of an image."""

    font_size: int
    line_width: int
    padding: int


def overview_style(width: int, height: int) -> OverviewStyle:
    """Font size, box line width and tag padding for an overview of `width` x `height`.

    Proportional to the short side, with floors so small images stay legible.

    >>> overview_style(640, 480)
    OverviewStyle(font_size=12, line_width=2, padding=3)
    >>> overview_style(4000, 3000)
    OverviewStyle(font_size=75, line_width=10, padding=19)
    """
    short = max(1, min(width, height))
    font_size = max(12, round(short * 0.025))
    line_width = max(2, round(short / 300))
    padding = max(2, round(font_size / 4))
    return OverviewStyle(font_size=font_size, line_width=line_width, padding=padding)


def clean_label(label: object, max_chars: int = MAX_LABEL_CHARS) -> str:
    """`label` made safe to draw: one line, printable characters only, at most `max_chars` + "…".

    >>> clean_label("red\\tsuit\\x00case\\n")
    'red suit case'
    >>> clean_label("x" * 50)[-3:], len(clean_label("x" * 50))
    ('xx…', 41)
    """
    text = label if isinstance(label, str) else ("" if label is None else str(label))
    # isprintable() is False for control, format (bidi overrides, zero-width), surrogate,
    # private-use and unassigned code points, and for separators other than the plain space.
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(text) > max_chars:
        text = text[:max_chars].rstrip() + "…"
    return text


def color_for(index: int) -> tuple[int, int, int]:
    """The palette colour of the detection at 0-based `index` (cycles through `PALETTE`)."""
    return PALETTE[index % len(PALETTE)]


def text_color_for(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with `background` (WCAG relative luminance)."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = background
    luminance = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    # Contrast with black (L + 0.05) / 0.05 beats contrast with white 1.05 / (L + 0.05) above ~0.179.
    return (0, 0, 0) if luminance > 0.179 else (255, 255, 255)


def crop_jpeg(image: Image.Image, detection: Detection, *, quality: int = 90) -> bytes:
    """The region `detection.box` of `image` as JPEG bytes (the mask is not applied).

    A box reaching past the image edge is clipped to the image; a box with no pixels inside
    the image raises `ValueError`.
    """
    region = _clip(detection.box, image.width, image.height)
    if region is None:
        raise ValueError(f"box {detection.box.as_tuple()} has no pixels inside the {image.width}x{image.height} image")
    crop = to_rgb(image.crop(region))
    return _encode_jpeg(crop, quality=quality, icc_profile=_rgb_icc_profile(image))


def overview_jpeg(image: Image.Image, detections: Sequence[Detection], *, quality: int = 85) -> bytes:
    """`image` as JPEG with every detection's mask, box and "n label" tag drawn in its colour."""
    canvas = image.copy() if image.mode == "RGB" else to_rgb(image)
    width, height = canvas.size
    style = overview_style(width, height)

    regions = [_clip(d.box, width, height) for d in detections]
    for index, (detection, region) in enumerate(zip(detections, regions, strict=True)):
        if region is not None and detection.mask is not None:
            _tint_mask(canvas, detection, region, color_for(index))

    draw = ImageDraw.Draw(canvas)
    for index, region in enumerate(regions):
        if region is not None:
            x0, y0, x1, y1 = region
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=color_for(index), width=style.line_width)

    if any(region is not None for region in regions):
        font = ImageFont.load_default(size=style.font_size)
        for index, (detection, region) in enumerate(zip(detections, regions, strict=True)):
            if region is not None:
                _draw_tag(draw, font, style, canvas.size, region, index, detection.label)

    # 4:4:4 chroma: thin saturated lines and small text smear badly with 4:2:0 subsampling.
    return _encode_jpeg(canvas, quality=quality, icc_profile=_rgb_icc_profile(image), subsampling=0)


def _draw_tag(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    style: OverviewStyle,
    image_size: tuple[int, int],
    region: tuple[int, int, int, int],
    index: int,
    label: object,
) -> None:
    width, height = image_size
    x0, y0, _, _ = region
    color = color_for(index)
    pad = style.padding
    text = _tag_text(font, index + 1, clean_label(label), width - 2 * pad)
    text_width = math.ceil(font.getlength(text))
    ascent, descent = font.getmetrics()  # type: ignore[union-attr]  # load_default(size=) is a FreeTypeFont
    tag_width = text_width + 2 * pad
    tag_height = ascent + descent + 2 * pad

    left = min(x0, width - tag_width)
    left = max(0, left)
    top = y0 - tag_height if y0 - tag_height >= 0 else y0  # above the box, else inside it
    top = max(0, min(top, height - tag_height))

    draw.rectangle((left, top, left + tag_width - 1, top + tag_height - 1), fill=color)
    draw.text((left + pad, top + pad), text, fill=text_color_for(color), font=font, anchor="la")


def _tag_text(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, number: int, label: str, max_width: int) -> str:
    """ "number label", the label shortened with "…" until the tag fits `max_width` pixels.

    Only matters on very narrow images; the number is always kept (clipped if even it is too wide).
    """
    text = f"{number} {label}" if label else str(number)
    if not label or font.getlength(text) <= max_width:
        return text
    low, high = 0, len(label)  # the longest label prefix that fits with "…", by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if font.getlength(f"{number} {label[:middle].rstrip()}…") <= max_width:
            low = middle
        else:
            high = middle - 1
    return f"{number} {label[:low].rstrip()}…" if low else str(number)


def _tint_mask(
    canvas: Image.Image,
    detection: Detection,
    region: tuple[int, int, int, int],
    color: tuple[int, int, int],
) -> None:
    """Blend `color` into `canvas` where the mask is set, touching only the box region."""
    box = detection.box
    mask = detection.mask
    assert mask is not None
    if mask.mode != "L":
        mask = mask.convert("L")
    if mask.size != (box.width, box.height):
        mask = mask.resize((box.width, box.height), Image.Resampling.NEAREST)
    x0, y0, x1, y1 = region
    if (x0, y0, x1, y1) != box.as_tuple():  # box reaches past the image edge
        mask = mask.crop((x0 - box.x_min, y0 - box.y_min, x1 - box.x_min, y1 - box.y_min))
    canvas.paste(color, region, mask.point(_MASK_ALPHA_LUT))


def _clip(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """`box` clipped to a `width` x `height` image as (left, upper, right, lower), or None if empty."""
    x0, y0 = max(0, box.x_min), max(0, box.y_min)
    x1, y1 = min(width, box.x_max), min(height, box.y_max)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _rgb_icc_profile(image: Image.Image) -> bytes | None:
    profile = image.info.get("icc_profile")
    if isinstance(profile, bytes) and len(profile) >= 128 and profile[16:20] == b"RGB ":
        return profile
    return None


def _encode_jpeg(
    image: Image.Image,
    *,
    quality: int,
    icc_profile: bytes | None = None,
    subsampling: int | None = None,
) -> bytes:
    options: dict[str, object] = {"quality": quality}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if subsampling is not None:
        options["subsampling"] = subsampling
    return encode_jpeg(image, **options)
