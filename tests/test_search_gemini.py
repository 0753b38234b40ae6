"""Gemini embeddings and re-ranking with the real google-genai client, over HTTP to the Gemini
stand-in (devtools/standins/gemini_server.py) on 127.0.0.1, on both backends."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time

import numpy as np
import pytest
from google.oauth2.credentials import Credentials
from PIL import Image

from devtools.standins.gemini_server import (
    Answer,
    Embeddings,
    ErrorReply,
    RawReply,
    embedding_model_not_found,
    internal_error,
    rate_limited,
    rerank_by_colour,
    stand_in_embedding,
    truncated,
    unavailable,
)
from segmentation import logs
from segmentation.config import Config
from segmentation.errors import DetectorNotConfiguredError, ModelRequestError, PermanentError, TransientError
from segmentation.search import gemini_embed, rerank
from segmentation.search.embedders import Embedder
from segmentation.search.gemini_embed import GeminiEmbedder, UnusableEmbeddingError
from segmentation.search.rerank import RerankParseError

API_KEY = "embedding-test-key-that-must-never-leak-9876543210"
BACKENDS = ("api-key", "vertex")
RED, DARK_RED, BLUE, GREEN = (200, 30, 30), (170, 20, 25), (30, 40, 200), (40, 160, 60)


@pytest.fixture(autouse=True)
def _short_backoff(monkeypatch):
    monkeypatch.setattr(gemini_embed, "RETRY_BASE_DELAY_S", 0.05)
    monkeypatch.setattr(rerank, "RETRY_BASE_DELAY_S", 0.05)


def config_for(backend: str, **env: str) -> Config:
    if backend == "vertex":
        return Config.from_env({"GOOGLE_CLOUD_PROJECT": "test-project", "GOOGLE_CLOUD_LOCATION": "global", **env})
    return Config.from_env({"GEMINI_API_KEY": API_KEY, **env})


def credentials_for(backend: str) -> Credentials | None:
    return Credentials(token="test-token") if backend == "vertex" else None


def embedder_for(backend: str, **env: str) -> GeminiEmbedder:
    return GeminiEmbedder(config_for(backend, **env), credentials=credentials_for(backend))


def crop(color: tuple[int, int, int], size: tuple[int, int] = (48, 64)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (size[0] // 3, size[1] // 3, size[0] // 2, size[1] // 2))  # a label
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def embed(embedder: GeminiEmbedder, crops: list[bytes], seconds: float = 10.0) -> list[np.ndarray]:
    try:
        return embedder.embed_images(crops, deadline=time.monotonic() + seconds)
    finally:
        embedder.close()


def expected_vector(data: bytes, dimensions: int) -> np.ndarray:
    """What the stand-in answers for `data`, normalised: the order check of the vectors returned."""
    raw = stand_in_embedding({"parts": [{"inlineData": {"data": _b64(data)}}]}, dimensions)
    vector = np.asarray(raw, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


# -- vectors and requests ----------------------------------------------------------------------


def test_it_is_an_embedder():
    embedder: Embedder = GeminiEmbedder(config_for("api-key"))
    assert (embedder.name, embedder.model, embedder.dimensions) == ("gemini", "gemini-embedding-2", 768)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dimensions", [128, 768, 1536, 3072])
def test_vectors_have_the_configured_length_and_unit_norm(fake, backend, dimensions):
    crops = [crop(RED), crop(BLUE)]

    vectors = embed(embedder_for(backend, EMBEDDING_DIMENSIONS=str(dimensions)), crops)

    assert [v.shape for v in vectors] == [(dimensions,)] * 2
    assert all(v.dtype == np.float32 for v in vectors)
    assert np.allclose([np.linalg.norm(v) for v in vectors], 1.0, atol=1e-5)
    # The stand-in, like Google, answers unit length only at 3072: shorter vectors were normalised here.
    raw = stand_in_embedding({"parts": [{"inlineData": {"data": _b64(crops[0])}}]}, dimensions)
    assert (abs(np.linalg.norm(raw) - 1.0) < 1e-6) == (dimensions == 3072)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_request_carries_output_dimensionality_and_the_image_bytes(fake, backend):
    data = crop(RED)

    embed(embedder_for(backend, EMBEDDING_DIMENSIONS="1536"), [data])

    [request] = fake.requests
    assert request.auth_present
    assert request.output_dimensionalities == [1536]
    assert request.embedded_images == [[data]] and request.image_mime_type == "image/jpeg"
    assert request.embedded_texts == [[]]  # a crop goes alone: no instruction folded into its vector
    assert all(
        "taskType" not in r and "taskType" not in (r.get("embedContentConfig") or {}) for r in request.embed_requests
    )
    if backend == "vertex":
        assert request.path == (
            "/v1beta1/projects/test-project/locations/global/publishers/google/models/gemini-embedding-2:embedContent"
        )
    else:
        assert request.path == "/v1beta/models/gemini-embedding-2:batchEmbedContents"
        assert request.embed_requests[0]["model"] == "models/gemini-embedding-2"


@pytest.mark.parametrize(("backend", "calls"), [("api-key", 1), ("vertex", 7)])
def test_the_crops_of_one_image_take_the_fewest_calls_the_api_allows(fake, backend, calls):
    colors = [RED, BLUE, GREEN, DARK_RED, (220, 200, 40), (90, 90, 90), (20, 20, 20)]
    crops = [crop(color) for color in colors]

    vectors = embed(embedder_for(backend), crops)

    assert len(fake.requests) == calls
    assert sorted(len(r.embed_contents) for r in fake.requests) == ([7] if calls == 1 else [1] * 7)
    methods = {r.method for r in fake.requests}
    assert methods == ({"batchEmbedContents"} if backend == "api-key" else {"embedContent"})
    # Vertex answers come back concurrently; each vector still belongs to its own crop.
    for data, vector in zip(crops, vectors, strict=True):
        assert np.allclose(vector, expected_vector(data, 768), atol=1e-5)


def test_more_crops_than_a_batch_holds_take_one_call_per_batch(fake, monkeypatch):
    monkeypatch.setattr(gemini_embed, "MAX_BATCH", 3)
    crops = [crop((40 * i, 100, 200 - 30 * i)) for i in range(7)]

    vectors = embed(embedder_for("api-key"), crops)

    assert [len(r.embed_contents) for r in fake.requests] == [3, 3, 1]
    assert [request.embedded_images for request in fake.requests][2] == [[crops[6]]]
    assert len(vectors) == 7 and np.allclose(vectors[6], expected_vector(crops[6], 768), atol=1e-5)


def test_no_crops_make_no_call(fake):
    assert embed(embedder_for("vertex"), []) == []
    assert fake.requests == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_text_query_is_sent_with_the_search_query_instruction(fake, backend):
    embedder = embedder_for(backend)
    try:
        vector = embedder.embed_text("  dark green hard-shell suitcase  ", deadline=time.monotonic() + 10)
    finally:
        embedder.close()

    [request] = fake.requests
    assert request.embedded_texts == [["task: search result | query: dark green hard-shell suitcase"]]
    assert request.output_dimensionalities == [768]
    assert vector.shape == (768,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_an_earlier_embedding_model_gets_a_task_type_instead(fake):
    embedder = embedder_for("vertex", EMBEDDING_MODEL="gemini-embedding-001")
    try:
        embedder.embed_text("red backpack", deadline=time.monotonic() + 10)
    finally:
        embedder.close()

    [request] = fake.requests
    assert request.embedded_texts == [["red backpack"]]
    assert request.body["embedContentConfig"]["taskType"] == "RETRIEVAL_QUERY"


def test_an_empty_description_is_refused_before_any_call(fake):
    with pytest.raises(ModelRequestError, match="empty"):
        embedder_for("api-key").embed_text("   ", deadline=time.monotonic() + 5)
    assert fake.requests == []


def test_no_backend_is_not_configured(fake):
    with pytest.raises(DetectorNotConfiguredError, match="GEMINI_API_KEY"):
        embed(GeminiEmbedder(Config.from_env({})), [crop(RED)])
    assert fake.requests == []


# -- retries and errors --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_429_is_retried_after_the_servers_retry_delay_then_succeeds(fake, backend, capsys):
    fake.enqueue_embedding(rate_limited("0.3s"))

    vectors = embed(embedder_for(backend), [crop(RED)])

    assert len(fake.requests) == 2 and vectors[0].shape == (768,)
    retries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "retrying" in line]
    # The backoff alone is at most 0.05 s here: the wait is the server's RetryInfo.
    method = "embedContent" if backend == "vertex" else "batchEmbedContents"
    assert [entry["message"] for entry in retries] == [f"Gemini {method} failed transiently; retrying"]
    assert retries[0]["wait_s"] >= 0.3


def test_5xx_on_some_crops_are_retried_and_every_crop_gets_its_vector(fake):
    fake.enqueue_embedding(unavailable(), internal_error())
    crops = [crop(RED), crop(BLUE), crop(GREEN)]

    vectors = embed(embedder_for("vertex"), crops)

    assert len(fake.requests) == 5
    for data, vector in zip(crops, vectors, strict=True):
        assert np.allclose(vector, expected_vector(data, 768), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_429_past_the_deadline_is_transient(fake, backend):
    fake.embedder = lambda request: rate_limited("30s")

    with pytest.raises(TransientError, match="429"):
        embed(embedder_for(backend), [crop(RED), crop(BLUE)], seconds=2.0)

    # The server asked for 30 s and only 2 were left: no second attempt of any crop.
    assert len(fake.requests) <= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reply",
    [
        ErrorReply(400, "INVALID_ARGUMENT", "Unable to process input image."),
        ErrorReply(403, "PERMISSION_DENIED", "Permission denied on resource project test-project."),
        embedding_model_not_found("gemini-embedding-2"),
    ],
    ids=["400", "403", "404"],
)
def test_a_refused_request_is_permanent_at_once(fake, backend, reply):
    fake.enqueue_embedding(reply)

    with pytest.raises(ModelRequestError, match=str(reply.code)):
        embed(embedder_for(backend), [crop(RED)])
    assert len(fake.requests) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_length_the_model_refuses_is_its_400(fake, backend):
    config = dataclasses.replace(config_for(backend), embedding_dimensions=64)  # past Config's own check

    with pytest.raises(ModelRequestError, match=r"400 INVALID_ARGUMENT.*output_dimensionality"):
        embed(GeminiEmbedder(config, credentials=credentials_for(backend)), [crop(RED)])
    assert len(fake.requests) == 1


def test_one_refused_crop_fails_the_whole_image(fake):
    fake.embedder = lambda request: (
        ErrorReply(400, "INVALID_ARGUMENT", "Unable to process input image.")
        if request.embedded_images[0][0] == refused
        else Embeddings()
    )
    refused = crop(BLUE)

    with pytest.raises(ModelRequestError, match="Unable to process input image"):
        embed(embedder_for("vertex"), [crop(RED), refused, crop(GREEN)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("vector", "match"),
    [
        ((0.1,) * 10, "10 values; 768 were asked for"),
        ((0.1,) * 3072, "3072 values; 768 were asked for"),
        (("high",) * 768, "not numbers"),
        ((None,) * 768, "not numbers"),
        ((float("nan"),) * 768, "zero or not finite"),
        ((0.0,) * 768, "zero or not finite"),
    ],
    ids=["short", "long", "strings", "nulls", "nan", "zero"],
)
def test_an_unusable_vector_is_permanent(fake, backend, vector, match):
    fake.enqueue_embedding(Embeddings(vector=vector))

    with pytest.raises(UnusableEmbeddingError, match=match) as raised:
        embed(embedder_for(backend), [crop(RED)])
    assert isinstance(raised.value, PermanentError) and len(fake.requests) == 1


def test_a_batch_answer_missing_vectors_is_permanent(fake):
    fake.enqueue_embedding(RawReply(json.dumps({"embeddings": [{"values": [0.1] * 768}]}).encode()))

    with pytest.raises(UnusableEmbeddingError, match="1 embedding"):
        embed(embedder_for("api-key"), [crop(RED), crop(BLUE)])


def test_the_api_key_never_appears_in_errors_or_logs(fake, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    logs.set_level("DEBUG")
    echoing = f"API key not valid: {API_KEY}"
    errors: list[Exception] = []
    try:
        # A server or proxy echoing the key, and every request header, must not leak it either.
        fake.enqueue_embedding(
            ErrorReply(429, "RESOURCE_EXHAUSTED", echoing, echo_headers=True),
            ErrorReply(400, "INVALID_ARGUMENT", echoing, echo_headers=True),
        )
        with pytest.raises(ModelRequestError) as refused:
            embed(embedder_for("api-key"), [crop(RED)])
        errors.append(refused.value)

        fake.enqueue_embedding(Embeddings(vector=(API_KEY,) * 768))
        with pytest.raises(UnusableEmbeddingError) as unusable:
            embed(embedder_for("api-key"), [crop(RED)])
        errors.append(unusable.value)

        fake.default = lambda request: Answer(f"[{API_KEY}]")
        with pytest.raises(RerankParseError) as parse_error:
            rerank.rerank(config_for("api-key"), crop(RED), [crop(BLUE)], deadline=time.monotonic() + 5)
        errors.append(parse_error.value)
    finally:
        logs.set_level("INFO")

    captured = capsys.readouterr()
    seen = " ".join([captured.out, captured.err, caplog.text, *map(str, errors), *map(repr, errors)])
    assert API_KEY not in seen
    assert "retrying" in captured.out and "400 INVALID_ARGUMENT" in str(refused.value)
    assert fake.requests[0].api_key_present


# -- the stand-in's embeddings -------------------------------------------------------------------


def test_the_stand_in_gives_similar_crops_close_vectors(fake):
    red, dark_red, blue = embed(embedder_for("api-key"), [crop(RED), crop(DARK_RED), crop(BLUE)])

    assert float(red @ dark_red) > float(red @ blue) + 0.5


def test_the_stand_in_offers_no_batch_on_vertex(fake):
    from google import genai
    from google.genai import types

    client = genai.Client(
        vertexai=True, project="test-project", location="global", credentials=Credentials(token="test-token")
    )
    contents = [types.Content(role="user", parts=[types.Part.from_text(text=text)]) for text in ("a", "b")]
    try:
        with pytest.raises(Exception, match="404"):
            client.models.embed_content(model="gemini-embedding-2", contents=contents)
    finally:
        client.close()
    assert fake.requests[0].path.endswith(":batchEmbedContents") and fake.requests[0].api == ""


# -- re-ranking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerank_scores_each_candidate_in_one_call(fake, backend):
    fake.default = rerank_by_colour
    query = crop(RED, size=(120, 90))
    candidates = [crop(BLUE), crop(DARK_RED), crop(GREEN)]

    scores = rerank.rerank(
        config_for(backend), query, candidates, deadline=time.monotonic() + 10, credentials=credentials_for(backend)
    )

    [request] = fake.requests
    assert request.method == "generateContent" and request.model == "gemini-3.5-flash"
    assert request.images == [query, *candidates]
    assert request.texts == ["Passenger's photo:", "Candidate 1:", "Candidate 2:", "Candidate 3:"]
    generation = request.generation_config
    assert generation["responseMimeType"] == "application/json"
    assert generation["responseJsonSchema"]["minItems"] == generation["responseJsonSchema"]["maxItems"] == 3
    assert "same bag" in request.system_instruction
    assert len(scores) == 3 and all(0.0 <= score <= 1.0 for score in scores)
    assert max(range(3), key=scores.__getitem__) == 1  # the dark red crop is the red bag's


def test_rerank_keeps_candidate_order_whatever_the_answers_order(fake):
    fake.enqueue(Answer('[{"candidate": 2, "same_bag": 0.25}, {"candidate": 1, "same_bag": 1}]'))

    scores = rerank.rerank(config_for("api-key"), crop(RED), [crop(RED), crop(BLUE)], deadline=time.monotonic() + 5)

    assert scores == [1.0, 0.25]


@pytest.mark.parametrize(
    "answer",
    [
        Answer("the second one, surely"),
        Answer('[{"candidate": 1, "same_bag": 0.9}]'),
        Answer('[{"candidate": 1, "same_bag": 0.9}, {"candidate": 1, "same_bag": 0.2}]'),
        Answer('[{"candidate": 1, "same_bag": 0.9}, {"candidate": 3, "same_bag": 0.2}]'),
        Answer('[{"candidate": 1, "same_bag": 1.5}, {"candidate": 2, "same_bag": 0.2}]'),
        Answer('[{"candidate": 1, "same_bag": "high"}, {"candidate": 2, "same_bag": 0.2}]'),
        Answer('{"candidate": 1, "same_bag": 0.9}'),
        truncated('[{"candidate": 1, "same_bag": 0.9}, {"candidate": 2, "same_bag": 0.2}]', 30),
        Answer(None, finish_reason="SAFETY"),
    ],
    ids=["prose", "too-few", "repeated", "unknown", "above-1", "string", "object", "cut-off", "blocked"],
)
def test_a_malformed_rerank_answer_is_permanent_at_once(fake, answer):
    fake.enqueue(answer)

    with pytest.raises(RerankParseError) as raised:
        rerank.rerank(config_for("api-key"), crop(RED), [crop(RED), crop(BLUE)], deadline=time.monotonic() + 5)
    assert isinstance(raised.value, PermanentError) and len(fake.requests) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerank_retries_transient_errors_to_the_deadline(fake, backend):
    fake.default = rerank_by_colour
    fake.enqueue(rate_limited("0.1s"), unavailable())

    scores = rerank.rerank(
        config_for(backend),
        crop(RED),
        [crop(RED)],
        deadline=time.monotonic() + 10,
        credentials=credentials_for(backend),
    )
    assert len(fake.requests) == 3 and scores[0] > 0.9

    fake.default = lambda request: rate_limited("30s")
    with pytest.raises(TransientError, match="429"):
        rerank.rerank(
            config_for(backend),
            crop(RED),
            [crop(RED)],
            deadline=time.monotonic() + 1,
            credentials=credentials_for(backend),
        )
    assert len(fake.requests) == 4


def test_rerank_of_nothing_or_too_much_makes_no_call(fake):
    assert rerank.rerank(config_for("api-key"), crop(RED), [], deadline=time.monotonic() + 5) == []
    with pytest.raises(ValueError, match="at most 20"):
        rerank.rerank(config_for("api-key"), crop(RED), [crop(BLUE)] * 21, deadline=time.monotonic() + 5)
    assert fake.requests == []
