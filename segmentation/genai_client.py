"""What every Gemini caller shares: the google-genai client, the retry loop and the error classes.

The detector (`segmentation.gemini`), the embedder (`segmentation.search.gemini_embed`) and the
re-ranker (`segmentation.search.rerank`) talk to the same backends, chosen by
`Config.resolved_backend`:

- ``vertex``: Vertex AI with Application Default Credentials (or the credentials passed in),
  project and location from the config;
- ``api-key``: the Gemini Developer API with ``GEMINI_API_KEY``.

Endpoints follow the SDK's own ``GOOGLE_VERTEX_BASE_URL`` / ``GOOGLE_GEMINI_BASE_URL``.

Retries are ours: the SDK makes one attempt per call, and `call_with_retries` repeats it through
`segmentation.retry.retry_call` until the caller's deadline, each request's timeout cut to the
time left. `classify` maps the SDK's exceptions to `TransientError` (429, 5xx, timeouts, network;
a 429's RetryInfo or Retry-After is honoured), `UnreadableAnswerError` (a 200 the SDK cannot
read), `ModelRequestError` (the request itself refused) or `DetectorNotConfiguredError`. No
message it builds holds the API key.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from google import genai
from google.auth import exceptions as auth_exceptions
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import ValidationError

from segmentation.errors import (
    DetectorNotConfiguredError,
    ModelRequestError,
    TransientError,
    UnreadableAnswerError,
)
from segmentation.logs import redact
from segmentation.retry import retry_call

if TYPE_CHECKING:
    import google.auth.credentials

    from segmentation.config import Config
    from segmentation.models import ModelSpec

T = TypeVar("T")

TRANSIENT_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})

# A request needs at least this long to have a chance; with less time left, none is started.
MIN_REQUEST_S = 0.05

# Per-part media resolution is documented for the Developer API's v1beta, but google-genai 3.x
# defaults that API to v1. GOOGLE_GENAI_API_VERSION, when set, still wins.
DEVELOPER_API_VERSION = "v1beta"

# Characters of an unreadable body quoted in the error (redacted), enough to tell an HTML page
# from gzip bytes or cut-off JSON.
_BODY_EXCERPT_CHARS = 120


def redactor(config: Config) -> Callable[[str], str]:
    """A function giving its text without the configured API key or anything shaped like a Google credential."""
    key = config.gemini_api_key

    def _redact(text: str) -> str:
        if key:
            text = text.replace(key, "***")
        return redact(text)

    return _redact


class LazyClient:
    """A google-genai client built on first use and shared by threads; `close` lets its
    connections go (the next `get` builds a new one)."""

    def __init__(self, build: Callable[[], genai.Client]):
        self._build = build
        self._client: genai.Client | None = None
        self._lock = threading.Lock()

    def get(self) -> genai.Client:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def thinking_config(spec: ModelSpec, config: Config) -> types.ThinkingConfig | None:
    """The thinking settings a `GEMINI_MODEL` call sends: the configured level where the model takes
    levels (the nearest it accepts), the budget where it takes budgets, else none."""
    level = spec.thinking_level(config.gemini_thinking_level)
    if level is not None:
        return types.ThinkingConfig(thinking_level=types.ThinkingLevel(level))
    if spec.thinking == "budget" and config.gemini_thinking_budget is not None:
        return types.ThinkingConfig(thinking_budget=config.gemini_thinking_budget)
    return None


def build_client(
    config: Config,
    *,
    credentials: google.auth.credentials.Credentials | None = None,
    timeout_s: float | None = None,
) -> genai.Client:
    """A google-genai client for the configured backend, SDK retries off; `DetectorNotConfiguredError`
    when the backend lacks its project or key, or nothing is configured."""
    # Our own retry loop owns retries; the SDK makes exactly one attempt per call.
    http_options = types.HttpOptions(
        timeout=milliseconds(timeout_s if timeout_s is not None else config.gemini_timeout_s),
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    backend = config.resolved_backend
    # `vertexai` is always passed explicitly: left as None, the SDK would read
    # GOOGLE_GENAI_USE_VERTEXAI and could pick the other backend's base URL variable.
    if backend == "vertex":
        if not config.project:
            raise DetectorNotConfiguredError(
                "GEMINI_BACKEND=vertex needs GOOGLE_CLOUD_PROJECT (and GOOGLE_CLOUD_LOCATION, default global)"
            )
        return _new_client(
            config,
            vertexai=True,
            project=config.project,
            location=config.location or "global",
            credentials=credentials,
            http_options=http_options,
        )
    if backend == "api-key":
        if not config.gemini_api_key:
            raise DetectorNotConfiguredError("GEMINI_BACKEND=api-key needs GEMINI_API_KEY (or GOOGLE_API_KEY)")
        if not os.environ.get("GOOGLE_GENAI_API_VERSION"):
            http_options.api_version = DEVELOPER_API_VERSION
        return _new_client(config, vertexai=False, api_key=config.gemini_api_key, http_options=http_options)
    raise DetectorNotConfiguredError(
        "Gemini is not configured: set GOOGLE_CLOUD_PROJECT (and GOOGLE_CLOUD_LOCATION) to use "
        "Vertex AI with Application Default Credentials, or GEMINI_API_KEY to use the Gemini "
        "Developer API"
    )


def _new_client(config: Config, **kwargs: Any) -> genai.Client:
    try:
        return genai.Client(**kwargs)
    except ValueError as exc:  # the SDK's word for unusable settings
        raise DetectorNotConfiguredError(redactor(config)(f"cannot set up the Gemini client: {exc}")) from None


def call_with_retries(
    request: Callable[[float], T],
    *,
    deadline: float,
    timeout_s: float,
    what: str,
    classify: Callable[[Exception], Exception],
    base_delay: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`request(timeout_s)` retried until it returns, fails for good, or `deadline` passes.

    Each attempt's timeout is `timeout_s` cut to the time left; with less than `MIN_REQUEST_S`
    left none is started and the last transient error's class is raised. Exceptions go through
    `classify`; a mapped one is raised without its cause (the SDK's exception holds the server's
    whole answer, which a misbehaving endpoint may fill with our request headers).
    """
    last_error: list[Exception] = []

    def attempt() -> T:
        remaining = deadline - time.monotonic()
        if remaining < MIN_REQUEST_S:
            last = last_error[-1] if last_error else None
            after = f" (last error: {last})" if last else ""
            # Keeps the last error's class, so an unreadable answer stays a suspect one.
            kind = type(last) if isinstance(last, TransientError) else TransientError
            raise kind(f"no time left before the deadline for a Gemini call{after}")
        try:
            return request(min(timeout_s, remaining))
        except Exception as exc:
            mapped = classify(exc)
            last_error.append(mapped)
            if mapped is exc:
                raise
            raise mapped from None

    return retry_call(attempt, deadline=deadline, what=what, base_delay=base_delay, sleep=sleep)


def classify(
    exc: Exception,
    *,
    redact: Callable[[str], str],
    request_error: Callable[[genai_errors.APIError, str], Exception] | None = None,
) -> Exception:
    """Map an SDK, HTTP or auth exception to our error classes (messages never hold the key).

    Unreadable answers become `UnreadableAnswerError`; HTTP errors, network and auth failures
    `TransientError` or a `PermanentError` by their kind. An HTTP error that is not transient goes
    to `request_error(exc, summary)` when given (the detector names retired models there), else
    becomes `ModelRequestError`. Anything else is returned as it is: the pipeline records it as
    `UnexpectedError`, with its stack trace, redacted.
    """
    if isinstance(exc, (TransientError, ModelRequestError, DetectorNotConfiguredError)):
        return exc
    unreadable = unreadable_answer(exc)
    if unreadable is not None:
        return UnreadableAnswerError(redact(unreadable)[:500])
    if isinstance(exc, genai_errors.APIError):
        summary = redact(f"Gemini answered HTTP {exc.code} {exc.status or ''}: {exc.message or ''}")[:500]
        if exc.code in TRANSIENT_HTTP_CODES:
            return TransientError(summary, retry_after=retry_delay(exc) if exc.code == 429 else None)
        return request_error(exc, summary) if request_error is not None else ModelRequestError(summary)
    if isinstance(exc, _UNUSABLE_ENDPOINT_ERRORS):
        return DetectorNotConfiguredError(
            redact(f"the Gemini endpoint is not usable: {type(exc).__name__}: {exc}")[:500]
        )
    if isinstance(exc, _TRANSIENT_TRANSPORT_ERRORS):
        return TransientError(redact(f"Gemini request failed: {type(exc).__name__}: {exc}")[:500])
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return DetectorNotConfiguredError(
            "no Application Default Credentials for Vertex AI: run "
            "`gcloud auth application-default login`, give the function a service account, "
            f"or set GEMINI_API_KEY ({redact(str(exc))[:200]})"
        )
    if isinstance(exc, auth_exceptions.TransportError) or (
        isinstance(exc, auth_exceptions.RefreshError) and getattr(exc, "retryable", False)
    ):
        return TransientError(redact(f"refreshing Google credentials failed: {exc}")[:500])
    if isinstance(exc, auth_exceptions.RefreshError):
        return ModelRequestError(redact(f"Google credentials were refused: {exc}")[:500])
    return exc


def unreadable_answer(exc: Exception) -> str | None:
    """What makes the answer unreadable, if `exc` says the SDK could not read a 200's body;
    else None. Never quotes more than a short excerpt of the body (redacted by the caller)."""
    if isinstance(exc, json.JSONDecodeError):
        excerpt = repr(exc.doc[:_BODY_EXCERPT_CHARS]) if isinstance(exc.doc, str) else "?"
        return f"Gemini answered with a body that is not JSON ({exc.msg} at char {exc.pos}): {excerpt}"
    if isinstance(exc, genai_errors.UnknownApiResponseError):
        return "Gemini answered with a body that is not JSON"
    if isinstance(exc, ValidationError) and exc.title.endswith("Response"):
        # Locations and kinds only: the error's input values are pieces of the body.
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return (
            f"Gemini answered with JSON the SDK's {exc.title} rejects ({exc.error_count()} error(s); "
            f"first at {where or 'the top'}: {first.get('msg', '')})"
        )
    if isinstance(exc, RecursionError):
        return "Gemini answered with JSON nested too deeply to read"
    if isinstance(exc, UnicodeDecodeError):
        return f"Gemini answered with a body that is not text: {exc.reason}"
    if isinstance(exc, _DECODING_ERRORS):
        return f"Gemini answered with a body that cannot be decoded: {type(exc).__name__}: {exc}"
    return None


def _transport_error_classes(*names: str) -> tuple[type[BaseException], ...]:
    """The SDK HTTP client's error classes named `names`: httpx2 by default, httpx if installed."""
    classes: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in names:
            cls = getattr(module, name, None)
            if cls is not None:
                classes.append(cls)
    return tuple(classes)


# A body whose Content-Encoding lies (gzip that isn't): the answer is unreadable.
_DECODING_ERRORS = _transport_error_classes("DecodingError")
# A base URL the client cannot use (GOOGLE_GEMINI_BASE_URL / GOOGLE_VERTEX_BASE_URL): a setting.
_UNUSABLE_ENDPOINT_ERRORS = _transport_error_classes("UnsupportedProtocol", "InvalidURL")
# Every other transport failure: timeouts, refused or reset connections, a connection closed
# mid-answer (RemoteProtocolError), proxy errors, redirect loops.
_TRANSIENT_TRANSPORT_ERRORS = _transport_error_classes("TransportError", "TooManyRedirects")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")


def retry_delay(exc: genai_errors.APIError) -> float | None:
    """Seconds from the google.rpc.RetryInfo detail ("retryDelay": "26s"), else Retry-After."""
    body = exc.details
    error = body.get("error", body) if isinstance(body, dict) else {}
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = _duration_seconds(detail.get("retryDelay"))
            if delay is not None:
                return delay
    headers = getattr(getattr(exc, "response", None), "headers", None)
    header = headers.get("retry-after") if headers is not None else None
    if header and header.strip().isdigit():
        return float(header.strip())
    return None


def _duration_seconds(value: Any) -> float | None:
    if isinstance(value, str):
        match = _DURATION.match(value)
        return float(match.group(1)) if match else None
    if isinstance(value, dict):  # the proto form {"seconds": 26, "nanos": 500000000}
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def milliseconds(seconds: float) -> int:
    return max(1, math.floor(seconds * 1000))
