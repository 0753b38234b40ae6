"""Turn a Cloud Storage CloudEvent into an `ObjectRef`, or say why it is not ours to process.

Eventarc delivers `google.cloud.storage.object.v1.finalized` with the object resource as
data (https://cloud.google.com/storage/docs/json_api/v1/objects): numbers such as
`generation` and `size` arrive as strings.

>>> ref = object_ref_from_event(
...     {"type": FINALIZED},
...     {"bucket": "b", "name": "raw/cam1/a.jpg", "generation": "17", "contentType": "image/jpeg", "size": "9"},
... )
>>> ref.uri, ref.generation, ref.size
('gs://b/raw/cam1/a.jpg', 17, 9)
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping

from segmentation.config import Config
from segmentation.detections import ObjectRef

FINALIZED = "google.cloud.storage.object.v1.finalized"

# Extensions accepted when the uploader set no useful content type (application/octet-stream).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
_UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})


class EventError(ValueError):
    """The event cannot name an object: wrong shape or missing fields. Logged, never retried."""


def object_ref_from_event(attributes: Mapping[str, Any], data: Any) -> ObjectRef:
    """Build the `ObjectRef` an object-finalize event names; raise `EventError` if it names none."""
    event_type = attributes.get("type")
    if event_type != FINALIZED:
        raise EventError(f"event type {event_type!r} is not {FINALIZED}")
    if not isinstance(data, Mapping):
        raise EventError(f"event data is {type(data).__name__}, expected the object resource (JSON object)")
    bucket, name = data.get("bucket"), data.get("name")
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise EventError("event data lacks the object's bucket or name")
    return ObjectRef(
        bucket=bucket,
        name=name,
        generation=_optional_int(data.get("generation"), "generation"),
        content_type=data.get("contentType") if isinstance(data.get("contentType"), str) else None,
        size=_optional_int(data.get("size"), "size"),
    )


def skip_reason(ref: ObjectRef, config: Config) -> str | None:
    """Why the function should leave this object alone, or None if it is an image to process.

    >>> cfg = Config.from_env({})
    >>> skip_reason(ObjectRef("b", "processed/a-output-0001.jpg", 1, "image/jpeg", 5), cfg)
    'outside source prefix raw/'
    >>> skip_reason(ObjectRef("b", "raw/a.jpg", 1, "image/jpeg", 5), cfg) is None
    True
    """
    if not ref.name.startswith(config.source_prefix):
        return f"outside source prefix {config.source_prefix}"
    if ref.name.endswith("/"):
        return "folder placeholder"
    if ref.size == 0:
        return "zero-byte object"
    content_type = (ref.content_type or "").split(";")[0].strip().lower()
    if content_type.startswith("image/"):
        return None
    extension = posixpath.splitext(ref.name)[1].lower()
    if content_type in _UNTYPED and extension in IMAGE_EXTENSIONS:
        return None
    return f"not an image (content type {content_type or 'unset'})"


def _optional_int(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EventError(f"event field {field}={value!r} is not an integer") from None
