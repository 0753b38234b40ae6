"""Stripped-down copies of the function for the throughput benchmark's floors (bench.py, section
"floors"). Not deployed anywhere, never imported by the function.

Each does part of what the real function does for an event, through the same clients the
function builds (`segmentation.function.build_pipeline`: google-cloud-storage, google-genai,
google-cloud-bigquery), under the same functions-framework, so that the throughput of each
shows what that part alone costs on this machine. FLOOR selects the part:

- ``wait``: answers after FLOOR_WAIT_S seconds and does nothing else: functions-framework, the
  HTTP hop and the benchmark's client.
- ``model``: reads the object and sends it to Gemini as it is (no decode), as the function does
  for a plain JPEG within MODEL_INPUT_MAX_SIDE.
- ``io``: ``model``, then what the function must write for the answer: one upload per object and
  one for the overview, then the object rows and the image row. The uploads are byte ranges of
  the photo sized like the real outputs (a crop ~ its box's share of the photo, the overview ~ the
  photo), not drawn, side by side on the function's upload threads (`Pipeline._uploads`); the
  rows are the function's own (`Pipeline._object_row` / `_image_row`).
  No completion marker, crop listing or generation check, no decode, no drawing.
"""

from __future__ import annotations

import io
import os
import threading
import time

import functions_framework
from cloudevents.http import CloudEvent

from segmentation.config import Config
from segmentation.events import object_ref_from_event
from segmentation.function import build_pipeline
from segmentation.images import ModelInput
from segmentation.pipeline import Pipeline
from segmentation.storage import GcsStorage

MODES = ("wait", "model", "io")
_lock = threading.Lock()
_pipeline: Pipeline | None = None


def _shared() -> Pipeline:
    global _pipeline
    with _lock:
        if _pipeline is None:
            _pipeline = build_pipeline(Config.from_env())
            assert isinstance(_pipeline.storage, GcsStorage)
            _pipeline.storage.client  # noqa: B018 - built on the first event, as the function's is
            # bench.warm_up knows a worker has handled an event by this C extension (which the
            # storage client loads on its first transfer); the "wait" floor makes none.
            import google_crc32c  # noqa: F401
        return _pipeline


@functions_framework.cloud_event
def floor(cloud_event: CloudEvent) -> None:
    mode = os.environ["FLOOR"]
    if mode not in MODES:
        raise ValueError(f"FLOOR must be one of {MODES}, not {mode!r}")
    pipeline = _shared()
    if mode == "wait":
        time.sleep(float(os.environ["FLOOR_WAIT_S"]))
        return
    from PIL import Image

    started = time.monotonic()
    deadline = started + pipeline.config.retry_deadline_s
    ref = object_ref_from_event(cloud_event.get_attributes(), cloud_event.get_data())
    data = pipeline.storage.read(ref, max_bytes=pipeline.config.max_image_bytes)
    with Image.open(io.BytesIO(data)) as header:  # the size only, no decode
        size = header.size
    result = pipeline.detector.detect(ModelInput(data, "image/jpeg", *size), size, deadline=deadline)
    if mode == "model":
        return

    def share(detection) -> int:
        box = detection.box
        return max(1, len(data) * (box.x_max - box.x_min) * (box.y_max - box.y_min) // (size[0] * size[1]))

    detections = result.detections
    outputs = [
        (f"processed/floor/{ref.name}-{index:04d}.jpg", data[: share(detection)])
        for index, detection in enumerate(detections, start=1)
    ]
    outputs.append((f"processed-overview/floor/{ref.name}.jpg", data))
    uris = list(
        pipeline._uploads.map(  # the function's own upload threads
            lambda output: pipeline.storage.write(
                ref.bucket,
                output[0],
                output[1],
                content_type="image/jpeg",
                metadata={"source-generation": str(ref.generation)},
                if_generation_match=0,
            ),
            outputs,
        )
    )
    *crop_uris, overview_uri = uris
    pipeline.sink.insert(
        "objects",
        [
            pipeline._object_row(ref, index, detection, crop_uri, overview_uri, result, size)
            for index, (detection, crop_uri) in enumerate(zip(detections, crop_uris, strict=True), start=1)
        ],
    )
    pipeline.sink.insert(
        "images",
        [
            pipeline._image_row(
                ref,
                status="ok",
                started=started,
                result=result,
                objects_found=len(detections),
                overview_uri=overview_uri,
                size=size,
            )
        ],
    )
