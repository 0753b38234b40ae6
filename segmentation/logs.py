"""Structured JSON logging that Cloud Logging understands.

Cloud Run (and so Cloud Functions 2nd gen) parses each JSON line on stdout/stderr as a
structured log entry: `severity` and `message` are special fields, everything else lands in
`jsonPayload`. Locally the same lines are easy to grep or pipe into `jq`.

>>> log_event("INFO", "image processed", bucket="b", object="raw/a.jpg", objects_found=3)
{"severity": "INFO", "message": "image processed", "bucket": "b", "object": "raw/a.jpg", "objects_found": 3}
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

_SEVERITY_ORDER = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_lock = threading.Lock()
_state = {"min_level": 20}


def set_level(level: str) -> None:
    """Drop entries below `level` (DEBUG, INFO, WARNING, ERROR)."""
    _state["min_level"] = _SEVERITY_ORDER[level.upper()]


def log_event(severity: str, message: str, **fields: Any) -> None:
    """Write one JSON log line with `severity`, `message` and `fields` (None values are left out).

    Never pass credentials or image bytes: every field is written as given.
    """
    severity = severity.upper()
    if _SEVERITY_ORDER[severity] < _state["min_level"]:
        return
    entry = {"severity": severity, "message": message}
    entry.update({key: value for key, value in fields.items() if value is not None})
    line = json.dumps(entry, default=str, ensure_ascii=False)
    stream = sys.stderr if _SEVERITY_ORDER[severity] >= 40 else sys.stdout
    with _lock:
        stream.write(line + "\n")
        stream.flush()
