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
from segmentation.config import Config
from segmentation.search.__main__ import main as search_main
from segmentation.sink import SqliteSink
from tests.harness import free_port, wait_for

BUCKET = "search-test"


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
