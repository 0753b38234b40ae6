"""Figures of the empty-belt gate (`segmentation.offline.gate`) on synthetic and real frames (development only).

    .venv/bin/python -m tools.eval_gate [--realdata DIR] [--n 16]

Prints one table. Rows:
- synthetic held-out scenes (tools.belt_scenes) with their empty-scene reference, the belt still
  or run on since the reference; empty frames as taken and "vibrated" (+-0.5 / +-2 px camera shift,
  +-10 % exposure, JPEG again): the share skipped; frames with items (the random draw and single
  small black items), vibrated: false skips.
- the 17 real COCO luggage photos (../shared/fixtures/coco_luggage): the reference is the photo with
  its luggage painted out (cv2.inpaint over the ground-truth masks); the photo itself, as taken and
  vibrated, must never be skipped; the painted-out photo vibrated is an empty frame of a real
  scene (the share skipped).
- with --realdata: real belt sequences listed in DIR/index.tsv (source, licence, kind, camera
  sequence): per fixed camera, the first empty frame is the reference; the other empty frames
  (as taken and vibrated): skipped share; every frame with items: false skips. Cameras without an
  empty frame are left out (a reference must show the empty scene).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segmentation.offline.gate import EmptySceneGate  # noqa: E402
from tools.belt_scenes import Scene, make_scene, vibrate  # noqa: E402

COCO = ROOT.parent / "shared" / "fixtures" / "coco_luggage"


def _reference(scene: Scene) -> Image.Image:
    """A fixed-camera scene's empty reference (every scene the gate rows draw has one)."""
    assert scene.background is not None
    return scene.background


def luggage_painted_out(photo: Image.Image, masks: list[np.ndarray]) -> Image.Image:
    """The photo with the given object masks painted out (their surroundings flowed in)."""
    hole: np.ndarray = np.zeros((photo.height, photo.width), np.uint8)
    for mask in masks:
        hole |= mask.astype(np.uint8)
    hole = cv2.dilate(hole, np.ones((9, 9), np.uint8))
    filled = cv2.inpaint(np.asarray(photo.convert("RGB")), hole, 7, cv2.INPAINT_TELEA)
    return Image.fromarray(filled)


def coco_photos() -> list[tuple[str, Image.Image, Image.Image]]:
    """(file name, photo, photo with its luggage painted out) for the COCO luggage fixtures."""
    from pycocotools import mask as mask_utils

    data = json.loads((COCO / "instances_luggage_only.json").read_text())
    by_image: dict[int, list] = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out = []
    for info in sorted(data["images"], key=lambda i: i["file_name"]):
        photo = Image.open(COCO / "images" / info["file_name"]).convert("RGB")
        masks = []
        for ann in by_image[info["id"]]:
            rles = mask_utils.frPyObjects(ann["segmentation"], info["height"], info["width"])
            masks.append(mask_utils.decode(mask_utils.merge(rles)) > 0)
        out.append((info["file_name"], photo, luggage_painted_out(photo, masks)))
    return out


def _share(flags: list[bool]) -> str:
    return f"{sum(flags)} / {len(flags)}" if flags else "-"


def synthetic_rows(n: int) -> list[tuple[str, str, str]]:
    rows = []
    for kind in ("belt", "carousel"):
        for moved in (False, True):
            label = f"synthetic {kind}, belt {'run on' if moved else 'still'}"
            scenes = [
                make_scene("heldout", i, kind=kind, count=0, salt="gate-empty", reference=True, belt_moved=moved)
                for i in range(n)
            ]
            for shift, name in ((0.0, "as taken"), (0.5, "+-0.5 px, +-10 %"), (2.0, "+-2 px, +-10 %")):
                skipped = []
                for i, scene in enumerate(scenes):
                    frame = (
                        vibrate(scene.image, np.random.default_rng(1000 + i), max_shift=shift) if shift else scene.image
                    )
                    skipped.append(EmptySceneGate(_reference(scene)).is_empty(frame))
                rows.append((f"{label}: empty, {name}", "skipped", _share(skipped)))
    false_skips = []
    for i in range(3 * n):
        scene = make_scene("heldout", i, salt="gate-items", reference=True, belt_moved=True)
        if scene.items:
            frame = vibrate(scene.image, np.random.default_rng(2000 + i))
            false_skips.append(EmptySceneGate(_reference(scene)).is_empty(frame))
    for i in range(n):
        scene = make_scene(
            "heldout",
            i,
            kind="belt",
            count=1,
            item_kinds=("pouch",),
            item_colors=("black",),
            salt="small-dark",
            reference=True,
            belt_moved=True,
        )
        false_skips.append(
            EmptySceneGate(_reference(scene)).is_empty(vibrate(scene.image, np.random.default_rng(3000 + i)))
        )
    rows.append(
        (
            "synthetic, items (random draw + small black), belt run on, +-2 px, +-10 %",
            "false skips",
            _share(false_skips),
        )
    )
    return rows


def coco_rows() -> list[tuple[str, str, str]]:
    photos = coco_photos()
    false_skips, skipped = [], []
    for i, (_, photo, empty) in enumerate(photos):
        gate = EmptySceneGate(empty)
        false_skips.append(gate.is_empty(photo))
        false_skips.append(gate.is_empty(vibrate(photo, np.random.default_rng(4000 + i))))
        skipped.append(gate.is_empty(vibrate(empty, np.random.default_rng(5000 + i))))
    return [
        ("real COCO luggage photos (17), as taken and +-2 px, +-10 %", "false skips", _share(false_skips)),
        ("real COCO photos, luggage painted out, +-2 px, +-10 %", "skipped", _share(skipped)),
    ]


def realdata_rows(root: Path) -> list[tuple[str, str, str]]:
    cameras: dict[str, list[dict]] = defaultdict(list)
    with open(root / "index.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["camera_sequence_id"] and row["kind"] in ("bags", "empty"):
                cameras[row["camera_sequence_id"]].append(row)
    rows = []
    for camera, frames in sorted(cameras.items()):
        frames.sort(key=lambda r: r["relative_path"])
        empties = [r for r in frames if r["kind"] == "empty"]
        if not empties:
            continue
        reference = empties[0]
        gate = EmptySceneGate(Image.open(root / reference["relative_path"]).convert("RGB"))
        licence = reference["licence"]
        others = [r for r in frames if r is not reference]
        false_skips = [
            gate.is_empty(Image.open(root / r["relative_path"]).convert("RGB")) for r in others if r["kind"] == "bags"
        ]
        rows.append((f"real {camera} ({licence}): frames with items", "false skips", _share(false_skips)))
        if len(empties) > 1:
            still, vibrated = [], []
            for i, r in enumerate(empties[1:]):
                image = Image.open(root / r["relative_path"]).convert("RGB")
                still.append(gate.is_empty(image))
                vibrated.append(gate.is_empty(vibrate(image, np.random.default_rng(6000 + i))))
            rows.append((f"real {camera}: empty frames, as taken", "skipped", _share(still)))
            rows.append((f"real {camera}: empty frames, +-2 px, +-10 %", "skipped", _share(vibrated)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, help="folder with index.tsv of real belt frames")
    parser.add_argument("--n", type=int, default=16, help="synthetic scenes per row")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    rows = synthetic_rows(args.n) + coco_rows() + (realdata_rows(args.realdata) if args.realdata else [])
    print("| frames | measure | count |\n|---|---|---|")
    for name, measure, value in rows:
        print(f"| {name} | {measure} | {value} |")


if __name__ == "__main__":
    main()
