"""A separate outputs bucket (OUTPUT_BUCKET): crops, overview, completion marker and claim go
there, the upload's bucket is only read, and what the function writes no longer fires events it
must ignore. Through the real function over HTTP (functions-framework, google-cloud-storage and
google-genai against the stand-ins), plus static checks of terraform/outputs_bucket.tf."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.harness import BUCKET, Stack, boxes_answer, running_stack
from tests.test_terraform import block, config, default_of, ref, resource

OUTPUTS = "conveyor-test-outputs"
OBJECTS = 3
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def photo(size: tuple[int, int] = (400, 300)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


@contextlib.contextmanager
def stack_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output_bucket: str | None) -> Iterator[Stack]:
    """The function with Gemini only (no gate, no fallback), OUTPUT_BUCKET as given (None: unset),
    and the outputs bucket created in the storage emulator beside the images bucket."""
    monkeypatch.setenv("OFFLINE_FALLBACK", "false")
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "")
    if output_bucket is None:
        monkeypatch.delenv("OUTPUT_BUCKET", raising=False)
    else:
        monkeypatch.setenv("OUTPUT_BUCKET", output_bucket)
    with running_stack(tmp_path / f"results-{output_bucket or 'one'}.sqlite", monkeypatch) as running:
        if output_bucket:
            running.emulator.create_bucket(output_bucket)
        running.gemini.reset(lambda request: boxes_answer(OBJECTS))
        yield running


def listing(stack: Stack, bucket: str) -> dict[str, int]:
    return {blob.name: blob.generation for blob in stack.client.list_blobs(bucket)}


def writes_to(stack: Stack, bucket: str) -> list:
    """The mutating requests the emulator saw for objects of `bucket` (uploads are /upload/...)."""
    return [r for r in stack.emulator.requests if r.method in WRITES and (f"/b/{bucket}/o" in r.path)]


# --- through the function ---------------------------------------------------------------------------


def test_outputs_marker_and_claim_go_to_the_outputs_bucket_and_the_source_is_never_written(tmp_path, monkeypatch):
    with stack_with(tmp_path, monkeypatch, OUTPUTS) as stack:
        blob = stack.upload("raw/cam1/belt.jpg", photo(), "image/jpeg")
        source_before = listing(stack, BUCKET)
        stack.emulator.clear_requests()

        assert stack.deliver(stack.event_for(blob)).status_code == 200

        assert listing(stack, BUCKET) == source_before
        assert writes_to(stack, BUCKET) == []
        outputs = listing(stack, OUTPUTS)
        assert sorted(outputs) == sorted(
            [
                *(f"processed/cam1/belt.jpg-output-{i:04d}.jpg" for i in range(1, OBJECTS + 1)),
                "processed-overview/cam1/processed_belt.jpg.jpg",
                "processed-markers/cam1/belt.jpg.json",
                "processed-markers/cam1/belt.jpg.claim",
            ]
        )
        bucket = stack.client.bucket(OUTPUTS)
        marker = bucket.get_blob("processed-markers/cam1/belt.jpg.json")
        uri = f"gs://{BUCKET}/raw/cam1/belt.jpg"
        assert (marker.metadata["source-generation"], marker.metadata["status"]) == (str(blob.generation), "ok")
        assert (
            json.loads(bucket.get_blob("processed-markers/cam1/belt.jpg.claim").download_as_bytes())["source-uri"]
            == uri
        )

        # Rows name the source where it is and the outputs where they are.
        (image_row,) = stack.rows("images")
        assert image_row["source_uri"] == uri and image_row["source_bucket"] == BUCKET
        assert image_row["overview_uri"] == f"gs://{OUTPUTS}/processed-overview/cam1/processed_belt.jpg.jpg"
        rows = sorted(stack.rows("objects"), key=lambda row: row["object_index"])
        assert [row["output_uri"] for row in rows] == [
            f"gs://{OUTPUTS}/processed/cam1/belt.jpg-output-{i:04d}.jpg" for i in range(1, OBJECTS + 1)
        ]
        for row in rows:
            crop = bucket.get_blob(row["output_uri"].removeprefix(f"gs://{OUTPUTS}/"))
            assert crop.metadata["source-uri"] == uri

        # A redelivery is answered by the marker in the outputs bucket: nothing new anywhere.
        stack.emulator.clear_requests()
        assert stack.deliver(stack.event_for(blob)).status_code == 200
        assert len(stack.gemini.requests) == 1
        assert listing(stack, OUTPUTS) == outputs and listing(stack, BUCKET) == source_before
        assert writes_to(stack, BUCKET) == []
        assert len(stack.rows("images")) == 1 and len(stack.rows("objects")) == OBJECTS


def test_a_new_generation_replaces_its_outputs_in_the_outputs_bucket(tmp_path, monkeypatch):
    with stack_with(tmp_path, monkeypatch, OUTPUTS) as stack:
        first = stack.upload("raw/cam1/belt.jpg", photo(), "image/jpeg")
        assert stack.deliver(stack.event_for(first)).status_code == 200
        stack.gemini.reset(lambda request: boxes_answer(1))
        second = stack.upload("raw/cam1/belt.jpg", photo((300, 200)), "image/jpeg")
        assert stack.deliver(stack.event_for(second)).status_code == 200

        # The stale crops of the older generation are listed and removed in the outputs bucket.
        assert [name for name in listing(stack, OUTPUTS) if name.startswith("processed/")] == [
            "processed/cam1/belt.jpg-output-0001.jpg"
        ]
        marker = stack.client.bucket(OUTPUTS).get_blob("processed-markers/cam1/belt.jpg.json")
        assert marker.metadata["source-generation"] == str(second.generation)
        assert sorted(listing(stack, BUCKET)) == ["raw/cam1/belt.jpg"]


def test_events_from_the_outputs_bucket_are_ignored(tmp_path, monkeypatch):
    """If someone wires a trigger to the outputs bucket, nothing there is processed, not even an
    object under the source prefix."""
    with stack_with(tmp_path, monkeypatch, OUTPUTS) as stack:
        blob = stack.upload("raw/cam1/belt.jpg", photo(), "image/jpeg")
        assert stack.deliver(stack.event_for(blob)).status_code == 200
        stray = stack.client.bucket(OUTPUTS).blob("raw/cam1/stray.jpg")
        stray.upload_from_string(photo(), content_type="image/jpeg")
        before = listing(stack, OUTPUTS)
        stack.emulator.clear_requests()

        for name, generation in before.items():
            written = stack.client.bucket(OUTPUTS).get_blob(name)
            event = stack.event_for(written, bucket=OUTPUTS, generation=str(generation))
            assert stack.deliver(event).status_code == 200

        assert len(stack.gemini.requests) == 1  # the source image's only
        assert listing(stack, OUTPUTS) == before
        assert [r for r in stack.emulator.requests if r.method in WRITES] == []
        assert len(stack.rows("images")) == 1


def test_ignored_invocations_per_image_are_n_plus_3_in_one_bucket_and_none_with_an_outputs_bucket(
    tmp_path, monkeypatch
):
    """Eventarc delivers every finalize in the triggering bucket. With one bucket, an image with N
    objects makes the function write N crops, the overview, the marker and the claim there: N + 3
    more finalize events, each an invocation that is ignored. With an outputs bucket: none."""
    for output_bucket in (None, OUTPUTS):
        with stack_with(tmp_path, monkeypatch, output_bucket) as stack:
            blob = stack.upload("raw/cam1/belt.jpg", photo(), "image/jpeg")
            stack.emulator.clear_requests()
            assert stack.deliver(stack.event_for(blob)).status_code == 200
            # Each successful object write in the triggering bucket is one finalize event.
            fired = {name: generation for name, generation in listing(stack, BUCKET).items() if name != blob.name}
            assert len(writes_to(stack, BUCKET)) == len(fired)
            if output_bucket is None:
                assert len(fired) == OBJECTS + 3
            else:
                assert fired == {}
                assert len(listing(stack, OUTPUTS)) == OBJECTS + 3

            # Delivered as Eventarc would: every one is ignored, nothing is written or called.
            stack.emulator.clear_requests()
            for name in fired:
                written = stack.bucket.get_blob(name)
                assert stack.deliver(stack.event_for(written)).status_code == 200
            assert len(stack.gemini.requests) == 1
            assert [r for r in stack.emulator.requests if r.method in WRITES] == []


def test_the_setting_refuses_a_uri_or_path_instead_of_a_bucket_name():
    from segmentation.config import Config, ConfigError

    assert Config.from_env({"OUTPUT_BUCKET": "my-outputs"}).outputs_bucket_for("images") == "my-outputs"
    assert Config.from_env({}).outputs_bucket_for("images") == "images"
    for bad in ("gs://my-outputs", "my-outputs/processed", "My-Outputs"):
        with pytest.raises(ConfigError, match="OUTPUT_BUCKET"):
            Config.from_env({"OUTPUT_BUCKET": bad})


# --- Terraform ---------------------------------------------------------------------------------------


def test_outputs_bucket_is_hardened_like_the_images_bucket_and_created_only_when_split():
    assert config()["file_of"]["resource.google_storage_bucket.outputs"] == "outputs_bucket.tf"
    variable = config()["variable"]["separate_outputs_bucket"]
    assert variable["type"] in ("bool", "${bool}") and default_of("separate_outputs_bucket") is True
    bucket = resource("google_storage_bucket", "outputs")
    assert ref(bucket["count"]) == "var.separate_outputs_bucket ? 1 : 0"
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert ref(block(bucket, "versioning")["enabled"]) == "var.bucket_versioning"
    images = resource("google_storage_bucket", "images")
    assert bucket["location"] == images["location"]
    # Outputs expire like the images bucket's outputs rule, claims after the longest redelivery.
    (outputs_rule,) = [
        rule["lifecycle_rule"]
        for rule in bucket["dynamic"]
        if "lifecycle_rule" in rule and "outputs_retention_days" in rule["lifecycle_rule"]["for_each"]
    ]
    assert ref(block(block(outputs_rule, "content"), "condition")["age"]) == "var.outputs_retention_days"
    (claims,) = bucket["lifecycle_rule"]
    condition = block(claims, "condition")
    assert condition["matches_suffix"] == [".claim"]
    assert ref(condition["age"]) == "var.dead_letter_retention_days + 1"


def test_function_gets_the_outputs_bucket_and_the_trigger_stays_on_the_images_bucket():
    function = resource("google_cloudfunctions2_function", "segmentation")
    env = config()["locals"]["function_environment"]
    assert ref(env["OUTPUT_BUCKET"]) == "local.output_bucket_setting"
    assert ref(config()["locals"]["output_bucket_setting"]) == (
        'var.separate_outputs_bucket ? google_storage_bucket.outputs[0].name : ""'
    )
    (trigger,) = (
        function["event_trigger"] if isinstance(function["event_trigger"], list) else [function["event_trigger"]]
    )
    (bucket_filter,) = (
        trigger["event_filters"] if isinstance(trigger["event_filters"], list) else [trigger["event_filters"]]
    )
    assert ref(bucket_filter["value"]) == "local.images_bucket_name"


def _grants_on(bucket_expression: str) -> dict[str, dict]:
    return {
        name: body
        for name, body in config()["resource"]["google_storage_bucket_iam_member"].items()
        if ref(body["bucket"]) == bucket_expression
    }


def test_split_runtime_may_write_only_the_outputs_bucket_and_only_read_uploads_and_backgrounds():
    outputs = _grants_on("google_storage_bucket.outputs[0].name")
    (grant,) = outputs.values()
    assert (
        config()["file_of"][f"resource.google_storage_bucket_iam_member.{next(iter(outputs))}"] == "outputs_bucket.tf"
    )
    assert grant["role"] == "roles/storage.objectUser" and ref(grant["member"]) == "local.runtime_member"
    assert ref(grant["count"]) == "var.separate_outputs_bucket ? 1 : 0"

    # On the images bucket: the read grant always (raw/ and backgrounds/ only), the write grant
    # only in the single-bucket layout.
    images = _grants_on("local.images_bucket_name")
    runtime = {name: body for name, body in images.items() if ref(body["member"]) == "local.runtime_member"}
    by_role = {body["role"]: body for body in runtime.values()}
    assert set(by_role) == {"roles/storage.objectViewer", "roles/storage.objectUser"}
    assert "count" not in by_role["roles/storage.objectViewer"]
    assert ref(block(by_role["roles/storage.objectViewer"], "condition")["expression"]) == "local.raw_read_condition"
    assert ref(by_role["roles/storage.objectUser"]["count"]) == "var.separate_outputs_bucket ? 0 : 1"


# --- local emulation ---------------------------------------------------------------------------------


def test_local_stack_runs_with_a_separate_outputs_bucket(tmp_path):
    from devtools import local
    from devtools.standins.gemini_server import FakeGeminiServer
    from segmentation.sink import SqliteSink
    from tests.harness import free_port, wait_for

    sample = sorted(local.SAMPLES_DIR.glob("*.jpg"))[0]
    with FakeGeminiServer(lambda request: boxes_answer(2)) as gemini:
        stack = local.LocalStack(
            bucket="local-test",
            storage_port=free_port(),
            function_port=free_port(),
            data_dir=tmp_path,
            output_bucket="local-test-outputs",
            extra_env={
                "GOOGLE_GEMINI_BASE_URL": gemini.base_url,
                "GEMINI_API_KEY": "local-test-key",
                "GOOGLE_CLOUD_PROJECT": "",
                "BQ_OBJECTS_TABLE": "",
                "BQ_IMAGES_TABLE": "",
                "EMPTY_BELT_GATE_CAMERAS": "",
            },
        )
        with stack:
            (name,) = local.upload(
                [sample], bucket="local-test", emulator_url=stack.storage_url, prefix="raw/", camera="cam7"
            )
            sink_path = tmp_path / "results.sqlite"
            wait_for(lambda: sink_path.exists() and len(SqliteSink(sink_path).rows("images")) == 1)
            client = local.storage_client(stack.storage_url)
            source = [blob.name for blob in client.list_blobs("local-test")]
            outputs = sorted(blob.name for blob in client.list_blobs("local-test-outputs"))
    assert source == [name]
    stem = name.removeprefix("raw/")
    assert outputs == sorted(
        [
            f"processed/{stem}-output-0001.jpg",
            f"processed/{stem}-output-0002.jpg",
            f"processed-overview/cam7/processed_{sample.name}.jpg",
            f"processed-markers/{stem}.json",
            f"processed-markers/{stem}.claim",
        ]
    )
    (row,) = SqliteSink(sink_path).rows("images")
    assert row["status"] == "ok" and row["overview_uri"].startswith("gs://local-test-outputs/")
