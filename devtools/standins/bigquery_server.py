"""TEST STAND-IN for BigQuery's streaming API (`tabledata.insertAll`) and for the one query the
lost-bag search runs (`jobs.query`), over real HTTP.

`FakeBigQuery` serves POST /bigquery/v2/projects/{p}/datasets/{d}/tables/{t}/insertAll and
POST /bigquery/v2/projects/{p}/queries on 127.0.0.1:<free port> from a thread, so the real
google-cloud-bigquery client can be pointed at it (`BIGQUERY_EMULATOR_HOST=<url>`, which the
client honours for its endpoint, or `client_options={"api_endpoint": url}`), with
`AnonymousCredentials`.

What it imitates, and how far:
- Tables: `{t}` must be one of segmentation/schema's tables; rows are checked against
  segmentation/schema/{t}.json with its own type rules (deliberately not
  `segmentation.schema.validate_row`, so it is an independent check; REPEATED columns take a
  JSON array of such values, or null). Any other table -> 404.
- Validation errors come back as BigQuery does: HTTP 200 with
  `insertErrors: [{"index": i, "errors": [{"reason": "invalid", "location": col, ...}]}]`;
  without `skipInvalidRows` the whole request is refused and the valid rows are reported with
  reason "stopped"; with it, the valid rows are stored.
- insertId de-duplication: a row whose insertId the table has already accepted is dropped
  silently (BigQuery does this best-effort, for about a minute; here always).
- Faults: `fail_next(n, status=503)` answers the next n requests with that HTTP status and a
  Google-shaped error body (`reason` settable, e.g. 403 "rateLimitExceeded");
  `reject_next(n, reason=...)` answers the next n requests 200 with every row in
  insertErrors (reason "invalid" by default; BigQuery also uses e.g. "timeout").
- `round_trip_s` (0 by default): every request waits that long on its own thread before it is
  answered, as a network round trip to BigQuery would (the benchmark's production-like rows).
- Queries: it does NOT parse SQL. `jobs.query` (what `Client.query_and_wait` sends) is answered
  only for the query of `segmentation.search.bigquery_store` (`SEARCH_SQL`), recognised by the
  marker comment on its first line; the one backquoted table id in the SQL names the rows to
  search. It evaluates that query's meaning in Python over the rows inserted into that table,
  with the request's named parameters (all required, typed as the store sends them): rows of the
  embedder, model and length; camera equal; `since <= seen_at < until`; `LOWER(item_color) LIKE
  color_like` (with `\\` escapes); offline rows only with include_offline; the `fetch_k` nearest
  by cosine distance (VECTOR_SEARCH), then the nearest row per object_row_id, by distance and
  object_row_id, at most `top_k`. A NULL parameter means no filter, as in the SQL. The answer is
  BigQuery's wire format: `schema` and rows as `f`/`v` strings, TIMESTAMPs as microseconds
  (`formatOptions.useInt64Timestamp`, which the client sets), `jobComplete: true`, one page.
  Any other SQL, legacy SQL or a missing parameter -> 400 `invalidQuery`, as BigQuery answers a
  query it cannot run; a table it holds no schema for -> 404 `notFound`. No vector index, no
  approximation: the stand-in is exact, as VECTOR_SEARCH is without an index.
Nothing else of BigQuery (tables API, jobs.insert/get, partitions, schema updates) exists here.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from segmentation.schema import TABLES, load_schema

_INSERT_ALL = re.compile(
    r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/(?P<dataset>[^/]+)/tables/(?P<table>[^/]+)/insertAll$"
)
_QUERY = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/queries$")
# The first line of segmentation.search.bigquery_store.SEARCH_SQL (copied, not imported: the
# stand-in recognises the store's query, it does not share its code).
SEARCH_MARKER = "-- conveyor-segmentation: BigQueryVectorStore.nearest v1"
# Named parameters of that query and their types.
_SEARCH_PARAMETERS = {
    "query_vector": "ARRAY<FLOAT64>",
    "embedder": "STRING",
    "model": "STRING",
    "dimensions": "INT64",
    "camera": "STRING",
    "since": "TIMESTAMP",
    "until": "TIMESTAMP",
    "color_like": "STRING",
    "include_offline": "BOOL",
    "fetch_k": "INT64",
    "top_k": "INT64",
}
# Its result columns, as BigQuery types them in a query's schema.
_SEARCH_RESULT = (
    ("object_row_id", "STRING"),
    ("crop_uri", "STRING"),
    ("source_uri", "STRING"),
    ("camera", "STRING"),
    ("seen_at", "TIMESTAMP"),
    ("label", "STRING"),
    ("item_color", "STRING"),
    ("item_gen_desc", "STRING"),
    ("item_det_desc", "STRING"),
    ("score", "FLOAT"),
)
_STATUS_REASONS = {
    400: "invalid",
    403: "rateLimitExceeded",
    404: "notFound",
    429: "rateLimitExceeded",
    500: "internalError",
    502: "badGateway",
    503: "backendError",
    504: "backendError",
}


@dataclass
class _Fault:
    remaining: int
    status: int
    reason: str
    retry_after: float | None


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    insert_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    rejections: list[list[Any]] = field(default_factory=list)  # [remaining, reason, message]
    query_count: int = 0


def _value_error(column: dict[str, str], value: Any) -> str | None:
    """BigQuery-like check of one JSON value; the message for a bad value, else None."""
    kind = column["type"]
    if kind == "STRING":
        ok = isinstance(value, str)
    elif kind == "INT64":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()) is not None
        )
        if ok and not -(2**63) <= int(value) < 2**63:
            ok = False
    elif kind == "FLOAT64":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(value, str):
            try:
                float(value)
                ok = True
            except ValueError:
                ok = False
    elif kind == "BOOL":
        ok = isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false"))
    elif kind == "TIMESTAMP":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(value, str):
            try:
                dt.datetime.fromisoformat(value.replace(" UTC", "+00:00"))
                ok = True
            except ValueError:
                ok = False
    else:
        return f"unsupported type {kind}"
    return None if ok else f"Cannot convert value to {kind.lower()}: {json.dumps(value)[:80]}."


def _column_error(column: dict[str, str], value: Any) -> str | None:
    """`_value_error` for a column of any mode: a REPEATED column takes a JSON array of values."""
    if column["mode"] != "REPEATED":
        return _value_error(column, value)
    if not isinstance(value, list):
        return f"Array specified for non-repeated field or wrong value for repeated field {column['name']}."
    for item in value:
        problem = "null in an array" if item is None else _value_error(column, item)
        if problem:
            return problem
    return None


def row_errors(table: str, row: Any) -> list[dict[str, str]]:
    """The insertErrors entries BigQuery would give `row` for our `table` schema."""
    if not isinstance(row, dict):
        return [{"reason": "invalid", "location": "", "debugInfo": "", "message": "Row is not a JSON object."}]
    columns = {column["name"]: column for column in load_schema(table)}
    errors = []
    for name in row:
        if name not in columns:
            errors.append(
                {"reason": "invalid", "location": name, "debugInfo": "", "message": "no such field: " + name + "."}
            )
    for name, column in columns.items():
        value = row.get(name)
        if value is None:
            if column["mode"] == "REQUIRED":
                errors.append(
                    {
                        "reason": "invalid",
                        "location": name,
                        "debugInfo": "",
                        "message": f"Missing required field: {name}.",
                    }
                )
            continue
        problem = _column_error(column, value)
        if problem:
            errors.append({"reason": "invalid", "location": name, "debugInfo": "", "message": problem})
    return errors


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like the real endpoint
    # TCP_NODELAY: an answer's headers and body go out in two writes; with Nagle's algorithm the
    # body would wait for the client's delayed ACK on the kept-alive connection (~20 ms an insert).
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        if self.server.round_trip_s:
            time.sleep(self.server.round_trip_s)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.server.state
        match = _INSERT_ALL.fullmatch(self.path.split("?", 1)[0])
        with state.lock:
            state.requests.append({"path": self.path, "body": body})
            fault = next((f for f in state.faults if f.remaining > 0), None)
            if fault is not None:
                fault.remaining -= 1
        if fault is not None:
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return self._error(
                fault.status, fault.reason, f"injected by the test stand-in: HTTP {fault.status}", headers
            )
        query = _QUERY.fullmatch(self.path.split("?", 1)[0])
        if query is not None:
            return self._query(state, query["project"], body)
        if match is None:
            return self._error(404, "notFound", f"Not found: URL {self.path}")
        table = match["table"]
        if table not in TABLES:
            return self._error(404, "notFound", f"Not found: Table {match['project']}:{match['dataset']}.{table}")
        try:
            request = json.loads(body)
            rows = request["rows"]
            assert isinstance(rows, list)
        except (ValueError, KeyError, AssertionError):
            return self._error(400, "invalid", "Invalid JSON payload received.")
        table_id = f"{match['project']}.{match['dataset']}.{table}"
        self._send(200, self._insert(state, table_id, table, rows, bool(request.get("skipInvalidRows"))))

    def _insert(self, state: _State, table_id: str, table: str, rows: list, skip_invalid: bool) -> dict:
        with state.lock:
            rejection = next((r for r in state.rejections if r[0] > 0), None)
            if rejection is not None:
                rejection[0] -= 1
                error = {"reason": rejection[1], "location": "", "debugInfo": "", "message": rejection[2]}
                return {
                    "kind": "bigquery#tableDataInsertAllResponse",
                    "insertErrors": [{"index": i, "errors": [error]} for i in range(len(rows))],
                }
            problems = {
                i: row_errors(table, item.get("json") if isinstance(item, dict) else None)
                for i, item in enumerate(rows)
            }
            problems = {i: errors for i, errors in problems.items() if errors}
            if problems and not skip_invalid:
                stopped = {"reason": "stopped", "location": "", "debugInfo": "", "message": ""}
                insert_errors = [{"index": i, "errors": problems.get(i, [stopped])} for i in range(len(rows))]
                return {"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": insert_errors}
            seen = state.insert_ids[table_id]
            for i, item in enumerate(rows):
                if i in problems:
                    continue
                insert_id = item.get("insertId")
                if insert_id is not None and insert_id in seen:
                    continue  # best-effort de-duplication on insertId
                if insert_id is not None:
                    seen.add(insert_id)
                state.rows[table_id].append({"insertId": insert_id, "json": item["json"]})
            response: dict[str, Any] = {"kind": "bigquery#tableDataInsertAllResponse"}
            if problems:
                response["insertErrors"] = [{"index": i, "errors": errors} for i, errors in sorted(problems.items())]
            return response

    def _query(self, state: _State, project: str, body: bytes) -> None:
        """jobs.query, for the lost-bag search's query only (see the module docstring)."""
        try:
            request = json.loads(body)
            sql = request["query"]
            assert isinstance(sql, str)
        except (ValueError, KeyError, AssertionError):
            return self._error(400, "invalid", "Invalid JSON payload received.")
        if request.get("useLegacySql", True) is not False or not sql.startswith(SEARCH_MARKER + "\n"):
            return self._error(
                400,
                "invalidQuery",
                "Syntax error: the test stand-in answers only the lost-bag search query "
                "(segmentation.search.bigquery_store.SEARCH_SQL, in standard SQL).",
            )
        tables = set(re.findall(r"`([^`]+)`", sql))
        if len(tables) != 1:
            return self._error(400, "invalidQuery", f"expected one table in the query, found {sorted(tables)}")
        (table_id,) = tables
        parts = table_id.split(".")
        if len(parts) != 3 or parts[2] not in TABLES:
            return self._error(404, "notFound", f"Not found: Table {table_id} was not found")
        try:
            params = _named_parameters(request)
        except ValueError as exc:
            return self._error(400, "invalidQuery", str(exc))
        with state.lock:
            stored = [dict(row["json"]) for row in state.rows.get(table_id, [])]
        try:
            matches = _search(stored, params)
        except ValueError as exc:  # VECTOR_SEARCH fails the query on vectors of two lengths
            return self._error(400, "invalidQuery", str(exc))
        micros = bool(request.get("formatOptions", {}).get("useInt64Timestamp"))
        rows = [
            {"f": [{"v": _cell(kind, match.get(name), micros)} for name, kind in _SEARCH_RESULT]} for match in matches
        ]
        with state.lock:
            state.query_count += 1
            job_id = f"standin-query-{state.query_count}"
        self._send(
            200,
            {
                "kind": "bigquery#queryResponse",
                "schema": {
                    "fields": [{"name": name, "type": kind, "mode": "NULLABLE"} for name, kind in _SEARCH_RESULT]
                },
                "jobReference": {"projectId": project, "jobId": job_id, "location": "EU"},
                "totalRows": str(len(rows)),
                "rows": rows,
                "totalBytesProcessed": "0",
                "jobComplete": True,
                "cacheHit": False,
            },
        )

    def _error(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
            }
        }
        self._send(status, body, headers or {})

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _named_parameters(request: dict[str, Any]) -> dict[str, Any]:
    """The search query's named parameters as Python values (None for NULL); ValueError, with
    BigQuery's kind of message, when one is missing or of another type."""
    if request.get("parameterMode") != "NAMED":
        raise ValueError("Query parameters must be named (parameterMode NAMED).")
    given = {item.get("name"): item for item in request.get("queryParameters", [])}
    values: dict[str, Any] = {}
    for name, kind in _SEARCH_PARAMETERS.items():
        item = given.get(name)
        if item is None:
            raise ValueError(f"Query parameter '{name}' not found at [1:1]")
        declared = item.get("parameterType", {})
        if kind.startswith("ARRAY<"):
            if declared.get("type") != "ARRAY" or declared.get("arrayType", {}).get("type") != kind[6:-1]:
                raise ValueError(f"Query parameter '{name}' must be {kind}")
            values[name] = [float(v["value"]) for v in item.get("parameterValue", {}).get("arrayValues", [])]
            continue
        if declared.get("type") != kind:
            raise ValueError(f"Query parameter '{name}' must be {kind}, not {declared.get('type')}")
        raw = item.get("parameterValue", {}).get("value")
        if raw is None:
            values[name] = None
        elif kind == "INT64":
            values[name] = int(raw)
        elif kind == "BOOL":
            values[name] = str(raw).lower() == "true"
        elif kind == "TIMESTAMP":
            values[name] = _timestamp(raw)
        else:
            values[name] = str(raw)
    for name in ("embedder", "model", "dimensions", "include_offline", "fetch_k", "top_k"):
        if values[name] is None:
            raise ValueError(f"Query parameter '{name}' is NULL")
    return values


def _timestamp(value: Any) -> dt.datetime:
    """A TIMESTAMP as inserted (ISO 8601 string or epoch seconds) or as a query parameter."""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value).replace(" UTC", "+00:00").replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _like(pattern: str, value: str) -> bool:
    """GoogleSQL LIKE: % any run, _ one character, backslash escapes the next character."""
    regex, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        i += 1
    return re.fullmatch("".join(regex), value, re.S) is not None


def _search(rows: list[dict[str, Any]], p: dict[str, Any]) -> list[dict[str, Any]]:
    """What SEARCH_SQL returns for `rows` and parameters `p` (see the module docstring)."""
    base = []
    for row in rows:
        if (row.get("embedder"), row.get("model"), int(row.get("dimensions", -1))) != (
            p["embedder"],
            p["model"],
            p["dimensions"],
        ):
            continue
        if p["camera"] is not None and row.get("camera") != p["camera"]:
            continue
        seen_at = _timestamp(row["seen_at"])
        if (p["since"] is not None and seen_at < p["since"]) or (p["until"] is not None and seen_at >= p["until"]):
            continue
        if p["color_like"] is not None and (
            row.get("item_color") is None or not _like(p["color_like"], row["item_color"].lower())
        ):
            continue
        if not p["include_offline"] and (row.get("detector") or "") == "offline":
            continue
        base.append(row)
    query = p["query_vector"]
    scored = []
    for row in base:
        vector = [float(x) for x in row.get("embedding") or []]
        if len(vector) != len(query):
            raise ValueError(f"VECTOR_SEARCH: array lengths differ: {len(vector)} and {len(query)}")
        dot = sum(a * b for a, b in zip(vector, query, strict=True))
        norms = math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(b * b for b in query))
        distance = 1.0 - dot / norms if norms else 1.0
        scored.append((distance, row))
    scored.sort(key=lambda pair: pair[0])  # stable: equal distances keep insertion order
    nearest: dict[str, tuple[float, dict[str, Any]]] = {}
    for distance, row in scored[: p["fetch_k"]]:
        if row["object_row_id"] not in nearest:
            nearest[row["object_row_id"]] = (distance, row)
    ordered = sorted(nearest.values(), key=lambda pair: (pair[0], pair[1]["object_row_id"]))
    return [{**row, "seen_at": _timestamp(row["seen_at"]), "score": 1.0 - distance} for distance, row in ordered][
        : p["top_k"]
    ]


def _cell(kind: str, value: Any, micros: bool) -> str | None:
    """One result value as jobs.query sends it: a string, or null."""
    if value is None:
        return None
    if kind == "TIMESTAMP":
        seconds = (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) / dt.timedelta(microseconds=1)
        return str(round(seconds)) if micros else repr(seconds / 1e6)
    if kind == "FLOAT":
        return repr(float(value))
    return str(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # dozens of function threads may connect at once (benchmarks)
    state: _State
    round_trip_s: float = 0.0


class FakeBigQuery:
    """The stand-in server: `start()`/`stop()` or use as a context manager; `url` is its base URL."""

    def __init__(self, round_trip_s: float = 0.0) -> None:
        self.round_trip_s = round_trip_s
        self._state = _State()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> FakeBigQuery:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.state = self._state
        httpd.round_trip_s = self.round_trip_s
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-bigquery", daemon=True
        )
        self._thread.start()
        host, port = httpd.server_address[:2]
        self.url = f"http://{host}:{port}"  # type: ignore[str-bytes-safe]
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeBigQuery:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def rows(self, table_id: str) -> list[dict[str, Any]]:
        """Stored rows of "project.dataset.table": [{"insertId": ..., "json": {...}}, ...]."""
        with self._state.lock:
            return [dict(row) for row in self._state.rows.get(table_id, [])]

    @property
    def request_count(self) -> int:
        with self._state.lock:
            return len(self._state.requests)

    def request_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every request received, oldest first."""
        with self._state.lock:
            return [json.loads(request["body"]) for request in self._state.requests]

    def fail_next(
        self, n: int = 1, *, status: int = 503, reason: str | None = None, retry_after: float | None = None
    ) -> None:
        """Answer the next `n` requests with HTTP `status` (rows are not stored)."""
        with self._state.lock:
            self._state.faults.append(_Fault(n, status, reason or _STATUS_REASONS.get(status, "invalid"), retry_after))

    def reject_next(
        self, n: int = 1, *, reason: str = "invalid", message: str = "rejected by the test stand-in"
    ) -> None:
        """Answer the next `n` requests 200 with every row in insertErrors (nothing stored)."""
        with self._state.lock:
            self._state.rejections.append([n, reason, message])
