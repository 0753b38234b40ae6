"""`SqliteVectorStore`: exact nearest crops in the local sink's `embeddings` table, with NumPy.

Brute force: every vector of the query's space that passes the filters is read (float32 BLOBs)
and scored with one matrix product; only the best rows' details are read back. Time and memory
grow with the number of crops (figures in BENCHMARKS.md); BigQuery's `VECTOR_SEARCH` takes over
in production.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from segmentation.errors import TransientError
from segmentation.search.store import CANDIDATE_COLUMNS, Candidate, Filters, Space

# Rows whose vectors are read and scored at once.
CHUNK_ROWS = 8192


def filter_sql(space: Space, filters: Filters) -> tuple[str, list[object]]:
    """The WHERE clause (and its parameters) selecting `space`'s rows that pass `filters`.

    >>> filter_sql(Space("descriptor", "v1", 8), Filters(camera="cam1"))[1]
    ['descriptor', 'v1', 8, 'cam1']
    """
    clauses = ["embedder = ?", "model = ?", "dimensions = ?"]
    params: list[object] = [space.embedder, space.model, space.dimensions]
    if filters.camera is not None:
        clauses.append("camera = ?")
        params.append(filters.camera)
    # seen_at is ISO 8601 UTC text, so julianday() compares instants whatever the precision.
    if filters.since is not None:
        clauses.append("julianday(seen_at) >= julianday(?)")
        params.append(filters.since.isoformat())
    if filters.until is not None:
        clauses.append("julianday(seen_at) < julianday(?)")
        params.append(filters.until.isoformat())
    if filters.color:
        # instr on lower-cased text: a plain substring test (LIKE would read % and _ as wildcards).
        clauses.append("instr(lower(coalesce(item_color, '')), ?) > 0")
        params.append(filters.color.lower())
    if not filters.include_offline:
        clauses.append("coalesce(detector, '') != 'offline'")
    return " AND ".join(clauses), params


class SqliteVectorStore:
    """The `embeddings` table of a `SqliteSink` file, searched exactly."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def nearest(self, vector: np.ndarray, space: Space, filters: Filters, top_k: int) -> list[Candidate]:
        where, params = filter_sql(space, filters)
        query = np.asarray(vector, dtype=np.float32)
        try:
            with sqlite3.connect(self.path, timeout=30.0) as conn:
                cursor = conn.execute(f'SELECT rowid, object_row_id, embedding FROM "embeddings" WHERE {where}', params)
                # Scored a chunk at a time: memory holds one chunk of vectors, not the whole table.
                all_rowids: list[int] = []
                object_ids: list[str] = []
                chunks: list[np.ndarray] = []
                while chunk := cursor.fetchmany(CHUNK_ROWS):
                    matrix = np.frombuffer(b"".join(row[2] for row in chunk), dtype="<f4").reshape(len(chunk), -1)
                    chunks.append(matrix @ query)
                    all_rowids.extend(row[0] for row in chunk)
                    object_ids.extend(row[1] for row in chunk)
                if not chunks:
                    return []
                scores = np.concatenate(chunks)
                best = _best_per_object(object_ids, scores, top_k)
                rowids = [all_rowids[i] for i in best]
                details = {
                    row[0]: row[1:]
                    for row in conn.execute(
                        f'SELECT rowid, {", ".join(CANDIDATE_COLUMNS)} FROM "embeddings" '
                        f"WHERE rowid IN ({', '.join('?' for _ in rowids)})",
                        rowids,
                    )
                }
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TransientError(f"search {self.path}: {exc}") from exc
            if "no such table" in str(exc):
                return []  # nothing indexed yet
            raise
        return [
            Candidate(
                **dict(zip(CANDIDATE_COLUMNS, details[all_rowids[i]], strict=True)), score=round(float(scores[i]), 6)
            )
            for i in best
        ]


def _best_per_object(object_ids: list[str], scores: np.ndarray, top_k: int) -> list[int]:
    """Indices of the `top_k` best scores, best first, one per object id (a crop indexed twice,
    e.g. by a replay, is one match).

    >>> _best_per_object(["a", "b", "a", "c"], np.array([0.9, 0.5, 0.95, 0.1]), 2)
    [2, 1]
    """
    order = np.argsort(-scores, kind="stable")
    chosen: list[int] = []
    seen: set[str] = set()
    for index in order.tolist():
        if object_ids[index] in seen:
            continue
        seen.add(object_ids[index])
        chosen.append(index)
        if len(chosen) == top_k:
            break
    return chosen
