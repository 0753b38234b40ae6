"""One delivery owns an image's work: a claim object with a lease.

Eventarc delivers at least once, and copies of one event can arrive together. Before any model
call, a delivery creates the image's claim object (`OutputNames.claim`) with
`ifGenerationMatch=0`: one conditional create, the only storage request this adds to the common
path. The claim's metadata names the source generation, the owner (one id per delivery) and when
its lease expires (the function timeout after it was taken, when the platform has killed the
delivery if it still runs).

A delivery whose create fails reads the claim and decides:

- the claim is for an older generation, for another source object, or its lease has expired (a
  killed worker), or the caller forces a redo: take it over with a write conditional on the
  claim's generation (so only one taker wins);
- the claim is for a newer generation: that generation owns the outputs; nothing to do here;
- the claim is this generation's and live: another delivery is doing the work (`Busy`).

The owner never deletes its claim after success (the completion marker then answers every later
copy); it releases it when it fails in a way that the platform will redeliver, so the
redelivery does not find its own stale lease.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

from segmentation.detections import ObjectRef
from segmentation.errors import WriteConflictError
from segmentation.storage import ObjectState

GENERATION_KEY = "source-generation"
SOURCE_KEY = "source-uri"
OWNER_KEY = "owner"
EXPIRES_KEY = "lease-expires-at"
# Conditional takeovers that may lose a race to other deliveries before the claim is re-read
# and decided anew by the caller's next attempt.
TAKE_ATTEMPTS = 5


class ClaimStorage(Protocol):
    """The storage calls a claim needs (`segmentation.storage.GcsStorage` has them)."""

    def write(self, bucket: str, name: str, data: bytes, *, content_type: str,
              metadata: dict[str, str] | None = None, if_generation_match: int | None = None) -> str: ...

    def object_state(self, bucket: str, name: str) -> ObjectState | None: ...

    def delete(self, bucket: str, name: str, *, if_generation_match: int | None = None) -> None: ...


@dataclass(frozen=True)
class Owned:
    """This delivery owns the work; `owner` is its id in the claim."""

    owner: str


@dataclass(frozen=True)
class Busy:
    """Another delivery holds a live lease on this generation until `expires_at` (epoch seconds)."""

    owner: str
    expires_at: float


@dataclass(frozen=True)
class Newer:
    """A newer generation of the source object has claimed its outputs."""

    generation: int


Decision = Owned | Busy | Newer


def claim(
    storage: ClaimStorage,
    ref: ObjectRef,
    name: str,
    *,
    lease_s: float,
    force: bool = False,
    now: Callable[[], float] = time.time,
) -> Decision:
    """Try to own `ref`'s work through the claim object `name`.

    `force` takes over a live lease of the same generation too (a replay that redoes an image).
    Raises `WriteConflictError` when other deliveries kept rewriting the claim (the caller retries
    or lets the platform redeliver) and what `storage` raises for service failures.
    """
    owner = uuid.uuid4().hex
    expected = 0
    for _ in range(TAKE_ATTEMPTS):
        metadata = {GENERATION_KEY: str(ref.generation), SOURCE_KEY: ref.uri, OWNER_KEY: owner,
                    EXPIRES_KEY: f"{now() + lease_s:.3f}"}
        try:
            storage.write(ref.bucket, name, json.dumps(metadata).encode(), content_type="application/json",
                          metadata=metadata, if_generation_match=expected)
            return Owned(owner)
        except WriteConflictError:
            pass
        state = storage.object_state(ref.bucket, name)
        if state is None:
            expected = 0  # released between our create and the read
            continue
        held = _held_by(state, ref, now())
        if isinstance(held, Newer) or (isinstance(held, Busy) and not force):
            return held
        expected = state.generation
    raise WriteConflictError(f"the claim gs://{ref.bucket}/{name} changed under {TAKE_ATTEMPTS} takeovers in a row")


def holder(storage: ClaimStorage, ref: ObjectRef, name: str, *, now: Callable[[], float] = time.time) -> Decision | None:
    """Who holds `ref`'s claim now: `Busy`, `Newer`, or None when it is free to take (absent,
    expired, or an older generation's)."""
    state = storage.object_state(ref.bucket, name)
    return None if state is None else _held_by(state, ref, now())


def release(storage: ClaimStorage, ref: ObjectRef, name: str, owner: str) -> bool:
    """Delete the claim if `owner` still holds it; returns whether it was deleted."""
    state = storage.object_state(ref.bucket, name)
    if state is None or state.metadata.get(OWNER_KEY) != owner:
        return False
    try:
        storage.delete(ref.bucket, name, if_generation_match=state.generation)
    except WriteConflictError:
        return False  # taken over meanwhile: the taker's now
    return True


def _held_by(state: ObjectState, ref: ObjectRef, now: float) -> Busy | Newer | None:
    """What the live claim `state` means for `ref`: None when `ref` may take it over."""
    metadata = state.metadata
    if metadata.get(SOURCE_KEY) != ref.uri:
        return None  # another source object's claim under a colliding name: ours is the rightful one
    try:
        generation = int(metadata[GENERATION_KEY])
        expires_at = float(metadata[EXPIRES_KEY])
    except (KeyError, ValueError):
        return None  # unreadable: treat as expired
    if ref.generation is not None and generation > ref.generation:
        return Newer(generation)
    if generation == ref.generation and expires_at > now:
        return Busy(metadata.get(OWNER_KEY, ""), expires_at)
    return None
