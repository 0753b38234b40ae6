"""crop_jpeg and overview_jpeg, checked on the decoded pixels."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image, ImageChops, ImageStat

from segmentation.detections import Box, Detection
from segmentation.render import (
    MASK_OPACITY,
    PALETTE,
    clean_label,
    color_for,
    crop_jpeg,
    overview_jpeg,
    overview_style,
    text_color_for,
)

GREY = (128, 128, 128)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.convert("RGB")


def smooth_image(size: tuple[int, int]) -> Image.Image:
    """A smooth colour image (JPEG-friendly) in which every region looks different."""
    ramp = Image.linear_gradient("L")
    red = ramp.rotate(90).resize(size)
    green = ramp.resize(size)
    blue = Image.radial_gradient("L").resize(size)
    return Image.merge("RGB", (red, green, blue))


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean)


def distance(a, b) -> int:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def near(actual, expected, tolerance: int = 30) -> bool:
    return distance(actual, expected) <= tolerance


def det(box: tuple[int, int, int, int], label: str = "bag", mask: Image.Image | None = None) -> Detection:
    return Detection(box=Box(*box), label=label, mask=mask)


def wcag_contrast(a, b) -> float:
    def luminance(rgb):
        def linear(c):
            c /= 255
            return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b_ = (linear(v) for v in rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b_

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# --- crops --------------------------------------------------------------------------------------


def test_crop_has_the_box_size_and_the_source_pixels():
    source = smooth_image((320, 240))
    box = (10, 20, 110, 70)
    crop = decode(crop_jpeg(source, det(box)))
    assert crop.size == (100, 50)
    assert mean_difference(crop, source.crop(box)) < 3
    # ...and not some other region of the same size.
    assert mean_difference(crop, source.crop((200, 150, 300, 200))) > 30


def test_crop_respects_exclusive_max_edges():
    source = Image.new("RGB", (40, 40), (0, 0, 255))
    source.paste((255, 0, 0), (10, 10, 20, 20))  # exactly the box below
    crop = decode(crop_jpeg(source, det((10, 10, 20, 20)), quality=100))
    assert crop.size == (10, 10)
    for xy in [(0, 0), (9, 0), (0, 9), (9, 9)]:  # corners: all inside the red square
        assert near(crop.getpixel(xy), (255, 0, 0), 40)


def test_crop_ignores_the_mask():
    source = smooth_image((200, 200))
    empty_mask = Image.new("L", (80, 60), 0)
    crop = decode(crop_jpeg(source, det((50, 60, 130, 120), mask=empty_mask)))
    assert mean_difference(crop, source.crop((50, 60, 130, 120))) < 3


def test_crop_quality_changes_the_encoding():
    source = smooth_image((300, 300))
    detection = det((0, 0, 300, 300))
    assert len(crop_jpeg(source, detection, quality=30)) < len(crop_jpeg(source, detection, quality=95))


def test_crop_of_a_box_reaching_past_the_edge_is_clipped_to_the_image():
    source = smooth_image((100, 80))
    crop = decode(crop_jpeg(source, det((60, 50, 140, 120))))
    assert crop.size == (40, 30)
    assert mean_difference(crop, source.crop((60, 50, 100, 80))) < 3


@pytest.mark.parametrize("box", [(100, 0, 150, 10), (10, 10, 10, 20), (30, 30, 20, 20), (-50, -50, 0, 0)])
def test_crop_of_a_box_with_no_pixels_in_the_image_raises(box):
    with pytest.raises(ValueError, match="no pixels"):
        crop_jpeg(Image.new("RGB", (100, 80)), det(box))


def test_crop_of_a_non_rgb_image_is_an_rgb_jpeg():
    rgba = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    crop = Image.open(io.BytesIO(crop_jpeg(rgba, det((0, 0, 20, 20)))))
    assert crop.mode == "RGB"
    assert near(crop.getpixel((10, 10)), (255, 255, 255), 3)


# --- overview: basics ---------------------------------------------------------------------------


def test_overview_without_detections_is_just_the_image():
    source = smooth_image((640, 480))
    overview = decode(overview_jpeg(source, []))
    assert overview.size == (640, 480)
    assert mean_difference(overview, source) < 2


def test_overview_keeps_the_image_size_and_leaves_the_input_untouched():
    source = smooth_image((1000, 700))
    before = source.tobytes()
    overview = decode(overview_jpeg(source, [det((100, 100, 400, 400)), det((500, 50, 900, 650))]))
    assert overview.size == (1000, 700)
    assert source.tobytes() == before


def test_overview_of_a_non_rgb_image_works():
    for image in (Image.new("L", (300, 200), 90), Image.new("RGBA", (300, 200), (0, 0, 0, 0))):
        overview = decode(overview_jpeg(image, [det((20, 60, 120, 160))]))
        assert overview.size == (300, 200)


def test_rgb_icc_profile_is_embedded_and_exif_is_not():
    profile = b"\x00" * 16 + b"RGB " + b"\x00" * 108
    source = Image.new("RGB", (200, 100), GREY)
    source.info["icc_profile"] = profile
    source.info["exif"] = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"
    for data in (overview_jpeg(source, [det((10, 40, 60, 90))]), crop_jpeg(source, det((10, 40, 60, 90)))):
        written = Image.open(io.BytesIO(data))
        assert written.info.get("icc_profile") == profile
        assert "exif" not in written.info


# --- overview: boxes, colours and tags ----------------------------------------------------------


def test_boxes_are_outlined_in_distinct_palette_colours():
    size = (1500, 1200)
    style = overview_style(*size)
    assert style.line_width >= 4
    boxes = [(100, 200, 400, 500), (600, 300, 900, 700), (1000, 600, 1400, 1100)]
    overview = decode(overview_jpeg(Image.new("RGB", size, GREY), [det(b) for b in boxes]))

    half = style.line_width // 2
    sampled = []
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        middle_y, middle_x = (y0 + y1) // 2, (x0 + x1) // 2
        edges = {
            "left": (x0 + half, middle_y),
            "right": (x1 - 1 - half, middle_y),
            "bottom": (middle_x, y1 - 1 - half),
        }
        for name, xy in edges.items():
            assert near(overview.getpixel(xy), color_for(index)), f"box {index} {name} edge"
        # Just inside and just outside the outline: untouched background.
        assert near(overview.getpixel((x0 + style.line_width + 3, middle_y)), GREY, 6)
        assert near(overview.getpixel((x0 - 3, middle_y)), GREY, 6)
        sampled.append(overview.getpixel(edges["left"]))
    for i in range(len(sampled)):
        for j in range(i + 1, len(sampled)):
            assert distance(sampled[i], sampled[j]) > 60


def tag_colour_run_upwards(image: Image.Image, x: int, y_start: int, colour) -> int:
    """How many pixels, going up from y_start at column x, are close to `colour`."""
    run = 0
    for y in range(y_start, -1, -1):
        if not near(image.getpixel((x, y)), colour, 40):
            break
        run += 1
    return run


def tag_rows(image: Image.Image, colour, box: tuple[int, int, int, int]) -> tuple[int, int]:
    """(top, bottom) rows of the tag drawn above `box`, found from its coloured left margin."""
    x0, y0 = box[0] + 1, box[1] - 1
    run = tag_colour_run_upwards(image, x0, y0, colour)
    return y0 - run + 1, y0


def count(image: Image.Image, region, predicate) -> int:
    x0, y0, x1, y1 = region
    return sum(1 for y in range(y0, y1) for x in range(x0, x1) if predicate(image.getpixel((x, y))))


def test_tag_is_drawn_above_the_box_with_legible_label_text():
    size = (1200, 900)
    style = overview_style(*size)
    box = (200, 300, 700, 600)
    colour = color_for(0)
    ink = text_color_for(colour)
    source = Image.new("RGB", size, GREY)
    with_label = decode(overview_jpeg(source, [det(box, label="WWWWWWWW")]))
    without_label = decode(overview_jpeg(source, [det(box, label="")]))

    top, bottom = tag_rows(with_label, colour, box)
    assert style.font_size <= bottom - top + 1 <= 3 * style.font_size
    # The tag sits right on top of the box and the box interior below it is untouched.
    assert near(with_label.getpixel((box[0] + 40, box[1] + style.line_width + 4)), GREY, 6)
    assert near(with_label.getpixel((box[0] + 40, top - 3)), GREY, 6)

    tag = (box[0], top, box[0] + 20 * style.font_size, bottom + 1)
    ink_with = count(with_label, tag, lambda p: near(p, ink, 60))
    ink_without = count(without_label, tag, lambda p: near(p, ink, 60))
    assert ink_with > 5 * style.font_size  # a label's worth of text pixels...
    assert ink_with > 3 * ink_without  # ...much more than the bare number "1"
    assert ink_without > 0  # the number alone is still drawn


def test_tag_goes_inside_the_box_when_there_is_no_room_above():
    size = (1200, 900)
    style = overview_style(*size)
    box = (300, 0, 800, 400)
    overview = decode(overview_jpeg(Image.new("RGB", size, GREY), [det(box, label="suitcase")]))
    # Inside the box, below the top outline, near the left: tag colour, not the grey background.
    inside = (box[0] + style.line_width + 2, style.font_size // 2 + style.line_width)
    assert near(overview.getpixel(inside), color_for(0), 40)
    # Far below the tag the interior is untouched.
    assert near(overview.getpixel((box[0] + 40, 4 * style.font_size)), GREY, 6)


def test_tag_is_pulled_left_to_stay_inside_the_image():
    size = (800, 600)
    box = (770, 200, 800, 300)  # 30 px wide, flush with the right edge
    colour = color_for(0)
    overview = decode(overview_jpeg(Image.new("RGB", size, GREY), [det(box, label="a rather long label")]))
    top, bottom = tag_rows(overview, colour, (box[0] - 100, box[1], box[2], box[3]))
    assert bottom - top > 5, "the tag should extend left of the box"
    middle = (top + bottom) // 2
    assert near(overview.getpixel((799, middle)), colour, 40) or near(
        overview.getpixel((799, middle)), text_color_for(colour), 60
    )


def test_tag_on_a_narrow_image_keeps_the_number():
    overview = decode(overview_jpeg(Image.new("RGB", (60, 400), GREY), [det((0, 100, 60, 200), label="x" * 40)]))
    assert overview.size == (60, 400)


def test_boxes_past_the_edge_are_clipped_and_boxes_outside_are_skipped_without_renumbering():
    size = (600, 400)
    style = overview_style(*size)
    detections = [det((-50, -50, 200, 200)), det((700, 700, 800, 800)), det((300, 100, 650, 300))]
    overview = decode(overview_jpeg(Image.new("RGB", size, GREY), detections))
    assert near(overview.getpixel((style.line_width // 2, 150)), color_for(0))  # clipped left edge
    assert near(overview.getpixel((599 - style.line_width // 2, 200)), color_for(2))  # keeps colour 3


# --- overview: masks ----------------------------------------------------------------------------


def expected_tint(base, colour):
    alpha = round(255 * MASK_OPACITY) / 255
    return tuple(round(b * (1 - alpha) + c * alpha) for b, c in zip(base, colour, strict=False))


def half_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


def test_mask_tints_inside_the_mask_only():
    box = (100, 100, 300, 200)
    colour = color_for(0)
    overview = decode(overview_jpeg(Image.new("RGB", (400, 300), GREY), [det(box, mask=half_mask((200, 100)))]))
    assert near(overview.getpixel((150, 150)), expected_tint(GREY, colour), 8)  # masked half
    assert near(overview.getpixel((250, 150)), GREY, 6)  # unmasked half of the box
    assert near(overview.getpixel((50, 250)), GREY, 6)  # outside the box


def test_masks_use_their_detection_colour():
    boxes = [(20, 50, 120, 150), (200, 50, 300, 150)]
    detections = [det(b, mask=Image.new("L", (100, 100), 255)) for b in boxes]
    overview = decode(overview_jpeg(Image.new("RGB", (400, 200), GREY), detections))
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        centre = ((x0 + x1) // 2, (y0 + y1) // 2)
        assert near(overview.getpixel(centre), expected_tint(GREY, color_for(index)), 8)


def test_mask_of_another_size_or_mode_is_fitted_to_the_box():
    box = (100, 100, 300, 200)
    small = half_mask((50, 25)).convert("1")
    overview = decode(overview_jpeg(Image.new("RGB", (400, 300), GREY), [det(box, mask=small)]))
    assert near(overview.getpixel((150, 150)), expected_tint(GREY, color_for(0)), 8)
    assert near(overview.getpixel((250, 150)), GREY, 6)


def test_mask_of_a_box_past_the_edge_is_clipped_with_it():
    box = (-100, 50, 100, 150)  # the left half of the box (and mask) is outside the image
    mask = Image.new("L", (200, 100), 0)
    mask.paste(255, (100, 0, 150, 100))  # visible part: image x 0..50
    overview = decode(overview_jpeg(Image.new("RGB", (300, 200), GREY), [det(box, mask=mask)]))
    assert near(overview.getpixel((25, 100)), expected_tint(GREY, color_for(0)), 8)
    assert near(overview.getpixel((75, 100)), GREY, 6)


# --- legibility scaling -------------------------------------------------------------------------


def test_style_scales_with_the_short_side():
    small, large = overview_style(640, 480), overview_style(4000, 3000)
    assert large.font_size / small.font_size == pytest.approx(3000 / 480, rel=0.05)
    assert large.line_width / small.line_width == pytest.approx(3000 / 480, rel=0.25)
    assert large.padding > small.padding
    # Orientation does not matter, only the short side.
    assert overview_style(3000, 4000) == large


def test_style_has_floors_for_tiny_images():
    tiny = overview_style(64, 48)
    assert tiny.font_size >= 12 and tiny.line_width >= 2 and tiny.padding >= 2
    assert overview_style(1, 1) == tiny


def test_rendered_tags_and_lines_scale_between_640_and_4000_pixels():
    measured = {}
    for size in ((640, 480), (4000, 3000)):
        scale = size[1] / 480
        box = tuple(round(v * scale) for v in (100, 200, 400, 400))
        overview = decode(overview_jpeg(Image.new("RGB", size, GREY), [det(box, label="bag")]))
        top, bottom = tag_rows(overview, color_for(0), box)
        line = 0
        while near(overview.getpixel((box[0] + line, (box[1] + box[3]) // 2)), color_for(0), 40):
            line += 1
        measured[size] = (bottom - top + 1, line)
    (small_tag, small_line), (large_tag, large_line) = measured[(640, 480)], measured[(4000, 3000)]
    assert large_tag / small_tag == pytest.approx(6.25, rel=0.2)
    assert large_line / small_line == pytest.approx(5, rel=0.3)


# --- labels are untrusted data ------------------------------------------------------------------


def test_long_labels_are_truncated_with_an_ellipsis():
    label = clean_label("suitcase " * 2000)
    assert len(label) <= 41 and label.endswith("…")
    assert label.startswith("suitcase suitcase")


def test_control_and_invisible_characters_are_replaced():
    label = clean_label("red\x00 bag\x1b[31m\r\n\t\u202eevil\u200b\ud800 ok")
    assert all(ch.isprintable() for ch in label)
    assert label == "red bag [31m evil ok"


def test_ordinary_unicode_is_kept():
    assert clean_label("  valise bleue / чемодан / حقيبة / 行李箱 😀 ") == "valise bleue / чемодан / حقيبة / 行李箱 😀"
    assert clean_label(None) == ""
    assert clean_label(12) == "12"


@pytest.mark.parametrize(
    "label",
    [
        "x" * 10_000,
        "bag\x00\x07\x1b[2J\r\n\t\x7f",
        "😀🧳👜 " * 20,
        "حقيبة سفر زرقاء",
        "\u202etxt.exe\u202c",
        "\ud800\udfff broken surrogates",
        "",
        "   ",
    ],
    ids=["10k", "control", "emoji", "rtl", "bidi-override", "surrogates", "empty", "spaces"],
)
def test_odd_labels_render_without_error(label):
    detections = [det((50, 80, 300, 250), label=label), det((350, 20, 600, 300), label=label)]
    overview = decode(overview_jpeg(smooth_image((640, 360)), detections))
    assert overview.size == (640, 360)


# --- palette ------------------------------------------------------------------------------------


def test_palette_is_large_distinct_and_cycles():
    assert 12 <= len(PALETTE) <= 20
    assert len(set(PALETTE)) == len(PALETTE)
    for i, a in enumerate(PALETTE):
        for b in PALETTE[i + 1 :]:
            assert math.dist(a, b) >= 70, (a, b)
    assert color_for(0) == color_for(len(PALETTE)) and color_for(1) != color_for(0)


def test_tag_text_colour_contrasts_with_every_palette_colour():
    assert text_color_for((255, 225, 25)) == (0, 0, 0)  # yellow -> black
    assert text_color_for((0, 0, 128)) == (255, 255, 255)  # navy -> white
    for colour in PALETTE:
        assert wcag_contrast(colour, text_color_for(colour)) >= 4.5, colour
