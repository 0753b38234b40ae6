"""An in-memory `Storage` with Cloud Storage's generation semantics, for tests and tools.

A real implementation of `segmentation.storage.Storage`, not a mock: thread-safe, generations
that grow with every write in a bucket, `if_generation_match` preconditions (0: must not exist),
custom metadata, listing by prefix, and the same error classes `GcsStorage` raises
(tests/test_storage_contract.py runs one set of assertions against both). Only the live
generation of an object is kept (an unversioned bucket). It is not a production choice: the
deployed function always uses `GcsStorage`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from segmentation.detections import ObjectRef
from segmentation.errors import ImageTooLargeError, ObjectGoneError, PermanentError, WriteConflictError
from segmentation.storage import ObjectState


@dataclass(frozen=True)
class _Stored:
    data: bytes
    generation: int
    content_type: str
    metadata: dict[str, str]


class MemoryStorage:
    """Buckets of live objects in a dict behind one lock; see the module docstring."""

    def __init__(self, buckets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, _Stored]] = {}
        self._last_generation: dict[str, int] = {}
        for bucket in buckets:
            self.create_bucket(bucket)

    def create_bucket(self, name: str) -> None:
        with self._lock:
            self._objects.setdefault(name, {})
            self._last_generation.setdefault(name, 0)

    def _bucket(self, bucket: str, what: str, missing: type[PermanentError] = PermanentError) -> dict[str, _Stored]:
        objects = self._objects.get(bucket)
        if objects is None:
            raise missing(f"{what}: HTTP 404: The specified bucket does not exist: {bucket}")
        return objects

    def read(self, ref: ObjectRef, *, max_bytes: int) -> bytes:
        if ref.size is not None and ref.size > max_bytes:
            raise ImageTooLargeError(f"{ref.uri} is {ref.size} bytes; the limit is {max_bytes}")
        what = f"read {ref.uri}" + (f" generation {ref.generation}" if ref.generation is not None else "")
        with self._lock:
            stored = self._bucket(ref.bucket, what, ObjectGoneError).get(ref.name)
        if stored is None or (ref.generation is not None and stored.generation != ref.generation):
            raise ObjectGoneError(f"{what}: the object does not exist")
        if len(stored.data) > max_bytes:
            raise ImageTooLargeError(f"{ref.uri} is {len(stored.data)} bytes; the limit is {max_bytes}")
        return stored.data

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        if_generation_match: int | None = None,
    ) -> str:
        uri = f"gs://{bucket}/{name}"
        with self._lock:
            objects = self._bucket(bucket, f"write {uri}")
            live = objects.get(name)
            if if_generation_match is not None and if_generation_match != (live.generation if live else 0):
                raise WriteConflictError(f"write {uri}: generation {if_generation_match} is no longer live")
            self._last_generation[bucket] += 1
            objects[name] = _Stored(bytes(data), self._last_generation[bucket], content_type, dict(metadata or {}))
        return uri

    def metadata(self, bucket: str, name: str) -> dict[str, str] | None:
        state = self.object_state(bucket, name)
        return None if state is None else state.metadata

    def object_state(self, bucket: str, name: str) -> ObjectState | None:
        with self._lock:
            stored = self._objects.get(bucket, {}).get(name)
        return None if stored is None else ObjectState(stored.generation, dict(stored.metadata))

    def live_generation(self, bucket: str, name: str) -> int | None:
        state = self.object_state(bucket, name)
        return None if state is None else state.generation

    def list_names(self, bucket: str, prefix: str) -> list[str]:
        return [ref.name for ref in self.list_objects(bucket, prefix)]

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectRef]:
        with self._lock:
            objects = self._bucket(bucket, f"list gs://{bucket}/{prefix}")
            return [
                ObjectRef(bucket, name, stored.generation, stored.content_type, len(stored.data))
                for name, stored in sorted(objects.items())
                if name.startswith(prefix)
            ]

    def delete(self, bucket: str, name: str, *, if_generation_match: int | None = None) -> None:
        with self._lock:
            objects = self._objects.get(bucket, {})
            live = objects.get(name)
            if live is None:
                return
            if if_generation_match is not None and if_generation_match != live.generation:
                raise WriteConflictError(
                    f"delete gs://{bucket}/{name}: generation {if_generation_match} is no longer live"
                )
            del objects[name]
