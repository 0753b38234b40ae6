"""The test stand-ins themselves: the Gemini wire server's token counts, and the threaded
in-memory Cloud Storage server (`devtools.standins.gcs_server`) driven by the real clients."""

from __future__ import annotations

import io
import os
import socket
import threading
import time

import pytest
from PIL import Image

from devtools.standins.gcs_server import running_gcs_server, select_fields
from devtools.standins.gemini_server import (
    Answer,
    FakeGeminiServer,
    estimate_text_tokens,
    image_token_count,
    model_generation,
)
from segmentation.config import Config
from segmentation.detections import ObjectRef
from segmentation.errors import ObjectGoneError, PermanentError
from segmentation.gemini import GeminiDetector
from segmentation.images import ModelInput
from segmentation.storage import GcsStorage

BUCKET = "stand-in-test"


# --- Gemini: tokens per image, as Google documents them ------------------------------------------


@pytest.mark.parametrize(
    ("model", "level", "size", "tokens"),
    [
        # Gemini 3 and later: fixed budgets; no media resolution = high (1120) for images.
        ("gemini-3.5-flash", "MEDIA_RESOLUTION_LOW", (4000, 3000), 280),
        ("gemini-3.5-flash", "MEDIA_RESOLUTION_MEDIUM", (4000, 3000), 560),
        ("gemini-3.5-flash", "MEDIA_RESOLUTION_HIGH", (4000, 3000), 1120),
        ("gemini-3.5-flash", "MEDIA_RESOLUTION_ULTRA_HIGH", (4000, 3000), 2240),
        ("gemini-3.5-flash", None, (4000, 3000), 1120),
        ("gemini-3.5-flash", None, (100, 100), 1120),
        ("publishers/google/models/gemini-3-pro-preview", None, (2048, 1536), 1120),
        # Gemini 2.x with a media resolution: 64 / 256 / 256.
        ("gemini-2.5-flash", "MEDIA_RESOLUTION_LOW", (4000, 3000), 64),
        ("gemini-2.5-flash", "MEDIA_RESOLUTION_MEDIUM", (4000, 3000), 256),
        ("gemini-2.5-flash", "MEDIA_RESOLUTION_HIGH", (4000, 3000), 256),
        # Gemini 2.x without one: 258 per 768x768 tile, one tile up to 384x384.
        ("gemini-2.5-flash", None, (384, 384), 258),
        ("gemini-2.5-flash", None, (385, 200), 258),
        ("gemini-2.5-flash", None, (768, 576), 258),
        ("gemini-2.5-flash", None, (1024, 768), 2 * 258),
        ("gemini-2.5-flash", None, (2048, 1536), 6 * 258),
        ("gemini-2.0-flash", None, None, 258),  # undecodable: one tile
    ],
)
def test_image_token_count_follows_the_documented_rules(model, level, size, tokens):
    assert image_token_count(model, level, size) == tokens


def test_model_generation():
    assert model_generation("gemini-3.5-flash") == 3
    assert model_generation("models/gemini-2.5-flash") == 2
    assert model_generation("gemini-10-ultra") == 10
    assert model_generation("some-test-model") == 3


@pytest.fixture
def gemini(monkeypatch):
    for name in (
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_VERTEX_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    with FakeGeminiServer(lambda request: Answer("[]")) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        yield server


def _model_input(width: int, height: int) -> ModelInput:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "JPEG", quality=80)
    return ModelInput(buffer.getvalue(), "image/jpeg", width, height)


@pytest.mark.parametrize(
    ("model", "resolution", "size", "image"),
    [
        ("gemini-3.5-flash", "high", (1024, 768), 1120),  # sent per part
        ("gemini-3.5-flash", "", (1024, 768), 1120),  # nothing sent: Gemini 3's default
        ("gemini-3.5-flash", "low", (1024, 768), 280),
        ("gemini-2.5-flash", "low", (1024, 768), 64),  # sent in generationConfig
        ("gemini-2.5-flash", "high", (1024, 768), 256),
        ("gemini-2.5-flash", "", (1024, 768), 2 * 258),
        ("gemini-2.5-flash", "", (300, 200), 258),
    ],
)
def test_usage_metadata_counts_what_the_real_client_sent(gemini, model, resolution, size, image):
    config = Config.from_env({"GEMINI_API_KEY": "k", "GEMINI_MODEL": model, "GEMINI_MEDIA_RESOLUTION": resolution})
    detector = GeminiDetector(config)
    try:
        result = detector.detect(_model_input(*size), size, deadline=time.monotonic() + 10)
    finally:
        detector.close()
    [request] = gemini.requests
    text = estimate_text_tokens(request.system_instruction + "".join(request.texts))
    assert result.usage.prompt_tokens == image + text


# --- Cloud Storage: the threaded in-memory stand-in ----------------------------------------------


@pytest.fixture
def gcs(monkeypatch):
    with running_gcs_server() as server:
        server.create_bucket(BUCKET)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
        yield server, GcsStorage()


def _ref(storage: GcsStorage, name: str, size: int | None) -> ObjectRef:
    return ObjectRef(BUCKET, name, storage.live_generation(BUCKET, name), "image/jpeg", size)


def test_write_read_metadata_list_delete_through_the_real_client(gcs):
    server, storage = gcs
    name = "raw/ünï cødé/a b.jpg"
    assert (
        storage.write(BUCKET, name, b"\xff\xd8 bytes", content_type="image/jpeg", metadata={"source-generation": "7"})
        == f"gs://{BUCKET}/{name}"
    )
    storage.write(BUCKET, "processed/z.jpg", b"z", content_type="image/jpeg")
    storage.write(BUCKET, "processed/a.jpg", b"a", content_type="image/jpeg")

    assert storage.metadata(BUCKET, name) == {"source-generation": "7"}
    assert storage.metadata(BUCKET, "processed/z.jpg") == {}
    assert storage.metadata(BUCKET, "missing") is None
    assert storage.read(_ref(storage, name, 8), max_bytes=100) == b"\xff\xd8 bytes"
    assert storage.read(_ref(storage, name, None), max_bytes=100) == b"\xff\xd8 bytes"  # metadata, then media
    assert storage.list_names(BUCKET, "processed/") == ["processed/a.jpg", "processed/z.jpg"]
    [listed] = storage.list_objects(BUCKET, "raw/")
    assert (listed.name, listed.size, listed.content_type) == (name, 8, "image/jpeg")

    storage.delete(BUCKET, "processed/z.jpg")
    storage.delete(BUCKET, "processed/z.jpg")  # already gone: fine
    assert storage.list_names(BUCKET, "processed/") == ["processed/a.jpg"]
    assert server.store.object_count() == 2


def test_generations_are_exact_and_increase(gcs):
    _, storage = gcs
    storage.write(BUCKET, "raw/a.jpg", b"first", content_type="image/jpeg")
    first = _ref(storage, "raw/a.jpg", 5)
    storage.write(BUCKET, "raw/a.jpg", b"second", content_type="image/jpeg")
    second = _ref(storage, "raw/a.jpg", 6)

    assert second.generation > first.generation
    assert storage.read(second, max_bytes=100) == b"second"
    with pytest.raises(ObjectGoneError):
        storage.read(first, max_bytes=100)  # only the live generation exists, as without versioning


def test_media_answers_carry_generation_and_hash_headers(gcs):
    _server, storage = gcs
    storage.write(BUCKET, "raw/a.jpg", b"abc", content_type="image/jpeg")
    blob = storage.client.bucket(BUCKET).blob("raw/a.jpg")
    assert blob.download_as_bytes(checksum="crc32c") == b"abc"  # checked against X-Goog-Hash
    assert blob.generation == storage.live_generation(BUCKET, "raw/a.jpg")


def test_a_mismatched_checksum_and_a_failed_precondition_are_refused(gcs):
    _, storage = gcs
    bucket = storage.client.bucket(BUCKET)
    blob = bucket.blob("raw/a.jpg")
    blob.crc32c = "AAAAAA=="
    with pytest.raises(Exception, match="400"):
        blob.upload_from_string(b"abc", checksum=None)
    bucket.blob("raw/b.jpg").upload_from_string(b"b")
    with pytest.raises(Exception, match="412"):
        bucket.blob("raw/b.jpg").upload_from_string(b"again", if_generation_match=0)


def test_large_objects_go_through_resumable_uploads(gcs):
    _, storage = gcs
    data = os.urandom(9 * 2**20)  # above the client's multipart limit (8 MiB)
    blob = storage.client.bucket(BUCKET).blob("raw/big.bin")
    blob.upload_from_string(data, content_type="application/octet-stream")
    assert blob.size == len(data)
    assert storage.client.bucket(BUCKET).blob("raw/big.bin").download_as_bytes() == data


def test_unknown_bucket_and_unimplemented_calls_fail_loudly(gcs):
    _, storage = gcs
    with pytest.raises(PermanentError, match="404"):
        storage.write("no-such-bucket", "a", b"a", content_type="image/jpeg")
    with pytest.raises(Exception, match="501"):
        storage.client.bucket(BUCKET).blob("raw/a.jpg").rewrite(storage.client.bucket(BUCKET).blob("raw/b.jpg"))


def test_one_slow_client_does_not_hold_up_the_others(gcs):
    server, storage = gcs
    host, port = server.server_address[:2]
    with socket.create_connection((host, port)) as slow:
        # A request whose body never comes: its thread waits for it, the others go on.
        slow.sendall(
            f"POST /upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=x HTTP/1.1\r\n"
            f"Host: {host}\r\nContent-Length: 10\r\n\r\n".encode()
        )
        errors: list[BaseException] = []

        def write(i: int) -> None:
            try:
                storage.write(BUCKET, f"processed/{i}.jpg", b"x" * 1000, content_type="image/jpeg")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert not errors and not any(thread.is_alive() for thread in threads)
        assert len(storage.list_names(BUCKET, "processed/")) == 16


def test_partial_responses():
    listing = {"kind": "storage#objects", "items": [{"name": "a", "size": "1", "crc32c": "x"}], "nextPageToken": "t"}
    assert select_fields(listing, "items(name,size),nextPageToken") == {
        "items": [{"name": "a", "size": "1"}],
        "nextPageToken": "t",
    }
    assert select_fields(listing, None) == listing
