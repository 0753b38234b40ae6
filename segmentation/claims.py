"""One delivery owns an image's work: a claim object with a lease.

Eventarc delivers at least once, and copies of one event can arrive together. Before any model
call, a delivery creates the image's claim object (`OutputNames.claim`) with
`ifGenerationMatch=0` (`create`): one conditional create, the first and only storage request
before the image is read on the common path. The claim's metadata names the source generation,
the owner (one id per delivery) and when its lease expires (the function timeout after it was
taken, when the platform has killed the delivery if it still runs).

A claim that did not exist means no delivery of this source name has started since its claim was
last given back, so there is no completion marker to look up. A delivery whose create fails looks
at the marker first (the caller), then reads the claim and decides (`claim`):

- the claim is for an older generation, for another source object, or its lease has expired (a
  killed worker), or the caller forces a redo: take it over with a write conditional on the
  claim's generation (so only one taker wins);
- the claim is for a newer generation: that generation owns the outputs; nothing to do here;
- the claim is this generation's and live: another delivery is doing the work (`Busy`).

The owner never deletes its claim after success (the completion marker then answers every later
copy). When it fails in a way the platform will redeliver, it gives the claim back so the
redelivery does not wait for its lease: deleted when nothing was marked complete, or only
expired (`release(expire_only=True)`) when a marker write may have landed, so the next delivery
still looks at the marker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
    """The storage calls a claim needs (a subset of `segmentation.storage.Storage`)."""

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        *,
        content_type: str,
        metadata: dict[str, str] | None = None,
        if_generation_match: int | None = None,
    ) -> str: ...

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


def new_owner() -> str:
    """A delivery's owner id: one per delivery, kept across its retried claim requests."""
    return uuid.uuid4().hex


def create(
    storage: ClaimStorage,
    ref: ObjectRef,
    name: str,
    *,
    lease_s: float,
    owner: str,
    now: Callable[[], float] = time.time,
    bucket: str = "",
) -> Owned | None:
    """Create `ref`'s claim for `owner` if there is none (`ifGenerationMatch=0`); None when one
    exists (possibly `owner`'s own, when a retried create had landed: `claim` recognises it).
    `bucket`: where the claim lives (the outputs bucket); empty means `ref`'s own bucket, as in
    every function here."""
    data, options = _claim_body(ref, owner, now() + lease_s)
    try:
        storage.write(bucket or ref.bucket, name, data, **options, if_generation_match=0)
    except WriteConflictError:
        return None
    return Owned(owner)


def _claim_body(ref: ObjectRef, owner: str, expires_at: float) -> tuple[bytes, dict[str, Any]]:
    """The claim object's bytes and write options (content type, metadata)."""
    metadata = {
        GENERATION_KEY: str(ref.generation),
        SOURCE_KEY: ref.uri,
        OWNER_KEY: owner,
        EXPIRES_KEY: f"{expires_at:.3f}",
    }
    return json.dumps(metadata).encode(), {"content_type": "application/json", "metadata": metadata}


def claim(
    storage: ClaimStorage,
    ref: ObjectRef,
    name: str,
    *,
    lease_s: float,
    owner: str,
    force: bool = False,
    now: Callable[[], float] = time.time,
    bucket: str = "",
) -> Decision:
    """Try to own `ref`'s work for `owner` through the claim object `name`.

    `force` takes over a live lease of the same generation too (a replay that redoes an image).
    A claim already `owner`'s (a create whose answer was lost) is `Owned`. Raises
    `WriteConflictError` when other deliveries kept rewriting the claim (the caller retries or
    lets the platform redeliver) and what `storage` raises for service failures.
    """
    bucket = bucket or ref.bucket
    expected = 0
    for _ in range(TAKE_ATTEMPTS):
        data, options = _claim_body(ref, owner, now() + lease_s)
        try:
            storage.write(bucket, name, data, **options, if_generation_match=expected)
            return Owned(owner)
        except WriteConflictError:
            pass
        state = storage.object_state(bucket, name)
        if state is None:
            expected = 0  # released between our create and the read
            continue
        if state.metadata.get(OWNER_KEY) == owner and state.metadata.get(SOURCE_KEY) == ref.uri:
            return Owned(owner)
        held = _held_by(state, ref, now())
        if isinstance(held, Newer) or (isinstance(held, Busy) and not force):
            return held
        expected = state.generation
    raise WriteConflictError(f"the claim gs://{bucket}/{name} changed under {TAKE_ATTEMPTS} takeovers in a row")


def holder(
    storage: ClaimStorage, ref: ObjectRef, name: str, *, now: Callable[[], float] = time.time, bucket: str = ""
) -> Decision | None:
    """Who holds `ref`'s claim now: `Busy`, `Newer`, or None when it is free to take (absent,
    expired, or an older generation's)."""
    state = storage.object_state(bucket or ref.bucket, name)
    return None if state is None else _held_by(state, ref, now())


def release(
    storage: ClaimStorage, ref: ObjectRef, name: str, owner: str, *, expire_only: bool = False, bucket: str = ""
) -> bool:
    """Give the claim back if `owner` still holds it: delete it, or with `expire_only` keep it
    with its lease run out (so the next delivery still looks at the completion marker).
    Returns whether it was given back."""
    bucket = bucket or ref.bucket
    state = storage.object_state(bucket, name)
    if state is None or state.metadata.get(OWNER_KEY) != owner:
        return False
    try:
        if expire_only:
            data, options = _claim_body(ref, owner, 0.0)
            storage.write(bucket, name, data, **options, if_generation_match=state.generation)
        else:
            storage.delete(bucket, name, if_generation_match=state.generation)
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
