"""load_image and model_input: every accepted format, mode and orientation, and every way to fail."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import pytest
from PIL import Image, ImageFile

from segmentation.errors import ImageDecodeError, ImageTooLargeError
from segmentation.images import ACCEPTED_FORMATS, LoadedImage, ModelInput, load_image, model_input, to_rgb

LIMIT = 100_000_000
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def close_to(actual, expected, tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def assert_color(image: Image.Image, xy: tuple[int, int], expected, tolerance: int = 12) -> None:
    actual = image.getpixel(xy)
    assert close_to(actual, expected, tolerance), f"pixel {xy} is {actual}, expected about {expected}"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR announcing width x height (valid CRC), with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


def noise_rgb(size: tuple[int, int]) -> Image.Image:
    bands = [Image.effect_noise(size, 60 + 20 * i).convert("L") for i in range(3)]
    return Image.merge("RGB", bands)


# --- accepted formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_each_accepted_format_loads_as_rgb_with_its_size_and_colour(fmt):
    source = Image.new("RGB", (48, 32), (200, 40, 90))
    source.paste(BLUE, (24, 0, 48, 32))
    loaded = load_image(encode(source, fmt), max_pixels=LIMIT)

    assert isinstance(loaded, LoadedImage)
    assert loaded.source_format == fmt
    assert loaded.image.mode == "RGB"
    assert (loaded.width, loaded.height) == (48, 32) == loaded.image.size
    tolerance = 40 if fmt == "GIF" else 12  # GIF quantizes to a 256-colour palette
    assert_color(loaded.image, (8, 16), (200, 40, 90), tolerance)
    assert_color(loaded.image, (40, 16), BLUE, tolerance)


# --- EXIF orientation ---------------------------------------------------------------------------
# Stored picture, 64x32: red top-left quadrant, green top-right, the bottom half grey.
# Where the stored top-left / top-right corners are shown, per the EXIF/TIFF definition of the
# tag (which stored row/column becomes the visual top/left), worked out independently of Pillow.
ORIENTATIONS = {
    1: ("TL", "TR"),
    2: ("TR", "TL"),  # mirrored left-right
    3: ("BR", "BL"),  # rotated 180
    4: ("BL", "BR"),  # mirrored top-bottom
    5: ("TL", "BL"),  # transposed (mirror along the main diagonal)
    6: ("TR", "BR"),  # stored rows become columns, first row on the right: rotate 90 clockwise
    7: ("BR", "TR"),  # transverse
    8: ("BL", "TL"),  # rotate 90 counter-clockwise
}


def oriented_source() -> Image.Image:
    image = Image.new("RGB", (64, 32), (128, 128, 128))
    image.paste(RED, (0, 0, 32, 16))
    image.paste(GREEN, (32, 0, 64, 16))
    return image


def quadrant_centre(corner: str, size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    x = width // 4 if corner[1] == "L" else 3 * width // 4
    y = height // 4 if corner[0] == "T" else 3 * height // 4
    return x, y


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_turns_the_picture_upright(orientation):
    data = encode(oriented_source(), "JPEG", quality=95, exif=exif_with_orientation(orientation))
    loaded = load_image(data, max_pixels=LIMIT)

    expected_size = (64, 32) if orientation <= 4 else (32, 64)
    assert loaded.image.size == expected_size
    red_corner, green_corner = ORIENTATIONS[orientation]
    assert_color(loaded.image, quadrant_centre(red_corner, expected_size), RED, 20)
    assert_color(loaded.image, quadrant_centre(green_corner, expected_size), GREEN, 20)
    assert loaded.image.getexif().get(0x0112, 1) == 1  # not applied twice by a later reader


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied_in_other_formats_too(fmt):
    data = encode(oriented_source(), fmt, exif=exif_with_orientation(6))
    loaded = load_image(data, max_pixels=LIMIT)
    assert loaded.image.size == (32, 64)
    assert_color(loaded.image, quadrant_centre("TR", (32, 64)), RED, 20)
    assert_color(loaded.image, quadrant_centre("BR", (32, 64)), GREEN, 20)


def test_garbled_exif_keeps_the_stored_orientation():
    data = bytearray(encode(oriented_source(), "JPEG", quality=95, exif=exif_with_orientation(6)))
    start = data.index(b"Exif\x00\x00") + 6
    data[start : start + 8] = b"XX\x00\x2a\xff\xff\xff\xff"  # no valid TIFF byte order, bad offset
    loaded = load_image(bytes(data), max_pixels=LIMIT)
    assert loaded.image.size == (64, 32)
    assert_color(loaded.image, (16, 8), RED, 20)


def test_exif_that_pillow_cannot_parse_is_logged_and_ignored(monkeypatch, capsys):
    from PIL import ImageOps

    def broken(image, **kwargs):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    data = encode(oriented_source(), "JPEG", quality=95, exif=exif_with_orientation(6))
    loaded = load_image(data, max_pixels=LIMIT)
    assert loaded.image.size == (64, 32)
    assert "unreadable EXIF orientation ignored" in capsys.readouterr().out


# --- colour modes -------------------------------------------------------------------------------


def test_cmyk_jpeg_in_adobe_inverted_convention_converts_to_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red ink
    cmyk.paste((255, 0, 255, 0), (16, 0, 32, 32))  # cyan + yellow = green
    data = encode(cmyk, "JPEG", quality=95)
    assert b"Adobe" in data  # Pillow writes CMYK JPEGs inverted, with an Adobe APP14 marker
    loaded = load_image(data, max_pixels=LIMIT)
    assert loaded.image.mode == "RGB"
    assert_color(loaded.image, (8, 16), RED, 20)
    assert_color(loaded.image, (24, 16), GREEN, 20)


def test_cmyk_tiff_converts_to_rgb():
    loaded = load_image(encode(Image.new("CMYK", (8, 8), (0, 0, 0, 255)), "TIFF"), max_pixels=LIMIT)
    assert_color(loaded.image, (4, 4), BLACK, 2)


def test_palette_png_with_transparency_gets_a_white_background():
    image = Image.new("P", (32, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # index 0 black (transparent), 1 red
    image.paste(1, (16, 0, 32, 16))
    loaded = load_image(encode(image, "PNG", transparency=0), max_pixels=LIMIT)
    assert loaded.image.mode == "RGB"
    assert_color(loaded.image, (8, 8), WHITE, 0)
    assert_color(loaded.image, (24, 8), RED, 0)


def test_gif_with_transparency_gets_a_white_background():
    image = Image.new("P", (32, 16), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.paste(1, (16, 0, 32, 16))
    loaded = load_image(encode(image, "GIF", transparency=0), max_pixels=LIMIT)
    assert_color(loaded.image, (8, 8), WHITE, 0)
    assert_color(loaded.image, (24, 8), BLUE, 0)


def test_rgba_transparent_background_becomes_white_and_partial_alpha_blends():
    image = Image.new("RGBA", (48, 16), (0, 0, 0, 0))  # fully transparent *black*
    image.paste((255, 0, 0, 255), (16, 0, 32, 16))
    image.paste((0, 0, 0, 128), (32, 0, 48, 16))  # half-transparent black over white -> mid grey
    loaded = load_image(encode(image, "PNG"), max_pixels=LIMIT)
    assert_color(loaded.image, (8, 8), WHITE, 0)
    assert_color(loaded.image, (24, 8), RED, 0)
    assert_color(loaded.image, (40, 8), (127, 127, 127), 2)


def test_webp_with_alpha_gets_a_white_background():
    image = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (16, 0, 32, 16))
    loaded = load_image(encode(image, "WEBP", lossless=True), max_pixels=LIMIT)
    assert_color(loaded.image, (4, 8), WHITE, 0)
    assert_color(loaded.image, (28, 8), BLUE, 0)


def test_la_png_composites_grey_onto_white():
    image = Image.new("LA", (32, 16), (0, 0))  # transparent black
    image.paste((40, 255), (16, 0, 32, 16))  # opaque dark grey
    loaded = load_image(encode(image, "PNG"), max_pixels=LIMIT)
    assert_color(loaded.image, (8, 8), WHITE, 0)
    assert_color(loaded.image, (24, 8), (40, 40, 40), 0)


def test_pa_and_premultiplied_modes_composite_onto_white():
    pa = Image.new("PA", (8, 8), (0, 0))
    pa.putpalette([255, 0, 0] * 256)
    assert_color(to_rgb(pa), (4, 4), WHITE, 0)
    assert_color(to_rgb(Image.new("RGBa", (8, 8), (0, 0, 0, 0))), (4, 4), WHITE, 0)


def sixteen_bit_ramp(high: int, width: int = 64) -> Image.Image:
    values = [round(x * high / (width - 1)) for x in range(width)] * 4
    return Image.frombytes("I;16", (width, 4), struct.pack(f"<{len(values)}H", *values))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_greyscale_is_stretched_by_its_actual_range(fmt):
    # A 12-bit sensor in a 16-bit container: 0..4095 must not come out almost black (0..15).
    loaded = load_image(encode(sixteen_bit_ramp(4095), fmt), max_pixels=LIMIT)
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((0, 1)) == (0, 0, 0)
    assert loaded.image.getpixel((63, 1)) == (255, 255, 255)
    middle = loaded.image.getpixel((32, 1))[0]
    assert 125 <= middle <= 135


def test_sixteen_bit_range_is_not_clipped_at_255():
    # Values 1000..60000: a clipping conversion would make everything above 255 white.
    values = [1000 + x * 59000 // 63 for x in range(64)]
    image = Image.frombytes("I;16", (64, 1), struct.pack("<64H", *values))
    rgb = to_rgb(image)
    assert rgb.getpixel((0, 0))[0] == 0
    assert 120 <= rgb.getpixel((32, 0))[0] <= 136
    assert rgb.getpixel((63, 0))[0] == 255


def test_32_bit_integer_and_float_tiffs_are_stretched():
    integer = sixteen_bit_ramp(4095).convert("I").point(lambda v: v * 1000 - 2_000_000)
    floating = sixteen_bit_ramp(4095).convert("F").point(lambda v: v / 4095.0 * 0.01)
    for image in (integer, floating):
        assert image.mode in ("I", "F")
        loaded = load_image(encode(image, "TIFF"), max_pixels=LIMIT)
        assert loaded.image.getpixel((0, 1)) == (0, 0, 0)
        assert loaded.image.getpixel((63, 1)) == (255, 255, 255)
        assert 120 <= loaded.image.getpixel((32, 1))[0] <= 136


def test_constant_sixteen_bit_image_does_not_divide_by_zero():
    flat = Image.new("I;16", (4, 4), 0)
    assert to_rgb(flat).getpixel((1, 1)) == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_one_bit_images_become_black_and_white(fmt):
    image = Image.new("1", (16, 8), 0)
    image.paste(1, (8, 0, 16, 8))
    loaded = load_image(encode(image, fmt), max_pixels=LIMIT)
    assert loaded.image.getpixel((4, 4)) == BLACK
    assert loaded.image.getpixel((12, 4)) == WHITE


def test_greyscale_becomes_grey_rgb():
    loaded = load_image(encode(Image.new("L", (8, 8), 77), "PNG"), max_pixels=LIMIT)
    assert loaded.image.getpixel((3, 3)) == (77, 77, 77)


def test_rgb_icc_profile_is_kept_and_cmyk_profile_dropped():
    rgb_profile = b"\x00" * 16 + b"RGB " + b"\x00" * 108
    cmyk_profile = b"\x00" * 16 + b"CMYK" + b"\x00" * 108
    rgb = load_image(encode(Image.new("RGB", (8, 8)), "JPEG", icc_profile=rgb_profile), max_pixels=LIMIT)
    cmyk = load_image(encode(Image.new("CMYK", (8, 8)), "JPEG", icc_profile=cmyk_profile), max_pixels=LIMIT)
    assert rgb.image.info.get("icc_profile") == rgb_profile
    assert "icc_profile" not in cmyk.image.info


# --- multi-frame files --------------------------------------------------------------------------


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    loaded = load_image(data, max_pixels=LIMIT)
    assert loaded.source_format == "GIF"
    assert_color(loaded.image, (8, 8), RED, 0)


def test_animated_webp_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in (GREEN, RED)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert_color(load_image(data, max_pixels=LIMIT).image, (8, 8), GREEN, 0)


def test_multi_page_tiff_gives_its_first_page():
    pages = [Image.new("RGB", (16, 12), BLUE), Image.new("RGB", (40, 40), RED)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    loaded = load_image(data, max_pixels=LIMIT)
    assert loaded.image.size == (16, 12)
    assert_color(loaded.image, (8, 6), BLUE, 0)


# --- size limits --------------------------------------------------------------------------------


def test_oversized_header_is_refused_before_any_decoding(monkeypatch):
    def must_not_decode(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(png_header_only(5000, 5000), max_pixels=1_000_000)
    assert "25000000" in str(caught.value) and "1000000" in str(caught.value)


def test_png_claiming_100000_by_100000_is_too_large():
    # 10^10 pixels is past Pillow's own hard limit, which fires inside Image.open: still ours.
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(png_header_only(100_000, 100_000), max_pixels=LIMIT)
    assert "10000000000" in str(caught.value) and str(LIMIT) in str(caught.value)


def test_pillow_bomb_warning_escalated_by_the_process_is_reported_as_too_large():
    # 90 M pixels: above Pillow's warning threshold (~89.5 M), below our generous limit.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError):
            load_image(png_header_only(10_000, 9_000), max_pixels=200_000_000)


def test_image_at_exactly_the_limit_is_accepted():
    loaded = load_image(encode(Image.new("RGB", (100, 50), RED), "PNG"), max_pixels=5000)
    assert loaded.image.size == (100, 50)
    with pytest.raises(ImageTooLargeError):
        load_image(encode(Image.new("RGB", (100, 51), RED), "PNG"), max_pixels=5000)


def test_limit_does_not_touch_pillows_global_setting():
    before = Image.MAX_IMAGE_PIXELS
    load_image(encode(Image.new("RGB", (10, 10)), "PNG"), max_pixels=100)
    with pytest.raises(ImageTooLargeError):
        load_image(encode(Image.new("RGB", (10, 10)), "PNG"), max_pixels=50)
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- refused and broken data --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP"])
def test_truncated_file_is_a_decode_error(fmt):
    data = encode(noise_rgb((128, 96)), fmt)
    with pytest.raises(ImageDecodeError) as caught:
        load_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert fmt in str(caught.value) or "truncated" in str(caught.value) or "header" in str(caught.value)


def test_truncated_jpeg_and_png_name_the_problem():
    for fmt in ("JPEG", "PNG"):
        data = encode(noise_rgb((128, 96)), fmt)
        with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
            load_image(data[: len(data) * 2 // 3], max_pixels=LIMIT)


def test_corrupt_png_pixel_data_is_a_decode_error():
    data = bytearray(encode(noise_rgb((64, 64)), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 400] = os.urandom(390)
    with pytest.raises(ImageDecodeError):
        load_image(bytes(data), max_pixels=LIMIT)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        os.urandom(2048),
        b"This is a plain text file, not an image.\n" * 20,
        b'{"images": []}',
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
        b"\xff\xd8\xff",  # a JPEG start and nothing else
    ],
    ids=["empty", "random", "text", "json", "png-signature-only", "jpeg-soi-only"],
)
def test_non_images_are_decode_errors(data):
    with pytest.raises(ImageDecodeError):
        load_image(data, max_pixels=LIMIT)


def test_empty_bytes_message():
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"", max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "PCX", "QOI"])
def test_unsupported_formats_are_refused_by_name(fmt):
    data = encode(Image.new("RGB", (16, 16), RED), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself could read it
    with pytest.raises(ImageDecodeError) as caught:
        load_image(data, max_pixels=LIMIT)
    assert fmt in str(caught.value)
    assert "unsupported" in str(caught.value)


def test_errors_are_permanent_pipeline_errors():
    from segmentation.errors import PermanentError

    assert issubclass(ImageDecodeError, PermanentError) and issubclass(ImageTooLargeError, PermanentError)


# --- model input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [((3000, 2000), (1024, 683)), ((1000, 3000), (341, 1024)), ((2048, 2048), (1024, 1024)), ((5000, 3), (1024, 1))],
)
def test_model_input_scales_the_longest_side_to_max_side(size, expected):
    result = model_input(Image.new("RGB", size, (10, 120, 200)), max_side=1024)
    assert isinstance(result, ModelInput)
    assert (result.width, result.height) == expected
    assert max(result.width, result.height) == 1024
    # The short side is the exactly scaled one, rounded: the aspect ratio is off by < 1 px.
    scale = 1024 / max(size)
    assert abs(result.width - size[0] * scale) <= 0.5 or result.width == 1
    assert abs(result.height - size[1] * scale) <= 0.5 or result.height == 1
    assert result.mime_type == "image/jpeg"
    decoded = Image.open(io.BytesIO(result.data))
    assert decoded.format == "JPEG" and decoded.size == expected
    assert_color(decoded.convert("RGB"), (expected[0] // 2, expected[1] // 2), (10, 120, 200), 6)


@pytest.mark.parametrize("size", [(800, 600), (1024, 700), (1, 1)])
def test_model_input_never_upscales(size):
    result = model_input(Image.new("RGB", size, GREEN), max_side=1024)
    assert (result.width, result.height) == size
    assert Image.open(io.BytesIO(result.data)).size == size


def test_model_input_keeps_the_picture():
    source = oriented_source().resize((640, 320))
    result = model_input(source, max_side=128)
    decoded = Image.open(io.BytesIO(result.data)).convert("RGB")
    assert decoded.size == (128, 64)
    assert_color(decoded, (32, 16), RED, 20)
    assert_color(decoded, (96, 16), GREEN, 20)


@pytest.mark.parametrize("size", [(1280, 720), (4000, 3000)])
def test_model_input_resampling_is_as_sharp_as_a_fair_lanczos(size):
    """The cheaper downscale `model_input` uses (MODEL_RESAMPLING after an integer box reduction,
    MODEL_REDUCING_GAP) gives the same picture as a fair Lanczos resampling on fine detail (a
    3-pixel checker under a gradient, where a cheap filter aliases or blurs): >= 38 dB PSNR.
    Bilinear scores 28 dB on the 1280x720 case and a box filter 21-28 dB. Compared before the
    JPEG, whose chroma subsampling would hide the difference."""
    import numpy as np

    from segmentation.images import MODEL_REDUCING_GAP, MODEL_RESAMPLING, model_input_size

    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // width, ys * 255 // height, ((xs // 3 + ys // 3) % 2) * 200 + 20], -1)
    source = Image.fromarray(pixels.astype(np.uint8), "RGB")
    target = model_input_size(width, height, 1024)
    fair = np.asarray(source.resize(target, Image.Resampling.LANCZOS), np.float64)
    ours = np.asarray(source.resize(target, MODEL_RESAMPLING, reducing_gap=MODEL_REDUCING_GAP), np.float64)
    psnr = 10 * np.log10(255**2 / ((ours - fair) ** 2).mean())
    assert psnr >= 38, psnr
    # ... and it is what model_input sends (the same JPEG bytes as encoding that resampling)
    from segmentation.images import MODEL_JPEG_QUALITY, encode_jpeg

    expected = encode_jpeg(
        source.resize(target, MODEL_RESAMPLING, reducing_gap=MODEL_REDUCING_GAP), quality=MODEL_JPEG_QUALITY
    )
    assert model_input(source, max_side=1024).data == expected


def test_model_input_of_a_transparent_image_is_white_not_black():
    result = model_input(Image.new("RGBA", (300, 200), (0, 0, 0, 0)), max_side=150)
    assert_color(Image.open(io.BytesIO(result.data)).convert("RGB"), (75, 50), WHITE, 3)


def test_model_input_rejects_a_nonsense_max_side():
    with pytest.raises(ValueError):
        model_input(Image.new("RGB", (10, 10)), max_side=0)


# --- the uploaded JPEG sent as it is ------------------------------------------------------------


def loaded_and_sent(data: bytes, max_side: int = 1920) -> tuple[LoadedImage, ModelInput]:
    """What the pipeline does: decode, then the model's copy, offering the bytes when plain."""
    loaded = load_image(data, max_pixels=LIMIT)
    return loaded, model_input(loaded.image, max_side=max_side, jpeg=data if loaded.plain_jpeg else None)


def test_a_plain_jpeg_within_the_max_side_goes_to_the_model_byte_for_byte():
    data = encode(noise_rgb((640, 360)), "JPEG", quality=80, exif=exif_with_orientation(1))
    loaded, sent = loaded_and_sent(data)
    assert loaded.plain_jpeg
    assert sent.data == data and (sent.width, sent.height) == (640, 360) and sent.mime_type == "image/jpeg"
    # the same pixels the crops and the overview are cut from
    assert Image.open(io.BytesIO(sent.data)).convert("RGB").tobytes() == loaded.image.tobytes()


def test_a_jpeg_larger_than_the_max_side_is_downscaled_as_before():
    data = encode(noise_rgb((640, 360)), "JPEG", quality=80)
    loaded, sent = loaded_and_sent(data, max_side=320)
    assert loaded.plain_jpeg and sent.data != data and (sent.width, sent.height) == (320, 180)
    assert sent.data == model_input(loaded.image, max_side=320).data


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_a_rotated_jpeg_is_sent_upright_not_as_uploaded(orientation):
    data = encode(oriented_source(), "JPEG", quality=95, exif=exif_with_orientation(orientation))
    loaded, sent = loaded_and_sent(data)
    assert not loaded.plain_jpeg and sent.data != data
    decoded = Image.open(io.BytesIO(sent.data)).convert("RGB")
    assert decoded.size == loaded.image.size
    red_corner, _ = ORIENTATIONS[orientation]
    assert_color(decoded, quadrant_centre(red_corner, decoded.size), RED, 30)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), id="cmyk-jpeg"),
        pytest.param(lambda: encode(Image.new("L", (32, 32), 90), "JPEG"), id="greyscale-jpeg"),
        pytest.param(lambda: encode(noise_rgb((32, 32)), "PNG"), id="png"),
        pytest.param(
            lambda: encode(noise_rgb((32, 32)), "MPO", save_all=True, append_images=[noise_rgb((32, 32))]),
            id="multi-picture-jpeg",
        ),
    ],
)
def test_only_a_plain_colour_jpeg_is_sent_as_uploaded(make):
    data = make()
    loaded, sent = loaded_and_sent(data)
    assert not loaded.plain_jpeg and sent.data != data
    assert Image.open(io.BytesIO(sent.data)).format == "JPEG"


def test_a_huge_jpeg_file_is_re_encoded_even_within_the_max_side(monkeypatch):
    import segmentation.images as images

    data = encode(noise_rgb((320, 200)), "JPEG", quality=100)
    monkeypatch.setattr(images, "MODEL_PASSTHROUGH_MAX_BYTES", len(data) - 1)
    loaded, sent = loaded_and_sent(data)
    assert loaded.plain_jpeg and sent.data != data and len(sent.data) < len(data)
