"""`segmentation.rows`: the images and objects rows as pure functions of their inputs."""

from __future__ import annotations

from segmentation import PIPELINE_VERSION
from segmentation.detections import Box, Detection, DetectionResult, ObjectRef, Usage
from segmentation.errors import ImageDecodeError, TransientError
from segmentation.naming import row_id
from segmentation.rows import image_row, object_row

REF = ObjectRef("belt", "raw/cam1/a.jpg", 42, "image/jpeg", 1234)
GEMINI = DetectionResult(
    [Detection(Box(10, 20, 110, 70), "suitcase", "black", "A case.", "Wheels.")],
    detector="gemini",
    model="gemini-x",
    usage=Usage(100, 20, 5, 125),
    latency_ms=321.98765,
)
OFFLINE = DetectionResult([], detector="offline", model="offline-v1", fallback_reason="Gemini kept failing")
WHEN = "2026-01-02T03:04:05+00:00"
COMMON = {"configured": ("gemini", "gemini-x"), "prompt": "find bags", "processed_at": WHEN}


def test_an_ok_image_row_carries_the_answer_usage_and_size() -> None:
    row = image_row(
        REF,
        status="ok",
        result=GEMINI,
        objects_found=1,
        overview_uri="gs://belt/o.jpg",
        size=(200, 100),
        processing_ms=55.5,
        **COMMON,
    )

    assert row == {
        "row_id": row_id("belt", "raw/cam1/a.jpg", 42, "image", "gemini", "ok", None),
        "source_uri": "gs://belt/raw/cam1/a.jpg",
        "source_bucket": "belt",
        "source_name": "raw/cam1/a.jpg",
        "source_generation": 42,
        "detector": "gemini",
        "model": "gemini-x",
        "prompt": "find bags",
        "prompt_tokens": 100,
        "output_tokens": 20,
        "thinking_tokens": 5,
        "total_tokens": 125,
        "model_latency_ms": 321.988,
        "processed_at": WHEN,
        "pipeline_version": PIPELINE_VERSION,
        "content_type": "image/jpeg",
        "size_bytes": 1234,
        "status": "ok",
        "objects_found": 1,
        "error_type": None,
        "error_message": None,
        "fallback_reason": None,
        "overview_uri": "gs://belt/o.jpg",
        "image_width": 200,
        "image_height": 100,
        "embedding_status": None,
        "embedding_error": None,
        "processing_ms": 55.5,
    }
    assert (
        image_row(
            REF,
            status="ok",
            result=GEMINI,
            objects_found=1,
            overview_uri="gs://belt/o.jpg",
            size=(200, 100),
            processing_ms=55.5,
            **COMMON,
        )
        == row
    )  # same inputs, same row


def test_a_failed_row_names_the_configured_detector_and_a_redacted_error() -> None:
    error = ImageDecodeError("cannot decode https://x/v1/m?alt=json&key=AbC123")
    row = image_row(REF, status="failed", error=error, processing_ms=1.0, **COMMON)

    assert (row["detector"], row["model"], row["prompt"]) == ("gemini", "gemini-x", "find bags")
    assert (row["error_type"], row["objects_found"], row["image_width"]) == ("image_decode_error", 0, None)
    assert "AbC123" not in row["error_message"] and "key=***" in row["error_message"]
    assert row["row_id"] == row_id("belt", "raw/cam1/a.jpg", 42, "image", "gemini", "failed", "image_decode_error")
    assert (
        row["row_id"]
        != image_row(REF, status="failed", error=TransientError("x"), processing_ms=1.0, **COMMON)["row_id"]
    )


def test_a_partial_answer_is_a_truncated_answer_and_an_offline_row_has_no_prompt() -> None:
    partial = image_row(REF, status="partial", result=GEMINI, processing_ms=1.0, **COMMON)
    offline = image_row(REF, status="empty", result=OFFLINE, processing_ms=1.0, **COMMON)

    assert partial["error_type"] == "truncated_answer"
    assert (offline["detector"], offline["model"], offline["prompt"]) == ("offline", "offline-v1", None)
    assert offline["fallback_reason"] == "Gemini kept failing"
    assert offline["total_tokens"] == 0


def test_an_object_row_has_pixel_and_normalised_boxes() -> None:
    (detection,) = GEMINI.detections
    row = object_row(
        REF,
        1,
        detection,
        "gs://belt/c1.jpg",
        "gs://belt/o.jpg",
        GEMINI,
        (300, 90),
        prompt="find bags",
        processed_at=WHEN,
    )

    assert row["row_id"] == row_id("belt", "raw/cam1/a.jpg", 42, "object", "gemini", 1)
    assert {
        key: row[key]
        for key in (
            "object_index",
            "label",
            "output_uri",
            "item_color",
            "item_gen_desc",
            "item_det_desc",
            "has_mask",
            "overview_uri",
            "image_width",
            "image_height",
            "prompt",
            "total_tokens",
            "processed_at",
        )
    } == {
        "object_index": 1,
        "label": "suitcase",
        "output_uri": "gs://belt/c1.jpg",
        "item_color": "black",
        "item_gen_desc": "A case.",
        "item_det_desc": "Wheels.",
        "has_mask": False,
        "overview_uri": "gs://belt/o.jpg",
        "image_width": 300,
        "image_height": 90,
        "prompt": "find bags",
        "total_tokens": 125,
        "processed_at": WHEN,
    }
    assert [row[f"box_{k}"] for k in ("x_min", "y_min", "x_max", "y_max")] == [10, 20, 110, 70]
    assert [row[f"box_norm_{k}"] for k in ("x_min", "y_min", "x_max", "y_max")] == [
        round(10 / 300, 6),
        round(20 / 90, 6),
        round(110 / 300, 6),
        round(70 / 90, 6),
    ]
