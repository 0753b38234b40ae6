"""Embeddings filled in later: what an image whose indexing failed leaves behind, and the fill-in.

When indexing fails (the embedding service down past its budget, the embeddings table refusing
rows), the pipeline keeps the object rows, records `embedding_status = failed` on the image row,
and writes a small pending document beside the image's completion marker
(`{MARKERS_PREFIX}{name}.embeddings-pending.json`): the object rows' fields an `embeddings` row
repeats, the camera and the time the photo was seen. `fill_pending` (run by
`python -m segmentation.replay gs://BUCKET/ --embeddings`) reads each document, the crops it
names, embeds them with the configured embedder, inserts the rows and deletes the document.
Nothing needs reading back from BigQuery, and the row ids are the ones the function would have
written, so a fill-in that runs twice adds nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from segmentation.detections import ObjectRef
from segmentation.errors import PermanentError, PipelineError, TransientError, WriteConflictError
from segmentation.logs import log_event
from segmentation.naming import PENDING_EMBEDDINGS_SUFFIX
from segmentation.retry import retry_call
from segmentation.search.embedders import Embedder
from segmentation.search.indexing import embed_crops, embedding_rows
from segmentation.sink import RowSink
from segmentation.storage import Storage

# The objects-row fields an embeddings row repeats (see rows.embedding_row).
ROW_FIELDS = (
    "row_id",
    "source_uri",
    "source_name",
    "source_generation",
    "object_index",
    "output_uri",
    "label",
    "item_color",
    "item_gen_desc",
    "item_det_desc",
    "detector",
)
VERSION = 1
# Largest crop read back to be embedded, in bytes.
MAX_CROP_BYTES = 20 * 1024 * 1024


def pending_document(object_rows: Sequence[Mapping[str, Any]], *, camera: str | None, seen_at: str) -> bytes:
    """The pending document of one image's object rows."""
    document = {
        "version": VERSION,
        "camera": camera,
        "seen_at": seen_at,
        "objects": [{field: row.get(field) for field in ROW_FIELDS} for row in object_rows],
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def fill_pending(
    storage: Storage,
    sink: RowSink,
    embedder: Embedder,
    *,
    bucket: str,
    markers_prefix: str,
    deadline: float,
    now: str,
) -> Counter[str]:
    """Index every image a pending document under `markers_prefix` in `bucket` names; returns how
    many were filled, failed for good (left in place, with the reason logged) or are to retry."""
    counts: Counter[str] = Counter()
    names = [
        name
        for name in retry_call(lambda: storage.list_names(bucket, markers_prefix), deadline=deadline, what="list")
        if name.endswith(PENDING_EMBEDDINGS_SUFFIX)
    ]
    for name in names:
        try:
            fill_one(storage, sink, embedder, ObjectRef(bucket, name), deadline=deadline, now=now)
            counts["filled"] += 1
        except TransientError as exc:
            log_event("WARNING", f"embeddings not filled in yet: {exc}", pending=f"gs://{bucket}/{name}")
            counts["retry-later"] += 1
        except PipelineError as exc:
            log_event("ERROR", f"embeddings cannot be filled in: {exc}", pending=f"gs://{bucket}/{name}")
            counts["failed"] += 1
    return counts


def fill_one(
    storage: Storage, sink: RowSink, embedder: Embedder, pending: ObjectRef, *, deadline: float, now: str
) -> int:
    """Index the crops one pending document names, then delete it; returns the rows inserted."""
    state = retry_call(lambda: storage.object_state(pending.bucket, pending.name), deadline=deadline, what="state")
    if state is None:
        return 0  # filled in by another run meanwhile
    data = retry_call(
        lambda: storage.read(ObjectRef(pending.bucket, pending.name, state.generation), max_bytes=MAX_CROP_BYTES),
        deadline=deadline,
        what="pending read",
    )
    try:
        document = json.loads(data)
        objects = document["objects"]
        if document.get("version") != VERSION or not isinstance(objects, list):
            raise ValueError(f"version {document.get('version')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise PermanentError(f"not a pending-embeddings document: {exc}") from exc
    crops = [_read_crop(storage, str(row["output_uri"]), deadline) for row in objects]
    vectors = embed_crops(embedder, crops, deadline=deadline)
    rows = embedding_rows(
        embedder, objects, vectors, camera=document.get("camera"), seen_at=document["seen_at"], embedded_at=now
    )
    if rows:
        retry_call(lambda: sink.insert("embeddings", rows), deadline=deadline, what="embeddings insert")
    try:
        retry_call(
            lambda: storage.delete(pending.bucket, pending.name, if_generation_match=state.generation),
            deadline=deadline,
            what="pending delete",
        )
    except WriteConflictError:
        pass  # a newer document replaced it meanwhile: the next fill-in takes that one
    return len(rows)


def _read_crop(storage: Storage, uri: str, deadline: float) -> bytes:
    try:
        ref = ObjectRef.from_uri(uri)
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    return retry_call(lambda: storage.read(ref, max_bytes=MAX_CROP_BYTES), deadline=deadline, what="crop read")
