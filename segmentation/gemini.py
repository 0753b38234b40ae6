"""The Gemini detector: one image in, object boxes out, through the google-genai SDK.

Both of Google's front doors are supported, chosen by `Config.resolved_backend`:

- ``vertex`` (production): Vertex AI with Application Default Credentials, or the
  `credentials` passed in; the project and location come from the config.
- ``api-key`` (local development): the Gemini Developer API with ``GEMINI_API_KEY``.

Why the defaults are what they are (Google's guidance for object detection):

- Model ``gemini-3.5-flash``: the long-term GA Flash model on Vertex AI.
  ``gemini-2.5-flash`` was retired on Vertex AI on 2026-10-20.
- No thinking. Google advises turning thinking off for detection: it adds latency and cost
  and doesn't make boxes better. What each model takes comes from `segmentation.models`:
  3.x and later take ``thinking_level`` (``minimal`` by default, or the nearest level the model
  accepts: LOW on 3.7/3.8), 2.x take ``thinking_budget`` (0 = off). A request never carries
  both, and models outside the table get neither.
- No temperature for 3.x. Google advises keeping 3.x at its default of 1.0, because lower
  values can make it loop. Set ``GEMINI_TEMPERATURE`` only on purpose (the 2.x spatial
  examples used 0.5); models that ignore it (3.6 and later) never get it.
- ``MEDIA_RESOLUTION_HIGH`` (1120 tokens per image on 3.x): small objects need the detail.
  3.x models get it on the image part (per-part media resolution is a Gemini 3 feature); other
  models get it in the request config.
- JSON mode with a response schema, so the answer is a bare array of
  ``{box_2d, label, color, general_description, detailed_description}`` with ``box_2d`` first.
  Models still sometimes add fences or get cut off, and `segmentation.parse` copes with that.

Retries are ours, not the SDK's: SDK retries are off, and each call goes through
`segmentation.retry.retry_call` until the caller's `deadline` (`segmentation.genai_client`, which
the embedder and the re-ranker share). Each request's timeout is
``GEMINI_TIMEOUT_S``, cut to the time left, so no request can outlive the deadline.
A 200 the SDK cannot read (not JSON, gzip without its header, JSON its types reject) is
`UnreadableAnswerError`, retried like a 5xx. An answer that can't be parsed, or lists objects
without a usable box, is asked for once more, then gives `ResponseParseError` (or its
`NoUsableBoxesError` / `BoxScaleError`).

Endpoints follow the SDK's own environment variables ``GOOGLE_VERTEX_BASE_URL`` and
``GOOGLE_GEMINI_BASE_URL``. Tests point these at `devtools.standins.gemini_server`.

Example (needs credentials, or GOOGLE_GEMINI_BASE_URL pointing at a server)::

    detector = GeminiDetector(Config.from_env())
    result = detector.detect(model_input, (4000, 3000), deadline=time.monotonic() + 120)
    [(d.label, d.box.as_tuple()) for d in result.detections]
    # [('black suitcase', (812, 1204, 1630, 2288)), ('red backpack', (2410, 1502, 2871, 2160))]
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from segmentation.config import Config
from segmentation.detections import DetectionResult, Usage
from segmentation.errors import (
    ModelRequestError,
    ModelRetiredError,
    NoUsableBoxesError,
    ResponseParseError,
    UnreadableAnswerError,
)
from segmentation.genai_client import (
    LazyClient,
    build_client,
    call_with_retries,
    classify,
    milliseconds,
    thinking_config,
)
from segmentation.logs import add_secret, log_event, redact
from segmentation.models import capabilities, location_problem, retirement_error, startup_problems
from segmentation.parse import ParsedResponse, parse_response, refuse_unusable_boxes

if TYPE_CHECKING:
    import google.auth.credentials

    from segmentation.images import ModelInput

# First backoff step between attempts (grows exponentially, with jitter; a server-given
# retryDelay is waited at least). Google's retry guidance for 429/5xx starts at about 1 s.
RETRY_BASE_DELAY_S = 1.0

# Answers a blocked or failed generation ends with: their text, if any, is not a detection list.
_FAILED_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "MALFORMED_FUNCTION_CALL",
        "MALFORMED_RESPONSE",
        "UNEXPECTED_TOOL_CALL",
        "OTHER",
    }
)

REASK_INSTRUCTION = (
    "Your previous answer was not a valid JSON list. Answer again with only the JSON array "
    "described in the system instruction: no code fences, no other text."
)
# The re-ask after an answer whose objects had no usable box (NaN, nested arrays, a 0-1 scale).
BOX_REASK_INSTRUCTION = (
    "Your previous answer had no usable box_2d. Answer again with only the JSON array described "
    "in the system instruction; every box_2d is four integers [ymin, xmin, ymax, xmax] from 0 "
    "to 1000."
)

_FIELD_ORDER = ["box_2d", "label", "color", "general_description", "detailed_description"]


def response_json_schema(max_objects: int) -> dict[str, Any]:
    """The JSON Schema of the answer: an array of at most `max_objects` objects, `box_2d` first."""
    text = {"type": "string"}
    return {
        "type": "array",
        "maxItems": max_objects,
        "items": {
            "type": "object",
            "properties": {
                "box_2d": {
                    "type": "array",
                    "description": "[ymin, xmin, ymax, xmax] normalized to 0-1000",
                    "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "minItems": 4,
                    "maxItems": 4,
                },
                "label": text,
                "color": text,
                "general_description": text,
                "detailed_description": text,
            },
            "required": list(_FIELD_ORDER),
            "propertyOrdering": list(_FIELD_ORDER),
        },
    }


def model_family(model: str) -> str:
    """The model's generation: "3", "2", or "" for others (requests follow `segmentation.models`).

    >>> model_family("gemini-3.5-flash"), model_family("publishers/google/models/gemini-2.5-flash")
    ('3', '2')
    >>> model_family("gemma-3-27b-it")
    ''
    """
    model_id = model.rsplit("/", 1)[-1]
    for family in ("3", "2"):
        if model_id.startswith(f"gemini-{family}"):
            return family
    return ""


class GeminiDetector:
    """Finds objects with Gemini. Safe to share between threads; the SDK client is built once.

    `credentials` is used in Vertex mode only (None: Application Default Credentials).
    A missing backend is reported by the first `detect()` as `DetectorNotConfiguredError`.
    """

    name = "gemini"

    def __init__(
        self,
        config: Config,
        *,
        credentials: google.auth.credentials.Credentials | None = None,
        today: Callable[[], dt.date] | None = None,
    ):
        self._config = config
        self._credentials = credentials
        add_secret(config.gemini_api_key)  # no log line may print it, whatever echoes it
        self._client = LazyClient(self._build_client)
        self._today = today or _utc_today
        self._spec = capabilities(config.gemini_model, config.resolved_backend)
        if config.detector != "offline":
            self._warn_about_the_model()

    def _warn_about_the_model(self) -> None:
        """One WARNING at start-up when the model is unknown, retired or retiring within 60 days,
        not served from the configured location, or configured with a parameter it ignores."""
        config = self._config
        problems = startup_problems(config.gemini_model, config.resolved_backend, config.location, self._today())
        if config.gemini_temperature is not None and not self._spec.temperature:
            problems.append(
                f"GEMINI_TEMPERATURE={config.gemini_temperature} is not sent: "
                f"{config.gemini_model} (table row {self._spec.family or 'unknown'}) ignores "
                "temperature; unset it"
            )
        if problems:
            log_event(
                "WARNING",
                "Gemini model settings need attention: " + "; ".join(problems),
                model=config.gemini_model,
                location=config.location,
                backend=config.resolved_backend,
            )

    def detect(self, model_input: ModelInput, image_size: tuple[int, int], *, deadline: float) -> DetectionResult:
        """Detect objects in `model_input`; boxes come back in pixels of `image_size` (the original).

        `deadline` is a `time.monotonic()` instant. Raises `TransientError` when it passes
        while Gemini keeps failing transiently, `ModelRequestError` when Gemini rejects the
        request, and `ResponseParseError` (or its subclasses `NoUsableBoxesError`,
        `BoxScaleError`) when two answers in a row are unusable. `UnreadableAnswerError` is a
        `TransientError`: answers the SDK could not read kept coming until the deadline.
        """
        client = self._client.get()
        calls = _CallLog()
        image_part = self._image_part(model_input)
        contents: list[Any] = [image_part, self._config.gemini_prompt]

        response = self._generate(client, contents, deadline, calls)
        try:
            parsed = self._parse(response, image_size)
        except ResponseParseError as first_error:
            log_event(
                "WARNING",
                "Gemini answer unusable; asking once more",
                model=self._config.gemini_model,
                error=str(first_error)[:300],
                error_type=first_error.error_type,
            )
            instruction = BOX_REASK_INSTRUCTION if isinstance(first_error, NoUsableBoxesError) else REASK_INSTRUCTION
            response = self._generate(client, [*contents, instruction], deadline, calls)
            try:
                parsed = self._parse(response, image_size)
            except ResponseParseError as second_error:
                # The second answer's kind of failure names the image's error_type.
                raise type(second_error)(
                    f"both Gemini answers were unusable: first: {first_error}; after asking again: {second_error}"
                ) from second_error

        if parsed.notes:
            log_event("INFO", "Gemini answer repaired while parsing", notes=list(parsed.notes))
        return DetectionResult(
            detections=parsed.detections,
            detector=self.name,
            model=response.model_version or self._config.gemini_model,
            partial=parsed.partial,
            usage=calls.usage(),
            latency_ms=calls.latency_ms,
        )

    def close(self) -> None:
        """Release the HTTP connections (the detector rebuilds its client if used again)."""
        self._client.close()

    # -- the request ----------------------------------------------------------------------

    def _build_client(self) -> genai.Client:
        return build_client(self._config, credentials=self._credentials, timeout_s=self._config.gemini_timeout_s)

    def _image_part(self, model_input: ModelInput) -> types.Part:
        resolution = self._config.gemini_media_resolution
        per_part = resolution and self._spec.per_part_media
        return types.Part.from_bytes(
            data=model_input.data,
            mime_type=model_input.mime_type,
            media_resolution=_part_resolution(resolution) if per_part else None,
        )

    def _generation_config(self, request_timeout_s: float) -> types.GenerateContentConfig:
        config = self._config
        spec = self._spec
        thinking = thinking_config(spec, config)
        request_resolution = None
        if config.gemini_media_resolution and not spec.per_part_media:
            request_resolution = types.MediaResolution(f"MEDIA_RESOLUTION_{config.gemini_media_resolution.upper()}")
        return types.GenerateContentConfig(
            system_instruction=config.gemini_system_instruction.replace(
                "{max_objects}", str(config.gemini_max_objects)
            ),
            temperature=config.gemini_temperature if spec.temperature else None,
            max_output_tokens=config.gemini_max_output_tokens,
            response_mime_type="application/json",
            response_json_schema=response_json_schema(config.gemini_max_objects),
            thinking_config=thinking,
            media_resolution=request_resolution,
            # One HTTP request per call: automatic continuation would send follow-up requests
            # that our deadline and timeout cap don't see. A CONTINUATION answer counts as cut off.
            automatic_continuation=False,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            http_options=types.HttpOptions(timeout=milliseconds(request_timeout_s)),
        )

    def _generate(
        self,
        client: genai.Client,
        contents: list[Any],
        deadline: float,
        calls: _CallLog,
    ) -> types.GenerateContentResponse:
        def request(timeout_s: float) -> types.GenerateContentResponse:
            response = client.models.generate_content(
                model=self._config.gemini_model,
                contents=contents,
                config=self._generation_config(timeout_s),
            )
            _check_readable(response)
            return response

        started = time.monotonic()
        try:
            response = call_with_retries(
                request,
                deadline=deadline,
                timeout_s=self._config.gemini_timeout_s,
                what="Gemini generateContent",
                classify=self._classify,
                base_delay=RETRY_BASE_DELAY_S,
            )
        finally:
            calls.latency_ms += (time.monotonic() - started) * 1000
        calls.responses.append(response)
        return response

    # -- the answer -----------------------------------------------------------------------

    def _parse(self, response: types.GenerateContentResponse, image_size: tuple[int, int]) -> ParsedResponse:
        candidate = response.candidates[0] if response.candidates else None
        finish = _finish_reason(candidate)
        if candidate is None:
            block = getattr(response.prompt_feedback, "block_reason", None) if response.prompt_feedback else None
            reason = f"the prompt was blocked ({_enum_name(block)})" if block else "the answer has no candidates"
            raise ResponseParseError(f"Gemini gave no answer: {reason}")
        if finish in _FAILED_FINISH_REASONS:
            raise ResponseParseError(f"Gemini stopped with finish reason {finish}")
        text = response.text
        if text is None:
            raise ResponseParseError(f"Gemini's answer has no text (finish reason {finish or 'unknown'})")
        return refuse_unusable_boxes(
            parse_response(
                text,
                image_size,
                max_objects=self._config.gemini_max_objects,
                truncated=finish in ("MAX_TOKENS", "CONTINUATION"),
                point_order=self._spec.polygon_order,
            )
        )

    # -- errors ---------------------------------------------------------------------------

    def _classify(self, exc: Exception) -> Exception:
        """Map an SDK, HTTP or auth exception to our error classes (`segmentation.genai_client.classify`);
        a refused request names a retired model, or a location the model is not served from."""
        return classify(exc, redact=self._redact, request_error=self._request_error)

    def _request_error(self, exc: genai_errors.APIError, summary: str) -> ModelRequestError:
        config = self._config
        if exc.code in (400, 404) and self._spec.retired(self._today()):
            return ModelRetiredError(f"{retirement_error(config.gemini_model, self._spec)} ({summary})"[:700])
        if config.resolved_backend == "vertex" and not self._spec.serves(config.location):
            return ModelRequestError(
                f"{location_problem(config.gemini_model, config.location, self._spec)} ({summary})"[:800]
            )
        return ModelRequestError(summary)

    def _redact(self, text: str) -> str:
        """`text` without the API key or anything shaped like a Google credential."""
        key = self._config.gemini_api_key
        if key:
            text = text.replace(key, "***")
        return redact(text)


class _CallLog:
    """What the calls for one image cost: their responses and the wall time spent in them."""

    def __init__(self) -> None:
        self.responses: list[types.GenerateContentResponse] = []
        self.latency_ms = 0.0

    def usage(self) -> Usage:
        totals = [0, 0, 0, 0]
        for response in self.responses:
            meta = response.usage_metadata
            if meta is None:
                continue
            counts = (
                meta.prompt_token_count,
                meta.candidates_token_count,
                meta.thoughts_token_count,
                meta.total_token_count,
            )
            totals = [total + (count or 0) for total, count in zip(totals, counts, strict=True)]
        return Usage(*totals)


def _check_readable(response: types.GenerateContentResponse) -> None:
    """Raise `UnreadableAnswerError` for a 200 that the SDK turned into an empty response: JSON
    without candidates or prompt feedback (``[]``, ``null``, ``{}``), or candidates with no field
    at all (the Developer API's converter makes one per character of a ``candidates`` string)."""
    if response.candidates is None and response.prompt_feedback is None:
        raise UnreadableAnswerError("Gemini answered HTTP 200 without candidates or prompt feedback")
    if response.candidates and not response.candidates[0].model_dump(exclude_none=True):
        raise UnreadableAnswerError("Gemini answered HTTP 200 with candidates that hold no field")


def _finish_reason(candidate: types.Candidate | None) -> str:
    return _enum_name(candidate.finish_reason) if candidate is not None and candidate.finish_reason else ""


def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _part_resolution(level: str) -> types.PartMediaResolutionLevel:
    return types.PartMediaResolutionLevel(f"MEDIA_RESOLUTION_{level.upper()}")


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
