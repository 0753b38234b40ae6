"""Local emulation: emulator + functions-framework + event bridge as `make local` runs them."""

from __future__ import annotations

from devtools import local
from devtools.standins.gemini_server import Answer, FakeGeminiServer, sample_text
from segmentation.sink import SqliteSink
from tests.harness import free_port, wait_for

API_KEY = "local-test-key"


def test_uploads_become_events_and_rows(tmp_path, capsys):
    samples = sorted(local.SAMPLES_DIR.glob("*.jpg"))
    assert len(samples) >= 2
    with FakeGeminiServer(lambda request: Answer(sample_text(5))) as gemini:
        stack = local.LocalStack(
            bucket="local-test",
            storage_port=free_port(),
            function_port=free_port(),
            data_dir=tmp_path,
            extra_env={
                "GOOGLE_GEMINI_BASE_URL": gemini.base_url,
                "GEMINI_API_KEY": API_KEY,
                "GOOGLE_CLOUD_PROJECT": "",
                "BQ_OBJECTS_TABLE": "",
                "BQ_IMAGES_TABLE": "",
            },
        )
        with stack:
            names = local.upload(
                samples, bucket="local-test", emulator_url=stack.storage_url, prefix="raw/", camera="cam7"
            )
            sink_path = tmp_path / "results.sqlite"
            wait_for(lambda: sink_path.exists() and len(SqliteSink(sink_path).rows("images")) == len(samples))
            # A second upload of the same file is a new generation: processed again, once.
            local.upload(samples[:1], bucket="local-test", emulator_url=stack.storage_url, prefix="raw/", camera="cam7")
            wait_for(lambda: len(SqliteSink(sink_path).rows("images")) == len(samples) + 1)
            crops = [
                blob.name
                for blob in local.storage_client(stack.storage_url).list_blobs("local-test", prefix="processed/cam7/")
            ]
        assert stack.bridge.delivered and set(stack.bridge.delivered.values()) == {200}

    images = SqliteSink(sink_path).rows("images")
    assert {row["source_name"] for row in images} == set(names)
    assert {row["status"] for row in images} == {"ok"}
    per_image = images[0]["objects_found"]
    assert per_image > 0 and len(crops) == per_image * len(samples)
    methods = [request.method for request in gemini.requests]
    assert methods.count("generateContent") == len(samples) + 1
    # Each image's crops are indexed with one batch embedding call (the api-key backend).
    assert methods.count("batchEmbedContents") == len(samples) + 1

    local.print_rows(sink_path, "images", 10)
    printed = capsys.readouterr().out
    assert "raw/cam7/" in printed and f"({len(samples) + 1} images rows" in printed
