"""GcsStorage through the real google-cloud-storage client against gcp-storage-emulator over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools.standins.storage_emulator import StorageEmulator, running_storage_emulator
from segmentation.detections import ObjectRef
from segmentation.errors import ImageTooLargeError, ObjectGoneError, PermanentError, TransientError
from segmentation.retry import retry_call
from segmentation.storage import GcsStorage

BUCKET = "conveyor-test"
REPO = Path(__file__).resolve().parents[1]


def _use(monkeypatch: pytest.MonkeyPatch, emulator: StorageEmulator) -> GcsStorage:
    """Point a fresh GcsStorage (lazy default client) at `emulator`, with BUCKET created."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.delenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", raising=False)
    emulator.create_bucket(BUCKET)
    return GcsStorage()


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch, storage_emulator: StorageEmulator) -> GcsStorage:
    return _use(monkeypatch, storage_emulator)


def _put(gcs: GcsStorage, emulator: StorageEmulator, name: str, data: bytes) -> ObjectRef:
    """Write an object and return the ObjectRef a finalize event for it would carry."""
    gcs.write(BUCKET, name, data, content_type="image/jpeg")
    return ObjectRef(
        BUCKET, name, generation=emulator.live_generation(BUCKET, name), content_type="image/jpeg", size=len(data)
    )


# --- round trips ---------------------------------------------------------------------------


def test_write_metadata_list_delete_round_trip(gcs: GcsStorage) -> None:
    uri = gcs.write(
        BUCKET,
        "processed/a b-output-0001.jpg",
        b"crop",
        content_type="image/jpeg",
        metadata={"source_generation": "17", "objects": "3"},
    )
    gcs.write(BUCKET, "processed/z.jpg", b"z", content_type="image/jpeg")
    gcs.write(BUCKET, "raw/other.jpg", b"o", content_type="image/jpeg")

    assert uri == f"gs://{BUCKET}/processed/a b-output-0001.jpg"
    assert gcs.metadata(BUCKET, "processed/a b-output-0001.jpg") == {"source_generation": "17", "objects": "3"}
    assert gcs.metadata(BUCKET, "processed/z.jpg") == {}
    assert gcs.metadata(BUCKET, "processed/missing.jpg") is None
    assert gcs.list_names(BUCKET, "processed/") == ["processed/a b-output-0001.jpg", "processed/z.jpg"]
    assert gcs.list_names(BUCKET, "nothing/") == []

    gcs.delete(BUCKET, "processed/z.jpg")
    gcs.delete(BUCKET, "processed/z.jpg")  # already gone: fine
    assert gcs.list_names(BUCKET, "processed/") == ["processed/a b-output-0001.jpg"]
    assert gcs.metadata(BUCKET, "processed/z.jpg") is None


def test_read_returns_the_event_generation_and_asks_for_it(gcs: GcsStorage, storage_emulator: StorageEmulator) -> None:
    ref = _put(gcs, storage_emulator, "raw/ünï cødé.jpg", b"\xff\xd8 image bytes")
    storage_emulator.clear_requests()

    assert gcs.read(ref, max_bytes=1000) == b"\xff\xd8 image bytes"

    (media,) = storage_emulator.requests  # size known from the event: no metadata request
    assert media.is_media and media.path.endswith("/o/raw/ünï cødé.jpg")
    assert media.query["generation"] == [str(ref.generation)]


def test_read_without_event_size_checks_metadata_then_downloads_that_generation(
    gcs: GcsStorage, storage_emulator: StorageEmulator
) -> None:
    ref = _put(gcs, storage_emulator, "raw/a.jpg", b"abc")
    storage_emulator.clear_requests()

    assert gcs.read(ObjectRef(BUCKET, "raw/a.jpg"), max_bytes=10) == b"abc"

    info, media = storage_emulator.requests
    assert not info.is_media and media.is_media
    # No generation in the event: the download is pinned to the generation whose size was checked.
    assert media.query["generation"] == [str(ref.generation)]


def test_read_works_against_the_stock_emulator_without_generation_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    with running_storage_emulator(generations="stock") as emulator:
        gcs = _use(monkeypatch, emulator)
        ref = _put(gcs, emulator, "raw/a.jpg", b"abc")
        assert gcs.read(ref, max_bytes=10) == b"abc"
        assert gcs.read(ObjectRef(BUCKET, "raw/a.jpg"), max_bytes=10) == b"abc"


# --- refusals ------------------------------------------------------------------------------


def test_too_large_by_event_size_is_refused_without_any_request(
    gcs: GcsStorage, storage_emulator: StorageEmulator
) -> None:
    ref = _put(gcs, storage_emulator, "raw/big.jpg", b"x" * 101)
    storage_emulator.clear_requests()

    with pytest.raises(ImageTooLargeError, match="101 bytes"):
        gcs.read(ref, max_bytes=100)
    assert storage_emulator.requests == []


def test_too_large_by_metadata_is_refused_without_download(gcs: GcsStorage, storage_emulator: StorageEmulator) -> None:
    ref = _put(gcs, storage_emulator, "raw/big.jpg", b"x" * 101)
    storage_emulator.clear_requests()

    with pytest.raises(ImageTooLargeError, match="101 bytes"):
        gcs.read(ObjectRef(BUCKET, ref.name, generation=ref.generation), max_bytes=100)
    assert len(storage_emulator.requests) == 1
    assert storage_emulator.media_requests() == []


@pytest.mark.parametrize("size_known", [True, False])
def test_missing_object_is_gone(gcs: GcsStorage, size_known: bool) -> None:
    ref = ObjectRef(BUCKET, "raw/never.jpg", generation=123, size=10 if size_known else None)
    with pytest.raises(ObjectGoneError):
        gcs.read(ref, max_bytes=100)


@pytest.mark.parametrize("size_known", [True, False])
def test_superseded_generation_is_gone(gcs: GcsStorage, storage_emulator: StorageEmulator, size_known: bool) -> None:
    old = _put(gcs, storage_emulator, "raw/a.jpg", b"first")
    _put(gcs, storage_emulator, "raw/a.jpg", b"second")
    ref = old if size_known else ObjectRef(BUCKET, old.name, generation=old.generation)

    with pytest.raises(ObjectGoneError):
        gcs.read(ref, max_bytes=100)


@pytest.mark.parametrize("size_known", [True, False])
def test_served_generation_differing_from_the_event_is_gone(monkeypatch: pytest.MonkeyPatch, size_known: bool) -> None:
    """A server that hands out the live object instead of the asked-for generation is caught."""
    with running_storage_emulator(generations="serve-live") as emulator:
        gcs = _use(monkeypatch, emulator)
        old = _put(gcs, emulator, "raw/a.jpg", b"first")
        new = _put(gcs, emulator, "raw/a.jpg", b"second")
        ref = old if size_known else ObjectRef(BUCKET, old.name, generation=old.generation)

        with pytest.raises(ObjectGoneError, match=f"generation {old.generation} was replaced by {new.generation}"):
            gcs.read(ref, max_bytes=100)


def test_conditional_write_only_replaces_the_generation_it_read(gcs: GcsStorage) -> None:
    from segmentation.errors import WriteConflictError

    name = "processed-markers/a.png.json"
    gcs.write(BUCKET, name, b"first", content_type="application/json", if_generation_match=0)  # create only
    first = gcs.object_state(BUCKET, name)
    assert first is not None and first.generation > 0 and first.metadata == {}
    with pytest.raises(WriteConflictError):  # it exists now
        gcs.write(BUCKET, name, b"again", content_type="application/json", if_generation_match=0)

    gcs.write(
        BUCKET,
        name,
        b"second",
        content_type="application/json",
        metadata={"status": "ok"},
        if_generation_match=first.generation,
    )
    second = gcs.object_state(BUCKET, name)
    assert second.generation != first.generation and second.metadata == {"status": "ok"}
    with pytest.raises(WriteConflictError):  # somebody wrote since `first` was read
        gcs.write(BUCKET, name, b"stale", content_type="application/json", if_generation_match=first.generation)
    assert gcs.object_state(BUCKET, name) == second
    assert gcs.object_state(BUCKET, "processed-markers/missing.json") is None


def test_conditional_delete_only_removes_the_generation_it_read(gcs: GcsStorage) -> None:
    from segmentation.errors import WriteConflictError

    name = "processed/a-output-0001.jpg"
    gcs.write(BUCKET, name, b"older", content_type="image/jpeg")
    read = gcs.object_state(BUCKET, name)
    gcs.write(BUCKET, name, b"newer", content_type="image/jpeg")  # somebody wrote since
    with pytest.raises(WriteConflictError):
        gcs.delete(BUCKET, name, if_generation_match=read.generation)
    newer = gcs.object_state(BUCKET, name)
    assert newer is not None and newer.generation != read.generation

    gcs.delete(BUCKET, name, if_generation_match=newer.generation)
    assert gcs.object_state(BUCKET, name) is None
    gcs.delete(BUCKET, name, if_generation_match=newer.generation)  # already gone: fine


def test_write_to_a_missing_bucket_is_permanent_not_gone(gcs: GcsStorage) -> None:
    with pytest.raises(PermanentError) as caught:
        gcs.write("no-such-bucket", "x.jpg", b"x", content_type="image/jpeg")
    assert not isinstance(caught.value, ObjectGoneError)


# --- error classification ------------------------------------------------------------------

OPERATIONS = {
    "read": ("GET", lambda gcs, ref: gcs.read(ref, max_bytes=100)),
    "read-metadata": ("GET", lambda gcs, ref: gcs.read(ObjectRef(BUCKET, ref.name), max_bytes=100)),
    "write": ("POST", lambda gcs, ref: gcs.write(BUCKET, ref.name, b"new", content_type="image/jpeg")),
    "metadata": ("GET", lambda gcs, ref: gcs.metadata(BUCKET, ref.name)),
    "list": ("GET", lambda gcs, ref: gcs.list_names(BUCKET, "raw/")),
    "delete": ("DELETE", lambda gcs, ref: gcs.delete(BUCKET, ref.name)),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_server_errors_are_transient(
    gcs: GcsStorage, storage_emulator: StorageEmulator, operation: str, status: int
) -> None:
    ref = _put(gcs, storage_emulator, "raw/a.jpg", b"abc")
    method, call = OPERATIONS[operation]
    storage_emulator.fail_next(1, method=method, status=status, retry_after=7)

    with pytest.raises(TransientError) as caught:
        call(gcs, ref)
    assert caught.value.retry_after == 7
    call(gcs, ref)  # the fault was used up; the library did not retry by itself


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_other_client_errors_are_permanent(gcs: GcsStorage, storage_emulator: StorageEmulator, operation: str) -> None:
    ref = _put(gcs, storage_emulator, "raw/a.jpg", b"abc")
    method, call = OPERATIONS[operation]
    storage_emulator.fail_next(1, method=method, status=403)

    with pytest.raises(PermanentError):
        call(gcs, ref)


def test_retry_call_recovers_from_503s_and_each_attempt_is_one_request(
    gcs: GcsStorage, storage_emulator: StorageEmulator
) -> None:
    ref = _put(gcs, storage_emulator, "raw/a.jpg", b"abc")
    storage_emulator.clear_requests()
    storage_emulator.fail_next(2, method="GET", path=r"^/download/", status=503)

    data = retry_call(lambda: gcs.read(ref, max_bytes=100), deadline=time.monotonic() + 10, base_delay=0.01)

    assert data == b"abc"
    assert len(storage_emulator.media_requests()) == 3


def test_connection_refused_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    gcs = GcsStorage()
    with pytest.raises(TransientError):
        gcs.read(ObjectRef(BUCKET, "raw/a.jpg", generation=1, size=3), max_bytes=100)
    with pytest.raises(TransientError):
        gcs.write(BUCKET, "x.jpg", b"x", content_type="image/jpeg")


# --- client handling -----------------------------------------------------------------------


def test_lazy_client_is_created_once_across_threads(gcs: GcsStorage) -> None:
    clients = []
    threads = [threading.Thread(target=lambda: clients.append(gcs.client)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in clients}) == 1


def test_injected_client_is_used(monkeypatch: pytest.MonkeyPatch, storage_emulator: StorageEmulator) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    storage_emulator.create_bucket(BUCKET)
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": storage_emulator.url}
    )
    gcs = GcsStorage(client)
    gcs.write(BUCKET, "a.txt", b"hi", content_type="text/plain")
    assert gcs.read(ObjectRef(BUCKET, "a.txt"), max_bytes=10) == b"hi"


def test_importing_storage_and_sink_loads_no_google_client_library() -> None:
    """The clients cost ~250 ms of cold start; they load on first use ("google" and
    "google.cloud" themselves are namespace packages that site already imports)."""
    code = "import json, sys, segmentation.storage, segmentation.sink; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = set(json.loads(result.stdout))
    assert not {m for m in loaded if m.startswith("google.") and m != "google.cloud"}
    assert not {"requests", "email.utils"} & loaded


def test_the_default_client_never_reads_bucket_metadata(gcs: GcsStorage, storage_emulator: StorageEmulator) -> None:
    """The function's service account has no storage.buckets.get: the client must not need it."""
    uri = gcs.write(BUCKET, "processed/a.jpg", b"x", content_type="image/jpeg")
    assert gcs.metadata(BUCKET, "processed/a.jpg") == {}
    gcs.list_names(BUCKET, "processed/")
    time.sleep(0.3)  # the library's cache fetches from a background thread
    bucket_reads = [r for r in storage_emulator.requests if r.method == "GET" and r.path == f"/storage/v1/b/{BUCKET}"]
    assert uri == f"gs://{BUCKET}/processed/a.jpg" and bucket_reads == []
