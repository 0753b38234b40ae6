"""The scene check: whether a frame is a belt scene the detector can analyse (`scene_refusal`).

It refuses when the belt model (or the empty-scene reference) fits no quarter of the image, or when
too many candidate regions are left below 0.5 confidence (clutter).
"""

from __future__ import annotations

from dataclasses import dataclass

from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams


@dataclass(frozen=True)
class SceneCheck:
    """What the scene check measured on one frame (see `scene_refusal`)."""

    misfit: float  # the best-fitting quarter of the image is at most this far from the belt model (log units)
    unsure: int  # candidate regions below 0.5 confidence
    reference: bool  # judged against an empty-scene reference (the difference image)


def _quarter_misfit(m, cd) -> float:
    """The 25th percentile of |log-brightness ratio| + chroma difference against the model, on
    every 4th pixel: how far the best-fitting quarter of the image is from the belt model."""
    import numpy as np

    values = (np.abs(m[::4, ::4]) + cd[::4, ::4]).ravel()
    if values.size == 0:
        return 0.0
    k = values.size // 4
    return float(np.partition(values, k)[k])


def scene_refusal(check: SceneCheck, *, params: OfflineParams = P) -> str | None:
    """Why the frame is not a belt scene the offline detector can analyse, or None when it is.
    A pure function of the analysis' own measures (`SceneCheck`), so the check costs nothing more."""
    limit = params.scene_misfit_max
    if check.misfit > limit:
        if check.reference:
            return (
                f"three quarters of it differ from the camera's empty-scene reference by more than "
                f"{check.misfit:.2f} (log brightness + chroma; the same scene: at most {limit}), so it shows "
                "another scene or the camera moved"
            )
        return (
            f"no belt model fits it: three quarters of it differ from the best one by more than "
            f"{check.misfit:.2f} (log brightness + chroma; a belt scene: at most {limit})"
        )
    if check.unsure > params.scene_max_unsure:
        return (
            f"too much clutter: {check.unsure} candidate regions below 0.5 confidence (a belt scene: at "
            f"most {params.scene_max_unsure})"
        )
    return None
