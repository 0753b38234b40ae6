"""DEVELOPER TOOLING, a stand-in for Cloud Storage used only for local runs and tests: a
threaded, in-memory server of the JSON API subset the google-cloud-storage client uses, with
Cloud Storage's generation semantics. The deployed function never imports it.

`python -m devtools.local up` runs it as a process of its own on 127.0.0.1, and its event
bridge follows the server's write log, so every generation is delivered as Eventarc delivers
it. Tests and benchmarks use it too (`devtools.standins.gcs_server` re-exports this module).

Why not gcp-storage-emulator: it ignores `?generation=` (an older event silently gets the newer
bytes) and every precondition (`ifGenerationMatch` writes always succeed), and it offers no way
to see a generation overwritten between two listings, so local runs could not have production's
semantics. It also serves one request at a time over HTTP/1.0 and rewrites a JSON document of
every object's metadata after each write (about 4 ms of CPU per request; BENCHMARKS.md,
section 5). This server answers each request on its own thread (`ThreadingHTTPServer`), keeps
connections alive (HTTP/1.1, as the client's connection pool expects from Google), and keeps
objects in a dict behind one lock.

The function is unchanged against it: the real google-cloud-storage client over HTTP, pointed here
with `STORAGE_EMULATOR_HOST`. What it serves, with Cloud Storage's semantics:

- buckets: `GET /storage/v1/b/{b}`, `POST /storage/v1/b` (create; 409 if it exists; the
  resource's `versioning.enabled` is honoured);
- objects: metadata `GET /storage/v1/b/{b}/o/{o}`, media `GET /download/storage/v1/b/{b}/o/{o}` or
  `...?alt=media`, `DELETE`, list `GET /storage/v1/b/{b}/o` (live objects; prefix, delimiter,
  maxResults, pageToken, and `fields` partial responses), uploads `POST /upload/storage/v1/b/{b}/o`
  with uploadType multipart, media or resumable (then `PUT` to the session URI);
- exact generations: a request naming a generation serves exactly that generation or answers
  404. Without versioning only the live generation exists; with versioning an overwritten or
  deleted generation stays readable as a noncurrent version, and a DELETE naming a generation
  removes just that one. Media responses carry X-Goog-Generation, X-Goog-Metageneration,
  X-Goog-Stored-Content-Length and X-Goog-Hash (crc32c and md5), which the client checks the
  download against;
- an upload whose metadata carries a crc32c or md5Hash that does not match the bytes answers 400,
  as Cloud Storage does; the preconditions ifGenerationMatch / ifGenerationNotMatch /
  ifMetagenerationMatch answer 412 when they fail;
- errors in Cloud Storage's JSON shape ({"error": {"code", "message", "errors": [{"reason"}]}});
  anything it does not implement answers 501, so a caller using more of the API fails loudly.

Not part of the API:

- `GET /__events?after=N` returns {"events": [...], "next": M}: every object generation finalized
  (created) after sequence number N, oldest first, each the object's resource as a finalize
  event carries it (bucket, name, generation, metageneration, contentType, size, timeCreated,
  ...) plus its sequence number `seq`; ask again with `after=M`. Overwrites within any interval
  are all there, which a listing of live objects cannot show.
- `GET /__stats` returns {"requests", "handler_s", "objects"}: requests served, seconds spent
  inside handlers (summed over threads) and live objects stored.

`round_trip_s` (0 by default): every API request waits that long on its own thread before it is
answered, as a network round trip to Cloud Storage would (the benchmark's production-like rows).

    with running_gcs_server() as server:         # in-process; server.url is the base URL
        server.create_bucket("b")
    python -m devtools.local_storage --port 9023 --bucket b [--versioning] [--data-dir DIR]
                                                  # a process of its own ("READY <url>" on stdout);
                                                  # --data-dir: objects kept across restarts (`Store`)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, unquote, urlsplit

import google_crc32c

STATS_PATH = "/__stats"
EVENTS_PATH = "/__events"
_MEDIA_HEADERS = ("Content-Type", "Content-Encoding", "Cache-Control", "Content-Disposition", "Content-Language")
_WRITABLE = (
    "contentType",
    "contentEncoding",
    "contentDisposition",
    "contentLanguage",
    "cacheControl",
    "metadata",
    "customTime",
    "storageClass",
)
_REASONS = {400: "invalid", 404: "notFound", 409: "conflict", 412: "conditionNotMet", 501: "notImplemented"}


class GcsError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class StoredObject:
    resource: dict[str, Any]
    data: bytes


@dataclass
class _Upload:
    bucket: str
    resource: dict[str, Any]
    preconditions: dict[str, list[str]]
    received: bytearray = field(default_factory=bytearray)


class Store:
    """Buckets, their live objects, noncurrent generations (versioned buckets) and the write
    log, in memory; every method is safe from several threads.

    With `persist_dir`, buckets and live objects also survive a restart: each live object's bytes
    are a file at `persist_dir/BUCKET/NAME` (where a person can open it; a name that cannot be a
    path there goes under `BUCKET/.by-hash/`), and an append-only journal records their
    metadata. Noncurrent versions and the write log start empty after a restart."""

    def __init__(self, persist_dir: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._persist = Path(persist_dir) if persist_dir else None
        self.buckets: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, dict[str, StoredObject]] = {}
        # bucket -> name -> generation -> object, for versioned buckets only.
        self.noncurrent: dict[str, dict[str, dict[str, StoredObject]]] = {}
        self.uploads: dict[str, _Upload] = {}
        self.events: list[dict[str, Any]] = []  # every finalized generation's resource, in order
        self._last_generation = 0
        if self._persist:
            self._load()

    def _now(self) -> str:
        return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def create_bucket(self, name: str, *, versioning: bool = False) -> dict[str, Any]:
        with self._lock:
            if name in self.buckets:
                raise GcsError(
                    409, f"Your previous request to create the named bucket succeeded and you already own it: {name}"
                )
            now = self._now()
            self.buckets[name] = {
                "kind": "storage#bucket",
                "id": name,
                "name": name,
                "selfLink": f"/storage/v1/b/{name}",
                "projectNumber": "0",
                "metageneration": "1",
                "location": "US",
                "storageClass": "STANDARD",
                "timeCreated": now,
                "updated": now,
                "etag": "CAE=",
                "versioning": {"enabled": bool(versioning)},
            }
            self.objects[name] = {}
            self.noncurrent[name] = {}
            self._journal({"op": "bucket", "resource": self.buckets[name]})
            return self.buckets[name]

    def bucket(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self.buckets:
                raise GcsError(404, f"The specified bucket does not exist: {name}")
            return self.buckets[name]

    def get(self, bucket: str, name: str, generation: str | None = None) -> StoredObject:
        with self._lock:
            return self._find(bucket, name, generation)

    def _find(self, bucket: str, name: str, generation: str | None) -> StoredObject:
        """The live object, or exactly `generation` (live or noncurrent); 404 otherwise."""
        if bucket not in self.objects:
            raise GcsError(404, f"The specified bucket does not exist: {bucket}")
        stored = self.objects[bucket].get(name)
        if generation is not None and (stored is None or generation != stored.resource["generation"]):
            stored = self.noncurrent[bucket].get(name, {}).get(generation)
        if stored is None:
            suffix = f"#{generation}" if generation is not None else ""
            raise GcsError(404, f"No such object: {bucket}/{name}{suffix}")
        return stored

    def _versioned(self, bucket: str) -> bool:
        return bool(self.buckets[bucket].get("versioning", {}).get("enabled"))

    def _retire(self, bucket: str, stored: StoredObject) -> None:
        """`stored` stops being live: kept as a noncurrent version if the bucket is versioned."""
        if self._versioned(bucket):
            resource = dict(stored.resource, timeDeleted=self._now())
            versions = self.noncurrent[bucket].setdefault(resource["name"], {})
            versions[resource["generation"]] = StoredObject(resource, stored.data)

    def put(self, bucket: str, metadata: dict[str, Any], data: bytes, preconditions: dict[str, list[str]]) -> dict:
        name = metadata.get("name")
        if not name:
            raise GcsError(400, "Required object name is missing.")
        crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        if metadata.get("crc32c") not in (None, crc):
            raise GcsError(400, f'Provided CRC32C "{metadata["crc32c"]}" doesn\'t match calculated CRC32C "{crc}".')
        if metadata.get("md5Hash") not in (None, md5):
            raise GcsError(
                400, f'Provided MD5 hash "{metadata["md5Hash"]}" doesn\'t match calculated MD5 hash "{md5}".'
            )
        with self._lock:
            if bucket not in self.objects:
                raise GcsError(404, f"The specified bucket does not exist: {bucket}")
            previous = self.objects[bucket].get(name)
            _check_preconditions(previous, preconditions)
            self._last_generation = max(self._last_generation + 1, time.time_ns() // 1000)
            generation = str(self._last_generation)
            now = self._now()
            resource = {
                "kind": "storage#object",
                "id": f"{bucket}/{name}/{generation}",
                "selfLink": f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
                "mediaLink": (
                    f"/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?generation={generation}&alt=media"
                ),
                "name": name,
                "bucket": bucket,
                "generation": generation,
                "metageneration": "1",
                "contentType": "application/octet-stream",
                "storageClass": "STANDARD",
                "size": str(len(data)),
                "md5Hash": md5,
                "crc32c": crc,
                "etag": md5,
                "timeCreated": now,
                "updated": now,
                "timeStorageClassUpdated": now,
            }
            for key in _WRITABLE:
                if metadata.get(key) is not None:
                    resource[key] = metadata[key]
            if previous is not None:
                self._retire(bucket, previous)
            self.objects[bucket][name] = StoredObject(resource, bytes(data))
            self._save(bucket, name, resource, data)
            self.events.append(dict(resource, seq=len(self.events) + 1))
            return resource

    def delete(self, bucket: str, name: str, generation: str | None, preconditions: dict[str, list[str]]) -> None:
        with self._lock:
            stored = self._find(bucket, name, generation)
            live = self.objects[bucket].get(name)
            if stored is live:
                _check_preconditions(stored, preconditions)
                del self.objects[bucket][name]
                self._unsave(bucket, name)
                if generation is None:  # a versioned bucket keeps it; naming the generation removes it
                    self._retire(bucket, stored)
            else:
                _check_preconditions(stored, preconditions)
                del self.noncurrent[bucket][name][generation]  # type: ignore[arg-type]

    def events_after(self, after: int, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
        """The finalize events with a sequence number above `after` (at most `limit`), and the
        number to ask with next."""
        with self._lock:
            events = [dict(event) for event in self.events[max(after, 0) : max(after, 0) + limit]]
        return events, events[-1]["seq"] if events else max(after, 0)

    def list(
        self, bucket: str, prefix: str, delimiter: str | None, max_results: int, page_token: str | None
    ) -> tuple[list[dict], list[str], str | None]:
        with self._lock:
            if bucket not in self.objects:
                raise GcsError(404, f"The specified bucket does not exist: {bucket}")
            names = sorted(
                n for n in self.objects[bucket] if n.startswith(prefix) and (not page_token or n > page_token)
            )
            items: list[dict] = []
            prefixes: set[str] = set()
            last: str | None = None
            for name in names:
                if len(items) + len(prefixes) >= max_results:
                    return items, sorted(prefixes), last
                if delimiter and delimiter in name[len(prefix) :]:
                    prefixes.add(name[: name.index(delimiter, len(prefix)) + len(delimiter)])
                else:
                    items.append(self.objects[bucket][name].resource)
                last = name
            return items, sorted(prefixes), None

    # --- persistence (local runs only) -----------------------------------------------------------

    def _file(self, bucket: str, name: str) -> Path:
        """Where a live object's bytes are kept: its name as a path, unless that could leave the
        bucket's folder or is not a plain relative path."""
        assert self._persist is not None
        parts = name.split("/")
        if (
            all(part not in ("", ".", "..") and "\0" not in part and not part.startswith(".by-hash") for part in parts)
            and len(name.encode("utf-8", "surrogatepass")) < 1024
        ):
            return self._persist / bucket / Path(*parts)
        return self._hashed_file(bucket, name)

    def _hashed_file(self, bucket: str, name: str) -> Path:
        assert self._persist is not None
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        return self._persist / bucket / ".by-hash" / digest

    def _journal(self, entry: dict[str, Any]) -> None:
        if self._persist:
            self._persist.mkdir(parents=True, exist_ok=True)
            with open(self._persist / "journal.jsonl", "a", encoding="utf-8") as journal:
                journal.write(json.dumps(entry) + "\n")

    def _save(self, bucket: str, name: str, resource: dict[str, Any], data: bytes) -> None:
        if not self._persist:
            return
        for path in (self._file(bucket, name), self._hashed_file(bucket, name)):
            try:  # a name can clash with a folder of another ("a" and "a/b"): then by hash
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(path.name + ".partial")
                partial.write_bytes(data)
                partial.replace(path)
                break
            except OSError:
                continue
        self._journal({"op": "put", "resource": resource, "file": str(path.relative_to(self._persist))})

    def _unsave(self, bucket: str, name: str) -> None:
        if self._persist:
            self._journal({"op": "delete", "bucket": bucket, "name": name})

    def _load(self) -> None:
        """Rebuild buckets and live objects from the journal and the files it names."""
        assert self._persist is not None
        journal = self._persist / "journal.jsonl"
        if not journal.exists():
            return
        files: dict[tuple[str, str], str] = {}
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if entry["op"] == "bucket":
                self.buckets[entry["resource"]["name"]] = entry["resource"]
                self.objects.setdefault(entry["resource"]["name"], {})
                self.noncurrent.setdefault(entry["resource"]["name"], {})
            elif entry["op"] == "put":
                resource = entry["resource"]
                files[(resource["bucket"], resource["name"])] = entry["file"]
                self.objects[resource["bucket"]][resource["name"]] = StoredObject(resource, b"")
                self._last_generation = max(self._last_generation, int(resource["generation"]))
            elif entry["op"] == "delete":
                self.objects[entry["bucket"]].pop(entry["name"], None)
        for bucket, objects in self.objects.items():
            for name, stored in list(objects.items()):
                try:
                    stored.data = (self._persist / files[(bucket, name)]).read_bytes()
                except OSError:
                    del objects[name]  # its file is gone: so is the object

    def object_count(self) -> int:
        with self._lock:
            return sum(len(objects) for objects in self.objects.values())


def _check_preconditions(stored: StoredObject | None, preconditions: dict[str, list[str]]) -> None:
    generation = stored.resource["generation"] if stored else "0"
    metageneration = stored.resource["metageneration"] if stored else None
    wanted = preconditions.get("ifGenerationMatch", [None])[0]
    if wanted is not None and wanted != generation:
        raise GcsError(412, "At least one of the pre-conditions you specified did not hold.")
    unwanted = preconditions.get("ifGenerationNotMatch", [None])[0]
    if unwanted is not None and unwanted == generation:
        raise GcsError(412, "At least one of the pre-conditions you specified did not hold.")
    meta = preconditions.get("ifMetagenerationMatch", [None])[0]
    if meta is not None and meta != metageneration:
        raise GcsError(412, "At least one of the pre-conditions you specified did not hold.")


def select_fields(value: Any, fields: str | None) -> Any:
    """`value` reduced to a partial response, for `fields` like "items(name,size),nextPageToken"."""
    if not fields:
        return value
    return _select(value, _parse_fields(fields))


def _parse_fields(text: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    stack = [tree]
    token = ""
    for char in text + ",":
        if char in ",()":
            if token.strip():
                stack[-1][token.strip()] = {}
            if char == "(":
                stack.append(stack[-1][token.strip()])
            elif char == ")":
                stack.pop()
            token = ""
        else:
            token += char
    return tree


def _select(value: Any, tree: dict[str, Any]) -> Any:
    if not tree:
        return value
    if isinstance(value, list):
        return [_select(item, tree) for item in value]
    if isinstance(value, dict):
        return {key: _select(value[key], sub) for key, sub in tree.items() if key in value}
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Google's front ends
    disable_nagle_algorithm = True
    server: GcsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        method = self.headers.get("X-HTTP-Method-Override") or method
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        segments = [unquote(segment) for segment in parts.path.split("/")[1:]]
        try:
            status, headers, payload = self._route(method, segments, query, body)
        except GcsError as exc:
            status, headers = exc.code, {}
            payload = {
                "error": {
                    "code": exc.code,
                    "message": exc.message,
                    "errors": [
                        {"domain": "global", "reason": _REASONS.get(exc.code, "invalid"), "message": exc.message}
                    ],
                }
            }
        if isinstance(payload, (dict, list)):
            headers.setdefault("Content-Type", "application/json; charset=UTF-8")
            payload = json.dumps(payload).encode()
        if self.server.round_trip_s and segments not in (["__stats"], ["__events"]):
            time.sleep(self.server.round_trip_s)
        self._reply(status, headers, payload or b"")
        self.server.count(time.perf_counter() - started)

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        headers["Content-Length"] = str(len(payload))
        lines += [f"{key}: {value}" for key, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        try:
            self.wfile.write(head + payload)  # one write: no Nagle / delayed-ACK stall
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes):
        store = self.server.store
        first = lambda key: query.get(key, [None])[0]
        if seg == ["__stats"] and method == "GET":
            return (
                200,
                {},
                {"requests": self.server.requests, "handler_s": self.server.handler_s, "objects": store.object_count()},
            )
        if seg == ["__events"] and method == "GET":
            events, after = store.events_after(int(first("after") or 0))
            return 200, {}, {"events": events, "next": after}
        download = seg[:1] == ["download"]
        if download:
            seg = seg[1:]
        if (
            seg[:3] == ["upload", "storage", "v1"]
            and len(seg) == 6
            and seg[3] == "b"
            and seg[5] == "o"
            and method == "POST"
        ):
            return self._upload(seg[4], query, body)
        if seg[:1] == ["upload"] and len(seg) == 2 and method == "PUT":
            return self._resumable_chunk(seg[1], body)
        if seg[:2] != ["storage", "v1"] or len(seg) < 3 or seg[2] != "b":
            raise GcsError(501, f"{method} {self.path} is not implemented by the local stand-in")
        if len(seg) == 3 and method == "POST":
            metadata = json.loads(body or b"{}")
            return (
                200,
                {},
                store.create_bucket(
                    metadata.get("name") or first("name") or "",
                    versioning=bool((metadata.get("versioning") or {}).get("enabled")),
                ),
            )
        if len(seg) == 4 and method == "GET":
            return 200, {}, select_fields(store.bucket(seg[3]), first("fields"))
        if len(seg) == 5 and seg[4] == "o" and method == "GET":
            max_results = int(first("maxResults") or 1000)
            items, prefixes, token = store.list(
                seg[3], first("prefix") or "", first("delimiter"), min(max_results, 1000), first("pageToken")
            )
            listing: dict[str, Any] = {"kind": "storage#objects", "items": items}
            if prefixes:
                listing["prefixes"] = prefixes
            if token:
                listing["nextPageToken"] = token
            return 200, {}, select_fields(listing, first("fields"))
        if len(seg) == 6 and seg[4] == "o":
            bucket, name = seg[3], seg[5]
            if method == "GET":
                stored = store.get(bucket, name, first("generation"))
                if download or first("alt") == "media":
                    return 200, _media_headers(stored), stored.data
                return 200, {}, select_fields(stored.resource, first("fields"))
            if method == "DELETE":
                store.delete(bucket, name, first("generation"), query)
                return 204, {}, b""
        raise GcsError(501, f"{method} {self.path} is not implemented by the local stand-in")

    def _upload(self, bucket: str, query: dict[str, list[str]], body: bytes):
        store = self.server.store
        kind = query.get("uploadType", [""])[0]
        if kind == "multipart":
            metadata, data, content_type = _split_multipart(self.headers.get("Content-Type", ""), body)
            metadata.setdefault("contentType", content_type)
        elif kind == "media":
            metadata, data = {}, body
            metadata["contentType"] = self.headers.get("Content-Type") or "application/octet-stream"
        elif kind == "resumable":
            metadata = json.loads(body or b"{}")
            if self.headers.get("X-Upload-Content-Type"):
                metadata.setdefault("contentType", self.headers["X-Upload-Content-Type"])
            if query.get("name"):
                metadata["name"] = query["name"][0]
            store.bucket(bucket)
            upload_id = uuid.uuid4().hex
            with self.server.uploads_lock:
                self.server.uploads[upload_id] = _Upload(bucket, metadata, query)
            host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
            return 200, {"Location": f"http://{host}/upload/{upload_id}"}, b""
        else:
            raise GcsError(501, f"uploadType={kind} is not implemented by the local stand-in")
        if query.get("name"):
            metadata["name"] = query["name"][0]
        return 200, {}, store.put(bucket, metadata, data, query)

    def _resumable_chunk(self, upload_id: str, body: bytes):
        with self.server.uploads_lock:
            upload = self.server.uploads.get(upload_id)
        if upload is None:
            raise GcsError(404, "No such upload session.")
        upload.received += body
        match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+|\*)", self.headers.get("Content-Range", "bytes */*"))
        total = match.group(1) if match else "*"
        if total == "*" or int(total) > len(upload.received):
            headers = {"Range": f"bytes=0-{len(upload.received) - 1}"} if upload.received else {}
            return 308, headers, b""
        with self.server.uploads_lock:
            self.server.uploads.pop(upload_id, None)
        return (
            200,
            {},
            self.server.store.put(upload.bucket, upload.resource, bytes(upload.received), upload.preconditions),
        )


def _media_headers(stored: StoredObject) -> dict[str, str]:
    resource = stored.resource
    headers = {
        "X-Goog-Generation": resource["generation"],
        "X-Goog-Metageneration": resource["metageneration"],
        "X-Goog-Stored-Content-Length": resource["size"],
        "X-Goog-Hash": f"crc32c={resource['crc32c']},md5={resource['md5Hash']}",
        "ETag": resource["etag"],
    }
    for header in _MEDIA_HEADERS:
        key = header[0].lower() + header[1:].replace("-", "")
        if resource.get(key):
            headers[header] = resource[key]
    return headers


def _split_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
    """(JSON metadata, media bytes, media content type) of a multipart/related upload body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise GcsError(400, "multipart upload without a boundary")
    delimiter = b"--" + match.group(1).encode()
    parts = body.split(delimiter)
    # ["", part1, part2, "--\r\n" or "--"]: each part is "\r\nheaders\r\n\r\ncontent\r\n"
    if len(parts) < 4:
        raise GcsError(400, "multipart upload must have a metadata part and a media part")

    def split(part: bytes) -> tuple[str, bytes]:
        head, _, content = part.partition(b"\r\n\r\n")
        kind = ""
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-type:"):
                kind = line.split(":", 1)[1].strip()
        return kind, content[:-2] if content.endswith(b"\r\n") else content

    _, metadata = split(parts[1])
    media_type, data = split(parts[2])
    try:
        return json.loads(metadata or b"{}"), data, media_type or "application/octet-stream"
    except json.JSONDecodeError as exc:
        raise GcsError(400, f"metadata part is not JSON: {exc}") from None


class GcsServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # dozens of clients connect at once; http.server's 5 drops SYNs
    block_on_close = False

    def __init__(self, address: tuple[str, int], persist_dir: Path | None = None):
        super().__init__(address, _Handler)
        self.store = Store(persist_dir)
        self.uploads: dict[str, _Upload] = {}
        self.uploads_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.requests = 0
        self.handler_s = 0.0
        self.round_trip_s = 0.0

    def count(self, seconds: float) -> None:
        with self._stats_lock:
            self.requests += 1
            self.handler_s += seconds

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"  # type: ignore[str-bytes-safe]

    def create_bucket(self, name: str, *, versioning: bool = False) -> None:
        self.store.create_bucket(name, versioning=versioning)


@contextlib.contextmanager
def running_gcs_server(port: int = 0) -> Iterator[GcsServer]:
    """Serve the stand-in on 127.0.0.1 in this process (a background thread); stop on exit."""
    server = GcsServer(("127.0.0.1", port))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="gcs-stand-in", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    parser.add_argument("--versioning", action="store_true", help="with object versioning (as prod.tfvars has)")
    parser.add_argument("--data-dir", type=Path, help="keep buckets and live objects here across restarts")
    args = parser.parse_args(argv)
    server = GcsServer(("127.0.0.1", args.port), args.data_dir)
    for bucket in args.bucket:
        if bucket not in server.store.buckets:
            server.create_bucket(bucket, versioning=args.versioning)
    serve_until_sigterm(server)


def serve_until_sigterm(server: Any) -> NoReturn:
    """Print "READY <url>", serve `server` (an http.server) until SIGTERM, then exit 0."""
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    host, port = server.server_address[:2]
    print(f"READY http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
