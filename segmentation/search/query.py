"""A lost-bag query as staff upload it under SEARCH_PREFIX, parsed into what to search for.

Three forms:
- a photo (any image the pipeline reads): search for that bag;
- a `.txt` file: its text is the description ("dark green hard-shell suitcase, yellow ribbon");
- a `.json` file: ``{"text": ..., "photo": "search/p.jpg" or "gs://bucket/p.jpg", "camera": "cam1",
  "since": "2h" or an ISO 8601 time, "until": ..., "color": "green", "top": 10,
  "include_offline": false}``; at least one of text and photo.

>>> query = parse_query_text('{"text": "red duffel", "camera": "cam2", "since": "90m"}', "json",
...                          now=dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC))
>>> query.text, query.filters.camera, query.filters.since.isoformat()
('red duffel', 'cam2', '2026-01-01T10:30:00+00:00')
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from segmentation.errors import PermanentError
from segmentation.search.store import Filters

# Longest description taken from a query, in characters.
MAX_TEXT_CHARS = 2000
# Most matches a query may ask for.
MAX_TOP = 100
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_KEYS = {"text", "photo", "camera", "since", "until", "color", "colour", "top", "include_offline"}


class BadQueryError(PermanentError):
    """The query object cannot be read as a query (empty, not UTF-8, bad JSON, bad filter)."""

    error_type = "bad_query"


@dataclass(frozen=True)
class Query:
    """What to search for: a description, a photo (a gs:// URI or an object name), or both."""

    text: str | None = None
    photo: str | None = None
    filters: Filters = field(default_factory=Filters)
    top: int | None = None

    @property
    def kind(self) -> str:
        return "photo" if self.photo else "text"


def parse_duration_or_time(value: str, *, now: dt.datetime) -> dt.datetime:
    """'2h' (that long before `now`; s, m, h, d, w) or an ISO 8601 time (UTC if no offset).

    >>> parse_duration_or_time("2026-03-01T08:00", now=dt.datetime.now(dt.UTC)).isoformat()
    '2026-03-01T08:00:00+00:00'
    """
    match = _DURATION.match(value)
    if match:
        return now - dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadQueryError(f"{value!r} is neither a duration such as 2h nor an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_query_text(body: str, form: str, *, now: dt.datetime) -> Query:
    """The query of a `.txt` (`form` "txt") or `.json` ("json") object's text."""
    if form == "txt":
        description = body.strip()
        if not description:
            raise BadQueryError("the description is empty")
        return Query(text=description[:MAX_TEXT_CHARS])
    try:
        spec = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadQueryError(f"not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise BadQueryError('a JSON query is an object such as {"text": "red suitcase"}')
    unknown = set(spec) - _KEYS
    if unknown:
        raise BadQueryError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    text = _optional_str(spec, "text")
    photo = _optional_str(spec, "photo")
    if not text and not photo:
        raise BadQueryError('a JSON query needs "text" or "photo"')
    top = spec.get("top")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP):
        raise BadQueryError(f"top must be a whole number from 1 to {MAX_TOP}")
    include_offline = spec.get("include_offline", False)
    if not isinstance(include_offline, bool):
        raise BadQueryError("include_offline must be true or false")
    filters = filters_from(
        camera=_optional_str(spec, "camera"),
        since=_optional_str(spec, "since"),
        until=_optional_str(spec, "until"),
        color=_optional_str(spec, "color") or _optional_str(spec, "colour"),
        include_offline=include_offline,
        now=now,
    )
    return Query(text=text[:MAX_TEXT_CHARS] if text else None, photo=photo, filters=filters, top=top)


def filters_from(
    *,
    camera: str | None = None,
    since: str | None = None,
    until: str | None = None,
    color: str | None = None,
    include_offline: bool = False,
    now: dt.datetime,
) -> Filters:
    """`Filters` from their text forms (the JSON query's and the command line's)."""
    filters = Filters(
        camera=camera or None,
        since=parse_duration_or_time(since, now=now) if since else None,
        until=parse_duration_or_time(until, now=now) if until else None,
        color=color.strip().lower() if color and color.strip() else None,
        include_offline=include_offline,
    )
    if filters.since and filters.until and filters.since > filters.until:
        raise BadQueryError("since is after until")
    return filters


def with_offline_default(query: Query, include_offline: bool) -> Query:
    """`query` with offline rows included when the deployment itself runs the offline detector."""
    if not include_offline or query.filters.include_offline:
        return query
    return dataclasses.replace(query, filters=dataclasses.replace(query.filters, include_offline=True))


def _optional_str(spec: dict[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadQueryError(f"{key} must be a string")
    return value.strip() or None
