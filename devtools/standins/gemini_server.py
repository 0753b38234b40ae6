"""A local server that speaks Gemini's REST wire format, for tests only.

It answers ``POST generateContent`` on both of Google's paths, so the real google-genai
client can talk to it when ``GOOGLE_GEMINI_BASE_URL`` / ``GOOGLE_VERTEX_BASE_URL`` point here:

- Gemini Developer API: ``/{version}/models/{model}:generateContent`` with an
  ``x-goog-api-key`` header;
- Vertex AI: ``/{version}/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``
  with ``Authorization: Bearer ...``.

It also answers the embedding methods the SDK calls for Gemini embedding models: on the
Developer API ``:batchEmbedContents`` (one ``requests[]`` entry per content, answered with
``embeddings[].values``) and ``:embedContent``; on Vertex AI ``:embedContent`` only (every part
of the one ``content`` goes into one vector, answered with ``embedding.values`` and
``usageMetadata``). Vertex AI offers no ``batchEmbedContents`` for Gemini embedding models, so
that path gets the 404 of an unknown URL here. The vectors are a stand-in's, not a model's
(`stand_in_embedding`): an image part gives a coarse colour histogram projected to 3072
dimensions, so crops of similar colour get close vectors; a text part gives a vector seeded by
a hash of its text (no relation to images); the parts of one content are summed. Like Google's,
the full 3072-dimension vector is unit length and a shorter one (``outputDimensionality``, the
first N values) is not. An ``outputDimensionality`` outside 128-3072 or an image part that
does not decode gets a 400 INVALID_ARGUMENT. Embedding requests have a script of their own
(`enqueue_embedding`, then the `embedder` responder): `Embeddings` (the stand-in's vectors, or
a given vector), `ErrorReply`, `RawReply`.

A request without the right credential header gets 401 UNAUTHENTICATED, as from Google.
Every request is recorded (`RecordedRequest`: auth values are not kept, only whether auth
was there). Answers come from a script: queued behaviours first (`enqueue`), then the
`default` responder, a callable ``(RecordedRequest) -> Behaviour``. Behaviours are
`Answer` (text, optionally cut off), `ErrorReply` (Google's error JSON) and `RawReply` (any
bytes: not JSON, gzip without its header, JSON the SDK rejects), each optionally slow.
Before the script, a request the real model refuses gets its 400 INVALID_ARGUMENT
(`refused_argument`: MINIMAL thinking on 3.7/3.8, a single-region location for 3.6 and later).
A base `latency` is added to every answer, for benchmarks.

Token counts in ``usageMetadata`` follow Google's documented rules (`image_token_count`), not a
live model: an image costs, by model generation and media resolution (per part, else the
request's generationConfig.mediaResolution),

- Gemini 3 and later: low 280, medium 560, high 1120, ultra high 2240 tokens; with no media
  resolution the default for images is high, 1120;
- Gemini 2.x (and 1.x) with a media resolution: low 64, medium 256, high 256 (high is "zoomed
  reframing with 256 tokens");
- Gemini 2.x without one: 258 tokens per 768x768 tile, one tile when both sides are at most
  384 pixels, so downscaling the input shows up in the count.

A model id that names no Gemini generation is counted as Gemini 3. Text costs one token per
four characters.

>>> with FakeGeminiServer() as server:
...     server.enqueue(Answer('[{"box_2d": [0, 0, 500, 500], "label": "bag"}]'))
...     server.base_url.startswith("http://127.0.0.1:")
True

Run one for local work or benchmarks (every image answered with a fixture, 0.8 s each)::

    python -m devtools.standins.gemini_server --port 8089 --latency 0.8 --answer sample_5
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gzip
import hashlib
import io
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

from tests.fixtures import shared_fixture

# Tokens per image, from Google's documentation (checked November 2026):
# - Gemini 3 values and the Gemini 3 default for images (high, 1120 tokens): "Media resolution",
#   https://ai.google.dev/gemini-api/docs/media-resolution (section "Token counts").
# - Gemini 2.x values: the Vertex AI reference of GenerationConfig.MediaResolution, "low (64
#   tokens)", "medium (256 tokens)", "high (zoomed reframing with 256 tokens)",
#   https://docs.cloud.google.com/ruby/docs/reference/google-cloud-ai_platform-v1/latest/Google-Cloud-AIPlatform-V1-GenerationConfig-MediaResolution
# - Gemini 2.x without a media resolution: 258 tokens per 768x768 tile, images with both sides
#   at most 384 pixels one tile ("Understand and count tokens",
#   https://ai.google.dev/gemini-api/docs/tokens, images).
GEMINI_3_IMAGE_TOKENS = {
    "MEDIA_RESOLUTION_LOW": 280,
    "MEDIA_RESOLUTION_MEDIUM": 560,
    "MEDIA_RESOLUTION_HIGH": 1120,
    "MEDIA_RESOLUTION_ULTRA_HIGH": 2240,
}
GEMINI_3_DEFAULT_RESOLUTION = "MEDIA_RESOLUTION_HIGH"
GEMINI_2_IMAGE_TOKENS = {
    "MEDIA_RESOLUTION_LOW": 64,
    "MEDIA_RESOLUTION_MEDIUM": 256,
    "MEDIA_RESOLUTION_HIGH": 256,
}
IMAGE_TOKENS_BY_RESOLUTION = GEMINI_3_IMAGE_TOKENS  # the former name
_TILE_TOKENS, _TILE_SIDE, _SMALL_IMAGE_SIDE = 258, 768, 384
_GENERATION = re.compile(r"^gemini-(\d+)")
_VERSION = re.compile(r"^gemini-(\d+)(?:\.(\d+))?(?:-|$)")
# The locations Gemini 3.6 and later are served from on Vertex AI.
MULTI_REGION_LOCATIONS = frozenset({"global", "eu", "us"})

_GEMINI_PATH = re.compile(
    r"^/(?P<version>v1[a-z0-9]*)/models/(?P<model>[^/:]+):(?P<method>generateContent|embedContent|batchEmbedContents)$"
)
_VERTEX_PATH = re.compile(
    r"^/(?P<version>v1[a-z0-9]*)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>generateContent|embedContent)$"
)
EMBED_METHODS = frozenset({"embedContent", "batchEmbedContents"})
# gemini-embedding-2's output_dimensionality range and its default (full) length.
MIN_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_DIMENSIONS = 128, 3072
_AUTH_HEADERS = ("authorization", "x-goog-api-key")
_FREE_FORM_FIELDS = frozenset({"responseJsonSchema"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. Credential values are never kept."""

    path: str
    api: str  # "gemini", "vertex", or "" for a path the server does not serve
    model: str
    version: str
    headers: dict[str, str]  # lower-cased names; authorization / x-goog-api-key left out
    api_key_present: bool
    bearer_present: bool
    body: dict[str, Any]  # the JSON body, field names in camelCase whichever spelling was sent
    image_bytes: bytes | None
    image_mime_type: str | None
    project: str = ""
    location: str = ""
    method: str = "generateContent"  # or "embedContent" / "batchEmbedContents"

    @property
    def auth_present(self) -> bool:
        return self.api_key_present if self.api == "gemini" else self.bearer_present

    @property
    def texts(self) -> list[str]:
        """The text parts of the user turns, in order (prompt, then any re-ask instruction)."""
        return [
            part["text"]
            for content in self.body.get("contents", [])
            for part in content.get("parts", [])
            if "text" in part
        ]

    @property
    def system_instruction(self) -> str:
        parts = (self.body.get("systemInstruction") or {}).get("parts", [])
        return "".join(part.get("text", "") for part in parts)

    @property
    def generation_config(self) -> dict[str, Any]:
        return self.body.get("generationConfig") or {}

    @property
    def image_part(self) -> dict[str, Any] | None:
        for content in self.body.get("contents", []):
            for part in content.get("parts", []):
                if "inlineData" in part:
                    return part
        return None

    @property
    def images(self) -> list[bytes]:
        """Every image part of the user turns, decoded, in order (a re-rank: the query, then the candidates)."""
        return [
            _decode_base64(part["inlineData"].get("data", ""))
            for content in self.body.get("contents", [])
            for part in _parts(content)
            if "inlineData" in part
        ]

    @property
    def is_embedding(self) -> bool:
        return self.method in EMBED_METHODS

    @property
    def embed_requests(self) -> list[dict[str, Any]]:
        """The embedding requests this HTTP request carries: ``requests[]`` of a batch, else the body."""
        if self.method == "batchEmbedContents":
            requests = self.body.get("requests")
            return [r for r in requests if isinstance(r, dict)] if isinstance(requests, list) else []
        return [self.body] if self.method == "embedContent" else []

    @property
    def embed_contents(self) -> list[dict[str, Any]]:
        """One content per vector asked for."""
        return [r.get("content") or {} for r in self.embed_requests]

    @property
    def output_dimensionalities(self) -> list[int | None]:
        """Each request's outputDimensionality (Vertex: in embedContentConfig), None where unset."""
        return [(r.get("embedContentConfig") or r).get("outputDimensionality") for r in self.embed_requests]

    @property
    def embedded_images(self) -> list[list[bytes]]:
        """The decoded image parts of each content, in order."""
        return [
            [_decode_base64(part["inlineData"].get("data", "")) for part in _parts(content) if "inlineData" in part]
            for content in self.embed_contents
        ]

    @property
    def embedded_texts(self) -> list[list[str]]:
        """The text parts of each content, in order."""
        return [[part["text"] for part in _parts(content) if "text" in part] for content in self.embed_contents]


@dataclass(frozen=True)
class Answer:
    """A 200 answer with `text` as the model's output (None: a candidate without content)."""

    text: str | None
    finish_reason: str = "STOP"
    model_version: str | None = None  # None: the model the request named
    thoughts_tokens: int = 0
    delay: float = 0.0


@dataclass(frozen=True)
class ErrorReply:
    """An error status with Google's error JSON: {"error": {"code", "message", "status", "details"}}."""

    code: int
    status: str
    message: str
    details: tuple[dict[str, Any], ...] = ()
    delay: float = 0.0
    # Append every request header, credentials included, to `message`: a misbehaving server or
    # proxy that reflects the request, to prove the key never travels on from an error.
    echo_headers: bool = False


@dataclass(frozen=True)
class RawReply:
    """Exactly `body` with `status` and `headers`: answers no real endpoint should give, but a
    proxy, a load balancer or a broken release might (see `not_json`, `gzip_without_header`,
    `rejected_by_sdk`)."""

    body: bytes
    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json; charset=UTF-8"),)
    delay: float = 0.0


@dataclass(frozen=True)
class Embeddings:
    """A 200 answer to an embedding request: one vector per content asked for, in the wire format
    of the method called. `vector` None: the stand-in's vectors (`stand_in_embedding`); else
    exactly `vector` for every content (any length, any JSON values: to test the client)."""

    vector: tuple[Any, ...] | None = None
    delay: float = 0.0


Behaviour = Answer | ErrorReply | RawReply | Embeddings
Responder = Callable[[RecordedRequest], Behaviour]


def truncated(text: str, chars: int, **kwargs: Any) -> Answer:
    """`text` cut after `chars` characters, ending as a token-limit stop (MAX_TOKENS)."""
    return Answer(text[:chars], finish_reason="MAX_TOKENS", **kwargs)


def slow(behaviour: Behaviour, seconds: float) -> Behaviour:
    """`behaviour` sent only after `seconds` (to trigger client timeouts)."""
    return dataclasses.replace(behaviour, delay=seconds)


def rate_limited(
    retry_delay: str | None = "2s", message: str = "Resource exhausted. Please try again later."
) -> ErrorReply:
    """429 RESOURCE_EXHAUSTED, with a google.rpc.RetryInfo detail unless `retry_delay` is None."""
    details = ({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},) if retry_delay else ()
    return ErrorReply(429, "RESOURCE_EXHAUSTED", message, details)


def internal_error() -> ErrorReply:
    return ErrorReply(500, "INTERNAL", "An internal error has occurred. Please retry or report.")


def unavailable() -> ErrorReply:
    return ErrorReply(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def model_not_found(model: str) -> ErrorReply:
    return ErrorReply(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not supported.")


def not_json(body: str = "<html><body>Upstream connect error</body></html>") -> RawReply:
    """HTTP 200 whose body is not JSON (an HTML page from a proxy, say)."""
    return RawReply(body.encode("utf-8"), headers=(("Content-Type", "text/html; charset=UTF-8"),))


def gzip_without_header(text: str = "[]") -> RawReply:
    """HTTP 200 carrying a valid answer with `text`, gzip-compressed but without Content-Encoding."""
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}]}
    return RawReply(gzip.compress(json.dumps(body).encode("utf-8")))


def rejected_by_sdk(body: Any = None) -> RawReply:
    """HTTP 200 with JSON that google-genai's types refuse (default: `candidates` as a string)."""
    value = {"candidates": "not a list", "modelVersion": "gemini-3.5-flash"} if body is None else body
    return RawReply(json.dumps(value).encode("utf-8"))


def _model_version(model: str) -> tuple[int, int] | None:
    """(major, minor) of a Gemini model id ("gemini-3.8-flash" -> (3, 8), "gemini-4-argon" -> (4, 0))."""
    match = _VERSION.match(model.rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def refused_argument(request: RecordedRequest) -> ErrorReply | None:
    """The 400 INVALID_ARGUMENT Google gives for a request the model cannot take, else None:
    ``thinkingLevel`` MINIMAL on Gemini 3.7 and 3.8 (they take LOW, MEDIUM, HIGH), and a
    single-region Vertex location for Gemini 3.6 and later (global and the eu/us multi-regions only)."""
    version = _model_version(request.model)
    if version is None:
        return None
    level = (request.generation_config.get("thinkingConfig") or {}).get("thinkingLevel")
    if version in ((3, 7), (3, 8)) and str(level).upper() == "MINIMAL":
        return _invalid_argument(
            f"Thinking level MINIMAL is not supported by models/{request.model}. Supported levels: LOW, MEDIUM, HIGH.",
            "generation_config.thinking_config.thinking_level",
        )
    if request.api == "vertex" and version >= (3, 6) and request.location not in MULTI_REGION_LOCATIONS:
        return _invalid_argument(
            f"Publisher model {request.model} is not served in location {request.location}. "
            "It is available in the global location and the eu and us multi-regions.",
            "location",
        )
    return None


def _invalid_argument(message: str, field: str) -> ErrorReply:
    return ErrorReply(
        400,
        "INVALID_ARGUMENT",
        message,
        (
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            },
        ),
    )


def empty_list(request: RecordedRequest) -> Behaviour:
    """The default responder: nothing found."""
    return Answer("[]")


def rerank_by_colour(request: RecordedRequest) -> Behaviour:
    """A generateContent responder for re-rank requests (`segmentation.search.rerank`): the first
    image is the query, each later one a candidate, and each candidate's ``same_bag`` is the
    Bhattacharyya coefficient of its soft colour histogram with the query's (a stand-in's
    judgement: 1 for the same colours, near 0 for unrelated ones)."""
    histograms = [_histogram(data) for data in request.images]
    if not histograms:
        return Answer("[]")
    query, candidates = histograms[0], histograms[1:]
    scores = [
        {
            "candidate": number,
            "same_bag": round(float(query @ other), 3) if query is not None and other is not None else 0,
        }
        for number, other in enumerate(candidates, start=1)
    ]
    return Answer(json.dumps(scores))


def stand_in_embeddings(request: RecordedRequest) -> Behaviour:
    """The default embedding responder: the stand-in's vectors for every content."""
    return Embeddings()


def embedding_model_not_found(model: str) -> ErrorReply:
    """404 NOT_FOUND for an embedding model the endpoint does not serve."""
    return ErrorReply(
        404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not supported for embedContent."
    )


def refused_embedding(request: RecordedRequest) -> ErrorReply | None:
    """The 400 INVALID_ARGUMENT for an embedding request Google refuses, else None: no content,
    an outputDimensionality outside 128-3072, or an image part that does not decode."""
    if not request.embed_requests or any(not _parts(content) for content in request.embed_contents):
        return _invalid_argument("The content to embed is empty.", "content")
    for dimensions in request.output_dimensionalities:
        if dimensions is not None and not (
            isinstance(dimensions, int) and MIN_EMBEDDING_DIMENSIONS <= dimensions <= MAX_EMBEDDING_DIMENSIONS
        ):
            return _invalid_argument(
                f"output_dimensionality must be between {MIN_EMBEDDING_DIMENSIONS} and "
                f"{MAX_EMBEDDING_DIMENSIONS}, got {dimensions}.",
                "output_dimensionality",
            )
    for images in request.embedded_images:
        for data in images:
            if _histogram(data) is None:
                return _invalid_argument("Unable to process input image. Please retry or report.", "content.parts")
    return None


# Colour histogram bins per channel of the stand-in's image vectors (6 x 6 x 6 = 216 bins), soft
# (each value shared between its two nearest bin centres) so that close colours share bins.
_BINS = 6
_BIN_CENTRES = np.linspace(0.0, 255.0, _BINS)
_projection_lock = threading.Lock()
_projection: np.ndarray | None = None
_blas_lock = threading.Lock()


def _histogram_projection() -> np.ndarray:
    """A fixed random projection of the 216 histogram bins onto 3072 dimensions (seeded: same on every run)."""
    global _projection
    with _projection_lock:
        if _projection is None:
            _projection = np.random.default_rng(20261205).standard_normal((_BINS**3, MAX_EMBEDDING_DIMENSIONS))
        return _projection


def _histogram(data: bytes) -> np.ndarray | None:
    """The square root of the image's normalised soft 6x6x6 RGB histogram (216 values), None if it doesn't decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            small = image.convert("RGB").resize((32, 32))
    except Exception:
        return None
    pixels = np.asarray(small, dtype=np.float64).reshape(-1, 3)
    spacing = _BIN_CENTRES[1] - _BIN_CENTRES[0]
    # Triangular weights: (pixels, channel, bin), each channel's weights summing to 1.
    weights = np.clip(1.0 - np.abs(pixels[:, :, None] - _BIN_CENTRES[None, None, :]) / spacing, 0.0, 1.0)
    counts = np.einsum("pi,pj,pk->ijk", weights[:, 0], weights[:, 1], weights[:, 2]).ravel()
    return np.sqrt(counts / counts.sum())


def stand_in_embedding(content: dict[str, Any], dimensions: int | None) -> list[float]:
    """The stand-in's vector of one content: each image part's soft colour histogram through a fixed
    random projection (so similar colours give close vectors: cosine ~ the histograms'
    Bhattacharyya coefficient), each text part a vector seeded by a hash of its text, summed; the
    full 3072 values scaled to unit length, then the first `dimensions` kept (not rescaled)."""
    total = np.zeros(MAX_EMBEDDING_DIMENSIONS)
    for part in _parts(content):
        if "inlineData" in part:
            histogram = _histogram(_decode_base64(part["inlineData"].get("data", "")))
            if histogram is not None:
                projection = _histogram_projection()
                # One product at a time: OpenBLAS aborts the process ("Bad memory unallocation")
                # when more threads than it has buffers call it at once, as a load test's do.
                with _blas_lock:
                    total += histogram @ projection
        elif "text" in part:
            seed = int.from_bytes(hashlib.sha256(str(part["text"]).encode("utf-8")).digest()[:8], "big")
            total += np.random.default_rng(seed).standard_normal(MAX_EMBEDDING_DIMENSIONS)
    norm = float(np.linalg.norm(total))
    unit = total / norm if norm > 0 else total
    return [float(value) for value in unit[: dimensions or MAX_EMBEDDING_DIMENSIONS]]


def sample_text(n: int) -> str:
    """The exact ``response.text`` of recorded sample `n` (1-6) in ../shared/fixtures/gemini."""
    return shared_fixture("gemini", f"sample_{n}.txt").read_text(encoding="utf-8")


def sample_numbers() -> list[int]:
    """The numbers of every recorded sample present, in order."""
    folder = shared_fixture("gemini")
    return sorted(
        int(m.group(1)) for p in folder.glob("sample_*.txt") if (m := re.fullmatch(r"sample_(\d+)\.txt", p.name))
    )


def fixture_responder(n: int) -> Responder:
    """A responder answering every request with recorded sample `n`."""
    answer = Answer(sample_text(n))
    return lambda request: answer


def estimate_text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def model_generation(model: str) -> int:
    """The Gemini generation a model id names (3 for "gemini-3.5-flash"); 3 for anything else."""
    match = _GENERATION.match(model.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else 3


def image_token_count(model: str, level: str | None, size: tuple[int, int] | None) -> int:
    """Tokens one image costs on `model` at media resolution `level` (None: not set); `size` is
    the image's (width, height), needed only for the Gemini 2 tiling rule (None: undecodable)."""
    if model_generation(model) >= 3:
        return GEMINI_3_IMAGE_TOKENS.get(level or "", GEMINI_3_IMAGE_TOKENS[GEMINI_3_DEFAULT_RESOLUTION])
    if level in GEMINI_2_IMAGE_TOKENS:
        return GEMINI_2_IMAGE_TOKENS[level]
    if size is None:
        return _TILE_TOKENS  # an undecodable image still costs something
    width, height = size
    if width <= _SMALL_IMAGE_SIDE and height <= _SMALL_IMAGE_SIDE:
        return _TILE_TOKENS
    return _TILE_TOKENS * math.ceil(width / _TILE_SIDE) * math.ceil(height / _TILE_SIDE)


def image_tokens(request: RecordedRequest) -> int:
    """Tokens the request's image costs (0 without an image); see `image_token_count`."""
    part = request.image_part
    if part is None:
        return 0
    level = (part.get("mediaResolution") or {}).get("level") or request.generation_config.get("mediaResolution")
    size = None
    if model_generation(request.model) < 3 and level not in GEMINI_2_IMAGE_TOKENS and request.image_bytes:
        try:
            with Image.open(io.BytesIO(request.image_bytes)) as image:
                size = image.size
        except Exception:
            size = None
    return image_token_count(request.model, level, size)


def usage_metadata(request: RecordedRequest, answer: Answer) -> dict[str, int]:
    prompt = image_tokens(request) + estimate_text_tokens(request.system_instruction + "".join(request.texts))
    candidates = estimate_text_tokens(answer.text or "")
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "thoughtsTokenCount": answer.thoughts_tokens,
        "totalTokenCount": prompt + candidates + answer.thoughts_tokens,
    }


class FakeGeminiServer:
    """The fake on 127.0.0.1 and a free port. Use as a context manager, or `start()`/`stop()`."""

    def __init__(
        self,
        default: Responder = empty_list,
        *,
        latency: float = 0.0,
        port: int = 0,
        embedder: Responder = stand_in_embeddings,
    ):
        self.default = default
        self.embedder = embedder
        self.latency = latency
        self._port = port
        self._queue: deque[Behaviour] = deque()
        self._embed_queue: deque[Behaviour] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeGeminiServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gemini", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes slow answers so their threads end promptly
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeGeminiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # -- script and record ----------------------------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with `behaviours`, in order, before falling back to `default`."""
        with self._lock:
            self._queue.extend(behaviours)

    def enqueue_embedding(self, *behaviours: Behaviour) -> None:
        """Answer the next embedding requests with `behaviours`, in order, before falling back to `embedder`."""
        with self._lock:
            self._embed_queue.extend(behaviours)

    def reset(
        self, default: Responder = empty_list, *, latency: float = 0.0, embedder: Responder = stand_in_embeddings
    ) -> None:
        """Forget the scripts and the record, and answer with `default` (`embedder` for embeddings) from now on."""
        with self._lock:
            self._queue.clear()
            self._embed_queue.clear()
            self._requests.clear()
            self.default = default
            self.embedder = embedder
            self.latency = latency

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    def _behaviour_for(self, request: RecordedRequest) -> Behaviour:
        """Record `request` and pick its answer; a refused request does not use up the script."""
        with self._lock:
            self._requests.append(request)
            if request.api == "":
                return ErrorReply(404, "NOT_FOUND", f"The requested URL {request.path} was not found on this server.")
            if not request.auth_present:
                return ErrorReply(401, "UNAUTHENTICATED", "Request is missing required authentication credential.")
            if request.is_embedding:
                refused = refused_embedding(request)
                queue, responder = self._embed_queue, self.embedder
            else:
                refused = refused_argument(request)
                queue, responder = self._queue, self.default
            if refused is not None:
                return refused
            queued = queue.popleft() if queue else None
        return queued if queued is not None else responder(request)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGeminiServer
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: the headers and the body go out in two writes; with Nagle's algorithm the body
    # would wait for the client's delayed ACK of the headers on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = _record(self.path, self.headers, raw)
        behaviour = self.fake._behaviour_for(request)
        self.fake._wait(self.fake.latency + behaviour.delay)
        if isinstance(behaviour, Answer):
            self._send(200, _answer_body(request, behaviour))
        elif isinstance(behaviour, Embeddings):
            self._send(200, _embeddings_body(request, behaviour))
        elif isinstance(behaviour, RawReply):
            self._send_raw(behaviour.status, behaviour.body, behaviour.headers)
        else:
            message = behaviour.message
            if behaviour.echo_headers:
                message += f" Request headers: {json.dumps(dict(self.headers.items()))}"
            error = {"code": behaviour.code, "message": message, "status": behaviour.status}
            if behaviour.details:
                error["details"] = list(behaviour.details)
            self._send(behaviour.code, {"error": error})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode("utf-8")
        self._send_raw(status, payload, (("Content-Type", "application/json; charset=UTF-8"),))

    def _send_raw(self, status: int, payload: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer came


def _record(path: str, headers: Any, raw: bytes) -> RecordedRequest:
    lowered = {name.lower(): value for name, value in headers.items()}
    route = ""
    match = _GEMINI_PATH.match(path)
    if match:
        route = "gemini"
    else:
        match = _VERTEX_PATH.match(path)
        route = "vertex" if match else ""
    groups = match.groupdict() if match else {}
    try:
        body = _camel_keys(json.loads(raw)) if raw else {}
    except json.JSONDecodeError:
        body = {}
    image_bytes = image_mime = None
    contents = body.get("contents", []) if isinstance(body, dict) else []
    if isinstance(body, dict) and groups.get("method") in EMBED_METHODS:
        batch = body.get("requests")
        requests: list[Any] = batch if isinstance(batch, list) else [body]
        contents = [r.get("content") for r in requests if isinstance(r, dict) and isinstance(r.get("content"), dict)]
    for content in contents:
        for part in _parts(content):
            if "inlineData" in part:
                image_bytes = _decode_base64(part["inlineData"].get("data", ""))
                image_mime = part["inlineData"].get("mimeType")
    return RecordedRequest(
        path=path,
        api=route,
        model=groups.get("model", ""),
        version=groups.get("version", ""),
        headers={name: value for name, value in lowered.items() if name not in _AUTH_HEADERS},
        api_key_present=bool(lowered.get("x-goog-api-key")),
        bearer_present=lowered.get("authorization", "").startswith("Bearer ")
        and len(lowered.get("authorization", "")) > len("Bearer "),
        body=body if isinstance(body, dict) else {},
        image_bytes=image_bytes,
        image_mime_type=image_mime,
        project=groups.get("project", ""),
        location=groups.get("location", ""),
        method=groups.get("method", "generateContent"),
    )


def _parts(content: Any) -> list[dict[str, Any]]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []


def _camel_keys(value: Any) -> Any:
    """Field names as Google's proto-JSON parser reads them: `mime_type` and `mimeType` alike.

    The SDK sends some nested fields in snake_case (``inlineData.mime_type``,
    ``thinkingConfig.thinking_budget``); Google accepts both spellings, so the fake records
    the camelCase one. A JSON Schema is free-form (google.protobuf.Value) and kept as sent.
    """
    if isinstance(value, list):
        return [_camel_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    converted = {}
    for key, item in value.items():
        name = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)
        converted[name] = item if name in _FREE_FORM_FIELDS else _camel_keys(item)
    return converted


def _decode_base64(data: str) -> bytes:
    """Standard or URL-safe base64 (the SDK sends URL-safe; Google accepts both), padding optional."""
    return base64.urlsafe_b64decode(data.replace("+", "-").replace("/", "_") + "=" * (-len(data) % 4))


def _answer_body(request: RecordedRequest, answer: Answer) -> dict[str, Any]:
    candidate: dict[str, Any] = {"finishReason": answer.finish_reason, "index": 0}
    if answer.text is not None:
        candidate["content"] = {"role": "model", "parts": [{"text": answer.text}]}
    return {
        "candidates": [candidate],
        "usageMetadata": usage_metadata(request, answer),
        "modelVersion": answer.model_version or request.model,
        "responseId": uuid.uuid4().hex[:22],
    }


def _embeddings_body(request: RecordedRequest, answer: Embeddings) -> dict[str, Any]:
    """`embedding` (embedContent) or `embeddings[]` (batchEmbedContents), each ``{"values": [...]}``;
    Vertex AI's embedContent adds ``usageMetadata`` (the stand-in's estimate: text at four
    characters a token, 258 tokens an image)."""
    vectors = [
        list(answer.vector) if answer.vector is not None else stand_in_embedding(content, dimensions)
        for content, dimensions in zip(request.embed_contents, request.output_dimensionalities, strict=True)
    ]
    if request.method == "batchEmbedContents":
        return {"embeddings": [{"values": vector} for vector in vectors]}
    body: dict[str, Any] = {"embedding": {"values": vectors[0]}}
    if request.api == "vertex":
        tokens = sum(estimate_text_tokens(text) for text in request.embedded_texts[0])
        tokens += _TILE_TOKENS * len(request.embedded_images[0])
        body["usageMetadata"] = {"promptTokenCount": tokens, "totalTokenCount": tokens}
    return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument(
        "--answer", default="empty", help="'empty' (an empty list for every image) or sample_N (a recorded answer)"
    )
    args = parser.parse_args(argv)
    if args.answer == "empty":
        responder: Responder = empty_list
    else:
        match = re.fullmatch(r"sample_(\d+)", args.answer)
        if not match:
            parser.error("--answer must be 'empty' or sample_N")
        responder = fixture_responder(int(match.group(1)))
    with FakeGeminiServer(responder, latency=args.latency, port=args.port) as server:
        print(
            f"fake Gemini on {server.base_url} (latency {args.latency}s, answer {args.answer}); set "
            f"GOOGLE_GEMINI_BASE_URL / GOOGLE_VERTEX_BASE_URL to it. Ctrl-C stops.",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
