"""Indexing at processing time: an image's crops to `embeddings` rows.

Indexing never fails an image: `index_crops` raises `PipelineError`s, and the pipeline records
them on the image row (`embedding_status = failed`) and keeps the object rows;
`segmentation.replay --embeddings` fills the vectors in later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from segmentation.errors import PermanentError
from segmentation.retry import retry_call
from segmentation.rows import embedding_row
from segmentation.search.embedders import Embedder

if TYPE_CHECKING:
    import numpy as np

# Seconds an image's indexing may take, retries included, at most: a slow embedding service
# must not use the time the image's rows need.
INDEXING_BUDGET_S = 30.0


class BadEmbeddingError(PermanentError):
    """The embedder answered with a vector of the wrong length, or not numbers."""

    error_type = "bad_embedding"


def checked_vectors(vectors: Sequence[Any], expected: int, dimensions: int) -> list[np.ndarray]:
    """`vectors` as float32 arrays, once each is `dimensions` long and finite, and there are
    `expected` of them; else `BadEmbeddingError`."""
    import numpy as np

    if len(vectors) != expected:
        raise BadEmbeddingError(f"{len(vectors)} vectors for {expected} inputs")
    checked = []
    for vector in vectors:
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (dimensions,) or not np.all(np.isfinite(array)):
            raise BadEmbeddingError(f"a vector of shape {array.shape} (finite: {bool(np.all(np.isfinite(array)))})")
        checked.append(array)
    return checked


def embed_crops(embedder: Embedder, jpegs: Sequence[bytes], *, deadline: float) -> list[np.ndarray]:
    """One checked vector per crop, transient errors retried until `deadline`."""
    if not jpegs:
        return []
    vectors = retry_call(lambda: embedder.embed_images(jpegs, deadline=deadline), deadline=deadline, what="embedding")
    return checked_vectors(vectors, len(jpegs), embedder.dimensions)


def embedding_rows(
    embedder: Embedder,
    object_rows: Sequence[Mapping[str, Any]],
    vectors: Sequence[np.ndarray],
    *,
    camera: str | None,
    seen_at: str,
    embedded_at: str,
) -> list[dict[str, Any]]:
    """The `embeddings` rows of one image's objects, in order."""
    space = (embedder.name, embedder.model, embedder.dimensions)
    return [
        embedding_row(row, vector, embedder=space, camera=camera, seen_at=seen_at, embedded_at=embedded_at)
        for row, vector in zip(object_rows, vectors, strict=True)
    ]


def seen_at(created: float | None, processed_at: str) -> str:
    """When a photo was taken, as near as the pipeline knows: the object's creation time from the
    event (ISO 8601 UTC), else when it was processed.

    >>> seen_at(1796400000.5, "2026-12-05T12:00:00+00:00"), seen_at(None, "2026-12-05T12:00:00+00:00")
    ('2026-12-04T16:00:00.500000+00:00', '2026-12-05T12:00:00+00:00')
    """
    if created is None or not math.isfinite(created):
        return processed_at
    import datetime as dt

    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat()
