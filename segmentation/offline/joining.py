"""Joining pieces into items: by convexity and paint (`_merge_convex`), across gaps cut by straps or
other items (`_join_across_gaps`), and parts of one paint cut by an occluder (`_join_occluded`).
"""

from __future__ import annotations

import math
from typing import Any

from segmentation.offline.arrays import _cheapest_pair, _DisjointSet, _label_boxes, _nonzero, _touching
from segmentation.offline.belt import _modes
from segmentation.offline.colour import _paint_distance
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams


def _join_across_gaps(inst, lg, *, params: OfflineParams = P):
    """Instance labels with the parts of one item joined: parts of the same paint that do not
    touch (a strap or band painted like the belt, a patch of another colour, or another item lying
    across cut them apart) and whose union's convex hull is filled by them, by pieces inside the
    hull (patches: absorbed), by other items (occluders) and by thin strips of belt only. Two
    separate items of one colour leave a wide wedge of belt inside their hull."""
    import cv2
    import numpy as np

    k = int(inst.max()) + 1
    if k <= 2:
        return inst
    h, w = inst.shape
    area = np.bincount(inst.ravel(), minlength=k).astype(np.float64)
    box, ys, xs, own = _label_boxes(inst, k)  # x0, y0, x1, y1 (exclusive)
    adjacent = {divmod(int(c), k) for c in _touching(inst, k, np.arange(k) > 0)[0]}
    reach = np.ones((2 * params.gap_reach + 1, 2 * params.gap_reach + 1), np.uint8)
    near_pairs: set[tuple[int, int]] = set()
    for r in range(1, k):
        if area[r] == 0:
            continue
        x0, y0, x1, y1 = box[r]
        cx0, cy0 = max(0, x0 - params.gap_reach), max(0, y0 - params.gap_reach)
        cx1, cy1 = min(w, x1 + params.gap_reach), min(h, y1 + params.gap_reach)
        crop = inst[cy0:cy1, cx0:cx1]
        near = cv2.dilate((crop == r).astype(np.uint8), reach) > 0
        neighbours = np.flatnonzero(np.bincount(crop[near], minlength=k)[r + 1 :]) + r + 1
        near_pairs.update((r, o) for o in neighbours.tolist() if (r, o) not in adjacent)
    if not near_pairs:
        return inst
    # each piece's paint: its commonest colour (stripes, straps and highlights do not count),
    # for the pieces near another only
    involved = np.zeros(k, bool)
    involved[list({r for pair in near_pairs for r in pair})] = True
    sel = involved[own]
    paint = _modes(lg[ys[sel], xs[sel]][None], axis=1, bins=48, line_index=own[sel], lines=k).reshape(k, 3)
    candidates = {
        (r, o) for r, o in near_pairs if _paint_distance(paint[r] - paint[o], params=params) <= params.max_color_dist
    }
    if not candidates:
        return inst
    out = inst.copy()
    groups = _DisjointSet(k)
    thin = np.ones((2 * params.gap_thin + 1, 2 * params.gap_thin + 1), np.uint8)

    def hull_cost(ra: int, rb: int):
        """(cost, geometry) of joining groups ra and rb, or None when the convex hull of their
        union holds too much wide belt."""
        x0, y0 = min(box[ra, 0], box[rb, 0]), min(box[ra, 1], box[rb, 1])
        x1, y1 = max(box[ra, 2], box[rb, 2]), max(box[ra, 3], box[rb, 3])
        crop = out[y0:y1, x0:x1]
        ma, mb = crop == ra, crop == rb  # a group's pieces carry its root's label in `out`
        pts = np.column_stack(_nonzero(ma | mb)[::-1]).astype(np.int32)
        hull = np.zeros(crop.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
        hull = hull > 0
        belt_gap = hull & (crop == 0)
        wide = cv2.morphologyEx(belt_gap.astype(np.uint8), cv2.MORPH_OPEN, thin) > 0
        cost = float(np.count_nonzero(wide)) / max(min(area[ra], area[rb]), 1.0)
        return None if cost > params.gap_max_concavity else (cost, (x0, y0, crop, ma, mb, hull, belt_gap & ~wide))

    def join(ra: int, rb: int, geometry) -> None:
        """Join group rb, the pieces inside the hull (patches) and the belt bridging the two
        (a strap, a band: thin gap components touching both) into group ra."""
        x0, y0, crop, ma, mb, hull, thin_gap = geometry
        inside = hull & ~ma & ~mb & (crop > 0)
        patches = [
            o
            for o in np.unique(crop[inside]).tolist()
            if np.count_nonzero(crop[inside] == o) >= params.patch_inside * area[o]
        ]
        n_gap, gap_labels = cv2.connectedComponents(thin_gap.astype(np.uint8), connectivity=4)
        k3 = np.ones((3, 3), np.uint8)
        touch_a = np.unique(gap_labels[cv2.dilate(ma.astype(np.uint8), k3) > 0])
        touch_b = np.unique(gap_labels[cv2.dilate(mb.astype(np.uint8), k3) > 0])
        bridge = thin_gap & np.isin(gap_labels, np.intersect1d(touch_a, touch_b)[1:] if n_gap > 1 else [])
        changed = {ra}
        for o in [rb] + [groups.find(p) for p in patches]:
            if o != ra:
                groups.attach(o, ra)
                area[ra] += area[o]
                changed.add(o)
                ox0, oy0, ox1, oy1 = box[o]
                sub = out[oy0:oy1, ox0:ox1]
                sub[sub == o] = ra
                box[ra, :2] = np.minimum(box[ra, :2], box[o, :2])
                box[ra, 2:] = np.maximum(box[ra, 2:], box[o, 2:])
        bh, bw = bridge.shape
        out[y0 : y0 + bh, x0 : x0 + bw][bridge] = ra
        for key in [key for key in costs if changed & set(key)]:
            del costs[key]

    costs: dict[tuple[int, int], Any] = {}  # group pair -> hull_cost; dropped when a group changes
    while (best := _cheapest_pair(candidates, groups, costs, hull_cost, rank=lambda entry: entry[0])) is not None:
        join(*best, costs[best][1])
    return out


def _merge_convex(
    labels,
    lg,
    *,
    min_px: float,
    max_gap: float | None = None,
    max_gap_other: float | None = None,
    max_color_dist: float | None = None,
    params: OfflineParams = P,
):
    """Join adjacent pieces (labels 1..) of one foreground blob into items.

    Pieces smaller than `min_px` join the neighbour they share the longest border with. Then,
    cheapest first, two neighbours join when their union is about as convex as one item: of the
    same colour (mean log colours within `max_color_dist`), when the join adds little concavity
    (hull gap of the union minus those of the pieces, relative to the smaller piece, at most
    `max_gap`); of different colours (stripes, straps, a logo, a highlight), only when the join
    adds almost none (`max_gap_other`), the union is not far from convex
    (params.other_colour_max_concavity) and the smaller piece borders the outside of the blob along at
    most params.patch_max_outline of its outline (the item's outline encloses it; an item lying on
    another item sticks out) and pieces of a third paint along at most params.patch_max_foreign of it
    (an item half hidden between two others borders both)."""
    import cv2
    import numpy as np

    if max_color_dist is None:
        max_color_dist = params.max_color_dist
    max_gap = params.merge_max_gap if max_gap is None else max_gap
    max_gap_other = params.merge_max_gap_other if max_gap_other is None else max_gap_other
    labels = labels.copy()
    k = int(labels.max()) + 1
    if k <= 2:
        return labels
    flat = labels.ravel()
    area = np.bincount(flat, minlength=k).astype(np.float64)
    csum = np.stack([np.bincount(flat, weights=lg[..., c].ravel(), minlength=k) for c in range(3)], 1)
    carea = area.copy()  # pixels the colour (csum) is taken over: the item's paint, not its patches
    # each piece's convex hull, from its outline pixels only (the hull of all its pixels)
    outline = np.ones(labels.shape, bool)
    outline[1:-1, 1:-1] = (
        (labels[1:-1, 1:-1] != labels[:-2, 1:-1])
        | (labels[1:-1, 1:-1] != labels[2:, 1:-1])
        | (labels[1:-1, 1:-1] != labels[1:-1, :-2])
        | (labels[1:-1, 1:-1] != labels[1:-1, 2:])
    )
    ys, xs = _nonzero(outline & (labels > 0))
    lab = labels[ys, xs]
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(k + 1))
    pts = np.stack([xs[order], ys[order]], 1).astype(np.int32)
    hulls: dict[int, Any] = {}
    for r in range(1, k):
        if bounds[r + 1] > bounds[r]:
            hulls[r] = cv2.convexHull(pts[bounds[r] : bounds[r + 1]]).reshape(-1, 2)
    adj: dict[tuple[int, int], int] = {}
    outside = np.zeros(k)  # border length of each piece with the outside of the blob (belt)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        diff = a != b
        lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
        codes, counts = np.unique(lo.astype(np.int64) * k + hi, return_counts=True)
        for c, n in zip(codes.tolist(), counts.tolist(), strict=False):
            key = divmod(c, k)
            if key[0] == 0:
                outside[key[1]] += n
            else:
                adj[key] = adj.get(key, 0) + n

    def hull_area(h):
        if len(h) < 3:
            return 0.5 * len(h)
        return cv2.contourArea(h) + 0.5 * cv2.arcLength(h.reshape(-1, 1, 2), True) + 1.0

    gap = {r: max(0.0, hull_area(h) - area[r]) for r, h in hulls.items()}
    pieces = _DisjointSet(k)

    def join(a: int, b: int) -> None:  # b into a
        pieces.attach(b, a)
        area[a] += area[b]
        outside[a] += outside[b]
        difference = csum[a] / max(carea[a], 1) - csum[b] / max(carea[b], 1)
        if _paint_distance(difference, params=params) <= params.max_color_dist:
            csum[a] += csum[b]
            carea[a] += carea[b]
        elif carea[b] > carea[a]:  # a patch of another colour: the larger part's colour stays
            csum[a], carea[a] = csum[b], carea[b]
        hulls[a] = cv2.convexHull(np.concatenate([hulls[a], hulls.pop(b)])).reshape(-1, 2)
        gap[a] = max(0.0, hull_area(hulls[a]) - area[a])
        for key in [key for key in costs if a in key or b in key]:
            del costs[key]
        for (p, q), n in list(adj.items()):
            if b in (p, q):
                del adj[(p, q)]
                o = q if p == b else p
                if o != a:
                    key = (min(a, o), max(a, o))
                    adj[key] = adj.get(key, 0) + n

    # pair -> (may join, (other paint, cost)); dropped on joins. Joins of one paint go first, so
    # an item split in pieces is whole before it is tested as a patch of another
    costs: dict[tuple[int, int], tuple[bool, tuple[bool, float]]] = {}

    def pair_cost(a: int, b: int) -> tuple[bool, tuple[bool, float]]:
        union = hull_area(cv2.convexHull(np.concatenate([hulls[a], hulls[b]])))
        smaller = max(min(area[a], area[b]), 1.0)
        total_gap = max(0.0, union - area[a] - area[b])
        same = _paint_distance(csum[a] / carea[a] - csum[b] / carea[b], params=params) <= max_color_dist
        cost = (total_gap - gap[a] - gap[b]) / smaller
        if same:
            return cost <= max_gap, (False, cost)
        # a patch of another colour belongs to the item whose outline encloses it: it borders
        # the belt only where it reaches the item's edge (stripes, straps, a logo)
        # and other pieces only of its own or the item's paint (an item lying between two
        # others borders both)
        # (the outline tests, which walk the adjacency, only when the hull tests pass)
        if not (cost <= max_gap_other and total_gap / smaller <= params.other_colour_max_concavity):
            return False, (True, cost)
        patch, host = (a, b) if area[a] <= area[b] else (b, a)
        perimeter = outside[patch] + sum(n for key, n in adj.items() if patch in key)
        foreign = sum(
            n
            for key, n in adj.items()
            if patch in key and host not in key and not one_paint(key[0] if key[1] == patch else key[1], (patch, host))
        )
        ok = outside[patch] <= params.patch_max_outline * perimeter and foreign <= params.patch_max_foreign * perimeter
        return ok, (True, cost)

    def one_paint(r: int, others) -> bool:
        """Whether piece r has the paint of one of the pieces `others`."""
        colour = csum[r] / max(carea[r], 1)
        return any(
            _paint_distance(colour - csum[o] / max(carea[o], 1), params=params) <= max_color_dist for o in others
        )

    while adj:
        small = [r for r in hulls if area[r] < min_px and any(r in key for key in adj)]
        if small:
            r = min(small, key=lambda q: area[q])
            (p, q), _ = max(((key, n) for key, n in adj.items() if r in key), key=lambda kv: kv[1])
            o = q if p == r else p
            join(o, r)
            continue
        best, best_cost = None, (True, math.inf)
        for a, b in adj:
            if (a, b) not in costs:
                costs[(a, b)] = pair_cost(a, b)
            ok, cost = costs[(a, b)]
            if ok and cost < best_cost:
                best, best_cost = (a, b), cost
        if best is None:
            break
        join(*best)
    return np.array(pieces.roots())[labels]


def _join_occluded(inst, lg, *, min_px: float, params: OfflineParams = P):
    """Instance labels with touching parts of one item joined: two touching pieces (each at
    least `min_px`) of one paint (params.occluded_one_paint) whose union's convex hull adds, beyond the
    pieces' own hulls, almost no belt (params.occluded_belt_gap of the smaller piece), only pixels of
    the pieces and of other items; cheapest first. Two items of one paint side by side leave a
    wedge of belt open where their outlines meet; the parts of one item cut apart by another
    lying across or into it (the occluder fills the concavity), or by the cuts before, do not."""
    import cv2
    import numpy as np

    counts = np.bincount(inst.ravel())
    big = counts >= min_px
    big[0] = False
    if np.count_nonzero(big) < 2:
        return inst
    # touching pairs (4-neighbours) of pieces that are large enough to be items
    n = len(counts)
    uniq, n_border = _touching(inst, n, big)
    pairs = [divmod(int(c), n) for c, nb in zip(uniq, n_border, strict=False) if nb >= 3]
    if not pairs:
        return inst
    label_boxes = _label_boxes(inst, n)[0]
    # each group's bounding box, pixels and convex hull (image coordinates)
    box: dict[int, list[int]] = {}
    area: dict[int, float] = {}
    hulls: dict[int, Any] = {}
    for r in {r for pair in pairs for r in pair}:
        x0, y0, x1, y1 = box[r] = [int(v) for v in label_boxes[r]]
        area[r] = float(counts[r])
        contours, _ = cv2.findContours(
            (inst[y0:y1, x0:x1] == r).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        hulls[r] = cv2.convexHull(np.concatenate(contours)) + (x0, y0)  # noqa: RUF005 - array + offset
    out = inst.copy()
    groups = _DisjointSet(n)

    def cost(ra: int, rb: int):
        """The belt the hull of the union adds, relative to the smaller part, or None."""
        x0, y0 = min(box[ra][0], box[rb][0]), min(box[ra][1], box[rb][1])
        x1, y1 = max(box[ra][2], box[rb][2]), max(box[ra][3], box[rb][3])
        crop = out[y0:y1, x0:x1]
        ha, hb = hulls[ra] - (x0, y0), hulls[rb] - (x0, y0)
        hull = np.zeros(crop.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate([ha, hb])), 1)
        cv2.fillConvexPoly(hull, ha, 0)
        cv2.fillConvexPoly(hull, hb, 0)
        c = float(np.count_nonzero((hull > 0) & (crop == 0))) / max(min(area[ra], area[rb]), 1.0)
        if c > params.occluded_belt_gap:
            return None
        ma, mb = crop == ra, crop == rb
        both = ma | mb
        paint = _modes(
            lg[y0:y1, x0:x1][both][None], axis=1, bins=48, line_index=mb[both].astype(np.int64), lines=2
        ).reshape(2, 3)
        return c if _paint_distance(paint[0] - paint[1], params=params) <= params.occluded_one_paint else None

    costs: dict[tuple[int, int], Any] = {}
    while (best := _cheapest_pair(pairs, groups, costs, cost)) is not None:
        ra, rb = best
        groups.attach(rb, ra)
        x0, y0, x1, y1 = box[rb]
        sub = out[y0:y1, x0:x1]
        sub[sub == rb] = ra
        box[ra] = [min(box[ra][0], x0), min(box[ra][1], y0), max(box[ra][2], x1), max(box[ra][3], y1)]
        area[ra] += area[rb]
        hulls[ra] = cv2.convexHull(np.concatenate([hulls[ra], hulls.pop(rb)]))
        for key in [key for key in costs if ra in key or rb in key]:
            del costs[key]
    return out
