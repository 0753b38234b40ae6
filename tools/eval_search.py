"""Retrieval benchmark of the weight-free lost-bag descriptor on generated bag views.

    .venv/bin/python -m tools.eval_search [--split tuning|heldout|both] [--bags 600] [--queries 200]

The gallery is `--bags` bags of one split (`tools.bag_views`), each seen twice by belt cameras; the
first `--queries` bags are looked for three ways:
- photo: a passenger's photo (another background, looser framing, other light, maybe occluded);
- belt: a third belt view (another camera, pose and light);
- text: the description its owner would write (kind, colour, accent colour; `Bag.description`),
  through `segmentation.search.text.describe_text`.
A query is a hit at k when its bag is among the first k distinct bags ranked by cosine similarity
(a bag's best-scoring view counts). Also printed: the descriptor's time per crop on one core
(median of the gallery pass in blocks of 50 crops; decoding not timed) and the twin ceiling
(`tools.bag_views.twins`): queries whose bag has gallery bags identical by construction (plain,
same kind and colour term, and same exemplar paint or base chromaticity and aspect within the
views' own spread), and the expected top-5 recall of a perfect descriptor that must pick among
them at random; for text, among the bags with the same description.

Views are rendered once per split and kept in /tmp (keyed by the generator's source).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import pickle  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from segmentation.search import descriptor  # noqa: E402
from segmentation.search.text import describe_text  # noqa: E402
from tools import bag_views, belt_scenes  # noqa: E402

GALLERY_SEEDS = (1, 2)  # two belt views per bag in the gallery
PHOTO_SEED, BELT_SEED = 7, 3  # the query views: a passenger's photo, another belt camera


@dataclass
class Views:
    bags: list[bag_views.Bag]
    gallery: list[list[np.ndarray]]  # per bag, its belt views (uint8 RGB)
    photo: list[np.ndarray]  # per query bag
    belt: list[np.ndarray]
    photo_occluded: list[bool]  # something lies over the bag in the query view
    belt_occluded: list[bool]


def views(split: str, n_bags: int, n_queries: int) -> Views:
    """The split's rendered views, from the /tmp cache when the generator has not changed."""
    source = inspect.getsource(bag_views) + inspect.getsource(belt_scenes)
    key = hashlib.sha256(f"{source}{split}{n_bags}{n_queries}".encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"bag_views-{split}-{key}.pkl"
    if cache.exists():
        with cache.open("rb") as f:
            cached: Views = pickle.load(f)
        return cached
    bags = [bag_views.bag(split, i) for i in range(n_bags)]
    arr = lambda im: np.asarray(im, np.uint8)
    out = Views(
        bags,
        [[arr(bag_views.view(b, s)) for s in GALLERY_SEEDS] for b in bags],
        [arr(bag_views.view(b, PHOTO_SEED, where="photo")) for b in bags[:n_queries]],
        [arr(bag_views.view(b, BELT_SEED)) for b in bags[:n_queries]],
        [bag_views.occluded(b, PHOTO_SEED, where="photo") for b in bags[:n_queries]],
        [bag_views.occluded(b, BELT_SEED) for b in bags[:n_queries]],
    )
    tmp = cache.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(out, f)
    tmp.replace(cache)
    return out


def ranks(gallery: np.ndarray, owners: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per query (row i is bag i), how many gallery bags score higher than its own bag."""
    scores = queries @ gallery.T
    n_bags = int(owners.max()) + 1
    best = np.full((len(queries), n_bags), -np.inf, np.float32)
    for j in range(scores.shape[1]):
        np.maximum(best[:, owners[j]], scores[:, j], out=best[:, owners[j]])
    own = best[np.arange(len(queries)), np.arange(len(queries))]
    return (best > own[:, None]).sum(axis=1)


def recall(gallery: np.ndarray, owners: np.ndarray, queries: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Share of queries (row i is bag i) whose bag is among the first k distinct gallery bags."""
    rank = ranks(gallery, owners, queries)
    return [float(np.mean(rank < k)) for k in ks]


def describe_all(images: list[np.ndarray], fn: Callable[[Image.Image], np.ndarray]) -> tuple[np.ndarray, list[float]]:
    """Vectors of `images`, and the time per image (ms) of each block of 50."""
    pil = [Image.fromarray(a) for a in images]
    out: list[np.ndarray] = []
    per_block: list[float] = []
    for start in range(0, len(pil), 50):
        t0 = time.perf_counter()
        out.extend(fn(im) for im in pil[start : start + 50])
        per_block.append((time.perf_counter() - t0) * 1000 / len(pil[start : start + 50]))
    return np.stack(out), per_block


@dataclass
class Result:
    split: str
    bags: int
    queries: int
    photo: list[float]
    belt: list[float]
    text: list[float]
    photo_clear: tuple[int, float]  # photo queries with nothing over the bag: count, top-5 recall
    photo_covered: tuple[int, float]  # ... partly covered by another item or a hand
    ms_per_crop: float
    twins: int  # queries with a look-alike gallery bag (`bag_views.twins`)
    ceiling5: float  # expected top-5 recall of a perfect descriptor among look-alikes
    strict_twins: int  # ... with a twin of the same exemplar paint (`strict`)
    strict_ceiling5: float
    text_ceiling5: float  # ... of a perfect text matcher among bags with the same description


def evaluate(split: str, n_bags: int, n_queries: int) -> Result:
    import cv2

    cv2.setNumThreads(1)
    v = views(split, n_bags, n_queries)
    flat = [im for per_bag in v.gallery for im in per_bag]
    owners = np.repeat(np.arange(n_bags), len(GALLERY_SEEDS))
    gallery, blocks = describe_all(flat, descriptor.describe)
    photo, _ = describe_all(v.photo, descriptor.describe)
    belt, _ = describe_all(v.belt, descriptor.describe)
    text = np.stack([describe_text(b.description()) for b in v.bags[:n_queries]])
    covered = np.array(v.photo_occluded)
    photo_ranks = ranks(gallery, owners, photo)
    ceiling = lambda counts: float(np.mean([min(1.0, 5 / (c + 1)) for c in counts]))
    twin_counts = bag_views.twins(v.bags, n_queries)
    strict_counts = bag_views.twins(v.bags, n_queries, strict=True)
    same_text = [sum(o.description() == b.description() for o in v.bags) - 1 for b in v.bags[:n_queries]]
    return Result(
        split,
        n_bags,
        n_queries,
        recall(gallery, owners, photo),
        recall(gallery, owners, belt),
        recall(gallery, owners, text),
        (int((~covered).sum()), float(np.mean(photo_ranks[~covered] < 5))),
        (int(covered.sum()), float(np.mean(photo_ranks[covered] < 5))),
        float(np.median(blocks)),
        int(sum(c > 0 for c in twin_counts)),
        ceiling(twin_counts),
        int(sum(c > 0 for c in strict_counts)),
        ceiling(strict_counts),
        ceiling(same_text),
    )


def table(results: list[Result]) -> str:
    head = (
        "| split | gallery | queries | photo top-1 | photo top-5 | belt top-1 | belt top-5 | text top-1 | text top-5"
        " | ms/crop |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in results:
        cells = [f"{x:.2f}" for x in (*r.photo, *r.belt, *r.text)]
        rows.append(f"| {r.split} | {r.bags} bags × {len(GALLERY_SEEDS)} | {r.queries} | " + " | ".join(cells))
        rows[-1] += f" | {r.ms_per_crop:.1f} |"
    rows += ["", "Photo queries by occlusion (top-5):", "", "| split | clear | top-5 | partly covered | top-5 |"]
    rows += ["|" + "---|" * 5]
    for r in results:
        rows.append(
            f"| {r.split} | {r.photo_clear[0]} | {r.photo_clear[1]:.2f}"
            f" | {r.photo_covered[0]} | {r.photo_covered[1]:.2f} |"
        )
    rows += ["", "Twin ceiling (expected top-5 recall of a perfect matcher picking at random among look-alikes):", ""]
    rows += ["| split | queries with a look-alike | ceiling | with a same-paint twin | ceiling | text ceiling |"]
    rows += ["|" + "---|" * 6]
    for r in results:
        rows.append(
            f"| {r.split} | {r.twins} | {r.ceiling5:.2f} | {r.strict_twins} | {r.strict_ceiling5:.2f}"
            f" | {r.text_ceiling5:.2f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("tuning", "heldout", "both"), default="tuning")
    parser.add_argument("--bags", type=int, default=600)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    splits = ("tuning", "heldout") if args.split == "both" else (args.split,)
    print(f"descriptor {descriptor.VERSION}, {descriptor.DIM} dimensions")
    print(table([evaluate(s, args.bags, args.queries) for s in splits]))


if __name__ == "__main__":
    main()
