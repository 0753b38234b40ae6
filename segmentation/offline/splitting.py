"""Splitting the item mask into items: bulges of the distance transform, colour clusters, closed
edges, and cuts between the notches of a concave item (docs/offline-detector-method.md, step 5).
"""

from __future__ import annotations

import math
from typing import Any

from segmentation.offline.arrays import _components, _contours_hull_gap, _DisjointSet, _hull_gap
from segmentation.offline.belt import _modes
from segmentation.offline.colour import _colour_features, _paint_distance
from segmentation.offline.joining import _merge_convex
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams


def _split_touching(
    fg,
    image8,
    lg,
    grad,
    *,
    min_px: float,
    edge_level: float,
    neck: float | None = None,
    max_color_dist: float | None = None,
    merge_gap: float | None = None,
    params: OfflineParams = P,
):
    """Instance labels (0 = background, 1.. = items) for the foreground mask `fg`.

    Two bulges of a blob without a neck between them join when their commonest colours differ
    by at most `max_color_dist` (L1, log units)."""
    neck = params.split_neck if neck is None else neck
    max_color_dist = params.split_max_color_dist if max_color_dist is None else max_color_dist
    merge_gap = params.split_merge_gap if merge_gap is None else merge_gap
    import cv2
    import numpy as np

    h, w = fg.shape
    # (the BBDT algorithm: the same labels as the default, its statistics several times faster)
    n, comp, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(fg, 8, cv2.CV_32S, cv2.CCL_BBDT)
    out = np.zeros((h, w), np.int32)
    next_id = 1
    for c in range(1, n):
        x, y, bw, bh, area = stats[c]
        if area < min_px:
            continue
        x0, y0, x1, y1 = max(0, x - 2), max(0, y - 2), min(w, x + bw + 2), min(h, y + bh + 2)
        mask = comp[y0:y1, x0:x1] == c
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        peak_level = cv2.dilate(dist, np.ones((7, 7), np.uint8))
        peaks = (dist >= peak_level - 1e-3) & (dist >= 3)
        npk, pk = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
        if npk <= 2:
            if area >= 2 * min_px:
                single = mask.astype(np.int32)
                single = _colour_refine(single, mask, lg[y0:y1, x0:x1], min_px=min_px, params=params)
                single = _edge_refine(single, mask, grad[y0:y1, x0:x1], min_px=min_px, level=edge_level)
                if single.max() > 1:
                    single = _merge_convex(single, lg[y0:y1, x0:x1], min_px=min_px, max_gap=merge_gap, params=params)
                next_id = _write_pieces(out[y0:y1, x0:x1], single, mask, next_id)
                continue
            out[y0:y1, x0:x1][mask] = next_id
            next_id += 1
            continue
        markers = pk.astype(np.int32) + 1  # peaks 2.., background 1
        markers[~peaks & mask] = 0
        markers[~mask] = 1
        ws = cv2.watershed(np.ascontiguousarray(image8[y0:y1, x0:x1]), markers)
        wf = ws.astype(np.float32)
        wf[ws < 0] = 0
        ws = np.where(ws < 0, cv2.dilate(wf, np.ones((3, 3), np.uint8)), wf).astype(np.int32)
        ws[~mask] = 1
        k = int(ws.max()) + 1
        # each piece's deepest point (a per-label maximum by a histogram of quarter pixels)
        levels = np.minimum(dist * 4, 1023).astype(np.int64).ravel()
        hist = np.bincount(ws.ravel().astype(np.int64) * 1024 + levels, minlength=k * 1024).reshape(k, 1024) > 0
        peak_value = (1023 - np.argmax(hist[:, ::-1], axis=1)) / 4.0
        # joins: mean distance along the border between two bulges vs the smaller bulge's peak
        bulges = _DisjointSet(k)

        pairs = []
        for wa, wb, d1, d2 in (
            (ws[:, :-1], ws[:, 1:], dist[:, :-1], dist[:, 1:]),
            (ws[:-1], ws[1:], dist[:-1], dist[1:]),
        ):
            diff = (wa != wb) & (wa > 1) & (wb > 1)
            lo, hi = np.minimum(wa[diff], wb[diff]), np.maximum(wa[diff], wb[diff])
            pairs.append((lo.astype(np.int64) * k + hi, np.minimum(d1[diff], d2[diff])))
        codes = np.concatenate([p[0] for p in pairs])
        # each piece's commonest colour (a mode per channel: stripes and highlights do not count);
        # pieces of clearly different colours stay apart even without a neck between them
        color = _modes(lg[y0:y1, x0:x1].reshape(1, -1, 3), axis=1, bins=48, line_index=ws.ravel(), lines=k)
        color = color.reshape(k, 3)
        if len(codes):
            vals = np.concatenate([p[1] for p in pairs])
            uniq, inv = np.unique(codes, return_inverse=True)
            border_max = np.zeros(len(uniq))
            np.maximum.at(border_max, inv, vals)
            order = np.argsort(
                -border_max / np.maximum([min(peak_value[c // k], peak_value[c % k]) for c in uniq], 1e-3)
            )
            for i in order:
                a, b = int(uniq[i] // k), int(uniq[i] % k)
                ra, rb = bulges.find(a), bulges.find(b)
                if ra == rb:
                    continue
                if (
                    border_max[i] >= neck * min(peak_value[ra], peak_value[rb])
                    and np.abs(color[ra] - color[rb]).sum() <= max_color_dist
                ):
                    bulges.attach(rb, ra)
                    peak_value[ra] = max(peak_value[ra], peak_value[rb])
        roots = np.array(bulges.roots())
        merged = roots[ws]
        merged[~mask] = 0
        stray = mask & (merged == 1)  # flooded from outside the blob: give it to the nearest piece
        if stray.any() and (mask & ~stray).any():
            _, near = cv2.distanceTransformWithLabels(
                (merged <= 1).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
            )
            owner = np.zeros(int(near.max()) + 1, np.int32)
            seeds = merged > 1
            owner[near[seeds]] = merged[seeds]
            merged[stray] = owner[near[stray]]
        merged = _colour_refine(merged, mask, lg[y0:y1, x0:x1], min_px=min_px, params=params)
        merged = _edge_refine(merged, mask, grad[y0:y1, x0:x1], min_px=min_px, level=edge_level)
        merged = _merge_convex(merged, lg[y0:y1, x0:x1], min_px=min_px, max_gap=merge_gap, params=params)
        next_id = _write_pieces(out[y0:y1, x0:x1], merged, mask, next_id)
    return out


def _write_pieces(out, pieces, mask, next_id: int) -> int:
    """Write the pieces (labels 1.. inside `mask`, 0 outside it) into `out` as next_id, next_id +
    1, ... in the order of their labels; returns the next free id. (One lookup instead of a
    comparison of the whole crop per piece.)"""
    import numpy as np

    ids = np.flatnonzero(np.bincount(pieces[mask]))
    ids = ids[ids > 0]
    lut = np.zeros(int(pieces.max()) + 1, np.int32)
    lut[ids] = np.arange(next_id, next_id + len(ids))
    inside = pieces > 0
    out[inside] = lut[pieces[inside]]
    return next_id + len(ids)


def _colour_refine(labels, mask, lg, *, min_px: float, params: OfflineParams = P):
    """Pieces (labels 1.. inside `mask`) cut further along colour: the blob's pixels are
    clustered by colour (k-means in log chroma + damped log brightness, centres closer than
    params.colour_merge joined), the cluster map is cleaned (median) and each piece is cut into its
    connected colour regions; regions smaller than a quarter of `min_px` go to the nearest
    larger region. _merge_convex then joins what belongs to one item."""
    import cv2
    import numpy as np

    px = lg[mask]
    if len(px) < 50:
        return labels
    # features: log chroma (each channel minus the brightness) and damped brightness, as one
    # matrix product (NumPy broadcasting over 3 channels is slow)
    feat = px @ _colour_features(params=params)
    step = max(1, len(feat) // params.colour_samples)
    sample = np.ascontiguousarray(feat[::step])
    k = min(params.colour_k, len(sample) // 20)
    if k < 2:
        return labels
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1e-3)
    cv2.setRNGSeed(1)
    _, _, centres = cv2.kmeans(sample, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
    # join close centres (union-find on L1 distance)
    group = list(range(k))
    for i in range(k):
        for j in range(i + 1, k):
            if np.abs(centres[i] - centres[j]).sum() < params.colour_merge:
                gi, gj = group[i], group[j]
                group = [gi if g == gj else g for g in group]
    if len(set(group)) < 2:
        return labels
    # nearest centre: argmin of |c|^2 - 2 f.c (|f|^2 is the same for every centre)
    d = (centres * centres).sum(axis=1)[None, :] - 2 * (feat @ centres.T)
    cl = np.asarray(group)[np.argmin(d, axis=1)]
    cmap = np.zeros(mask.shape, np.uint8)
    cmap[mask] = cl.astype(np.uint8) + 1
    cmap = cv2.medianBlur(cmap, 5)
    cmap[~mask] = 0
    cmap[mask & (cmap == 0)] = 1
    combo = np.zeros(mask.shape, np.int32)
    combo[mask] = labels[mask] * 8 + cmap[mask]
    # connected regions of each (piece, colour) pair: one labelling of the pixels whose
    # 4-neighbours all carry the same code (the one-pixel seams between codes go to the
    # nearest region below, with the regions too small to stand alone)
    same = mask.copy()
    same[:, 1:] &= combo[:, 1:] == combo[:, :-1]
    same[:, :-1] &= combo[:, :-1] == combo[:, 1:]
    same[1:] &= combo[1:] == combo[:-1]
    same[:-1] &= combo[:-1] == combo[1:]
    n_c, cc, cc_area = _components(same.astype(np.uint8), 4)
    keep = cc_area >= 0.25 * min_px
    keep[0] = False
    remap = np.zeros(n_c, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    out = remap[cc]
    nxt = int(keep.sum()) + 1
    if nxt <= 2:
        return labels
    small = mask & (out == 0)
    if small.any():
        _, near = cv2.distanceTransformWithLabels(
            (out == 0).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
        )
        owner = np.zeros(int(near.max()) + 1, np.int32)
        seeds = out > 0
        owner[near[seeds]] = out[seeds]
        out[small] = owner[near[small]]
    return out


def _edge_refine(labels, mask, grad, *, min_px: float, level: float):
    """Pieces (labels 1.. inside `mask`) cut along closed sharp edges inside the blob: where a
    same-coloured item lies on another, the upper one's outline (and its contact shadow) crosses
    the lower one. Pieces an edge does not cut through stay whole; regions smaller than a quarter
    of `min_px` (and the edge pixels) go to the nearest larger region. _merge_convex joins again
    what an item's own lines (grooves, seams, tape) cut."""
    import cv2
    import numpy as np

    k3 = np.ones((3, 3), np.uint8)
    inner = cv2.erode(mask.astype(np.uint8), k3) > 0
    cut = mask & ~(inner & (grad > level))
    same = cut.copy()
    same[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    same[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    same[1:] &= labels[1:] == labels[:-1]
    same[:-1] &= labels[:-1] == labels[1:]
    n_c, cc, cc_area = _components(same.astype(np.uint8), 4)
    keep = cc_area >= 0.25 * min_px
    keep[0] = False
    n_keep = int(keep.sum())
    if n_keep <= np.count_nonzero(np.bincount(labels[mask])):  # (the number of labels in the blob)
        return labels  # nothing was cut
    remap = np.zeros(n_c, np.int32)
    remap[keep] = np.arange(1, n_keep + 1)
    out = remap[cc]
    rest = mask & (out == 0)
    if rest.any():
        _, near = cv2.distanceTransformWithLabels(
            (out == 0).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
        )
        owner = np.zeros(int(near.max()) + 1, np.int32)
        seeds = out > 0
        owner[near[seeds]] = out[seeds]
        out[rest] = owner[near[rest]]
    return out


def _cut_at_defects(inst, lg, *, min_px: float, params: OfflineParams = P):
    """Instance labels with items cut along the straight line between two notches of their
    outline when that leaves two convex pieces: two items of one paint that touch or lie on each
    other without a neck, which the colour and edge cuts cannot part, leave a notch where their
    outlines cross. One end of the cut must be a notch open to the belt (a notch filled by
    another item is that item lying over this one, and cutting there would split an occluded
    item); the other may also face another item (a pile). A cut is kept when both pieces are
    about convex (params.defect_piece_solidity) and together keep at most params.defect_gap_left of the whole's
    concavity, and when the pieces' commonest colours differ by at most params.defect_one_paint (a
    cut between two paints is the colour cut's to make: a convex-looking cut through a pile of
    several paints can give one item's half to another); of several, the one that removes the
    most concavity."""
    import cv2
    import numpy as np

    h, w = inst.shape
    counts = np.bincount(inst.ravel())
    todo = {}  # label -> (x0, y0, x1, y1, cuts so far)
    for r in np.flatnonzero(counts >= 2 * min_px).tolist():
        if r > 0:
            m = inst == r
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            todo[r] = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, 0)
    out = inst
    next_id = int(inst.max()) + 1
    queue = list(todo)
    while queue:
        r = queue.pop()
        x0, y0, x1, y1, cuts = todo[r]
        if cuts >= params.defect_cuts:
            continue
        x0, y0, x1, y1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
        crop = out[y0:y1, x0:x1]
        piece = (crop == r).astype(np.uint8)
        area = float(cv2.countNonZero(piece))
        contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if area < 2 * min_px or not contours:
            continue
        gap = _contours_hull_gap(contours, area)
        if area >= params.defect_solidity * (area + gap):
            continue
        cnt = max(contours, key=cv2.contourArea)
        if len(cnt) < 5:
            continue
        try:
            defects = cv2.convexityDefects(cnt, cv2.convexHull(cnt, returnPoints=False))
        except cv2.error:  # a self-touching outline
            continue
        if defects is None:
            continue
        min_depth = max(2.5, params.defect_depth * math.sqrt(area / math.pi))
        notches = [
            (int(cnt[d[2]][0][0]), int(cnt[d[2]][0][1])) for d in defects.reshape(-1, 4) if d[3] / 256.0 >= min_depth
        ]
        if len(notches) < 2:
            continue
        others = (crop > 0) & (piece == 0)
        rr = params.defect_free
        blocked = [
            bool(others[max(0, py - rr) : py + rr + 1, max(0, px - rr) : px + rr + 1].any()) for px, py in notches
        ]
        notches = [
            p for _, p in sorted(zip(blocked, notches, strict=False), key=lambda pair: pair[0])
        ]  # open ones first
        n_free = blocked.count(False)
        cands: list[Any] = []
        for i in range(n_free):
            for j in range(i + 1, len(notches)):
                cut = piece.copy()
                cv2.line(cut, notches[i], notches[j], 0, 2)
                n_p, plab, pst, _ = cv2.connectedComponentsWithStats(cut, connectivity=4)
                if n_p < 3:
                    continue
                big = np.argsort(-pst[1:, cv2.CC_STAT_AREA])[:2] + 1
                if pst[big[1], cv2.CC_STAT_AREA] < min_px:
                    continue
                left = 0.0
                for b in big:
                    pa, pg = _hull_gap(plab == b)
                    if pa < params.defect_piece_solidity * (pa + pg):
                        break
                    left += pg
                else:
                    if left <= params.defect_gap_left * gap:
                        cands.append((left, len(cands), plab, big))
        best = None
        for left, _, plab, big in sorted(cands, key=lambda c: c[:2]):
            sel = (plab == big[0]) | (plab == big[1])
            paint = _modes(
                lg[y0:y1, x0:x1][sel][None], axis=1, bins=48, line_index=(plab[sel] == big[1]).astype(np.int64), lines=2
            ).reshape(2, 3)
            if _paint_distance(paint[0] - paint[1], params=params) > params.defect_one_paint:
                continue
            best = (left, plab, big)
            break
        if best is None:
            continue
        _, plab, big = best
        if out is inst:
            out = inst.copy()
            crop = out[y0:y1, x0:x1]
        # each pixel of the item (the cut line and specks included) goes to the nearer piece
        d0 = cv2.distanceTransform((plab != big[0]).astype(np.uint8), cv2.DIST_L2, 3)
        d1 = cv2.distanceTransform((plab != big[1]).astype(np.uint8), cv2.DIST_L2, 3)
        crop[(piece > 0) & (d1 < d0)] = next_id
        for q in (r, next_id):
            qy, qx = np.nonzero(crop == q)
            todo[q] = (int(qx.min()) + x0, int(qy.min()) + y0, int(qx.max()) + x0 + 1, int(qy.max()) + y0 + 1, cuts + 1)
            queue.append(q)
        next_id += 1
    return out
