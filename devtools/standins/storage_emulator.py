"""TEST STAND-IN for Cloud Storage: gcp-storage-emulator served in-process on 127.0.0.1.

`running_storage_emulator()` starts the emulator's request handler on a free port with an
in-memory store, yields its base URL and stops it on exit. It sets nothing global: a test
points the real google-cloud-storage client at it with
`monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)`, or builds
`storage.Client(client_options={"api_endpoint": url}, credentials=AnonymousCredentials())`.

The yielded URL is a `str` subclass (`StorageEmulator`) that also carries test controls:

- `requests`: every request the server saw, in order (method, decoded path, query), so a test
  can assert e.g. that no media download was made (`media_requests()`).
- `fail_next(n, method=..., path=..., status=503)`: the next `n` requests whose method matches
  and whose decoded path matches the regex (searched) answer `status` with a GCS-shaped error
  body (reason as GCS would give, and `Retry-After` if given) without reaching the emulator.
- `create_bucket(name)`: make a bucket directly in the store.

Generations. The stock emulator (checked in 2026.7.19) keeps only the live generation of an
object, ignores `?generation=` on metadata GETs and on media downloads (it serves whatever is
live), sends no `X-Goog-Generation` header on downloads, and ignores every precondition
(`ifGenerationMatch` and friends). Production GCS serves exactly the requested generation or
404s, always reports the served generation in `X-Goog-Generation`, and refuses a write whose
precondition fails. To let tests prove that code reads the event's generation and writes
conditionally, this module adds a TEST-ONLY extension in front of the emulator's handlers,
chosen with `generations=`:

- "exact" (default): a GET of an object (metadata or media) with `?generation=N` answers 404
  unless N is the live generation, and media responses carry `X-Goog-Generation`,
  `X-Goog-Metageneration` and `X-Goog-Stored-Content-Length`, as production GCS does; an
  upload with `ifGenerationMatch=N` (multipart, media, or a resumable upload's first request)
  answers 412 unless the live generation of its object is N (0: none), and so does a delete
  with `ifGenerationMatch=N` of a live object of another generation.
- "serve-live": the stock behaviour (the requested generation is ignored and the live object
  is served; preconditions as in "exact") but media responses report the generation actually served, like production's
  header would. Lets a test reach the "served generation differs" check.
- "stock": the unmodified emulator.

Object names. The stock emulator keeps object bytes in a path-like store, so `raw//a.jpg` and
`raw/./a.jpg` share the bytes of `raw/a.jpg`, and a name with a `..` segment makes it drop the
connection; it also accepts names Cloud Storage refuses (CR or LF, more than 1024 bytes). With
`gcs_names=True` (a TEST-ONLY extension, off by default) it behaves like Cloud Storage's flat
namespace: bytes are keyed by a hash of the exact name, and creating an object whose name Cloud
Storage refuses answers 400 (`gcs_name_problem` says why). Always: a response header the stock
emulator would drop the connection on (custom metadata outside Latin-1, echoed as x-goog-meta-*)
is sent percent-encoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import HTTPServer
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gcp_storage_emulator.exceptions import Conflict as EmulatorConflict
from gcp_storage_emulator.handlers import buckets as emulator_buckets
from gcp_storage_emulator.server import RequestHandler as EmulatorRequestHandler
from gcp_storage_emulator.storage import Storage as EmulatorStorage

GenerationMode = Literal["exact", "serve-live", "stock"]

# A JSON-API metadata GET or a media download of one object; the client percent-encodes the
# object name into one path segment.
_STATUS_REASONS = {
    400: "invalid",
    401: "required",
    403: "forbidden",
    404: "notFound",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
}
_PRINTABLE_ASCII = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "%")
_UPLOAD_PATH = re.compile(r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$")
_OBJECT_PATH = re.compile(r"^(?P<download>/download)?/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class SeenRequest:
    """One request as the emulator received it (`path` percent-decoded)."""

    method: str
    path: str
    query: dict[str, list[str]]

    @property
    def is_media(self) -> bool:
        """True for a download of object bytes (not metadata)."""
        return self.method == "GET" and (self.path.startswith("/download/") or self.query.get("alt") == ["media"])


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path: re.Pattern[str] | None
    retry_after: float | None
    reason: str


@dataclass
class _State:
    generations: GenerationMode
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[SeenRequest] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)

    def take_fault(self, method: str, path: str) -> _Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining <= 0:
                    continue
                if fault.method and fault.method != method:
                    continue
                if fault.path and not fault.path.search(path):
                    continue
                fault.remaining -= 1
                return fault
        return None


class _Server(HTTPServer):
    # One request at a time, like the emulator's own server: its store is not thread-safe.
    # A deep accept queue, though: the function uploads in parallel, and the default of 5 would
    # have the kernel reset connections, a failure real Cloud Storage does not show.
    request_queue_size = 128
    state: _State


class _Handler(EmulatorRequestHandler):
    """The emulator's handler plus request recording, fault injection and exact generations."""

    server: _Server
    _extra_headers: dict[str, str]

    def _intercept(self, method: str) -> bool:
        """Record the request; answer it here (and return True) for a fault or a generation miss."""
        self._extra_headers = {}
        method = self.headers.get("x-http-method-override") or method
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        state = self.server.state
        with state.lock:
            state.seen.append(SeenRequest(method, path, query))

        fault = state.take_fault(method, path)
        if fault is not None:
            self._drain_body()
            message = f"injected by the test stand-in: HTTP {fault.status}"
            body = {
                "error": {
                    "code": fault.status,
                    "message": message,
                    "errors": [{"domain": "global", "reason": fault.reason, "message": message}],
                }
            }
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._send_json(fault.status, body, headers)
            return True

        if method == "POST" and "ifGenerationMatch" in query and state.generations != "stock":
            return self._refuse_unmet_precondition(parts.path, query)
        if method == "DELETE" and "ifGenerationMatch" in query and state.generations != "stock":
            return self._refuse_unmet_delete_precondition(parts.path, query)

        match = _OBJECT_PATH.fullmatch(parts.path)
        if method != "GET" or match is None or state.generations == "stock":
            return False
        bucket, name = unquote(match["bucket"]), unquote(match["name"])
        live = self.storage.objects.get(bucket, {}).get(name)
        if live is None:
            return False  # the emulator answers 404 itself
        requested = query.get("generation", [None])[0]
        if state.generations == "exact" and requested is not None and requested != str(live["generation"]):
            message = f"No such object: {bucket}/{name}#{requested}"
            body = {
                "error": {
                    "code": 404,
                    "message": message,
                    "errors": [{"domain": "global", "reason": "notFound", "message": message}],
                }
            }
            self._send_json(404, body, {})
            return True
        if match["download"] or query.get("alt") == ["media"]:
            self._extra_headers = {
                "X-Goog-Generation": str(live["generation"]),
                "X-Goog-Metageneration": str(live["metageneration"]),
                "X-Goog-Stored-Content-Length": str(live["size"]),
            }
        return False

    def _refuse_unmet_precondition(self, path: str, query: dict[str, list[str]]) -> bool:
        """An upload with `ifGenerationMatch=N`: answer 412 (and return True) unless the live
        generation of the named object is N (0: no live object), as Cloud Storage does; else
        hand the request, body intact, to the emulator. The store is checked and written within
        this one request (the server serves one at a time), so the check is atomic."""
        upload = _UPLOAD_PATH.fullmatch(path)
        if upload is None:
            return False
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # type: ignore[has-type]
        self.rfile = io.BytesIO(body)
        name = query.get("name", [None])[0] or _upload_name(self.headers.get("Content-Type", ""), body)
        bucket = unquote(upload["bucket"])
        live = self.storage.objects.get(bucket, {}).get(name) if name else None
        live_generation = int(live["generation"]) if live else 0
        if str(live_generation) == query["ifGenerationMatch"][0]:
            return False
        self._send_precondition_failed()
        return True

    def _refuse_unmet_delete_precondition(self, path: str, query: dict[str, list[str]]) -> bool:
        """A delete with `ifGenerationMatch=N` of a live object of another generation: answer
        412 (and return True), as Cloud Storage does; otherwise (a match, or no object: the
        emulator's own 404) hand it to the emulator."""
        match = _OBJECT_PATH.fullmatch(path)
        if match is None:
            return False
        live = self.storage.objects.get(unquote(match["bucket"]), {}).get(unquote(match["name"]))
        if live is None or str(live["generation"]) == query["ifGenerationMatch"][0]:
            return False
        self._send_precondition_failed()
        return True

    def _send_precondition_failed(self) -> None:
        message = "At least one of the pre-conditions you specified did not hold."
        body_json = {
            "error": {
                "code": 412,
                "message": message,
                "errors": [{"domain": "global", "reason": "conditionNotMet", "message": message}],
            }
        }
        self._send_json(412, body_json, {})

    def _drain_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _send_json(self, status: int, body: dict, headers: dict[str, str]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def send_header(self, keyword: str, value: str) -> None:
        # http.server writes headers as Latin-1, so the stock emulator drops the connection when
        # a header it echoes (x-goog-meta-* custom metadata, from JSON where any Unicode is
        # fine) holds other characters. Send those percent-encoded instead.
        text = str(value)
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            text = quote(text, safe=_PRINTABLE_ASCII)
        super().send_header(keyword, text)

    def end_headers(self) -> None:
        for key, value in getattr(self, "_extra_headers", {}).items():
            self.send_header(key, value)
        self._extra_headers = {}
        super().end_headers()

    def do_GET(self) -> None:
        if not self._intercept("GET"):
            super().do_GET()

    def do_POST(self) -> None:
        if not self._intercept("POST"):
            super().do_POST()

    def do_PUT(self) -> None:
        if not self._intercept("PUT"):
            super().do_PUT()

    def do_PATCH(self) -> None:
        if not self._intercept("PATCH"):
            super().do_PATCH()

    def do_DELETE(self) -> None:
        if not self._intercept("DELETE"):
            super().do_DELETE()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet; `requests` has the record


class StorageEmulator(str):
    """The running emulator's base URL (use it as STORAGE_EMULATOR_HOST) plus test controls."""

    _state: _State
    _storage: EmulatorStorage

    def __new__(cls, url: str, state: _State, storage: EmulatorStorage) -> StorageEmulator:
        self = super().__new__(cls, url)
        self._state = state
        self._storage = storage
        return self

    @property
    def url(self) -> str:
        return str(self)

    @property
    def requests(self) -> list[SeenRequest]:
        """Every request seen so far, oldest first (a copy)."""
        with self._state.lock:
            return list(self._state.seen)

    def media_requests(self) -> list[SeenRequest]:
        """The requests that downloaded object bytes."""
        return [request for request in self.requests if request.is_media]

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.seen.clear()

    def fail_next(
        self,
        n: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int = 503,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Answer the next `n` requests matching `method` and the `path` regex with `status`.

        The error body's reason defaults to what GCS sends for that status ("backendError" for 5xx).
        """
        pattern = re.compile(path) if path else None
        reason = reason or _STATUS_REASONS.get(status, "backendError" if status >= 500 else "invalid")
        with self._state.lock:
            self._state.faults.append(_Fault(n, status, method and method.upper(), pattern, retry_after, reason))

    def create_bucket(self, name: str) -> None:
        """Create bucket `name` directly in the store (no request is recorded)."""
        emulator_buckets.create_bucket(name, self._storage)

    def live_generation(self, bucket: str, name: str) -> int | None:
        """The generation the emulator holds for an object, or None."""
        obj = self._storage.objects.get(bucket, {}).get(name)
        return None if obj is None else int(obj["generation"])


def _upload_name(content_type: str, body: bytes) -> str | None:
    """The object name in an upload's JSON metadata: the body of a resumable upload's first
    request, or the first part of a multipart upload."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if boundary:
        parts = body.split(b"--" + boundary.group(1).encode())
        body = parts[1].split(b"\r\n\r\n", 1)[-1] if len(parts) > 1 else b""
    try:
        return json.loads(body.decode("utf-8").strip() or "{}").get("name")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None


def gcs_name_problem(name: str) -> str | None:
    """Why Cloud Storage would refuse to create an object called `name`, or None.

    https://cloud.google.com/storage/docs/objects#naming: 1-1024 bytes of UTF-8, no carriage
    return or line feed, not "." or "..", not under ".well-known/acme-challenge/".
    """
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "Object name is not valid UTF-8."
    if not 1 <= size <= 1024:
        return f"Object name must be 1-1024 bytes of UTF-8, not {size}."
    if "\r" in name or "\n" in name:
        return "Object name must not contain carriage return or line feed characters."
    if name in (".", "..") or name.startswith(".well-known/acme-challenge/"):
        return f"Object name {name!r} is not allowed."
    return None


def _use_gcs_object_names(storage: EmulatorStorage) -> None:
    """Make `storage` hold exactly the object names Cloud Storage holds (see the module doc)."""
    plain_path, plain_create = storage._object_path, storage.create_file

    def object_path(bucket_name: str, file_name: str) -> str:
        digest = hashlib.sha256(file_name.encode("utf-8", errors="surrogatepass")).hexdigest()
        return plain_path(bucket_name, digest)

    def create_file(bucket_name, file_name, *args, **kwargs):
        problem = gcs_name_problem(file_name)
        if problem:
            raise EmulatorConflict(problem)  # the emulator's handlers answer it with 400
        return plain_create(bucket_name, file_name, *args, **kwargs)

    storage._object_path = object_path
    storage.create_file = create_file


@contextlib.contextmanager
def running_storage_emulator(
    *, generations: GenerationMode = "exact", gcs_names: bool = False
) -> Iterator[StorageEmulator]:
    """Serve an in-memory gcp-storage-emulator on 127.0.0.1:<free port>; yield its URL; stop on exit."""
    storage = EmulatorStorage(use_memory_fs=True)
    if gcs_names:
        _use_gcs_object_names(storage)
    state = _State(generations=generations)
    httpd = _Server(("127.0.0.1", 0), partial(_Handler, storage))
    httpd.state = state
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="storage-emulator", daemon=True
    )
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield StorageEmulator(f"http://{host}:{port}", state, storage)  # type: ignore[str-bytes-safe]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
