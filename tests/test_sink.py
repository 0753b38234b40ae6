"""Row sinks: BigQuerySink through the real client to the insertAll stand-in; SqliteSink on disk."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.standins.bigquery_server import FakeBigQuery
from segmentation.config import Config
from segmentation.errors import PermanentError, TransientError
from segmentation.retry import retry_call
from segmentation.schema import TABLES, load_schema, validate_row
from segmentation.sink import BigQuerySink, SqliteSink, sink_from_config

OBJECTS = "test-project.results.objects"
IMAGES = "test-project.results.images"

_SAMPLE = {
    "STRING": lambda name, n: f"{name}-{n}",
    "INT64": lambda name, n: n,
    "FLOAT64": lambda name, n: n + 0.25,
    "BOOL": lambda name, n: n % 2 == 0,
    "TIMESTAMP": lambda name, n: (dt.datetime(2026, 1, 2, tzinfo=dt.UTC) + dt.timedelta(seconds=n)).isoformat(),
}


def schema_row(table: str, n: int = 1, **overrides: Any) -> dict[str, Any]:
    """A row of `table` with every schema column filled validly (row_id unique per `n`), then
    `overrides` applied unchecked (so tests can also build invalid rows)."""
    row = {
        column["name"]: (
            [_SAMPLE[column["type"]](column["name"], n + k) for k in range(3)]
            if column["mode"] == "REPEATED"
            else _SAMPLE[column["type"]](column["name"], n)
        )
        for column in load_schema(table)
    }
    row["row_id"] = f"{table}-{n}"
    validate_row(table, row)
    row.update(overrides)
    return row


# --- BigQuerySink --------------------------------------------------------------------------


@pytest.fixture
def bq_sink(monkeypatch: pytest.MonkeyPatch, fake_bigquery: FakeBigQuery) -> BigQuerySink:
    """A sink with the default lazy client, aimed at the stand-in through BIGQUERY_EMULATOR_HOST."""
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", fake_bigquery.url)
    return BigQuerySink(OBJECTS, IMAGES)


@pytest.mark.parametrize("table", TABLES)
def test_rows_arrive_with_row_id_as_insert_id(bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery, table: str) -> None:
    rows = [schema_row(table, n) for n in range(3)]
    nullable = next(column["name"] for column in load_schema(table) if column["mode"] == "NULLABLE")
    rows[1][nullable] = None  # nulls are simply left out

    bq_sink.insert(table, rows)

    stored = fake_bigquery.rows({"objects": OBJECTS, "images": IMAGES}.get(table, f"test-project.results.{table}"))
    assert [row["insertId"] for row in stored] == [row["row_id"] for row in rows]
    assert [row["json"] for row in stored] == [{k: v for k, v in row.items() if v is not None} for row in rows]


def test_reinsert_is_deduplicated(bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery) -> None:
    rows = [schema_row("objects", n) for n in range(3)]
    bq_sink.insert("objects", rows)
    bq_sink.insert("objects", [*rows[1:], schema_row("objects", 3)])

    assert fake_bigquery.request_count == 2
    assert [row["insertId"] for row in fake_bigquery.rows(OBJECTS)] == [f"objects-{n}" for n in range(4)]


def test_empty_rows_make_no_call(fake_bigquery: FakeBigQuery) -> None:
    sink = BigQuerySink(OBJECTS, IMAGES)  # no endpoint configured: a call would go nowhere good
    sink.insert("images", [])
    assert fake_bigquery.request_count == 0


def test_large_batches_are_split(bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery) -> None:
    bq_sink.insert("objects", [schema_row("objects", n) for n in range(1201)])
    assert [len(body["rows"]) for body in fake_bigquery.request_bodies()] == [500, 500, 201]
    assert len(fake_bigquery.rows(OBJECTS)) == 1201


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (503, None),
        (500, None),
        (502, None),
        (504, None),
        (429, None),
        (403, "rateLimitExceeded"),
        (403, "quotaExceeded"),
    ],
)
def test_transient_api_errors(
    bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery, status: int, reason: str | None
) -> None:
    fake_bigquery.fail_next(1, status=status, reason=reason, retry_after=3)
    with pytest.raises(TransientError) as caught:
        bq_sink.insert("images", [schema_row("images")])
    assert caught.value.retry_after == 3
    assert fake_bigquery.request_count == 1  # the client library did not retry by itself


@pytest.mark.parametrize(("status", "reason"), [(400, "invalid"), (403, "accessDenied"), (404, "notFound")])
def test_permanent_api_errors(bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery, status: int, reason: str) -> None:
    fake_bigquery.fail_next(1, status=status, reason=reason)
    with pytest.raises(PermanentError):
        bq_sink.insert("images", [schema_row("images")])


def test_unknown_table_on_the_server_is_permanent(monkeypatch: pytest.MonkeyPatch, fake_bigquery: FakeBigQuery) -> None:
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", fake_bigquery.url)
    sink = BigQuerySink("test-project.results.objekts", IMAGES)
    with pytest.raises(PermanentError, match="404"):
        sink.insert("objects", [schema_row("objects")])


def test_rejected_rows_are_permanent_and_name_the_first_errors(
    bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery
) -> None:
    fake_bigquery.reject_next(1, message="no such field: surprise.")
    with pytest.raises(PermanentError, match=r"row 0 \(objects-0\).*invalid: no such field: surprise\."):
        bq_sink.insert("objects", [schema_row("objects", n) for n in range(2)])
    assert fake_bigquery.rows(OBJECTS) == []


def test_row_errors_the_server_finds_are_permanent(
    monkeypatch: pytest.MonkeyPatch, fake_bigquery: FakeBigQuery
) -> None:
    """A row our schema check passes but BigQuery refuses (here: the table's schema has drifted)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project="test-project", credentials=AnonymousCredentials(), client_options={"api_endpoint": fake_bigquery.url}
    )
    sink = BigQuerySink(OBJECTS, "test-project.results.objects", client=client)  # images rows into objects
    with pytest.raises(PermanentError, match=r"no such field: status\.") as caught:
        sink.insert("images", [schema_row("images", 1), schema_row("images", 2)])
    assert "stopped" not in str(caught.value)
    assert fake_bigquery.rows(OBJECTS) == []


def test_row_errors_with_a_transient_reason_are_transient(bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.reject_next(1, reason="timeout", message="timed out")
    with pytest.raises(TransientError):
        bq_sink.insert("objects", [schema_row("objects")])


def test_schema_validation_runs_before_the_network(bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery) -> None:
    good = schema_row("objects", 1)
    for bad in (
        schema_row("objects", 2, source_generation="12"),
        schema_row("objects", 2, has_mask=1),
        schema_row("objects", 2, processed_at="yesterday"),
        {**schema_row("objects", 2), "extra": 1},
        {k: v for k, v in schema_row("objects", 2).items() if k != "source_uri"},
    ):
        with pytest.raises(PermanentError, match="objects"):
            bq_sink.insert("objects", [good, bad])
    assert fake_bigquery.request_count == 0


def test_retry_call_recovers_and_rows_land_once(bq_sink: BigQuerySink, fake_bigquery: FakeBigQuery) -> None:
    rows = [schema_row("objects", n) for n in range(2)]
    fake_bigquery.fail_next(2, status=503)
    retry_call(lambda: bq_sink.insert("objects", rows), deadline=time.monotonic() + 10, base_delay=0.01)
    assert fake_bigquery.request_count == 3
    assert len(fake_bigquery.rows(OBJECTS)) == 2


def test_connection_refused_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    with pytest.raises(TransientError):
        BigQuerySink(OBJECTS, IMAGES).insert("objects", [schema_row("objects")])


def test_unknown_table_name_is_a_bug() -> None:
    with pytest.raises(ValueError):
        BigQuerySink(OBJECTS, IMAGES).insert("detections", [])


# --- SqliteSink ----------------------------------------------------------------------------


@pytest.fixture
def sqlite_sink(tmp_path: Path) -> SqliteSink:
    return SqliteSink(tmp_path / "nested" / "dir" / "results.sqlite")


@pytest.mark.parametrize("table", TABLES)
def test_sqlite_tables_match_the_schema(sqlite_sink: SqliteSink, table: str) -> None:
    sql_types = {"STRING": "TEXT", "INT64": "INTEGER", "FLOAT64": "REAL", "BOOL": "INTEGER", "TIMESTAMP": "TEXT"}
    with sqlite3.connect(sqlite_sink.path) as conn:
        info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    schema = load_schema(table)
    assert [(name, kind) for _, name, kind, *_ in info] == [
        (c["name"], "BLOB" if c["mode"] == "REPEATED" else sql_types[c["type"]]) for c in schema
    ]
    assert {name for _, name, _, notnull, _, _ in info if notnull} == {
        c["name"] for c in schema if c["mode"] == "REQUIRED"
    }
    assert [name for _, name, _, _, _, pk in info if pk] == ["row_id"]
    assert journal == "wal"


def test_sqlite_adds_columns_missing_from_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE "objects" ("row_id" TEXT PRIMARY KEY, "source_uri" TEXT NOT NULL)')
    sink = SqliteSink(path)
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute('PRAGMA table_info("objects")')]
    assert columns == [column["name"] for column in load_schema("objects")]
    sink.insert("objects", [schema_row("objects")])
    assert sink.rows("objects") == [schema_row("objects")]


def test_sqlite_insert_or_ignore_is_idempotent(sqlite_sink: SqliteSink) -> None:
    first = schema_row("images", 1, status="ok")
    sqlite_sink.insert("images", [first])
    sqlite_sink.insert("images", [schema_row("images", 1, status="failed"), schema_row("images", 2)])
    sqlite_sink.insert("images", [first])
    assert [(row["row_id"], row["status"]) for row in sqlite_sink.rows("images")] == [
        ("images-1", "ok"),
        ("images-2", "status-2"),
    ]


def test_sqlite_rows_decode_types_and_filter_by_name_prefix(sqlite_sink: SqliteSink) -> None:
    rows = [
        schema_row("objects", 1, source_name="raw/Cam_1%/a.jpg", has_mask=True, box_norm_x_min=0.0),
        schema_row("objects", 2, source_name="raw/cam_1x/b.jpg", has_mask=False, label=None),
        schema_row("objects", 3, source_name="raw/CAM_1%/c.jpg", has_mask=None),
    ]
    sqlite_sink.insert("objects", rows)

    assert sqlite_sink.rows("objects") == rows
    stored = sqlite_sink.rows("objects")
    assert [type(row["has_mask"]) for row in stored] == [bool, bool, type(None)]
    assert isinstance(stored[0]["box_norm_x_min"], float) and isinstance(stored[0]["object_index"], int)
    # Case-sensitive and literal: % and _ are not wildcards.
    assert [row["row_id"] for row in sqlite_sink.rows("objects", where_name_prefix="raw/Cam_1%/")] == ["objects-1"]
    assert sqlite_sink.rows("objects", where_name_prefix="raw/cam_1%") == []


def test_sqlite_rejects_invalid_rows_and_writes_none_of_the_batch(sqlite_sink: SqliteSink) -> None:
    with pytest.raises(PermanentError):
        sqlite_sink.insert("objects", [schema_row("objects", 1), schema_row("objects", 2, object_index=1.5)])
    assert sqlite_sink.rows("objects") == []


_COLUMN_VALUES = {
    "STRING": st.text(max_size=40),
    "INT64": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "FLOAT64": st.floats(allow_nan=False, allow_infinity=False),
    "BOOL": st.booleans(),
    "TIMESTAMP": st.datetimes(timezones=st.just(dt.UTC)).map(dt.datetime.isoformat),
}


@st.composite
def _any_row(draw: st.DrawFn, table: str) -> dict[str, Any]:
    row = {}
    for column in load_schema(table):
        if column["mode"] == "REPEATED":  # stored as float32: values it holds exactly; NULL reads back as []
            row[column["name"]] = draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False)))
            continue
        values = _COLUMN_VALUES[column["type"]]
        row[column["name"]] = draw(values if column["mode"] == "REQUIRED" else st.none() | values)
    row["row_id"] = str(uuid.uuid4())
    return row


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sqlite_round_trips_any_valid_row(sqlite_sink: SqliteSink, data: st.DataObject) -> None:
    table = data.draw(st.sampled_from(TABLES))
    row = data.draw(_any_row(table))
    sqlite_sink.insert(table, [row])
    (stored,) = [stored for stored in sqlite_sink.rows(table) if stored["row_id"] == row["row_id"]]
    assert stored == row


def test_sqlite_concurrent_threads_lose_nothing(sqlite_sink: SqliteSink) -> None:
    # 8 threads, 60 rows each, overlapping halves: 8 * 30 + 30 distinct row_ids.
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for start in range(k * 30, k * 30 + 60, 5):
                sqlite_sink.insert("objects", [schema_row("objects", n) for n in range(start, start + 5)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(row["object_index"] for row in sqlite_sink.rows("objects")) == list(range(8 * 30 + 30))


def _process_worker(path: str, start: int, count: int, barrier: Any) -> None:
    barrier.wait(timeout=60)  # start together
    sink = SqliteSink(path)  # each process also races on creating the tables
    for first in range(start, start + count, 4):
        sink.insert("images", [schema_row("images", n) for n in range(first, min(first + 4, start + count))])


def test_sqlite_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    processes = [context.Process(target=_process_worker, args=(path, start, 200, barrier)) for start in (0, 100)]
    for process in processes:
        process.start()
    _process_worker(path, 250, 50, barrier)  # and this process at the same time
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    assert sorted(row["objects_found"] for row in SqliteSink(path).rows("images")) == list(range(300))


# --- choosing a sink -----------------------------------------------------------------------


def test_sink_from_config(tmp_path: Path) -> None:
    local = sink_from_config(Config.from_env({"SQLITE_PATH": str(tmp_path / "r.sqlite")}))
    assert isinstance(local, SqliteSink) and local.path == tmp_path / "r.sqlite"
    remote = sink_from_config(Config.from_env({"BQ_OBJECTS_TABLE": OBJECTS, "BQ_IMAGES_TABLE": IMAGES}))
    assert isinstance(remote, BigQuerySink)
