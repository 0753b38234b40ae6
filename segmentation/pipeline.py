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
no-op: one metadata read. Outputs and the marker are written conditionally (see
`_write_unless_newer`) and checked against the live generation after the writes, so an older
generation processed at the same time as a newer one never leaves or overwrites outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from segmentation import PIPELINE_VERSION, claims
from segmentation.config import Config
from segmentation.detections import Detection, DetectionResult, ObjectRef
from segmentation.backgrounds import OfflineDetectors, camera_of
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
    WriteConflictError,
)
from segmentation.events import skip_reason
from segmentation.images import LoadedImage, ModelInput, load_image, model_input
from segmentation.logs import log_event, redact
from segmentation.memory import MemoryBudget, Reservation
from segmentation.naming import OutputNames, row_id
from segmentation.offline.gate import MODEL as GATE_MODEL
from segmentation.offline import OfflineDetector
from segmentation.render import crop_jpeg, overview_jpeg
from segmentation.retry import retry_call
from segmentation.sink import RowSink
from segmentation.storage import GcsStorage, ObjectState
from segmentation.turns import Turns

GENERATION_KEY = "source-generation"
SOURCE_KEY = "source-uri"
# The `detector` of an image the empty-belt gate found empty (no model was called).
EMPTY_BELT_GATE = "empty-belt-gate"
# Seconds of transient-error retries left for the writes after the offline fallback answered.
FALLBACK_WRITE_BUDGET_S = 30.0
# Conditional writes of one output or marker that may lose a race to other events of the same
# name before giving up (the redelivery tries again).
WRITE_ATTEMPTS = 5
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
# Seconds an event keeps its turn after drawing while its uploads go up, at most: building and
# sending the requests is CPU work that belongs in the turn (on the loopback, or a fast network,
# the uploads are answered within it: 1 s x 16 measures the same as with the whole end of the
# event in the turn), but the turn never waits longer for the network. Real round trips take
# tens of milliseconds, and a turn held through them (and the rows' after them) made every event
# of a worker wait for the others' (1 s x 16 with 25 / 60 ms round trips: 49 % against 68 %).
TURN_UPLOAD_WAIT_S = 0.03
# Seconds a copy of an event waits for the delivery that holds the image's claim to finish
# before it is handed back to the platform for redelivery, and how often it looks meanwhile.
DUPLICATE_WAIT_S = 60.0
DUPLICATE_POLL_S = 0.5


class Detector(Protocol):
    """What the pipeline needs from a detector (Gemini, or the offline one)."""

    name: str

    def detect(self, model_input: ModelInput, image_size: tuple[int, int], *, deadline: float) -> DetectionResult:
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
        storage: GcsStorage,
        sink: RowSink,
        detector: Detector,
        offline: OfflineDetectors | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.storage = storage
        self.sink = sink
        self.detector = detector
        self.offline = offline
        self._clock = clock
        self._wall_clock = wall_clock
        self._uploads = ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="upload")
        self._turns = Turns(config.output_turns, TURN_PATIENCE_S)
        # Shared by this process's concurrent events: each holds its image's peak until it is done.
        self.memory = MemoryBudget.from_limits(config.memory_limit_mib, config.decode_memory_fraction,
                                               clock=clock)

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
            log_event("INFO", "superseded while processing: a newer generation owns the outputs; "
                      "results dropped", **fields)
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
        except Exception as exc:  # noqa: BLE001 - nothing escapes unclassified
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
        done_generation = _generation_of(self._marker(ref, names, deadline), ref)
        if done_generation is None or ref.generation is None or done_generation < ref.generation:
            return None
        why = "already processed" if done_generation == ref.generation else f"superseded by generation {done_generation}"
        return Outcome("duplicate", reason=why)

    def _start(self, ref: ObjectRef, names: OutputNames, deadline: float, *, force: bool) -> claims.Owned | Outcome:
        """Own this generation's work, or the outcome of not needing to. The common path is one
        conditional create of the claim: no claim means no delivery of this name has started, so
        there is no marker to look up. Else the completion marker answers a duplicate, and the
        claim's holder decides the rest (`_own`)."""
        owner = claims.new_owner()
        if not force and ref.generation is not None:
            fresh = retry_call(lambda: claims.create(self.storage, ref, names.claim, lease_s=self.config.claim_lease_s,
                                                     owner=owner, bucket=names.bucket), deadline=deadline, what="claim")
            if fresh is not None:
                return fresh
            done = self._done_already(ref, names, deadline)
            if done is not None:
                return done
        return self._own(ref, names, deadline, owner, force=force)

    def _own(self, ref: ObjectRef, names: OutputNames, deadline: float, owner: str, *,
             force: bool) -> claims.Owned | Outcome:
        """Take this generation's claim (`segmentation.claims`), or the outcome of not needing it.

        While another delivery of the same generation holds a live lease, wait for its
        completion marker (or for the claim to be given back, then take it) for at most
        DUPLICATE_WAIT_S; past that, `InProgressElsewhereError` lets the platform redeliver
        this copy, which the marker then answers."""
        if ref.generation is None:
            return claims.Owned("")
        wait_until = min(deadline, self._clock() + DUPLICATE_WAIT_S)
        lease_s = self.config.claim_lease_s
        decision = retry_call(lambda: claims.claim(self.storage, ref, names.claim, lease_s=lease_s, owner=owner,
                                                   force=force, bucket=names.bucket), deadline=deadline, what="claim")
        while isinstance(decision, claims.Busy):
            if self._clock() + DUPLICATE_POLL_S > wait_until:
                raise InProgressElsewhereError(
                    "another delivery of this event holds the image's claim and has not finished; "
                    "this copy will be redelivered")
            time.sleep(DUPLICATE_POLL_S)
            done = self._done_already(ref, names, deadline)
            if done is not None:
                return dataclasses.replace(done, reason=f"{done.reason} by another delivery")
            held = retry_call(lambda: claims.holder(self.storage, ref, names.claim, bucket=names.bucket), deadline=deadline,
                              what="claim read")
            if held is None:
                decision = retry_call(lambda: claims.claim(self.storage, ref, names.claim, lease_s=lease_s,
                                                           owner=owner, bucket=names.bucket), deadline=deadline, what="claim")
            else:
                decision = held
        if isinstance(decision, claims.Newer):
            return Outcome("superseded", reason=f"generation {decision.generation} has claimed the outputs")
        return decision

    def _give_back(self, ref: ObjectRef, names: OutputNames, owner: str | None, exc: TransientError,
                   fields: dict[str, Any]) -> None:
        """Log a failure the platform will redeliver, and release the claim so the redelivery
        need not wait for the lease to expire."""
        if isinstance(exc, InProgressElsewhereError):
            log_event("WARNING", str(exc), error_type=exc.error_type, **fields)
            return
        log_event("ERROR", f"giving up for now after retries; the event will be redelivered: {exc}",
                  error_type=exc.error_type, **fields)
        self._release(ref, names, owner, fields)

    def _release(self, ref: ObjectRef, names: OutputNames, owner: str | None, fields: dict[str, Any], *,
                 expire_only: bool = False) -> None:
        """Give this delivery's claim back (best effort: else it expires after CLAIM_LEASE_S)."""
        if owner:
            try:
                claims.release(self.storage, ref, names.claim, owner, expire_only=expire_only,
                               bucket=names.bucket)
            except PipelineError as release_error:
                log_event("WARNING", f"claim not released; it expires after CLAIM_LEASE_S: {release_error}",
                          error_type=release_error.error_type, **fields)

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

    def _record_failure(self, ref: ObjectRef, exc: PipelineError, started: float, deadline: float,
                        fields: dict[str, Any], *, gave_up: bool = False) -> Outcome:
        """Write the `failed` image row of `exc` and log it; the marker follows in `process`."""
        image_row = self._image_row(ref, status="failed", started=started, error=exc)
        # A row after giving up gets its own write budget: the failure may have used the deadline.
        self._insert("images", [image_row], max(deadline, self._clock() + FALLBACK_WRITE_BUDGET_S))
        message = (f"image failed: still failing on a redelivery, not retried again: {exc}" if gave_up
                   else f"image failed: {exc}")
        log_event("ERROR", message, error_type=exc.error_type, **fields)
        return Outcome("failed", reason=f"{exc.error_type}: {exc}")

    def _run(
        self, ref: ObjectRef, names: OutputNames, deadline: float, started: float, timer: PhaseTimer
    ) -> tuple[Outcome, dict]:
        with self.memory.reservation(deadline) as memory:  # held until the outputs are written
            return self._run_reserved(ref, names, deadline, started, timer, memory)

    def _run_reserved(
        self, ref: ObjectRef, names: OutputNames, deadline: float, started: float, timer: PhaseTimer,
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
            prepared = model_input(image, max_side=self.config.model_input_max_side,
                                   jpeg=data if loaded.plain_jpeg else None)
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
        self, ref: ObjectRef, names: OutputNames, deadline: float, started: float, timer: PhaseTimer,
        loaded: LoadedImage, result: DetectionResult, turn: contextlib.ExitStack,
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
                crops = [(names.crop(index), crop_jpeg(image, detection))
                         for index, detection in enumerate(detections, start=1)]
        metadata = {GENERATION_KEY: str(ref.generation or ""), SOURCE_KEY: ref.uri}

        def write(output: tuple[str, bytes]) -> str | None:
            return self._write_unless_newer(ref, output[0], output[1], content_type="image/jpeg", metadata=metadata,
                                            deadline=deadline, what="storage write")

        with timer("write"):
            # Uploads are network round trips: run them side by side, not one after another, and
            # list the crops an older generation may have left meanwhile. The crops go up while
            # the overview is still being encoded (it takes longer than cutting them all).
            existing = self._uploads.submit(self._crop_names, ref, names, deadline)
            writes = [self._uploads.submit(write, crop) for crop in crops]
            with _settled_on_error(existing), _all_settled_on_error(writes):
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
            superseded = self._uploads.submit(self._superseded, ref, deadline)
            with _settled_on_error(superseded):
                self._delete_stale_crops(ref, names, len(detections), existing.result(), deadline)
            if None in uris or superseded.result():
                self._withdraw(ref, [name for (name, _), uri in zip(outputs, uris) if uri is not None], deadline)
                raise _Superseded()
        *crop_uris, overview_uri = uris

        status = "partial" if result.partial else ("ok" if detections else "empty")
        image_row = self._image_row(
            ref,
            status=status,
            started=started,
            result=result,
            objects_found=len(detections),
            overview_uri=overview_uri,
            size=(loaded.width, loaded.height),
        )
        object_rows = [
            self._object_row(ref, index, detection, crop_uri, overview_uri, result, (loaded.width, loaded.height))
            for index, (detection, crop_uri) in enumerate(zip(detections, crop_uris), start=1)
        ]
        with timer("insert"):
            self._insert("objects", object_rows, deadline)
            self._insert("images", [image_row], deadline)
        outcome = Outcome(status, len(detections), crop_uris=tuple(crop_uris), overview_uri=overview_uri,
                          detector=result.detector, fallback=result.fallback_reason is not None)
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
        gate = offline.gate if offline and self.config.gate_checks(camera_of(ref.name, self.config.source_prefix)) else None
        if gate is not None:
            check = gate.check(image)
            if check.camera_moved and gate.first_move():
                log_event("WARNING", "the camera has moved since its empty-scene reference was taken; the gate "
                          "sends every frame to the model until the reference is replaced",
                          bucket=ref.bucket, object=ref.name, shift_px=[round(v, 1) for v in check.camera_shift])
            if check.empty:
                return DetectionResult(detections=[], detector=EMPTY_BELT_GATE, model=GATE_MODEL)
        try:
            return self.detector.detect(prepared, size, deadline=deadline)
        except (DetectorNotConfiguredError, TransientError) as exc:
            if not (offline and self.config.offline_fallback):
                raise
            reason = (f"Gemini is not configured: {exc}" if isinstance(exc, DetectorNotConfiguredError)
                      else f"Gemini kept failing past the retry deadline: {exc}")
            log_event("WARNING", "using the offline detector instead of Gemini", reason=reason[:500],
                      bucket=ref.bucket, object=ref.name, generation=ref.generation)
            try:
                result = offline.detect(prepared, size, deadline=deadline)
            except UnsupportedSceneError as refused:
                # Not a scene the offline detector can analyse: Gemini's failure stands (a transient
                # one is redelivered, nothing is recorded as failed for good).
                log_event("WARNING", "the offline fallback refused the scene; Gemini's failure stands",
                          refused=str(refused)[:500], bucket=ref.bucket, object=ref.name, generation=ref.generation)
                raise exc from None
            return dataclasses.replace(result, fallback_reason=reason[:2000])

    # --- I/O with retries -------------------------------------------------------------------

    def _write_unless_newer(
        self, ref: ObjectRef, name: str, data: bytes, *, content_type: str, metadata: dict[str, str],
        deadline: float, what: str,
    ) -> str | None:
        """Write `name` (an output or the marker of `ref`) unless a newer generation of `ref`
        wrote it; returns its URI, or None when the newer one's is there and stays.

        Outputs never go backwards: every write is conditional on the live object it was decided
        on (first on there being none, the common case: one request), so when events of two
        generations of one name write together, the newer one's output stays whatever the order.
        """
        bucket = self.config.outputs_bucket_for(ref.bucket)
        if ref.generation is None:  # nothing to order by: last writer wins
            return retry_call(lambda: self.storage.write(bucket, name, data, content_type=content_type,
                                                         metadata=metadata), deadline=deadline, what=what)
        expected = 0
        for _ in range(WRITE_ATTEMPTS):
            try:
                return retry_call(
                    lambda: self.storage.write(bucket, name, data, content_type=content_type, metadata=metadata,
                                               if_generation_match=expected),
                    deadline=deadline, what=what)
            except WriteConflictError:
                # There is one (a redelivery's, an older or a newer generation's): decide on it.
                current = self._state(bucket, name, deadline)
                owner = _generation_of(current.metadata if current else None, ref)
                if owner is not None and owner > ref.generation:
                    return None
                expected = current.generation if current else 0
        raise TransientError(f"gs://{bucket}/{name} changed under {WRITE_ATTEMPTS} writes in a row; "
                             "the redelivery will try again")

    def _state(self, bucket: str, name: str, deadline: float) -> ObjectState | None:
        return retry_call(lambda: self.storage.object_state(bucket, name), deadline=deadline,
                          what=f"state of gs://{bucket}/{name}")

    def _delete_if_owned(self, ref: ObjectRef, name: str, deadline: float, *, older_too: bool) -> None:
        """Delete `name` if `ref`'s generation wrote it (`older_too`: or an older one), never one a
        newer generation wrote, even if it writes between the check and the delete."""
        bucket = self.config.outputs_bucket_for(ref.bucket)
        current = self._state(bucket, name, deadline)
        if current is None:
            return
        owner = _generation_of(current.metadata, ref)
        if older_too:
            if ref.generation is not None and owner is not None and owner > ref.generation:
                return
        elif owner is None or owner != ref.generation:
            return
        try:
            retry_call(lambda: self.storage.delete(bucket, name, if_generation_match=current.generation),
                       deadline=deadline, what="output delete")
        except WriteConflictError:
            pass  # rewritten since: by a newer generation (it stays) or an older one (its own check removes it)

    def _withdraw(self, ref: ObjectRef, written: list[str], deadline: float) -> None:
        """Remove the outputs this generation wrote where a newer one has not written yet."""
        list(self._uploads.map(lambda name: self._delete_if_owned(ref, name, deadline, older_too=False), written))

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
        return retry_call(lambda: self.storage.metadata(names.bucket, names.marker), deadline=deadline, what="marker read")

    def _superseded(self, ref: ObjectRef, deadline: float) -> bool:
        """Whether a newer generation of `ref`'s name is live now."""
        if ref.generation is None:
            return False
        live = retry_call(lambda: self.storage.live_generation(ref.bucket, ref.name), deadline=deadline,
                          what="generation check")
        return live is not None and live > ref.generation

    def _write_marker(self, ref: ObjectRef, names: OutputNames, outcome: Outcome, deadline: float) -> None:
        """Record `outcome` as this name's completion marker unless a newer generation's is there.

        Markers never go backwards: like the outputs, the marker goes through
        `_write_unless_newer`, so when two events of one name finish together (an older and a
        newer generation, or an image and its redelivery), whichever writes second sees what the
        other wrote and leaves a newer generation's marker alone.
        """
        if ref.generation is None:
            return
        summary = {"source_uri": ref.uri, "generation": ref.generation, "status": outcome.status,
                   "objects_found": outcome.objects_found, "reason": outcome.reason}
        data = json.dumps(summary).encode()
        metadata = {GENERATION_KEY: str(ref.generation), SOURCE_KEY: ref.uri, "status": outcome.status,
                    "detector": outcome.detector or "", "fallback": str(outcome.fallback).lower()}
        # None: a newer generation finished first, and its marker stays.
        self._write_unless_newer(ref, names.marker, data, content_type="application/json", metadata=metadata,
                                 deadline=deadline, what="marker write")

    def _crop_names(self, ref: ObjectRef, names: OutputNames, deadline: float) -> list[str]:
        """The names under this object's crop prefix now (this and older generations' crops)."""
        return retry_call(
            lambda: self.storage.list_names(names.bucket, names.crops_glob_prefix), deadline=deadline, what="crop list"
        )

    def _delete_stale_crops(
        self, ref: ObjectRef, names: OutputNames, count: int, existing: list[str], deadline: float
    ) -> None:
        """Remove crops an older generation of the same object left beyond this one's count
        (`existing`: the names under the crop prefix, from `_crop_names`)."""
        current = {names.crop(index) for index in range(1, count + 1)}
        for name in existing:
            suffix = name[len(names.crops_glob_prefix):]
            if name not in current and suffix[:4].isdigit() and suffix[4:] == ".jpg":
                self._delete_if_owned(ref, name, deadline, older_too=True)

    # --- rows ------------------------------------------------------------------------------

    def _common(self, ref: ObjectRef, result: DetectionResult | None) -> dict[str, Any]:
        usage = result.usage if result else None
        return {
            "source_uri": ref.uri,
            "source_bucket": ref.bucket,
            "source_name": ref.name,
            "source_generation": ref.generation,
            "detector": result.detector if result else self._configured_detector()[0],
            "model": result.model if result else self._configured_detector()[1],
            "prompt": self.config.gemini_prompt if (result is None or result.detector == "gemini") else None,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.output_tokens if usage else 0,
            "thinking_tokens": usage.thinking_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
            "model_latency_ms": round(result.latency_ms, 3) if result else 0.0,
            "processed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "pipeline_version": PIPELINE_VERSION,
        }

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
    ) -> dict[str, Any]:
        error_type = error.error_type if error else ("truncated_answer" if status == "partial" else None)
        common = self._common(ref, result)
        return {
            # A different outcome or detector for the same generation (a replay) is a new fact.
            "row_id": row_id(ref.bucket, ref.name, ref.generation, "image", common["detector"], status, error_type),
            **common,
            "content_type": ref.content_type,
            "size_bytes": ref.size,
            "status": status,
            "objects_found": objects_found,
            "error_type": error_type,
            "error_message": redact(str(error))[:2000] if error else None,  # rows are read as widely as logs
            "fallback_reason": result.fallback_reason if result else None,
            "overview_uri": overview_uri,
            "image_width": size[0] if size else None,
            "image_height": size[1] if size else None,
            "processing_ms": round((self._clock() - started) * 1000, 3),
        }

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
        width, height = size
        box = detection.box
        return {
            "row_id": row_id(ref.bucket, ref.name, ref.generation, "object", result.detector, index),
            **self._common(ref, result),
            "object_index": index,
            "label": detection.label,
            "output_uri": crop_uri,
            "item_color": detection.color,
            "item_gen_desc": detection.general_description,
            "item_det_desc": detection.detailed_description,
            "box_x_min": box.x_min,
            "box_y_min": box.y_min,
            "box_x_max": box.x_max,
            "box_y_max": box.y_max,
            "box_norm_x_min": round(box.x_min / width, 6),
            "box_norm_y_min": round(box.y_min / height, 6),
            "box_norm_x_max": round(box.x_max / width, 6),
            "box_norm_y_max": round(box.y_max / height, 6),
            "has_mask": detection.mask is not None,
            "overview_uri": overview_uri,
            "image_width": width,
            "image_height": height,
        }


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


def _generation_of(metadata: dict[str, str] | None, ref: ObjectRef) -> int | None:
    """The source generation an output or marker of `ref`'s names was written for; None when
    there is none, or it was written for another source object (generations of different
    objects are not comparable)."""
    if not metadata or metadata.get(SOURCE_KEY, ref.uri) != ref.uri:
        return None
    try:
        return int(metadata[GENERATION_KEY])
    except (KeyError, ValueError):
        return None
