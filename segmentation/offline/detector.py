"""`OfflineDetector`: the detector interface (`detect`, `detect_image`, `detect_scored`) and the
camera's empty-belt gate over the analysis.
"""

from __future__ import annotations

import functools
import io
import time
from typing import Any

from PIL import Image

from segmentation.detections import Detection, DetectionResult, Usage
from segmentation.errors import UnsupportedSceneError
from segmentation.images import ModelInput, to_rgb
from segmentation.offline.analysis import _analyze
from segmentation.offline.arrays import _draft_size, _reference_like, _work_array
from segmentation.offline.instances import _Analysis, _to_detection
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams
from segmentation.offline.scene import scene_refusal

MODEL = "offline-belt-v1"


class OfflineDetector:
    """Finds items on a belt photo; see docs/offline-detector-method.md.

    `background` is an optional photo of the empty scene from the same camera; `params` holds every
    tunable (`work_side`, `min_area` and `max_items`, when given, override its fields).
    """

    name = "offline"
    model = MODEL

    def __init__(
        self,
        *,
        background: Image.Image | None = None,
        work_side: int | None = None,
        min_area: float | None = None,
        max_items: int | None = None,
        params: OfflineParams = P,
    ):
        self.background = to_rgb(background) if background is not None else None
        self.params = params
        self.work_side = params.work_side if work_side is None else work_side
        self.min_area = params.min_area if min_area is None else min_area
        self.max_items = params.max_items if max_items is None else max_items
        self._background_cache: dict[tuple[int, int], Any] = {}

    # --- public API ------------------------------------------------------------------------

    def detect(self, model_input: ModelInput, image_size: tuple[int, int], *, deadline: float) -> DetectionResult:
        """Detections for the model input (decoded here), in pixels of the original `image_size`.
        Raises `UnsupportedSceneError` for a frame that is not a belt scene it can analyse
        (`scene_refusal`), rather than returning guesses."""
        started = time.perf_counter()
        decoded = Image.open(io.BytesIO(model_input.data))
        decoded.draft("RGB", _draft_size(decoded.size, self.work_side))  # JPEG: decode at reduced size
        image = to_rgb(decoded.convert("RGB") if decoded.mode != "RGB" else decoded)
        analysis = self._analyze(image)
        why = scene_refusal(analysis.scene, params=self.params)
        if why:
            hint = (
                "is the camera's empty-scene reference still its view?"
                if analysis.scene.reference
                else "an empty-scene photo from the same camera at BACKGROUNDS_PREFIX<camera>.jpg "
                "(default backgrounds/) helps"
            )
            raise UnsupportedSceneError(
                f"the offline detector cannot analyse this image: {why}. It is made for plain conveyor belts "
                f"and baggage carousels seen by a fixed camera; {hint}"
            )
        detections = [d for d, _ in self._detections(analysis, image_size)]
        return DetectionResult(
            detections=detections,
            detector=self.name,
            model=self.model,
            usage=Usage(),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def close(self) -> None:
        """Nothing to release (the `Detector` protocol's close)."""

    def detect_image(self, image: Image.Image) -> list[Detection]:
        """Detections for a PIL image, in its own pixel coordinates, most confident first."""
        return [d for d, _ in self._detect(to_rgb(image), image.size)]

    def detect_scored(self, image: Image.Image) -> list[tuple[Detection, float]]:
        """`detect_image` with each detection's confidence (0-1), for evaluation. Neither refuses
        a scene (only `detect` does), so the evaluation scores every frame."""
        return self._detect(to_rgb(image), image.size)

    @functools.cached_property
    def gate(self):
        """The empty-belt gate against this camera's reference (`segmentation.offline.gate`), or None
        without a reference: then nothing is ever called empty."""
        from segmentation.offline.gate import EmptySceneGate

        return EmptySceneGate(self.background, params=self.params) if self.background is not None else None

    def belt_is_empty(self, image: Image.Image) -> bool:
        """The gate's answer for `image`; always False without a reference."""
        return self.gate is not None and self.gate.is_empty(image)

    # --- pipeline --------------------------------------------------------------------------

    def _detect(self, image: Image.Image, out_size: tuple[int, int]) -> list[tuple[Detection, float]]:
        return self._detections(self._analyze(image), out_size)

    def _detections(self, analysis: _Analysis, out_size: tuple[int, int]) -> list[tuple[Detection, float]]:
        height, width = analysis.shape
        sx, sy = out_size[0] / width, out_size[1] / height
        results = []
        for inst in analysis.instances[: self.max_items]:
            detection = _to_detection(inst, sx, sy, out_size, params=self.params)
            if detection is not None:
                results.append((detection, inst.score))
        return results

    def _analyze(self, image: Image.Image) -> _Analysis:
        work = _work_array(image, self.work_side)
        return _analyze(work, self._reference(work), min_area=self.min_area, params=self.params)

    def _reference(self, work):
        """The background reference at the size of `work`, resampled like the image (cached per
        size), or None."""
        if self.background is None:
            return None
        key = (work.shape[1], work.shape[0])
        ref = self._background_cache.get(key)
        if ref is None:
            ref = self._background_cache[key] = _reference_like(self.background, work.shape[:2], max(key))
        return ref
