"""Gemini multimodal embeddings of crops and queries, through the google-genai SDK.

`GeminiEmbedder` is the `Embedder` of the gemini path: ``EMBEDDING_MODEL`` (default
``gemini-embedding-2``, GA, Google's first multimodal embedding model) puts images and text in
one space, so a description finds a photo. It runs on the detector's backends
(`segmentation.genai_client`): Vertex AI with Application Default Credentials, or the Gemini
Developer API with ``GEMINI_API_KEY``; endpoints follow ``GOOGLE_VERTEX_BASE_URL`` /
``GOOGLE_GEMINI_BASE_URL``.

Length, 768 by default (``EMBEDDING_DIMENSIONS``). The model answers 3072 values unless asked
for fewer (``output_dimensionality``, 128-3072); it is trained with Matryoshka Representation
Learning, so a prefix of the vector keeps most of its quality, and Google recommends 768, 1536
or 3072. At 768 a crop's row holds 768 FLOAT64 values (6 KiB) instead of 3072 (24 KiB): a
quarter of the BigQuery storage and of the bytes a brute-force ``VECTOR_SEARCH`` scans, and of
the SQLite blob locally, for a small loss Google calls minimal. Only the 3072 vector comes back
unit length; shorter ones must be normalised, so every vector is returned as unit float32.

Calls per image. Vertex AI's ``embedContent`` turns all the parts of one request into ONE vector
and Vertex offers no ``batchEmbedContents`` for Gemini embedding models, so each crop is one
call there: an image's crops go out together on at most `EMBED_CONCURRENCY` threads. The
Developer API's ``batchEmbedContents`` takes one request per crop in a single call: one call per
image (per `MAX_BATCH` crops).

Task. gemini-embedding-2 takes no ``task_type``: the task goes into the text as an instruction.
A text query is sent as ``task: search result | query: {text}``; crops are sent as the image
alone (any text part would be folded into the crop's vector). Models of the earlier family
(gemini-embedding-001, text-embedding-*) get ``task_type`` RETRIEVAL_QUERY / RETRIEVAL_DOCUMENT.

Retries are ours (`segmentation.genai_client.call_with_retries`): 429, 5xx and timeouts are
`TransientError` until the deadline (a 429's RetryInfo or Retry-After is waited), a refused
request (400, 403, 404) is `ModelRequestError`, and an answer with the wrong number of vectors,
vectors of the wrong length, or values that are not finite numbers is `UnusableEmbeddingError`.
No message or log line holds the API key.

Example (needs credentials, or GOOGLE_GEMINI_BASE_URL pointing at a server)::

    embedder = GeminiEmbedder(Config.from_env())
    vectors = embedder.embed_images([crop_jpeg], deadline=time.monotonic() + 30)
    vectors[0].shape, vectors[0].dtype  # ((768,), dtype('float32'))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import numpy as np
from google import genai
from google.genai import types
from pydantic import ValidationError

from segmentation.errors import ModelRequestError, PermanentError
from segmentation.genai_client import LazyClient, build_client, call_with_retries, classify, milliseconds, redactor
from segmentation.logs import add_secret
from segmentation.search.embedders import unit

if TYPE_CHECKING:
    import google.auth.credentials

    from segmentation.config import Config

# Crops of one image embedded at once on Vertex AI (one request each).
EMBED_CONCURRENCY = 8
# Requests in one batchEmbedContents call (the Developer API's limit per batch).
MAX_BATCH = 100
# First backoff step between attempts, as for the detector.
RETRY_BASE_DELAY_S = 1.0
# How gemini-embedding-2 is told that a text is a search query.
QUERY_INSTRUCTION = "task: search result | query: {text}"


class UnusableEmbeddingError(PermanentError):
    """The embedding model answered, but not with one finite vector of the asked length per input."""

    error_type = "unusable_embedding"


class _Stopped(Exception):
    """Another crop of the same image failed: this one's call is not made."""


def takes_task_instructions(model: str) -> bool:
    """True for gemini-embedding-2 and later, which read the task from the text instead of ``task_type``.

    >>> takes_task_instructions("gemini-embedding-2"), takes_task_instructions("gemini-embedding-001")
    (True, False)
    """
    model_id = model.rsplit("/", 1)[-1]
    return model_id.startswith("gemini-embedding-") and not model_id.startswith(
        ("gemini-embedding-001", "gemini-embedding-exp")
    )


class GeminiEmbedder:
    """Crops and queries to unit float32 vectors with a Gemini embedding model. Safe to share
    between threads; the SDK client is built once. `credentials` is used on Vertex AI only
    (None: Application Default Credentials)."""

    name = "gemini"

    def __init__(
        self,
        config: Config,
        *,
        credentials: google.auth.credentials.Credentials | None = None,
        concurrency: int = EMBED_CONCURRENCY,
    ):
        self._config = config
        self._concurrency = max(1, concurrency)
        self.model = config.embedding_model
        self.dimensions = config.embedding_dimensions
        add_secret(config.gemini_api_key)  # no log line may print it, whatever echoes it
        self._redact = redactor(config)
        self._client = LazyClient(lambda: build_client(config, credentials=credentials))

    def embed_images(self, jpegs: Sequence[bytes], *, deadline: float) -> list[np.ndarray]:
        """One unit vector per image, in order: one call per crop on Vertex AI (run concurrently),
        one batchEmbedContents call per `MAX_BATCH` crops on the Developer API."""
        if not jpegs:
            return []
        client = self._client.get()
        contents = [_image_content(data) for data in jpegs]
        if self._config.resolved_backend == "vertex":
            return self._embed_each(client, contents, deadline)
        vectors: list[np.ndarray] = []
        for start in range(0, len(contents), MAX_BATCH):
            vectors.extend(self._embed(client, contents[start : start + MAX_BATCH], deadline, query=False))
        return vectors

    def embed_text(self, text: str, *, deadline: float) -> np.ndarray:
        """The unit vector of a description, in the crops' space (sent as a search query)."""
        text = text.strip()
        if not text:
            raise ModelRequestError("an empty description cannot be embedded")
        if takes_task_instructions(self.model):
            text = QUERY_INSTRUCTION.format(text=text)
        content = types.Content(role="user", parts=[types.Part.from_text(text=text)])
        return self._embed(self._client.get(), [content], deadline, query=True)[0]

    def close(self) -> None:
        """Release the HTTP connections (the embedder rebuilds its client if used again)."""
        self._client.close()

    # -- calls ----------------------------------------------------------------------------

    def _embed_each(self, client: genai.Client, contents: list[types.Content], deadline: float) -> list[np.ndarray]:
        """One call per content, at most `concurrency` at once; the first failure stops the rest."""
        if len(contents) == 1:
            return self._embed(client, contents, deadline, query=False)
        stop = threading.Event()
        with ThreadPoolExecutor(
            max_workers=min(self._concurrency, len(contents)), thread_name_prefix="gemini-embed"
        ) as pool:
            futures: list[Future[list[np.ndarray]]] = [
                pool.submit(self._embed, client, [content], deadline, query=False, stop=stop) for content in contents
            ]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [error for future in futures if future in done and (error := future.exception()) is not None]
            if errors:
                stop.set()  # wakes crops waiting to retry; calls not yet made are not made
                for future in futures:
                    future.cancel()
                raise errors[0]
        return [future.result()[0] for future in futures]

    def _embed(
        self,
        client: genai.Client,
        contents: list[types.Content],
        deadline: float,
        *,
        query: bool,
        stop: threading.Event | None = None,
    ) -> list[np.ndarray]:
        task_type = None
        if not takes_task_instructions(self.model):
            task_type = "RETRIEVAL_QUERY" if query else "RETRIEVAL_DOCUMENT"

        def request(timeout_s: float) -> list[np.ndarray]:
            if stop is not None and stop.is_set():
                raise _Stopped
            response = client.models.embed_content(
                model=self.model,
                contents=contents,
                config=types.EmbedContentConfig(
                    output_dimensionality=self.dimensions,
                    task_type=task_type,
                    http_options=types.HttpOptions(timeout=milliseconds(timeout_s)),
                ),
            )
            return self._vectors(response, len(contents))

        def sleep(seconds: float) -> None:
            if stop is not None:
                stop.wait(seconds)
            else:
                time.sleep(seconds)

        return call_with_retries(
            request,
            deadline=deadline,
            timeout_s=self._config.gemini_timeout_s,
            what="Gemini embedContent" if self._config.resolved_backend == "vertex" else "Gemini batchEmbedContents",
            classify=self._classify,
            base_delay=RETRY_BASE_DELAY_S,
            sleep=sleep,
        )

    # -- the answer -----------------------------------------------------------------------

    def _vectors(self, response: types.EmbedContentResponse, expected: int) -> list[np.ndarray]:
        embeddings = response.embeddings or []
        if len(embeddings) != expected:
            raise UnusableEmbeddingError(
                f"{self.model} answered {len(embeddings)} embedding(s) for {expected} input(s)"
            )
        vectors = []
        for embedding in embeddings:
            values = embedding.values or []
            if len(values) != self.dimensions:
                raise UnusableEmbeddingError(
                    f"{self.model} answered a vector of {len(values)} values; {self.dimensions} were asked for"
                )
            vector = np.asarray(values, dtype=np.float64)
            if not np.isfinite(vector).all() or not vector.any():
                raise UnusableEmbeddingError(f"{self.model} answered a vector that is zero or not finite")
            vectors.append(unit(vector))
        return vectors

    def _classify(self, exc: Exception) -> Exception:
        """The shared classification, except that values the SDK refuses as numbers are a permanent
        `UnusableEmbeddingError`, not an unreadable (retried) answer."""
        if isinstance(exc, ValidationError) and exc.title == "EmbedContentResponse":
            first = exc.errors(include_url=False, include_input=False)[0]
            where = [str(part) for part in first.get("loc", ())]
            if "values" in where:
                # Locations and kinds only: the error's input values are pieces of the body.
                return UnusableEmbeddingError(
                    f"{self.model} answered embedding values that are not numbers "
                    f"(at {'.'.join(where)}: {first.get('msg', '')})"
                )
        return classify(exc, redact=self._redact)


def _image_content(data: bytes) -> types.Content:
    mime_type = "image/png" if data.startswith(b"\x89PNG\r\n\x1a\n") else "image/jpeg"
    return types.Content(role="user", parts=[types.Part.from_bytes(data=data, mime_type=mime_type)])
