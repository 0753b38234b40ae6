"""Tests for segmentation.parse: real recorded Gemini answers, every repair rule, and properties.

Expected pixel boxes are computed here with integer arithmetic (floor = //, ceil = -(-a // b)),
independently of the parser's own mapping code.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import zlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageStat

from segmentation.errors import ResponseParseError
from segmentation.parse import ParsedResponse, parse_response
from tests.fixtures import shared_fixture

SAMPLE_COUNTS = {1: 13, 2: 20, 3: 13, 4: 15, 5: 13, 6: 6}
SPILL_SIZE = (640, 480)  # sample 6's photo is not stored; the notebook sent a 640x480 thumbnail


# --- helpers -------------------------------------------------------------------------------


def sample_text(n: int) -> str:
    return shared_fixture("gemini", f"sample_{n}.txt").read_text(encoding="utf-8")


def sample_entries(n: int) -> list[dict]:
    """The sample's list, decoded with plain json after stripping the ```json fence by hand."""
    text = sample_text(n).strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1]
        assert text.endswith("```")
        text = text[:-3]
    return json.loads(text)


def sample_size(n: int) -> tuple[int, int]:
    if n == 6:
        return SPILL_SIZE
    with Image.open(shared_fixture("gemini", f"sample_{n}.png")) as image:
        return image.size


def pixel_box(box_2d: list[int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    ymin, xmin, ymax, xmax = box_2d
    width, height = size
    return (xmin * width // 1000, ymin * height // 1000, -(-xmax * width // 1000), -(-ymax * height // 1000))


def boxes(parsed: ParsedResponse) -> list[tuple[int, int, int, int]]:
    return [detection.box.as_tuple() for detection in parsed.detections]


def labels(parsed: ParsedResponse) -> list[str]:
    return [detection.label for detection in parsed.detections]


def png_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def split_mask(left: int, right: int) -> Image.Image:
    """A 256x256 grayscale mask: value `left` in the left half, `right` in the right half."""
    image = Image.new("L", (256, 256), right)
    image.paste(left, (0, 0, 128, 256))
    return image


def assert_binary_box_mask(detection) -> float:
    """Assert the mask is a box-size 0/255 "L" image; return the fraction of object pixels."""
    mask = detection.mask
    assert mask is not None
    assert mask.mode == "L"
    assert mask.size == (detection.box.width, detection.box.height)
    histogram = mask.histogram()
    assert sum(histogram[1:255]) == 0
    return histogram[255] / (mask.width * mask.height)


def answer(*entries: dict) -> str:
    return json.dumps(list(entries))


HALF_PNG = png_data_url(split_mask(255, 0))


# --- the real recorded answers --------------------------------------------------------------


@pytest.mark.parametrize("n", sorted(SAMPLE_COUNTS))
def test_real_answer_gives_exact_boxes_and_labels(n: int) -> None:
    size = sample_size(n)
    expected, seen = [], set()
    for entry in sample_entries(n):
        box = pixel_box(entry["box_2d"], size)
        if box not in seen:
            seen.add(box)
            expected.append((box, entry["label"]))

    parsed = parse_response(sample_text(n), size)

    assert list(zip(boxes(parsed), labels(parsed), strict=False)) == expected
    assert len(parsed.detections) == SAMPLE_COUNTS[n]
    assert parsed.partial is False
    if n != 3:
        assert parsed.notes == ()


def test_real_answer_sizes_are_as_documented() -> None:
    assert [sample_size(n) for n in range(1, 6)] == [(620, 620)] * 5


def test_hand_computed_boxes() -> None:
    # [384, 65, 562, 203] at 620x620: x 40.3 -> 40, y 238.08 -> 238, x 125.86 -> 126, y 348.44 -> 349
    assert parse_response(sample_text(1), (620, 620)).detections[0].box.as_tuple() == (40, 238, 126, 349)
    # [182, 0, 998, 1000] at 640x480: y 87.36 -> 87, y 479.04 -> 480
    last = parse_response(sample_text(6), SPILL_SIZE).detections[-1]
    assert last.box.as_tuple() == (0, 87, 640, 480)
    assert last.label.startswith("This white marble-patterned countertop")


def test_real_answer_duplicates_are_dropped_with_their_labels_noted() -> None:
    parsed = parse_response(sample_text(3), (620, 620))

    assert len(sample_entries(3)) == 15
    assert len(parsed.detections) == 13
    assert "metal lid of red jar" not in labels(parsed)
    assert "metal lid of milk jar" not in labels(parsed)
    # [272, 296, 376, 396]: x 183.52 -> 183, y 168.64 -> 168, x 245.52 -> 246, y 233.12 -> 234
    kept = parsed.detections[labels(parsed).index("glass body of red jar")]
    assert kept.box.as_tuple() == (183, 168, 246, 234)
    (note,) = parsed.notes
    assert "duplicate" in note and "(2)" in note
    assert "metal lid of red jar" in note and "metal lid of milk jar" in note


@pytest.mark.parametrize("n", [2, 3])
def test_real_masks_are_box_size_binary_and_match_the_source_png(n: int) -> None:
    parsed = parse_response(sample_text(n), (620, 620))
    kept = _kept_entries(n)
    assert labels(parsed) == [entry["label"] for entry in kept]

    for detection, entry in zip(parsed.detections, kept, strict=False):
        assert 0.05 <= assert_binary_box_mask(detection) <= 1.0
        # Shrunk back to the PNG's 256x256 grid the mask must overlap the model's own mask.
        source = Image.open(io.BytesIO(base64.b64decode(entry["mask"].split(",", 1)[1]))).convert("L")
        source = source.point([0] * 128 + [255] * 128)
        ours = detection.mask.resize(source.size, Image.Resampling.NEAREST)
        intersection = ImageChops.darker(ours, source).histogram()[255]
        union = ImageChops.lighter(ours, source).histogram()[255]
        assert intersection / union > 0.85, detection.label


def _kept_entries(n: int) -> list[dict]:
    kept, seen = [], set()
    for entry in sample_entries(n):
        box = pixel_box(entry["box_2d"], (620, 620))
        if box not in seen:
            seen.add(box)
            kept.append(entry)
    return kept


def test_cupcake_boxes_hold_high_contrast_content_unlike_the_bare_table() -> None:
    # A cupcake box holds frosting against a paper cup (luminance spread 64-82 on this photo);
    # bare table patches spread 11-14. Computing both shows the statistic discriminates.
    with Image.open(shared_fixture("gemini", "sample_1.png")) as image:
        gray = image.convert("L")
    table_patches = [(440, 560, 620, 620), (0, 560, 80, 620), (0, 300, 30, 420), (560, 440, 620, 470)]
    table_spread = max(ImageStat.Stat(gray.crop(patch)).stddev[0] for patch in table_patches)
    assert table_spread < 20

    parsed = parse_response(sample_text(1), gray.size)
    spreads = [ImageStat.Stat(gray.crop(d.box.as_tuple())).stddev[0] for d in parsed.detections]
    assert len(spreads) == 13
    assert min(spreads) > 2.5 * table_spread


# --- cut-off answers ------------------------------------------------------------------------


def test_every_cut_point_of_a_real_answer_keeps_exactly_the_complete_objects() -> None:
    text = sample_text(4)
    size = (620, 620)
    expected = [pixel_box(entry["box_2d"], size) for entry in sample_entries(4)]
    object_ends = [match.end() for match in re.finditer(r"\}", text)]  # one brace per flat object
    assert len(object_ends) == 15
    first_object = text.index("{")
    list_end = text.rindex("]") + 1

    for cut in range(len(text) + 1):
        if cut <= first_object:  # "```json\n[" with no object begun is not an answer yet
            with pytest.raises(ResponseParseError):
                parse_response(text[:cut], size)
            continue
        parsed = parse_response(text[:cut], size)
        complete = sum(end <= cut for end in object_ends)
        assert boxes(parsed) == expected[:complete], cut
        assert parsed.partial is (cut < list_end), cut
        if parsed.partial:
            assert any("breaks off" in note for note in parsed.notes)


def test_cut_inside_a_mask_keeps_the_complete_objects_with_their_masks() -> None:
    text = sample_text(2)
    fifth_mask = [m.start() for m in re.finditer(r'"mask": "data:', text)][4]
    parsed = parse_response(text[: fifth_mask + 500], (620, 620))

    assert parsed.partial is True
    assert labels(parsed) == [entry["label"] for entry in sample_entries(2)[:4]]
    for detection in parsed.detections:
        assert assert_binary_box_mask(detection) > 0.05


def test_truncated_flag_marks_a_complete_answer_partial() -> None:
    parsed = parse_response(sample_text(5), (620, 620), truncated=True)

    assert len(parsed.detections) == 13
    assert parsed.partial is True
    assert any("truncated" in note for note in parsed.notes)
    assert parse_response(sample_text(5), (620, 620)).partial is False


def test_cut_before_the_first_object_finishes_is_partial_and_empty() -> None:
    parsed = parse_response('```json\n[\n  {"box_2d": [390, 64, 57', (620, 620))
    assert parsed.detections == []
    assert parsed.partial is True


def test_invalid_json_mid_list_keeps_what_came_before() -> None:
    text = '[{"box_2d": [0, 0, 500, 500], "label": "a"}, {"box_2d": [0, 0, 10, 10], "label": "b"} oops]'
    parsed = parse_response(text, (100, 100))
    assert labels(parsed) == ["a", "b"]
    assert parsed.partial is True


def test_trailing_comma_is_tolerated() -> None:
    parsed = parse_response('[{"box_2d": [0, 0, 500, 500], "label": "a"}, ]', (100, 100))
    assert labels(parsed) == ["a"]
    assert parsed.partial is False


# --- where the list is ----------------------------------------------------------------------

BODY = '[{"box_2d": [100, 200, 300, 400], "label": "bag"}, {"box_2d": [500, 500, 900, 1000], "label": "case"}]'
BODY_BOXES = [(200, 50, 400, 150), (500, 250, 1000, 450)]  # at 1000x500


@pytest.mark.parametrize(
    "text",
    [
        BODY,
        f"  \n{BODY}\n\n",
        f"```json\n{BODY}\n```",
        f"```JSON\n{BODY}```",
        f"```\n{BODY}\n```",
        f"Here are the bags [2 found]:\n```json\n{BODY}\n```\nTell me {{if}} you need more.",
        f"Sure! {BODY} Hope this helps.",
        f"Each entry looks like [{{box_2d, label}}]:\n```json\n{BODY}\n```",
        f'{{"objects": {BODY}}}',
        f'```json\n{{"detections": {BODY}}}\n```',
        f'{{"note": "two bags", "count": 2, "tags": ["x"], "items": {BODY}}}',
    ],
)
def test_list_is_found_through_fences_prose_and_wrappers(text: str) -> None:
    parsed = parse_response(text, (1000, 500))
    assert boxes(parsed) == BODY_BOXES
    assert labels(parsed) == ["bag", "case"]
    assert parsed.partial is False
    assert parsed.notes == ()


@pytest.mark.parametrize(
    "text",
    [
        '{"box_2d": [100, 200, 300, 400], "label": "bag"}',
        '```json\n{"box_2d": [100, 200, 300, 400], "label": "bag"}\n```',
    ],
)
def test_single_bare_object(text: str) -> None:
    parsed = parse_response(text, (1000, 500))
    assert boxes(parsed) == [(200, 50, 400, 150)]
    assert labels(parsed) == ["bag"]


def test_cut_off_wrapper_keeps_the_complete_inner_objects() -> None:
    parsed = parse_response(f'{{"objects": {BODY[:-30]}', (1000, 500))
    assert labels(parsed) == ["bag"]
    assert parsed.partial is True


@pytest.mark.parametrize("text", ["[]", "[ ]", "```json\n[]\n```", 'Nothing matches.\n{"objects": []}'])
def test_empty_list_is_a_valid_answer(text: str) -> None:
    parsed = parse_response(text, (100, 100))
    assert parsed == ParsedResponse(detections=[], partial=False, notes=())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "I could not find any luggage in this image.",
        "Sorry [no objects] {none}",
        '{"error": "blocked"}',
        "[1, 2, 3]",
        "```json\n```",
    ],
)
def test_answer_without_a_detections_list_raises(text: str) -> None:
    with pytest.raises(ResponseParseError, match="no list of detections"):
        parse_response(text, (100, 100))


def test_parse_error_quotes_a_short_excerpt() -> None:
    text = "The photo shows a conveyor belt. " * 50
    with pytest.raises(ResponseParseError) as raised:
        parse_response(text, (100, 100))
    message = str(raised.value)
    assert "The photo shows a conveyor belt." in message
    assert len(message) < 300


# --- box repairs ----------------------------------------------------------------------------


def test_swapped_coordinates_are_swapped() -> None:
    parsed = parse_response(answer({"box_2d": [300, 400, 100, 200], "label": "bag"}), (1000, 500))
    assert boxes(parsed) == [(200, 50, 400, 150)]
    assert any("swapped" in note and "'bag'" in note for note in parsed.notes)


def test_out_of_range_coordinates_are_clamped() -> None:
    parsed = parse_response(answer({"box_2d": [-50, -10, 1200, 500], "label": "bag"}), (1000, 500))
    assert boxes(parsed) == [(0, 0, 500, 500)]
    assert any("clamped" in note for note in parsed.notes)


def test_numbers_as_strings_and_floats() -> None:
    parsed = parse_response(answer({"box_2d": ["100", " 200.5 ", 300.25, "400"]}), (1000, 500))
    # x 200.5 -> 200, y 50, x 400, y 150.125 -> 151
    assert boxes(parsed) == [(200, 50, 400, 151)]


def test_a_sliver_box_never_collapses_to_zero_pixels() -> None:
    # In floats both edges scale to exactly 9.0 at width 11, so floor == ceil would lose the box;
    # the exact values straddle 9.
    xmin, xmax = 818.1818181818181, 818.1818181818182
    (detection,) = parse_response(answer({"box_2d": [0, xmin, 1000, xmax]}), (11, 1)).detections
    assert detection.box.x_min == math.floor(Fraction(xmin) * 11 / 1000)
    assert detection.box.x_max == math.ceil(Fraction(xmax) * 11 / 1000)
    assert 1 <= detection.box.width <= 2


def test_zero_area_boxes_are_dropped() -> None:
    text = answer(
        {"box_2d": [100, 200, 100, 400], "label": "flat"},
        {"box_2d": [1100, 0, 1200, 100], "label": "below the image"},
        {"box_2d": [100, 200, 300, 400], "label": "bag"},
    )
    parsed = parse_response(text, (1000, 500))
    assert labels(parsed) == ["bag"]
    assert any("zero-area" in note and "(2)" in note and "'flat'" in note for note in parsed.notes)


def test_duplicate_pixel_boxes_keep_the_first_whatever_the_label() -> None:
    text = answer(
        {"box_2d": [100, 100, 200, 200], "label": "jar"},
        {"box_2d": [100, 100, 200, 200], "label": "lid"},
        {"box_2d": [101, 101, 199, 199], "label": "same pixels"},  # (1, 1, 2, 2) at 10x10 too
        {"box_2d": [100, 100, 300, 300], "label": "jar"},
    )
    parsed = parse_response(text, (10, 10))
    assert boxes(parsed) == [(1, 1, 2, 2), (1, 1, 3, 3)]
    assert labels(parsed) == ["jar", "jar"]
    (note,) = parsed.notes
    assert "duplicate" in note and "(2)" in note and "'lid'" in note and "'same pixels'" in note


def test_max_objects_keeps_the_first_distinct_objects() -> None:
    entries = [{"box_2d": [0, 0, 100 * i, 100 * i], "label": f"o{i}"} for i in range(1, 6)]
    text = answer(entries[0], dict(entries[0], label="dup"), *entries[1:])

    parsed = parse_response(text, (1000, 1000), max_objects=3)
    assert labels(parsed) == ["o1", "o2", "o3"]
    assert any("max_objects=3" in note and "'o4'" in note and "'o5'" in note for note in parsed.notes)
    assert parse_response(text, (1000, 1000), max_objects=0).detections == []
    assert len(parse_response(text, (1000, 1000)).detections) == 5


def test_entries_without_a_valid_box_are_dropped() -> None:
    text = (
        '[{"box_2d": [0, 0, 500, 500], "label": "good"},'
        ' {"label": "no box"}, {"box_2d": [1, 2, 3], "label": "three"},'
        ' {"box_2d": "0, 0, 500, 500", "label": "string"}, {"box_2d": [0, "abc", 500, 500], "label": "abc"},'
        ' {"box_2d": [0, null, 500, 500]}, {"box_2d": [true, 0, 500, 500]}, {"box_2d": [NaN, 0, 500, 500]},'
        ' {"box_2d": [0, 0, 500, Infinity]}, 42, "text", [0, 0, 500, 500]]'
    )
    parsed = parse_response(text, (100, 100))
    assert labels(parsed) == ["good"]
    assert any("without a valid box_2d (8)" in note and "'no box'" in note for note in parsed.notes)
    assert any("not JSON objects (3)" in note for note in parsed.notes)


def test_a_list_whose_entries_all_lack_box_2d_is_a_malformed_answer() -> None:
    text = '[{"label": "suitcase", "color": "red"}, {"label": "backpack"}]'
    with pytest.raises(ResponseParseError, match="2 entries but none has a box_2d"):
        parse_response(text, (100, 100))
    with pytest.raises(ResponseParseError, match=r"\.\.\.'$"):
        parse_response("[" + ", ".join(['{"label": "x"}'] * 100) + "]", (100, 100))


def test_text_fields_default_stringify_and_strip() -> None:
    text = answer(
        {"box_2d": [0, 0, 100, 100]},
        {"box_2d": [0, 0, 200, 200], "label": "   "},
        {
            "box_2d": [0, 0, 300, 300],
            "label": 42,
            "color": None,
            "general_description": ["a", 1],
            "detailed_description": 3.5,
        },
        {
            "box_2d": [0, 0, 400, 400],
            "label": "  bag \n",
            "color": " red ",
            "general_description": " A bag. ",
            "detailed_description": "\tLeather, worn.\n",
        },
    )
    first, second, third, fourth = parse_response(text, (100, 100)).detections
    assert (first.label, first.color, first.general_description, first.detailed_description) == (
        "object",
        "",
        "",
        "",
    )
    assert second.label == "object"
    assert (third.label, third.color, third.general_description, third.detailed_description) == (
        "42",
        "",
        "['a', 1]",
        "3.5",
    )
    assert (fourth.label, fourth.color, fourth.general_description, fourth.detailed_description) == (
        "bag",
        "red",
        "A bag.",
        "Leather, worn.",
    )


def test_rejects_nonpositive_image_size_and_max_objects() -> None:
    with pytest.raises(ValueError):
        parse_response("[]", (0, 10))
    with pytest.raises(ValueError):
        parse_response("[]", (10, 10), max_objects=-1)


# --- masks ----------------------------------------------------------------------------------


def test_png_mask_is_resized_into_the_box_and_thresholded() -> None:
    # Left half 200 (object), right half 100 (background) tests the threshold, not just 0/255.
    text = answer({"box_2d": [500, 0, 1000, 1000], "mask": png_data_url(split_mask(200, 100))})
    (detection,) = parse_response(text, (200, 100)).detections
    assert detection.box.as_tuple() == (0, 50, 200, 100)
    assert 0.48 <= assert_binary_box_mask(detection) <= 0.52
    assert detection.mask.getpixel((10, 25)) == 255
    assert detection.mask.getpixel((190, 25)) == 0


def test_png_mask_is_resized_bilinearly_before_thresholding() -> None:
    # Gray levels 255 | 100 | 0 stretched to 300 px: bilinear crosses 127.5 at 0.5 + 127.5/155 source
    # pixels, i.e. about column 132; nearest-neighbour resizing would give exactly 100 columns.
    source = Image.new("L", (3, 1))
    source.putdata([255, 100, 0])
    text = answer({"box_2d": [0, 0, 1000, 1000], "mask": png_data_url(source)})
    (detection,) = parse_response(text, (300, 1)).detections
    assert 128 <= detection.mask.histogram()[255] <= 136


@pytest.mark.parametrize("level, expected", [(128, 1.0), (127, None)])
def test_png_mask_threshold_is_127(level: int, expected: float | None) -> None:
    text = answer({"box_2d": [0, 0, 1000, 1000], "mask": png_data_url(Image.new("L", (256, 256), level))})
    parsed = parse_response(text, (50, 40))
    (detection,) = parsed.detections
    if expected is None:  # all pixels at 127 are background: an empty mask is no mask
        assert detection.mask is None
        assert any("empty masks" in note for note in parsed.notes)
    else:
        assert assert_binary_box_mask(detection) == expected


@pytest.mark.parametrize("key", ["mask", "polygon", "points"])
def test_polygon_mask_is_rasterized_relative_to_the_box(key: str) -> None:
    # Box x 100..200, y 50..100 at 200x100; the polygon covers x 100..150: the box's left half.
    polygon = [[500, 500], [500, 750], [1000, 750], [1000, 500]]
    parsed = parse_response(answer({"box_2d": [500, 500, 1000, 1000], key: polygon}), (200, 100))
    (detection,) = parsed.detections
    assert detection.box.as_tuple() == (100, 50, 200, 100)
    assert 0.45 <= assert_binary_box_mask(detection) <= 0.55
    assert detection.mask.getpixel((10, 25)) == 255
    assert detection.mask.getpixel((90, 25)) == 0
    assert parsed.notes == ()


def _png_claiming_size(width: int, height: int) -> str:
    """A real 1x1 PNG whose header is rewritten to claim width x height (nothing is decoded)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 255).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR type + data CRC
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode()


def test_implausibly_large_mask_png_is_not_decompressed() -> None:
    text = answer({"box_2d": [0, 0, 500, 500], "label": "bag", "mask": _png_claiming_size(5000, 5000)})
    parsed = parse_response(text, (100, 100))
    assert parsed.detections[0].mask is None
    assert any("implausibly large" in note for note in parsed.notes)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 255).save(buffer, "JPEG")
    return buffer.getvalue()


def _cut_png() -> str:
    return HALF_PNG[: len(HALF_PNG) // 2]


@pytest.mark.parametrize(
    "mask",
    [
        "<start_of_mask><seg_12><seg_98><seg_3><end_of_mask>",
        "data:image/png;base64,!!!not base64!!!",
        "data:image/png;base64," + base64.b64encode(b"not a png at all").decode(),
        "data:image/png;base64," + base64.b64encode(_jpeg_bytes()).decode(),
        _cut_png(),
        "data:image/jpeg;base64," + base64.b64encode(_jpeg_bytes()).decode(),
        42,
        {"png": "x"},
        [[100, 100], [200, 200]],
        [[100, 100, 5], [200, 200], [300, 100]],
        [[100, "y"], [200, 200], [300, 100]],
        [1, 2, 3, 4],
    ],
)
def test_unusable_mask_keeps_the_detection_without_a_mask(mask: object) -> None:
    parsed = parse_response(answer({"box_2d": [0, 0, 500, 500], "label": "bag", "mask": mask}), (100, 100))
    (detection,) = parsed.detections
    assert detection.box.as_tuple() == (0, 0, 50, 50)
    assert detection.mask is None
    assert any("mask" in note and "'bag'" in note for note in parsed.notes)


# --- properties -----------------------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None)


@FAST
@given(st.text())
def test_any_text_returns_or_raises_parse_error(text: str) -> None:
    try:
        parsed = parse_response(text, (640, 480))
    except ResponseParseError:
        return
    assert isinstance(parsed, ParsedResponse)


ANY_NUMBER = st.one_of(
    st.integers(-3000, 3000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3000, 3000).map(str),
    st.sampled_from([None, True, "", "abc", "1e999", "nan", 10**400]),
)
MASKS = st.one_of(
    st.none(),
    st.sampled_from([HALF_PNG, _cut_png(), "data:image/png;base64,AAAA", "<start_of_mask><seg_1>"]),
    st.lists(st.lists(ANY_NUMBER, max_size=3), max_size=5),
)
ENTRIES = st.fixed_dictionaries(
    {"box_2d": st.one_of(st.lists(ANY_NUMBER, min_size=3, max_size=5), ANY_NUMBER)},
    optional={"label": st.one_of(st.text(max_size=8), ANY_NUMBER), "mask": MASKS, "color": st.text(max_size=5)},
)
WRAPPERS = st.sampled_from(["@", "```json\n@\n```", '{"objects": @}', "Here you go: @ Done.", "```\n@"])


@FAST
@given(
    entries=st.lists(st.one_of(ENTRIES, ANY_NUMBER), max_size=5),
    wrapper=WRAPPERS,
    cut=st.floats(0, 1),
    size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    max_objects=st.none() | st.integers(0, 5),
    truncated=st.booleans(),
)
def test_jsonish_answers_return_or_raise_parse_error(entries, wrapper, cut, size, max_objects, truncated) -> None:
    text = wrapper.replace("@", json.dumps(entries))
    text = text[: round(len(text) * cut)]
    try:
        parsed = parse_response(text, size, max_objects=max_objects, truncated=truncated)
    except ResponseParseError:
        return
    width, height = size
    for detection in parsed.detections:
        box = detection.box
        assert 0 <= box.x_min < box.x_max <= width and 0 <= box.y_min < box.y_max <= height
        if detection.mask is not None:
            assert_binary_box_mask(detection)
    if max_objects is not None:
        assert len(parsed.detections) <= max_objects
    if truncated:
        assert parsed.partial


COORDINATE = st.one_of(
    st.integers(-3000, 3000),
    st.floats(-3000, 3000, allow_nan=False),
    st.integers(-3000, 3000).map(str),
    st.floats(-3000, 3000, allow_nan=False).map(repr),
)


def _clamped(value: object) -> Fraction:
    return min(max(Fraction(float(value)), Fraction(0)), Fraction(1000))


@FAST
@given(width=st.integers(1, 10000), height=st.integers(1, 10000), box_2d=st.lists(COORDINATE, min_size=4, max_size=4))
def test_boxes_lie_inside_the_image_and_cover_the_normalized_box(width, height, box_2d) -> None:
    parsed = parse_response(answer({"box_2d": box_2d}), (width, height))
    ymin, xmin, ymax, xmax = (_clamped(value) for value in box_2d)
    ymin, ymax = sorted((ymin, ymax))
    xmin, xmax = sorted((xmin, xmax))
    if ymin == ymax or xmin == xmax:
        assert parsed.detections == []
        return
    (detection,) = parsed.detections
    box = detection.box
    assert 0 <= box.x_min < box.x_max <= width and 0 <= box.y_min < box.y_max <= height
    # floor / ceil of the exact scaled values
    assert box.x_min <= xmin * width / 1000 < box.x_min + 1
    assert box.y_min <= ymin * height / 1000 < box.y_min + 1
    assert box.x_max - 1 < xmax * width / 1000 <= box.x_max
    assert box.y_max - 1 < ymax * height / 1000 <= box.y_max


@FAST
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    box_2d=st.lists(st.integers(-100, 1100), min_size=4, max_size=4),
    kind=st.sampled_from(["png", "full polygon", "random polygon"]),
    points=st.lists(st.tuples(st.integers(-100, 1100), st.integers(-100, 1100)), min_size=3, max_size=6),
)
def test_masks_always_match_their_box(width, height, box_2d, kind, points) -> None:
    ymin, xmin, ymax, xmax = box_2d
    mask = {
        "png": HALF_PNG,
        "full polygon": [[ymin, xmin], [ymin, xmax], [ymax, xmax], [ymax, xmin]],
        "random polygon": [list(point) for point in points],
    }[kind]
    parsed = parse_response(answer({"box_2d": box_2d, "mask": mask}), (width, height))
    for detection in parsed.detections:
        if detection.mask is not None:
            assert_binary_box_mask(detection)
        elif kind != "random polygon":
            # A half-full or full mask can only vanish in a box too small to hold it.
            assert min(detection.box.width, detection.box.height) < 8
