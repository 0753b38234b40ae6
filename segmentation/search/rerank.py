"""Re-ranking a photo query's best candidates with Gemini: one generateContent call per query.

The embedding search orders crops by cosine similarity, which a bag of the same colour and shape
can win. With ``SEARCH_RERANK`` on, the query photo and up to `MAX_CANDIDATES` candidate crops go
to ``GEMINI_MODEL`` in one request, and the model answers, in JSON mode with a response schema,
a same-bag score from 0 to 1 per candidate. `rerank` returns those scores in candidate order.

Failures: transient errors (429, 5xx, timeouts) are retried to the deadline like the detector's
(`segmentation.genai_client`); an answer that is not exactly one score in [0, 1] per candidate
is `RerankParseError` (a `PermanentError`), and a refused request `ModelRequestError`. The caller
keeps the embedding order and records that the re-rank failed.

Example (needs credentials, or GOOGLE_GEMINI_BASE_URL pointing at a server)::

    scores = rerank(Config.from_env(), query_jpeg, [crop_1, crop_2], deadline=time.monotonic() + 60)
    # [0.92, 0.08]
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from google.genai import types

from segmentation.errors import ResponseParseError
from segmentation.genai_client import (
    build_client,
    call_with_retries,
    classify,
    milliseconds,
    redactor,
    thinking_config,
)
from segmentation.logs import add_secret
from segmentation.models import capabilities

if TYPE_CHECKING:
    import google.auth.credentials

    from segmentation.config import Config

# Candidates compared in one request (the search's top 20).
MAX_CANDIDATES = 20
# First backoff step between attempts, as for the detector.
RETRY_BASE_DELAY_S = 1.0
# Enough for 20 small objects, with room for the model's own formatting.
MAX_OUTPUT_TOKENS = 2048
# Crops are small: medium resolution (560 tokens an image on Gemini 3) keeps 21 images cheap
# while tags, ribbons and straps stay visible.
MEDIA_RESOLUTION = "MEDIA_RESOLUTION_MEDIUM"

SYSTEM_INSTRUCTION = (
    "You help find a passenger's lost bag. The first image is the passenger's photo of their bag. "
    "Each following image is a numbered candidate cut from a baggage-belt camera frame. For each "
    "candidate, give the probability from 0 to 1 that it shows the very same bag, not just a "
    "similar one: compare colour, material, shape, wheels, handles, straps, tags, stickers and "
    "ribbons; ignore lighting, viewing angle, background and partial occlusion. Answer with only "
    'a JSON array holding one object {"candidate": number, "same_bag": probability} per '
    "candidate, in candidate order."
)

_FAILED_FINISH_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "OTHER", "MAX_TOKENS"}
)


class RerankParseError(ResponseParseError):
    """Gemini's re-rank answer is not one same-bag score in [0, 1] per candidate."""

    error_type = "rerank_parse_error"


def response_json_schema(count: int) -> dict[str, Any]:
    """Exactly `count` objects ``{"candidate": 1..count, "same_bag": 0..1}``."""
    return {
        "type": "array",
        "minItems": count,
        "maxItems": count,
        "items": {
            "type": "object",
            "properties": {
                "candidate": {"type": "integer", "minimum": 1, "maximum": count},
                "same_bag": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["candidate", "same_bag"],
            "propertyOrdering": ["candidate", "same_bag"],
        },
    }


def rerank(
    config: Config,
    query_jpeg: bytes,
    candidates_jpegs: Sequence[bytes],
    *,
    deadline: float,
    credentials: google.auth.credentials.Credentials | None = None,
) -> list[float]:
    """Same-bag scores (0-1) of each candidate crop against the query photo, in candidate order.

    One generateContent call to ``GEMINI_MODEL``; `deadline` is a `time.monotonic()` instant.
    Raises `TransientError` when it passes while Gemini keeps failing transiently,
    `RerankParseError` for an unusable answer, `ModelRequestError` when the request is refused,
    `ValueError` for more than `MAX_CANDIDATES` candidates.
    """
    if len(candidates_jpegs) > MAX_CANDIDATES:
        raise ValueError(f"at most {MAX_CANDIDATES} candidates can be re-ranked, got {len(candidates_jpegs)}")
    if not candidates_jpegs:
        return []
    add_secret(config.gemini_api_key)
    spec = capabilities(config.gemini_model, config.resolved_backend)
    per_part = MEDIA_RESOLUTION if spec.per_part_media else None
    parts: list[types.Part] = [types.Part.from_text(text="Passenger's photo:"), _image(query_jpeg, per_part)]
    for number, data in enumerate(candidates_jpegs, start=1):
        parts += [types.Part.from_text(text=f"Candidate {number}:"), _image(data, per_part)]
    contents = [types.Content(role="user", parts=parts)]

    thinking = thinking_config(spec, config)

    redact = redactor(config)
    client = build_client(config, credentials=credentials)

    def request(timeout_s: float) -> types.GenerateContentResponse:
        return client.models.generate_content(
            model=config.gemini_model,
            contents=contents,
            config=types.GenerateContentConfig(
                system_instruction=SYSTEM_INSTRUCTION,
                max_output_tokens=MAX_OUTPUT_TOKENS,
                response_mime_type="application/json",
                response_json_schema=response_json_schema(len(candidates_jpegs)),
                thinking_config=thinking,
                media_resolution=None if per_part else types.MediaResolution(MEDIA_RESOLUTION),
                automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
                http_options=types.HttpOptions(timeout=milliseconds(timeout_s)),
            ),
        )

    try:
        response = call_with_retries(
            request,
            deadline=deadline,
            timeout_s=config.gemini_timeout_s,
            what="Gemini re-rank",
            classify=lambda exc: classify(exc, redact=redact),
            base_delay=RETRY_BASE_DELAY_S,
            sleep=time.sleep,
        )
    finally:
        client.close()
    return parse_scores(_answer_text(response), len(candidates_jpegs))


def parse_scores(text: str, count: int) -> list[float]:
    """The `count` same-bag scores of an answer, in candidate order; `RerankParseError` unless the
    answer is exactly one score in [0, 1] for each candidate 1..count.

    >>> parse_scores('[{"candidate": 2, "same_bag": 0.1}, {"candidate": 1, "same_bag": 0.9}]', 2)
    [0.9, 0.1]
    """
    cleaned = text.strip()
    if cleaned.startswith("```"):  # a fenced answer despite JSON mode
        cleaned = cleaned.strip("`").removeprefix("json").strip()
    try:
        items = json.loads(cleaned)
    except json.JSONDecodeError as exc:
        raise RerankParseError(f"the re-rank answer is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(items, list) or len(items) != count:
        got = f"{len(items)} items" if isinstance(items, list) else type(items).__name__
        raise RerankParseError(f"the re-rank answer should list {count} candidates, got {got}")
    scores: dict[int, float] = {}
    for item in items:
        number = item.get("candidate") if isinstance(item, dict) else None
        score = item.get("same_bag") if isinstance(item, dict) else None
        if type(number) is not int or not 1 <= number <= count or number in scores:
            raise RerankParseError(f"the re-rank answer has a missing, repeated or unknown candidate: {number!r}")
        # bool is an int subclass, and no probability
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise RerankParseError(
                f"the re-rank answer gives candidate {number} a score that is not a number: {score!r}"
            )
        if not 0 <= score <= 1:
            raise RerankParseError(f"the re-rank answer gives candidate {number} a score outside 0-1: {score!r}")
        scores[number] = float(score)
    return [scores[number] for number in range(1, count + 1)]


def _answer_text(response: types.GenerateContentResponse) -> str:
    candidate = response.candidates[0] if response.candidates else None
    if candidate is None:
        raise RerankParseError("Gemini gave no re-rank answer (no candidates)")
    finish = str(getattr(candidate.finish_reason, "value", candidate.finish_reason or ""))
    if finish in _FAILED_FINISH_REASONS:
        raise RerankParseError(f"Gemini stopped the re-rank answer with finish reason {finish}")
    text = response.text
    if not text:
        raise RerankParseError(f"Gemini's re-rank answer has no text (finish reason {finish or 'unknown'})")
    return text


def _image(data: bytes, resolution: str | None) -> types.Part:
    mime_type = "image/png" if data.startswith(b"\x89PNG\r\n\x1a\n") else "image/jpeg"
    return types.Part.from_bytes(
        data=data,
        mime_type=mime_type,
        media_resolution=types.PartMediaResolutionLevel(resolution) if resolution else None,
    )
