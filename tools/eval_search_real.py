"""The lost-bag search descriptor on real photos (development only; never deployed).

    .venv/bin/python -m tools.eval_search_real [--realdata ../realdata] [--distractors 500]

`tools.eval_search` measures the descriptor on generated bags only. This measures it on real crops:
- multi-view: the query and its true match are DIFFERENT real photos of one physical object:
  `wazder_lbs68` (six pieces of luggage, four phone photos each, plus the author's own query photo
  of one of them), `google_dreambooth` (two backpacks boxed by hand; its 28 other subjects, as whole
  photos, are reported on their own row), `lampt_parcels` (parcels seen in two frames of a conveyor
  camera, pairs from an IoU tracker on the repository's model boxes, each pair checked by eye);
- synthetic re-photo: each COCO luggage instance (one photo only) re-photographed synthetically:
  the source photo turned about the box centre, a jittered box, exposure, colour cast, blur, JPEG;
- text: a description of each COCO instance (colour and kind, written by looking at the crop), and
  of each `wazder_lbs68` object, through `segmentation.search.text.describe_text`.
The gallery is every real crop of every source (the query's own crop left out); a query is a hit at
k when its object is among the first k distinct objects ranked by the best cosine similarity of
their crops. Chance at k is k over the number of distinct objects in the gallery. The second set of
columns adds `--distractors` generated bags (`tools.bag_views`, held-out split, two belt views each).

Boxes are fractions (x0, y0, x1, y1) of the upright photo, drawn by eye where a source has none.
`COCO_TEXT` and `LBS68_TEXT` are descriptions written by looking at the crops.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter, ImageOps  # noqa: E402

from segmentation.search import descriptor  # noqa: E402
from segmentation.search.text import describe_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COCO_DIR = REPO.parent / "shared" / "fixtures" / "coco_luggage"
REALDATA = REPO.parent / "realdata"

# Source -> (licence, may its images be committed). Details and URLs: docs/search-evaluation.md.
LICENCES = {
    "coco_luggage": ("CC BY 2.0 / CC BY-SA 2.0 (Flickr), annotations CC BY 4.0", "yes, with attribution"),
    "wazder_lbs68": ("MIT (repository licence, Hasan Tatar 2025)", "arguably; not committed"),
    "google_dreambooth": ("CC BY 4.0 (Unsplash licence or the authors' own photos)", "yes, with attribution"),
    "lampt_parcels": ("none found", "no (evaluation only)"),
}

# wazder/lbs68 input/ (a..f: six objects, four photos each) and search/green.jpeg (object f),
# boxes drawn by eye around the object, an extended trolley handle included as a detector would.
LBS68_BOXES = {
    "input_a01.jpeg": (0.17, 0.16, 0.82, 0.83),
    "input_a02.jpeg": (0.23, 0.14, 0.72, 0.79),
    "input_a03.jpeg": (0.20, 0.14, 0.73, 0.73),
    "input_a04.jpeg": (0.30, 0.17, 0.82, 0.84),
    "input_b01.jpeg": (0.16, 0.21, 0.90, 0.73),
    "input_b02.jpeg": (0.27, 0.27, 0.80, 0.71),
    "input_b03.jpeg": (0.13, 0.22, 1.00, 0.70),
    "input_b04.jpeg": (0.08, 0.27, 0.80, 0.72),
    "input_c01.jpeg": (0.33, 0.10, 0.69, 0.93),
    "input_c02.jpeg": (0.19, 0.07, 0.73, 0.91),
    "input_c03.jpeg": (0.28, 0.32, 0.68, 0.97),
    "input_c04.jpeg": (0.17, 0.07, 0.73, 0.87),
    "input_d01.jpeg": (0.30, 0.09, 0.77, 1.00),
    "input_d02.jpeg": (0.32, 0.30, 0.68, 0.83),
    "input_d03.jpeg": (0.25, 0.04, 0.70, 0.95),
    "input_d04.jpeg": (0.39, 0.02, 0.71, 0.99),
    "input_e01.jpeg": (0.00, 0.11, 0.75, 0.78),
    "input_e02.jpeg": (0.05, 0.12, 0.80, 0.63),
    "input_e03.jpeg": (0.04, 0.16, 0.68, 0.71),
    "input_e04.jpeg": (0.18, 0.30, 0.80, 0.72),
    "input_f01.jpeg": (0.22, 0.10, 0.83, 0.71),
    "input_f02.jpeg": (0.25, 0.20, 0.77, 0.77),
    "input_f03.jpeg": (0.32, 0.22, 0.70, 0.80),
    "input_f04.jpeg": (0.37, 0.21, 0.74, 0.76),
    "search_green.jpeg": (0.21, 0.10, 0.80, 0.70),
}
LBS68_TEXT = {
    "a": "orange and blue patterned suitcase",
    "b": "navy duffel bag with brown straps",
    "c": "black hard-shell suitcase",
    "d": "teal hard-shell suitcase with a white tag",
    "e": "pink parcel",
    "f": "dark green hard-shell suitcase",
}
# google/dreambooth dataset/: the two backpacks, boxed by eye (the other subjects are whole photos).
DREAMBOOTH_BOXES = {
    "backpack/00.jpg": (0.31, 0.03, 0.76, 0.78),
    "backpack/01.jpg": (0.32, 0.00, 0.74, 0.78),
    "backpack/02.jpg": (0.26, 0.04, 0.93, 0.92),
    "backpack/03.jpg": (0.43, 0.06, 0.97, 0.86),
    "backpack/04.jpg": (0.29, 0.11, 0.62, 0.86),
    "backpack/05.jpg": (0.15, 0.07, 0.66, 0.89),
    "backpack_dog/00.jpg": (0.31, 0.21, 0.74, 0.79),
    "backpack_dog/01.jpg": (0.13, 0.15, 0.60, 0.79),
    "backpack_dog/02.jpg": (0.18, 0.16, 0.80, 0.86),
    "backpack_dog/03.jpg": (0.37, 0.21, 0.80, 0.75),
    "backpack_dog/04.jpg": (0.18, 0.17, 0.72, 0.80),
}
DREAMBOOTH_BAGS = ("backpack", "backpack_dog")
# lampt parcels: (frame, (x0, y0, x1, y1) pixels) twice per parcel, the model's boxes linked by IoU
# > 0.3 across frames and kept only where both crops show the same parcel by eye (11 of 53 links;
# the frames are about a second apart, so most links join two different parcels).
LAMPT_PAIRS = [
    ((0, (532, 325, 703, 432)), (1, (532, 326, 703, 432))),
    ((16, (530, 382, 664, 456)), (17, (529, 381, 672, 446))),
    ((36, (492, 206, 683, 357)), (37, (556, 217, 735, 363))),
    ((49, (588, 260, 646, 333)), (50, (588, 261, 646, 333))),
    ((53, (579, 333, 758, 417)), (54, (579, 333, 759, 417))),
    ((77, (706, 205, 776, 360)), (78, (673, 230, 772, 379))),
    ((100, (593, 317, 774, 468)), (102, (578, 333, 798, 498))),
    ((108, (686, 336, 837, 462)), (109, (689, 336, 837, 462))),
    ((116, (551, 198, 631, 280)), (117, (550, 189, 618, 275))),
    ((119, (657, 208, 716, 286)), (120, (656, 203, 705, 281))),
    ((121, (576, 175, 736, 324)), (122, (642, 220, 788, 344))),
]
LAMPT_INSET = 3  # pixels: the model's boxes are drawn on the frames; crop inside the drawn line
# COCO luggage instances by annotation id: colour and kind as a passenger would say them.
COCO_TEXT = {
    1163973: "black backpack with white print",
    1164526: "brown backpack",
    1166847: "red backpack",
    1170194: "tan backpack",
    1170725: "black backpack",
    1171260: "black backpack",
    1172246: "black handbag",
    1173923: "pink handbag",
    1175058: "black bag",
    1175457: "dark red handbag",
    1176301: "tan woven handbag",
    1176412: "black handbag",
    1179210: "black bag",
    1179286: "black handbag with pink",
    1180455: "blue-grey shoulder bag",
    1180782: "black bag",
    1182773: "orange suitcase with a green strap",
    1184502: "dark grey suitcase with a pink strap",
    1185290: "blue suitcase",
    1185843: "silver suitcase with a pink tag",
    1187372: "blue suitcase with a white strap",
    1187947: "orange suitcase with black stripes",
    1416201: "black handbag with pink",
    1420898: "navy backpack",
    1430563: "black handbag",
    1431731: "grey handbag",
    1432415: "dark red handbag",
    1434055: "black handbag",
    1437313: "black handbag",
    1439671: "dark brown handbag",
    1446311: "black suitcase with a pink tag",
    1446552: "blue suitcase with an orange strap",
    1446824: "orange suitcase",
    1446996: "silver suitcase with a blue tag",
    1447020: "black suitcase with a white tag",
    1824141: "red backpack with black",
    1833637: "black backpack",
    1837156: "red handbag",
    1839201: "grey handbag",
    1839356: "grey handbag",
    1841741: "black suitcase",
    2079016: "white handbag",
    2081743: "silver suitcase",
    2175567: "black backpack",
    2176585: "black handbag",
}


@dataclass(frozen=True)
class Crop:
    source: str
    obj: str  # the physical object: crops with the same `obj` are the same bag
    name: str
    image: Image.Image


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: see docs/search-evaluation.md for where it comes from")
    return path


def _upright(path: Path) -> Image.Image:
    with Image.open(_need(path)) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def _box_crop(image: Image.Image, box: Sequence[float]) -> Image.Image:
    w, h = image.size
    x0, y0, x1, y1 = box
    return image.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))


def coco_instances(root: Path = COCO_DIR) -> list[tuple[int, Image.Image, tuple[float, float, float, float]]]:
    """(annotation id, its photo, pixel box x0 y0 x1 y1) of every COCO luggage instance."""
    data = json.loads(_need(root / "instances_luggage_only.json").read_text())
    files = {i["id"]: i["file_name"] for i in data["images"]}
    photos: dict[int, Image.Image] = {}
    out = []
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        image_id = ann["image_id"]
        if image_id not in photos:
            photos[image_id] = _upright(root / "images" / files[image_id])
        x, y, w, h = ann["bbox"]
        out.append((ann["id"], photos[image_id], (x, y, x + w, y + h)))
    return out


def _pixel_crop(image: Image.Image, box: Sequence[float]) -> Image.Image:
    return image.crop((round(box[0]), round(box[1]), round(box[2]), round(box[3])))


def coco_crops(root: Path = COCO_DIR) -> list[Crop]:
    return [
        Crop("coco_luggage", f"coco:{ann_id}", str(ann_id), _pixel_crop(photo, box))
        for ann_id, photo, box in coco_instances(root)
    ]


def lbs68_crops(realdata: Path = REALDATA) -> list[Crop]:
    folder = realdata / "wazder_lbs68_luggage_photos"
    out = []
    for name, box in LBS68_BOXES.items():
        obj = "f" if name.startswith("search_") else name.split("_")[1][0]
        out.append(Crop("wazder_lbs68", f"lbs68:{obj}", name, _box_crop(_upright(folder / name), box)))
    return out


def dreambooth_crops(realdata: Path = REALDATA) -> list[Crop]:
    """The two backpacks cropped to their boxes, then every other subject's photos whole."""
    folder = realdata / "google_dreambooth_subjects" / "dataset"
    out = []
    for subject in sorted(p.name for p in _need(folder).iterdir() if p.is_dir()):
        for path in sorted((folder / subject).glob("*.jpg")):
            rel = f"{subject}/{path.name}"
            image = _upright(path)
            if subject in DREAMBOOTH_BAGS:
                image = _box_crop(image, DREAMBOOTH_BOXES[rel])
            out.append(Crop("google_dreambooth", f"db:{subject}", rel, image))
    return out


def lampt_crops(realdata: Path = REALDATA) -> list[Crop]:
    folder = realdata / "lampt_parcels_topdown_conveyor" / "images"
    out = []
    for n, pair in enumerate(LAMPT_PAIRS):
        for frame, (x0, y0, x1, y1) in pair:
            image = _upright(folder / f"box_{frame:04d}.png")
            i = LAMPT_INSET
            out.append(Crop("lampt_parcels", f"lampt:{n}", f"{frame}", image.crop((x0 + i, y0 + i, x1 - i, y1 - i))))
    return out


def rephotograph(photo: Image.Image, box: Sequence[float], seed: int) -> Image.Image:
    """A synthetic second photo of the object in `box` (pixels): the photo turned about the box
    centre by any angle, the new box around the turned box jittered by up to 12 % of its size, exposure
    x0.6-1.5, a colour cast of up to +-12 % per channel, blur up to 1.5 px, JPEG quality 40-85."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    angle = float(rng.uniform(0, 360))
    turned = photo.rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy), fillcolor=(128, 128, 128))
    t = np.radians(angle)
    w, h = x1 - x0, y1 - y0
    half_w = (abs(w * np.cos(t)) + abs(h * np.sin(t))) / 2
    half_h = (abs(w * np.sin(t)) + abs(h * np.cos(t))) / 2
    jitter = rng.uniform(-0.12, 0.12, 4) * np.array([2 * half_w, 2 * half_h, 2 * half_w, 2 * half_h])
    left, top = cx - half_w + jitter[0], cy - half_h + jitter[1]
    right, bottom = cx + half_w + jitter[2], cy + half_h + jitter[3]
    crop = turned.crop(
        (round(left), round(top), max(round(right), round(left) + 4), max(round(bottom), round(top) + 4))
    )
    rgb = np.asarray(crop, np.float32) * float(rng.uniform(0.6, 1.5)) * rng.uniform(0.88, 1.12, 3)
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=int(rng.integers(40, 86)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def coco_rephotographed(seeds: Sequence[int] = (1, 2, 3), root: Path = COCO_DIR) -> list[Crop]:
    return [
        Crop("coco_luggage", f"coco:{ann_id}", f"{ann_id}~{seed}", rephotograph(photo, box, 1000 * ann_id + seed))
        for ann_id, photo, box in coco_instances(root)
        for seed in seeds
    ]


def describe_all(crops: Sequence[Crop]) -> np.ndarray:
    return np.stack([descriptor.describe(c.image) for c in crops]) if crops else np.zeros((0, descriptor.DIM))


def ranks(
    gallery: np.ndarray, owners: Sequence[str], queries: np.ndarray, own: Sequence[str], left_out: Sequence[int | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: how many distinct gallery objects score above its own object (each object by its
    best crop; gallery row `left_out[i]`, the query itself, is not counted), and how many distinct
    objects the gallery holds for it."""
    names = sorted(set(owners))
    index = {n: i for i, n in enumerate(names)}
    owner_ix = np.array([index[o] for o in owners])
    scores = queries @ gallery.T
    out, sizes = [], []
    for q in range(len(queries)):
        s = scores[q].copy()
        if left_out[q] is not None:
            s[left_out[q]] = -np.inf
        best = np.full(len(names), -np.inf)
        np.maximum.at(best, owner_ix, s)
        mine = best[index[own[q]]]
        present = np.isfinite(best)
        out.append(int((best[present] > mine).sum()))
        sizes.append(int(present.sum()))
    return np.array(out), np.array(sizes)


@dataclass
class Row:
    source: str
    check: str
    objects: int
    queries: int
    top1: float
    top5: float
    chance5: float
    with_generated: tuple[float, float, float] | None = None  # top-1, top-5, chance with distractors


def _row(source: str, check: str, rank: np.ndarray, size: np.ndarray, objects: int) -> Row:
    return Row(
        source,
        check,
        objects,
        len(rank),
        float(np.mean(rank < 1)),
        float(np.mean(rank < 5)),
        float(np.mean(np.minimum(1.0, 5 / size))),
    )


def evaluate(realdata: Path = REALDATA, n_distractors: int = 500) -> list[Row]:
    import cv2

    cv2.setNumThreads(1)
    sources = {
        "coco_luggage": coco_crops(),
        "wazder_lbs68": lbs68_crops(realdata),
        "google_dreambooth": dreambooth_crops(realdata),
        "lampt_parcels": lampt_crops(realdata),
    }
    gallery_crops = [c for crops in sources.values() for c in crops]
    gallery = describe_all(gallery_crops)
    owners = [c.obj for c in gallery_crops]
    extra, extra_owners = _distractors(n_distractors)

    def measure(source: str, check: str, queries: np.ndarray, own: list[str], left_out: list[int | None]) -> Row:
        objects = len(set(own))
        row = _row(source, check, *ranks(gallery, owners, queries, own, left_out), objects)
        if len(extra):
            rank, size = ranks(np.vstack([gallery, extra]), owners + extra_owners, queries, own, left_out)
            generated = _row(source, check, rank, size, objects)
            row.with_generated = (generated.top1, generated.top5, generated.chance5)
        return row

    rows = []
    # multi-view: each crop of an object with two or more photos looks for the others
    for source, check, keep in (
        ("wazder_lbs68", "another real photo (phone, new pose and light)", lambda c: True),
        ("google_dreambooth", "another real photo, backpacks (new scene)", lambda c: c.obj[3:] in DREAMBOOTH_BAGS),
        (
            "google_dreambooth",
            "another real photo, 28 non-bag subjects, whole photo",
            lambda c: c.obj[3:] not in DREAMBOOTH_BAGS,
        ),
        ("lampt_parcels", "another conveyor frame (1-2 frames later)", lambda c: True),
    ):
        picked = [i for i, c in enumerate(gallery_crops) if c.source == source and keep(c)]
        rows.append(measure(source, check, gallery[picked], [owners[i] for i in picked], list(picked)))
    # COCO: synthetic re-photos of the one photo of each instance
    rephotos = coco_rephotographed()
    rows.append(
        measure(
            "coco_luggage",
            "SYNTHETIC re-photo of the same photo",
            describe_all(rephotos),
            [c.obj for c in rephotos],
            [None] * len(rephotos),
        )
    )
    # text
    coco_ids = [c.obj for c in sources["coco_luggage"]]
    texts = np.stack([describe_text(COCO_TEXT[int(o.split(":")[1])]) for o in coco_ids])
    rows.append(measure("coco_luggage", "text (colour and kind)", texts, coco_ids, [None] * len(coco_ids)))
    coco_only = _row(
        "coco_luggage",
        "text, among the COCO crops only",
        *ranks(gallery[: len(coco_ids)], coco_ids, texts, coco_ids, [None] * len(coco_ids)),
        len(coco_ids),
    )
    rows.append(coco_only)
    lbs_ids = [f"lbs68:{k}" for k in LBS68_TEXT]
    lbs_texts = np.stack([describe_text(t) for t in LBS68_TEXT.values()])
    rows.append(measure("wazder_lbs68", "text (colour and kind)", lbs_texts, lbs_ids, [None] * len(lbs_ids)))
    return rows


def _distractors(n_bags: int) -> tuple[np.ndarray, list[str]]:
    """Descriptors of `n_bags` generated bags' two belt views (held-out split), and their owners."""
    if n_bags <= 0:
        return np.zeros((0, descriptor.DIM)), []
    from tools import bag_views
    from tools.eval_search import GALLERY_SEEDS

    bags = [bag_views.bag("heldout", i) for i in range(n_bags)]
    vectors = np.stack([descriptor.describe(bag_views.view(b, seed)) for b in bags for seed in GALLERY_SEEDS])
    owners = [f"generated:{b.ident}" for b in bags for _ in GALLERY_SEEDS]
    return vectors, owners


def table(rows: list[Row], n_distractors: int) -> str:
    head = "| source | licence | query and its match | #objects | #queries | top-1 | top-5 | chance top-5 |"
    sep = "|---|---|---|---|---|---|---|---|"
    if n_distractors:
        head += f" + {n_distractors} generated bags: top-1 | top-5 | chance top-5 |"
        sep += "---|---|---|"
    lines = [head, sep]
    for r in rows:
        line = (
            f"| {r.source} | {LICENCES[r.source][0]} | {r.check} | {r.objects} | {r.queries}"
            f" | {r.top1:.2f} | {r.top5:.2f} | {r.chance5:.2f} |"
        )
        if r.with_generated is not None:
            line += " {:.2f} | {:.2f} | {:.3f} |".format(*r.with_generated)
        lines.append(line)
    return "\n".join(lines)


FIXTURE_SIDE = 160  # pixels: the longest side of the backpack crops committed for tests/test_search_real.py


def write_backpack_fixture(out: Path, realdata: Path = REALDATA) -> None:
    """The two DreamBooth backpacks' crops (CC BY 4.0), downscaled, as tests/test_search_real.py reads them."""
    out.mkdir(parents=True, exist_ok=True)
    for crop in dreambooth_crops(realdata):
        if crop.obj[3:] in DREAMBOOTH_BAGS:
            image = crop.image.copy()
            image.thumbnail((FIXTURE_SIDE, FIXTURE_SIDE), Image.Resampling.LANCZOS)
            image.save(out / crop.name.replace("/", "_"), quality=92)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--realdata", type=Path, default=REALDATA, help="folder of the real photos (MANIFEST.md)")
    parser.add_argument("--distractors", type=int, default=500, help="generated bags added to the gallery (0: none)")
    parser.add_argument("--write-backpacks", type=Path, help="write the backpack crops for the tests to this folder")
    args = parser.parse_args(argv)
    if args.write_backpacks:
        write_backpack_fixture(args.write_backpacks, args.realdata)
        return
    print(f"descriptor {descriptor.VERSION}, {descriptor.DIM} dimensions")
    print(table(evaluate(args.realdata, args.distractors), args.distractors))


if __name__ == "__main__":
    main()
