"""Untrusted image bytes in, one predictable RGB image out; and the downscaled copy for the model.

`load_image` is the only place that decodes uploaded bytes. Whatever arrives (eight formats, any
colour mode, any EXIF orientation), what leaves is an 8-bit RGB image the right way up, or one of
these permanent errors:

- `ImageTooLargeError` when the header announces more pixels than allowed; this is checked from
  the header, before any pixel data is decoded or memory for it allocated.
- `ImageDecodeError` for empty, truncated, corrupt or refused (non-accepted format) data
  (`UnsupportedFormatError` when the format is recognised but its decoder is missing).
- `ImageTooLargeForMemoryError` when the image would not fit the decode memory budget
  (`segmentation.memory`), or decoding it ran out of memory.

HEIC/HEIF (phone photos, via pillow-heif) and AVIF (Pillow's own plugin) are recognised from
their `ftyp` box and their decoders imported only when such a file arrives, so the cold start
of an instance that never sees one does not pay for them.

`model_input` makes the JPEG the model sees: the same picture, longest side at most `max_side`
(the uploaded bytes themselves when they are a plain JPEG already within it). The model answers
in coordinates relative to that picture, which map back to the original by fractions, so the
aspect ratio is kept as exactly as integer sizes allow.

Nothing here mutates global Pillow state beyond registering decoders (no
`Image.MAX_IMAGE_PIXELS`, no `ImageFile.LOAD_TRUNCATED_IMAGES`, no warning filters), so calls
are safe from several threads.
"""

from __future__ import annotations

import io
import os
import re
import threading
from dataclasses import dataclass
from typing import cast

from PIL import Image

from segmentation.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooLargeForMemoryError,
    UnsupportedFormatError,
)
from segmentation.memory import MIB, Reservation, peak_bytes

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
"""Pillow format names `load_image` opens; everything else is refused unread (besides the
ISO-BMFF formats below, recognised from their `ftyp` box first)."""

# `ftyp` brands (https://github.com/strukturag/libheif) and the name the format goes by.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
# The Pillow format name each such file is opened as.
_BMFF_PLUGIN = {"AVIF": "AVIF", "HEIC": "HEIF", "HEIF": "HEIF"}
# JPEG scales `Image.draft` can decode at when the full size does not fit the memory budget.
_DRAFT_SCALES = (2, 4, 8)

MODEL_JPEG_QUALITY = 90
# A plain JPEG within the model's size goes to the model as uploaded, up to this many bytes (a
# camera frame of 1920x1080 is 0.2-1 MB; Vertex AI accepts inline images of up to 7 MB). Larger
# files are re-encoded at MODEL_JPEG_QUALITY, which makes them smaller.
MODEL_PASSTHROUGH_MAX_BYTES = 4 * 1024 * 1024
MODEL_RESAMPLING = Image.Resampling.BICUBIC
MODEL_REDUCING_GAP = 1.5

_WHITE = (255, 255, 255)
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded upload: `image` is RGB with its EXIF orientation applied.

    `source_format` is the Pillow format name of the bytes ("JPEG", "PNG", "WEBP", "TIFF",
    "BMP" or "GIF"), or "HEIC", "HEIF" or "AVIF"; a multi-picture JPEG (MPO) counts as "JPEG".
    `plain_jpeg` is true when the bytes are a single 8-bit colour JPEG that needed no rotation:
    decoding them gives `image` exactly, so they can be sent to the model as they are (see
    `model_input`). `reduced` is the factor a JPEG too large for the memory budget was decoded
    smaller by (1: full size).
    """

    image: Image.Image
    source_format: str
    plain_jpeg: bool = False
    reduced: int = 1

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


@dataclass(frozen=True)
class ModelInput:
    """The encoded image sent to the model and its pixel size."""

    data: bytes
    mime_type: str
    width: int
    height: int


def load_image(data: bytes, *, max_pixels: int, memory: Reservation | None = None) -> LoadedImage:
    """Decode `data` into an upright RGB image.

    Accepts JPEG, PNG, WEBP, TIFF, BMP, GIF, HEIC/HEIF and AVIF; animated or multi-page files
    give their first frame. Transparent areas become white. 16-bit and float greyscale is
    stretched from its actual (finite) minimum..maximum to 0..255. An embedded ICC profile is
    kept in `image.info` only when it describes RGB data (a CMYK or grey profile would be wrong
    after conversion).

    Raises `ImageTooLargeError` when width * height > `max_pixels` (read from the header, before
    decoding) or when Pillow's own decompression-bomb guard fires, and `ImageDecodeError` for
    anything that is not a complete image in an accepted format.

    `memory`: the event's share of the decode memory budget. The image's estimated peak
    (`segmentation.memory.peak_bytes`) is reserved in it before any pixel is decoded, waiting
    while other events hold the budget; a JPEG that does not fit alone is decoded at 1/2, 1/4 or
    1/8 size, any other image that does not fit raises `ImageTooLargeForMemoryError`.
    """
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    _register_accepted_plugins()
    bmff = _bmff_format(data)
    formats: tuple[str, ...] = ACCEPTED_FORMATS
    if bmff:
        _register_bmff_plugin(bmff)
        formats = (_BMFF_PLUGIN[bmff],)
    prefix = f"{bmff} image: " if bmff else ""

    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow checks its own (global) limit inside Image.open, before we see the size; the
        # warning only arrives here as an exception if the process escalated it.
        raise _too_large_from_pillow(exc, max_pixels) from None
    except Image.UnidentifiedImageError:
        if bmff:
            raise ImageDecodeError(f"{prefix}its header is not readable") from None
        raise ImageDecodeError(_unidentified_message(data)) from None
    except MemoryError:
        raise ImageTooLargeForMemoryError(f"{prefix}ran out of memory reading the image header") from None
    except Exception as exc:  # untrusted header: any parser error means "not a usable image"
        raise ImageDecodeError(f"{prefix}cannot read the image header: {_describe(exc)}") from None

    source_format = bmff or ("JPEG" if im.format == "MPO" else (im.format or "unknown"))
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{source_format} header gives an empty size {width}x{height}")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{source_format} image is {width}x{height} = {pixels} pixels, more than the limit of {max_pixels} pixels"
        )
    reduced = _reserve_memory(im, source_format, memory, decoder_buffer=bmff is not None)

    out_of_memory = False
    try:
        im.load()  # full decode: truncated or corrupt data fails here, not later
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large_from_pillow(exc, max_pixels) from None
    except MemoryError:
        out_of_memory = True
    except Exception as exc:
        raise ImageDecodeError(f"{source_format} image data is truncated or corrupt: {_describe(exc)}") from None
    if out_of_memory:  # raised here, after the except block, so the partial pixels are freed first
        del im
        raise ImageTooLargeForMemoryError(
            f"{source_format} image {width}x{height}: ran out of memory while decoding it"
        )

    plain_jpeg = (
        im.format == "JPEG"
        and im.mode == "RGB"
        and getattr(im, "bits", 8) == 8
        and _orientation(im) == 1
        and reduced == 1
    )
    _apply_exif_orientation(im, source_format)

    icc_profile = im.info.get("icc_profile")
    try:
        rgb = to_rgb(im)
    except MemoryError:
        out_of_memory = True
    except Exception as exc:
        raise ImageDecodeError(
            f"cannot convert {source_format} image of mode {im.mode} to RGB: {_describe(exc)}"
        ) from None
    if out_of_memory:
        del im
        raise ImageTooLargeForMemoryError(
            f"{source_format} image {width}x{height}: ran out of memory converting it to RGB"
        )
    if _is_rgb_icc_profile(icc_profile):
        rgb.info["icc_profile"] = icc_profile
    else:
        rgb.info.pop("icc_profile", None)
    return LoadedImage(image=rgb, source_format=source_format, plain_jpeg=plain_jpeg, reduced=reduced)


def _reserve_memory(im: Image.Image, source_format: str, memory: Reservation | None, *, decoder_buffer: bool) -> int:
    """Reserve `im`'s estimated peak in `memory`; returns the factor a JPEG that does not fit
    the budget alone is drafted down by (1: none). Waits while other events hold the budget."""
    if memory is None:
        return 1
    width, height = im.size
    needed = peak_bytes(width, height, im.mode, decoder_buffer=decoder_buffer)
    factor = 1
    if not memory.fits(needed) and source_format == "JPEG":
        for scale in _DRAFT_SCALES:
            # Pillow decodes at 1/scale, rounding the size up; it picks the scale from the size asked.
            if memory.fits(peak_bytes(-(-width // scale), -(-height // scale), im.mode)):
                im.draft(im.mode, (max(1, width // scale), max(1, height // scale)))
                factor = round(width / im.width)
                needed = peak_bytes(*im.size, im.mode)
                break
    if not memory.fits(needed):
        raise ImageTooLargeForMemoryError(
            f"{source_format} image {width}x{height} needs about {needed // MIB} MiB to decode and draw, "
            f"more than this worker's decode memory budget of {(memory.capacity or 0) // MIB} MiB "
            "(MEMORY_LIMIT_MIB x DECODE_MEMORY_FRACTION)"
        )
    if factor > 1:
        from segmentation.logs import log_event

        log_event(
            "WARNING",
            "image decoded at reduced size to fit the decode memory budget",
            source_format=source_format,
            size=f"{width}x{height}",
            reduced_by=factor,
            decoded_size=f"{im.width}x{im.height}",
        )
    memory.reserve(needed)
    return factor


def model_input(image: Image.Image, *, max_side: int, jpeg: bytes | None = None) -> ModelInput:
    """Encode `image` as the model's JPEG, downscaled so its longest side is at most `max_side`.

    Never upscales. The short side is rounded to the nearest pixel (at least 1), so the aspect
    ratio differs from the original's by less than one pixel.

    `jpeg`: the uploaded bytes `image` was decoded from, when they are a plain JPEG
    (`LoadedImage.plain_jpeg`). If no downscale is needed they are sent as they are (up to
    MODEL_PASSTHROUGH_MAX_BYTES): the same pixels, without the ~15-20 ms of CPU a re-encode costs a
    1280x720 frame and without a second round of JPEG loss.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    width, height = model_input_size(image.width, image.height, max_side)
    if jpeg is not None and (width, height) == image.size and len(jpeg) <= MODEL_PASSTHROUGH_MAX_BYTES:
        return ModelInput(data=jpeg, mime_type="image/jpeg", width=width, height=height)
    rgb = to_rgb(image)
    if (width, height) != rgb.size:
        # Bicubic after a box reduction that leaves at least 1.5x for the filter (reducing_gap):
        # the same picture to the model as Lanczos (PSNR > 40 dB) for less CPU (BENCHMARKS.md, 7).
        rgb = rgb.resize((width, height), MODEL_RESAMPLING, reducing_gap=MODEL_REDUCING_GAP)
    return ModelInput(
        data=encode_jpeg(rgb, quality=MODEL_JPEG_QUALITY), mime_type="image/jpeg", width=width, height=height
    )


def encode_jpeg(image: Image.Image, **options: object) -> bytes:
    """`image` saved as JPEG with Pillow's `options` (quality, subsampling, icc_profile...).

    Pillow holds the GIL for the whole encode when it writes into a Python object such as
    BytesIO, but releases it when it writes into a file descriptor, so the image is encoded into
    an in-memory file (memfd) and read back: the same bytes, while the instance's other request
    threads keep running (a 1280x720 overview takes about 5 ms to encode). Where memfd_create is
    missing, a BytesIO.
    """
    try:
        descriptor = os.memfd_create("jpeg", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        return buffer.getvalue()
    with open(descriptor, "w+b") as file:
        image.save(file, "JPEG", **options)
        file.seek(0)
        return file.read()


def model_input_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The (width, height) `model_input` produces for an image of `width` x `height`.

    >>> model_input_size(6000, 4000, 1024)
    (1024, 683)
    >>> model_input_size(800, 600, 1024)
    (800, 600)
    """
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    if width >= height:
        return max_side, max(1, round(height * max_side / width))
    return max(1, round(width * max_side / height)), max_side


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB; returns `image` itself when it already is RGB without transparency.

    - alpha (RGBA, LA, PA, premultiplied modes) and palette or colour-key transparency are
      composited onto white, so a transparent background never turns black;
    - I;16*, I and F greyscale is stretched linearly from its actual min..max to 0..255;
    - everything else (L, 1, P, CMYK, YCbCr, ...) goes through Pillow's own conversion.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return _stretch_to_l(image).convert("RGB")
    if image.has_transparency_data:
        return _flatten_on_white(image)
    if mode == "RGB":
        return image
    return image.convert("RGB")


def _register_accepted_plugins() -> None:
    # Importing exactly these plugins registers them, so Image.open never falls back to
    # Image.init() (which imports ~40 plugins) on the normal path. Cheap after the first call.
    from PIL import (  # noqa: F401
        BmpImagePlugin,
        GifImagePlugin,
        JpegImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )


_bmff_lock = threading.Lock()


def _bmff_format(data: bytes) -> str | None:
    """ "AVIF", "HEIC" or "HEIF" when `data` starts with an ISO-BMFF `ftyp` box naming one of
    them (major or compatible brand), else None.

    >>> _bmff_format(b"\\x00\\x00\\x00\\x18ftypheic\\x00\\x00\\x00\\x00mif1heic")
    'HEIC'
    """
    if len(data) < 16 or data[4:8] != b"ftyp":
        return None
    box_size = min(int.from_bytes(data[:4], "big"), len(data), 4096)
    brands = {data[8:12]} | {data[offset : offset + 4] for offset in range(16, box_size - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIC_BRANDS:
        return "HEIC"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None


def _register_bmff_plugin(name: str) -> None:
    """Import the decoder of `name` on first use, or raise `UnsupportedFormatError`."""
    with _bmff_lock:
        try:
            if name == "AVIF":
                from PIL import AvifImagePlugin, features  # noqa: F401 - the import registers it

                if not features.check("avif"):
                    raise ImportError("this Pillow was built without AVIF support")
            else:
                import pillow_heif

                if "HEIF" not in Image.OPEN:
                    pillow_heif.register_heif_opener()
        except ImportError as exc:
            accepted = ", ".join(ACCEPTED_FORMATS)
            raise UnsupportedFormatError(
                f"{name} image: no decoder for it is installed ({_describe(exc)}); accepted formats: {accepted}"
            ) from None


def _apply_exif_orientation(im: Image.Image, source_format: str) -> None:
    from PIL import ImageOps

    try:
        ImageOps.exif_transpose(im, in_place=True)
    except MemoryError:
        raise
    except Exception as exc:
        # A damaged EXIF block should not cost us an otherwise good photo.
        from segmentation.logs import log_event

        log_event(
            "WARNING",
            "unreadable EXIF orientation ignored",
            source_format=source_format,
            error=_describe(exc),
        )


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation of `im` (1 = upright), 0 when its EXIF block cannot be read."""
    try:
        return int(im.getexif().get(0x0112, 1))  # 0x0112: Orientation
    except MemoryError:
        raise
    except Exception:
        return 0


def _flatten_on_white(image: Image.Image) -> Image.Image:
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba)  # alpha-weighted blend of the colour onto white
    return background


def _stretch_to_l(image: Image.Image) -> Image.Image:
    if image.mode == "F":
        return _stretch_float_to_l(image)
    source = image if image.mode == "I" else image.convert("I")
    low, high = cast("tuple[float, float]", source.getextrema())  # one band: (min, max)
    if high <= low:
        return Image.new("L", source.size, 0 if high <= 0 else 255)
    scale = 255.0 / (high - low)
    offset = -low * scale + 0.5  # +0.5: the point transform truncates, we want rounding
    return source.point(lambda value: value * scale + offset).convert("L")


def _stretch_float_to_l(image: Image.Image) -> Image.Image:
    """Float pixels stretched from the finite minimum..maximum to 0..255; NaN and infinities
    (no place on that scale) become 0."""
    import numpy as np

    values = np.array(image, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        values[~finite] = np.nan
    low, high = (float(np.nanmin(values)), float(np.nanmax(values))) if finite.any() else (0.0, 0.0)
    if high <= low:
        values[:] = 0 if high <= 0 else 255
    else:
        values -= low
        values *= 255.0 / (high - low)
        values += 0.5  # the cast truncates, we want rounding
    values[~finite] = 0
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8), "L")


def _is_rgb_icc_profile(profile: object) -> bool:
    # ICC header: bytes 16-19 are the data colour space signature.
    return isinstance(profile, bytes) and len(profile) >= 128 and profile[16:20] == b"RGB "


def _too_large_from_pillow(exc: Exception, max_pixels: int) -> ImageTooLargeError:
    match = _BOMB_PIXELS.search(str(exc))
    pixels = match.group(1) if match else "too many"
    return ImageTooLargeError(
        f"image is {pixels} pixels, more than the limit of {max_pixels} pixels "
        f"(refused by Pillow's decompression-bomb guard: {exc})"
    )


def _unidentified_message(data: bytes) -> str:
    name = _sniff_format(data[:16])
    accepted = ", ".join(ACCEPTED_FORMATS)
    if name:
        return f"unsupported image format (looks like {name}); accepted formats: {accepted}"
    return f"not a recognised image ({len(data)} bytes); accepted formats: {accepted}"


def _sniff_format(prefix: bytes) -> str | None:
    """Name the format of a refused file from its magic bytes only (no plugin parses it)."""
    Image.init()  # error path only: registers every plugin so their signatures can be checked
    for name in Image.ID:
        if name in ACCEPTED_FORMATS:
            continue
        factory_and_accept = Image.OPEN.get(name)
        accept = factory_and_accept[1] if factory_and_accept else None
        if accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:
            continue
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
