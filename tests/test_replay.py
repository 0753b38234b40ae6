"""The operators' replay command: reprocess a prefix idempotently, redo failed or fallback images."""

from __future__ import annotations

import io

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from PIL import Image

from devtools.standins.gemini_server import Answer, FakeGeminiServer, sample_text, unavailable
from devtools.standins.storage_emulator import running_storage_emulator
from segmentation import replay
from segmentation.config import Config
from segmentation.function import build_pipeline
from tests.fixtures import shared_fixture
from tests.harness import ROOT

BUCKET = "replay-test"


@pytest.fixture
def env(tmp_path, monkeypatch):
    with running_storage_emulator() as emulator, FakeGeminiServer(lambda request: Answer(sample_text(1))) as gemini:
        emulator.create_bucket(BUCKET)
        for name in ("GOOGLE_CLOUD_PROJECT", "GOOGLE_API_KEY", "BQ_OBJECTS_TABLE", "BQ_IMAGES_TABLE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", "replay-key")
        monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "rows.sqlite"))
        monkeypatch.setenv("RETRY_DEADLINE_S", "30")
        monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "")
        monkeypatch.setenv("EMBEDDER", "off")  # the model's requests here are the detection calls
        bucket = storage.Client(project="t", credentials=AnonymousCredentials()).bucket(BUCKET)
        image = shared_fixture("gemini", "sample_1.png").read_bytes()
        for index in range(6):
            bucket.blob(f"raw/cam1/{index}.png").upload_from_string(image, content_type="image/png")
        bucket.blob("raw/cam1/notes.txt").upload_from_string(b"hello", content_type="text/plain")
        yield gemini, build_pipeline(Config.from_env()), tmp_path


def run(argv, capsys):
    code = replay.main(argv)
    return code, capsys.readouterr().err


def test_backfill_processes_everything_once_and_a_second_run_adds_nothing(env, capsys):
    gemini, pipeline, _tmp_path = env
    code, err = run([f"gs://{BUCKET}/raw/", "--workers", "3"], capsys)
    assert code == 0
    assert "7 objects in" in err and "6 ok" in err and "1 ignored" in err
    assert len(gemini.requests) == 6
    rows = pipeline.sink.rows("images")
    assert len(rows) == 6 and {row["status"] for row in rows} == {"ok"}

    code, err = run([f"gs://{BUCKET}/raw/"], capsys)
    assert code == 0 and "6 duplicate" in err
    assert len(gemini.requests) == 6 and len(pipeline.sink.rows("images")) == 6


def test_images_that_fell_back_are_redone_with_gemini_on_request(env, capsys, monkeypatch):
    gemini, pipeline, _ = env
    # belt photos: the offline detector refuses other scenes (unsupported_scene), such as the cupcakes
    belt = io.BytesIO()
    Image.open(ROOT / "samples" / "belt-01.jpg").save(belt, "PNG")
    bucket = storage.Client(project="t", credentials=AnonymousCredentials()).bucket(BUCKET)
    for index in range(6):
        bucket.blob(f"raw/cam1/{index}.png").upload_from_string(belt.getvalue(), content_type="image/png")
    monkeypatch.setenv("RETRY_DEADLINE_S", "1")
    monkeypatch.setenv("OFFLINE_FALLBACK", "true")
    gemini.reset(lambda request: unavailable())
    code, err = run([f"gs://{BUCKET}/raw/cam1/"], capsys)
    assert code == 0 and "6 ok" in err
    assert {row["detector"] for row in pipeline.sink.rows("images")} == {"offline"}

    gemini.reset(lambda request: Answer(sample_text(1)))
    code, err = run([f"gs://{BUCKET}/raw/cam1/", "--redo", "fallback"], capsys)
    assert code == 0 and "6 ok" in err
    latest = {}
    for row in sorted(pipeline.sink.rows("images"), key=lambda row: row["processed_at"]):
        latest[row["source_name"]] = row
    assert {row["detector"] for row in latest.values()} == {"gemini"}

    code, err = run([f"gs://{BUCKET}/raw/cam1/", "--redo", "fallback"], capsys)
    assert "6 duplicate" in err


def test_objects_still_failing_transiently_exit_1_and_are_picked_up_next_time(env, capsys, monkeypatch):
    gemini, _, _ = env
    monkeypatch.setenv("OFFLINE_FALLBACK", "false")
    monkeypatch.setenv("RETRY_DEADLINE_S", "1")
    gemini.reset(lambda request: unavailable())
    code, err = run([f"gs://{BUCKET}/raw/cam1/0.png"], capsys)
    assert code == 1 and "1 retry-later" in err

    gemini.reset(lambda request: Answer(sample_text(1)))
    code, err = run([f"gs://{BUCKET}/raw/cam1/0.png"], capsys)
    assert code == 0 and "1 ok" in err


def test_dry_run_and_usage_errors(env, capsys):
    gemini, _, _ = env
    code, err = run([f"gs://{BUCKET}/raw/", "--dry-run"], capsys)
    assert code == 0 and "7 objects under" in err and gemini.requests == []
    for argv in (["raw/"], [f"gs://{BUCKET}/raw/", "--redo", "everything"]):
        with pytest.raises(SystemExit) as exit_info:
            replay.main(argv)
        assert exit_info.value.code == 2
