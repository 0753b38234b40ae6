"""Lost-bag search end to end, as `make local` runs it: the real function under functions-framework,
the Cloud Storage stand-in reached through the real google-cloud-storage client, the event bridge,
the offline detector and the weight-free descriptor, rows in SQLite.

Images uploaded under raw/ are indexed; a photo dropped under search/ gets a results file and a
contact sheet whose first match is the bag in the photo; the terminal command answers the same."""

from __future__ import annotations

import io
import json

from PIL import Image, ImageEnhance

from devtools import local
from devtools.standins.gemini_server import unavailable
from segmentation.config import Config
from segmentation.function import reset_pipeline
from segmentation.replay import main as replay_main
from segmentation.search.__main__ import main as search_main
from segmentation.sink import SqliteSink
from tests.harness import BUCKET as BUCKET_E2E
from tests.harness import boxes_answer, free_port, running_stack, wait_for

BUCKET = "search-test"


def belt_jpeg() -> bytes:
    """A 1000x600 belt with three differently coloured items where `boxes_answer(3)` puts its boxes."""
    image = Image.new("RGB", (1000, 600), (90, 90, 92))
    for i, colour in enumerate([(20, 20, 22), (180, 30, 30), (30, 60, 170)]):
        image.paste(colour, (100 * i + 10, 70, 100 * i + 80, 290))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_a_photo_dropped_in_search_finds_the_crop_of_its_bag(tmp_path, capsys, monkeypatch):
    samples = sorted(local.SAMPLES_DIR.glob("*.jpg"))
    stack = local.LocalStack(
        bucket=BUCKET,
        storage_port=free_port(),
        function_port=free_port(),
        data_dir=tmp_path,
        extra_env={"DETECTOR": "offline", "EMBEDDER": "descriptor", "GEMINI_API_KEY": "", "GOOGLE_CLOUD_PROJECT": ""},
    )
    sink_path = tmp_path / "results.sqlite"
    with stack:
        client = local.storage_client(stack.storage_url)
        local.upload(samples, bucket=BUCKET, emulator_url=stack.storage_url, prefix="raw/", camera="cam4")
        wait_for(lambda: sink_path.exists() and len(SqliteSink(sink_path).rows("images")) == len(samples), timeout=120)
        objects = SqliteSink(sink_path).rows("objects")
        embeddings = SqliteSink(sink_path).rows("embeddings")
        assert {row["embedding_status"] for row in SqliteSink(sink_path).rows("images")} == {"ok"}
        assert sorted(row["object_row_id"] for row in embeddings) == sorted(row["row_id"] for row in objects)

        wanted = objects[len(objects) // 2]
        crop_name = wanted["output_uri"].removeprefix(f"gs://{BUCKET}/")
        crop = Image.open(io.BytesIO(client.bucket(BUCKET).blob(crop_name).download_as_bytes())).convert("RGB")
        photo = ImageEnhance.Brightness(crop.rotate(90, expand=True)).enhance(1.2)
        data = io.BytesIO()
        photo.save(data, "JPEG", quality=85)
        client.bucket(BUCKET).blob("search/lost-1.jpg").upload_from_string(data.getvalue(), content_type="image/jpeg")
        results = client.bucket(BUCKET).blob("search-results/lost-1.jpg.json")
        wait_for(results.exists, timeout=120)
        document = json.loads(results.download_as_bytes())
        sheet = client.bucket(BUCKET).blob("search-results/lost-1.jpg.jpg").download_as_bytes()

        # The terminal command, with the function's settings: a missing photo, then the photo.
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", stack.storage_url)
        environ = stack.function_env()
        argv = ["--sheet", str(tmp_path / "sheet.jpg"), "--camera", "cam4", str(tmp_path / "q.jpg")]
        capsys.readouterr()
        assert search_main(argv, environ) == 1
        photo.save(tmp_path / "q.jpg", "JPEG", quality=85)
        assert search_main(argv, environ) == 0
        printed = capsys.readouterr().out

    assert document["status"] == "ok" and document["query"]["kind"] == "photo"
    assert document["matches"][0]["crop_uri"] == wanted["output_uri"]
    assert len(document["matches"]) == min(Config.from_env({}).search_top_k, len(objects))
    assert Image.open(io.BytesIO(sheet)).format == "JPEG"
    rows = SqliteSink(sink_path).rows("search_matches")
    assert [row["rank"] for row in rows] == list(range(1, len(document["matches"]) + 1))
    assert rows[0]["object_row_id"] == wanted["row_id"]
    table = [line for line in printed.splitlines() if line.startswith("1 ")]
    assert table and wanted["output_uri"] in table[0]
    assert (tmp_path / "sheet.jpg").stat().st_size > 0


def test_gemini_indexing_outage_then_fill_in_then_a_description_search(tmp_path, monkeypatch):
    """EMBEDDER=gemini through the real google-genai client and the function: an embedding outage
    keeps the image's rows and leaves a pending document, `segmentation.replay --embeddings` fills
    the embeddings in, and a description dropped into search/ is answered from them."""
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "")
    with running_stack(tmp_path / "results.sqlite", monkeypatch, embedder="gemini") as stack:
        monkeypatch.setenv("RETRY_DEADLINE_S", "2")
        reset_pipeline()
        stack.gemini.enqueue(boxes_answer(3))
        stack.gemini.enqueue_embedding(*[unavailable() for _ in range(20)])
        blob = stack.upload("raw/cam5/belt.jpg", belt_jpeg(), "image/jpeg")

        assert stack.deliver(stack.event_for(blob)).status_code == 200

        (image,) = stack.rows("images")
        assert image["status"] == "ok" and image["objects_found"] == 3
        assert image["embedding_status"] == "failed" and "unavailable" in image["embedding_error"].lower()
        assert len(stack.rows("objects")) == 3 and stack.rows("embeddings") == []
        assert stack.names("processed-markers/cam5/belt.jpg.embeddings") != []

        stack.gemini.reset()
        monkeypatch.setenv("RETRY_DEADLINE_S", "20")
        assert replay_main([f"gs://{BUCKET_E2E}/", "--embeddings"]) == 0
        embeddings = stack.rows("embeddings")
        assert sorted(row["object_row_id"] for row in embeddings) == sorted(
            row["row_id"] for row in stack.rows("objects")
        )
        assert {(row["embedder"], row["model"], row["dimensions"]) for row in embeddings} == {
            ("gemini", "gemini-embedding-2", 768)
        }
        assert stack.names("processed-markers/cam5/belt.jpg.embeddings") == []

        reset_pipeline()
        query = stack.upload("search/lost.txt", b"black suitcase", "text/plain")
        assert stack.deliver(stack.event_for(query)).status_code == 200
        document = json.loads(stack.bucket.blob("search-results/lost.txt.json").download_as_bytes())

    assert document["status"] == "ok" and document["embedder"] == "gemini"
    assert {match["crop_uri"] for match in document["matches"]} == {row["output_uri"] for row in stack.rows("objects")}
    texts = [text for request in stack.gemini.requests for parts in request.embedded_texts for text in parts]
    assert any("black suitcase" in text for text in texts)


def test_importing_main_loads_neither_numpy_nor_opencv():
    """Cold start: search and indexing load NumPy (and the descriptor OpenCV) on first use, not at
    import, so an instance that scales up to process one image pays for them only if it needs them."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import json, sys, main; print(json.dumps(sorted(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    loaded = set(json.loads(result.stdout))
    assert "segmentation.search.service" in loaded
    assert not {"numpy", "cv2"} & loaded
