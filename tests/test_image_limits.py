"""Images that strain the instance: decompression bombs within the pixel limit against the decode
memory budget, MemoryError anywhere in an event, float TIFFs with NaN pixels, HEIC/HEIF and AVIF
uploads (typed or not), through the real function over HTTP (functions-framework,
google-cloud-storage and google-genai against the stand-ins)."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from devtools.standins.gemini_server import RecordedRequest
from segmentation import function as function_module
from segmentation import pipeline as pipeline_module
from segmentation.errors import MemoryBudgetBusyError
from segmentation.memory import MIB, MemoryBudget, peak_bytes
from tests.harness import BUCKET, Stack, boxes_answer, gemini_only_stack


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Iterator[Stack]:
    with gemini_only_stack(tmp_path, monkeypatch) as running:
        yield running


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def image_row(stack: Stack, name: str) -> dict:
    (row,) = [row for row in stack.rows("images") if row["source_uri"] == f"gs://{BUCKET}/{name}"]
    return row


def object_rows(stack: Stack, name: str) -> list[dict]:
    return [row for row in stack.rows("objects") if row["source_uri"] == f"gs://{BUCKET}/{name}"]


def model_image(request: RecordedRequest) -> Image.Image:
    assert request.image_bytes is not None
    return Image.open(io.BytesIO(request.image_bytes)).convert("RGB")


# --- Process memory: Linux's high-water mark of this process (the function runs in it) -------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the process's peak resident size to its current one (Linux clear_refs 5); returns it."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


# --- Item 4: image bombs within the pixel limit ----------------------------------------------------

BOMB_SIDE = 5000  # at MAX_IMAGE_PIXELS below: 25 megapixels, ~12 bytes each at the peak
MEMORY_LIMIT_MIB = 400
DECODE_MEMORY_FRACTION = 0.5
BUDGET = int(MEMORY_LIMIT_MIB * MIB * DECODE_MEMORY_FRACTION)
# What the rest of the function's work (HTTP bodies, model inputs, encoded outputs, allocator
# slack) may add to the budget's images in this process.
RSS_MARGIN = 100 * MIB


def small_budget(monkeypatch) -> None:
    monkeypatch.setenv("MAX_IMAGE_PIXELS", str(BOMB_SIDE * BOMB_SIDE))
    monkeypatch.setenv("MEMORY_LIMIT_MIB", str(MEMORY_LIMIT_MIB))
    monkeypatch.setenv("DECODE_MEMORY_FRACTION", str(DECODE_MEMORY_FRACTION))


def test_concurrent_bombs_at_the_pixel_limit_end_with_rows_within_the_memory_budget(stack, monkeypatch):
    """Four bombs at once, each alone beyond the budget: the JPEGs are decoded at half size and
    recorded ok, the PNGs (no reduced decode) fail with a clear error_type; the process's peak
    stays within the budget plus a margin."""
    small_budget(monkeypatch)
    assert peak_bytes(BOMB_SIDE, BOMB_SIDE, "RGB") > BUDGET  # each one alone is too large
    stack.gemini.reset(lambda request: boxes_answer(2), latency=0.3)
    bomb = Image.new("RGB", (BOMB_SIDE, BOMB_SIDE), (90, 120, 160))
    uploads = {
        f"raw/bombs/{i}.{ext}": encoded(bomb, fmt) for i, (ext, fmt) in enumerate([("png", "PNG"), ("jpg", "JPEG")] * 2)
    }
    del bomb
    assert all(len(data) < 2 * MIB for data in uploads.values())
    blobs = [
        stack.upload(name, data, "image/png" if name.endswith("png") else "image/jpeg")
        for name, data in uploads.items()
    ]
    events = [stack.event_for(blob) for blob in blobs]

    baseline = reset_peak_rss()
    with ThreadPoolExecutor(len(events)) as pool:
        statuses = [response.status_code for response in pool.map(stack.deliver, events)]
    peak = peak_rss() - baseline

    assert statuses == [200] * len(events)
    for name in uploads:
        row = image_row(stack, name)
        if name.endswith(".png"):
            assert (row["status"], row["error_type"]) == ("failed", "image_too_large_for_memory")
            assert "decode memory budget of 200 MiB" in row["error_message"]
            assert object_rows(stack, name) == []
        else:
            assert (row["status"], row["objects_found"]) == ("ok", 2)
            assert (row["image_width"], row["image_height"]) == (BOMB_SIDE // 2, BOMB_SIDE // 2)
            assert len(object_rows(stack, name)) == 2
    assert len(stack.names("processed/bombs/")) == 4
    memory = function_module.default_pipeline().memory
    assert memory.capacity == BUDGET
    assert 0 < memory.peak <= BUDGET and memory.in_use == 0
    assert peak <= BUDGET + RSS_MARGIN, f"peak RSS grew by {peak / MIB:.0f} MiB"


def test_images_that_fit_alone_but_not_together_take_turns_and_all_succeed(stack, monkeypatch):
    small_budget(monkeypatch)
    side = 3000
    assert peak_bytes(side, side, "RGB") <= BUDGET < 2 * peak_bytes(side, side, "RGB")
    stack.gemini.reset(lambda request: boxes_answer(1), latency=0.3)
    data = encoded(Image.new("RGB", (side, side), (200, 60, 60)), "PNG")
    blobs = [stack.upload(f"raw/big/{i}.png", data) for i in range(3)]

    with ThreadPoolExecutor(3) as pool:
        statuses = [response.status_code for response in pool.map(stack.deliver, map(stack.event_for, blobs))]

    assert statuses == [200, 200, 200]
    assert [image_row(stack, blob.name)["status"] for blob in blobs] == ["ok"] * 3
    memory = function_module.default_pipeline().memory
    assert memory.peak == peak_bytes(side, side, "RGB")  # never two at once
    assert memory.waits >= 1 and memory.in_use == 0


def test_a_reservation_that_cannot_be_had_before_the_deadline_is_transient():
    budget = MemoryBudget(100)
    budget.acquire(80, deadline=time.monotonic() + 1)
    with pytest.raises(MemoryBudgetBusyError):
        budget.acquire(50, deadline=time.monotonic() + 0.1)
    budget.release(80)
    budget.acquire(100, deadline=time.monotonic())
    assert (budget.in_use, budget.peak) == (100, 100)


def test_a_memory_error_while_drawing_is_a_failed_row_not_a_redelivery(stack, monkeypatch):
    stack.gemini.reset(lambda request: boxes_answer(2))

    def overview_out_of_memory(image, detections):
        raise MemoryError()

    monkeypatch.setattr(pipeline_module, "overview_jpeg", overview_out_of_memory)
    photo = encoded(Image.new("RGB", (640, 480), (90, 120, 160)), "JPEG")
    blob = stack.upload("raw/belt.jpg", photo, "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    row = image_row(stack, "raw/belt.jpg")
    assert (row["status"], row["error_type"]) == ("failed", "image_too_large_for_memory")
    assert "MemoryError" in row["error_message"]
    assert stack.bucket.get_blob("processed-markers/belt.jpg.json").metadata["status"] == "failed"
    assert stack.deliver(stack.event_for(blob)).status_code == 200  # final: a no-op
    assert len(stack.gemini.requests) == 1 and len(stack.rows("images")) == 1
    assert function_module.default_pipeline().memory.in_use == 0


def test_a_memory_error_while_decoding_is_a_failed_row_not_a_redelivery(stack, monkeypatch):
    def load_out_of_memory(self):
        raise MemoryError()

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_out_of_memory)
    blob = stack.upload("raw/belt.png", encoded(Image.new("RGB", (640, 480), (90, 120, 160)), "PNG"))

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    row = image_row(stack, "raw/belt.png")
    assert (row["status"], row["error_type"]) == ("failed", "image_too_large_for_memory")
    assert "PNG image 640x480: ran out of memory while decoding" in row["error_message"]
    assert stack.gemini.requests == []


# --- Item 6: float TIFFs, HEIC/HEIF and AVIF --------------------------------------------------------


def test_a_float_tiff_with_nan_and_inf_pixels_is_stretched_over_its_finite_values(stack):
    stack.gemini.reset(lambda request: boxes_answer(1))
    values = np.tile(np.linspace(-5.0, 20.0, 200, dtype=np.float32), (100, 1))
    values[0, 0], values[0, 1] = np.nan, np.inf
    blob = stack.upload("raw/thermal.tif", encoded(Image.fromarray(values, "F"), "TIFF"), "image/tiff")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert image_row(stack, "raw/thermal.tif")["status"] == "ok"
    seen = np.asarray(model_image(stack.gemini.requests[0]).convert("L"), dtype=np.int16)
    # -5..20 became 0..255 from left to right (JPEG-rounded); the NaN and inf pixels are 0.
    assert abs(seen[50, 2] - 3) <= 6 and abs(seen[50, 197] - 252) <= 6
    assert abs(seen[50, 100] - 128) <= 6
    assert seen[0, 0] <= 10


def heic_bytes(image: Image.Image) -> bytes:
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=95)
    return buffer.getvalue()


PHONE_SIZE = (320, 240)
PHONE_COLOUR = (200, 40, 40)


@pytest.mark.parametrize("fmt", ["heic", "avif"])
@pytest.mark.parametrize("content_type", ["typed", "application/octet-stream", None])
def test_heic_and_avif_uploads_are_decoded_typed_or_not(stack, fmt, content_type):
    stack.gemini.reset(lambda request: boxes_answer(1))
    picture = Image.new("RGB", PHONE_SIZE, PHONE_COLOUR)
    data = heic_bytes(picture) if fmt == "heic" else encoded(picture, "AVIF", quality=95)
    name = f"raw/phone/IMG_0001.{fmt}"
    uploaded_type = f"image/{fmt}" if content_type == "typed" else (content_type or "application/octet-stream")
    blob = stack.upload(name, data, content_type=uploaded_type)
    event = stack.event_for(blob, contentType=content_type and uploaded_type)  # None: the field is absent

    assert stack.deliver(event).status_code == 200

    row = image_row(stack, name)
    assert (row["status"], row["objects_found"]) == ("ok", 1)
    assert (row["image_width"], row["image_height"]) == PHONE_SIZE
    seen = model_image(stack.gemini.requests[0])
    assert seen.size == PHONE_SIZE
    assert all(abs(a - b) <= 12 for a, b in zip(seen.getpixel((160, 120)), PHONE_COLOUR, strict=False))
    assert len(object_rows(stack, name)) == 1


def test_a_heic_upload_without_its_decoder_fails_naming_the_format(stack, monkeypatch):
    data = heic_bytes(Image.new("RGB", PHONE_SIZE, PHONE_COLOUR))
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if pillow-heif were not installed
    blob = stack.upload("raw/phone/IMG_0002.heic", data, content_type="image/heic")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    row = image_row(stack, "raw/phone/IMG_0002.heic")
    assert (row["status"], row["error_type"]) == ("failed", "unsupported_format")
    assert row["error_message"].startswith("HEIC image: ")
    assert stack.gemini.requests == []


def test_a_corrupt_heic_upload_fails_naming_the_format(stack):
    data = heic_bytes(Image.new("RGB", PHONE_SIZE, PHONE_COLOUR))
    blob = stack.upload("raw/phone/IMG_0003.heic", data[: len(data) // 2], "application/octet-stream")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    row = image_row(stack, "raw/phone/IMG_0003.heic")
    assert (row["status"], row["error_type"]) == ("failed", "image_decode_error")
    assert row["error_message"].startswith("HEIC")
