"""One set of assertions on the `Storage` contract, run against `MemoryStorage` and against
`GcsStorage` (the real google-cloud-storage client) on both generation-exact storage stand-ins:
what the in-memory storage of the fast tests does is what the production class does."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.standins.gcs_server import running_gcs_server
from devtools.standins.storage_emulator import running_storage_emulator
from segmentation.detections import ObjectRef
from segmentation.errors import ImageTooLargeError, ObjectGoneError, PermanentError, WriteConflictError
from segmentation.memory_storage import MemoryStorage
from segmentation.storage import GcsStorage, ObjectState, Storage

BUCKET = "contract-test"


@pytest.fixture(
    params=[
        "memory",
        pytest.param("gcs-emulator", marks=pytest.mark.emulator),
        pytest.param("gcs-stand-in", marks=pytest.mark.emulator),
    ]
)
def storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Storage]:
    if request.param == "memory":
        yield MemoryStorage(buckets=[BUCKET])
        return
    monkeypatch.delenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", raising=False)
    if request.param == "gcs-emulator":
        with running_storage_emulator() as emulator:
            emulator.create_bucket(BUCKET)
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
            yield GcsStorage()
    else:
        with running_gcs_server() as server:
            server.create_bucket(BUCKET)
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
            yield GcsStorage()


def test_a_write_is_read_back_with_its_generation_and_metadata(storage: Storage) -> None:
    uri = storage.write(BUCKET, "raw/a b.jpg", b"first", content_type="image/jpeg", metadata={"k": "v"})

    generation = storage.live_generation(BUCKET, "raw/a b.jpg")
    assert uri == f"gs://{BUCKET}/raw/a b.jpg"
    assert isinstance(generation, int) and generation > 0
    assert storage.object_state(BUCKET, "raw/a b.jpg") == ObjectState(generation, {"k": "v"})
    assert storage.metadata(BUCKET, "raw/a b.jpg") == {"k": "v"}
    assert storage.read(ObjectRef(BUCKET, "raw/a b.jpg", generation), max_bytes=100) == b"first"
    assert storage.read(ObjectRef(BUCKET, "raw/a b.jpg"), max_bytes=100) == b"first"

    storage.write(BUCKET, "raw/plain.jpg", b"x", content_type="image/jpeg")
    assert storage.metadata(BUCKET, "raw/plain.jpg") == {}


def test_a_missing_object_is_none_to_the_metadata_calls(storage: Storage) -> None:
    assert storage.metadata(BUCKET, "nothing.jpg") is None
    assert storage.object_state(BUCKET, "nothing.jpg") is None
    assert storage.live_generation(BUCKET, "nothing.jpg") is None


def test_every_write_makes_a_newer_generation_and_only_the_live_one_is_readable(storage: Storage) -> None:
    storage.write(BUCKET, "raw/a.jpg", b"old", content_type="image/jpeg")
    old = storage.live_generation(BUCKET, "raw/a.jpg")
    storage.write(BUCKET, "raw/a.jpg", b"new", content_type="image/jpeg")
    storage.write(BUCKET, "raw/other.jpg", b"o", content_type="image/jpeg")
    new = storage.live_generation(BUCKET, "raw/a.jpg")
    other = storage.live_generation(BUCKET, "raw/other.jpg")

    assert old is not None and new is not None and other is not None
    assert old < new < other  # monotonic within the bucket
    assert storage.read(ObjectRef(BUCKET, "raw/a.jpg", new), max_bytes=100) == b"new"
    with pytest.raises(ObjectGoneError):
        storage.read(ObjectRef(BUCKET, "raw/a.jpg", old), max_bytes=100)
    with pytest.raises(ObjectGoneError):
        storage.read(ObjectRef(BUCKET, "raw/a.jpg", old, size=3), max_bytes=100)
    with pytest.raises(ObjectGoneError):
        storage.read(ObjectRef(BUCKET, "raw/missing.jpg"), max_bytes=100)


def test_reads_past_the_size_limit_are_refused(storage: Storage) -> None:
    storage.write(BUCKET, "raw/big.jpg", b"0123456789", content_type="image/jpeg")
    generation = storage.live_generation(BUCKET, "raw/big.jpg")

    with pytest.raises(ImageTooLargeError):
        storage.read(ObjectRef(BUCKET, "raw/big.jpg", generation), max_bytes=9)
    with pytest.raises(ImageTooLargeError):
        storage.read(ObjectRef(BUCKET, "raw/big.jpg", generation, size=10), max_bytes=9)
    assert storage.read(ObjectRef(BUCKET, "raw/big.jpg", generation, size=10), max_bytes=10) == b"0123456789"


def test_if_generation_match_writes_only_over_the_named_generation(storage: Storage) -> None:
    storage.write(BUCKET, "m.json", b"1", content_type="application/json", if_generation_match=0)
    first = storage.live_generation(BUCKET, "m.json")
    with pytest.raises(WriteConflictError):  # 0: only if there is none
        storage.write(BUCKET, "m.json", b"2", content_type="application/json", if_generation_match=0)
    assert first is not None
    storage.write(
        BUCKET, "m.json", b"2", content_type="application/json", metadata={"n": "2"}, if_generation_match=first
    )
    with pytest.raises(WriteConflictError):  # `first` is no longer live
        storage.write(BUCKET, "m.json", b"3", content_type="application/json", if_generation_match=first)
    with pytest.raises(WriteConflictError):  # a generation that never existed
        storage.write(BUCKET, "absent.json", b"3", content_type="application/json", if_generation_match=first)

    assert storage.read(ObjectRef(BUCKET, "m.json"), max_bytes=10) == b"2"
    assert storage.metadata(BUCKET, "m.json") == {"n": "2"}
    assert storage.metadata(BUCKET, "absent.json") is None


def test_only_one_of_concurrent_creates_wins(storage: Storage) -> None:
    def create(index: int) -> bool:
        try:
            storage.write(BUCKET, "claim", str(index).encode(), content_type="text/plain", if_generation_match=0)
        except WriteConflictError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(create, range(8)))

    assert won.count(True) == 1
    assert storage.read(ObjectRef(BUCKET, "claim"), max_bytes=10) == str(won.index(True)).encode()


def test_listing_is_by_prefix_sorted_with_generation_type_and_size(storage: Storage) -> None:
    storage.write(BUCKET, "processed/b.jpg", b"bb", content_type="image/jpeg")
    storage.write(BUCKET, "processed/a.jpg", b"a", content_type="image/png")
    storage.write(BUCKET, "raw/c.jpg", b"ccc", content_type="image/jpeg")

    assert storage.list_names(BUCKET, "processed/") == ["processed/a.jpg", "processed/b.jpg"]
    assert storage.list_names(BUCKET, "nothing/") == []
    assert storage.list_objects(BUCKET, "processed/") == [
        ObjectRef(BUCKET, "processed/a.jpg", storage.live_generation(BUCKET, "processed/a.jpg"), "image/png", 1),
        ObjectRef(BUCKET, "processed/b.jpg", storage.live_generation(BUCKET, "processed/b.jpg"), "image/jpeg", 2),
    ]


def test_delete_honours_its_precondition_and_a_missing_object_is_fine(storage: Storage) -> None:
    storage.write(BUCKET, "x.jpg", b"1", content_type="image/jpeg")
    stale = storage.live_generation(BUCKET, "x.jpg")
    storage.write(BUCKET, "x.jpg", b"2", content_type="image/jpeg")
    live = storage.live_generation(BUCKET, "x.jpg")
    assert stale is not None and live is not None

    with pytest.raises(WriteConflictError):
        storage.delete(BUCKET, "x.jpg", if_generation_match=stale)
    assert storage.live_generation(BUCKET, "x.jpg") == live
    storage.delete(BUCKET, "x.jpg", if_generation_match=live)
    assert storage.object_state(BUCKET, "x.jpg") is None

    storage.delete(BUCKET, "x.jpg")
    storage.delete(BUCKET, "x.jpg", if_generation_match=live)
    storage.write(BUCKET, "y.jpg", b"1", content_type="image/jpeg")
    storage.delete(BUCKET, "y.jpg")
    assert storage.list_names(BUCKET, "") == []


def test_a_missing_bucket_is_a_permanent_error_for_writes_and_listings(storage: Storage) -> None:
    with pytest.raises(PermanentError) as write_error:
        storage.write("no-such-bucket", "a.jpg", b"1", content_type="image/jpeg")
    assert not isinstance(write_error.value, WriteConflictError)
    with pytest.raises(PermanentError):
        storage.list_names("no-such-bucket", "")
    with pytest.raises(ObjectGoneError):
        storage.read(ObjectRef("no-such-bucket", "a.jpg"), max_bytes=10)
    assert storage.object_state("no-such-bucket", "a.jpg") is None
