"""Load and fault harness for tests/test_load.py: hundreds of images through the local emulation.

The pieces, all on 127.0.0.1:

- the function: functions-framework under gunicorn (`devtools.local.LocalStack`), several
  worker processes (WORKERS) with several request threads each (THREADS), every worker
  writing to the same SQLite sink (WAL) or to the BigQuery stand-in;
- Cloud Storage: `fast_storage_emulator()`, the in-process gcp-storage-emulator of
  `devtools.standins.storage_emulator` (exact generations, `fail_next` fault injection) with one
  TEST-ONLY change for speed, see `FastEmulatorStorage`;
- Gemini: `LoadGemini`, the wire server of `devtools.standins.gemini_server` answering every image
  from what is drawn in it (`make_image` encodes an image id; the id decides the objects);
- Eventarc: `Eventarc` posts binary-mode finalize CloudEvents from a thread pool, in any
  order and as many copies as asked, and redelivers an event whose delivery got no 2xx
  (error status or a dropped connection), with backoff, up to `max_attempts` times.

`check_end_state` compares the bucket and the rows with what the images say, exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests
from gcp_storage_emulator.storage import Storage as EmulatorStorage
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from PIL import Image, ImageDraw

from devtools.local import LocalStack, finalize_event
from devtools.standins import gemini_server
from devtools.standins.bigquery_server import FakeBigQuery
from devtools.standins.gemini_server import Answer, Behaviour, ErrorReply, FakeGeminiServer, RawReply, RecordedRequest
from devtools.standins.storage_emulator import StorageEmulator, _Handler, _Server, _State
from segmentation.parse import parse_response
from segmentation.sink import SqliteSink
from tests.harness import free_port

ROOT_DIR = Path(__file__).resolve().parents[1]
BUCKET = "load-test"
API_KEY = "load-test-key"
WIDTH, HEIGHT = 640, 480
MAX_OBJECTS_PER_IMAGE = 9
BQ_PROJECT = "load-project"
BQ_OBJECTS = f"{BQ_PROJECT}.conveyor.objects"
BQ_IMAGES = f"{BQ_PROJECT}.conveyor.images"


# --- images that say what is in them ------------------------------------------------------------

_ID_BITS, _CHECK_BITS, _CELL = 12, 4, 16
_COLORS = [
    ("red", (200, 40, 40)),
    ("blue", (40, 60, 200)),
    ("green", (40, 160, 60)),
    ("yellow", (220, 200, 40)),
    ("black", (20, 20, 20)),
    ("orange", (230, 130, 30)),
    ("purple", (120, 50, 160)),
    ("white", (240, 240, 240)),
    ("brown", (120, 80, 40)),
]


def object_count(image_id: int) -> int:
    """How many objects image `image_id` holds: 0 (an empty belt) to MAX_OBJECTS_PER_IMAGE."""
    return image_id % (MAX_OBJECTS_PER_IMAGE + 1)


def boxes_norm(image_id: int) -> list[list[int]]:
    """The objects' box_2d ([ymin, xmin, ymax, xmax], 0-1000), in a 5 x 2 grid below the id strip."""
    rng = random.Random(image_id * 7919)
    boxes = []
    for k in range(object_count(image_id)):
        col, row = k % 5, k // 5
        x0, y0 = 20 + col * 195, 80 + row * 460
        xmin, ymin = x0 + rng.randint(0, 40), y0 + rng.randint(0, 60)
        xmax, ymax = xmin + rng.randint(60, 150), ymin + rng.randint(120, 340)
        boxes.append([ymin, xmin, ymax, xmax])
    return boxes


def _check(image_id: int) -> int:
    return (image_id * 7 + 3) % (1 << _CHECK_BITS)


def make_image(image_id: int) -> bytes:
    """A 640x480 belt photo: the objects as coloured blocks, and `image_id` (with a check
    value) as black/white 16-pixel cells along the top edge, which survive JPEG re-encoding."""
    assert 0 <= image_id < 1 << _ID_BITS
    image = Image.new("RGB", (WIDTH, HEIGHT), (95, 95, 100))
    draw = ImageDraw.Draw(image)
    bits = image_id | (_check(image_id) << _ID_BITS)
    for bit in range(_ID_BITS + _CHECK_BITS):
        x = bit * _CELL
        draw.rectangle([x, 0, x + _CELL - 1, _CELL - 1], fill=(255, 255, 255) if bits >> bit & 1 else (0, 0, 0))
    for k, (ymin, xmin, ymax, xmax) in enumerate(boxes_norm(image_id)):
        box = [xmin * WIDTH // 1000, ymin * HEIGHT // 1000, xmax * WIDTH // 1000, ymax * HEIGHT // 1000]
        draw.rectangle(box, fill=_COLORS[k % len(_COLORS)][1], outline=(10, 10, 10), width=3)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def read_image_id(data: bytes) -> int | None:
    """The id `make_image` drew into `data` (any size it was scaled to), or None."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L")
        scale = image.width / WIDTH
        bits = 0
        for bit in range(_ID_BITS + _CHECK_BITS):
            x, y = int((bit * _CELL + _CELL / 2) * scale), int(_CELL / 2 * scale)
            if image.getpixel((x, y)) > 128:
                bits |= 1 << bit
    image_id = bits & ((1 << _ID_BITS) - 1)
    return image_id if bits >> _ID_BITS == _check(image_id) else None


def answer_text(image_id: int) -> str:
    """What the model answers for image `image_id`: one entry per drawn object."""
    entries = []
    for k, box in enumerate(boxes_norm(image_id)):
        color = _COLORS[k % len(_COLORS)][0]
        entries.append(
            {
                "box_2d": box,
                "label": f"bag {image_id}-{k + 1}",
                "color": color,
                "general_description": f"a {color} bag",
                "detailed_description": f"image {image_id} object {k + 1}",
            }
        )
    return json.dumps(entries)


def truncated_text(image_id: int) -> str:
    """The answer cut off inside its last object (needs at least two objects)."""
    text = answer_text(image_id)
    assert object_count(image_id) >= 2
    return text[: text.rindex('{"box_2d"') + 25]


@dataclass(frozen=True)
class Expected:
    """What one image generation should leave behind."""

    name: str
    generation: int
    image_id: int
    status: str  # ok, partial or empty
    objects: tuple[tuple[str, tuple[int, int, int, int]], ...]  # (label, pixel box) per object, in order
    detector: str = "gemini"


def expected_for(name: str, generation: int, image_id: int, *, truncated: bool = False) -> Expected:
    text = truncated_text(image_id) if truncated else answer_text(image_id)
    parsed = parse_response(text, (WIDTH, HEIGHT), max_objects=25, truncated=truncated)
    objects = tuple((d.label, d.box.as_tuple()) for d in parsed.detections)
    status = "partial" if parsed.partial else ("ok" if objects else "empty")
    return Expected(name, generation, image_id, status, objects)


# --- Gemini -------------------------------------------------------------------------------------

_connection = threading.local()


class LoadGemini(FakeGeminiServer):
    """The Gemini wire server answering each image from its drawn id, after 0.2-0.5 s.

    `plan(image_id, attempt)` may return a behaviour for that attempt (1-based, per image)
    instead of the answer: an error, a slow answer, a truncated one. `before_answer(image_id,
    attempt, client_port)` is called first on the request's thread (it may block: a held
    answer). `attempts` counts model calls per image; `faults` counts what `plan` injected.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        plan: Callable[[int, int], Behaviour | None] | None = None,
        before_answer: Callable[[int, int, int], None] | None = None,
        latency: tuple[float, float] = (0.2, 0.5),
    ):
        super().__init__(self._respond, port=port)
        self.plan = plan
        self.before_answer = before_answer
        self.latency_range = latency
        self.attempts: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.unreadable = 0
        self.in_flight = self.max_in_flight = 0  # model calls being answered at once
        self._count_lock = threading.Lock()

    def start(self) -> LoadGemini:
        # As FakeGeminiServer.start, with a handler that remembers each request's client port
        # (to find the worker process behind it) and a deeper listen queue.
        handler = type("Handler", (_PeerHandler,), {"fake": self})
        httpd = _DeepQueueThreadingServer(("127.0.0.1", self._port), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="load-gemini", daemon=True
        )
        self._thread.start()
        return self

    def _respond(self, request: RecordedRequest) -> Behaviour:
        image_id = read_image_id(request.image_bytes) if request.image_bytes else None
        if image_id is None:
            with self._count_lock:
                self.unreadable += 1
            return ErrorReply(400, "INVALID_ARGUMENT", "the load test could not read the image id")
        with self._count_lock:
            self.attempts[image_id] += 1
            attempt = self.attempts[image_id]
        if self.before_answer:
            self.before_answer(image_id, attempt, getattr(_connection, "port", 0))
        behaviour = self.plan(image_id, attempt) if self.plan else None
        delay = random.Random(image_id * 31 + attempt).uniform(*self.latency_range)
        if behaviour is None:
            return Answer(answer_text(image_id), delay=delay)
        with self._count_lock:
            kind = (
                f"http {behaviour.code}"
                if isinstance(behaviour, ErrorReply)
                else f"unreadable {behaviour.status}"
                if isinstance(behaviour, RawReply)
                else "truncated"
                if behaviour.finish_reason == "MAX_TOKENS"
                else "slow answer"
            )
            self.faults[kind] += 1
        return dataclasses.replace(behaviour, delay=behaviour.delay or delay)


class _PeerHandler(gemini_server._Handler):
    fake: LoadGemini

    def do_POST(self) -> None:
        _connection.port = self.client_address[1]
        fake = self.fake
        with fake._count_lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            super().do_POST()
        finally:
            with fake._count_lock:
                fake.in_flight -= 1


class _DeepQueueThreadingServer(gemini_server.ThreadingHTTPServer):
    request_queue_size = 1024


# --- Cloud Storage ------------------------------------------------------------------------------


class FastEmulatorStorage(EmulatorStorage):
    """gcp-storage-emulator's in-memory store without its per-write metadata dump. TEST-ONLY.

    The stock `Storage` rewrites its whole `.meta` document (every object's metadata of every
    bucket, JSON with indent) after each write, even in memory where nothing reads it back; a
    write therefore costs time proportional to the objects already stored. Measured on this
    machine (in-process, 8 uploading threads, 20 kB objects): 3.1 s for the first 500 uploads,
    19.4 s for the 1500th-2000th (45 s for 2000), while without the dump every 500 take 2.1 s
    (21 s for 5000). The on-disk emulator `devtools.local` starts is no better (subprocess,
    8 threads: 45 s for 1500 uploads, the last 250 taking 11.8 s). A 500-image scenario makes
    about 3,500 uploads, so only this store keeps it to seconds. The state is the in-memory
    dicts; only persistence across restarts, which an in-memory store never has, is lost.
    """

    def _write_config_to_file(self) -> None:
        pass


class _FastServer(_Server):
    # The emulator serves one request at a time (its store is not thread-safe); a deep listen
    # queue keeps dozens of concurrent clients from having their SYNs dropped (1 s retransmits).
    request_queue_size = 1024


@contextlib.contextmanager
def fast_storage_emulator() -> Iterator[StorageEmulator]:
    """`devtools.standins.storage_emulator.running_storage_emulator()` ("exact" generations,
    `fail_next`, request log) over `FastEmulatorStorage`."""
    store = FastEmulatorStorage(use_memory_fs=True)
    httpd = _FastServer(("127.0.0.1", 0), partial(_Handler, store))
    httpd.state = _State(generations="exact")
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="storage-emulator", daemon=True
    )
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield StorageEmulator(f"http://{host}:{port}", httpd.state, store)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def pending_faults(emulator: StorageEmulator) -> int:
    """Injected storage faults not yet served."""
    with emulator._state.lock:
        return sum(fault.remaining for fault in emulator._state.faults)


# --- Eventarc -----------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One event's delivery: every attempt's outcome (an HTTP status or an exception name)."""

    name: str
    generation: int
    attempts: list[Any] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return bool(self.attempts) and isinstance(self.attempts[-1], int) and 200 <= self.attempts[-1] < 300


class Eventarc:
    """Posts finalize events to the function and redelivers those that got no 2xx."""

    def __init__(
        self,
        function_url: str,
        *,
        max_attempts: int = 6,
        backoff_s: float = 0.3,
        max_backoff_s: float = 3.0,
        concurrency: int = 48,
        timeout_s: float = 120.0,
    ):
        self.function_url = function_url
        self.max_attempts, self.backoff_s, self.max_backoff_s = max_attempts, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eventarc")
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def close(self) -> None:
        """Stop redelivering and drop queued events (requests in flight end with the function)."""
        self._closing.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def join(self) -> None:
        self.pool.shutdown(wait=True)

    @staticmethod
    def event(blob_info: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """Headers and body of the binary-mode CloudEvent Eventarc sends for a finalized object."""
        return finalize_event(BUCKET, {"kind": "storage#object", "bucket": BUCKET, **blob_info, "metageneration": "1"})

    def deliver(self, blob_info: dict[str, Any]) -> Delivery:
        """Deliver one event (blocking), redelivering until a 2xx or `max_attempts`."""
        headers, body = self.event(blob_info)
        delivery = Delivery(blob_info["name"], int(blob_info["generation"]))
        with self._lock:
            self.deliveries.append(delivery)
        for attempt in range(1, self.max_attempts + 1):
            if self._closing.is_set():
                delivery.attempts.append("cancelled")
                break
            try:
                response = requests.post(self.function_url, headers=headers, data=body, timeout=self.timeout_s)
                delivery.attempts.append(response.status_code)
                if 200 <= response.status_code < 300:
                    return delivery
            except requests.RequestException as exc:
                delivery.attempts.append(type(exc).__name__)
            if attempt < self.max_attempts:
                self._closing.wait(
                    min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                )
        return delivery

    def submit(self, blob_info: dict[str, Any]):
        return self.pool.submit(self.deliver, blob_info)

    def deliver_all(self, infos: Iterable[dict[str, Any]]) -> list[Delivery]:
        """Deliver every event in `infos` (in that order, concurrently); wait for all."""
        futures = [self.submit(info) for info in infos]
        return [future.result() for future in futures]


def shuffled_copies(infos: list[dict[str, Any]], rng: random.Random, copies: tuple[int, int] = (1, 3)) -> list[dict]:
    """Each event `copies[0]`..`copies[1]` times, all in random order (duplicates and reordering)."""
    events = [info for info in infos for _ in range(rng.randint(*copies))]
    rng.shuffle(events)
    return events


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class LoadStack:
    emulator: StorageEmulator
    local: LocalStack
    gemini_url: str
    eventarc: Eventarc
    client: storage.Client
    sqlite_path: Path
    log_path: Path
    bigquery: FakeBigQuery | None = None

    @property
    def bucket(self) -> storage.Bucket:
        return self.client.bucket(BUCKET)

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        """Upload like a camera; returns the event data fields (name, generation, size, type)."""
        blob = self.bucket.blob(name)
        blob.upload_from_string(data, content_type="image/jpeg")
        return {"name": name, "generation": str(blob.generation), "contentType": "image/jpeg", "size": str(blob.size)}

    def upload_images(self, images: dict[str, int], threads: int = 8) -> dict[str, dict[str, Any]]:
        """Upload `make_image(id)` for each name -> id; returns name -> event data."""
        with ThreadPoolExecutor(threads) as pool:
            infos = list(pool.map(lambda item: self.upload(item[0], make_image(item[1])), images.items()))
        return {info["name"]: info for info in infos}

    def function_env(self) -> dict[str, str]:
        return self.local.function_env()

    # -- processes --

    def master_pid(self) -> int:
        assert self.local.function_process is not None
        return self.local.function_process.pid

    def worker_pids(self) -> list[int]:
        """The live gunicorn worker processes (children of the master)."""
        master = self.master_pid()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[1]) == master and fields[0] != "Z":
                    pids.append(int(entry))
        return sorted(pids)

    def pid_of_connection(self, local_port: int, remote_port: int) -> int | None:
        """The worker process holding the TCP connection 127.0.0.1:local_port -> :remote_port."""
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            local, remote = parts[1], parts[2]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                inode = parts[9]
                break
        if inode is None:
            return None
        target = f"socket:[{inode}]"
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            return pid
        return None

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        stop = time.monotonic() + timeout
        while len(pids := self.worker_pids()) != count:
            assert time.monotonic() < stop, f"expected {count} workers, have {pids}"
            time.sleep(0.1)
        return pids

    # -- state --

    def listing(self) -> dict[str, tuple[int, dict[str, str]]]:
        """Every live object: name -> (generation, custom metadata)."""
        return {blob.name: (int(blob.generation), dict(blob.metadata or {})) for blob in self.client.list_blobs(BUCKET)}

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Rows of `table` in insertion order, from SQLite or the BigQuery stand-in."""
        if self.bigquery is not None:
            return [row["json"] for row in self.bigquery.rows(BQ_OBJECTS if table == "objects" else BQ_IMAGES)]
        return SqliteSink(self.sqlite_path).rows(table) if self.sqlite_path.exists() else []

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines


@contextlib.contextmanager
def load_stack(
    tmp_path: Path,
    monkeypatch,
    *,
    gemini_port: int,
    env: dict[str, str] | None = None,
    workers: int = 3,
    threads: int = 12,
    bigquery: bool = False,
    eventarc: dict[str, Any] | None = None,
) -> Iterator[LoadStack]:
    """Storage emulator, functions-framework (`workers` x `threads`) and an Eventarc stand-in;
    the function's Gemini endpoint is http://127.0.0.1:`gemini_port`/ (start `LoadGemini` on
    it, or leave it down)."""
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(fast_storage_emulator())
        emulator.create_bucket(BUCKET)
        fake_bq = stack.enter_context(FakeBigQuery()) if bigquery else None
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        gemini_url = f"http://127.0.0.1:{gemini_port}/"
        function_env = {
            "GOOGLE_GEMINI_BASE_URL": gemini_url,
            "GEMINI_API_KEY": API_KEY,
            "GOOGLE_API_KEY": "",
            "GOOGLE_CLOUD_PROJECT": "",
            "GEMINI_BACKEND": "api-key",
            "EMBEDDER": "off",  # the model calls counted here are the detection calls
            "EMPTY_BELT_GATE_CAMERAS": "",
            "OFFLINE_FALLBACK": "false",
            "RETRY_DEADLINE_S": "60",
            "GEMINI_TIMEOUT_S": "10",
            "LOG_LEVEL": "WARNING",
            "WORKERS": str(workers),
            "THREADS": str(threads),
            "BQ_OBJECTS_TABLE": BQ_OBJECTS if bigquery else "",
            "BQ_IMAGES_TABLE": BQ_IMAGES if bigquery else "",
            "BIGQUERY_EMULATOR_HOST": fake_bq.url if fake_bq else "",
            # No bucket-metadata background GETs, as in production (segmentation.storage).
            "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA": "true",
        }
        function_env.update(env or {})
        if not function_env["BIGQUERY_EMULATOR_HOST"]:
            del function_env["BIGQUERY_EMULATOR_HOST"]
            monkeypatch.delenv("BIGQUERY_EMULATOR_HOST", raising=False)
        log_path = tmp_path / "function.log"
        local = LocalStack(
            bucket=BUCKET,
            storage_port=0,
            function_port=free_port(),
            data_dir=tmp_path,
            extra_env=function_env,
            storage_url=emulator.url,
            bridge=False,
            function_log=log_path,
        )
        arc = Eventarc(local.function_url, **(eventarc or {}))
        # Teardown order: stop redelivering, stop the function (ends requests in flight), join.
        stack.callback(arc.join)
        local.start()
        stack.callback(local.stop)
        stack.callback(arc.close)
        client = storage.Client(
            project="load", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator.url}
        )
        yield LoadStack(emulator, local, gemini_url, arc, client, tmp_path / "results.sqlite", log_path, fake_bq)


# --- the end state ------------------------------------------------------------------------------


def crop_name(name: str, index: int) -> str:
    return f"processed/{name.removeprefix('raw/')}-output-{index:04d}.jpg"


def overview_name(name: str) -> str:
    folder, _, file = name.removeprefix("raw/").rpartition("/")
    return f"processed-overview/{folder + '/' if folder else ''}processed_{file}.jpg"


def marker_name(name: str) -> str:
    return f"processed-markers/{name.removeprefix('raw/')}.json"


def claim_name(name: str) -> str:
    return f"processed-markers/{name.removeprefix('raw/')}.claim"


@dataclass
class EndState:
    listing: dict[str, tuple[int, dict[str, str]]]
    images: list[dict[str, Any]]
    objects: list[dict[str, Any]]

    @classmethod
    def of(cls, stack: LoadStack) -> EndState:
        return cls(stack.listing(), stack.rows("images"), stack.rows("objects"))

    def image_rows(self, name: str, generation: int | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.images
            if r["source_name"] == name and (generation is None or r["source_generation"] == generation)
        ]

    def object_rows(self, name: str, generation: int | None = None, detector: str | None = None) -> list[dict]:
        return [
            r
            for r in self.objects
            if r["source_name"] == name
            and (generation is None or r["source_generation"] == generation)
            and (detector is None or r["detector"] == detector)
        ]


def check_end_state(
    stack: LoadStack,
    expected: Iterable[Expected],
    *,
    superseded: dict[str, set[int]] | None = None,
    history: bool = False,
    state: EndState | None = None,
    crop_sizes_every: int = 7,
) -> list[str]:
    """Every difference between the bucket and rows and `expected` (one per live image).

    Bucket: exactly the raw images, and for each image its crops 1..n, its overview, its
    marker and its claim, each output stamped with the expected generation; nothing else. Rows: for the
    expected generation exactly one image row (with `history`: the newest one counts and older
    ones may exist) with the right status, detector and count, and exactly one object row per
    object with the right index, label, pixel box and crop URI; crops of every
    `crop_sizes_every`-th image are downloaded and must measure their box. `superseded`: older
    generations per name, which may have at most one image row (failed if any object row is
    missing) and whose outputs must not be live. Any row for another name or generation is an
    error.
    """
    expected = list(expected)
    superseded = superseded or {}
    state = state or EndState.of(stack)
    problems: list[str] = []
    by_name = {e.name: e for e in expected}
    assert len(by_name) == len(expected), "one expectation per name"

    # The bucket.
    wanted: dict[str, int] = {}
    for e in expected:
        wanted[e.name] = e.generation
        for index in range(1, len(e.objects) + 1):
            wanted[crop_name(e.name, index)] = e.generation
        wanted[overview_name(e.name)] = e.generation
        wanted[marker_name(e.name)] = e.generation
        wanted[claim_name(e.name)] = e.generation  # the claim of the delivery that did the work
    live = state.listing
    for name in sorted(set(live) - set(wanted)):
        problems.append(f"unexpected object {name} (source-generation {live[name][1].get('source-generation')})")
    for name in sorted(set(wanted) - set(live)):
        problems.append(f"missing object {name}")
    for name, generation in sorted(wanted.items()):
        if name in live and not name.startswith("raw/"):
            stamped = live[name][1].get("source-generation")
            if stamped != str(generation):
                problems.append(f"{name} is from generation {stamped}, expected {generation}")
        elif name in live and live[name][0] != generation:
            problems.append(f"{name} is live at generation {live[name][0]}, expected {generation}")
    for e in expected:
        marker = live.get(marker_name(e.name), (0, {}))[1]
        if marker and marker.get("status") != e.status:
            problems.append(f"marker of {e.name} says {marker.get('status')}, expected {e.status}")

    # Image rows.
    known = {(e.name, e.generation) for e in expected} | {(n, g) for n, gens in superseded.items() for g in gens}
    for row in state.images:
        if (row["source_name"], row["source_generation"]) not in known:
            problems.append(f"image row for unknown {row['source_name']}#{row['source_generation']}: {row['status']}")
    for row in state.objects:
        if (row["source_name"], row["source_generation"]) not in known:
            problems.append(f"object row for unknown {row['source_name']}#{row['source_generation']}")
    for e in expected:
        rows = state.image_rows(e.name, e.generation)
        if not rows:
            problems.append(f"no image row for {e.name}#{e.generation}")
            continue
        if len(rows) > 1 and not history:
            problems.append(f"{len(rows)} image rows for {e.name}#{e.generation}: {[r['status'] for r in rows]}")
        row = rows[-1]
        got = (row["status"], row["objects_found"], row["detector"])
        if got != (e.status, len(e.objects), e.detector):
            problems.append(
                f"image row of {e.name}#{e.generation} is {got} ({row['error_type']}: "
                f"{(row['error_message'] or '')[:120]}), expected {(e.status, len(e.objects), e.detector)}"
            )
        objects = state.object_rows(e.name, e.generation, e.detector)
        got_objects = sorted(
            (
                r["object_index"],
                r["label"],
                (r["box_x_min"], r["box_y_min"], r["box_x_max"], r["box_y_max"]),
                r["output_uri"],
            )
            for r in objects
        )
        want_objects = [
            (i, label, box, f"gs://{BUCKET}/{crop_name(e.name, i)}")
            for i, (label, box) in enumerate(e.objects, start=1)
        ]
        if got_objects != want_objects:
            problems.append(
                f"object rows of {e.name}#{e.generation}: got {len(got_objects)} "
                f"{got_objects[:2]}..., expected {len(want_objects)} {want_objects[:2]}..."
            )
        others = [r for r in state.object_rows(e.name, e.generation) if r["detector"] != e.detector]
        if others and not history:
            problems.append(f"{len(others)} object rows of {e.name}#{e.generation} from another detector")
    for name, generations in superseded.items():
        for generation in generations:
            rows = state.image_rows(name, generation)
            objects = state.object_rows(name, generation)
            if len(rows) > 1:
                problems.append(f"{len(rows)} image rows for superseded {name}#{generation}")
            if rows and rows[0]["status"] in ("ok", "partial", "empty") and len(objects) != rows[0]["objects_found"]:
                problems.append(
                    f"superseded {name}#{generation}: {rows[0]['objects_found']} found, {len(objects)} object rows"
                )
            if objects and not rows:
                problems.append(f"superseded {name}#{generation}: object rows without an image row")

    # Crop pixels: a sample must measure exactly its box.
    for e in expected[::crop_sizes_every]:
        for index, (_, (x0, y0, x1, y1)) in enumerate(e.objects, start=1):
            name = crop_name(e.name, index)
            if name in live:
                data = stack.bucket.blob(name).download_as_bytes()
                with Image.open(io.BytesIO(data)) as crop:
                    if crop.size != (x1 - x0, y1 - y0):
                        problems.append(f"{name} measures {crop.size}, expected {(x1 - x0, y1 - y0)}")
    return problems


def summarize(problems: list[str], limit: int = 25) -> str:
    head = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} differences from the expected end state:\n  {head}{more}"


def delivery_summary(deliveries: list[Delivery]) -> Counter[str]:
    """How the deliveries went: 'acked first time', 'acked after N attempts', 'gave up'."""
    counts: Counter[str] = Counter()
    for delivery in deliveries:
        if not delivery.acknowledged:
            counts["gave up"] += 1
        elif len(delivery.attempts) == 1:
            counts["acked first time"] += 1
        else:
            counts[f"acked after {len(delivery.attempts)} attempts"] += 1
    return counts


_HTTP_STATUS = re.compile(r"HTTP (\d{3})")


def retry_log_counts(stack: LoadStack) -> Counter[tuple[str, str]]:
    """The function's "... failed transiently; retrying" log lines, as (what, cause) -> count;
    the cause is the HTTP status, or the exception class for a transport error."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in stack.log_lines():
        message = line.get("message", "")
        if message.endswith("failed transiently; retrying"):
            error = line.get("error", "")
            status = _HTTP_STATUS.search(error)
            cause = status.group(1) if status else (re.search(r"(\w+(?:Timeout|Error))", error) or [None, "other"])[1]
            counts[(message.removesuffix(" failed transiently; retrying"), cause)] += 1
    return counts


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
