"""The storage-consistency protocol of one source object's outputs (crops, overview, marker).

Every output and the completion marker carry the source generation they were written for
(`GENERATION_KEY`, `SOURCE_KEY`). Writes are conditional on the live object they were decided
on, so outputs never go backwards: when events of two generations of one name write together,
the newer one's outputs stay whatever the order. An older generation that finds a newer one
live takes back what it wrote (`withdraw`), and crops an older generation left beyond the
current count are removed (`delete_stale_crops`), never one a newer generation wrote.
Every call retries transient errors until `deadline` (`segmentation.retry.retry_call`).
"""

from __future__ import annotations

import json
from concurrent.futures import Executor
from typing import Any

from segmentation.config import Config
from segmentation.detections import ObjectRef
from segmentation.errors import TransientError, WriteConflictError
from segmentation.naming import OutputNames
from segmentation.retry import retry_call
from segmentation.storage import ObjectState, Storage

GENERATION_KEY = "source-generation"
SOURCE_KEY = "source-uri"
# Conditional writes of one output or marker that may lose a race to other events of the same
# name before giving up (the redelivery tries again).
WRITE_ATTEMPTS = 5


def output_metadata(ref: ObjectRef) -> dict[str, str]:
    """The metadata every output written for `ref` carries: the source generation and URI."""
    return {GENERATION_KEY: str(ref.generation or ""), SOURCE_KEY: ref.uri}


class Outputs:
    """The consistency protocol over `storage`; `executor` runs the withdrawal's deletes side by side."""

    def __init__(self, storage: Storage, config: Config, executor: Executor):
        self.storage = storage
        self.config = config
        self._executor = executor

    def write_unless_newer(
        self,
        ref: ObjectRef,
        name: str,
        data: bytes,
        *,
        content_type: str,
        metadata: dict[str, str],
        deadline: float,
        what: str,
    ) -> str | None:
        """Write `name` (an output or the marker of `ref`) unless a newer generation of `ref`
        wrote it; returns its URI, or None when the newer one's is there and stays.

        The first attempt is conditional on there being none (the common case: one request).
        """
        bucket = self.config.outputs_bucket_for(ref.bucket)
        if ref.generation is None:  # nothing to order by: last writer wins
            return retry_call(
                lambda: self.storage.write(bucket, name, data, content_type=content_type, metadata=metadata),
                deadline=deadline,
                what=what,
            )
        expected = 0
        for _ in range(WRITE_ATTEMPTS):
            try:
                # The lambda runs within this iteration, so it sees this attempt's `expected`.
                return retry_call(
                    lambda: self.storage.write(
                        bucket,
                        name,
                        data,
                        content_type=content_type,
                        metadata=metadata,
                        if_generation_match=expected,  # noqa: B023
                    ),
                    deadline=deadline,
                    what=what,
                )
            except WriteConflictError:
                # There is one (a redelivery's, an older or a newer generation's): decide on it.
                current = self.state(bucket, name, deadline)
                owner = generation_of(current.metadata if current else None, ref)
                if owner is not None and owner > ref.generation:
                    return None
                expected = current.generation if current else 0
        raise TransientError(
            f"gs://{bucket}/{name} changed under {WRITE_ATTEMPTS} writes in a row; the redelivery will try again"
        )

    def state(self, bucket: str, name: str, deadline: float) -> ObjectState | None:
        return retry_call(
            lambda: self.storage.object_state(bucket, name), deadline=deadline, what=f"state of gs://{bucket}/{name}"
        )

    def delete_if_owned(self, ref: ObjectRef, name: str, deadline: float, *, older_too: bool) -> None:
        """Delete `name` if `ref`'s generation wrote it (`older_too`: or an older one), never one a
        newer generation wrote, even if it writes between the check and the delete."""
        bucket = self.config.outputs_bucket_for(ref.bucket)
        current = self.state(bucket, name, deadline)
        if current is None:
            return
        owner = generation_of(current.metadata, ref)
        if older_too:
            if ref.generation is not None and owner is not None and owner > ref.generation:
                return
        elif owner is None or owner != ref.generation:
            return
        try:
            retry_call(
                lambda: self.storage.delete(bucket, name, if_generation_match=current.generation),
                deadline=deadline,
                what="output delete",
            )
        except WriteConflictError:
            pass  # rewritten since: by a newer generation (it stays) or an older one (its own check removes it)

    def withdraw(self, ref: ObjectRef, written: list[str], deadline: float) -> None:
        """Remove the outputs this generation wrote where a newer one has not written yet."""
        list(self._executor.map(lambda name: self.delete_if_owned(ref, name, deadline, older_too=False), written))

    def superseded(self, ref: ObjectRef, deadline: float) -> bool:
        """Whether a newer generation of `ref`'s name is live now."""
        if ref.generation is None:
            return False
        live = retry_call(
            lambda: self.storage.live_generation(ref.bucket, ref.name), deadline=deadline, what="generation check"
        )
        return live is not None and live > ref.generation

    def read_marker(self, names: OutputNames, deadline: float) -> dict[str, str] | None:
        """The completion marker's metadata, or None if no generation of the name was completed."""
        return retry_call(
            lambda: self.storage.metadata(names.bucket, names.marker), deadline=deadline, what="marker read"
        )

    def write_marker(
        self,
        ref: ObjectRef,
        names: OutputNames,
        *,
        status: str,
        objects_found: int,
        reason: str | None,
        detector: str | None,
        fallback: bool,
        deadline: float,
    ) -> None:
        """Record an outcome as this name's completion marker unless a newer generation's is there.

        Like the outputs, markers never go backwards: whichever of two finishing events writes
        second sees what the other wrote and leaves a newer generation's marker alone.
        """
        if ref.generation is None:
            return
        summary: dict[str, Any] = {
            "source_uri": ref.uri,
            "generation": ref.generation,
            "status": status,
            "objects_found": objects_found,
            "reason": reason,
        }
        metadata = {
            GENERATION_KEY: str(ref.generation),
            SOURCE_KEY: ref.uri,
            "status": status,
            "detector": detector or "",
            "fallback": str(fallback).lower(),
        }
        # None: a newer generation finished first, and its marker stays.
        self.write_unless_newer(
            ref,
            names.marker,
            json.dumps(summary).encode(),
            content_type="application/json",
            metadata=metadata,
            deadline=deadline,
            what="marker write",
        )

    def crop_names(self, names: OutputNames, deadline: float) -> list[str]:
        """The names under this object's crop prefix now (this and older generations' crops)."""
        return retry_call(
            lambda: self.storage.list_names(names.bucket, names.crops_glob_prefix), deadline=deadline, what="crop list"
        )

    def delete_stale_crops(
        self, ref: ObjectRef, names: OutputNames, count: int, existing: list[str], deadline: float
    ) -> None:
        """Remove crops an older generation of the same object left beyond this one's `count`
        (`existing`: the names under the crop prefix, from `crop_names`)."""
        current = {names.crop(index) for index in range(1, count + 1)}
        for name in existing:
            suffix = name[len(names.crops_glob_prefix) :]
            if name not in current and suffix[:4].isdigit() and suffix[4:] == ".jpg":
                self.delete_if_owned(ref, name, deadline, older_too=True)


def generation_of(metadata: dict[str, str] | None, ref: ObjectRef) -> int | None:
    """The source generation an output or marker of `ref`'s names was written for; None when
    there is none, or it was written for another source object (generations of different
    objects are not comparable)."""
    if not metadata or metadata.get(SOURCE_KEY, ref.uri) != ref.uri:
        return None
    try:
        return int(metadata[GENERATION_KEY])
    except (KeyError, ValueError):
        return None
