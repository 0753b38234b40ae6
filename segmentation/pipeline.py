"""One image through the whole flow: read -> decode -> detect -> render -> write -> rows.

```
storage.read ─► images.load_image ─► detector.detect ─► render ─► storage.write ─► sink.insert
                                                     └─ one event at a time per worker ─┘
                                                        (until the uploads are answered,
                                                         at most TURN_UPLOAD_WAIT_S)
```
The drawing of an event's outputs waits its turn in the order the model answers came back
(`segmentation.turns`, OUTPUT_TURNS): answers that return together are then drawn one after
another instead of all late together. The turn ends once the uploads are answered or at most
TURN_UPLOAD_WAIT_S after they start, so network round trips (the uploads', the rows') never hold
up the next event's drawing for longer.

Failure policy (see `segmentation.errors`):
- `PermanentError` (broken image, unusable answer, object gone): a `failed` image row, one
  error log line, a completion marker; `process` returns normally so the event is acked.
- `TransientError` past the retry deadline: logged and re-raised, so the function fails and
  the platform redelivers the event. Nothing is marked complete, so the redelivery redoes
  the work; deterministic names and row ids make that rewrite, not duplicate.

Idempotency: a completion marker is written last, carrying the source generation. A
redelivered event whose marker already names its generation (or a newer one) is a cheap
no-op: one metadata read. Outputs and the marker are written conditionally
(`segmentation.outputs`) and checked against the live generation after the writes, so an older
generation processed at the same time as a newer one never leaves or overwrites outputs.
Row building is `segmentation.rows`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from segmentation import claims, rows
from segmentation.backgrounds import OfflineDetectors, camera_of
from segmentation.config import Config
from segmentation.detections import Detection, DetectionResult, ObjectRef
from segmentation.errors import (
    DetectorNotConfiguredError,
    ImageTooLargeForMemoryError,
    InProgressElsewhereError,
    PermanentError,
    PipelineError,
    SuspectError,
    TransientError,
    UnexpectedError,
    UnsupportedSceneError,
)
from segmentation.events import skip_reason
from segmentation.images import LoadedImage, ModelInput, load_image, model_input
from segmentation.logs import log_event
from segmentation.memory import MemoryBudget, Reservation
from segmentation.naming import OutputNames
from segmentation.offline import OfflineDetector
from segmentation.offline.gate import MODEL as GATE_MODEL
from segmentation.outputs import Outputs, generation_of, output_metadata
from segmentation.render import crop_jpeg, overview_jpeg
from segmentation.retry import retry_call
from segmentation.search.backfill import pending_document
from segmentation.search.embedders import Embedder
from segmentation.search.indexing import INDEXING_BUDGET_S, embed_crops, embedding_rows, seen_at
from segmentation.sink import RowSink
from segmentation.storage import Storage
from segmentation.turns import Turns

# The `detector` of an image the empty-belt gate found empty (no model was called).
EMPTY_BELT_GATE = "empty-belt-gate"
# Seconds of transient-error retries left for the writes after the offline fallback answered.
FALLBACK_WRITE_BUDGET_S = 30.0
# Threads for one instance's storage I/O and rendering that run beside the request threads
# (uploads, the crop listing, the generation check, the overview). Shared by all concurrent
# requests: an event queues 6-26 uploads, so at 16 concurrent events 16 threads would queue
# uploads behind each other once each takes a real network round trip (tens of ms). Threads are
# started only when needed; storage.HTTP_POOL_SIZE keeps a connection for each of them.
UPLOAD_THREADS = 64
# Seconds an event waits for its turn to draw its outputs (OUTPUT_TURNS) before it goes ahead
# without one: far above a turn's length (~15-25 ms at 1280x720, a few hundred for a 24-megapixel
# photo; 32 events queued behind each other after a burst wait ~0.8 s), so it only bounds how long
# a slow drawing holds up the others.
TURN_PATIENCE_S = 2.0
# Seconds an event keeps its turn after drawing while its uploads go up, at most: sending the
# requests is CPU work that belongs in the turn, but waiting for real network round trips in it
# would make every event of a worker wait for the others' uploads and rows.
TURN_UPLOAD_WAIT_S = 0.03
# Seconds a copy of an event waits for the delivery that holds the image's claim to finish
# before it is handed back to the platform for redelivery, and how often it looks meanwhile.
DUPLICATE_WAIT_S = 60.0
DUPLICATE_POLL_S = 0.5


class Detector(Protocol):
    """What the pipeline and `segmentation.function` need from a detector (Gemini, or the
    offline one): its `name` for rows, `detect`, and `close` to let its clients go."""

    name: str

    def detect(self, model_input: ModelInput, image_size: tuple[int, int], *, deadline: float) -> DetectionResult:
        """Detections in `model_input`, boxes in `image_size` pixels; raises pipeline errors."""
        ...

    def close(self) -> None:
        """Release clients and connections; called when the process-wide pipeline is reset."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What happened to one event: `status` is ok, partial, empty, failed, ignored, duplicate or
    superseded (a newer generation arrived while this one was processed; nothing recorded)."""

    status: str
    objects_found: int = 0
    reason: str | None = None
    crop_uris: tuple[str, ...] = field(default=())
    overview_uri: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    detector: str | None = None
    fallback: bool = False


class PhaseTimer:
    """Wall time per pipeline phase, in milliseconds, for the log line and the benchmarks.

    >>> timer = PhaseTimer()
    >>> with timer("decode"):
    ...     pass
    >>> list(timer.ms)
    ['decode']
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = self._clock()
        try:
            yield
        finally:
            elapsed = (self._clock() - start) * 1000
            self.ms[phase] = round(self.ms.get(phase, 0.0) + elapsed, 3)


class Pipeline:
    """Processes storage objects; safe to share between threads (it holds no per-image state)."""

    def __init__(
        self,
        config: Config,
        *,
        storage: Storage,
        sink: RowSink,
        detector: Detector,
        offline: OfflineDetectors | None = None,
        embedder: Embedder | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.storage = storage
        self.sink = sink
        self.detector = detector
        self.offline = offline
        # Indexes each crop for lost-bag search; None: indexing is off (EMBEDDER=off).
        self.embedder = embedder
        self._clock = clock
        self._wall_clock = wall_clock
        self._uploads = ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="upload")
        self.outputs = Outputs(storage, config, self._uploads)
        self._turns = Turns(config.output_turns, TURN_PATIENCE_S)
        # Shared by this process's concurrent events: each holds its image's peak until it is done.
        self.memory = MemoryBudget.from_limits(config.memory_limit_mib, config.decode_memory_fraction, clock=clock)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The instance's I/O threads, shared with the search service."""
        return self._uploads

    def process(self, ref: ObjectRef, *, force: bool = False) -> Outcome:
        """Process one object-finalize event's object. Raises only `TransientError` (redeliver me).

        `force` reprocesses even when the completion marker says this generation is done
        (the replay command uses it to redo failed or fallback images).
        """
        started = self._clock()
        arrived = self._wall_clock()  # a delivery's age is taken on arrival, not after its retries
        deadline = started + self.config.retry_deadline_s
        fields = {"bucket": ref.bucket, "object": ref.name, "generation": ref.generation}

        reason = skip_reason(ref, self.config)
        if reason:
            log_event("INFO", f"ignored: {reason}", **fields)
            return Outcome("ignored", reason=reason)

        names = self._names(ref)
        timer = PhaseTimer()
        owner: str | None = None
        try:
            decision = self._start(ref, names, deadline, force=force)
            if not isinstance(decision, claims.Owned):
                log_event("INFO", f"{decision.status}: {decision.reason}", **fields)
                return decision
            owner = decision.owner
            outcome, image_row = self._run(ref, names, deadline, started, timer)
        except _Superseded:
            log_event(
                "INFO", "superseded while processing: a newer generation owns the outputs; results dropped", **fields
            )
            return Outcome("superseded", reason="a newer generation arrived while processing")
        except PermanentError as exc:
            outcome = self._record_failure(ref, exc, started, deadline, fields)
        except MemoryError as exc:
            # Retrying the same image would run out of memory again: a failed row, never a loop.
            exc.__traceback__ = None  # let the frames' images go before the row is written
            error = ImageTooLargeForMemoryError(f"ran out of memory while processing the image: {exc!r}")
            outcome = self._record_failure(ref, error, started, deadline, fields)
        except TransientError as exc:
            if not self._gives_up(ref, exc, arrived):
                self._give_back(ref, names, owner, exc, fields)
                raise
            outcome = self._record_failure(ref, exc, started, deadline, fields, gave_up=True)
        except Exception as exc:
            unexpected = UnexpectedError(f"{type(exc).__name__}: {exc}"[:2000])
            trace = {"error": str(unexpected), "stack_trace": "".join(traceback.format_exception(exc))[-8000:]}
            if not self._gives_up(ref, unexpected, arrived):
                self._give_back(ref, names, owner, unexpected, {**fields, **trace})
                raise unexpected from None
            outcome = self._record_failure(ref, unexpected, started, deadline, {**fields, **trace}, gave_up=True)
        else:
            log_event(
                "INFO",
                "image processed",
                status=outcome.status,
                objects_found=outcome.objects_found,
                prompt_tokens=image_row["prompt_tokens"],
                output_tokens=image_row["output_tokens"],
                total_tokens=image_row["total_tokens"],
                model_latency_ms=image_row["model_latency_ms"],
                processing_ms=image_row["processing_ms"],
                timings_ms=timer.ms,
                **fields,
            )
        with timer("marker"):
            try:
                self._write_marker(ref, names, outcome, deadline)
            except PipelineError as exc:
                # The outcome is recorded in its row. A permanent failure cannot be mended by a
                # redelivery (e.g. a bucket this function may not write to); a transient one
                # leaves a redelivery that finds the rows already there (same row ids).
                log_event("ERROR", f"completion marker not written: {exc}", error_type=exc.error_type, **fields)
                if isinstance(exc, TransientError):
                    # The marker may have landed although its answer was lost: the claim stays
                    # (lease run out), so the redelivery looks at the marker before redoing.
                    self._release(ref, names, owner, fields, expire_only=True)
                    raise
        return dataclasses.replace(outcome, timings_ms=timer.ms)

    def _done_already(self, ref: ObjectRef, names: OutputNames, deadline: float) -> Outcome | None:
        """The `duplicate` outcome if this generation (or a newer one) is marked complete."""
        done_generation = generation_of(self._marker(ref, names, deadline), ref)
        if done_generation is None or ref.generation is None or done_generation < ref.generation:
            return None
        why = (
            "already processed" if done_generation == ref.generation else f"superseded by generation {done_generation}"
        )
        return Outcome("duplicate", reason=why)

    def _start(self, ref: ObjectRef, names: OutputNames, deadline: float, *, force: bool) -> claims.Owned | Outcome:
        """Own this generation's work, or the outcome of not needing to. The common path is one
        conditional create of the claim: no claim means no delivery of this name has started, so
        there is no marker to look up. Else the completion marker answers a duplicate, and the
        claim's holder decides the rest (`_own`)."""
        owner = claims.new_owner()
        if not force and ref.generation is not None:
            fresh = retry_call(
                lambda: claims.create(
                    self.storage, ref, names.claim, lease_s=self.config.claim_lease_s, owner=owner, bucket=names.bucket
                ),
                deadline=deadline,
                what="claim",
            )
            if fresh is not None:
                return fresh
            done = self._done_already(ref, names, deadline)
            if done is not None:
                return done
        return self._own(ref, names, deadline, owner, force=force)

    def _own(
        self, ref: ObjectRef, names: OutputNames, deadline: float, owner: str, *, force: bool
    ) -> claims.Owned | Outcome:
        """Take this generation's claim (`segmentation.claims`), or the outcome of not needing it.

        While another delivery of the same generation holds a live lease, wait for its
        completion marker (or for the claim to be given back, then take it) for at most
        DUPLICATE_WAIT_S; past that, `InProgressElsewhereError` lets the platform redeliver
        this copy, which the marker then answers."""
        if ref.generation is None:
            return claims.Owned("")
        wait_until = min(deadline, self._clock() + DUPLICATE_WAIT_S)
        lease_s = self.config.claim_lease_s
        decision = retry_call(
            lambda: claims.claim(
                self.storage, ref, names.claim, lease_s=lease_s, owner=owner, force=force, bucket=names.bucket
            ),
            deadline=deadline,
            what="claim",
        )
        while isinstance(decision, claims.Busy):
            if self._clock() + DUPLICATE_POLL_S > wait_until:
                raise InProgressElsewhereError(
                    "another delivery of this event holds the image's claim and has not finished; "
                    "this copy will be redelivered"
                )
            time.sleep(DUPLICATE_POLL_S)
            done = self._done_already(ref, names, deadline)
            if done is not None:
                return dataclasses.replace(done, reason=f"{done.reason} by another delivery")
            held = retry_call(
                lambda: claims.holder(self.storage, ref, names.claim, bucket=names.bucket),
                deadline=deadline,
                what="claim read",
            )
            if held is None:
                decision = retry_call(
                    lambda: claims.claim(
                        self.storage, ref, names.claim, lease_s=lease_s, owner=owner, bucket=names.bucket
                    ),
                    deadline=deadline,
                    what="claim",
                )
            else:
                decision = held
        if isinstance(decision, claims.Newer):
            return Outcome("superseded", reason=f"generation {decision.generation} has claimed the outputs")
        return decision

    def _give_back(
        self, ref: ObjectRef, names: OutputNames, owner: str | None, exc: TransientError, fields: dict[str, Any]
    ) -> None:
        """Log a failure the platform will redeliver, and release the claim so the redelivery
        need not wait for the lease to expire."""
        if isinstance(exc, InProgressElsewhereError):
            log_event("WARNING", str(exc), error_type=exc.error_type, **fields)
            return
        log_event(
            "ERROR",
            f"giving up for now after retries; the event will be redelivered: {exc}",
            error_type=exc.error_type,
            **fields,
        )
        self._release(ref, names, owner, fields)

    def _release(
        self,
        ref: ObjectRef,
        names: OutputNames,
        owner: str | None,
        fields: dict[str, Any],
        *,
        expire_only: bool = False,
    ) -> None:
        """Give this delivery's claim back (best effort: else it expires after CLAIM_LEASE_S)."""
        if owner:
            try:
                claims.release(self.storage, ref, names.claim, owner, expire_only=expire_only, bucket=names.bucket)
            except PipelineError as release_error:
                log_event(
                    "WARNING",
                    f"claim not released; it expires after CLAIM_LEASE_S: {release_error}",
                    error_type=release_error.error_type,
                    **fields,
                )

    def _gives_up(self, ref: ObjectRef, exc: TransientError, arrived: float) -> bool:
        """Whether a transient failure should be recorded as failed instead of redelivered: the
        platform has been redelivering this generation for GIVE_UP_AFTER_S, or (for a suspect
        error) this is a redelivery after the first delivery's retry deadline. The age is taken
        when this delivery `arrived`: the first delivery's own retries, which take the whole
        deadline, must not make it look like a redelivery."""
        if ref.created is None or isinstance(exc, InProgressElsewhereError):
            return False
        age = arrived - ref.created
        limit = self.config.retry_deadline_s if isinstance(exc, SuspectError) else self.config.give_up_after_s
        return age >= limit

    def _record_failure(
        self,
        ref: ObjectRef,
        exc: PipelineError,
        started: float,
        deadline: float,
        fields: dict[str, Any],
        *,
        gave_up: bool = False,
    ) -> Outcome:
        """Write the `failed` image row of `exc` and log it; the marker follows in `process`."""
        image_row = self._image_row(ref, status="failed", started=started, error=exc)
        # A row after giving up gets its own write budget: the failure may have used the deadline.
        self._insert("images", [image_row], max(deadline, self._clock() + FALLBACK_WRITE_BUDGET_S))
        message = (
            f"image failed: still failing on a redelivery, not retried again: {exc}"
            if gave_up
            else f"image failed: {exc}"
        )
        log_event("ERROR", message, error_type=exc.error_type, **fields)
        return Outcome("failed", reason=f"{exc.error_type}: {exc}")

    def _run(
        self, ref: ObjectRef, names: OutputNames, deadline: float, started: float, timer: PhaseTimer
    ) -> tuple[Outcome, dict]:
        with self.memory.reservation(deadline) as memory:  # held until the outputs are written
            return self._run_reserved(ref, names, deadline, started, timer, memory)

    def _run_reserved(
        self,
        ref: ObjectRef,
        names: OutputNames,
        deadline: float,
        started: float,
        timer: PhaseTimer,
        memory: Reservation,
    ) -> tuple[Outcome, dict]:
        with timer("read"):
            data = retry_call(
                lambda: self.storage.read(ref, max_bytes=self.config.max_image_bytes),
                deadline=deadline,
                what="storage read",
            )
        with timer("decode"):
            loaded = load_image(data, max_pixels=self.config.max_image_pixels, memory=memory)
            image = loaded.image
            prepared = model_input(
                image, max_side=self.config.model_input_max_side, jpeg=data if loaded.plain_jpeg else None
            )
            del data
        with timer("model"):
            result = self._detect(ref, image, prepared, (loaded.width, loaded.height), deadline)
        # Drawing and sending the outputs is the CPU-heavy part: one event (per OUTPUT_TURNS) at a
        # time, in the order the answers came back (turns.py). The turn ends once they are drawn
        # and sent (TURN_UPLOAD_WAIT_S at most): the round trips after that hold nobody.
        with contextlib.ExitStack() as turn:
            with timer("queue"):
                turn.enter_context(self._turns.turn())
            return self._write_outputs(ref, names, deadline, started, timer, loaded, result, turn)

    def _write_outputs(
        self,
        ref: ObjectRef,
        names: OutputNames,
        deadline: float,
        started: float,
        timer: PhaseTimer,
        loaded: LoadedImage,
        result: DetectionResult,
        turn: contextlib.ExitStack,
    ) -> tuple[Outcome, dict]:
        """Draw, upload and record `result`'s outputs; `turn` (the event's turn) is closed once
        every output is drawn and uploaded, or TURN_UPLOAD_WAIT_S after the last upload started."""
        image = loaded.image
        if result.fallback_reason:
            # The fallback answered after Gemini used up the deadline: give the writes their own
            # short budget (still inside the function timeout, which Terraform keeps 60 s above).
            deadline = max(deadline, self._clock() + FALLBACK_WRITE_BUDGET_S)
        detections = result.detections[: self.config.gemini_max_objects]

        with timer("render"):
            # The overview (a copy of the whole image, drawn on and encoded) on a second thread
            # while this one cuts the crops; Pillow releases the GIL while it encodes.
            overview = self._uploads.submit(overview_jpeg, image, detections)
            with _settled_on_error(overview):
                crops = [
                    (names.crop(index), crop_jpeg(image, detection))
                    for index, detection in enumerate(detections, start=1)
                ]
        # Indexing (a network call per crop for Gemini) runs beside the uploads, on its own budget.
        embedded = (
            self._uploads.submit(
                embed_crops, self.embedder, [jpeg for _, jpeg in crops], deadline=self._indexing_deadline(deadline)
            )
            if self.embedder is not None and crops
            else None
        )
        metadata = output_metadata(ref)

        def write(output: tuple[str, bytes]) -> str | None:
            return self.outputs.write_unless_newer(
                ref,
                output[0],
                output[1],
                content_type="image/jpeg",
                metadata=metadata,
                deadline=deadline,
                what="storage write",
            )

        with timer("write"):
            # Uploads are network round trips: run them side by side, not one after another, and
            # list the crops an older generation may have left meanwhile. The crops go up while
            # the overview is still being encoded (it takes longer than cutting them all).
            existing = self._uploads.submit(self.outputs.crop_names, names, deadline)
            writes = [self._uploads.submit(write, crop) for crop in crops]
            pending: list[Future] = [existing, *([embedded] if embedded else [])]
            with _all_settled_on_error(pending), _all_settled_on_error(writes):
                outputs = [*crops, (names.overview, overview.result())]
                writes.append(self._uploads.submit(write, outputs[-1]))
                wait(writes, timeout=TURN_UPLOAD_WAIT_S)
                turn.close()  # drawn and sent; the rest is mostly waiting for storage and BigQuery
                uris = [future.result() for future in writes]
            # A newer generation of this name may have arrived while this one was detected or
            # written (and even finished: then some writes found its outputs and left them). Its
            # own event owns the outputs (same names), so this one takes back what it wrote if
            # that generation is live now. Asked once every write is done, while the stale crops
            # go: a newer generation that is not live yet will list and replace all of this
            # one's outputs itself, since its event comes after its upload.
            superseded = self._uploads.submit(self.outputs.superseded, ref, deadline)
            with _settled_on_error(superseded):
                self.outputs.delete_stale_crops(ref, names, len(detections), existing.result(), deadline)
            if None in uris or superseded.result():
                self.outputs.withdraw(
                    ref, [name for (name, _), uri in zip(outputs, uris, strict=False) if uri is not None], deadline
                )
                raise _Superseded()
        *crop_uris, overview_uri = [uri for uri in uris if uri is not None]  # all written: checked above

        status = "partial" if result.partial else ("ok" if detections else "empty")
        object_rows = [
            self._object_row(ref, index, detection, crop_uri, overview_uri, result, (loaded.width, loaded.height))
            for index, (detection, crop_uri) in enumerate(zip(detections, crop_uris, strict=False), start=1)
        ]
        with timer("insert"):
            self._insert("objects", object_rows, deadline)
        with timer("index"):
            embedding_status, embedding_error = self._index(ref, names, embedded, object_rows, deadline)
        image_row = self._image_row(
            ref,
            status=status,
            started=started,
            result=result,
            objects_found=len(detections),
            overview_uri=overview_uri,
            size=(loaded.width, loaded.height),
            embedding_status=embedding_status,
            embedding_error=embedding_error,
        )
        with timer("insert"):
            self._insert("images", [image_row], deadline)
        outcome = Outcome(
            status,
            len(detections),
            crop_uris=tuple(crop_uris),
            overview_uri=overview_uri,
            detector=result.detector,
            fallback=result.fallback_reason is not None,
        )
        return outcome, image_row

    def _detect(
        self, ref: ObjectRef, image, prepared: ModelInput, size: tuple[int, int], deadline: float
    ) -> DetectionResult:
        """Ask the configured detector, behind the empty-belt gate and with the offline fallback."""
        offline = self.offline.for_object(ref) if self.offline else None
        if offline and self.config.detector == "offline":
            return offline.detect(prepared, size, deadline=deadline)
        # The gate may skip the model only where it was calibrated: a camera switched on for it,
        # with an empty-scene reference to compare with.
        gate = (
            offline.gate
            if offline and self.config.gate_checks(camera_of(ref.name, self.config.source_prefix))
            else None
        )
        if gate is not None:
            check = gate.check(image)
            if check.camera_moved and gate.first_move():
                log_event(
                    "WARNING",
                    "the camera has moved since its empty-scene reference was taken; the gate "
                    "sends every frame to the model until the reference is replaced",
                    bucket=ref.bucket,
                    object=ref.name,
                    shift_px=[round(v, 1) for v in check.camera_shift],
                )
            if check.empty:
                return DetectionResult(detections=[], detector=EMPTY_BELT_GATE, model=GATE_MODEL)
        try:
            return self.detector.detect(prepared, size, deadline=deadline)
        except (DetectorNotConfiguredError, TransientError) as exc:
            if not (offline and self.config.offline_fallback):
                raise
            reason = (
                f"Gemini is not configured: {exc}"
                if isinstance(exc, DetectorNotConfiguredError)
                else f"Gemini kept failing past the retry deadline: {exc}"
            )
            log_event(
                "WARNING",
                "using the offline detector instead of Gemini",
                reason=reason[:500],
                bucket=ref.bucket,
                object=ref.name,
                generation=ref.generation,
            )
            try:
                result = offline.detect(prepared, size, deadline=deadline)
            except UnsupportedSceneError as refused:
                # Not a scene the offline detector can analyse: Gemini's failure stands (a transient
                # one is redelivered, nothing is recorded as failed for good).
                log_event(
                    "WARNING",
                    "the offline fallback refused the scene; Gemini's failure stands",
                    refused=str(refused)[:500],
                    bucket=ref.bucket,
                    object=ref.name,
                    generation=ref.generation,
                )
                raise exc from None
            return dataclasses.replace(result, fallback_reason=reason[:2000])

    def _indexing_deadline(self, deadline: float) -> float:
        return min(deadline, self._clock() + INDEXING_BUDGET_S)

    def _index(
        self,
        ref: ObjectRef,
        names: OutputNames,
        embedded: Future | None,
        object_rows: list[dict[str, Any]],
        deadline: float,
    ) -> tuple[str, PipelineError | None]:
        """Store the crops' embeddings; the image's `embedding_status` and, if it failed, why.
        A failure is logged and recorded, never raised: the object rows are already stored, and a
        pending document lets `segmentation.replay --embeddings` fill the embeddings in later."""
        if self.embedder is None:
            return "off", None
        if embedded is None:
            return "none", None
        processed_at = _now_iso()
        camera = camera_of(ref.name, self.config.source_prefix)
        seen = seen_at(ref.created, processed_at)
        try:
            vectors = embedded.result()
            rows_ = embedding_rows(
                self.embedder, object_rows, vectors, camera=camera, seen_at=seen, embedded_at=processed_at
            )
            self._insert("embeddings", rows_, self._indexing_deadline(deadline))
        except Exception as exc:
            error = exc if isinstance(exc, PipelineError) else UnexpectedError(f"{type(exc).__name__}: {exc}"[:2000])
            log_event(
                "WARNING",
                f"crops not indexed for search: {error}",
                error_type=error.error_type,
                bucket=ref.bucket,
                object=ref.name,
                generation=ref.generation,
            )
            self._leave_pending_embeddings(ref, names, object_rows, camera, seen, deadline)
            return "failed", error
        return "ok", None

    def _leave_pending_embeddings(
        self,
        ref: ObjectRef,
        names: OutputNames,
        object_rows: list[dict[str, Any]],
        camera: str | None,
        seen: str,
        deadline: float,
    ) -> None:
        try:
            self.outputs.write_unless_newer(
                ref,
                names.pending_embeddings,
                pending_document(object_rows, camera=camera, seen_at=seen),
                content_type="application/json",
                metadata=output_metadata(ref),
                deadline=deadline,
                what="pending embeddings write",
            )
        except PipelineError as exc:
            log_event(
                "ERROR",
                f"pending embeddings not recorded; only redoing the image indexes its crops: {exc}",
                error_type=exc.error_type,
                bucket=ref.bucket,
                object=ref.name,
                generation=ref.generation,
            )

    # --- I/O with retries -------------------------------------------------------------------

    def _insert(self, table: str, rows: list[dict], deadline: float) -> None:
        if rows:
            retry_call(lambda: self.sink.insert(table, rows), deadline=deadline, what=f"{table} rows insert")

    def marker(self, ref: ObjectRef) -> dict[str, str] | None:
        """The completion marker's metadata for `ref`'s object (generation, status, detector,
        fallback), or None if no generation of it was completed."""
        return self._marker(ref, self._names(ref), self._clock() + self.config.retry_deadline_s)

    def _names(self, ref: ObjectRef) -> OutputNames:
        return OutputNames.for_object(
            ref.name,
            source_prefix=self.config.source_prefix,
            crops_prefix=self.config.crops_prefix,
            overview_prefix=self.config.overview_prefix,
            markers_prefix=self.config.markers_prefix,
            bucket=self.config.outputs_bucket_for(ref.bucket),
        )

    def _marker(self, ref: ObjectRef, names: OutputNames, deadline: float) -> dict[str, str] | None:
        return self.outputs.read_marker(names, deadline)

    def _write_marker(self, ref: ObjectRef, names: OutputNames, outcome: Outcome, deadline: float) -> None:
        """Record `outcome` as this name's completion marker unless a newer generation's is there."""
        self.outputs.write_marker(
            ref,
            names,
            status=outcome.status,
            objects_found=outcome.objects_found,
            reason=outcome.reason,
            detector=outcome.detector,
            fallback=outcome.fallback,
            deadline=deadline,
        )

    # --- rows ------------------------------------------------------------------------------

    def _configured_detector(self) -> tuple[str, str]:
        """(detector, model) named on rows of images that failed before any detector answered."""
        if self.config.detector == "offline":
            return OfflineDetector.name, OfflineDetector.model
        return self.detector.name, self.config.gemini_model

    def _image_row(
        self,
        ref: ObjectRef,
        *,
        status: str,
        started: float,
        result: DetectionResult | None = None,
        objects_found: int = 0,
        overview_uri: str | None = None,
        size: tuple[int, int] | None = None,
        error: PipelineError | None = None,
        embedding_status: str | None = None,
        embedding_error: PipelineError | None = None,
    ) -> dict[str, Any]:
        return rows.image_row(
            ref,
            status=status,
            configured=self._configured_detector(),
            prompt=self.config.gemini_prompt,
            processed_at=_now_iso(),
            processing_ms=round((self._clock() - started) * 1000, 3),
            result=result,
            objects_found=objects_found,
            overview_uri=overview_uri,
            size=size,
            error=error,
            embedding_status=embedding_status,
            embedding_error=embedding_error,
        )

    def _object_row(
        self,
        ref: ObjectRef,
        index: int,
        detection: Detection,
        crop_uri: str,
        overview_uri: str,
        result: DetectionResult,
        size: tuple[int, int],
    ) -> dict[str, Any]:
        return rows.object_row(
            ref,
            index,
            detection,
            crop_uri,
            overview_uri,
            result,
            size,
            prompt=self.config.gemini_prompt,
            processed_at=_now_iso(),
        )


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _settled_on_error(future: Future) -> contextlib.AbstractContextManager[None]:
    """If the block raises, wait for `future` (ignoring its outcome) before the error propagates,
    so no work of a failed event is still running when its error is handled."""
    return _all_settled_on_error([future])


@contextlib.contextmanager
def _all_settled_on_error(futures: list[Future]) -> Iterator[None]:
    """`_settled_on_error` for every future in `futures` (the list may grow inside the block)."""
    try:
        yield
    except BaseException:
        for future in futures:
            with contextlib.suppress(BaseException):
                future.result()
        raise


class _Superseded(Exception):
    """A newer generation of the object became live while this one was being processed."""
