"""End to end: a CloudEvent over HTTP into functions-framework's real app, the storage
emulator for every read and write, the Gemini wire server, and the row sinks.

Nothing of ours is patched: the function reads its configuration from the environment the
test sets, exactly as on Cloud Run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from cloudevents.http import CloudEvent
from PIL import Image

from devtools.standins.bigquery_server import FakeBigQuery
from devtools.standins.gemini_server import (
    Answer,
    ErrorReply,
    internal_error,
    rate_limited,
    sample_text,
    truncated,
    unavailable,
)
from segmentation.parse import parse_response
from tests.fixtures import shared_fixture
from tests.harness import API_KEY, BUCKET, FINALIZED, ROOT, Stack, running_stack, use_bigquery


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Iterator[Stack]:
    with running_stack(tmp_path / "results.sqlite", monkeypatch) as running:
        yield running


def cupcakes() -> bytes:
    return shared_fixture("gemini", "sample_1.png").read_bytes()


def expected_boxes(sample: int, size=(620, 620)) -> list[tuple[int, int, int, int]]:
    return [d.box.as_tuple() for d in parse_response(sample_text(sample), size).detections]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_an_image_in_raw_gives_crops_overview_and_rows(stack, mode):
    stack.gemini.enqueue(Answer(sample_text(1)))
    blob = stack.upload("raw/cam1/cupcakes.png", cupcakes())

    response = stack.deliver(stack.event_for(blob), mode)

    assert response.status_code == 200, response.text
    boxes = expected_boxes(1)
    crops = stack.names("processed/")
    assert crops == [f"processed/cam1/cupcakes.png-output-{i:04d}.jpg" for i in range(1, len(boxes) + 1)]
    assert stack.names("processed-overview/") == ["processed-overview/cam1/processed_cupcakes.png.jpg"]
    overview = Image.open(
        io.BytesIO(stack.bucket.blob("processed-overview/cam1/processed_cupcakes.png.jpg").download_as_bytes())
    )
    assert overview.size == (620, 620)

    objects = sorted(stack.rows("objects"), key=lambda row: row["object_index"])
    assert [(r["box_x_min"], r["box_y_min"], r["box_x_max"], r["box_y_max"]) for r in objects] == boxes
    for row, crop_name in zip(objects, crops, strict=False):
        assert row["output_uri"] == f"gs://{BUCKET}/{crop_name}"
        crop = Image.open(io.BytesIO(stack.bucket.blob(crop_name).download_as_bytes()))
        assert crop.size == (row["box_x_max"] - row["box_x_min"], row["box_y_max"] - row["box_y_min"])
        assert row["source_generation"] == blob.generation
        assert row["overview_uri"] == f"gs://{BUCKET}/processed-overview/cam1/processed_cupcakes.png.jpg"
        assert row["detector"] == "gemini" and row["prompt"] == "Detect bags and luggage only."
        assert row["total_tokens"] > 0
    assert objects[0]["label"] == "red sprinkles"
    (image_row,) = stack.rows("images")
    assert (image_row["status"], image_row["objects_found"], image_row["error_type"]) == ("ok", len(boxes), None)
    assert (image_row["image_width"], image_row["image_height"]) == (620, 620)

    request = stack.gemini.requests[0]
    sent = Image.open(io.BytesIO(request.image_bytes))
    assert max(sent.size) <= 1024 and request.image_mime_type == "image/jpeg"


def jpeg_of_cupcakes(**options) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(cupcakes())).convert("RGB").save(buffer, "JPEG", quality=85, **options)
    return buffer.getvalue()


def test_an_upright_jpeg_reaches_the_model_as_uploaded_and_boxes_map_to_it(stack):
    stack.gemini.enqueue(Answer(sample_text(1)))
    data = jpeg_of_cupcakes()
    blob = stack.upload("raw/cam1/cupcakes.jpg", data)

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert stack.gemini.requests[0].image_bytes == data
    objects = sorted(stack.rows("objects"), key=lambda row: row["object_index"])
    assert [(r["box_x_min"], r["box_y_min"], r["box_x_max"], r["box_y_max"]) for r in objects] == expected_boxes(1)


def test_a_rotated_jpeg_reaches_the_model_upright(stack):
    stack.gemini.enqueue(Answer(sample_text(1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    upright = Image.open(io.BytesIO(cupcakes())).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    blob = stack.upload("raw/cam1/turned.jpg", jpeg_of_cupcakes(exif=exif))

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    sent = Image.open(io.BytesIO(stack.gemini.requests[0].image_bytes)).convert("RGB")
    assert sent.size == upright.size
    difference = sum(
        abs(a - b) for a, b in zip(sent.resize((31, 31)).tobytes(), upright.resize((31, 31)).tobytes(), strict=False)
    )
    assert difference / (31 * 31 * 3) < 12


def test_redelivery_after_success_is_a_cheap_no_op(stack):
    stack.gemini.enqueue(Answer(sample_text(1)))
    blob = stack.upload("raw/cupcakes.png", cupcakes())
    event = stack.event_for(blob)
    assert stack.deliver(event).status_code == 200
    outputs_before = stack.names("processed")
    rows_before = (len(stack.rows("objects")), len(stack.rows("images")))
    claim_before = stack.bucket.get_blob("processed-markers/cupcakes.png.claim").generation
    stack.emulator.clear_requests()

    assert stack.deliver(event).status_code == 200
    assert stack.deliver(event, "structured").status_code == 200

    assert len(stack.gemini.requests) == 1
    assert stack.emulator.media_requests() == []
    # Each redelivery: the claim's conditional create, refused because the claim exists, then the
    # marker's metadata read. Nothing is written.
    writes = [r for r in stack.emulator.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert [r.query.get("ifGenerationMatch") for r in writes] == [["0"], ["0"]]
    assert stack.bucket.get_blob("processed-markers/cupcakes.png.claim").generation == claim_before
    assert stack.names("processed") == outputs_before
    assert (len(stack.rows("objects")), len(stack.rows("images"))) == rows_before


def test_a_newer_generation_is_a_new_image(stack):
    stack.gemini.enqueue(Answer(sample_text(1)), Answer(sample_text(5)))
    first = stack.upload("raw/cupcakes.png", cupcakes())
    assert stack.deliver(stack.event_for(first)).status_code == 200
    second = stack.upload("raw/cupcakes.png", cupcakes())
    assert second.generation != first.generation

    assert stack.deliver(stack.event_for(second)).status_code == 200

    assert len(stack.gemini.requests) == 2
    statuses = {(row["source_generation"], row["status"]) for row in stack.rows("images")}
    assert statuses == {(first.generation, "ok"), (second.generation, "ok")}
    newest = [row for row in stack.rows("objects") if row["source_generation"] == second.generation]
    assert len(newest) == len(expected_boxes(5))
    # The crops now belong to the newer generation only: none left over from the first.
    assert len(stack.names("processed/")) == len(expected_boxes(5))


def test_an_old_generation_redelivered_after_a_newer_one_is_skipped(stack):
    stack.gemini.enqueue(Answer(sample_text(1)))
    old = stack.upload("raw/cupcakes.png", cupcakes())
    new = stack.upload("raw/cupcakes.png", cupcakes())
    assert stack.deliver(stack.event_for(new)).status_code == 200

    assert stack.deliver(stack.event_for(old)).status_code == 200

    assert len(stack.gemini.requests) == 1
    assert {row["source_generation"] for row in stack.rows("images")} == {new.generation}


def test_the_crops_go_up_while_the_overview_is_still_being_drawn(stack, monkeypatch):
    """The overview (the whole image drawn on and encoded) takes longer than cutting every crop,
    so the crop uploads do not wait for it: here the overview is only finished once a crop upload
    has started, and the event still ends ok with every crop and the overview."""
    import threading

    import segmentation.pipeline as pipeline_module
    from segmentation.function import default_pipeline

    stack.gemini.enqueue(Answer(sample_text(1)))
    blob = stack.upload("raw/cupcakes.png", cupcakes())
    storage = default_pipeline().storage
    real_write, real_overview = storage.write, pipeline_module.overview_jpeg
    crop_upload_started = threading.Event()
    seen_before_overview: list[bool] = []

    def recorded_write(bucket, name, *args, **kwargs):
        if name.startswith("processed/"):
            crop_upload_started.set()
        return real_write(bucket, name, *args, **kwargs)

    def overview_after_a_crop_upload(*args, **kwargs):
        seen_before_overview.append(crop_upload_started.wait(timeout=5))
        return real_overview(*args, **kwargs)

    monkeypatch.setattr(storage, "write", recorded_write)
    monkeypatch.setattr(pipeline_module, "overview_jpeg", overview_after_a_crop_upload)
    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert seen_before_overview == [True]
    (row,) = stack.rows("images")
    assert row["status"] == "ok" and row["objects_found"] == len(expected_boxes(1))
    assert len(stack.names("processed/")) == len(expected_boxes(1))
    assert stack.names("processed-overview/") == ["processed-overview/processed_cupcakes.png.jpg"]


def test_a_marker_never_goes_backwards_when_two_generations_finish_together(stack, monkeypatch):
    """The older generation's event finds no marker, claims the work and, before it writes its
    own marker, the newer generation's event takes the claim over, finishes and writes the newer
    marker. The older write is conditional on there being no marker, so it is refused; looking at
    what is there, it leaves the newer marker alone. (A plain read-then-write put the older
    generation back in the marker, and the next redelivery of the newer one processed it again.)"""
    import threading

    from segmentation.function import default_pipeline

    stack.gemini.enqueue(Answer(sample_text(1)))
    old = stack.upload("raw/cupcakes.png", cupcakes())
    new = stack.upload("raw/cupcakes.png", cupcakes())  # the old generation is gone: a failed row
    storage = default_pipeline().storage
    real_read = storage.read
    first_read = threading.Lock()

    def newer_finishes_before_the_older_reads(ref, **kwargs):
        if first_read.acquire(blocking=False):
            # the older event found no marker and holds the claim: let the newer one finish first
            assert stack.deliver(stack.event_for(new)).status_code == 200
        return real_read(ref, **kwargs)

    monkeypatch.setattr(storage, "read", newer_finishes_before_the_older_reads)
    assert stack.deliver(stack.event_for(old)).status_code == 200

    marker = stack.bucket.get_blob("processed-markers/cupcakes.png.json")
    assert marker.metadata["source-generation"] == str(new.generation)
    assert marker.metadata["status"] == "ok"
    statuses = {(row["source_generation"], row["status"]) for row in stack.rows("images")}
    assert statuses == {(old.generation, "failed"), (new.generation, "ok")}
    # A redelivery of the newer generation is now the cheap no-op it should be.
    assert stack.deliver(stack.event_for(new)).status_code == 200
    assert len(stack.gemini.requests) == 1


def _older_event_with_newer_upload_before_its_writes(stack, monkeypatch, *, deliver_newer: bool):
    """Deliver an older generation (20 objects) of raw/cupcakes.png; when that event has its
    answer and starts its first output write, upload a newer generation (6 objects) first and,
    with `deliver_newer`, process it to the end. Returns (old, new) blobs."""
    import threading

    from segmentation.function import default_pipeline

    stack.gemini.enqueue(Answer(sample_text(2)), Answer(sample_text(6)))
    old = stack.upload("raw/cupcakes.png", cupcakes())
    storage = default_pipeline().storage
    real_write = storage.write
    newer: list = []
    first_write = threading.Lock()

    def newer_before_the_first_write(bucket, name, *args, **kwargs):
        if name.startswith("processed/") and first_write.acquire(blocking=False):  # the older event's
            newer.append(stack.upload("raw/cupcakes.png", cupcakes()))
            if deliver_newer:
                assert stack.deliver(stack.event_for(newer[0])).status_code == 200
        return real_write(bucket, name, *args, **kwargs)

    monkeypatch.setattr(storage, "write", newer_before_the_first_write)
    assert stack.deliver(stack.event_for(old)).status_code == 200
    (new,) = newer
    return old, new


def _assert_only_the_newer_outputs(stack, new) -> None:
    crops = stack.names("processed/")
    assert len(crops) == len(expected_boxes(6))
    for name in crops + stack.names("processed-overview/") + stack.names("processed-markers/"):
        assert stack.bucket.get_blob(name).metadata["source-generation"] == str(new.generation), name
    assert {(row["source_generation"], row["status"]) for row in stack.rows("images")} == {(new.generation, "ok")}
    assert {row["source_generation"] for row in stack.rows("objects")} == {new.generation}


def test_an_older_generation_writing_after_a_newer_one_finished_leaves_the_newer_outputs(stack, monkeypatch):
    """Before the older generation's event writes, the newer generation is uploaded and
    processed to the end. The older one's writes are conditional on there being no output yet,
    so where the newer one wrote (its crops and overview) they are refused and the newer outputs
    stay; the crops the newer one does not have are written, then withdrawn when the older event
    sees it was superseded, and it records no rows. (Unconditional writes overwrote the newer crops and
    overview and left 14 stray crops.)"""
    _, new = _older_event_with_newer_upload_before_its_writes(stack, monkeypatch, deliver_newer=True)
    assert len(stack.gemini.requests) == 2
    _assert_only_the_newer_outputs(stack, new)


def test_an_older_generation_superseded_during_its_writes_takes_them_back(stack, monkeypatch):
    """The newer generation is uploaded as the older event starts its writes; the older one
    writes everything, sees the newer one live when it asks after the writes, takes its outputs
    back and records nothing; the newer event then writes its own. The end state is the newer generation's alone."""
    _, new = _older_event_with_newer_upload_before_its_writes(stack, monkeypatch, deliver_newer=False)
    assert stack.names("processed/") == [] and stack.names("processed-overview/") == []
    assert stack.rows("images") == [] and stack.rows("objects") == []

    assert stack.deliver(stack.event_for(new)).status_code == 200
    _assert_only_the_newer_outputs(stack, new)


@pytest.mark.parametrize(
    "name, content_type, data",
    [
        ("processed/cupcakes.png-output-0001.jpg", "image/jpeg", b"jpeg"),
        ("processed-overview/processed_cupcakes.png.jpg", "image/jpeg", b"jpeg"),
        ("raw/cam1/", "text/plain", b""),
        ("raw/empty.jpg", "image/jpeg", b""),
        ("raw/notes.txt", "text/plain", b"hello"),
    ],
)
def test_objects_that_are_not_ours_are_ignored(stack, name, content_type, data, capsys):
    blob = stack.upload(name, data, content_type)

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert stack.gemini.requests == [] and stack.rows("images") == []
    ignored = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"ignored' in line]
    assert len(ignored) == 1 and ignored[0]["object"] == name


def test_a_wrong_event_is_acknowledged_and_logged(stack, capsys):
    blob = stack.upload("raw/cupcakes.png", cupcakes())
    deleted = CloudEvent(
        {"type": "google.cloud.storage.object.v1.deleted", "source": "//storage"}, {"bucket": BUCKET, "name": blob.name}
    )
    no_name = CloudEvent({"type": FINALIZED, "source": "//storage"}, {"bucket": BUCKET})

    assert stack.deliver(deleted).status_code == 200
    assert stack.deliver(no_name).status_code == 200

    assert stack.gemini.requests == []
    warnings = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "ignored event" in line]
    assert [w["severity"] for w in warnings] == ["WARNING", "WARNING"]


def failed_row(stack) -> dict:
    (row,) = stack.rows("images")
    assert row["status"] == "failed" and row["objects_found"] == 0
    assert stack.rows("objects") == [] and stack.names("processed/") == []
    return row


@pytest.mark.parametrize(
    "data, error_type",
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image_decode_error"),
        (b"this is a text file named .jpg", "image_decode_error"),
    ],
)
def test_a_broken_image_gets_a_failed_row_and_the_event_is_acknowledged(stack, data, error_type, capsys):
    blob = stack.upload("raw/broken.jpg", data, "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    row = failed_row(stack)
    assert row["error_type"] == error_type and row["error_message"]
    assert stack.gemini.requests == []
    errors = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["severity"], e["error_type"]) for e in errors] == [("ERROR", error_type)]


def test_an_oversized_file_is_refused_without_download(stack, monkeypatch):
    monkeypatch.setenv("MAX_IMAGE_BYTES", "1000")
    blob = stack.upload("raw/cupcakes.png", cupcakes())

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert failed_row(stack)["error_type"] == "image_too_large"
    assert stack.emulator.media_requests() == []


def test_an_object_deleted_before_it_was_read(stack):
    blob = stack.upload("raw/cupcakes.png", cupcakes())
    event = stack.event_for(blob)
    blob.delete()

    assert stack.deliver(event).status_code == 200

    assert failed_row(stack)["error_type"] == "object_gone"


def test_an_answer_unparseable_after_a_re_ask_is_a_failed_image(stack):
    stack.gemini.enqueue(Answer("I can see some cupcakes."), Answer("Sorry, no JSON today."))
    blob = stack.upload("raw/cupcakes.png", cupcakes())

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    row = failed_row(stack)
    assert row["error_type"] == "response_parse_error"
    assert len(stack.gemini.requests) == 2


def test_an_empty_answer_gives_an_empty_image_row_and_an_overview(stack):
    stack.gemini.enqueue(Answer("[]"))
    blob = stack.upload("raw/cupcakes.png", cupcakes())

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    (row,) = stack.rows("images")
    assert (row["status"], row["objects_found"]) == ("empty", 0)
    assert stack.names("processed-overview/") == ["processed-overview/processed_cupcakes.png.jpg"]


def test_an_answer_cut_at_the_token_limit_keeps_complete_objects_and_is_partial(stack):
    text = sample_text(1)
    stack.gemini.enqueue(truncated(text, len(text) // 2))
    blob = stack.upload("raw/cupcakes.png", cupcakes())

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    (row,) = stack.rows("images")
    kept = parse_response(text[: len(text) // 2], (620, 620)).detections
    assert row["status"] == "partial" and row["objects_found"] == len(kept) > 0
    assert len(stack.rows("objects")) == len(kept)


def test_quota_and_server_errors_are_retried_in_process(stack):
    stack.gemini.enqueue(rate_limited("0.2s"), internal_error(), Answer(sample_text(4)))
    blob = stack.upload("raw/cupcakes.png", cupcakes())

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert len(stack.gemini.requests) == 3
    (row,) = stack.rows("images")
    assert row["status"] == "ok" and row["objects_found"] == len(expected_boxes(4))


def test_a_storage_outage_is_retried_in_process(stack):
    blob = stack.upload("raw/cupcakes.png", cupcakes())
    stack.gemini.enqueue(Answer(sample_text(1)))
    stack.emulator.fail_next(2, method="GET", path=r"^/download/", status=503)
    stack.emulator.fail_next(1, method="POST", path=r"^/upload/", status=503)

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert stack.rows("images")[0]["status"] == "ok"
    assert len(stack.names("processed/")) == len(expected_boxes(1))


def test_past_the_deadline_the_function_fails_so_the_platform_redelivers(stack, monkeypatch):
    monkeypatch.setenv("RETRY_DEADLINE_S", "1.5")
    monkeypatch.setenv("OFFLINE_FALLBACK", "false")
    stack.gemini.reset(lambda request: unavailable())
    blob = stack.upload("raw/cupcakes.png", cupcakes())
    event = stack.event_for(blob)

    assert stack.deliver(event).status_code == 500

    assert stack.rows("images") == [] and stack.names("processed") == []
    # The platform redelivers once Gemini is back; the image is processed exactly once.
    stack.gemini.reset(lambda request: Answer(sample_text(1)))
    assert stack.deliver(event).status_code == 200
    assert stack.deliver(event).status_code == 200
    assert [row["status"] for row in stack.rows("images")] == ["ok"]
    assert len(stack.rows("objects")) == len(expected_boxes(1))


def test_past_the_deadline_the_offline_detector_takes_over_when_fallback_is_on(stack, monkeypatch):
    monkeypatch.setenv("RETRY_DEADLINE_S", "1.5")
    monkeypatch.setenv("OFFLINE_FALLBACK", "true")
    stack.gemini.reset(lambda request: unavailable())
    blob = stack.upload("raw/belt.jpg", (ROOT / "samples" / "belt-01.jpg").read_bytes(), "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    (image_row,) = stack.rows("images")
    assert image_row["status"] == "ok" and image_row["detector"] == "offline"
    assert image_row["fallback_reason"].startswith("Gemini kept failing past the retry deadline")
    objects = stack.rows("objects")
    assert len(objects) == image_row["objects_found"] > 0
    assert {row["detector"] for row in objects} == {"offline"} and {row["label"] for row in objects} == {"item"}
    assert all(row["prompt"] is None and row["total_tokens"] == 0 for row in objects)
    assert len(stack.names("processed/")) == len(objects)


def test_without_gemini_credentials_the_offline_fallback_processes_the_image_when_on(stack, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("OFFLINE_FALLBACK", "true")
    blob = stack.upload("raw/belt.jpg", (ROOT / "samples" / "belt-02.jpg").read_bytes(), "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    (image_row,) = stack.rows("images")
    assert (image_row["status"], image_row["detector"]) == ("ok", "offline")
    assert image_row["fallback_reason"].startswith("Gemini is not configured")
    assert stack.gemini.requests == []


def test_by_default_without_credentials_the_image_fails_saying_why_never_guessed(stack, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("OFFLINE_FALLBACK", raising=False)
    blob = stack.upload("raw/belt.jpg", (ROOT / "samples" / "belt-02.jpg").read_bytes(), "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert failed_row(stack)["error_type"] == "detector_not_configured"


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_the_empty_belt_gate_skips_the_model_call_only_for_a_camera_switched_on(stack, monkeypatch):
    from segmentation.offline import OfflineDetector
    from tools.belt_scenes import make_scene

    # The gate's quality is measured in test_offline.py and tools/eval_gate.py; here: an empty frame
    # it recognises against the camera's empty-scene reference never reaches Gemini, where the
    # camera is switched on for the gate, and does reach it from a camera that is not.
    for index in range(40):
        scene = make_scene("heldout", index, count=0, reference=True, belt_moved=True)
        frame = _jpeg(scene.image)
        gate = OfflineDetector(background=Image.open(io.BytesIO(_jpeg(scene.background))))
        if gate.belt_is_empty(Image.open(io.BytesIO(frame)).convert("RGB")):
            break
    else:
        pytest.fail("no held-out empty scene with a reference that the gate recognises")
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "cam1, cam3")
    for camera in ("cam1", "cam2"):
        stack.upload(f"backgrounds/{camera}.jpg", _jpeg(scene.background), "image/jpeg")
    stack.gemini.enqueue(Answer(sample_text(5)))

    for camera in ("cam1", "cam2"):
        blob = stack.upload(f"raw/{camera}/empty.jpg", frame, "image/jpeg")
        assert stack.deliver(stack.event_for(blob)).status_code == 200

    rows = {row["source_uri"].split("/")[-2]: row for row in stack.rows("images")}
    assert (rows["cam1"]["status"], rows["cam1"]["detector"], rows["cam1"]["objects_found"]) == (
        "empty",
        "empty-belt-gate",
        0,
    )
    assert rows["cam2"]["detector"] == "gemini"  # a reference, but the camera is not switched on
    assert len(stack.gemini.requests) == 1
    assert "processed-overview/cam1/processed_empty.jpg.jpg" in stack.names("processed-overview/")


def test_the_gate_never_skips_a_real_photo_of_bags_against_its_empty_scene(stack, monkeypatch):
    """COCO 000000520707 (four handbags and a suitcase; Flickr, CC BY 2.0, attribution in
    ../shared/fixtures/coco_luggage/image_manifest.tsv), the camera switched on for the gate, its
    reference the same photo with the luggage painted out: the bags reach the model."""
    from tools.eval_gate import coco_photos

    _name, photo, empty = next(p for p in coco_photos() if p[0] == "000000520707.jpg")
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "*")
    stack.upload("backgrounds/cam1.jpg", _jpeg(empty), "image/jpeg")
    stack.gemini.enqueue(Answer(sample_text(5)))
    blob = stack.upload("raw/cam1/coco-520707.jpg", _jpeg(photo), "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    (image_row,) = stack.rows("images")
    assert image_row["detector"] == "gemini" and len(stack.gemini.requests) == 1


def test_without_a_reference_the_gate_never_skips_a_real_photo_of_bags(stack, monkeypatch):
    """COCO 000000520707 (see above), the gate on for every camera but none has a reference: the
    model is asked (modelling the belt from the photo alone, an earlier gate called it empty)."""
    photo = shared_fixture("coco_luggage", "images", "000000520707.jpg").read_bytes()
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "*")
    stack.gemini.enqueue(Answer(sample_text(5)))
    blob = stack.upload("raw/cam1/coco-520707.jpg", photo, "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    (image_row,) = stack.rows("images")
    assert (image_row["status"], image_row["detector"]) == ("ok", "gemini")
    assert len(stack.gemini.requests) == 1


def test_rows_stream_to_bigquery_through_the_real_client(stack, monkeypatch):
    with FakeBigQuery() as bigquery:
        use_bigquery(monkeypatch, bigquery.url)
        stack.gemini.enqueue(Answer(sample_text(1)))
        blob = stack.upload("raw/cupcakes.png", cupcakes())
        bigquery.fail_next(1, status=503)
        event = stack.event_for(blob)

        assert stack.deliver(event).status_code == 200
        assert stack.deliver(event).status_code == 200

        stored_objects = bigquery.rows("test-project.conveyor.objects")
        stored_images = bigquery.rows("test-project.conveyor.images")
        assert all(row["insertId"] == row["json"]["row_id"] for row in stored_objects + stored_images)
        objects = [row["json"] for row in stored_objects]
        assert len(objects) == len(expected_boxes(1)) and len(stored_images) == 1
        assert {row["object_index"] for row in objects} == set(range(1, len(objects) + 1))
        assert stored_images[0]["json"]["status"] == "ok"
        assert not stack.sqlite_path.exists()


def test_the_api_key_never_reaches_logs_rows_or_outputs(stack, capsys):
    stack.gemini.enqueue(rate_limited("0.1s"), Answer(sample_text(2)))
    blob = stack.upload("raw/cupcakes.png", cupcakes())

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    captured = capsys.readouterr()
    assert API_KEY not in captured.out + captured.err
    assert API_KEY not in json.dumps(stack.rows("objects") + stack.rows("images"))
    for name in stack.names(""):
        assert API_KEY.encode() not in stack.bucket.blob(name).download_as_bytes()


def test_an_endpoint_echoing_our_headers_cannot_leak_the_key_through_the_500_or_its_log(
    stack, monkeypatch, capsys, caplog
):
    monkeypatch.setenv("RETRY_DEADLINE_S", "1")
    monkeypatch.setenv("OFFLINE_FALLBACK", "false")
    stack.gemini.reset(lambda request: ErrorReply(503, "UNAVAILABLE", "overloaded; you sent:", echo_headers=True))
    blob = stack.upload("raw/cupcakes.png", cupcakes())

    assert stack.deliver(stack.event_for(blob)).status_code == 500

    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    # One JSON line says why; the framework prints no plain-text traceback beside it.
    assert "Traceback" not in everything and "UNAVAILABLE" in everything
    (line,) = [json.loads(x) for x in captured.err.splitlines() if x.startswith("{") and "giving up for now" in x]
    assert line["severity"] == "ERROR" and line["error_type"] == "transient_error"
    assert API_KEY not in everything


def test_an_event_for_a_bucket_the_function_cannot_use_is_recorded_once_not_redelivered_forever(stack, capsys):
    blob = stack.upload("raw/cupcakes.png", cupcakes())
    event = stack.event_for(blob, bucket="some-other-bucket")

    assert stack.deliver(event).status_code == 200

    (row,) = stack.rows("images")
    assert row["status"] == "failed" and row["source_bucket"] == "some-other-bucket"
    assert "completion marker not written" in capsys.readouterr().err
