"""Local emulation with Cloud Storage's generation semantics (`devtools.local` +
`devtools.local_storage`): every generation is delivered, each event reads exactly its own
generation, and preconditions fail with 412 as on Cloud Storage.

Everything goes through the local runner: the storage stand-in in its own process, the real
google-cloud-storage client, the event bridge following the stand-in's write log, and the real
function under functions-framework (with the Gemini wire stand-in as the model).
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import pytest
from google.api_core.exceptions import NotFound, PreconditionFailed
from PIL import Image

from devtools import local
from devtools.standins.gemini_server import Answer, FakeGeminiServer, RecordedRequest
from segmentation.events import object_ref_from_event
from segmentation.sink import SqliteSink
from tests.harness import free_port, wait_for

BUCKET = "local-generations"
NAME = "raw/cam3/belt.jpg"
API_KEY = "local-generations-key"
OLD_SIZE, NEW_SIZE = (640, 480), (800, 600)


def jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def boxes(n: int) -> str:
    return json.dumps(
        [{"box_2d": [100 + 150 * i, 100, 200 + 150 * i, 400], "label": f"item {i + 1}"} for i in range(n)]
    )


def stack_for(tmp_path, gemini: FakeGeminiServer, **kwargs) -> local.LocalStack:
    return local.LocalStack(
        bucket=BUCKET,
        storage_port=free_port(),
        function_port=free_port(),
        data_dir=tmp_path,
        extra_env={
            "GOOGLE_GEMINI_BASE_URL": gemini.base_url,
            "GEMINI_API_KEY": API_KEY,
            "GOOGLE_API_KEY": "",
            "GOOGLE_CLOUD_PROJECT": "",
            "BQ_OBJECTS_TABLE": "",
            "BQ_IMAGES_TABLE": "",
            "EMPTY_BELT_GATE_CAMERAS": "",
            "OFFLINE_FALLBACK": "false",
            "RETRY_DEADLINE_S": "30",
            "EMBEDDER": "off",  # the model's requests here are the detection calls
        },
        **kwargs,
    )


class HeldBridge(local.EventBridge):
    """The local bridge, except that the newer generation's event waits until the older one's
    delivery has reached the model: the two then overlap in a known order."""

    def __init__(self, *args, hold_generation: int, until: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.hold_generation, self.until = hold_generation, until

    def deliver(self, data: dict) -> None:
        if int(data["generation"]) == self.hold_generation:
            self.until.wait(60)
        super().deliver(data)


def test_two_generations_within_one_poll_are_both_delivered_and_the_newer_one_keeps_its_outputs(tmp_path):
    sink_path = tmp_path / "results.sqlite"
    old_asked = threading.Event()

    def new_row_written() -> bool:
        return sink_path.exists() and any(
            row["source_generation"] == new_generation for row in SqliteSink(sink_path).rows("images")
        )

    def answer(request: RecordedRequest) -> Answer:
        size = Image.open(io.BytesIO(request.image_bytes)).size
        if size == OLD_SIZE:
            # The older generation is being detected: let the newer one's event in, and answer
            # only once the newer generation has finished, so the older one writes last.
            old_asked.set()
            wait_for(new_row_written)
            return Answer(boxes(3))
        return Answer(boxes(5))

    with FakeGeminiServer(answer) as gemini, stack_for(tmp_path, gemini, bridge=False) as stack:
        client = local.storage_client(stack.storage_url)
        blob = client.bucket(BUCKET).blob(NAME)
        # Two generations of one name before the bridge's first poll: a listing of live objects
        # would show only the second.
        blob.upload_from_string(jpeg(OLD_SIZE, (200, 30, 30)), content_type="image/jpeg")
        old_generation = blob.generation
        blob.upload_from_string(jpeg(NEW_SIZE, (30, 30, 200)), content_type="image/jpeg")
        new_generation = blob.generation
        assert new_generation > old_generation

        bridge = HeldBridge(
            stack.storage_url, BUCKET, "raw/", stack.function_url, hold_generation=new_generation, until=old_asked
        ).start()
        try:
            wait_for(lambda: len(bridge.delivered) == 2)
        finally:
            bridge.stop()
        outputs = {b.name: b for b in client.list_blobs(BUCKET, prefix="processed")}

    # Both generations were delivered, and the function acknowledged both.
    assert bridge.delivered == {(NAME, old_generation): 200, (NAME, new_generation): 200}
    # Each event read its own generation's bytes (the older one through ?generation=).
    sizes = sorted(Image.open(io.BytesIO(request.image_bytes)).size for request in gemini.requests)
    assert sizes == sorted([OLD_SIZE, NEW_SIZE])

    # End state: the newer generation's rows, crops, overview and marker, nothing of the older.
    images = SqliteSink(sink_path).rows("images")
    assert [(row["source_generation"], row["status"], row["objects_found"]) for row in images] == [
        (new_generation, "ok", 5)
    ]
    objects = SqliteSink(sink_path).rows("objects")
    assert sorted(row["object_index"] for row in objects) == [1, 2, 3, 4, 5]
    assert {row["source_generation"] for row in objects} == {new_generation}
    crops = {f"processed/cam3/belt.jpg-output-{i:04d}.jpg" for i in range(1, 6)}
    overview = "processed-overview/cam3/processed_belt.jpg.jpg"
    marker = "processed-markers/cam3/belt.jpg.json"
    assert crops | {overview, marker} <= set(outputs)
    assert {row["output_uri"] for row in objects} == {f"gs://{BUCKET}/{name}" for name in crops}
    assert {row["overview_uri"] for row in images} == {f"gs://{BUCKET}/{overview}"}
    for name in crops | {overview, marker}:
        assert outputs[name].metadata["source-generation"] == str(new_generation), name
    assert not [name for name in outputs if name.startswith("processed/") and name not in crops]


def test_every_finalized_generation_is_in_the_write_log_in_order(tmp_path):
    with FakeGeminiServer() as gemini, stack_for(tmp_path, gemini, bridge=False) as stack:
        bucket = local.storage_client(stack.storage_url).bucket(BUCKET)
        generations = []
        for data in (b"first", b"second generation"):
            blob = bucket.blob(NAME)
            blob.upload_from_string(data, content_type="image/jpeg")
            generations.append(blob.generation)
        bucket.blob("raw/cam3/other.png").upload_from_string(b"png", content_type="image/png")
        bridge = local.EventBridge(stack.storage_url, BUCKET, "raw/cam3/b", stack.function_url)
        events = bridge.poll()
        assert bridge.poll() == []  # followed: the next poll only has what is written after

    assert [(event["name"], int(event["generation"])) for event in events] == [(NAME, g) for g in generations]
    second = events[1]
    assert (second["bucket"], second["contentType"], second["size"], second["metageneration"]) == (
        BUCKET,
        "image/jpeg",
        str(len(b"second generation")),
        "1",
    )
    # What the bridge posts is an object-finalize event the function reads as that generation.
    headers, body = local.finalize_event(BUCKET, {k: v for k, v in second.items() if k != "seq"})
    ref = object_ref_from_event({"type": headers["ce-type"]}, json.loads(body))
    assert (ref.name, ref.generation, ref.size) == (NAME, generations[1], len(b"second generation"))
    assert ref.created is not None


@pytest.mark.parametrize("versioning", [True, False])
def test_generations_and_preconditions_behave_like_cloud_storage(tmp_path, versioning):
    with FakeGeminiServer() as gemini, stack_for(tmp_path, gemini, bridge=False, versioning=versioning) as stack:
        bucket = local.storage_client(stack.storage_url).bucket(BUCKET)
        blob = bucket.blob(NAME)
        blob.upload_from_string(b"old bytes", content_type="image/jpeg", if_generation_match=0)
        old = blob.generation
        # A create-only write of an existing object fails with 412, as on Cloud Storage.
        with pytest.raises(PreconditionFailed) as refused:
            bucket.blob(NAME).upload_from_string(b"clobber", content_type="image/jpeg", if_generation_match=0)
        assert refused.value.code == 412
        blob.upload_from_string(b"new bytes", content_type="image/jpeg", if_generation_match=old)
        new = blob.generation
        with pytest.raises(PreconditionFailed):
            bucket.blob(NAME).upload_from_string(b"stale", content_type="image/jpeg", if_generation_match=old)
        with pytest.raises(PreconditionFailed):
            bucket.delete_blob(NAME, if_generation_match=old)

        # The raw JSON API answers the same 412 in Cloud Storage's error shape.
        request = urllib.request.Request(
            f"{stack.storage_url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=raw/x.jpg&ifGenerationMatch=5",
            data=b"x",
            headers={"Content-Type": "image/jpeg"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as raw:
            urllib.request.urlopen(request, timeout=10)
        assert raw.value.code == 412
        assert json.load(raw.value)["error"]["errors"][0]["reason"] == "conditionNotMet"

        # Exactly the generation asked for: the live one, the replaced one only with versioning.
        assert bucket.blob(NAME, generation=new).download_as_bytes() == b"new bytes"
        assert bucket.blob(NAME).download_as_bytes() == b"new bytes"
        replaced = bucket.blob(NAME, generation=old)
        if versioning:
            assert replaced.download_as_bytes() == b"old bytes"
            assert bucket.get_blob(NAME, generation=old).generation == old
        else:
            with pytest.raises(NotFound):
                replaced.download_as_bytes()
            assert bucket.get_blob(NAME, generation=old) is None
        assert [b.generation for b in bucket.list_blobs(prefix="raw/")] == [new]


def test_objects_persist_under_the_data_dir_across_restarts(tmp_path):
    names = {NAME: b"camera bytes", "raw/../escape.jpg": b"odd name", "raw/a": b"file", "raw/a/b": b"under a"}
    with FakeGeminiServer() as gemini:
        with stack_for(tmp_path, gemini, bridge=False) as stack:
            bucket = local.storage_client(stack.storage_url).bucket(BUCKET)
            generations = {}
            for name, data in names.items():
                blob = bucket.blob(name)
                blob.upload_from_string(data, content_type="image/jpeg")
                generations[name] = blob.generation
            bucket.blob("raw/gone.jpg").upload_from_string(b"deleted", content_type="image/jpeg")
            bucket.delete_blob("raw/gone.jpg")
        # A person finds the bytes under the object's own name; no name escapes the bucket's folder.
        assert (tmp_path / "gcs" / BUCKET / NAME).read_bytes() == b"camera bytes"
        assert (
            not (tmp_path / "gcs" / "escape.jpg").exists() and not (tmp_path / "gcs" / BUCKET / "escape.jpg").exists()
        )

        with stack_for(tmp_path, gemini, bridge=False) as stack:
            bucket = local.storage_client(stack.storage_url).bucket(BUCKET)
            after = {blob.name: blob.generation for blob in bucket.list_blobs()}
            contents = {name: bucket.blob(name, generation=generations[name]).download_as_bytes() for name in names}
            blob = bucket.blob("raw/new.jpg")
            blob.upload_from_string(b"new", content_type="image/jpeg")

    assert after == generations
    assert contents == names
    assert blob.generation > max(generations.values())  # generations keep increasing after a restart
