"""Event parsing and the decision of what to process."""

import pytest

from segmentation.config import Config
from segmentation.detections import ObjectRef
from segmentation.events import FINALIZED, EventError, object_ref_from_event, skip_reason

CONFIG = Config.from_env({})


def test_object_resource_fields_are_read_and_numbers_converted():
    ref = object_ref_from_event(
        {"type": FINALIZED, "id": "1"},
        {
            "bucket": "b",
            "name": "raw/x y/ü.png",
            "generation": "1700000000000001",
            "contentType": "image/png",
            "size": "1234",
            "metageneration": "1",
        },
    )
    assert ref == ObjectRef("b", "raw/x y/ü.png", 1700000000000001, "image/png", 1234)


@pytest.mark.parametrize(
    "attributes, data, message",
    [
        ({"type": "google.cloud.storage.object.v1.deleted"}, {"bucket": "b", "name": "raw/a.jpg"}, "not"),
        ({}, {"bucket": "b", "name": "raw/a.jpg"}, "event type None"),
        ({"type": FINALIZED}, "raw/a.jpg", "expected the object resource"),
        ({"type": FINALIZED}, None, "expected the object resource"),
        ({"type": FINALIZED}, {"name": "raw/a.jpg"}, "bucket or name"),
        ({"type": FINALIZED}, {"bucket": "b", "name": ""}, "bucket or name"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/a.jpg", "generation": "abc"}, "generation"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/a.jpg", "size": [1]}, "size"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/a.jpg", "size": "-1"}, "size"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/a.jpg", "generation": 1.5}, "generation"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/a.jpg", "generation": True}, "generation"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/a.jpg", "generation": "9" * 5000}, "generation"),
        ({"type": FINALIZED}, {"bucket": "b/o?name=raw%2Fx&z=z", "name": "raw/a.jpg"}, "bucket name"),
        ({"type": FINALIZED}, {"bucket": "Upper", "name": "raw/a.jpg"}, "bucket name"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/a\nb.jpg"}, "line feed"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/" + "a" * 1021}, "1025 bytes"),
        ({"type": FINALIZED}, {"bucket": "b", "name": "raw/\ud800.jpg"}, "UTF-8"),
        ({"type": FINALIZED}, {"bucket": "b", "name": ".."}, "is . or .."),
    ],
)
def test_wrong_events_raise_event_error(attributes, data, message):
    with pytest.raises(EventError, match=message):
        object_ref_from_event(attributes, data)


@pytest.mark.parametrize(
    "name, content_type, size, expected",
    [
        ("raw/cam1/a.jpg", "image/jpeg", 10, None),
        ("raw/a.webp", "image/webp", 10, None),
        ("raw/a.jpg", "application/octet-stream", 10, None),
        ("raw/a.JPEG", None, 10, None),
        ("processed/a-output-0001.jpg", "image/jpeg", 10, "outside source prefix raw/"),
        ("processed-overview/processed_a.jpg", "image/jpeg", 10, "outside source prefix raw/"),
        ("processed-markers/a.jpg.json", "application/json", 10, "outside source prefix raw/"),
        ("raw/cam1/", "application/x-www-form-urlencoded;charset=UTF-8", 0, "folder placeholder"),
        ("raw/a.jpg", "image/jpeg", 0, "zero-byte object"),
        ("raw/notes.txt", "text/plain", 10, "not an image (content type text/plain)"),
        ("raw/a.jpg", "text/plain", 10, "not an image (content type text/plain)"),
        ("raw/blob", "application/octet-stream", 10, "not an image (content type application/octet-stream)"),
    ],
)
def test_skip_reason(name, content_type, size, expected):
    assert skip_reason(ObjectRef("b", name, 1, content_type, size), CONFIG) == expected
