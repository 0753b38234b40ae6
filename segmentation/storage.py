"""Cloud Storage access: read one object generation, write results, list, delete.

`GcsStorage` is used in production and locally: locally the same google-cloud-storage client
talks to the local Cloud Storage stand-in (`devtools.local_storage`) because
`STORAGE_EMULATOR_HOST` is set (the client then uses anonymous credentials and no project).

Every client error is turned into the pipeline's classes by `classify_google_error` (shared
with the BigQuery sink): 429/408/5xx, 403 rate/quota reasons, connection errors and timeouts
-> `TransientError` (with the server's Retry-After); other 4xx -> `PermanentError`; 404 -> the
`not_found` class the caller chooses (`ObjectGoneError` when reading). The client library's
own retries are switched off on every call (`retry=None`): the pipeline wraps each call in
`segmentation.retry.retry_call`, which owns backoff and the event's deadline; stacked retry
loops would multiply attempts and could run past that deadline.

The google.cloud imports happen on first use, not at import time (~250 ms of a cold start).

google-cloud-storage 3.17's bucket-metadata cache (an OpenTelemetry preview feature) starts a
background thread that GETs each bucket once per client, even with tracing off. That request
needs storage.buckets.get, which the function's service account deliberately lacks, so it
would only add a 403 to every cold start: the client is built with the library's switch
DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA set (unless the environment sets it already).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from segmentation.detections import ObjectRef
from segmentation.errors import (
    ImageTooLargeError,
    ObjectGoneError,
    PermanentError,
    PipelineError,
    TransientError,
    WriteConflictError,
)

if TYPE_CHECKING:
    import google.cloud.storage as storage


_BUCKET_METADATA_SWITCH = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"

# Connections kept open to Cloud Storage: one for each of the pipeline's I/O threads
# (pipeline.UPLOAD_THREADS) plus the request threads' own reads and marker calls.
HTTP_POOL_SIZE = 128

# (connect, read) seconds for one HTTP request; retry_call decides whether to try again.
REQUEST_TIMEOUT = (10.0, 60.0)

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Google APIs (BigQuery in particular) report rate limits as 403 with one of these reasons.
_TRANSIENT_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "backendError", "internalError"}
)


def classify_google_error(
    exc: BaseException, *, what: str, not_found: type[PermanentError] = PermanentError
) -> PipelineError | None:
    """The pipeline error for a Google client exception, or None if `exc` is not one we know.

    `what` names the operation in the message; a 404 becomes `not_found(...)`.

    >>> from google.api_core import exceptions as api
    >>> type(classify_google_error(api.ServiceUnavailable("down"), what="x")).__name__
    'TransientError'
    >>> type(classify_google_error(api.Forbidden("no"), what="x")).__name__
    'PermanentError'
    >>> classify_google_error(KeyError("bug"), what="x") is None
    True
    """
    if isinstance(exc, PipelineError):
        return exc
    from google.api_core import exceptions as api_exceptions

    if isinstance(exc, api_exceptions.GoogleAPICallError):
        code = exc.code
        message = f"{what}: HTTP {code}: {exc.message}"[:2000]
        if code == 404:
            return not_found(message)
        if code in _TRANSIENT_STATUS or (code is not None and code >= 500 and code != 501):
            return TransientError(message, retry_after=_retry_after(exc))
        if code == 403 and _reasons(exc) & _TRANSIENT_REASONS:
            return TransientError(message, retry_after=_retry_after(exc))
        return PermanentError(message)
    if isinstance(exc, api_exceptions.RetryError):
        return TransientError(f"{what}: {exc}")
    if _is_network_error(exc):
        return TransientError(f"{what}: {type(exc).__name__}: {exc}"[:2000])
    return None


def _is_network_error(exc: BaseException) -> bool:
    import http.client

    import requests
    import urllib3.exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, auth_exceptions.RefreshError):
        return bool(getattr(exc, "retryable", False))
    return isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,  # includes SSLError: seen transiently on GCP
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
            auth_exceptions.TransportError,
        ),
    )


def _reasons(exc: Any) -> set[str]:
    return {error.get("reason", "") for error in (getattr(exc, "errors", None) or []) if isinstance(error, dict)}


def _retry_after(exc: Any) -> float | None:
    """Seconds from the response's Retry-After header (delta-seconds or HTTP date), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # ~14 ms to import; only needed on this rare path

    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _raise_classified(exc: Exception, what: str, not_found: type[PermanentError] = PermanentError) -> NoReturn:
    from google.cloud.storage.exceptions import DataCorruption

    if isinstance(exc, DataCorruption):  # checksum mismatch in transit: a fresh download may be fine
        raise TransientError(f"{what}: {exc}"[:2000]) from exc
    classified = classify_google_error(exc, what=what, not_found=not_found)
    if classified is None:
        raise exc
    raise classified from exc


@dataclass(frozen=True)
class ObjectState:
    """What a metadata read of a live object returns: its generation and custom metadata."""

    generation: int
    metadata: dict[str, str]


class Storage(Protocol):
    """The object store the pipeline, claims, replay and the offline backgrounds use.

    Error contract, shared by every implementation: service failures raise `TransientError`
    (retry) or `PermanentError` (don't); a failed `if_generation_match` raises
    `WriteConflictError`; a missing object is `None` from the metadata calls, a no-op for
    `delete` and `ObjectGoneError` from `read`. Generations are positive and grow per write.
    `GcsStorage` is the production implementation; `segmentation.memory_storage.MemoryStorage`
    is an in-memory one for tests and tools.
    """

    def read(self, ref: ObjectRef, *, max_bytes: int) -> bytes:
        """The bytes of exactly `ref.generation` (the live object if None). `ObjectGoneError` if
        that generation is not live; `ImageTooLargeError` past `max_bytes` (before downloading
        when the size is known)."""
        ...

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
        """Create or replace gs://bucket/name and return that URI; with `if_generation_match`
        only if the live generation is that one (0: no live object), else `WriteConflictError`."""
        ...

    def metadata(self, bucket: str, name: str) -> dict[str, str] | None:
        """Custom metadata of the live object ({} if none); None if it does not exist."""
        ...

    def object_state(self, bucket: str, name: str) -> ObjectState | None:
        """Generation and custom metadata of the live object; None if it does not exist."""
        ...

    def live_generation(self, bucket: str, name: str) -> int | None:
        """Generation of the live object; None if it does not exist."""
        ...

    def list_names(self, bucket: str, prefix: str) -> list[str]:
        """Names of the live objects under `prefix`, sorted."""
        ...

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectRef]:
        """The live objects under `prefix` with generation, content type and size, by name."""
        ...

    def delete(self, bucket: str, name: str, *, if_generation_match: int | None = None) -> None:
        """Delete the live object (gone already is fine); with `if_generation_match` only if
        the live generation is that one, else `WriteConflictError`."""
        ...


class GcsStorage:
    """Cloud Storage through google-cloud-storage (implements `Storage`); every method raises
    only pipeline errors for service failures (plus ValueError-style bugs)."""

    def __init__(self, client: storage.Client | None = None):
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> storage.Client:
        """The client, created on first use (honours STORAGE_EMULATOR_HOST)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    os.environ.setdefault(_BUCKET_METADATA_SWITCH, "true")
                    import google.cloud.storage as storage
                    from requests.adapters import HTTPAdapter

                    from segmentation.sessions import read_environment_once

                    client = storage.Client()
                    # requests keeps 10 connections per host by default; the pipeline's parallel
                    # uploads times the instance's concurrent requests need more, or connections
                    # are dropped and re-opened (a TLS handshake each, in production).
                    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=HTTP_POOL_SIZE)
                    client._http.mount("https://", adapter)
                    client._http.mount("http://", adapter)
                    read_environment_once(client._http)
                    self._client = client
        return self._client

    def read(self, ref: ObjectRef, *, max_bytes: int) -> bytes:
        """The bytes of exactly `ref.generation` (the live object if None).

        Objects larger than `max_bytes` are refused before any byte is downloaded, from the
        event's size or else the object's metadata.
        """
        if ref.size is not None and ref.size > max_bytes:
            raise ImageTooLargeError(f"{ref.uri} is {ref.size} bytes; the limit is {max_bytes}")
        generation = ref.generation
        what = f"read {ref.uri}" + (f" generation {generation}" if generation is not None else "")
        bucket = self.client.bucket(ref.bucket)
        try:
            if ref.size is None:
                info = bucket.get_blob(ref.name, generation=generation, retry=None, timeout=REQUEST_TIMEOUT)
                if info is None:
                    raise ObjectGoneError(f"{what}: the object does not exist")
                _check_served(what, generation, info.generation)
                if info.size is not None and info.size > max_bytes:
                    raise ImageTooLargeError(f"{ref.uri} is {info.size} bytes; the limit is {max_bytes}")
                # Download the generation whose size was checked, even when the event named none.
                generation = info.generation if generation is None else generation
            blob = bucket.blob(ref.name, generation=generation)
            data = blob.download_as_bytes(retry=None, timeout=REQUEST_TIMEOUT)
        except PipelineError:
            raise
        except Exception as exc:
            _raise_classified(exc, what, not_found=ObjectGoneError)
        # The client records X-Goog-Generation of the response (None if the server sent none;
        # production GCS always sends it, and the request already named the generation).
        _check_served(what, generation, blob.generation)
        if len(data) > max_bytes:
            raise ImageTooLargeError(f"{ref.uri} is {len(data)} bytes; the limit is {max_bytes}")
        return data

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
        """Create or overwrite gs://bucket/name; returns that URI.

        With `if_generation_match`, only if the live object is still that generation (0: only
        if there is none); otherwise `WriteConflictError`.
        """
        from google.api_core.exceptions import PreconditionFailed

        blob = self.client.bucket(bucket).blob(name)
        if metadata:
            blob.metadata = dict(metadata)
        uri = f"gs://{bucket}/{name}"
        try:
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=if_generation_match,
                retry=None,
                timeout=REQUEST_TIMEOUT,
            )
        except PreconditionFailed as exc:
            raise WriteConflictError(f"write {uri}: generation {if_generation_match} is no longer live") from exc
        except Exception as exc:
            _raise_classified(exc, f"write {uri}")
        return uri

    def metadata(self, bucket: str, name: str) -> dict[str, str] | None:
        """Custom metadata of the live object ({} if it has none); None if it doesn't exist."""
        state = self.object_state(bucket, name)
        return None if state is None else state.metadata

    def object_state(self, bucket: str, name: str) -> ObjectState | None:
        """The live object's generation and custom metadata; None if it doesn't exist."""
        try:
            blob = self.client.bucket(bucket).get_blob(name, retry=None, timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            _raise_classified(exc, f"metadata of gs://{bucket}/{name}")
        if blob is None:
            return None
        return ObjectState(generation=int(blob.generation or 0), metadata=dict(blob.metadata or {}))

    def live_generation(self, bucket: str, name: str) -> int | None:
        """The generation of the live object, or None if it doesn't exist."""
        state = self.object_state(bucket, name)
        return None if state is None or not state.generation else state.generation

    def list_names(self, bucket: str, prefix: str) -> list[str]:
        """Names of the live objects under `prefix`, sorted."""
        return sorted(ref.name for ref in self.list_objects(bucket, prefix))

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectRef]:
        """The live objects under `prefix` (name, generation, content type, size), in listing order."""
        try:
            blobs = self.client.list_blobs(
                bucket,
                prefix=prefix,
                fields="items(name,generation,contentType,size),nextPageToken",
                retry=None,
                timeout=REQUEST_TIMEOUT,
            )
            # Pages are fetched while iterating, so errors surface inside the try.
            return [
                ObjectRef(
                    bucket, blob.name, int(blob.generation) if blob.generation else None, blob.content_type, blob.size
                )
                for blob in blobs
            ]
        except Exception as exc:
            _raise_classified(exc, f"list gs://{bucket}/{prefix}")

    def delete(self, bucket: str, name: str, *, if_generation_match: int | None = None) -> None:
        """Delete the live object; an object that is already gone is fine.

        With `if_generation_match`, only if the live object is still that generation; otherwise
        `WriteConflictError`.
        """
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self.client.bucket(bucket).delete_blob(
                name, if_generation_match=if_generation_match, retry=None, timeout=REQUEST_TIMEOUT
            )
        except NotFound:
            return
        except PreconditionFailed as exc:
            raise WriteConflictError(
                f"delete gs://{bucket}/{name}: generation {if_generation_match} is no longer live"
            ) from exc
        except Exception as exc:
            _raise_classified(exc, f"delete gs://{bucket}/{name}")


def _check_served(what: str, requested: int | None, served: int | None) -> None:
    if requested is not None and served is not None and served != requested:
        raise ObjectGoneError(f"{what}: generation {requested} was replaced by {served}")
