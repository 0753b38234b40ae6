"""Offline detectors per camera, each with that camera's photo of its empty scene if one exists.

A fixed camera's empty belt (or a carousel with its surroundings) is stored once as
`gs://BUCKET/{BACKGROUNDS_PREFIX}{camera}.jpg`, where camera is the first folder under the
source prefix (`raw/cam1/x.jpg` -> `cam1`). The offline detector and the empty-belt gate
compare against it; without one they model the belt from the image itself.

References are cached per (bucket, camera) for `ttl_s`, so a replaced reference is picked up
within minutes without a read per image.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from segmentation.config import Config
from segmentation.detections import ObjectRef
from segmentation.errors import PipelineError
from segmentation.images import load_image
from segmentation.logs import log_event
from segmentation.offline import OfflineDetector
from segmentation.storage import Storage

# Largest reference photo read (a camera frame; anything bigger is a mistake).
MAX_BACKGROUND_BYTES = 40 * 1024 * 1024


def camera_of(name: str, source_prefix: str) -> str | None:
    """The camera folder of an object under the source prefix, or None for a file at its top.

    >>> camera_of("raw/cam1/2026/x.jpg", "raw/"), camera_of("raw/x.jpg", "raw/")
    ('cam1', None)
    """
    relative = name[len(source_prefix) :] if name.startswith(source_prefix) else name
    head, slash, _ = relative.partition("/")
    return head if slash and head not in ("", ".", "..") else None


class OfflineDetectors:
    """Hands out the offline detector for an object's camera; safe to share between threads."""

    def __init__(
        self,
        storage: Storage,
        config: Config,
        *,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._storage = storage
        self._config = config
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], tuple[float, OfflineDetector]] = {}

    def for_object(self, ref: ObjectRef) -> OfflineDetector:
        """The detector for `ref`'s camera (with its empty-scene reference when the bucket has one)."""
        camera = camera_of(ref.name, self._config.source_prefix)
        key = (ref.bucket, camera)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached and now - cached[0] < self._ttl_s:
            return cached[1]
        detector = OfflineDetector(background=self._load_background(ref.bucket, camera))
        with self._lock:
            self._cache[key] = (now, detector)
        return detector

    def _load_background(self, bucket: str, camera: str | None):
        if camera is None:
            return None
        name = f"{self._config.backgrounds_prefix}{camera}.jpg"
        try:
            data = self._storage.read(ObjectRef(bucket, name), max_bytes=MAX_BACKGROUND_BYTES)
            return load_image(data, max_pixels=self._config.max_image_pixels).image
        except PipelineError as exc:
            # Optional input: a missing or unusable reference means "model the belt from the image".
            if exc.error_type != "object_gone":
                log_event(
                    "WARNING",
                    f"background reference unusable; ignoring it: {exc}",
                    bucket=bucket,
                    object=name,
                    error_type=exc.error_type,
                )
            return None
