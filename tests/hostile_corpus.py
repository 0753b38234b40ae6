"""The hostile-input corpus for tests/test_hostile.py, every case built in memory.

No binary file is committed: each input is drawn with Pillow or assembled byte by byte here
(PNG, TIFF, GIF and JPEG headers are small enough to write out), so every case says what it is
and why, and stays small (the largest is the 20000x1 PNG, a few hundred bytes).

Three kinds of case:

- `UploadCase`: an object uploaded under `raw/` with a hostile name, content or content type;
  the test delivers the object's finalize event as Eventarc would.
- `ForgedObjectEvent`: a finalize event for an object that Cloud Storage could never hold
  (a name with a line feed, over 1024 bytes); only a forged event can name it.
- `EventCase`: an event with missing or wrong fields, sent through functions-framework in both
  binary and structured mode.

Each case carries its one expected, recorded outcome (`Expect`).

Valid images are drawn as four coloured quadrants, and the Gemini wire server answers the four
quadrant boxes (`FIXED_ANSWER`), so a crop's colour proves that the box landed on the right
pixels of the upright, RGB-converted original.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from tests.harness import BUCKET

RGB = tuple[int, int, int]

SIZE = (64, 48)  # (width, height) of the upright quadrant picture
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
QUADRANTS: tuple[RGB, RGB, RGB, RGB] = (RED, GREEN, BLUE, YELLOW)  # top left, top right, bottom left, bottom right

# box_2d = [ymin, xmin, ymax, xmax], normalized to 0-1000: the four quadrants, in QUADRANTS order.
QUADRANT_BOXES = ([0, 0, 500, 500], [0, 500, 500, 1000], [500, 0, 1000, 500], [500, 500, 1000, 1000])
FIXED_ANSWER = json.dumps(
    [
        {
            "box_2d": box,
            "label": label,
            "color": label,
            "general_description": "quadrant",
            "detailed_description": f"the {label} quadrant",
        }
        for box, label in zip(QUADRANT_BOXES, ("top left", "top right", "bottom left", "bottom right"), strict=False)
    ]
)


# --- expected outcomes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """The one recorded outcome of a case.

    `status` (with `error_type`): one image row with that status. `log`: no row, and one log
    line of that kind: "ignored" (INFO "ignored: <reason>", the object is not ours) or
    "warning" (WARNING "ignored event: ...", the event names no object). `http` is the
    function's HTTP status.
    """

    status: str | None = None
    error_type: str | None = None
    objects: int | None = None  # objects found (ok rows)
    size: tuple[int, int] | None = None  # (width, height) of the upright original
    colours: tuple[RGB, ...] | None = None  # the colour of crop 1, 2, ... in order
    log: str | None = None
    reason: str | None = None  # text the log line's message contains
    outputs: frozenset[str] | None = None  # exactly the objects the function writes
    crops_under: str | None = None  # every crop name starts with this
    http: int = 200


def ok(colours: tuple[RGB, ...] = QUADRANTS, size: tuple[int, int] = SIZE, **kwargs: Any) -> Expect:
    return Expect(status="ok", objects=len(colours), size=size, colours=colours, **kwargs)


def failed(error_type: str) -> Expect:
    return Expect(status="failed", error_type=error_type)


def ignored(reason: str) -> Expect:
    return Expect(log="ignored", reason=reason)


WARNING = Expect(log="warning")


def layout(relative: str, crops: int = 4) -> frozenset[str]:
    """What the README's output table says `raw/<relative>` gives: crops, overview, marker, claim."""
    stem = relative
    head, _, tail = stem.rpartition("/")
    overview = f"processed-overview/{head + '/' if head else ''}processed_{tail}.jpg"
    return frozenset(
        {
            *(f"processed/{stem}-output-{n:04d}.jpg" for n in range(1, crops + 1)),
            overview,
            f"processed-markers/{relative}.json",
            f"processed-markers/{relative}.claim",
        }
    )


# --- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadCase:
    id: str
    name: str
    build: Callable[[], bytes]
    content_type: str
    expect: Expect
    # Fields of the event's object resource replaced (None: left out, as a minimal event would).
    event: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return self.build()


@dataclass(frozen=True)
class ForgedObjectEvent:
    """A finalize event for an object name Cloud Storage refuses (so no upload can create it)."""

    id: str
    name: str
    expect: Expect


@dataclass(frozen=True)
class RawBody:
    """Event data that is not JSON: the binary-mode body, or a JSON string in structured mode."""

    body: bytes


@dataclass(frozen=True)
class EventCase:
    id: str
    build: Callable[[], Any]  # the event's data: JSON-able, RawBody, or None for JSON null
    expect: Expect = WARNING
    type: str = "google.cloud.storage.object.v1.finalized"

    @property
    def data(self) -> Any:
        return self.build()


# --- image builders ----------------------------------------------------------------------------


def quadrant_image(
    size: tuple[int, int] = SIZE, colours: tuple[RGB, ...] = QUADRANTS, mode: str = "RGB"
) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size)
    half_w, half_h = width / 2, height / 2
    for index, colour in enumerate(colours):
        left, top = (index % 2) * half_w, (index // 2) * half_h
        box = (round(left), round(top), round(left + half_w), round(top + half_h))
        if box[2] > box[0] and box[3] > box[1]:
            image.paste(colour, box)
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def quadrant_png() -> bytes:
    return encode(quadrant_image(), "PNG")


def quadrant_jpeg() -> bytes:
    return encode(quadrant_image(), "JPEG", quality=95)


def _display_position(orientation: int, sx: int, sy: int, sw: int, sh: int) -> tuple[int, int]:
    """Where stored pixel (sx, sy) of an sw x sh JPEG shows for EXIF `orientation` (TIFF 6.0 / EXIF 2.3:
    the value names the visual position of the stored 0th row and 0th column)."""
    return {
        1: (sx, sy),
        2: (sw - 1 - sx, sy),
        3: (sw - 1 - sx, sh - 1 - sy),
        4: (sx, sh - 1 - sy),
        5: (sy, sx),
        6: (sh - 1 - sy, sx),
        7: (sh - 1 - sy, sw - 1 - sx),
        8: (sy, sw - 1 - sx),
    }[orientation]


def exif_jpeg(orientation: int) -> bytes:
    """A JPEG whose pixels are stored so that, shown per its EXIF `orientation`, it is the upright
    quadrant picture (SIZE). Drawn pixel by pixel from the EXIF definition, not with Pillow's
    transpose, so the test does not check Pillow against itself."""
    upright = quadrant_image()
    width, height = SIZE
    sw, sh = (height, width) if orientation >= 5 else (width, height)
    stored = Image.new("RGB", (sw, sh))
    pixels = stored.load()
    source = upright.load()
    for sy in range(sh):
        for sx in range(sw):
            pixels[sx, sy] = source[_display_position(orientation, sx, sy, sw, sh)]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif)


def cmyk_jpeg() -> bytes:
    return encode(quadrant_image(mode="CMYK"), "JPEG", quality=95)


def grey16_png() -> bytes:
    """16-bit greyscale quadrants 1000, 21000, 41000, 61000: stretched to 0, 85, 170, 255."""
    return _png(SIZE, 16, 0, lambda x, y: struct.pack(">H", GREY16[_quadrant(x, y)]))


GREY16 = (1000, 21000, 41000, 61000)
GREY16_AS_RGB: tuple[RGB, ...] = tuple((v, v, v) for v in (0, 85, 170, 255))


def rgb48_png() -> bytes:
    """16 bits per channel RGB (a 48-bit PNG), the quadrant colours scaled to 0..65535."""
    return _png(SIZE, 16, 2, lambda x, y: struct.pack(">HHH", *(c * 257 for c in QUADRANTS[_quadrant(x, y)])))


def _quadrant(x: int, y: int) -> int:
    return (1 if x >= SIZE[0] // 2 else 0) + (2 if y >= SIZE[1] // 2 else 0)


def animated_gif() -> bytes:
    """Three frames: the quadrants first, then black, then white. Only the first frame counts."""
    first = quadrant_image()
    frames = [Image.new("RGB", SIZE, (0, 0, 0)), Image.new("RGB", SIZE, (255, 255, 255))]
    return encode(first, "GIF", save_all=True, append_images=frames, duration=100, loop=0)


def halves_png(size: tuple[int, int]) -> bytes:
    """Red first half, blue second half, split along the long side (for extreme aspect ratios)."""
    width, height = size
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, width // 2, height) if width > height else (0, 0, width, height // 2))
    return encode(image, "PNG")


def one_pixel_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), GREEN), "PNG")


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png(
    size: tuple[int, int], depth: int, colour_type: int, pixel: Callable[[int, int], bytes], extra_chunks: bytes = b""
) -> bytes:
    width, height = size
    raw = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(width)) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
        + extra_chunks
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by one tiny IDAT (a decompression bomb
    is refused from the header, before a byte of pixel data is inflated)."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _chunk(b"IEND", b"")
    )


def png_text_bomb() -> bytes:
    """A valid 64x48 PNG with a zTXt chunk that inflates to 5 MB (text-chunk decompression bomb)."""
    bomb = b"Comment\x00\x00" + zlib.compress(b"\x00" * 5_000_000, 9)
    return _png(SIZE, 8, 2, lambda x, y: bytes(QUADRANTS[_quadrant(x, y)]), _chunk(b"zTXt", bomb))


def tiff_bomb(width: int = 200_000, height: int = 200_000) -> bytes:
    """A 300-byte bilevel deflate TIFF claiming width x height (40 gigapixels)."""
    strip = zlib.compress(b"\x00" * 4096, 9)
    entries = [  # (tag, type, count, value): type 3 SHORT, 4 LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 1),
        (259, 3, 1, 8),
        (262, 3, 1, 0),
        (273, 4, 1, 0),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip


def tiff_ifd_loop() -> bytes:
    """A valid 64x48 TIFF whose next-IFD pointer points back at its own IFD (an endless page chain)."""
    data = bytearray(encode(quadrant_image(), "TIFF"))
    ifd_offset = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd_offset : ifd_offset + 2])[0]
    next_pointer = ifd_offset + 2 + 12 * count
    data[next_pointer : next_pointer + 4] = struct.pack("<I", ifd_offset)
    return bytes(data)


def gif_screen_bomb() -> bytes:
    """A 1x1 GIF whose logical screen claims 65535x65535."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """The quadrant JPEG with its frame header (SOF0) rewritten to claim width x height."""
    data = bytearray(quadrant_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def truncated(build: Callable[[], bytes], keep: float) -> Callable[[], bytes]:
    return lambda: (data := build())[: int(len(data) * keep)]


def jpeg_with_garbage_scan() -> bytes:
    """Valid JPEG headers, then the entropy-coded scan replaced by 0xFF 0xD0-style marker soup."""
    data = quadrant_jpeg()
    sos = data.index(b"\xff\xda")
    header_length = struct.unpack(">H", data[sos + 2 : sos + 4])[0]
    scan_start = sos + 2 + header_length
    return data[:scan_start] + b"\xff\xd3\xff\x00\xff\xc8" * 200 + b"\xff\xd9"


def png_bad_crc(chunk: bytes) -> Callable[[], bytes]:
    """The quadrant PNG with the CRC of its first `chunk` (b"IHDR", b"IDAT") broken."""

    def build() -> bytes:
        data = bytearray(quadrant_png())
        start = data.index(chunk)
        length = struct.unpack(">I", data[start - 4 : start])[0]
        data[start + 4 + length] ^= 0xFF  # first byte of the chunk's CRC
        return bytes(data)

    return build


def exif_tag_jpeg(value: int) -> bytes:
    """The upright quadrant JPEG carrying an EXIF orientation outside 1-8 (ignored: shown as stored)."""
    exif = Image.Exif()
    exif[0x0112] = value
    return encode(quadrant_image(), "JPEG", quality=95, exif=exif)


def png_bad_zlib() -> bytes:
    """Correct chunk CRCs around an IDAT whose zlib stream is garbage."""
    good = quadrant_png()
    idat = good.index(b"IDAT")
    length = struct.unpack(">I", good[idat - 4 : idat])[0]
    garbage = bytes((i * 37 + 11) % 256 for i in range(length))
    return good[: idat - 4] + _chunk(b"IDAT", garbage) + good[idat + 8 + length :]


def ico_file() -> bytes:
    return encode(quadrant_image(), "ICO", sizes=[(32, 32)])


SVG_WITH_SCRIPT = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
TEXT = b"this is a text file named .jpg\n"


# --- the corpus ------------------------------------------------------------------------------------


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


CONTENT_CASES: list[UploadCase] = [
    # Not images, or broken ones: a failed row naming the problem.
    UploadCase("zero-bytes", "raw/hostile/zero.jpg", _const(b""), "image/jpeg", ignored("zero-byte object")),
    UploadCase(
        "zero-bytes-event-without-size",
        "raw/hostile/zero-nosize.jpg",
        _const(b""),
        "image/jpeg",
        failed("image_decode_error"),
        event={"size": None},
    ),
    UploadCase("text-named-jpg", "raw/hostile/text.jpg", _const(TEXT), "image/jpeg", failed("image_decode_error")),
    UploadCase(
        "text-named-jpg-untyped",
        "raw/hostile/text-untyped.jpg",
        _const(TEXT),
        "application/octet-stream",
        failed("image_decode_error"),
    ),
    UploadCase(
        "text-named-jpg-text-plain",
        "raw/hostile/text-plain.jpg",
        _const(TEXT),
        "text/plain",
        ignored("not an image (content type text/plain)"),
    ),
    UploadCase(
        "svg-with-script",
        "raw/hostile/evil.svg",
        _const(SVG_WITH_SCRIPT),
        "image/svg+xml",
        failed("image_decode_error"),
    ),
    UploadCase(
        "ico-unsupported-format", "raw/hostile/icon.ico", ico_file, "image/x-icon", failed("image_decode_error")
    ),
    UploadCase(
        "truncated-jpeg-half",
        "raw/hostile/truncated-half.jpg",
        truncated(quadrant_jpeg, 0.5),
        "image/jpeg",
        failed("image_decode_error"),
    ),
    UploadCase(
        "truncated-jpeg-headers-only",
        "raw/hostile/truncated-head.jpg",
        truncated(quadrant_jpeg, 0.2),
        "image/jpeg",
        failed("image_decode_error"),
    ),
    UploadCase(
        "jpeg-soi-then-garbage",
        "raw/hostile/garbage.jpg",
        _const(b"\xff\xd8\xff" + bytes(range(256)) * 4),
        "image/jpeg",
        failed("image_decode_error"),
    ),
    UploadCase(
        "jpeg-garbage-scan-data",
        "raw/hostile/garbage-scan.jpg",
        jpeg_with_garbage_scan,
        "image/jpeg",
        failed("image_decode_error"),
    ),
    UploadCase(
        "truncated-png",
        "raw/hostile/truncated.png",
        truncated(quadrant_png, 0.6),
        "image/png",
        failed("image_decode_error"),
    ),
    UploadCase(
        "png-bad-ihdr-crc",
        "raw/hostile/bad-ihdr-crc.png",
        png_bad_crc(b"IHDR"),
        "image/png",
        failed("image_decode_error"),
    ),
    UploadCase("png-bad-zlib", "raw/hostile/bad-zlib.png", png_bad_zlib, "image/png", failed("image_decode_error")),
    # Decompression bombs: refused from the header, before any pixel data is inflated.
    UploadCase(
        "png-header-100000x100000",
        "raw/hostile/bomb.png",
        lambda: png_claiming(100_000, 100_000),
        "image/png",
        failed("image_too_large"),
    ),
    UploadCase(
        "jpeg-header-65500x65500",
        "raw/hostile/bomb.jpg",
        lambda: jpeg_claiming(65_500, 65_500),
        "image/jpeg",
        failed("image_too_large"),
    ),
    UploadCase("tiff-bomb-200000x200000", "raw/hostile/bomb.tif", tiff_bomb, "image/tiff", failed("image_too_large")),
    UploadCase(
        "gif-screen-65535x65535", "raw/hostile/bomb.gif", gif_screen_bomb, "image/gif", failed("image_too_large")
    ),
    UploadCase(
        "png-ztxt-text-bomb", "raw/hostile/text-bomb.png", png_text_bomb, "image/png", failed("image_decode_error")
    ),
    # Valid but odd: processed, and the crops hold the right pixels.
    UploadCase("tiff-ifd-loop", "raw/hostile/ifd-loop.tif", tiff_ifd_loop, "image/tiff", ok()),
    # Pillow does not check IDAT checksums; the pixel data itself is intact.
    UploadCase(
        "png-bad-idat-crc-intact-pixels", "raw/hostile/bad-idat-crc.png", png_bad_crc(b"IDAT"), "image/png", ok()
    ),
    UploadCase("cmyk-jpeg", "raw/odd/cmyk.jpg", cmyk_jpeg, "image/jpeg", ok()),
    UploadCase("grey-16-bit-png", "raw/odd/grey16.png", grey16_png, "image/png", ok(GREY16_AS_RGB)),
    UploadCase("rgb-48-bit-png", "raw/odd/rgb48.png", rgb48_png, "image/png", ok()),
    UploadCase("animated-gif", "raw/odd/animated.gif", animated_gif, "image/gif", ok()),
    # 1 x 20000: the left and right quadrant boxes map to the same 1-pixel column, so the parser
    # keeps one box per half (duplicates dropped); likewise 20000 x 1 and 1 x 1.
    UploadCase(
        "aspect-1x20000",
        "raw/odd/tall.png",
        lambda: halves_png((1, 20_000)),
        "image/png",
        ok((RED, BLUE), size=(1, 20_000)),
    ),
    UploadCase(
        "aspect-20000x1",
        "raw/odd/wide.png",
        lambda: halves_png((20_000, 1)),
        "image/png",
        ok((RED, BLUE), size=(20_000, 1)),
    ),
    UploadCase("one-pixel", "raw/odd/one.png", one_pixel_png, "image/png", ok((GREEN,), size=(1, 1))),
    UploadCase("png-bytes-named-jpg", "raw/odd/really-a-png.jpg", quadrant_png, "image/jpeg", ok()),
    *(
        UploadCase(
            f"exif-orientation-{o}", f"raw/exif/orientation-{o}.jpg", (lambda o=o: exif_jpeg(o)), "image/jpeg", ok()
        )
        for o in range(2, 9)
    ),
    *(
        UploadCase(
            f"exif-orientation-invalid-{v}",
            f"raw/exif/invalid-{v}.jpg",
            (lambda v=v: exif_tag_jpeg(v)),
            "image/jpeg",
            ok(),
        )
        for v in (0, 9, 65535)
    ),
]

# Hostile names, each holding the quadrant PNG. `outputs` is what the README's layout says.
NAME_CASES: list[UploadCase] = [
    UploadCase(
        "spaces", "raw/cam 1/belt photo.png", quadrant_png, "image/png", ok(outputs=layout("cam 1/belt photo.png"))
    ),
    UploadCase(
        "unicode-nfc",
        "raw/caf\u00e9/\u00fcber.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("caf\u00e9/\u00fcber.png")),
    ),
    UploadCase(
        "unicode-nfd",
        "raw/cafe\u0301/u\u0308ber.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("cafe\u0301/u\u0308ber.png")),
    ),
    UploadCase(
        "emoji",
        "raw/\U0001f4f7/\U0001f9f3 bag.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("\U0001f4f7/\U0001f9f3 bag.png")),
    ),
    UploadCase(
        "rtl",
        "raw/\u05de\u05e6\u05dc\u05de\u05d4/\u0635\u0648\u0631\u0629.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("\u05de\u05e6\u05dc\u05de\u05d4/\u0635\u0648\u0631\u0629.png")),
    ),
    UploadCase(
        "rtl-override",
        "raw/invoice\u202egnp.exe.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("invoice\u202egnp.exe.png")),
    ),
    UploadCase(
        "control-chars",
        "raw/tab\there\x07bell\x1b[31m.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("tab\there\x07bell\x1b[31m.png")),
    ),
    UploadCase(
        "unicode-line-separators",
        "raw/line\u2028sep\u0085nel.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("line\u2028sep\u0085nel.png")),
    ),
    UploadCase(
        "url-characters",
        "raw/q?x=1&y=%2F#frag.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("q?x=1&y=%2F#frag.png")),
    ),
    UploadCase(
        "percent-encoded-dots",
        "raw/%2e%2e/%2E%2E/x.png",
        quadrant_png,
        "image/png",
        ok(outputs=layout("%2e%2e/%2E%2E/x.png")),
    ),
    UploadCase("only-extension", "raw/.jpg", quadrant_png, "image/jpeg", ok(outputs=layout(".jpg"))),
    UploadCase("many-dots", "raw/a.b.c.jpeg", quadrant_png, "image/jpeg", ok(outputs=layout("a.b.c.jpeg"))),
    UploadCase("no-extension-typed", "raw/noext", quadrant_png, "image/png", ok(outputs=layout("noext"))),
    UploadCase(
        "no-extension-untyped",
        "raw/noext-untyped",
        quadrant_png,
        "application/octet-stream",
        ignored("not an image (content type application/octet-stream)"),
    ),
    UploadCase(
        "upper-case-extension-untyped",
        "raw/UPPER.PNG",
        quadrant_png,
        "application/octet-stream",
        ok(outputs=layout("UPPER.PNG")),
    ),
    UploadCase("prefix-case", "Raw/x.png", quadrant_png, "image/png", ignored("outside source prefix raw/")),
    # Dot segments. Names are flat in Cloud Storage: raw/../processed/x.jpg is under raw/ (so it
    # is processed, not mistaken for an output), and none of these may share outputs with
    # raw/dup.png or climb out of the output prefixes.
    UploadCase(
        "dot-dot-into-processed",
        "raw/../processed/x.jpg",
        quadrant_png,
        "image/jpeg",
        ok(crops_under="processed/processed/x~"),
    ),
    UploadCase(
        "processed-dot-dot-into-raw",
        "processed/../raw/x.png",
        quadrant_png,
        "image/png",
        ignored("outside source prefix raw/"),
    ),
    UploadCase("plain-dup", "raw/dup.png", quadrant_png, "image/png", ok(outputs=layout("dup.png"))),
    UploadCase("double-slash-dup", "raw//dup.png", quadrant_png, "image/png", ok(crops_under="processed/dup~")),
    UploadCase("dot-segment-dup", "raw/./dup.png", quadrant_png, "image/png", ok(crops_under="processed/dup~")),
    UploadCase(
        "dot-dot-segment-dup", "raw/sub/../dup.png", quadrant_png, "image/png", ok(crops_under="processed/sub/dup~")
    ),
    UploadCase("only-dot-dot", "raw/..", quadrant_png, "image/png", ok(crops_under="processed/_~")),
    UploadCase(
        "name-1024-bytes",
        "raw/" + "n" * 1016 + ".png",
        quadrant_png,
        "image/png",
        ok(crops_under="processed/" + "n" * 900),
    ),
    UploadCase(
        "name-1024-bytes-multibyte",
        "raw/" + "\u00e9" * 508 + ".png",
        quadrant_png,
        "image/png",
        ok(crops_under="processed/" + "\u00e9" * 450),
    ),
]

# Names Cloud Storage refuses (https://cloud.google.com/storage/docs/objects#naming): the
# uploads fail, so only a forged event can name them. The event is refused with a warning.
FORGED_NAMES: list[ForgedObjectEvent] = [
    ForgedObjectEvent("line-feed", 'raw/evil\n{"severity": "CRITICAL"}.png', WARNING),
    ForgedObjectEvent("carriage-return", "raw/evil\rname.png", WARNING),
    ForgedObjectEvent("name-1025-bytes", "raw/" + "n" * 1017 + ".png", WARNING),
    ForgedObjectEvent("name-5000-bytes", "raw/" + "\u00e9" * 2500 + ".png", WARNING),
]

_OBJECT = {"name": "raw/hostile/event.png", "generation": "1", "size": "100", "contentType": "image/png"}

# Events that name no object we can read.
EVENT_CASES: list[EventCase] = [
    EventCase("missing-bucket", lambda: dict(_OBJECT)),
    EventCase("missing-name", lambda: {"bucket": BUCKET, **{k: v for k, v in _OBJECT.items() if k != "name"}}),
    EventCase("empty-name", lambda: {"bucket": BUCKET, **_OBJECT, "name": ""}),
    EventCase("name-not-a-string", lambda: {"bucket": BUCKET, **_OBJECT, "name": ["raw/a.png"]}),
    EventCase("bucket-not-a-string", lambda: {**_OBJECT, "bucket": {"name": BUCKET}}),
    EventCase("generation-abc", lambda: {"bucket": BUCKET, **_OBJECT, "generation": "abc"}),
    EventCase("generation-negative", lambda: {"bucket": BUCKET, **_OBJECT, "generation": "-5"}),
    EventCase("generation-float", lambda: {"bucket": BUCKET, **_OBJECT, "generation": 1.5}),
    EventCase("generation-bool", lambda: {"bucket": BUCKET, **_OBJECT, "generation": True}),
    EventCase("generation-5000-digits", lambda: {"bucket": BUCKET, **_OBJECT, "generation": "9" * 5000}),
    EventCase("size-minus-one", lambda: {"bucket": BUCKET, **_OBJECT, "size": "-1"}),
    EventCase("size-not-a-number", lambda: {"bucket": BUCKET, **_OBJECT, "size": {"bytes": 1}}),
    # The storage client puts the bucket into request URLs unescaped: this one would re-aim the
    # marker upload at raw/evil.jpg (the query's name= wins).
    EventCase(
        "bucket-url-injection",
        lambda: {**_OBJECT, "bucket": f"{BUCKET}/o?uploadType=multipart&name=raw%2Fevil.jpg&z=z"},
    ),
    EventCase("bucket-upper-case", lambda: {**_OBJECT, "bucket": "Conveyor-Test"}),
    EventCase(
        "wrong-type-deleted", lambda: {"bucket": BUCKET, **_OBJECT}, type="google.cloud.storage.object.v1.deleted"
    ),
    EventCase(
        "wrong-type-pubsub",
        lambda: {"message": {"data": base64.b64encode(b"{}").decode()}},
        type="google.cloud.pubsub.topic.v1.messagePublished",
    ),
    EventCase("data-not-json", lambda: RawBody(b"not json{\x00\xff")),
    EventCase("data-null", lambda: None),
    EventCase("data-list", lambda: [{"bucket": BUCKET, **_OBJECT}]),
    EventCase("data-string", lambda: "raw/hostile/event.png"),
    EventCase("huge-data-8mb", lambda: {"bucket": BUCKET, "padding": "x" * 8_000_000}),
    EventCase("huge-list-1m-items", lambda: list(range(1_000_000))),
]
