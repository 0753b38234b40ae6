"""The pipeline on the in-memory seams: `MemoryStorage`, a list sink and a scripted detector, no
HTTP server. Rows, outputs, idempotency, a newer generation superseding an older one, and a write
that finds a newer generation's output; tests/test_storage_contract.py shows MemoryStorage does
what GcsStorage does."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from PIL import Image

from segmentation.config import Config
from segmentation.detections import Box, Detection, DetectionResult, ObjectRef, Usage
from segmentation.images import ModelInput
from segmentation.memory_storage import MemoryStorage
from segmentation.pipeline import Detector, Pipeline

BUCKET = "belt"
NAME = "raw/cam1/a.jpg"
MARKER = "processed-markers/cam1/a.jpg.json"
OVERVIEW = "processed-overview/cam1/processed_a.jpg.jpg"


class ListSink:
    """Rows by table, in insert order."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {"images": [], "objects": []}

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.tables[table].extend(dict(row) for row in rows)


class ScriptedDetector:
    """Answers `boxes` (pixel boxes) for every image; `during` runs inside each call."""

    name = "gemini"

    def __init__(self, boxes: list[tuple[int, int, int, int]], during: Callable[[], None] | None = None):
        self.boxes = boxes
        self.during = during
        self.calls = 0
        self.closed = False

    def detect(self, model_input: ModelInput, image_size: tuple[int, int], *, deadline: float) -> DetectionResult:
        self.calls += 1
        if self.during:
            self.during()
        detections = [
            Detection(Box(*box), label=f"bag {index}", color="red") for index, box in enumerate(self.boxes, start=1)
        ]
        return DetectionResult(
            detections, detector="gemini", model="gemini-test", usage=Usage(10, 5, 0, 15), latency_ms=12.5
        )

    def close(self) -> None:
        self.closed = True


def photo(shade: int = 120) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (shade, 90, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


def upload(storage: MemoryStorage, data: bytes, name: str = NAME) -> ObjectRef:
    """Write a source image and return the finalize event's ObjectRef for it."""
    storage.write(BUCKET, name, data, content_type="image/jpeg")
    return ObjectRef(BUCKET, name, storage.live_generation(BUCKET, name), "image/jpeg", len(data))


def make(detector: Detector) -> tuple[Pipeline, MemoryStorage, ListSink]:
    storage, sink = MemoryStorage(buckets=[BUCKET]), ListSink()
    config = Config.from_env({"OFFLINE_FALLBACK": "false", "EMPTY_BELT_GATE_CAMERAS": "", "RETRY_DEADLINE_S": "5"})
    return Pipeline(config, storage=storage, sink=sink, detector=detector), storage, sink


TWO = [(10, 10, 60, 50), (100, 20, 180, 90)]


def test_an_image_gives_its_rows_crops_overview_and_marker() -> None:
    pipeline, storage, sink = make(ScriptedDetector(TWO))
    ref = upload(storage, photo())

    outcome = pipeline.process(ref)

    crops = [f"processed/cam1/a.jpg-output-000{index}.jpg" for index in (1, 2)]
    overview = OVERVIEW
    assert (outcome.status, outcome.objects_found) == ("ok", 2)
    assert outcome.crop_uris == tuple(f"gs://{BUCKET}/{name}" for name in crops)
    assert outcome.overview_uri == f"gs://{BUCKET}/{overview}"
    for name in [*crops, overview]:
        assert storage.metadata(BUCKET, name) == {"source-generation": str(ref.generation), "source-uri": ref.uri}
        assert storage.read(ObjectRef(BUCKET, name), max_bytes=10**6)[:2] == b"\xff\xd8"  # a JPEG
    marker = storage.metadata(BUCKET, MARKER)
    assert marker == {
        "source-generation": str(ref.generation),
        "source-uri": ref.uri,
        "status": "ok",
        "detector": "gemini",
        "fallback": "false",
    }
    assert json.loads(storage.read(ObjectRef(BUCKET, MARKER), max_bytes=10**6)) == {
        "source_uri": ref.uri,
        "generation": ref.generation,
        "status": "ok",
        "objects_found": 2,
        "reason": None,
    }

    (image,) = sink.tables["images"]
    assert {
        key: image[key]
        for key in (
            "source_uri",
            "source_generation",
            "status",
            "objects_found",
            "detector",
            "model",
            "total_tokens",
            "model_latency_ms",
            "overview_uri",
            "image_width",
            "image_height",
            "error_type",
        )
    } == {
        "source_uri": ref.uri,
        "source_generation": ref.generation,
        "status": "ok",
        "objects_found": 2,
        "detector": "gemini",
        "model": "gemini-test",
        "total_tokens": 15,
        "model_latency_ms": 12.5,
        "overview_uri": outcome.overview_uri,
        "image_width": 200,
        "image_height": 100,
        "error_type": None,
    }
    objects = sink.tables["objects"]
    assert [row["output_uri"] for row in objects] == list(outcome.crop_uris)
    assert [(row["object_index"], row["box_x_min"], row["box_norm_x_max"]) for row in objects] == [
        (1, 10, 0.3),
        (2, 100, 0.9),
    ]


def test_a_redelivery_is_a_duplicate_that_adds_nothing() -> None:
    detector = ScriptedDetector(TWO)
    pipeline, storage, sink = make(detector)
    ref = upload(storage, photo())
    pipeline.process(ref)
    names = storage.list_names(BUCKET, "")

    again = pipeline.process(ref)

    assert (again.status, again.reason) == ("duplicate", "already processed")
    assert detector.calls == 1
    assert (len(sink.tables["images"]), len(sink.tables["objects"])) == (1, 2)
    assert storage.list_names(BUCKET, "") == names


def test_a_newer_generation_replaces_the_outputs_and_the_older_event_is_then_a_duplicate() -> None:
    detector = ScriptedDetector(TWO)
    pipeline, storage, sink = make(detector)
    old = upload(storage, photo(100))
    pipeline.process(old)
    new = upload(storage, photo(200))
    detector.boxes = TWO[:1]

    assert pipeline.process(new).status == "ok"
    late = pipeline.process(old)

    assert storage.list_names(BUCKET, "processed/") == ["processed/cam1/a.jpg-output-0001.jpg"]  # crop 2 was stale
    assert storage.metadata(BUCKET, "processed/cam1/a.jpg-output-0001.jpg")["source-generation"] == str(new.generation)
    assert storage.metadata(BUCKET, MARKER)["source-generation"] == str(new.generation)
    assert (late.status, late.reason) == ("duplicate", f"superseded by generation {new.generation}")
    assert [row["source_generation"] for row in sink.tables["images"]] == [old.generation, new.generation]


def test_a_generation_superseded_while_detecting_takes_its_outputs_back_and_records_nothing() -> None:
    pipeline, storage, sink = make(ScriptedDetector(TWO))
    ref = upload(storage, photo())
    pipeline.detector.during = lambda: upload(storage, photo(200))  # type: ignore[attr-defined]

    outcome = pipeline.process(ref)

    assert outcome.status == "superseded"
    assert storage.list_names(BUCKET, "processed/") == []  # no crops, overview or marker stay
    assert storage.list_names(BUCKET, "processed-overview/") == []
    assert storage.metadata(BUCKET, MARKER) is None
    assert sink.tables == {"images": [], "objects": []}


def test_an_output_a_newer_generation_wrote_stays_and_an_older_ones_is_replaced() -> None:
    pipeline, storage, sink = make(ScriptedDetector(TWO))
    ref = upload(storage, photo())
    assert ref.generation is not None
    overview = OVERVIEW
    crop = "processed/cam1/a.jpg-output-0001.jpg"
    storage.write(
        BUCKET,
        crop,
        b"older",
        content_type="image/jpeg",
        metadata={"source-generation": str(ref.generation - 1), "source-uri": ref.uri},
    )
    storage.write(
        BUCKET,
        overview,
        b"newer",
        content_type="image/jpeg",
        metadata={"source-generation": str(ref.generation + 1000), "source-uri": ref.uri},
    )
    newer = storage.live_generation(BUCKET, overview)

    outcome = pipeline.process(ref)

    # The create of the overview failed its precondition and found a newer generation's: this
    # generation withdraws what it wrote and the newer overview is untouched.
    assert outcome.status == "superseded"
    assert storage.live_generation(BUCKET, overview) == newer
    assert storage.read(ObjectRef(BUCKET, overview), max_bytes=100) == b"newer"
    assert storage.list_names(BUCKET, "processed/") == []  # its crops taken back, the older crop replaced then removed
    assert sink.tables["images"] == []


def test_a_broken_image_gives_a_failed_row_and_a_failed_marker() -> None:
    pipeline, storage, sink = make(ScriptedDetector(TWO))
    ref = upload(storage, b"not an image at all")

    outcome = pipeline.process(ref)

    assert outcome.status == "failed"
    (image,) = sink.tables["images"]
    assert (image["status"], image["error_type"], image["detector"], image["model"]) == (
        "failed",
        "image_decode_error",
        "gemini",
        pipeline.config.gemini_model,
    )
    assert storage.metadata(BUCKET, MARKER)["status"] == "failed"
    assert pipeline.detector.calls == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("offline", [False, True])
def test_every_detector_has_the_protocols_close(offline: bool) -> None:
    from segmentation.gemini import GeminiDetector
    from segmentation.offline import OfflineDetector

    cls = OfflineDetector if offline else GeminiDetector
    assert callable(getattr(cls, "close", None))
    if offline:
        assert OfflineDetector().close() is None
