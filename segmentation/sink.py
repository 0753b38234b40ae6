"""Row sinks: where the `objects` and `images` rows go. Both are idempotent on `row_id`.

- `BigQuerySink` streams with `tabledata.insertAll`, sending each row's `row_id` as its
  insertId, so BigQuery drops a redelivered row (best-effort, within about a minute).
- `SqliteSink` is the local stand-in: tables created from the same schema files, `row_id`
  PRIMARY KEY and INSERT OR IGNORE, so a redelivered row is never duplicated.

`insert` checks every row against the schema first (`schema.validate_row`) and raises only
`TransientError` (retry) or `PermanentError` (a bug or schema drift; retrying cannot help).

BigQuery endpoint: google-cloud-bigquery 3.47 reads BIGQUERY_EMULATOR_HOST (a full URL such
as http://127.0.0.1:9050) as its API endpoint (`_helpers._get_bigquery_host`). It still asks
for Application Default Credentials then, so when that variable is set and no client is
given, `BigQuerySink` builds its client with anonymous credentials, as the storage client
does for STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from segmentation.errors import PermanentError, TransientError
from segmentation.schema import TABLES, RowSchemaError, load_schema, validate_row
from segmentation.storage import classify_google_error

if TYPE_CHECKING:
    from google.cloud import bigquery

    from segmentation.config import Config

INSERT_TIMEOUT_S = 30.0
# Google's advice for streaming: about 500 rows per insertAll request.
MAX_ROWS_PER_REQUEST = 500
# insertErrors reasons that say "try again" rather than "this row is wrong".
_TRANSIENT_ROW_REASONS = frozenset({"backendError", "internalError", "timeout", "rateLimitExceeded"})

_SQLITE_TYPES = {"STRING": "TEXT", "INT64": "INTEGER", "FLOAT64": "REAL", "BOOL": "INTEGER", "TIMESTAMP": "TEXT"}
# REPEATED FLOAT64 (embeddings) is stored as little-endian float32: 4 bytes a number, not ~20 as text.
_SQLITE_VECTOR = "BLOB"


class RowSink(Protocol):
    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store `rows` in `table` (one of `schema.TABLES`); re-inserting a row_id is a no-op."""


def _validated(table: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
    checked = []
    for row in rows:
        try:
            validate_row(table, row)
        except (RowSchemaError, ValueError) as exc:  # ValueError: an unparsable TIMESTAMP
            raise PermanentError(f"row {row.get('row_id')!r} does not match the {table} schema: {exc}") from exc
        checked.append(dict(row))
    return checked


class BigQuerySink:
    """Streams rows to the BigQuery tables ("project.dataset.table"); `others` names the tables
    beyond objects and images, which otherwise sit beside the objects table under their own name."""

    def __init__(
        self,
        objects_table: str,
        images_table: str,
        client: bigquery.Client | None = None,
        *,
        others: Mapping[str, str] | None = None,
    ):
        dataset = objects_table.rsplit(".", 1)[0]
        self._tables = {table: f"{dataset}.{table}" for table in TABLES}
        self._tables.update({"objects": objects_table, "images": images_table, **(others or {})})
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> bigquery.Client:
        """The client, created on first use, for the tables' project."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = _default_bigquery_client(self._tables["objects"].rsplit(".", 2)[0])
        return self._client

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        checked = _validated(table, rows)
        if not checked:
            return
        table_id = self._tables[table]
        for start in range(0, len(checked), MAX_ROWS_PER_REQUEST):
            chunk = checked[start : start + MAX_ROWS_PER_REQUEST]
            payload = [{key: value for key, value in row.items() if value is not None} for row in chunk]
            try:
                # retry=None: retry_call (the caller) owns retries; the row_ids make them safe.
                errors = self.client.insert_rows_json(
                    table_id,
                    payload,
                    row_ids=[row["row_id"] for row in chunk],
                    retry=None,  # type: ignore[arg-type]
                    timeout=INSERT_TIMEOUT_S,
                )
            except Exception as exc:
                classified = classify_google_error(exc, what=f"insert into {table_id}")
                if classified is None:
                    raise
                raise classified from exc
            if errors:
                raise _insert_errors(table_id, chunk, errors)


def _insert_errors(table_id: str, chunk: list[dict[str, Any]], errors: Sequence[Mapping[str, Any]]) -> Exception:
    """TransientError if every real (non-"stopped") row error is a server-side hiccup, else PermanentError."""
    real = [
        (entry["index"], error)
        for entry in errors
        for error in entry.get("errors", [])
        if error.get("reason") != "stopped"
    ]
    first = "; ".join(
        f"row {index} ({chunk[index]['row_id'] if 0 <= index < len(chunk) else '?'})"
        f"{' ' + error['location'] if error.get('location') else ''}: {error.get('reason')}: {error.get('message')}"
        for index, error in real[:3]
    )
    message = f"BigQuery refused {len(errors)} of {len(chunk)} rows for {table_id}: {first or errors[:3]}"
    if real and all(error.get("reason") in _TRANSIENT_ROW_REASONS for _, error in real):
        return TransientError(message)
    return PermanentError(message[:2000])


def _default_bigquery_client(project: str) -> bigquery.Client:
    from google.cloud import bigquery

    from segmentation.sessions import read_environment_once

    if os.environ.get("BIGQUERY_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        client = bigquery.Client(project=project, credentials=AnonymousCredentials())
    else:
        client = bigquery.Client(project=project)
    read_environment_once(client._http)
    return client


class SqliteSink:
    """Rows in a local SQLite file, tables created from the schema files.

    Safe from many threads and processes: WAL journal, a 30 s busy timeout, a fresh
    connection per call and BEGIN IMMEDIATE for writes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            _enable_wal(conn)
            with _transaction(conn):
                for table in TABLES:
                    conn.execute(_create_table_sql(table))
                    existing = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
                    for column in load_schema(table):
                        if column["name"] not in existing:  # a column added to the schema later
                            sql_type = _sqlite_type(column)
                            conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column["name"]}" {sql_type}')

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        checked = _validated(table, rows)
        if not checked:
            return
        names = [column["name"] for column in load_schema(table)]
        quoted = ", ".join(f'"{name}"' for name in names)
        sql = f'INSERT OR IGNORE INTO "{table}" ({quoted}) VALUES ({", ".join("?" for _ in names)})'
        columns = load_schema(table)
        values = [[_to_sqlite(column, row.get(column["name"])) for column in columns] for row in checked]
        try:
            with self._connect() as conn, _transaction(conn):
                conn.executemany(sql, values)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):  # another writer held the lock past the timeout
                raise TransientError(f"insert into {self.path}:{table}: {exc}") from exc
            raise

    def rows(self, table: str, *, where_name_prefix: str | None = None) -> list[dict[str, Any]]:
        """Rows of `table` in insertion order, typed as the schema says (BOOL -> bool)."""
        columns = load_schema(table)
        select = ", ".join(f'"{column["name"]}"' for column in columns)
        sql = f'SELECT {select} FROM "{table}"'
        params: tuple[Any, ...] = ()
        if where_name_prefix is not None:
            # substr, not LIKE: LIKE is case-insensitive and treats % and _ as wildcards.
            sql += " WHERE substr(source_name, 1, ?) = ?"
            params = (len(where_name_prefix), where_name_prefix)
        sql += " ORDER BY rowid"
        with self._connect() as conn:
            fetched = conn.execute(sql, params).fetchall()
        return [
            {column["name"]: _from_sqlite(column, value) for column, value in zip(columns, record, strict=True)}
            for record in fetched
        ]


def _enable_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Switch the file to WAL (persistent). Switching needs an exclusive lock and SQLite answers
    "database is locked" at once, without its busy handler, while another process has the
    new file open, so wait here; once the file is in WAL nothing needs switching."""
    deadline = time.monotonic() + timeout_s
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no lock upgrade, no SQLITE_BUSY mid-way
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_table_sql(table: str) -> str:
    definitions = []
    for column in load_schema(table):
        definition = f'"{column["name"]}" {_sqlite_type(column)}'
        if column["name"] == "row_id":
            definition += " PRIMARY KEY"
        if column["mode"] == "REQUIRED":
            definition += " NOT NULL"
        definitions.append(definition)
    return f'CREATE TABLE IF NOT EXISTS "{table}" ({", ".join(definitions)})'


def _sqlite_type(column: Mapping[str, str]) -> str:
    if column["mode"] == "REPEATED":
        if column["type"] != "FLOAT64":
            raise ValueError(f"no SQLite form for REPEATED {column['type']} ({column['name']})")
        return _SQLITE_VECTOR
    return _SQLITE_TYPES[column["type"]]


def _to_sqlite(column: Mapping[str, str], value: Any) -> Any:
    if column["mode"] == "REPEATED" and value is not None:
        return vector_blob(value)
    return int(value) if isinstance(value, bool) else value


def _from_sqlite(column: Mapping[str, str], value: Any) -> Any:
    if value is None:
        return [] if column["mode"] == "REPEATED" else None
    if column["mode"] == "REPEATED":
        return blob_vector(value).tolist()
    if column["type"] == "BOOL":
        return bool(value)
    if column["type"] == "FLOAT64":
        return float(value)
    return value


def vector_blob(values: Sequence[float]) -> bytes:
    """A vector as SQLite stores it: little-endian float32."""
    import numpy as np

    return np.asarray(values, dtype="<f4").tobytes()


def blob_vector(blob: bytes) -> Any:
    """The float32 NumPy vector of `vector_blob`."""
    import numpy as np

    return np.frombuffer(blob, dtype="<f4")


def sink_from_config(config: Config) -> RowSink:
    """BigQuerySink when BigQuery tables are configured, else SqliteSink(config.sqlite_path)."""
    if config.uses_bigquery:
        return BigQuerySink(
            config.bq_objects_table,
            config.bq_images_table,
            others={table: config.bq_table(table) for table in ("embeddings", "search_matches")},
        )
    return SqliteSink(config.sqlite_path)
