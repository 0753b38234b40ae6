"""Where a search looks: the `VectorStore` interface, its query filters and its answers.

- `SqliteVectorStore` (`segmentation.search.sqlite_store`): the local sink's `embeddings` table,
  searched by brute force with NumPy.
- `BigQueryVectorStore` (`segmentation.search.bigquery_store`): the `embeddings` table searched
  with BigQuery's `VECTOR_SEARCH` (its vector index once the table is large enough).

Both read only rows of the query's embedder, model and length, and apply the same filters.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from segmentation.config import Config


@dataclass(frozen=True)
class Filters:
    """What a query narrows the search to. `since` / `until` bound `seen_at` (aware datetimes);
    `color` must appear in the detector's colour (case-insensitive); rows the offline detector
    wrote are left out unless `include_offline`."""

    camera: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    color: str | None = None
    include_offline: bool = False


@dataclass(frozen=True)
class Space:
    """The vectors a search compares: one embedder's, one model's, one length's."""

    embedder: str
    model: str
    dimensions: int


@dataclass(frozen=True)
class Candidate:
    """One indexed crop and its cosine similarity to the query (higher is closer)."""

    object_row_id: str
    crop_uri: str
    source_uri: str
    camera: str | None
    seen_at: str  # ISO 8601 UTC
    label: str | None
    item_color: str | None
    score: float
    item_gen_desc: str | None = None
    item_det_desc: str | None = None


# The embeddings columns a candidate is read from (every field but the score), in field order.
CANDIDATE_COLUMNS = tuple(field.name for field in fields(Candidate) if field.name != "score")


class VectorStore(Protocol):
    def nearest(self, vector: np.ndarray, space: Space, filters: Filters, top_k: int) -> list[Candidate]:
        """The `top_k` crops of `space` closest to `vector` that pass `filters`, best first, at
        most one per crop (`object_row_id`). Raises `TransientError` or `PermanentError`."""
        ...


def store_from_config(config: Config) -> VectorStore:
    """BigQuery's `embeddings` table when BigQuery tables are configured, else the SQLite sink's."""
    if config.uses_bigquery:
        from segmentation.search.bigquery_store import BigQueryVectorStore

        return BigQueryVectorStore(config.bq_table("embeddings"))
    from segmentation.search.sqlite_store import SqliteVectorStore

    return SqliteVectorStore(config.sqlite_path)
