"""Turn Gemini's text answer into `Detection`s in pixel coordinates of the original image.

We ask for a bare JSON array of objects with ``box_2d = [ymin, xmin, ymax, xmax]`` normalized
to 0-1000, but real answers (see ``../shared/fixtures/gemini``) differ from the request:

- the array comes inside a ```` ```json ```` fence although the instruction forbids fences,
  sometimes with prose before or after it, or wrapped in an object (``{"objects": [...]}``),
  or as one bare object;
- the answer stops mid-list when the model hits its output-token limit;
- the same box appears twice under two labels, coordinates are swapped, out of range,
  floats or strings;
- segmentation answers carry ``"mask": "data:image/png;base64,..."``, a 256x256 grayscale PNG
  that covers the box; other models emit polygons or ``<seg_NN>`` tokens instead.

The parser looks for the first JSON value in the text that holds detections, so fences and
prose need no special case. A list is read one element at a time with
`json.JSONDecoder.raw_decode`, so a cut-off answer keeps every complete object before the cut
and is reported as ``partial``. Problems that cost an object or a mask never fail the parse;
they become human-readable ``notes``. Only an answer with no detections list at all raises
`ResponseParseError`. A number too long for Python's int (over 4300 digits) costs only the
object it is in: it reads as infinity, which no box accepts.

Answers that parse but cannot be right are refused by `refuse_unusable_boxes` (the detector
asks once more): objects listed but none with a usable box (`NoUsableBoxesError`, never an
empty belt), and boxes that are all on a 0-1 scale instead of 0-1000 (`BoxScaleError`).

Mapping. The model saw a downscaled copy with the original's aspect ratio, so normalized
coordinates apply to the original size ``(W, H)`` directly. After clamping each value to
0..1000 and swapping min/max where reversed::

    x_min = floor(xmin * W / 1000)    y_min = floor(ymin * H / 1000)
    x_max = ceil(xmax * W / 1000)     y_max = ceil(ymax * H / 1000)

computed exactly (rational arithmetic). The box therefore lies in [0, W] x [0, H], has
exclusive maxima, and covers every pixel the normalized box touches.

>>> answer = '```json [{"box_2d": [384, 65, 562, 203], "label": "red sprinkles"}] ```'
>>> parsed = parse_response(answer, (620, 620))
>>> parsed.detections[0].box, parsed.detections[0].label, parsed.partial
(Box(x_min=40, y_min=238, x_max=126, y_max=349), 'red sprinkles', False)
>>> cut = '[{"box_2d": [0, 0, 500, 500], "label": "bag"}, {"box_2d": [5'
>>> parsed = parse_response(cut, (100, 100))
>>> len(parsed.detections), parsed.partial
(1, True)
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from PIL import Image, ImageDraw

from segmentation.detections import Box, Detection
from segmentation.errors import BoxScaleError, NoUsableBoxesError, ResponseParseError

# Longer integers are read as floats: int() refuses more than 4300 digits, and a ValueError
# in the middle of the list would read as the answer breaking off there.
_MAX_INT_DIGITS = 100


def _json_int(digits: str) -> int | float:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else float(digits)


# strict=False lets raw newlines inside strings through; models emit them in long descriptions.
_DECODER = json.JSONDecoder(strict=False, parse_int=_json_int)
# Where a detections container may start: a list whose first element is an object (or an
# empty list), or an object whose first key is a string. Other brackets are prose.
_CANDIDATE = re.compile(r'\[(?=[ \t\n\r]*[{\]])|\{(?=[ \t\n\r]*")')
_PNG_PREFIX = "data:image/png;base64,"
_MASK_KEYS = ("mask", "polygon", "points")
_NOT_A_MASK = "ignored masks that are neither a PNG data URL nor a [y, x] polygon"
# A mask PNG is 256x256 in practice; refuse to decompress anything absurdly larger.
_MAX_MASK_PIXELS = 4096 * 4096
_THRESHOLD = [0] * 128 + [255] * 128  # a Pillow lookup table: values above 127 are object
_EXCERPT_CHARS = 200
_NOTE_ITEMS = 5
_ITEM_CHARS = 60


@dataclass(frozen=True)
class ParsedResponse:
    """The detections found in one answer.

    `detections` are pixel boxes in the original image, in answer order. `partial` is True
    when the answer was cut off (or the caller said it was truncated) and only the complete
    objects were kept. `notes` say what was fixed or dropped. `unusable` counts the entries
    dropped because they held no usable box (not duplicates, nor those beyond max_objects);
    `scale_0_1` says every kept box reads as a 0-1 box (see `refuse_unusable_boxes`).
    """

    detections: list[Detection]
    partial: bool
    notes: tuple[str, ...]
    unusable: int = 0
    scale_0_1: bool = False


class _MaskError(ValueError):
    """A mask field that cannot become a mask; its message is the note's heading."""


@dataclass
class _Notes:
    """Collects what was fixed or dropped, grouped so one note covers every object it hit."""

    lines: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def add(self, what: str, item: str) -> None:
        self.groups.setdefault(what, []).append(item)

    def render(self) -> tuple[str, ...]:
        grouped = []
        for what, items in self.groups.items():
            shown = ", ".join(items[:_NOTE_ITEMS]) + (", ..." if len(items) > _NOTE_ITEMS else "")
            grouped.append(f"{what} ({len(items)}): {shown}")
        return (*self.lines, *grouped)


def parse_response(
    text: str,
    image_size: tuple[int, int],
    *,
    max_objects: int | None = None,
    truncated: bool = False,
    point_order: str = "yx",
) -> ParsedResponse:
    """Parse a model answer into detections for an image of `image_size` = (width, height).

    `point_order` is how the model writes polygon mask points: "yx" ([y, x], the default) or
    "xy" (Gemini 3.5-3.7, see `segmentation.models`).

    `max_objects` keeps only the first that many valid, distinct objects. `truncated` says the
    model stopped at its token limit, which makes the result partial even if the JSON closed.
    Raises `ResponseParseError` when the text holds no detections list at all, or only a
    list whose entries all lack `box_2d`.
    """
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    if max_objects is not None and max_objects < 0:
        raise ValueError(f"max_objects must be >= 0, got {max_objects!r}")

    entries, complete = _find_entries(text)
    if entries and not any(isinstance(entry, dict) and "box_2d" in entry for entry in entries):
        # A list of things without coordinates is a malformed answer, not an empty belt:
        # raising lets the caller ask again instead of recording "nothing found".
        raise ResponseParseError(f"the answer lists {len(entries)} entries but none has a box_2d: {_excerpt(text)!r}")
    notes = _Notes()
    if not complete:
        notes.lines.append(
            f"answer breaks off (cut off or invalid JSON); kept the {len(entries)} complete object(s) before the break"
        )
    elif truncated:
        notes.lines.append("answer was reported truncated although its JSON list is complete")

    detections: list[Detection] = []
    kept_boxes: dict[Box, str] = {}
    kept_normalized: list[tuple[float, float, float, float]] = []
    unusable = 0
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            notes.add("dropped entries that are not JSON objects", f"#{index + 1} {_clip(repr(entry))}")
            unusable += 1
            continue
        label = _text(entry, "label") or "object"
        normalized = _normalized_box(entry.get("box_2d"), label, notes)
        if normalized is None:
            unusable += 1
            continue
        box = _to_pixels(normalized, image_size)
        if box in kept_boxes:
            notes.add("dropped duplicate boxes", f"{_clip(label)!r} (same box as {_clip(kept_boxes[box])!r})")
            continue
        if max_objects is not None and len(detections) >= max_objects:
            notes.add(f"dropped objects beyond max_objects={max_objects}", repr(_clip(label)))
            continue
        kept_boxes[box] = label
        kept_normalized.append(normalized)
        detections.append(
            Detection(
                box=box,
                label=label,
                color=_text(entry, "color"),
                general_description=_text(entry, "general_description"),
                detailed_description=_text(entry, "detailed_description"),
                mask=_entry_mask(entry, box, image_size, label, notes, point_order),
            )
        )
    return ParsedResponse(
        detections=detections,
        partial=truncated or not complete,
        notes=notes.render(),
        unusable=unusable,
        scale_0_1=_reads_as_0_1(kept_normalized),
    )


def refuse_unusable_boxes(parsed: ParsedResponse) -> ParsedResponse:
    """`parsed`, unless its boxes cannot be right: raises `BoxScaleError` when every box is on a
    0-1 scale, `NoUsableBoxesError` when objects were listed but none had a usable box.

    An answer of zero objects passes: that is an empty belt.

    >>> refuse_unusable_boxes(parse_response('[{"box_2d": [0.1, 0.2, 0.5, 0.6]}]', (100, 100)))
    Traceback (most recent call last):
    ...
    segmentation.errors.BoxScaleError: every box of the answer is on a 0-1 scale, not 0-1000: 1 box(es)
    """
    if parsed.scale_0_1:
        raise BoxScaleError(f"every box of the answer is on a 0-1 scale, not 0-1000: {len(parsed.detections)} box(es)")
    if parsed.unusable and not parsed.detections:
        raise NoUsableBoxesError(
            f"the answer lists {parsed.unusable} object(s) but none has a usable box: "
            + "; ".join(parsed.notes)[: _EXCERPT_CHARS * 2]
        )
    return parsed


def _reads_as_0_1(boxes: list[tuple[float, float, float, float]]) -> bool:
    """Whether every box lies within 0-1 with some coordinate a fraction: Gemini's box_2d is
    integers 0-1000, so such boxes were given on a 0-1 scale. Integer boxes inside 0-1 (one
    genuinely tiny box in a corner) are not, and one box beyond 1 clears the whole answer."""
    coordinates = [value for box in boxes for value in box]
    return (
        bool(coordinates)
        and all(value <= 1.0 for value in coordinates)
        and any(value != int(value) for value in coordinates)
    )


def _find_entries(text: str) -> tuple[list[Any], bool]:
    """The first detections list in `text`, and whether it is complete (False: it breaks off).

    A list that breaks off before its first complete object is only a fallback: it may be
    prose like "[{x}]" in front of the real answer.
    """
    saw_unfinished_list = False
    for candidate in _CANDIDATE.finditer(text):
        start = candidate.start()
        if text[start] == "[":
            items, complete = _scan_list(text, start)
            if items or complete:
                return items, complete
            saw_unfinished_list = True
            continue
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue  # an unfinished wrapper object: its inner list is a later candidate
        entries = _unwrap(value)
        if entries is not None:
            return entries, True
    if saw_unfinished_list:
        return [], False
    raise ResponseParseError(f"no list of detections in the model's answer: {_excerpt(text)!r}")


def _scan_list(text: str, start: int) -> tuple[list[Any], bool]:
    """Decode the JSON list opening at `start` element by element, keeping what decodes.

    Returns the elements before the first one that fails to decode, and whether the list
    closed properly. A trailing comma before "]" is tolerated.
    """
    items: list[Any] = []
    pos = _skip_whitespace(text, start + 1)
    if text.startswith("]", pos):
        return items, True
    while True:
        # Cut-off text raises JSONDecodeError, a ValueError like the one for >4300-digit ints;
        # absurdly deep nesting raises RecursionError.
        try:
            item, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return items, False
        items.append(item)
        pos = _skip_whitespace(text, pos)
        if not text.startswith(",", pos):
            return items, text.startswith("]", pos)
        pos = _skip_whitespace(text, pos + 1)
        if text.startswith("]", pos):
            return items, True


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _unwrap(value: dict[str, Any]) -> list[Any] | None:
    """The detections held by a decoded JSON object: itself, one of its list values, or None."""
    if "box_2d" in value:
        return [value]
    for inner in value.values():
        if isinstance(inner, list) and (
            not inner or any(isinstance(item, dict) and "box_2d" in item for item in inner)
        ):
            return inner
    return None


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    return (value if isinstance(value, str) else str(value)).strip()


def _number(value: Any) -> float | None:
    """A JSON number or numeric string as a finite float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1000.0)


def _normalized_box(value: Any, label: str, notes: _Notes) -> tuple[float, float, float, float] | None:
    """A valid `box_2d` as clamped, ordered (ymin, xmin, ymax, xmax); None (with a note) if unusable."""
    numbers = [_number(item) for item in value] if isinstance(value, list) and len(value) == 4 else []
    if len(numbers) != 4 or any(number is None for number in numbers):
        notes.add("dropped entries without a valid box_2d", f"{_clip(label)!r}: {_clip(repr(value))}")
        return None
    clamped = [_clamp(number) for number in numbers]  # type: ignore[arg-type]  # no None: checked above
    if clamped != numbers:
        notes.add("clamped coordinates to 0-1000", repr(_clip(label)))
    ymin, xmin, ymax, xmax = clamped
    if ymin > ymax or xmin > xmax:
        notes.add("swapped reversed coordinates", repr(_clip(label)))
    ymin, ymax = sorted((ymin, ymax))
    xmin, xmax = sorted((xmin, xmax))
    if ymin == ymax or xmin == xmax:
        notes.add("dropped zero-area boxes", repr(_clip(label)))
        return None
    return ymin, xmin, ymax, xmax


def _to_pixels(normalized: tuple[float, float, float, float], image_size: tuple[int, int]) -> Box:
    # Exact fractions: float rounding could make floor(a) == ceil(b) for a < b and lose a box.
    ymin, xmin, ymax, xmax = (Fraction(value) for value in normalized)
    width, height = image_size
    return Box(
        x_min=math.floor(xmin * width / 1000),
        y_min=math.floor(ymin * height / 1000),
        x_max=math.ceil(xmax * width / 1000),
        y_max=math.ceil(ymax * height / 1000),
    )


def _entry_mask(
    entry: dict[str, Any],
    box: Box,
    image_size: tuple[int, int],
    label: str,
    notes: _Notes,
    point_order: str = "yx",
) -> Image.Image | None:
    """The entry's mask as a box-size mode-"L" 0/255 image; None (with a note) when unusable."""
    raw = next((entry[key] for key in _MASK_KEYS if entry.get(key) is not None), None)
    if raw is None:
        return None
    try:
        if isinstance(raw, str) and raw.strip().startswith(_PNG_PREFIX):
            mask = _png_mask(raw.strip()[len(_PNG_PREFIX) :], box)
        elif isinstance(raw, list):
            mask = _polygon_mask(raw, box, image_size, point_order)
        else:
            raise _MaskError(_NOT_A_MASK)
        if mask.getbbox() is None:
            raise _MaskError("ignored empty masks")
    except _MaskError as problem:
        notes.add(str(problem), f"{_clip(label)!r}: {_clip(repr(raw))}")
        return None
    return mask


def _png_mask(payload: str, box: Box) -> Image.Image:
    """Decode a base64 PNG, stretch it over the box (bilinear) and threshold it at 127."""
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload)), formats=["PNG"])
        if image.width * image.height > _MAX_MASK_PIXELS:
            raise _MaskError("ignored mask PNGs that are implausibly large")
        gray = image.convert("L")
    except _MaskError:
        raise
    # Hostile bytes make base64 and Pillow's decoders raise many unrelated types (binascii.Error,
    # OSError, SyntaxError, zlib.error, DecompressionBombError...); a bad mask must cost only the mask.
    except Exception as exc:
        raise _MaskError("ignored masks that are not a decodable PNG") from exc
    return gray.resize((box.width, box.height), Image.Resampling.BILINEAR).point(_THRESHOLD)


def _polygon_mask(points: list[Any], box: Box, image_size: tuple[int, int], point_order: str = "yx") -> Image.Image:
    """Rasterize [[y, x], ...] (or [[x, y], ...] for "xy"; normalized 0-1000, whole image) into a box-size mask."""
    width, height = image_size
    vertices = []
    for point in points:
        coords = [_number(item) for item in point] if isinstance(point, list) and len(point) == 2 else []
        if len(coords) != 2 or coords[0] is None or coords[1] is None:
            raise _MaskError(_NOT_A_MASK)
        y, x = (_clamp(coord) for coord in (coords if point_order == "yx" else coords[::-1]))  # type: ignore[arg-type]
        vertices.append((x * width / 1000 - box.x_min, y * height / 1000 - box.y_min))
    if len(vertices) < 3:
        raise _MaskError("ignored polygon masks with fewer than 3 points")
    mask = Image.new("L", (box.width, box.height), 0)
    ImageDraw.Draw(mask).polygon(vertices, fill=255)
    return mask


def _excerpt(text: str) -> str:
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _clip(value: str) -> str:
    return value if len(value) <= _ITEM_CHARS else value[: _ITEM_CHARS - 3] + "..."
