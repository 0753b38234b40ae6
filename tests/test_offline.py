"""The offline detector on generated belt scenes with exact ground truth (tools/belt_scenes.py).

Metrics are measured on the HELD-OUT split (seeds and parameter ranges the detector was not
tuned on) and asserted against floors: the figures the current version reaches, with a margin
(on these 30 scenes it reaches AP50 0.943, AP 0.777, recall 0.959, colour 0.966).
The floors only go up (their history: docs/offline-tuning-history.md).
The issue's AP50 target (>= 0.85) is met on the eval's 60 and 150 held-out scenes; see the
README's figures.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from segmentation.colors import TERMS, basic_color_name, dominant_colors, linear_to_srgb8, srgb_to_linear
from segmentation.images import model_input
from segmentation.offline import OfflineDetector
from tools import eval_offline
from tools.belt_scenes import EXEMPLARS, KINDS, MIN_VISIBLE_AREA, make_scene, vibrate

HELDOUT = "heldout"


@pytest.fixture(scope="module")
def heldout_scenes():
    return [make_scene(HELDOUT, i) for i in range(30)]


@pytest.fixture(scope="module")
def heldout_scores(heldout_scenes):
    gt, results, per_image = eval_offline.evaluate_scenes(heldout_scenes)
    ap, ap50, _ap75, recall50 = eval_offline.coco_scores(gt, results)
    acc, n_color, _ = eval_offline.color_accuracy(gt, per_image)
    return {
        "ap": ap,
        "ap50": ap50,
        "recall50": recall50,
        "color": acc,
        "n_color": n_color,
        "items": len(gt["annotations"]),
    }


def test_heldout_mask_ap_floors(heldout_scores):
    assert heldout_scores["items"] > 60
    assert heldout_scores["ap50"] >= 0.93, heldout_scores
    assert heldout_scores["ap"] >= 0.74, heldout_scores
    assert heldout_scores["recall50"] >= 0.945, heldout_scores


def test_heldout_colour_accuracy(heldout_scores):
    assert heldout_scores["n_color"] >= 40
    assert heldout_scores["color"] >= 0.96, heldout_scores


@pytest.mark.parametrize("light", [0.6, 0.8, 1.0, 1.25])
@pytest.mark.parametrize("cast", [(1.0, 1.0, 1.0), (1.08, 1.0, 0.9), (0.92, 1.0, 1.1)])
def test_colour_names_under_light_and_cast(light, cast):
    """Every exemplar paint, lit brighter or darker and colour-cast, then white-balanced against
    a grey seen under the same light (what the detector does with the belt), keeps its name."""
    grey = srgb_to_linear(np.array([[90, 90, 90]], np.uint8))[0] * light * np.array(cast, np.float32)
    wrong = []
    for name, paints in EXEMPLARS.items():
        for paint in paints:
            lit = srgb_to_linear(np.array([paint], np.uint8))[0] * light * np.array(cast, np.float32)
            balanced = lit * (grey.mean() / grey)
            got = basic_color_name(linear_to_srgb8(balanced))
            if got != name:
                wrong.append((name, paint, got))
    # the two lightest whites turn grey at 0.6x exposure: allowed, nothing else
    assert all(n == "white" and light <= 0.6 for n, _, _ in wrong), wrong


@pytest.mark.parametrize(
    "rgb, name",
    [
        ((220, 20, 60), "red"),
        ((255, 140, 0), "orange"),
        ((255, 215, 0), "yellow"),
        ((34, 139, 34), "green"),
        ((65, 105, 225), "blue"),
        ((0, 0, 128), "blue"),
        ((75, 0, 130), "purple"),
        ((255, 105, 180), "pink"),
        ((139, 69, 19), "brown"),
        ((112, 128, 144), "gray"),
        ((15, 15, 15), "black"),
        ((250, 250, 250), "white"),
    ],
)
def test_css_colours_independent_of_the_generator(rgb, name):
    assert basic_color_name(rgb) == name
    assert name in TERMS


def test_dominant_colours_ignore_a_minority():
    pixels = np.array([[30, 70, 160]] * 70 + [[240, 240, 240]] * 20 + [[20, 20, 20]] * 10, np.uint8)
    assert dominant_colors(pixels)[0] == ("blue", 0.7)


def _vibrated(image, seed: int):
    return vibrate(image, np.random.default_rng(seed), max_shift=2.0, exposure=0.1)


def test_gate_never_skips_frames_with_items():
    """Against the camera's empty reference, with the belt run on since and the camera shaken
    (+-2 px, +-10 % exposure): no frame holding an item is called empty."""
    frames = [
        make_scene(
            HELDOUT,
            i,
            kind="belt",
            count=1,
            item_kinds=("pouch",),
            item_colors=("black",),
            salt="small-dark",
            reference=True,
            belt_moved=True,
        )
        for i in range(8)
    ]
    frames += [
        s for s in (make_scene(HELDOUT, i, salt="gate", reference=True, belt_moved=True) for i in range(12)) if s.items
    ]
    skipped = [
        (s.index, [(it.kind, it.color) for it in s.items])
        for s in frames
        if OfflineDetector(background=s.background).belt_is_empty(_vibrated(s.image, s.index))
    ]
    assert skipped == []


@pytest.mark.parametrize("kind", KINDS)
def test_gate_sees_a_single_item_of_any_kind(kind):
    """A frame holding one item of any kind, in the colours hardest to tell from a belt, is never
    called empty (the belt run on since the reference, the camera shaken)."""
    for index, colour in enumerate(("black", "gray", "white")):
        scene = make_scene(
            HELDOUT,
            index,
            kind="belt",
            count=1,
            item_kinds=(kind,),
            item_colors=(colour,),
            salt="agree",
            reference=True,
            belt_moved=True,
        )
        assert not OfflineDetector(background=scene.background).belt_is_empty(_vibrated(scene.image, index)), (
            kind,
            colour,
        )


def test_without_a_reference_the_gate_never_calls_a_frame_empty():
    scene = make_scene(HELDOUT, 0, kind="belt", count=0, salt="empty")
    assert OfflineDetector().gate is None
    assert OfflineDetector().belt_is_empty(scene.image) is False


@pytest.mark.parametrize("kind", ["belt", "carousel"])
def test_gate_skips_most_empty_frames_of_a_shaken_camera_and_a_running_belt(kind):
    scenes = [
        make_scene(HELDOUT, i, kind=kind, count=0, salt="empty", reference=True, belt_moved=True) for i in range(8)
    ]
    skipped = sum(
        OfflineDetector(background=s.background).belt_is_empty(_vibrated(s.image, i)) for i, s in enumerate(scenes)
    )
    assert skipped >= 0.5 * len(scenes)


def test_gate_registers_camera_vibration_and_never_skips_for_a_moved_camera():
    from segmentation.offline.gate import EmptySceneGate

    scene = make_scene(HELDOUT, 2, kind="belt", count=0, salt="empty", reference=True)
    gate = EmptySceneGate(scene.background)
    frame = np.asarray(scene.image, np.float32)
    h, w = frame.shape[:2]
    import cv2

    def shifted(dx: float, dy: float):
        moved = cv2.warpAffine(frame, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REFLECT)
        return Image.fromarray(moved.clip(0, 255).astype(np.uint8))

    shaken = gate.check(shifted(4.0, -3.0))
    assert shaken.empty and shaken.camera_shift == pytest.approx((4.0, -3.0), abs=1.5)
    moved = gate.check(shifted(0.08 * w, 0))  # beyond MAX_CAMERA_SHIFT: a new reference is needed
    assert not moved.empty


def test_background_reference_on_a_carousel_scene():
    scene = next(
        s for s in (make_scene(HELDOUT, i, kind="carousel", salt="carousel") for i in range(10)) if len(s.items) >= 2
    )
    assert scene.background is not None
    detections = OfflineDetector(background=scene.background).detect_image(scene.image)
    found = 0
    for item in scene.items:
        best = 0.0
        for det in detections:
            full = np.zeros(item.mask.shape, bool)
            b = det.box
            full[b.y_min : b.y_max, b.x_min : b.x_max] = np.asarray(det.mask) > 127
            best = max(best, (full & item.mask).sum() / (full | item.mask).sum())
        found += best >= 0.5
    assert found >= len(scene.items) - 1
    # and the empty reference itself holds nothing
    assert OfflineDetector(background=scene.background).belt_is_empty(scene.background)


def test_detect_maps_model_input_back_to_the_original_size():
    scene = make_scene(HELDOUT, 3, kind="belt", count=3, size=(1920, 1080), salt="sizes")
    prepared = model_input(scene.image, max_side=1024)
    assert (prepared.width, prepared.height) == (1024, 576)
    result = OfflineDetector().detect(prepared, scene.image.size, deadline=time.monotonic() + 30)
    assert result.detector == "offline" and result.model == "offline-belt-v1"
    assert result.usage.total_tokens == 0 and result.latency_ms > 0
    assert result.detections
    import io

    decoded = Image.open(io.BytesIO(prepared.data)).convert("RGB")
    small = OfflineDetector().detect_image(decoded)  # same analysis, in model-input pixels
    assert len(small) == len(result.detections)
    scale = 1920 / 1024
    for det in result.detections:
        b = det.box
        assert 0 <= b.x_min < b.x_max <= 1920 and 0 <= b.y_min < b.y_max <= 1080
        assert det.mask is not None and det.mask.mode == "L" and det.mask.size == (b.width, b.height)
        assert det.label == "item" and det.color in TERMS
        assert "% of the belt" in det.general_description
        assert 0 < (det.score or 0) <= 1
        # the same item in model-input pixels, scaled: the same box within a pixel or two
        assert min(abs(b.x_min - d.box.x_min * scale) + abs(b.y_max - d.box.y_max * scale) for d in small) <= 4


def test_plain_empty_image_and_tiny_image():
    detector = OfflineDetector()
    assert detector.detect_image(Image.new("RGB", (640, 360), (50, 50, 52))) == []
    plain = Image.new("RGB", (640, 360), (50, 50, 52))
    assert OfflineDetector(background=plain).belt_is_empty(plain)
    assert detector.detect_image(Image.new("RGB", (8, 6), (50, 50, 52))) == []


@pytest.mark.parametrize("size", [(1, 20_000), (20_000, 1), (3, 9_000)])
def test_extreme_strips_are_analysed_without_error(size):
    """Halving a 1-pixel side must not reach 0 pixels (OpenCV refuses a 0-sized resize)."""
    strip = Image.new("RGB", size, (50, 50, 52))
    detector = OfflineDetector()
    assert OfflineDetector(background=strip).belt_is_empty(strip)
    assert detector.detect_image(strip) == []


def test_generator_is_deterministic_and_splits_differ():
    a, b = make_scene("tuning", 5), make_scene("tuning", 5)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(make_scene(HELDOUT, 5).image)[:10, :10], np.asarray(a.image)[:10, :10])


def test_generator_items_are_visible_and_one_instance_each(heldout_scenes):
    """Every ground-truth item shows at least MIN_VISIBLE_AREA of the image (realism floor)."""
    for scene in heldout_scenes[:12]:
        width, height = scene.image.size
        for item in scene.items:
            assert item.mask.sum() >= MIN_VISIBLE_AREA * width * height, (scene.index, item.kind)
