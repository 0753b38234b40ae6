"""Structured JSON logging that Cloud Logging understands.

Cloud Run (and so Cloud Functions 2nd gen) parses each JSON line on stdout/stderr as a
structured log entry: `severity` and `message` are special fields, everything else lands in
`jsonPayload`. Locally the same lines are easy to grep or pipe into `jq`.

Every line is redacted before it is written (`redact`): the message and every field value,
stack traces included, lose API keys (``key=...`` query parameters, ``x-goog-api-key``),
``Authorization`` values, bearer and OAuth access tokens, and any value registered with
`add_secret` (the configured Gemini API key), wherever an error message echoed them.

>>> log_event("INFO", "image processed", bucket="b", object="raw/a.jpg", objects_found=3)
{"severity": "INFO", "message": "image processed", "bucket": "b", "object": "raw/a.jpg", "objects_found": 3}
"""

from __future__ import annotations

import json
import re
import sys
import threading
from typing import Any

_SEVERITY_ORDER = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_lock = threading.Lock()
_state: dict[str, Any] = {"min_level": 20, "secrets": ()}
# A registered secret shorter than this would blank out ordinary words; such values are left
# to the patterns below.
_MIN_SECRET_CHARS = 8

_CREDENTIAL_NAMES = (
    r"authorization|proxy-authorization|x-goog-api-key|x-api-key|api[_-]?key|access[_-]?token"
    r"|refresh[_-]?token|id[_-]?token|client[_-]?secret|password|cookie|set-cookie"
)
_REDACTIONS = (
    # A named credential with its value: `Authorization: Bearer ...`, `"x-goog-api-key": "..."`,
    # `access_token=...`, also inside a repr or JSON text (quotes optionally backslash-escaped).
    (
        re.compile(rf"(?i)\b({_CREDENTIAL_NAMES})(\\?[\"']?\s*[:=]\s*\\?[\"']?)(?:bearer\s+)?[^\s\"'\\&,;}}\]<>]+"),
        r"\1\2***",
    ),
    # `key=...` (and signed-URL signatures) as query parameters.
    (re.compile(r"(?i)(?<![\w-])(key|sig|signature|x-goog-signature|token)=[^\s\"'\\&,;#<>]+"), r"\1=***"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer ***"),
    (re.compile(r"ya29\.[A-Za-z0-9._-]+|AIza[0-9A-Za-z_-]{35}"), "***"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S), "***"),
)


def set_level(level: str) -> None:
    """Drop entries below `level` (DEBUG, INFO, WARNING, ERROR)."""
    _state["min_level"] = _SEVERITY_ORDER[level.upper()]


def add_secret(value: str | None) -> None:
    """Redact `value` from every later log line (and from `redact`'s results)."""
    if value and len(value) >= _MIN_SECRET_CHARS:
        with _lock:
            if value not in _state["secrets"]:
                _state["secrets"] = (*_state["secrets"], value)


def redact(text: str) -> str:
    """`text` without anything shaped like a credential, nor any value given to `add_secret`.

    >>> redact("GET https://x/v1/m?alt=json&key=AbC123 failed; Authorization: Bearer ya29.tok")
    'GET https://x/v1/m?alt=json&key=*** failed; Authorization: ***'
    """
    for secret in _state["secrets"]:
        text = text.replace(secret, "***")
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _scrubbed(value: Any) -> Any:
    """`value` with every string in it redacted; other JSON values kept, the rest as redacted text."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(key): _scrubbed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(item) for item in value]
    return redact(str(value))


def log_event(severity: str, message: str, **fields: Any) -> None:
    """Write one JSON log line with `severity`, `message` and `fields` (None values are left out).

    The message and every field value are redacted (`redact`); still, never pass image bytes.
    """
    severity = severity.upper()
    if _SEVERITY_ORDER[severity] < _state["min_level"]:
        return
    entry = {"severity": severity, "message": redact(message)}
    entry.update({key: _scrubbed(value) for key, value in fields.items() if value is not None})
    line = json.dumps(entry, ensure_ascii=False)
    stream = sys.stderr if _SEVERITY_ORDER[severity] >= 40 else sys.stdout
    with _lock:
        stream.write(line + "\n")
        stream.flush()
