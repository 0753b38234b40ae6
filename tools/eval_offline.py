"""Score the offline detector on generated belt scenes with exact ground truth.

    .venv/bin/python -m tools.eval_offline [--split heldout] [--n 60] [--empty 40] [--small-dark 30]
    .venv/bin/python -m tools.eval_offline --scenes [--n 60] [--realdata ../realdata]

- mask AP (IoU 0.50:0.95) and AP50, class-agnostic, by pycocotools' COCOeval on the scenes'
  COCO ground truth (visible masks), scores = the detector's confidence;
- colour accuracy: share of ground-truth items matched by a detection (IoU >= 0.5, one-to-one,
  most confident first) whose colour term equals the item's base paint colour;
- the empty-belt gate: false skips (non-empty frames called empty: the n scenes that hold items,
  plus `--small-dark` frames holding one small black pouch) and the skip rate on `--empty`
  empty frames;
- speed at 1280x720 on one core (OpenCV and BLAS limited to one thread; generation and JPEG
  decoding not timed), on the split's first 20 scenes: images per second of `detect_image`, the
  median of 5 passes (a pass slowed by another process does not move it), and the median time
  of one `belt_is_empty` call.

Fixed-camera "carousel" scenes are run with their empty reference image (background path).
The figures above score every frame, refused or not (`detect_scored` never refuses).

`--scenes` prints instead how often the scene check (`segmentation.offline.scene_refusal`, what
`OfflineDetector.detect` refuses as `unsupported_scene`) refuses: held-out synthetic scenes by kind
(none should be refused), the 17 COCO photos with luggage in the halves the check was tuned on
(even positions in id order) and held out (odd positions), and, with `--realdata DIR`, the real
belt photos listed in DIR/index.tsv by source, with the first empty frame of a camera sequence as
the reference when the sequence has one.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from segmentation.offline import OfflineDetector  # noqa: E402
from tools.belt_scenes import Scene, make_scene, to_coco  # noqa: E402


@dataclass
class Report:
    split: str
    images: int
    items: int
    ap: float
    ap50: float
    ap75: float
    recall50: float
    color_acc: float
    color_n: int
    false_skips: int
    nonempty_frames: int
    skip_rate: float
    empty_frames: int
    fps: float
    gate_ms: float
    confusions: dict

    def table(self) -> str:
        rows = [
            ("split", self.split),
            ("images / items", f"{self.images} / {self.items}"),
            ("mask AP (0.50:0.95)", f"{self.ap:.3f}"),
            ("mask AP50", f"{self.ap50:.3f}"),
            ("mask AP75", f"{self.ap75:.3f}"),
            ("recall at IoU 0.5", f"{self.recall50:.3f}"),
            ("colour accuracy (matched)", f"{self.color_acc:.3f} of {self.color_n}"),
            ("gate false skips", f"{self.false_skips} of {self.nonempty_frames} non-empty frames"),
            ("gate skip rate (empty)", f"{self.skip_rate:.3f} of {self.empty_frames} empty frames"),
        ]
        if self.fps:  # 0.0 means --no-timing: say nothing rather than print a fake zero
            rows += [
                ("images/s at 1280x720, 1 core", f"{self.fps:.1f}"),
                ("gate ms per frame (1280x720, 1 core)", f"{self.gate_ms:.1f}"),
            ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _detector_for(scene: Scene) -> OfflineDetector:
    return OfflineDetector(background=scene.background)


def _full_mask(det, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    out = np.zeros((h, w), np.uint8)
    b = det.box
    m = np.asarray(det.mask) > 127
    out[b.y_min : b.y_max, b.x_min : b.x_max] = m
    return out


def evaluate_scenes(scenes: list[Scene]) -> tuple[dict, list[dict], list[list]]:
    """COCO ground truth, COCO results, and per image the detections (for colour matching)."""
    from pycocotools import mask as mask_utils

    gt = to_coco(scenes)
    results, per_image = [], []
    for image_id, scene in enumerate(scenes, start=1):
        scored = _detector_for(scene).detect_scored(scene.image)
        dets = []
        for det, score in scored:
            full = _full_mask(det, scene.image.size)
            rle = mask_utils.encode(np.asfortranarray(full))
            dets.append((det, score, rle))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "score": float(score),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                }
            )
        per_image.append(dets)
    return gt, results, per_image


def coco_scores(gt: dict, results: list[dict]) -> tuple[float, float, float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not results:
            return 0.0, 0.0, 0.0, 0.0
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.useCats = 0
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # recall at IoU 0.5, all areas, maxDets 100
    recall = ev.eval["recall"][0, :, 0, -1]
    recall50 = float(recall[recall > -1].mean()) if (recall > -1).any() else 0.0
    return float(ev.stats[0]), float(ev.stats[1]), float(ev.stats[2]), recall50


def color_accuracy(gt: dict, per_image: list[list]) -> tuple[float, int, dict]:
    from pycocotools import mask as mask_utils

    by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    correct = total = 0
    confusions: dict[tuple[str, str], int] = {}
    for image_id, dets in enumerate(per_image, start=1):
        anns = by_image.get(image_id, [])
        if not anns or not dets:
            continue
        gts = [dict(a["segmentation"], counts=a["segmentation"]["counts"].encode()) for a in anns]
        dts = [d[2] for d in dets]
        ious = mask_utils.iou(dts, gts, [0] * len(gts))
        taken = set()
        for di in np.argsort([-d[1] for d in dets]):
            best, best_iou = None, 0.5
            for gi in range(len(anns)):
                if gi not in taken and ious[di, gi] >= best_iou:
                    best, best_iou = gi, ious[di, gi]
            if best is None:
                continue
            taken.add(best)
            total += 1
            want, got = anns[best]["color"], dets[di][0].color
            correct += want == got
            if want != got:
                confusions[(want, got)] = confusions.get((want, got), 0) + 1
    return (correct / total if total else 0.0), total, confusions


def gate_figures(split: str, nonempty: list[Scene], n_empty: int, n_small_dark: int) -> tuple[int, int, float, int]:
    """The gate against each scene's empty reference (the camera still; tools.eval_gate shakes it)."""
    false_skips = 0
    frames = [make_scene(split, s.index, reference=True) for s in nonempty]
    frames += [
        make_scene(
            split,
            i,
            kind="belt",
            count=1,
            item_kinds=("pouch",),
            item_colors=("black",),
            salt="small-dark",
            reference=True,
        )
        for i in range(n_small_dark)
    ]
    for scene in frames:
        if OfflineDetector(background=scene.background).belt_is_empty(scene.image):
            false_skips += 1
    skipped = 0
    empties = [make_scene(split, i, count=0, salt="empty", reference=True) for i in range(n_empty)]
    for scene in empties:
        skipped += OfflineDetector(background=scene.background).belt_is_empty(scene.image)
    return false_skips, len(frames), (skipped / len(empties) if empties else 0.0), len(empties)


def speed(scenes: list[Scene], passes: int = 5) -> tuple[float, float]:
    """Images per second of `detect_image` (median over passes) and median ms of `belt_is_empty`."""
    import cv2

    cv2.setNumThreads(1)
    images = [s.image if s.image.size == (1280, 720) else s.image.resize((1280, 720)) for s in scenes[:20]]
    detector = OfflineDetector(background=images[0])
    detector.detect_image(images[0])  # warm up (imports, LUTs)
    rates, gate_times = [], []
    for _ in range(passes):
        start = time.perf_counter()
        for image in images:
            detector.detect_image(image)
        rates.append(len(images) / (time.perf_counter() - start))
        for image in images:
            start = time.perf_counter()
            detector.belt_is_empty(image)
            gate_times.append(time.perf_counter() - start)
    return float(np.median(rates)), float(np.median(gate_times)) * 1000


def run(
    split: str, n: int, *, start: int = 0, n_empty: int = 40, n_small_dark: int = 30, timing: bool = True
) -> Report:
    import cv2

    cv2.setNumThreads(1)
    scenes = [make_scene(split, i) for i in range(start, start + n)]
    gt, results, per_image = evaluate_scenes(scenes)
    ap, ap50, ap75, recall50 = coco_scores(gt, results)
    acc, n_color, confusions = color_accuracy(gt, per_image)
    nonempty = [s for s in scenes if s.items]
    false_skips, n_nonempty, skip_rate, n_empties = gate_figures(split, nonempty, n_empty, n_small_dark)
    fps, gate_ms = speed(scenes) if timing else (0.0, 0.0)
    return Report(
        split,
        len(scenes),
        len(gt["annotations"]),
        ap,
        ap50,
        ap75,
        recall50,
        acc,
        n_color,
        false_skips,
        n_nonempty,
        skip_rate,
        n_empties,
        fps,
        gate_ms,
        confusions,
    )


COCO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "coco_luggage"


def coco_halves(coco_dir: Path = COCO_DIR) -> tuple[list[Path], list[Path]]:
    """The COCO photos in id order, split by position: (tuning half, held-out half)."""
    photos = sorted((coco_dir / "images").glob("*.jpg"), key=lambda path: int(path.stem))
    if not photos:
        raise FileNotFoundError(f"no COCO photos under {coco_dir / 'images'} (the shared fixtures)")
    return photos[0::2], photos[1::2]


def refused(detector: OfflineDetector, image) -> bool:
    """Whether `detect` refuses `image` (a PIL image or a file), given as the function gives it:
    decoded by `load_image`, then the model input at the default MODEL_INPUT_MAX_SIDE."""
    from segmentation.config import Config
    from segmentation.errors import UnsupportedSceneError
    from segmentation.images import load_image, model_input

    config = Config.from_env({})
    jpeg = None
    if not hasattr(image, "size"):
        data = Path(image).read_bytes()
        loaded = load_image(data, max_pixels=config.max_image_pixels)
        image, jpeg = loaded.image, data if loaded.plain_jpeg else None
    prepared = model_input(image, max_side=config.model_input_max_side, jpeg=jpeg)
    try:
        detector.detect(prepared, image.size, deadline=time.monotonic() + 600)
    except UnsupportedSceneError:
        return True
    return False


def _row(name: str, flags: list[bool]) -> tuple[str, str]:
    share = sum(flags) / len(flags) if flags else 0.0
    return name, f"{sum(flags)} of {len(flags)} ({share:.0%})"


def scene_rows(n: int, realdata: Path | None = None) -> list[tuple[str, str]]:
    """Refusals of the scene check, one (what, refused) row per group."""
    import cv2

    cv2.setNumThreads(1)
    split = "heldout"
    rows = []
    drawn = [make_scene(split, i) for i in range(n)]
    for kind in ("belt", "carousel"):
        scenes = [s for s in drawn if s.kind == kind and s.items]
        rows.append(
            _row(
                f"held-out {kind} scenes (random draw{', with reference' if kind == 'carousel' else ''})",
                [refused(_detector_for(s), s.image) for s in scenes],
            )
        )
    groups = (
        ("held-out crowded belts (8 items)", dict(kind="belt", count=8, salt="crowded")),
        ("held-out empty belts", dict(kind="belt", count=0, salt="empty")),
        ("held-out carousels with reference", dict(kind="carousel", salt="carousel")),
        ("held-out crowded carousels (8 items), reference", dict(kind="carousel", count=8, salt="crowded")),
        ("held-out empty carousels with reference", dict(kind="carousel", count=0, salt="empty")),
    )
    for name, overrides in groups:
        scenes = [make_scene(split, i, **overrides) for i in range(max(10, n // 3))]
        rows.append(_row(name, [refused(_detector_for(s), s.image) for s in scenes]))
    carousels = [make_scene(split, i, kind="carousel", salt="carousel") for i in range(max(10, n // 3))]
    rows.append(
        _row("(held-out carousels WITHOUT reference)", [refused(OfflineDetector(), s.image) for s in carousels])
    )
    rows.append(
        _row(
            "(held-out carousels, another scene's reference)",
            [
                refused(OfflineDetector(background=carousels[(i + 1) % len(carousels)].background), s.image)
                for i, s in enumerate(carousels)
            ],
        )
    )
    tuning, heldout = coco_halves()
    rows.append(_row("COCO photos, tuning half", [refused(OfflineDetector(), p) for p in tuning]))
    rows.append(_row("COCO photos, held-out half", [refused(OfflineDetector(), p) for p in heldout]))
    if realdata is not None:
        rows += realdata_rows(realdata)
    return rows


def realdata_rows(root: Path) -> list[tuple[str, str]]:
    """Refusals on the real photos of root/index.tsv (columns relative_path, source, licence,
    committable, kind, camera_sequence_id, ...), by source folder; sequences with an empty frame
    are run again with their first empty frame as the reference (that frame left out)."""
    import csv

    with open(root / "index.tsv", newline="") as handle:
        entries = list(csv.DictReader(handle, delimiter="\t"))
    by_folder: dict[str, list[dict]] = {}
    for entry in entries:
        by_folder.setdefault(entry["relative_path"].split("/", 1)[0], []).append(entry)
    rows = []
    for folder, items in sorted(by_folder.items()):
        rows.append(
            _row(
                f"real: {folder}, no reference", [refused(OfflineDetector(), root / e["relative_path"]) for e in items]
            )
        )
        references: dict[str, Any] = {}
        for entry in items:
            if entry["kind"] == "empty":
                references.setdefault(entry["camera_sequence_id"], entry["relative_path"])
        with_reference = [e for e in items if references.get(e["camera_sequence_id"]) not in (None, e["relative_path"])]
        if with_reference:
            from PIL import Image

            detectors = {}
            for seq, path in references.items():
                with Image.open(root / path) as reference:
                    detectors[seq] = OfflineDetector(background=reference.convert("RGB"))
            for kind in ("bags", "empty"):
                flags = [
                    refused(detectors[e["camera_sequence_id"]], root / e["relative_path"])
                    for e in with_reference
                    if e["kind"] == kind
                ]
                if flags:
                    rows.append(_row(f"real: {folder}, {kind} frames, first empty frame as reference", flags))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="heldout", choices=("tuning", "heldout"))
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--empty", type=int, default=40, help="extra empty frames for the gate")
    parser.add_argument("--small-dark", type=int, default=30, help="extra frames with one small black pouch")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--scenes", action="store_true", help="print the scene check's refusals instead")
    parser.add_argument("--realdata", type=Path, help="with --scenes: a folder of real photos with an index.tsv")
    args = parser.parse_args(argv)
    if args.scenes:
        rows = [("scene check refusals (unsupported_scene)", "refused"), *scene_rows(args.n, args.realdata)]
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
        return
    report = run(
        args.split,
        args.n,
        start=args.start,
        n_empty=args.empty,
        n_small_dark=args.small_dark,
        timing=not args.no_timing,
    )
    print(report.table())
    if report.confusions:
        worst = sorted(report.confusions.items(), key=lambda kv: -kv[1])[:8]
        print("colour confusions (truth -> said):", ", ".join(f"{a}->{b} x{c}" for (a, b), c in worst))


if __name__ == "__main__":
    main()
