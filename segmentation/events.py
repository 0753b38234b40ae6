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

import datetime as dt
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from segmentation.config import Config
from segmentation.detections import ObjectRef

FINALIZED = "google.cloud.storage.object.v1.finalized"

# Extensions accepted when the uploader set no useful content type (application/octet-stream).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif", ".hif", ".avif"}
)
_UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# Lost-bag search queries that are descriptions rather than photos.
QUERY_EXTENSIONS = frozenset({".txt", ".json"})

# What Cloud Storage allows in a bucket name (lower-case letters, digits, "-", "_", ".", starting
# and ending with a letter or digit, at most 222 characters). The client library puts the bucket
# name into request URLs unescaped, so anything else ("/", "?", "&", "%") could re-aim requests.
_BUCKET_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,220}[a-z0-9])?")
# Cloud Storage object names: 1-1024 bytes of UTF-8, no CR or LF, not "." or "..".
_MAX_OBJECT_NAME_BYTES = 1024
_DECIMAL = re.compile(r"[0-9]+")


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
    if not _BUCKET_NAME.fullmatch(bucket):
        raise EventError(f"event bucket {bucket[:100]!r} is not a Cloud Storage bucket name")
    problem = _object_name_problem(name)
    if problem:
        raise EventError(f"event object name {name[:100]!r} is not a Cloud Storage object name: {problem}")
    return ObjectRef(
        bucket=bucket,
        name=name,
        generation=_optional_int(data.get("generation"), "generation"),
        content_type=data.get("contentType") if isinstance(data.get("contentType"), str) else None,
        size=_optional_int(data.get("size"), "size"),
        created=_optional_time(data.get("timeCreated")),
    )


def _optional_time(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp; None if absent or unreadable (the age of an event
    only decides when to stop redelivering it, so a bad one must not refuse the event).

    >>> _optional_time("2026-12-04T10:00:00.123Z"), _optional_time("yesterday")
    (1796378400.123, None)
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def skip_reason(ref: ObjectRef, config: Config) -> str | None:
    """Why the function should leave this object alone, or None if it is an image to process.

    >>> cfg = Config.from_env({})
    >>> skip_reason(ObjectRef("b", "processed/a-output-0001.jpg", 1, "image/jpeg", 5), cfg)
    'outside source prefix raw/'
    >>> skip_reason(ObjectRef("b", "raw/a.jpg", 1, "image/jpeg", 5), cfg) is None
    True
    """
    if config.output_bucket and ref.bucket == config.output_bucket:
        return "in the outputs bucket (OUTPUT_BUCKET)"  # a trigger wired to it: never our input
    return skip_reason_for_prefix(ref, config.source_prefix)


def skip_reason_for_prefix(ref: ObjectRef, prefix: str, *, queries: bool = False) -> str | None:
    """Why an object is not an input under `prefix`: an image, or with `queries` also a
    `.txt` / `.json` query (lost-bag search), else None.

    >>> skip_reason_for_prefix(ObjectRef("b", "search/a.txt", 1, "text/plain", 5), "search/", queries=True) is None
    True
    """
    if not ref.name.startswith(prefix):
        return f"outside source prefix {prefix}"
    if ref.name.endswith("/"):
        return "folder placeholder"
    if ref.size == 0:
        return "zero-byte object"
    content_type = (ref.content_type or "").split(";")[0].strip().lower()
    extension = posixpath.splitext(ref.name)[1].lower()
    if queries and extension in QUERY_EXTENSIONS:
        return None
    if content_type.startswith("image/"):
        return None
    if content_type in _UNTYPED and extension in IMAGE_EXTENSIONS:
        return None
    expected = "an image, .txt or .json" if queries else "an image"
    return f"not {expected} (content type {content_type or 'unset'})"


def _object_name_problem(name: str) -> str | None:
    if name in (".", ".."):
        return "it is . or .."
    if "\r" in name or "\n" in name:
        return "it contains a carriage return or line feed"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if size > _MAX_OBJECT_NAME_BYTES:
        return f"it is {size} bytes, more than {_MAX_OBJECT_NAME_BYTES}"
    return None


def _optional_int(value: Any, field: str) -> int | None:
    """A non-negative integer field (the JSON API sends them as decimal strings), or None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        try:
            return int(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            pass
    raise EventError(f"event field {field}={str(value)[:40]!r} is not a non-negative integer")
