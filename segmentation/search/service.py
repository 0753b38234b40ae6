"""Lost-bag search: a query object under SEARCH_PREFIX in, ranked crops out.

```
storage.read ─► query.parse ─► embedder ─► VectorStore.nearest ─► (Gemini re-rank) ─► contact sheet
                                                                                   ─► search_matches rows
                                                                                   ─► results JSON (last)
```
The results JSON is written last and carries the query's generation: a redelivered query whose
results name that generation is a no-op, and a query that cannot be searched (bad JSON, an
unreadable photo, search switched off) gets a `failed` results document saying why, so the
person who dropped it sees the answer where they look for results. Transient errors past the
retry deadline are raised, so the platform redelivers the query.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from segmentation.detections import ObjectRef
from segmentation.errors import ImageDecodeError, PermanentError, PipelineError, TransientError
from segmentation.events import skip_reason_for_prefix
from segmentation.images import ModelInput, load_image, model_input
from segmentation.logs import log_event, redact
from segmentation.naming import OutputNames
from segmentation.outputs import Outputs, generation_of, output_metadata
from segmentation.retry import retry_call
from segmentation.search.embedders import Embedder, unit
from segmentation.search.query import BadQueryError, Query, parse_query_text, with_offline_default
from segmentation.search.results import (
    Match,
    SearchRecord,
    contact_sheet,
    document_bytes,
    failure_document,
    match_rows,
    results_document,
)
from segmentation.search.store import Candidate, Space, VectorStore

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from segmentation.config import Config
    from segmentation.pipeline import Detector
    from segmentation.sink import RowSink
    from segmentation.storage import Storage

# Longest side of a query photo as sent to the embedder, in pixels.
QUERY_PHOTO_MAX_SIDE = 1024
# Candidates Gemini compares with a photo query when SEARCH_RERANK is on.
RERANK_CANDIDATES = 20
# Largest crop read back for the contact sheet or the re-rank, in bytes.
MAX_CROP_BYTES = 20 * 1024 * 1024

# (query JPEG, candidate JPEGs, deadline) -> a same-bag score 0-1 per candidate.
Reranker = Callable[[bytes, Sequence[bytes], float], list[float]]


class SearchOffError(PermanentError):
    """A query arrived while indexing and search are switched off (EMBEDDER=off)."""

    error_type = "search_off"


@dataclass(frozen=True)
class SearchOutcome:
    """What happened to one query: ok, failed, ignored or duplicate."""

    status: str
    matches: tuple[Match, ...] = ()
    results_uri: str | None = None
    contact_sheet_uri: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Found:
    """A finished search, before anything is written. `query_box`: the bag the detector found in
    the query photo (x_min, y_min, x_max, y_max), which was searched for instead of the whole photo."""

    matches: list[Match]
    space: Space
    query_jpeg: bytes | None
    rerank_error: str | None = None
    query_box: tuple[int, int, int, int] | None = None


class Searcher:
    """The search itself, shared by the function and the command line: embed, look up, re-rank."""

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        storage: Storage,
        *,
        reranker: Reranker | None = None,
        executor: Executor | None = None,
        detector: Detector | None = None,
    ):
        self.embedder = embedder
        self.store = store
        self.storage = storage
        self.reranker = reranker
        # Finds the bag in a query photo, so the search compares a crop with crops (Gemini only:
        # the offline detector is made for belts, not a passenger's photo).
        self.detector = detector
        self._executor = executor or ThreadPoolExecutor(max_workers=8, thread_name_prefix="search")

    @property
    def space(self) -> Space:
        return Space(self.embedder.name, self.embedder.model, self.embedder.dimensions)

    def search(self, query: Query, photo: Image.Image | None, *, top: int, deadline: float) -> Found:
        """The `top` best matches of `query` (`photo`: its decoded photo, if it has one)."""
        query_jpeg, query_box = self._query_image(photo, deadline) if photo is not None else (None, None)
        vector = self._vector(query, query_jpeg, deadline)
        wanted = max(top, RERANK_CANDIDATES) if self.reranker and query_jpeg else top
        candidates = retry_call(
            lambda: self.store.nearest(vector, self.space, query.filters, wanted), deadline=deadline, what="search"
        )
        matches = [Match(rank, candidate) for rank, candidate in enumerate(candidates, start=1)]
        rerank_error = None
        if self.reranker and query_jpeg and matches:
            try:
                matches = self._reranked(query_jpeg, matches, deadline)
            except PipelineError as exc:
                rerank_error = f"{exc.error_type}: {redact(str(exc))[:500]}"
                log_event("WARNING", "re-rank failed; the embedding order stands", error=rerank_error)
        return Found(matches[:top], self.space, query_jpeg, rerank_error, query_box)

    def _query_image(self, photo: Image.Image, deadline: float) -> tuple[bytes, tuple[int, int, int, int] | None]:
        """The query photo as the embedder gets it (at most QUERY_PHOTO_MAX_SIDE pixels a side): the
        bag the detector finds in it, else the whole photo; and that bag's box."""
        whole = model_input(photo, max_side=QUERY_PHOTO_MAX_SIDE)
        box = self._bag_in(photo, whole, deadline)
        if box is None:
            return whole.data, None
        return model_input(photo.crop(box), max_side=QUERY_PHOTO_MAX_SIDE).data, box

    def _bag_in(self, photo: Image.Image, prepared: ModelInput, deadline: float) -> tuple[int, int, int, int] | None:
        """The largest object the detector finds in `photo` (`prepared`: its model input), or None
        (no detector, nothing found, or the detector failed: then the whole photo is searched
        for, and the log says why)."""
        if self.detector is None:
            return None
        try:
            result = self.detector.detect(prepared, (photo.width, photo.height), deadline=deadline)
        except PipelineError as exc:
            log_event("WARNING", "no bag found in the query photo; searching for the whole photo", error=str(exc)[:300])
            return None
        boxes = [detection.box for detection in result.detections if detection.box.width and detection.box.height]
        if not boxes:
            return None
        box = max(boxes, key=lambda b: b.width * b.height)
        return (max(0, box.x_min), max(0, box.y_min), min(photo.width, box.x_max), min(photo.height, box.y_max))

    def read_crops(self, candidates: Sequence[Candidate], deadline: float) -> list[bytes | None]:
        """Each candidate's crop JPEG, or None where it cannot be read (deleted, unreadable)."""

        def read(uri: str) -> bytes | None:
            try:
                return retry_call(
                    lambda: self.storage.read(ref_of_uri(uri), max_bytes=MAX_CROP_BYTES), deadline=deadline, what="crop"
                )
            except PipelineError as exc:
                log_event("WARNING", "crop not readable for the search results", crop_uri=uri, error=str(exc)[:300])
                return None

        return list(self._executor.map(read, [candidate.crop_uri for candidate in candidates]))

    def _vector(self, query: Query, query_jpeg: bytes | None, deadline: float) -> np.ndarray:
        import numpy as np

        vectors = []
        if query_jpeg is not None:
            (photo_vector,) = retry_call(
                lambda: self.embedder.embed_images([query_jpeg], deadline=deadline), deadline=deadline, what="embed"
            )
            vectors.append(unit(photo_vector))
        if query.text:
            text = query.text
            vectors.append(
                unit(
                    retry_call(
                        lambda: self.embedder.embed_text(text, deadline=deadline), deadline=deadline, what="embed"
                    )
                )
            )
        return unit(np.sum(vectors, axis=0))

    def _reranked(self, query_jpeg: bytes, matches: list[Match], deadline: float) -> list[Match]:
        assert self.reranker is not None
        crops = self.read_crops([match.candidate for match in matches], deadline)
        readable = [(match, crop) for match, crop in zip(matches, crops, strict=True) if crop is not None]
        if not readable:
            return matches
        reranker = self.reranker
        scores = reranker(query_jpeg, [crop for _, crop in readable], deadline)
        if len(scores) != len(readable):
            raise PermanentError(f"the re-rank gave {len(scores)} scores for {len(readable)} crops")
        scored = sorted(zip(readable, scores, strict=True), key=lambda item: (-item[1], -item[0][0].candidate.score))
        unread = [match for match, crop in zip(matches, crops, strict=True) if crop is None]
        ordered = [replace(match, rerank_score=round(float(score), 4)) for (match, _), score in scored] + unread
        return [replace(match, rank=rank) for rank, match in enumerate(ordered, start=1)]


class SearchService:
    """Queries dropped into the bucket (see the module docstring); safe to share between threads."""

    def __init__(
        self,
        config: Config,
        *,
        storage: Storage,
        sink: RowSink,
        searcher: Searcher | None,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ):
        self.config = config
        self.storage = storage
        self.sink = sink
        self.searcher = searcher
        self.outputs = Outputs(storage, config, executor)
        self._clock = clock
        self._now = now

    def handles(self, name: str) -> bool:
        return name.startswith(self.config.search_prefix)

    def process(self, ref: ObjectRef) -> SearchOutcome:
        """Search for the query `ref` names. Raises only `TransientError` (redeliver me)."""
        deadline = self._clock() + self.config.retry_deadline_s
        fields = {"bucket": ref.bucket, "object": ref.name, "generation": ref.generation}
        reason = (
            "in the outputs bucket (OUTPUT_BUCKET)"
            if self.config.output_bucket and ref.bucket == self.config.output_bucket
            else skip_reason_for_prefix(ref, self.config.search_prefix, queries=True)
        )
        if reason:
            log_event("INFO", f"ignored query: {reason}", **fields)
            return SearchOutcome("ignored", reason=reason)
        results_name, sheet_name = self._names(ref)
        bucket = self.config.outputs_bucket_for(ref.bucket)
        done = generation_of(self._metadata(bucket, results_name, deadline), ref)
        if done is not None and ref.generation is not None and done >= ref.generation:
            log_event("INFO", "duplicate query: results already written", **fields)
            return SearchOutcome("duplicate", reason="already searched")
        searched_at = self._now().isoformat()
        try:
            if self.searcher is None:
                raise SearchOffError("lost-bag search is off (EMBEDDER=off): no crop is indexed")
            query, photo = self._read_query(ref, deadline)
            top = query.top or self.config.search_top_k
            found = self.searcher.search(query, photo, top=top, deadline=deadline)
            record = SearchRecord(
                query_uri=ref.uri,
                query_generation=ref.generation,
                kind=query.kind,
                text=query.text,
                filters=query.filters,
                space=found.space,
                searched_at=searched_at,
                results_uri=f"gs://{bucket}/{results_name}",
                contact_sheet_uri=f"gs://{bucket}/{sheet_name}",
            )
            crops = self.searcher.read_crops([match.candidate for match in found.matches], deadline)
            sheet = contact_sheet(
                found.matches,
                [decoded_image(crop) for crop in crops],
                query_image=photo,
                query_text=query.text,
            )
            self._write(ref, sheet_name, sheet, "image/jpeg", deadline)
            rows = match_rows(record, found.matches)
            if rows:
                retry_call(lambda: self.sink.insert("search_matches", rows), deadline=deadline, what="matches insert")
            document = results_document(
                record, found.matches, rerank_error=found.rerank_error, query_box=found.query_box
            )
            self._write(ref, results_name, document_bytes(document), "application/json", deadline)
        except TransientError as exc:
            log_event(
                "ERROR", f"query failed transiently; it will be redelivered: {exc}", error_type=exc.error_type, **fields
            )
            raise
        except PermanentError as exc:
            message = redact(str(exc))[:2000]
            log_event("ERROR", f"query failed: {message}", error_type=exc.error_type, **fields)
            failure = failure_document(ref.uri, ref.generation, exc.error_type, message, searched_at)
            self._write(ref, results_name, document_bytes(failure), "application/json", deadline)
            return SearchOutcome(
                "failed", results_uri=f"gs://{bucket}/{results_name}", reason=f"{exc.error_type}: {message}"
            )
        log_event(
            "INFO",
            "query searched",
            kind=query.kind,
            matches=len(found.matches),
            best_score=found.matches[0].candidate.score if found.matches else None,
            **fields,
        )
        return SearchOutcome(
            "ok",
            matches=tuple(found.matches),
            results_uri=record.results_uri,
            contact_sheet_uri=record.contact_sheet_uri,
        )

    def _names(self, ref: ObjectRef) -> tuple[str, str]:
        prefix = self.config.search_results_prefix
        stem = OutputNames.for_object(
            ref.name,
            source_prefix=self.config.search_prefix,
            crops_prefix=prefix,
            overview_prefix=prefix,
            markers_prefix=prefix,
        ).stem
        return f"{prefix}{stem}.json", f"{prefix}{stem}.jpg"

    def _metadata(self, bucket: str, name: str, deadline: float) -> dict[str, str] | None:
        return retry_call(lambda: self.storage.metadata(bucket, name), deadline=deadline, what="results metadata")

    def _read_query(self, ref: ObjectRef, deadline: float) -> tuple[Query, Image.Image | None]:
        data = retry_call(
            lambda: self.storage.read(ref, max_bytes=self.config.max_image_bytes), deadline=deadline, what="query read"
        )
        form = _text_form(ref.name)
        include_offline = self.config.detector == "offline"
        if form is None:
            image = load_image(data, max_pixels=self.config.max_image_pixels).image
            return with_offline_default(Query(photo=ref.uri), include_offline), image
        try:
            body = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadQueryError("the query is not UTF-8 text") from None
        query = with_offline_default(parse_query_text(body, form, now=self._now()), include_offline)
        photo: Image.Image | None = None
        if query.photo:
            photo_ref = (
                ref_of_uri(query.photo) if query.photo.startswith("gs://") else ObjectRef(ref.bucket, query.photo)
            )
            photo_data = retry_call(
                lambda: self.storage.read(photo_ref, max_bytes=self.config.max_image_bytes),
                deadline=deadline,
                what="query photo read",
            )
            photo = load_image(photo_data, max_pixels=self.config.max_image_pixels).image
        return query, photo

    def _write(self, ref: ObjectRef, name: str, data: bytes, content_type: str, deadline: float) -> None:
        self.outputs.write_unless_newer(
            ref,
            name,
            data,
            content_type=content_type,
            metadata=output_metadata(ref),
            deadline=deadline,
            what="search results write",
        )


def _text_form(name: str) -> str | None:
    lowered = name.lower()
    if lowered.endswith(".txt"):
        return "txt"
    if lowered.endswith(".json"):
        return "json"
    return None


def ref_of_uri(uri: str) -> ObjectRef:
    """`ObjectRef.from_uri`, a bad URI being a bad query."""
    try:
        return ObjectRef.from_uri(uri)
    except ValueError as exc:
        raise BadQueryError(str(exc)) from None


def decoded_image(jpeg: bytes | None) -> Image.Image | None:
    if jpeg is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log_event("WARNING", "crop not decodable for the contact sheet", error=str(ImageDecodeError(str(exc)))[:300])
        return None


def searcher_for(
    config: Config,
    embedder: Embedder | None,
    storage: Storage,
    executor: Executor,
    detector: Detector | None = None,
) -> Searcher | None:
    """The configured searcher over `embedder`'s space, or None when indexing is off. `detector`
    (Gemini) finds the bag in query photos when a Gemini backend is configured."""
    if embedder is None:
        return None
    from segmentation.search.store import store_from_config

    reranker: Reranker | None = None
    if config.search_rerank:
        from segmentation.search.rerank import rerank

        def reranker(query: bytes, candidates: Sequence[bytes], deadline: float) -> list[float]:
            return rerank(config, query, candidates, deadline=deadline)

    finder = detector if detector is not None and detector.name == "gemini" and config.resolved_backend else None
    return Searcher(embedder, store_from_config(config), storage, reranker=reranker, executor=executor, detector=finder)
