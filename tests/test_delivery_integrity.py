"""No image lost, none processed twice: same-stem names, simultaneous copies of one event, claims
and leases, and giving up on a poison event, through the real function over HTTP (functions-
framework, google-cloud-storage and google-genai against the stand-ins)."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from devtools.standins.gemini_server import Answer, RecordedRequest, unavailable
from segmentation import pipeline as pipeline_module
from segmentation.errors import TransientError
from segmentation.storage import GcsStorage
from tests.harness import BUCKET, Stack, boxes_answer, gemini_only_stack


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Iterator[Stack]:
    with gemini_only_stack(tmp_path, monkeypatch) as running:
        yield running


def photo(size: tuple[int, int], fmt: str, colour=(90, 120, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def request_image_size(request: RecordedRequest) -> tuple[int, int]:
    assert request.image_bytes is not None
    return Image.open(io.BytesIO(request.image_bytes)).size


def old_time(seconds: float) -> str:
    """An RFC 3339 upload time `seconds` ago, as a redelivered event still carries it."""
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def assert_outputs_of(stack: Stack, name: str, size: tuple[int, int], objects: int) -> None:
    """`name` ended ok with `objects` object rows whose crops are its own (their pixel sizes are
    its boxes'), and its own overview of its size."""
    uri = f"gs://{BUCKET}/{name}"
    (image_row,) = [row for row in stack.rows("images") if row["source_uri"] == uri]
    assert (image_row["status"], image_row["objects_found"]) == ("ok", objects)
    rows = sorted(
        (row for row in stack.rows("objects") if row["source_uri"] == uri), key=lambda row: row["object_index"]
    )
    assert [row["object_index"] for row in rows] == list(range(1, objects + 1))
    relative = name.removeprefix("raw/")
    crops = [name for name in stack.names("processed/") if name.startswith(f"processed/{relative}-output-")]
    assert crops == [row["output_uri"].removeprefix(f"gs://{BUCKET}/") for row in rows]
    for row in rows:
        blob = stack.bucket.get_blob(row["output_uri"].removeprefix(f"gs://{BUCKET}/"))
        assert blob.metadata["source-uri"] == uri
        crop = Image.open(io.BytesIO(blob.download_as_bytes()))
        assert crop.size == (row["box_x_max"] - row["box_x_min"], row["box_y_max"] - row["box_y_min"])
    overview = stack.bucket.get_blob(image_row["overview_uri"].removeprefix(f"gs://{BUCKET}/"))
    assert overview.metadata["source-uri"] == uri
    assert Image.open(io.BytesIO(overview.download_as_bytes())).size == size


# --- 1. same stem, two extensions ----------------------------------------------------------------

JPG_SIZE, PNG_SIZE = (400, 300), (300, 400)


def answer_by_size(request: RecordedRequest) -> Answer:
    """Two objects in the JPEG, three in the PNG, so their outputs cannot pass for each other's."""
    return boxes_answer(2 if request_image_size(request) == JPG_SIZE else 3)


@pytest.mark.parametrize("order", ["jpg first", "png first", "together"])
def test_same_stem_with_two_extensions_keeps_both_images_outputs(stack, order):
    stack.gemini.reset(answer_by_size, latency=0.3 if order == "together" else 0.0)
    jpg = stack.upload("raw/cam1/a.jpg", photo(JPG_SIZE, "JPEG"), "image/jpeg")
    png = stack.upload("raw/cam1/a.png", photo(PNG_SIZE, "PNG"), "image/png")
    events = [stack.event_for(jpg), stack.event_for(png)]
    if order == "png first":
        events.reverse()

    if order == "together":
        with ThreadPoolExecutor(2) as pool:
            statuses = [response.status_code for response in pool.map(stack.deliver, events)]
    else:
        statuses = [stack.deliver(event).status_code for event in events]

    assert statuses == [200, 200]
    assert_outputs_of(stack, "raw/cam1/a.jpg", JPG_SIZE, 2)
    assert_outputs_of(stack, "raw/cam1/a.png", PNG_SIZE, 3)
    assert len(stack.names("processed/")) == 5
    assert len(stack.names("processed-overview/")) == 2
    # Both are complete: redeliveries are no-ops.
    assert [stack.deliver(event).status_code for event in events] == [200, 200]
    assert len(stack.gemini.requests) == 2 and len(stack.rows("images")) == 2


# --- 2. simultaneous copies of one event ---------------------------------------------------------


class CountingAnswers:
    """Each call answers one object more than the call before (a model whose answers differ
    between calls, as 3.x at its default temperature does)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Answer:
        with self._lock:
            self.calls += 1
            return boxes_answer(1 + self.calls)


@pytest.mark.parametrize("copies", [2, 10])
def test_simultaneous_copies_of_one_event_make_one_model_call_and_one_consistent_result(stack, copies):
    answers = CountingAnswers()
    stack.gemini.reset(answers, latency=0.5)
    blob = stack.upload("raw/cam1/belt.jpg", photo((640, 480), "JPEG"), "image/jpeg")
    event = stack.event_for(blob)

    with ThreadPoolExecutor(copies) as pool:
        responses = list(pool.map(lambda _: stack.deliver(event), range(copies)))

    assert [response.status_code for response in responses] == [200] * copies
    assert answers.calls == 1
    assert_outputs_of(stack, "raw/cam1/belt.jpg", (640, 480), 2)
    assert len(stack.rows("images")) == 1 and len(stack.rows("objects")) == 2
    marker = stack.bucket.get_blob("processed-markers/cam1/belt.jpg.json")
    assert (marker.metadata["source-generation"], marker.metadata["status"]) == (str(blob.generation), "ok")


def claim_of(stack: Stack, blob, *, expires_in: float, owner: str = "dead-worker") -> None:
    """A claim on `blob`'s generation as a worker that was killed mid-event leaves it."""
    now = dt.datetime.now(dt.UTC).timestamp()
    metadata = {
        "source-generation": str(blob.generation),
        "source-uri": f"gs://{BUCKET}/{blob.name}",
        "owner": owner,
        "lease-expires-at": f"{now + expires_in:.3f}",
    }
    claim = stack.bucket.blob(f"processed-markers/{blob.name.removeprefix('raw/')}.claim")
    claim.metadata = metadata
    claim.upload_from_string(json.dumps(metadata), content_type="application/json")


def test_an_expired_lease_of_a_killed_worker_is_taken_over(stack):
    stack.gemini.reset(lambda request: boxes_answer(2))
    blob = stack.upload("raw/belt.jpg", photo((640, 480), "JPEG"), "image/jpeg")
    claim_of(stack, blob, expires_in=-1)

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert_outputs_of(stack, "raw/belt.jpg", (640, 480), 2)
    assert len(stack.gemini.requests) == 1


def test_a_copy_that_finds_a_live_lease_is_redelivered_not_dropped(stack, monkeypatch):
    """A live lease whose holder never finishes: the copy waits, then fails so the platform
    redelivers it; once the lease has expired, the redelivery does the work."""
    monkeypatch.setattr(pipeline_module, "DUPLICATE_WAIT_S", 1.0)
    monkeypatch.setattr(pipeline_module, "DUPLICATE_POLL_S", 0.2)
    stack.gemini.reset(lambda request: boxes_answer(2))
    blob = stack.upload("raw/belt.jpg", photo((640, 480), "JPEG"), "image/jpeg")
    claim_of(stack, blob, expires_in=3)

    assert stack.deliver(stack.event_for(blob)).status_code == 500
    assert stack.gemini.requests == [] and stack.rows("images") == []

    claim_of(stack, blob, expires_in=-1)  # the lease has run out meanwhile
    assert stack.deliver(stack.event_for(blob)).status_code == 200
    assert_outputs_of(stack, "raw/belt.jpg", (640, 480), 2)


def test_a_delivery_that_fails_for_redelivery_gives_its_claim_back(stack, monkeypatch):
    """Gemini is down past the retry deadline: the event is handed back, and the redelivery
    (moments later, well inside the lease) is processed instead of waiting for the lease."""
    monkeypatch.setenv("RETRY_DEADLINE_S", "1.5")
    monkeypatch.setattr(pipeline_module, "DUPLICATE_WAIT_S", 0.5)
    stack.gemini.reset(lambda request: unavailable())
    blob = stack.upload("raw/belt.jpg", photo((640, 480), "JPEG"), "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 500
    assert stack.bucket.get_blob("processed-markers/belt.jpg.claim") is None

    stack.gemini.reset(lambda request: boxes_answer(2))
    assert stack.deliver(stack.event_for(blob)).status_code == 200
    assert_outputs_of(stack, "raw/belt.jpg", (640, 480), 2)


def test_a_marker_write_that_fails_keeps_the_claim_expired_so_the_redelivery_checks_the_marker(stack, monkeypatch):
    """The rows are in but Cloud Storage keeps failing the marker's upload: the claim stays with
    its lease run out (the marker might have landed), the redelivery takes it over and finishes."""
    monkeypatch.setenv("RETRY_DEADLINE_S", "1.5")
    stack.gemini.reset(lambda request: boxes_answer(2))
    blob = stack.upload("raw/belt.jpg", photo((640, 480), "JPEG"), "image/jpeg")
    write = GcsStorage.write

    def marker_unavailable(self, bucket, name, *args, **kwargs):
        if name == "processed-markers/belt.jpg.json":
            raise TransientError("storage write answered HTTP 503 (test)")
        return write(self, bucket, name, *args, **kwargs)

    monkeypatch.setattr(GcsStorage, "write", marker_unavailable)
    assert stack.deliver(stack.event_for(blob)).status_code == 500
    claim = stack.bucket.get_blob("processed-markers/belt.jpg.claim")
    assert claim is not None and float(claim.metadata["lease-expires-at"]) == 0.0
    assert stack.bucket.get_blob("processed-markers/belt.jpg.json") is None

    monkeypatch.setattr(GcsStorage, "write", write)
    assert stack.deliver(stack.event_for(blob)).status_code == 200
    assert_outputs_of(stack, "raw/belt.jpg", (640, 480), 2)
    assert stack.bucket.get_blob("processed-markers/belt.jpg.json").metadata["status"] == "ok"
    assert len(stack.rows("images")) == 1 and len(stack.rows("objects")) == 2


# --- 7. poison events end in a failed row ---------------------------------------------------------


def test_an_outage_longer_than_the_redelivery_window_ends_in_a_failed_row(stack, monkeypatch):
    monkeypatch.setenv("RETRY_DEADLINE_S", "1")
    monkeypatch.setenv("GIVE_UP_AFTER_S", "3600")
    stack.gemini.reset(lambda request: unavailable())
    blob = stack.upload("raw/belt.jpg", photo((640, 480), "JPEG"), "image/jpeg")

    # Early deliveries are handed back to the platform...
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(60))).status_code == 500
    assert stack.rows("images") == []
    # ... until the image has been redelivered for GIVE_UP_AFTER_S.
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(3700))).status_code == 200

    (row,) = stack.rows("images")
    assert (row["status"], row["error_type"]) == ("failed", "transient_error")
    assert "503" in row["error_message"]
    assert stack.rows("objects") == []
    assert stack.bucket.get_blob("processed-markers/belt.jpg.json").metadata["status"] == "failed"
    # The failure is final: a later copy is a no-op.
    calls = len(stack.gemini.requests)
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(3800))).status_code == 200
    assert len(stack.gemini.requests) == calls


def test_an_unexpected_error_is_one_json_line_and_a_failed_row_on_its_redelivery(stack, monkeypatch, capfd):
    monkeypatch.setenv("RETRY_DEADLINE_S", "5")
    stack.gemini.reset(lambda request: boxes_answer(2))

    def broken_overview(image, detections):
        raise KeyError("no such palette entry")

    monkeypatch.setattr(pipeline_module, "overview_jpeg", broken_overview)
    blob = stack.upload("raw/belt.jpg", photo((640, 480), "JPEG"), "image/jpeg")
    capfd.readouterr()

    # The first delivery: handed back for redelivery, logged as one JSON line.
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(1))).status_code == 500
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in (out + err).splitlines() if "no such palette entry" in line]
    assert len(lines) == 1 and lines[0]["error_type"] == "unexpected_error"
    assert "KeyError" in lines[0]["error"] and "broken_overview" in lines[0]["stack_trace"]
    assert stack.rows("images") == []
    assert stack.bucket.get_blob("processed-markers/belt.jpg.claim") is None

    # A redelivery after the first delivery's retry deadline that fails the same way: a failed row.
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(60))).status_code == 200
    (row,) = stack.rows("images")
    assert (row["status"], row["error_type"]) == ("failed", "unexpected_error")
    assert "KeyError" in row["error_message"]
    assert stack.rows("objects") == []
