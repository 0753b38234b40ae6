"""The offline detector refuses what it cannot see: a frame that is not a belt scene it can analyse
becomes a failed row `unsupported_scene` (DETECTOR=offline), or leaves Gemini's failure standing
(OFFLINE_FALLBACK), never guessed detections.

The COCO photos (Flickr, licences and attribution in ../shared/fixtures/coco_luggage/image_manifest.tsv)
are split by position in id order; the check was tuned on the even positions, these tests use the odd
(held-out) ones, like the held-out split of the synthetic scenes.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from devtools.standins.gemini_server import Answer, sample_text, unavailable
from segmentation.errors import PermanentError, UnsupportedSceneError
from segmentation.images import model_input
from segmentation.offline import OfflineDetector
from tests.fixtures import shared_fixture
from tests.harness import ROOT, Stack, running_stack
from tools.belt_scenes import make_scene

HELDOUT = "heldout"
# Held-out half of the COCO photos (odd positions in id order): a street with a backpack, and
# people at a table with handbags.
COCO_HELDOUT = ("000000261888.jpg", "000000319492.jpg")


def coco_photo(name: str) -> bytes:
    return shared_fixture("coco_luggage", "images", name).read_bytes()


def detect(detector: OfflineDetector, image: Image.Image):
    return detector.detect(model_input(image, max_side=1920), image.size, deadline=time.monotonic() + 60)


# --- the detector -------------------------------------------------------------------------------


def test_unsupported_scene_is_a_permanent_error_type():
    assert issubclass(UnsupportedSceneError, PermanentError)
    assert UnsupportedSceneError.error_type == "unsupported_scene"


@pytest.mark.parametrize("name", COCO_HELDOUT)
def test_a_held_out_coco_photo_is_refused_saying_what_was_measured(name):
    photo = Image.open(io.BytesIO(coco_photo(name))).convert("RGB")
    assert len(OfflineDetector().detect_scored(photo)) > 5  # what it would guess (evaluation still scores it)

    with pytest.raises(UnsupportedSceneError) as refused:
        detect(OfflineDetector(), photo)

    message = str(refused.value)
    assert "no belt model fits it" in message or "too much clutter" in message
    assert "plain conveyor belts and baggage carousels seen by a fixed camera" in message
    assert "backgrounds/" in message


@pytest.mark.parametrize(
    "index, overrides",
    [
        (0, dict(kind="belt", count=8, salt="crowded")),
        (1, dict(kind="belt", count=8, salt="crowded")),
        (2, dict(kind="belt", count=8, salt="crowded")),
        (0, dict(kind="belt", count=0, salt="empty")),
        (1, dict(kind="belt", count=0, salt="empty")),
        (3, dict(kind="belt", count=3)),
        (0, dict(kind="carousel", salt="carousel")),
        (1, dict(kind="carousel", count=8, salt="crowded")),
        (2, dict(kind="carousel", count=0, salt="empty")),
    ],
    ids=[
        "crowded-0",
        "crowded-1",
        "crowded-2",
        "empty-0",
        "empty-1",
        "belt-3",
        "carousel",
        "carousel-crowded",
        "carousel-empty",
    ],
)
def test_held_out_belt_scenes_are_not_refused_where_a_photo_is(index, overrides):
    """Crowded, empty and plain belts, and carousels with their reference: analysed. The same
    detector (the same reference, for a carousel) refuses a held-out COCO photo."""
    scene = make_scene(HELDOUT, index, **overrides)
    detector = OfflineDetector(background=scene.background)
    result = detect(detector, scene.image)  # no UnsupportedSceneError
    if scene.items:
        assert result.detections

    photo = Image.open(io.BytesIO(coco_photo(COCO_HELDOUT[index % 2]))).convert("RGB")
    with pytest.raises(UnsupportedSceneError):
        detect(detector, photo)


# --- through the function ----------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Iterator[Stack]:
    with running_stack(tmp_path / "results.sqlite", monkeypatch) as running:
        yield running


def test_with_detector_offline_a_coco_photo_is_a_failed_row_unsupported_scene(stack, monkeypatch):
    monkeypatch.setenv("DETECTOR", "offline")
    photo = stack.upload("raw/cam1/coco.jpg", coco_photo(COCO_HELDOUT[0]), "image/jpeg")
    belt = stack.upload("raw/cam1/belt.jpg", (ROOT / "samples" / "belt-02.jpg").read_bytes(), "image/jpeg")

    assert stack.deliver(stack.event_for(photo)).status_code == 200
    assert stack.deliver(stack.event_for(belt)).status_code == 200

    rows = {row["source_name"]: row for row in stack.rows("images")}
    failed = rows["raw/cam1/coco.jpg"]
    assert (failed["status"], failed["error_type"], failed["objects_found"]) == ("failed", "unsupported_scene", 0)
    assert failed["detector"] == "offline"
    assert "fixed camera" in failed["error_message"]
    assert {row["source_name"] for row in stack.rows("objects")} == {"raw/cam1/belt.jpg"}
    assert not [name for name in stack.names("processed") if "coco" in name and "markers" not in name]
    assert rows["raw/cam1/belt.jpg"]["status"] == "ok"  # a belt scene is still analysed
    assert stack.gemini.requests == []


def test_with_gemini_failing_a_refused_fallback_leaves_the_event_to_be_redelivered(stack, monkeypatch, capsys):
    monkeypatch.setenv("RETRY_DEADLINE_S", "1.5")
    monkeypatch.setenv("OFFLINE_FALLBACK", "true")
    stack.gemini.reset(lambda request: unavailable())
    photo = stack.upload("raw/cam1/coco.jpg", coco_photo(COCO_HELDOUT[1]), "image/jpeg")
    event = stack.event_for(photo)

    assert stack.deliver(event).status_code == 500  # Eventarc redelivers

    assert stack.rows("images") == [] and stack.rows("objects") == []
    assert stack.names("processed/") == [] and stack.names("processed-overview/") == []
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    refused = [line for line in lines if line["message"].startswith("the offline fallback refused the scene")]
    assert len(refused) == 1 and refused[0]["severity"] == "WARNING"
    assert "cannot analyse this image" in refused[0]["refused"]

    # Gemini back: the redelivery is answered by the model, nothing was lost.
    stack.gemini.reset(lambda request: Answer(sample_text(1)))
    assert stack.deliver(event).status_code == 200
    (row,) = stack.rows("images")
    assert (row["status"], row["detector"], row["fallback_reason"]) == ("ok", "gemini", None)


def test_without_gemini_credentials_a_refused_fallback_fails_as_not_configured(stack, monkeypatch):
    """The fallback could not help, so the image fails as it would without it (and is redone with
    `replay --redo failed` once Gemini is configured), not as a scene the model could not see."""
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("OFFLINE_FALLBACK", "true")
    photo = stack.upload("raw/cam1/coco.jpg", coco_photo(COCO_HELDOUT[0]), "image/jpeg")

    assert stack.deliver(stack.event_for(photo)).status_code == 200

    (row,) = stack.rows("images")
    assert (row["status"], row["error_type"]) == ("failed", "detector_not_configured")
    assert stack.rows("objects") == [] and stack.names("processed/") == [] and stack.names("processed-overview/") == []
