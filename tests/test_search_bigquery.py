"""BigQueryVectorStore through the real google-cloud-bigquery client against the BigQuery stand-in.

Embedding rows go in through the real `BigQuerySink` (tabledata.insertAll), searches go out as
the store's one `VECTOR_SEARCH` query (jobs.query), which the stand-in evaluates over the stored
rows (devtools/standins/bigquery_server.py). Expected answers come from a NumPy brute force over
the same rows, so nothing here hard-codes a result. Every test uses the `fake_bigquery` fixture:
the emulator tier.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from devtools.standins.bigquery_server import FakeBigQuery
from segmentation.config import Config
from segmentation.errors import PermanentError, TransientError
from segmentation.retry import retry_call
from segmentation.search.bigquery_store import FETCH_FACTOR, BigQueryVectorStore, like_pattern
from segmentation.search.store import Filters, Space
from segmentation.sink import BigQuerySink
from tests.test_terraform import config as terraform_config
from tests.test_terraform_security import PERMISSIONS_OF_METHOD, _method

PROJECT = "test-project"
DATASET = f"{PROJECT}.conveyor"
EMBEDDINGS = f"{DATASET}.embeddings"
SPACE = Space(embedder="gemini", model="gemini-embedding-2", dimensions=8)
T0 = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)


def _client(fake: FakeBigQuery) -> bigquery.Client:
    return bigquery.Client(
        project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": fake.url}
    )


def _unit(values: Any) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def embedding_row(n: int, vector: np.ndarray, **overrides: Any) -> dict[str, Any]:
    """An embeddings row for object n, as the pipeline writes it (every required column)."""
    row: dict[str, Any] = {
        "row_id": f"obj-{n}:{SPACE.model}:{len(vector)}",
        "object_row_id": f"obj-{n}",
        "source_uri": f"gs://conveyor-test/raw/cam1/photo-{n}.jpg",
        "source_name": f"raw/cam1/photo-{n}.jpg",
        "source_generation": 1000 + n,
        "object_index": 1,
        "camera": "cam1",
        "seen_at": (T0 + dt.timedelta(minutes=n)).isoformat(),
        "crop_uri": f"gs://conveyor-outputs/processed/cam1/photo-{n}.jpg-output-0001.jpg",
        "label": "suitcase",
        "item_color": "black",
        "item_gen_desc": f"bag {n}",
        "item_det_desc": f"bag number {n}",
        "detector": "gemini",
        "embedder": SPACE.embedder,
        "model": SPACE.model,
        "dimensions": len(vector),
        "embedding": [float(x) for x in vector],
        "embedded_at": (T0 + dt.timedelta(minutes=n, seconds=5)).isoformat(),
        "pipeline_version": "test",
    }
    row.update(overrides)
    return row


@pytest.fixture
def indexed(fake_bigquery: FakeBigQuery) -> tuple[BigQuerySink, BigQueryVectorStore, bigquery.Client]:
    client = _client(fake_bigquery)
    sink = BigQuerySink(f"{DATASET}.objects", f"{DATASET}.images", client=client)
    return sink, BigQueryVectorStore(EMBEDDINGS, client=client), client


def _random_rows(count: int, seed: int = 7, **overrides: Any) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [embedding_row(n, _unit(rng.normal(size=SPACE.dimensions)), **overrides) for n in range(count)]


def _brute_force(rows: list[dict[str, Any]], query: np.ndarray, top_k: int) -> list[tuple[str, float]]:
    """(object_row_id, cosine similarity) of the top_k rows, best first: the reference answer."""
    scored = [(row["object_row_id"], float(np.dot(_unit(row["embedding"]), _unit(query)))) for row in rows]
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))[:top_k]


def _ids(candidates: list[Any]) -> list[str]:
    return [candidate.object_row_id for candidate in candidates]


# --- Nearest first -----------------------------------------------------------------------------


def test_nearest_crops_come_first_with_cosine_similarity_as_score(indexed) -> None:
    sink, store, _ = indexed
    rows = _random_rows(40)
    sink.insert("embeddings", rows)
    query = _unit(np.random.default_rng(99).normal(size=SPACE.dimensions))

    found = store.nearest(query.astype(np.float32), SPACE, Filters(), top_k=5)

    expected = _brute_force(rows, query, 5)
    assert _ids(found) == [object_id for object_id, _ in expected]
    assert [c.score for c in found] == pytest.approx([score for _, score in expected], abs=1e-6)
    by_id = {row["object_row_id"]: row for row in rows}
    for candidate in found:
        row = by_id[candidate.object_row_id]
        assert (candidate.crop_uri, candidate.source_uri, candidate.camera, candidate.label) == (
            row["crop_uri"],
            row["source_uri"],
            row["camera"],
            row["label"],
        )
        assert (candidate.item_color, candidate.item_gen_desc, candidate.item_det_desc) == (
            row["item_color"],
            row["item_gen_desc"],
            row["item_det_desc"],
        )
        assert dt.datetime.fromisoformat(candidate.seen_at) == dt.datetime.fromisoformat(row["seen_at"])
        assert candidate.seen_at.endswith("+00:00")


def test_the_crop_itself_is_the_best_match_and_an_empty_table_finds_nothing(indexed) -> None:
    sink, store, _ = indexed
    assert store.nearest(_unit(np.ones(SPACE.dimensions)), SPACE, Filters(), top_k=3) == []
    rows = _random_rows(12, seed=3)
    sink.insert("embeddings", rows)
    target = rows[7]
    (best,) = store.nearest(np.asarray(target["embedding"]), SPACE, Filters(), top_k=1)
    assert best.object_row_id == target["object_row_id"] and best.score == pytest.approx(1.0, abs=1e-9)


# --- Filters ---------------------------------------------------------------------------------------


def _mixed_rows() -> list[dict[str, Any]]:
    """Rows that differ in camera, time, colour and detector (every fourth row by each)."""
    rows = []
    rng = np.random.default_rng(11)
    for n in range(24):
        rows.append(
            embedding_row(
                n,
                _unit(rng.normal(size=SPACE.dimensions)),
                camera=("cam1", "cam2", "cam3")[n % 3],
                seen_at=(T0 + dt.timedelta(hours=n)).isoformat(),
                item_color=("Dark Green", "black", "green_yellow", None)[n % 4],
                detector="offline" if n % 5 == 0 else "gemini",
            )
        )
    return rows


def _expected(rows: list[dict[str, Any]], query: np.ndarray, keep) -> list[str]:
    return [object_id for object_id, _ in _brute_force([row for row in rows if keep(row)], query, len(rows))]


@pytest.mark.parametrize(
    "filters, keep",
    [
        (Filters(), lambda row: row["detector"] != "offline"),
        (Filters(include_offline=True), lambda row: True),
        (Filters(camera="cam2"), lambda row: row["camera"] == "cam2" and row["detector"] != "offline"),
        (
            Filters(since=T0 + dt.timedelta(hours=5), until=T0 + dt.timedelta(hours=12), include_offline=True),
            # [since, until): the row seen at exactly `until` is out.
            lambda row: (
                T0 + dt.timedelta(hours=5) <= dt.datetime.fromisoformat(row["seen_at"]) < T0 + dt.timedelta(hours=12)
            ),
        ),
        (
            Filters(since=T0 + dt.timedelta(hours=20)),
            lambda row: (
                dt.datetime.fromisoformat(row["seen_at"]) >= T0 + dt.timedelta(hours=20)
                and row["detector"] != "offline"
            ),
        ),
        # Case-insensitive "appears in the colour"; NULL colours never match a colour filter.
        (Filters(color="GREEN", include_offline=True), lambda row: "green" in (row["item_color"] or "").lower()),
        # LIKE's wildcard in a colour is taken literally: "n_y" is not "n y" or "nXy".
        (Filters(color="n_y", include_offline=True), lambda row: "n_y" in (row["item_color"] or "").lower()),
        (
            Filters(camera="cam1", color="dark", since=T0 + dt.timedelta(hours=1)),
            lambda row: (
                row["camera"] == "cam1"
                and "dark" in (row["item_color"] or "").lower()
                and dt.datetime.fromisoformat(row["seen_at"]) >= T0 + dt.timedelta(hours=1)
                and row["detector"] != "offline"
            ),
        ),
    ],
)
def test_filters_narrow_the_search(indexed, filters: Filters, keep) -> None:
    sink, store, _ = indexed
    rows = _mixed_rows()
    sink.insert("embeddings", rows)
    query = _unit(np.random.default_rng(5).normal(size=SPACE.dimensions))
    expected = _expected(rows, query, keep)
    assert expected, "the filter keeps some rows"
    assert len(expected) < len(rows) or filters.include_offline

    found = store.nearest(query, SPACE, filters, top_k=len(rows))
    assert _ids(found) == expected


def test_time_filters_need_a_time_zone(indexed) -> None:
    _, store, _ = indexed
    with pytest.raises(ValueError, match="time zone"):
        store.nearest(np.ones(SPACE.dimensions), SPACE, Filters(since=dt.datetime(2026, 1, 1)), top_k=3)


def test_like_pattern_escapes_wildcards() -> None:
    assert like_pattern(" Dark_Green ") == "%dark\\_green%"
    assert like_pattern("100%") == "%100\\%%"
    assert like_pattern("a\\b") == "%a\\\\b%"


# --- Other spaces, duplicates -------------------------------------------------------------------------


def test_rows_of_another_embedder_model_or_length_are_never_compared(indexed) -> None:
    sink, store, _ = indexed
    rng = np.random.default_rng(21)
    query = _unit(rng.normal(size=SPACE.dimensions))
    ours = [embedding_row(n, _unit(rng.normal(size=SPACE.dimensions))) for n in range(6)]
    # Each decoy is the query itself, so it would be the best match if its space were searched.
    decoys = [
        embedding_row(100, query, model="gemini-embedding-001"),
        embedding_row(101, query, embedder="descriptor", model="descriptor-v3"),
        embedding_row(102, np.concatenate([query, query]) / np.sqrt(2)),  # the same model at 16 numbers
    ]
    sink.insert("embeddings", ours + decoys)

    found = store.nearest(query, SPACE, Filters(include_offline=True), top_k=10)
    assert _ids(found) == [object_id for object_id, _ in _brute_force(ours, query, 10)]
    longer = Space(SPACE.embedder, SPACE.model, 2 * SPACE.dimensions)
    (only,) = store.nearest(np.concatenate([query, query]), longer, Filters(), top_k=10)
    assert only.object_row_id == "obj-102" and only.score == pytest.approx(1.0)


def test_a_crop_stored_twice_is_matched_once(indexed, fake_bigquery: FakeBigQuery) -> None:
    sink, store, client = indexed
    rng = np.random.default_rng(33)
    query = _unit(rng.normal(size=SPACE.dimensions))
    rows = [embedding_row(n, _unit(query + rng.normal(scale=0.5, size=SPACE.dimensions))) for n in range(8)]
    sink.insert("embeddings", rows)
    # The same rows again after BigQuery's best-effort insertId window (a replay days later): the
    # stand-in always de-duplicates insertIds, so these copies go in under fresh ones.
    errors = client.insert_rows_json(EMBEDDINGS, rows, row_ids=[f"replay-{row['row_id']}" for row in rows])
    assert errors == []
    assert len(fake_bigquery.rows(EMBEDDINGS)) == 2 * len(rows)

    found = store.nearest(query, SPACE, Filters(), top_k=4)
    assert _ids(found) == [object_id for object_id, _ in _brute_force(rows, query, 4)]
    assert len(set(_ids(found))) == 4
    # VECTOR_SEARCH fetched enough neighbours for the copies not to shrink the answer.
    assert FETCH_FACTOR >= 2


# --- Errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_rate_limits_are_transient(indexed, fake_bigquery: FakeBigQuery, status: int) -> None:
    sink, store, _ = indexed
    sink.insert("embeddings", _random_rows(3))
    fake_bigquery.fail_next(1, status=status)
    with pytest.raises(TransientError, match=f"vector search in {EMBEDDINGS}: HTTP {status}"):
        store.nearest(np.ones(SPACE.dimensions), SPACE, Filters(), top_k=2)
    # The caller's retry loop gets the answer once the server recovers.
    fake_bigquery.fail_next(1, status=status)
    found = retry_call(
        lambda: store.nearest(np.ones(SPACE.dimensions), SPACE, Filters(), top_k=2),
        deadline=time.monotonic() + 30,
        base_delay=0.01,
    )
    assert len(found) == 2


def test_an_invalid_query_is_permanent(indexed, fake_bigquery: FakeBigQuery) -> None:
    _, store, client = indexed
    fake_bigquery.fail_next(1, status=400, reason="invalidQuery")
    with pytest.raises(PermanentError, match="HTTP 400"):
        store.nearest(np.ones(SPACE.dimensions), SPACE, Filters(), top_k=2)
    # The stand-in answers no other SQL: as BigQuery would refuse a query it cannot run.
    with pytest.raises(api_exceptions.BadRequest, match="answers only the lost-bag search query"):
        client.query_and_wait("SELECT 1", retry=None, job_retry=None)


def test_a_missing_table_is_permanent(fake_bigquery: FakeBigQuery) -> None:
    store = BigQueryVectorStore(f"{DATASET}.no_such_table", client=_client(fake_bigquery))
    with pytest.raises(PermanentError, match="HTTP 404"):
        store.nearest(np.ones(SPACE.dimensions), SPACE, Filters(), top_k=2)


def test_a_refused_connection_is_transient(fake_bigquery: FakeBigQuery) -> None:
    url = fake_bigquery.url
    fake_bigquery.stop()
    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    with pytest.raises(TransientError):
        BigQueryVectorStore(EMBEDDINGS, client=client).nearest(np.ones(SPACE.dimensions), SPACE, Filters(), top_k=2)


# --- Configuration and permissions ------------------------------------------------------------------------


def test_the_store_reads_the_configured_table_with_the_default_client(
    monkeypatch: pytest.MonkeyPatch, fake_bigquery: FakeBigQuery
) -> None:
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", fake_bigquery.url)
    config = Config.from_env({"BQ_OBJECTS_TABLE": f"{DATASET}.objects", "BQ_IMAGES_TABLE": f"{DATASET}.images"})
    store = BigQueryVectorStore.from_config(config)
    assert store.table_id == EMBEDDINGS
    BigQuerySink(config.bq_objects_table, config.bq_images_table).insert("embeddings", _random_rows(2))
    assert len(store.nearest(np.ones(SPACE.dimensions), SPACE, Filters(), top_k=5)) == 2
    with pytest.raises(ValueError, match="no BigQuery embeddings table"):
        BigQueryVectorStore.from_config(Config.from_env({}))


def test_the_runtime_roles_hold_exactly_what_a_search_calls(indexed, fake_bigquery: FakeBigQuery) -> None:
    sink, store, _ = indexed
    sink.insert("embeddings", _random_rows(3))
    before = fake_bigquery.request_count
    store.nearest(np.ones(SPACE.dimensions), SPACE, Filters(camera="cam1"), top_k=2)
    with fake_bigquery._state.lock:
        paths = [request["path"] for request in fake_bigquery._state.requests[before:]]
    assert [_method(path) for path in paths] == ["queries"]  # one jobs.query request, nothing else
    # jobs.query is POST .../queries; IAM names the method "query".
    needed = PERMISSIONS_OF_METHOD["query"]
    roles = terraform_config()["resource"]["google_project_iam_custom_role"]
    granted = set(roles["query_runner"]["permissions"]) | set(roles["row_reader"]["permissions"])
    assert granted == needed
    # The job permission on the project, the row permission on the embeddings table only.
    assert set(roles["query_runner"]["permissions"]) == {"bigquery.jobs.create"}
    assert set(roles["row_reader"]["permissions"]) == {"bigquery.tables.getData"}
