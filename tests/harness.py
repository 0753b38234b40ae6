"""The end-to-end harness shared by tests/test_end_to_end.py and tests/test_hostile.py.

`running_stack` starts the storage emulator, the Gemini wire server and functions-framework's
real app (`main.on_object_finalized`) on a local HTTP port, and points the function at them
through the environment only, exactly as on Cloud Run: nothing of ours is patched. Rows go to
SQLite (unless a test configures the BigQuery stand-in).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from werkzeug.serving import make_server

from devtools.standins.gemini_server import Answer, FakeGeminiServer
from devtools.standins.storage_emulator import running_storage_emulator
from segmentation.events import FINALIZED
from segmentation.function import reset_pipeline
from segmentation.sink import SqliteSink

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "conveyor-test"
API_KEY = "test-key-5b1e0c"
_PRINTABLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in '"%')


@dataclass
class Stack:
    """The running pieces of one end-to-end test."""

    emulator: object
    gemini: FakeGeminiServer
    function_url: str
    client: storage.Client
    sqlite_path: Path

    @property
    def bucket(self) -> storage.Bucket:
        return self.client.bucket(BUCKET)

    def upload(self, name: str, data: bytes, content_type: str = "image/png") -> storage.Blob:
        blob = self.bucket.blob(name)
        blob.upload_from_string(data, content_type=content_type)
        return blob

    def event_for(self, blob: storage.Blob, **overrides) -> CloudEvent:
        """The finalize event Eventarc sends for `blob`; an override of None leaves that field out."""
        data = {
            "bucket": BUCKET,
            "name": blob.name,
            "generation": str(blob.generation),
            "contentType": blob.content_type,
            "size": str(blob.size),
            "metageneration": "1",
        }
        data.update(overrides)
        data = {key: value for key, value in data.items() if value is not None}
        # The CloudEvents HTTP binding percent-encodes attribute values outside printable ASCII.
        subject = quote(f"objects/{blob.name}", safe=_PRINTABLE_ASCII)
        return CloudEvent(
            {"type": FINALIZED, "source": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}", "subject": subject},
            data,
        )

    def deliver(self, event: CloudEvent, mode: str = "binary") -> requests.Response:
        headers, body = (to_binary if mode == "binary" else to_structured)(event)
        return self.post(headers, body)

    def post(self, headers: Mapping[str, str], body: bytes) -> requests.Response:
        """POST any request to the function, as Eventarc (or anyone able to invoke it) could."""
        return requests.post(self.function_url, headers=dict(headers), data=body, timeout=60)

    def names(self, prefix: str) -> list[str]:
        return sorted(blob.name for blob in self.client.list_blobs(BUCKET, prefix=prefix))

    def listing(self) -> dict[str, int]:
        """Every live object in the bucket: name -> generation."""
        return {blob.name: blob.generation for blob in self.client.list_blobs(BUCKET)}

    def rows(self, table: str) -> list[dict]:
        return SqliteSink(self.sqlite_path).rows(table) if self.sqlite_path.exists() else []


@contextlib.contextmanager
def running_stack(
    sqlite_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    api_key: str = API_KEY,
    gcs_names: bool = False,
    embedder: str = "off",
) -> Iterator[Stack]:
    """Start everything, configure the function through `monkeypatch`'d environment, yield a `Stack`.

    `gcs_names`: the emulator holds exactly the object names Cloud Storage holds (see
    `devtools.standins.storage_emulator`). `embedder`: EMBEDDER; off by default, so the
    detection tests count only detection calls (indexing has its own tests, test_search_*).
    """
    with running_storage_emulator(gcs_names=gcs_names) as emulator, FakeGeminiServer() as gemini:
        emulator.create_bucket(BUCKET)
        for name in ("GOOGLE_CLOUD_PROJECT", "GOOGLE_API_KEY", "BQ_OBJECTS_TABLE", "BQ_IMAGES_TABLE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", api_key)
        monkeypatch.setenv("SQLITE_PATH", str(sqlite_path))
        monkeypatch.setenv("RETRY_DEADLINE_S", "20")
        monkeypatch.setenv("EMBEDDER", embedder)
        import functions_framework

        app = functions_framework.create_app(
            target="on_object_finalized", source=str(ROOT / "main.py"), signature_type="cloudevent"
        )
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        reset_pipeline()
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        try:
            yield Stack(emulator, gemini, f"http://127.0.0.1:{server.server_port}/", client, sqlite_path)
        finally:
            server.shutdown()
            thread.join(timeout=5)
            reset_pipeline()


@contextlib.contextmanager
def gemini_only_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """`running_stack` with Gemini as the only detector: no offline fallback, no empty-belt gate."""
    monkeypatch.setenv("OFFLINE_FALLBACK", "false")
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "")
    with running_stack(tmp_path / "results.sqlite", monkeypatch) as running:
        yield running


def boxes_answer(count: int) -> Answer:
    """`count` objects side by side, each 90 units wide on Gemini's 0-1000 scale."""
    objects = [
        {
            "box_2d": [100, 100 * i, 500, 100 * i + 90],
            "label": f"bag {i + 1}",
            "color": "black",
            "general_description": "a bag",
            "detailed_description": f"bag number {i + 1}",
        }
        for i in range(count)
    ]
    return Answer(json.dumps(objects))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    stop = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < stop, "timed out"
        time.sleep(interval)


def use_bigquery(monkeypatch, url: str) -> None:
    """Send the function's rows to the BigQuery stand-in at `url` (tables conveyor.objects/images)."""
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setenv("GEMINI_BACKEND", "api-key")
    monkeypatch.setenv("BQ_OBJECTS_TABLE", "test-project.conveyor.objects")
    monkeypatch.setenv("BQ_IMAGES_TABLE", "test-project.conveyor.images")
    reset_pipeline()
