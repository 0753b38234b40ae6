"""A weight-free detector for items on a conveyor belt (NumPy + OpenCV, no model, no network).

Class-agnostic: every detection is labelled "item" and described by measured facts (colour, size,
elongation). One module per stage: belt model (`belt`), evidence maps (`evidence`), splitting
touching items (`splitting`), joining pieces into items (`joining`), colour (`colour`), the scene
check (`scene`), confidence and masks (`instances`), the whole analysis (`analysis`), the detector
class (`detector`) and the empty-belt gate (`gate`); every tunable is in `params.OfflineParams`.
How it works: docs/offline-detector-method.md. NumPy and OpenCV are imported on first use.
"""

from segmentation.offline.detector import MODEL, OfflineDetector
from segmentation.offline.instances import LABEL
from segmentation.offline.params import DEFAULT, OfflineParams
from segmentation.offline.scene import SceneCheck, scene_refusal

__all__ = ["DEFAULT", "LABEL", "MODEL", "OfflineDetector", "OfflineParams", "SceneCheck", "scene_refusal"]
