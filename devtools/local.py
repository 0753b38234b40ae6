"""Local emulation: the real function under functions-framework, a Cloud Storage stand-in,
and a bridge that delivers object-finalize CloudEvents as Eventarc would.

    python -m devtools.local up                 # emulator + function + bridge, until Ctrl-C
    python -m devtools.local up --demo --once   # also upload samples/, wait, print rows, stop
    python -m devtools.local up --output-bucket local-outputs   # outputs in a second bucket
    python -m devtools.local upload a.jpg b.png --camera cam1   # as a camera would
    python -m devtools.local rows               # print the rows in the local SQLite sink
    python -m devtools.local search photo.jpg   # lost-bag search (or a description) from a terminal
    python -m devtools.local upload q.jpg --query   # drop a query into search/, as staff would

The storage code path is the production one: google-cloud-storage follows
STORAGE_EMULATOR_HOST to `devtools.local_storage`, a stand-in with Cloud Storage's
semantics (exact generations, preconditions answering 412, object versioning as prod.tfvars
sets it), run as a process of its own. The bridge follows that server's write log, so every
generation is delivered, even one overwritten a moment after its upload (as Eventarc does).
Rows go to SQLITE_PATH (no BigQuery here).
Gemini needs credentials (GEMINI_API_KEY, or GOOGLE_CLOUD_PROJECT with ADC); without them
(and no DETECTOR set) the function runs with DETECTOR=offline, the weight-free detector made for
plain belts seen by a fixed camera, such as the bundled samples.

This module is for developers' machines only; the deployed function never imports it.
Objects persist under `--data-dir`/gcs/ (each live object's bytes as a file named like it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devtools.local_storage import EVENTS_PATH
from segmentation.config import Config
from segmentation.detections import ObjectRef
from segmentation.events import FINALIZED, IMAGE_EXTENSIONS
from segmentation.logs import redact
from segmentation.sink import SqliteSink

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUCKET = "local-conveyor"
DEFAULT_STORAGE_PORT = 9023
DEFAULT_FUNCTION_PORT = 8080
SAMPLES_DIR = ROOT / "samples"


def storage_client(emulator_url: str):
    """A google-cloud-storage client pointed at the emulator (as STORAGE_EMULATOR_HOST does)."""
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="local", credentials=AnonymousCredentials())


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    """Block until `url` answers any HTTP status, or raise TimeoutError."""
    stop = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > stop:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.1)


def cloud_event_for(bucket: str, blob) -> tuple[dict[str, str], bytes]:
    """Headers and body of a binary-mode CloudEvent for a finalized object, as Eventarc sends it."""
    data = {
        "kind": "storage#object",
        "bucket": bucket,
        "name": blob.name,
        "generation": str(blob.generation),
        "metageneration": str(blob.metageneration or 1),
        "contentType": blob.content_type or "application/octet-stream",
        "size": str(blob.size),
        "timeCreated": blob.time_created.isoformat() if blob.time_created else None,
        "updated": blob.updated.isoformat() if blob.updated else None,
    }
    return finalize_event(bucket, data)


def finalize_event(bucket: str, data: dict) -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode finalize CloudEvent for the object resource `data`."""
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": uuid.uuid4().hex,
        "ce-type": FINALIZED,
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-subject": f"objects/{data['name']}",
        "ce-time": dt.datetime.now(dt.UTC).isoformat(),
    }
    return headers, json.dumps(data).encode()


class EventBridge:
    """Follows the storage stand-in's write log (`GET /__events`) and posts one finalize event
    per new object generation in `bucket` under `prefix`, in the order they were written.

    Every generation is delivered, also one overwritten before the next poll, as Eventarc
    delivers each finalize. Like Eventarc with retry enabled, a delivery that fails (non-2xx or
    no answer) is redelivered with backoff, up to `max_attempts` times; deliveries run side by
    side, so (as with Eventarc) their order of arrival is not guaranteed.
    """

    def __init__(
        self,
        storage_url: str,
        bucket: str,
        prefix: str | tuple[str, ...],
        function_url: str,
        *,
        interval: float = 0.3,
        max_attempts: int = 5,
    ):
        self.storage_url = storage_url.rstrip("/")
        # The prefixes whose objects are delivered: the function's inputs (images, search queries).
        self.bucket, self.prefix = bucket, (prefix,) if isinstance(prefix, str) else prefix
        self.function_url = function_url
        self.interval, self.max_attempts = interval, max_attempts
        self.after = 0  # the write log's sequence number followed so far
        self.delivered: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="eventarc")
        self._thread = threading.Thread(target=self._run, name="event-bridge", daemon=True)

    def start(self) -> EventBridge:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=False)

    def poll(self) -> list[dict]:
        """The finalize events written since the last poll that this bridge delivers."""
        url = f"{self.storage_url}{EVENTS_PATH}?after={self.after}"
        with urllib.request.urlopen(url, timeout=10) as response:
            page = json.load(response)
        self.after = page["next"]
        return [
            event
            for event in page["events"]
            if event["bucket"] == self.bucket and event["name"].startswith(self.prefix)
        ]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.poll():
                    self._pool.submit(self.deliver, {k: v for k, v in event.items() if k != "seq"})
            except Exception as exc:  # the storage server may be restarting; keep polling
                print(redact(f"bridge: reading the write log failed: {exc}"), file=sys.stderr)
            self._stop.wait(self.interval)

    def deliver(self, data: dict) -> None:
        """POST the finalize event for the object resource `data`, redelivering on failure."""
        headers, body = finalize_event(self.bucket, data)
        key = (data["name"], int(data["generation"]))
        for attempt in range(1, self.max_attempts + 1):
            request = urllib.request.Request(self.function_url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=600) as response:
                    self.delivered[key] = response.status
                    return
            except (urllib.error.URLError, OSError) as exc:
                status = getattr(exc, "code", None)
                print(
                    redact(f"bridge: delivery of {data['name']} failed ({status or exc}); attempt {attempt}"),
                    file=sys.stderr,
                )
                self._stop.wait(min(30.0, 0.5 * 2**attempt))
        self.delivered[key] = -1


class LocalStack:
    """The emulator, the function and the bridge as child processes/threads of this one."""

    def __init__(
        self,
        *,
        bucket: str,
        storage_port: int,
        function_port: int,
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
        storage_url: str | None = None,
        bridge: bool = True,
        function_log: Path | None = None,
        source: Path = ROOT / "main.py",
        target: str = "on_object_finalized",
        versioning: bool = True,
        output_bucket: str = "",
    ):
        """`storage_url`: use a storage server that is already running there instead of starting
        `devtools.local_storage` (`storage_port` is then unused; the bridge needs that
        server's write log). `versioning`: the bucket keeps overwritten generations readable,
        as the prod bucket does (prod.tfvars); False is dev.tfvars' setting, where a replaced
        generation answers 404. `bridge=False`: deliver no events (the caller posts them itself).
        `function_log`: functions-framework's output goes to that file. The function's workers
        and threads follow WORKERS and THREADS in `extra_env` (functions-framework's gunicorn
        settings). `source` / `target`: another function to serve (the benchmarks' floors), by
        default the real one. `output_bucket`: a second bucket for the outputs (OUTPUT_BUCKET), as
        Terraform's separate_outputs_bucket; the bridge delivers only `bucket`'s events, as the
        trigger does."""
        self.bucket = bucket
        self.output_bucket = output_bucket
        self.external_storage = storage_url is not None
        self.storage_url = storage_url.rstrip("/") if storage_url else f"http://127.0.0.1:{storage_port}"
        self.function_url = f"http://127.0.0.1:{function_port}/"
        self.storage_port, self.function_port = storage_port, function_port
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.use_bridge = bridge
        self.function_log = function_log
        self.source, self.target = source, target
        self.versioning = versioning
        self.processes: list[subprocess.Popen] = []
        self.function_process: subprocess.Popen | None = None
        self.bridge: EventBridge | None = None

    def function_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "STORAGE_EMULATOR_HOST": self.storage_url,
                "SQLITE_PATH": str(self.data_dir / "results.sqlite"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.output_bucket:
            env["OUTPUT_BUCKET"] = self.output_bucket
        env.update(self.extra_env)
        return env

    def start(self) -> LocalStack:
        for port in (self.function_port,) if self.external_storage else (self.storage_port, self.function_port):
            _require_free_port(port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.external_storage:
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "devtools.local_storage",
                        "--port",
                        str(self.storage_port),
                        "--data-dir",
                        str(self.data_dir / "gcs"),
                    ],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                )
            )
        wait_for_http(self.storage_url + "/storage/v1/b")
        client = storage_client(self.storage_url)
        for name in filter(None, (self.bucket, self.output_bucket)):
            if client.lookup_bucket(name) is None:
                bucket = client.bucket(name)
                bucket.versioning_enabled = self.versioning
                client.create_bucket(bucket)
        log = open(self.function_log, "ab") if self.function_log else None
        try:
            self.function_process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "functions_framework",
                    "--target",
                    self.target,
                    "--signature-type",
                    "cloudevent",
                    "--source",
                    str(self.source),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.function_port),
                ],
                env=self.function_env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
            )
        finally:
            if log:
                log.close()  # the child has its own copy of the descriptor
        self.processes.append(self.function_process)
        wait_for_http(self.function_url)
        if self.use_bridge:
            config = Config.from_env(self.function_env())
            inputs = (config.source_prefix, config.search_prefix)
            self.bridge = EventBridge(self.storage_url, self.bucket, inputs, self.function_url).start()
        return self

    def stop(self) -> None:
        if self.bridge:
            self.bridge.stop()
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def upload(paths: Iterable[Path], *, bucket: str, emulator_url: str, prefix: str, camera: str | None) -> list[str]:
    """Upload files under `prefix` (and `camera/`), as a camera (or staff, for search/) would;
    returns object names."""
    client = storage_client(emulator_url)
    names = []
    for path in paths:
        name = f"{prefix}{camera + '/' if camera else ''}{path.name}"
        blob = client.bucket(bucket).blob(name)
        blob.upload_from_filename(str(path), content_type=_content_type(path))
        names.append(name)
        print(f"uploaded {path} -> gs://{bucket}/{name}")
    return names


# The columns `rows` shows by default; --json prints every column.
SUMMARY_COLUMNS = {
    "images": ("source_name", "status", "objects_found", "total_tokens", "processing_ms", "error_type"),
    "objects": ("source_name", "object_index", "label", "item_color", "output_uri"),
}


def print_rows(sqlite_path: Path, table: str, limit: int, *, as_json: bool = False) -> None:
    """Print the newest rows of the local sink's `table`: a summary table, or JSON lines."""
    if not sqlite_path.exists():
        print(f"no rows yet: {sqlite_path} does not exist")
        return
    rows = SqliteSink(sqlite_path).rows(table)
    rows = sorted(rows, key=lambda row: row["processed_at"], reverse=True)[:limit]
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        columns = SUMMARY_COLUMNS[table]
        cells = [[_cell(row[column]) for column in columns] for row in rows]
        widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
        print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
        for line in cells:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    print(f"({len(rows)} {table} rows from {sqlite_path})")


def _cell(value) -> str:
    # Labels come from a model: show control characters escaped, never send them to the terminal.
    text = "" if value is None else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(value))
    return text if len(text) <= 60 else text[:59] + "…"


def _require_free_port(port: int) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(
                f"port {port} on 127.0.0.1 is already in use (another `local up`?); "
                "stop it or choose --storage-port / --function-port"
            )


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return {
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".png": "image/png",
        ".webp": "image/webp",
        ".tif": "image/tiff",
        ".tiff": "image/tiff",
        ".bmp": "image/bmp",
        ".gif": "image/gif",
        ".txt": "text/plain",
        ".json": "application/json",
    }.get(suffix, "application/octet-stream")


def _wait_until_processed(stack: LocalStack, names: Sequence[str], timeout: float) -> bool:
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        delivered = {name for (name, _), status in (stack.bridge.delivered.items() if stack.bridge else [])}
        if all(name in delivered for name in names):
            return True
        time.sleep(0.2)
    return False


def local_search(argv: Sequence[str]) -> int:
    """`python -m segmentation.search` against `up`'s emulator and SQLite file (defaults)."""
    from segmentation.search.__main__ import main as search_main

    environ = dict(os.environ)
    environ.setdefault("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{DEFAULT_STORAGE_PORT}")
    environ.setdefault("SQLITE_PATH", str(ROOT / "local-data" / "results.sqlite"))
    os.environ["STORAGE_EMULATOR_HOST"] = environ["STORAGE_EMULATOR_HOST"]  # read by the storage client
    return search_main(argv, environ)


def demo_search(stack: LocalStack, config: Config, bucket: str) -> bool:
    """The demo's lost-bag search: one processed crop, turned a quarter and made darker as a
    passenger's photo might show it, dropped into search/; prints what the function answered."""
    import io

    from PIL import Image, ImageEnhance

    objects = SqliteSink(stack.data_dir / "results.sqlite").rows("objects")
    if not objects:
        print("search demo skipped: no objects were found in the samples")
        return True
    wanted = objects[0]
    client = storage_client(stack.storage_url)
    crop_ref = ObjectRef.from_uri(wanted["output_uri"])
    crop = Image.open(io.BytesIO(client.bucket(crop_ref.bucket).blob(crop_ref.name).download_as_bytes())).convert("RGB")
    photo = ImageEnhance.Brightness(crop.rotate(90, expand=True)).enhance(0.8)
    data = io.BytesIO()
    photo.save(data, "JPEG", quality=88)
    name = f"{config.search_prefix}demo-lost-bag.jpg"
    client.bucket(bucket).blob(name).upload_from_string(data.getvalue(), content_type="image/jpeg")
    print(f"\nlost-bag search: uploaded a photo of {wanted['output_uri']} (turned, darker) -> gs://{bucket}/{name}")
    if not _wait_until_processed(stack, [name], timeout=120):
        print("the query was not processed in time")
        return False
    results_bucket = stack.output_bucket or bucket
    results_name = f"{config.search_results_prefix}demo-lost-bag.jpg.json"
    document = json.loads(client.bucket(results_bucket).blob(results_name).download_as_bytes())
    print(f"results: gs://{results_bucket}/{results_name}  contact sheet: {document.get('contact_sheet_uri')}")
    for match in document["matches"][:5]:
        mark = "  <- the bag in the photo" if match["crop_uri"] == wanted["output_uri"] else ""
        seen = f"{match['camera']}  {match['seen_at'][:19]}"
        print(f"  #{match['rank']}  {match['score']:.3f}  {seen}  {match['crop_uri']}{mark}")
    print("search from a terminal: python -m devtools.local search PHOTO_OR_DESCRIPTION [--camera demo] [--since 2h]")
    return document.get("status") == "ok"


def _interrupt(signum, frame) -> None:
    """Stop `up` on SIGTERM the way Ctrl-C does, so the child processes are stopped too."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the emulator, the function and the event bridge")
    up.add_argument("--bucket", default=DEFAULT_BUCKET)
    up.add_argument("--storage-port", type=int, default=DEFAULT_STORAGE_PORT)
    up.add_argument("--function-port", type=int, default=DEFAULT_FUNCTION_PORT)
    up.add_argument("--data-dir", type=Path, default=ROOT / "local-data")
    up.add_argument(
        "--no-versioning",
        dest="versioning",
        action="store_false",
        help="a bucket without object versioning (dev.tfvars): a replaced generation answers 404",
    )
    up.add_argument(
        "--output-bucket",
        default="",
        help="write crops, overviews and markers to this second bucket (OUTPUT_BUCKET), "
        "as Terraform's default separate_outputs_bucket does",
    )
    up.add_argument("--demo", action="store_true", help=f"upload the images in {SAMPLES_DIR.name}/ once started")
    up.add_argument("--once", action="store_true", help="with --demo: stop when the uploads are processed")

    up_files = sub.add_parser("upload", help="upload image files into the emulated bucket's source prefix")
    up_files.add_argument("paths", nargs="+", type=Path)
    up_files.add_argument("--camera", help="sub-folder under the source prefix, e.g. cam1")
    up_files.add_argument("--query", action="store_true", help="upload into SEARCH_PREFIX: a lost-bag query")
    up_files.add_argument("--bucket", default=DEFAULT_BUCKET)
    up_files.add_argument(
        "--emulator", default=os.environ.get("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{DEFAULT_STORAGE_PORT}")
    )

    rows = sub.add_parser("rows", help="print rows from the local SQLite sink")
    rows.add_argument("--table", choices=("images", "objects"), default="objects")
    rows.add_argument("--limit", type=int, default=50)
    rows.add_argument("--db", type=Path, default=ROOT / "local-data" / "results.sqlite")
    rows.add_argument("--json", action="store_true", help="print every column, one JSON object per row")

    search = sub.add_parser(
        "search",
        help="lost-bag search against the local stack (python -m segmentation.search with its settings)",
        add_help=False,
    )
    search.add_argument("rest", nargs=argparse.REMAINDER)

    args = parser.parse_args(argv)
    config = Config.from_env()
    if args.command == "search":
        return local_search(args.rest)
    if args.command == "upload":
        prefix = config.search_prefix if args.query else config.source_prefix
        upload(args.paths, bucket=args.bucket, emulator_url=args.emulator, prefix=prefix, camera=args.camera)
        return 0
    if args.command == "rows":
        print_rows(args.db, args.table, args.limit, as_json=args.json)
        return 0

    offline = config.resolved_backend is None and "DETECTOR" not in os.environ
    stack = LocalStack(
        bucket=args.bucket,
        storage_port=args.storage_port,
        function_port=args.function_port,
        data_dir=args.data_dir,
        versioning=args.versioning,
        output_bucket=args.output_bucket,
        extra_env={"DETECTOR": "offline"} if offline else None,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    with stack:
        print(f"storage:          {stack.storage_url}  (export STORAGE_EMULATOR_HOST={stack.storage_url})")
        print(f"function:         {stack.function_url}  bucket: gs://{args.bucket}/{config.source_prefix}")
        if args.output_bucket:
            print(f"outputs:          gs://{args.output_bucket}/")
        if offline:
            print(
                "note: no Gemini credentials (GEMINI_API_KEY, or GOOGLE_CLOUD_PROJECT with ADC); the offline "
                "detector processes the images (DETECTOR=offline). It is made for plain belts seen by a fixed "
                "camera, like samples/; on other photos its rows are guesses."
            )
        elif config.resolved_backend is None and config.detector != "offline" and not config.offline_fallback:
            print(
                "note: no Gemini credentials (GEMINI_API_KEY, or GOOGLE_CLOUD_PROJECT with ADC) and "
                "DETECTOR=gemini: images get failed rows saying so"
            )
        if args.demo:
            samples = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            names = upload(
                samples, bucket=args.bucket, emulator_url=stack.storage_url, prefix=config.source_prefix, camera="demo"
            )
            finished = _wait_until_processed(stack, names, timeout=600)
            print_rows(args.data_dir / "results.sqlite", "images", len(names))
            print_rows(args.data_dir / "results.sqlite", "objects", 100)
            finished = finished and demo_search(stack, config, args.bucket)
            if args.once:
                return 0 if finished else 1
        print("running; upload with `python -m devtools.local upload FILE...`; Ctrl-C stops")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
