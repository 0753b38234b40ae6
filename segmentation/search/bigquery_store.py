"""`BigQueryVectorStore`: the `embeddings` table searched with BigQuery's `VECTOR_SEARCH`.

One parameterised query per search (`SEARCH_SQL`): the base table is a subquery of the
embeddings table narrowed to the query's space (embedder, model, length) and its filters
(camera, seen_at window, colour, offline rows), compared by COSINE distance with the query
vector, which goes in as an ARRAY<FLOAT64> parameter. Every filter is a parameter (NULL: no
filter), so the SQL text never changes and nothing the user typed is ever spliced into it.

- Score: 1 - cosine distance, i.e. the cosine similarity of the (unit-length) vectors.
- One match per crop: a crop's row can be in the table twice (a streaming retry or a replay
  after BigQuery's insertId window), so `VECTOR_SEARCH` fetches `FETCH_FACTOR` times `top_k`
  neighbours and the query keeps the nearest row of each `object_row_id`.
- The base subquery reads only columns the vector index stores (terraform/bigquery.tf), so a
  filtered search can use the index once BigQuery has built it; until then, or when it cannot,
  `VECTOR_SEARCH` compares every row of the filtered base table (exact).
- Time window: `since <= seen_at < until`. Colour: `LOWER(item_color) LIKE '%colour%'` with the
  colour's LIKE wildcards escaped, i.e. the colour appears in the detector's colour.
- Errors: like the row sink, the client's own retries are off and every failure is classified
  by `segmentation.storage.classify_google_error`: 5xx, 429, rate limits and network errors ->
  `TransientError`; other 4xx (an invalid query, a missing permission) -> `PermanentError`.

Permissions (terraform/iam.tf): `bigquery.jobs.create` on the project and
`bigquery.tables.getData` on the embeddings table.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from segmentation.search.store import CANDIDATE_COLUMNS, Candidate, Filters, Space
from segmentation.storage import classify_google_error

if TYPE_CHECKING:
    from google.cloud import bigquery

    from segmentation.config import Config

QUERY_TIMEOUT_S = 30.0
# Neighbours fetched per requested match, so that duplicate rows of a crop do not shrink the answer.
FETCH_FACTOR = 3
# The first line of SEARCH_SQL: names the query in BigQuery's job history, and is how the test
# stand-in (devtools/standins/bigquery_server.py) recognises it.
MARKER = "-- conveyor-segmentation: BigQueryVectorStore.nearest v1"
# The embeddings columns the search filters on and returns; the vector index stores them all
# (terraform/bigquery.tf), so the base subquery needs nothing from outside the index.
FILTER_COLUMNS = ("embedder", "model", "dimensions", "camera", "seen_at", "item_color", "detector")
RESULT_COLUMNS = CANDIDATE_COLUMNS

SEARCH_SQL = f"""{MARKER}
SELECT
  {", ".join(f"base.{column} AS {column}" for column in RESULT_COLUMNS)},
  1 - distance AS score
FROM VECTOR_SEARCH(
  (
    SELECT {", ".join(RESULT_COLUMNS)}, embedding
    FROM `{{table}}`
    WHERE embedder = @embedder AND model = @model AND dimensions = @dimensions
      AND (@camera IS NULL OR camera = @camera)
      AND (@since IS NULL OR seen_at >= @since)
      AND (@until IS NULL OR seen_at < @until)
      AND (@color_like IS NULL OR LOWER(item_color) LIKE @color_like)
      AND (@include_offline OR IFNULL(detector, '') != 'offline')
  ),
  'embedding',
  (SELECT @query_vector AS embedding),
  'embedding',
  top_k => @fetch_k,
  distance_type => 'COSINE'
)
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (PARTITION BY base.object_row_id ORDER BY distance) = 1
ORDER BY distance, base.object_row_id
LIMIT @top_k"""


def like_pattern(color: str) -> str:
    """The LIKE pattern matching a colour that contains `color` (case-insensitive), with LIKE's
    wildcards and its escape character in `color` taken literally.

    >>> like_pattern("Dark_Green")
    '%dark\\\\_green%'
    """
    escaped = color.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class BigQueryVectorStore:
    """Nearest crops from the embeddings table ("project.dataset.table") with `VECTOR_SEARCH`."""

    def __init__(self, table_id: str, client: bigquery.Client | None = None):
        if table_id.count(".") != 2 or "`" in table_id:
            raise ValueError(f"{table_id!r} is not a BigQuery table id (project.dataset.table)")
        self.table_id = table_id
        self._client = client
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> BigQueryVectorStore:
        """The store of the configured embeddings table (BQ_EMBEDDINGS_TABLE, or beside BQ_OBJECTS_TABLE)."""
        table_id = config.bq_table("embeddings")
        if not table_id:
            raise ValueError("no BigQuery embeddings table is configured (BQ_OBJECTS_TABLE is empty)")
        return cls(table_id)

    @property
    def client(self) -> bigquery.Client:
        """The client, created on first use, for the table's project."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from segmentation.sink import _default_bigquery_client

                    self._client = _default_bigquery_client(self.table_id.split(".", 1)[0])
        return self._client

    def nearest(self, vector: np.ndarray, space: Space, filters: Filters, top_k: int) -> list[Candidate]:
        if top_k < 1:
            return []
        query = np.asarray(vector, dtype=np.float64).ravel()
        if query.size != space.dimensions:
            raise ValueError(f"the query vector has {query.size} numbers, the space {space.dimensions}")
        from google.cloud import bigquery

        job_config = bigquery.QueryJobConfig(query_parameters=_parameters(bigquery, query, space, filters, top_k))
        what = f"vector search in {self.table_id}"
        try:
            # retry=None, job_retry=None: the caller's retry_call owns retries, as for the row sink.
            rows = self.client.query_and_wait(
                SEARCH_SQL.format(table=self.table_id),
                job_config=job_config,
                api_timeout=QUERY_TIMEOUT_S,
                wait_timeout=QUERY_TIMEOUT_S,
                retry=None,  # type: ignore[arg-type]
                job_retry=None,  # type: ignore[arg-type]
            )
            return [_candidate(row) for row in rows]
        except Exception as exc:
            classified = classify_google_error(exc, what=what)
            if classified is None:
                raise
            raise classified from exc


def _parameters(bigquery: Any, query: np.ndarray, space: Space, filters: Filters, top_k: int) -> list[Any]:
    scalar = bigquery.ScalarQueryParameter
    return [
        bigquery.ArrayQueryParameter("query_vector", "FLOAT64", [float(x) for x in query]),
        scalar("embedder", "STRING", space.embedder),
        scalar("model", "STRING", space.model),
        scalar("dimensions", "INT64", int(space.dimensions)),
        scalar("camera", "STRING", filters.camera),
        scalar("since", "TIMESTAMP", _utc(filters.since)),
        scalar("until", "TIMESTAMP", _utc(filters.until)),
        scalar("color_like", "STRING", like_pattern(filters.color) if filters.color else None),
        scalar("include_offline", "BOOL", bool(filters.include_offline)),
        scalar("fetch_k", "INT64", int(top_k) * FETCH_FACTOR),
        scalar("top_k", "INT64", int(top_k)),
    ]


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"filter time {moment.isoformat()} has no time zone")
    return moment.astimezone(dt.UTC)


def _candidate(row: Any) -> Candidate:
    seen_at = row["seen_at"]
    return Candidate(
        object_row_id=row["object_row_id"],
        crop_uri=row["crop_uri"],
        source_uri=row["source_uri"],
        camera=row["camera"],
        seen_at=seen_at.astimezone(dt.UTC).isoformat() if isinstance(seen_at, dt.datetime) else str(seen_at),
        label=row["label"],
        item_color=row["item_color"],
        score=float(row["score"]),
        item_gen_desc=row["item_gen_desc"],
        item_det_desc=row["item_det_desc"],
    )
