"""The offline detector as a package: public names, one frozen parameters object read by every stage."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest

from segmentation.offline import (
    DEFAULT,
    LABEL,
    MODEL,
    OfflineDetector,
    OfflineParams,
    SceneCheck,
    scene_refusal,
)
from segmentation.offline.gate import EmptySceneGate
from tools.belt_scenes import make_scene

PACKAGE = Path(__file__).resolve().parents[1] / "segmentation" / "offline"


def test_the_gate_moved_into_the_package():
    assert MODEL == "offline-belt-v1" and LABEL == "item"
    assert importlib.import_module("segmentation.offline.gate").MODEL == "empty-scene-gate-v2"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("segmentation.gate")


def test_params_are_frozen_and_each_field_says_what_it_is():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.work_side = 512  # type: ignore[misc]
    source = (PACKAGE / "params.py").read_text().splitlines()
    for field in dataclasses.fields(OfflineParams):
        line = next(text for text in source if text.strip().startswith(f"{field.name}:"))
        assert "  # " in line, f"{field.name} has no one-line comment"


def test_no_tuning_constant_outside_params():
    # Module-level numbers (or tuples of numbers) outside params.py would be tunables that
    # OfflineParams does not hold.
    def numeric(node):
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        return isinstance(node, ast.Tuple) and all(numeric(e) for e in node.elts)

    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "params.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                assert not numeric(node.value), f"{path.name}:{node.lineno} holds a constant"


def test_module_docstrings_are_short():
    for path in sorted(PACKAGE.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert 0 < len(doc.splitlines()) <= 10, path.name


def test_scene_refusal_reads_the_params_it_is_given():
    check = SceneCheck(misfit=0.05, unsure=3, reference=False)
    assert scene_refusal(check) is None
    assert "clutter" in scene_refusal(check, params=dataclasses.replace(DEFAULT, scene_max_unsure=2))
    assert "no belt model" in scene_refusal(check, params=dataclasses.replace(DEFAULT, scene_misfit_max=0.04))


@pytest.fixture(scope="module")
def scene():
    return next(s for s in (make_scene("heldout", i, kind="belt") for i in range(20)) if len(s.items) >= 3)


def _mask_pixels(detections) -> int:
    return sum(int(np.count_nonzero(np.asarray(d.mask) > 127)) for d in detections)


def test_detector_stages_follow_the_params(scene):
    default = OfflineDetector().detect_image(scene.image)
    assert default
    # the mask stage: a higher cut level sheds more of each item's soft edge
    tight = OfflineDetector(params=dataclasses.replace(DEFAULT, mask_level=0.95)).detect_image(scene.image)
    assert _mask_pixels(tight) < _mask_pixels(default)
    # the analysis: nothing is as large as a third of the image
    assert OfflineDetector(params=dataclasses.replace(DEFAULT, min_area=0.33)).detect_image(scene.image) == []
    # an explicit argument still overrides its field
    assert OfflineDetector(min_area=0.33).min_area == 0.33
    assert OfflineDetector().work_side == DEFAULT.work_side == 448


def test_gate_follows_the_params():
    frame = next(s for s in (make_scene("heldout", i, salt="gate-items", reference=True) for i in range(20)) if s.items)
    assert not EmptySceneGate(frame.background).is_empty(frame.image)
    # a blob must cover the whole frame to count: every frame is then empty
    lenient = dataclasses.replace(DEFAULT, gate_min_blob=1.0)
    assert EmptySceneGate(frame.background, params=lenient).is_empty(frame.image)
    assert OfflineDetector(background=frame.background, params=lenient).belt_is_empty(frame.image)
