"""The analysis of one working-resolution image: belt model, evidence, watershed regions, shadows,
splitting and joining, then the scored instances and the scene check's measures.
"""

from __future__ import annotations

from segmentation.offline.arrays import (
    _border,
    _components,
    _DisjointSet,
    _hull_gap,
    _label_boxes,
    _log,
    _log_tables,
    _mat,
    _median,
    _noise,
    _nonzero,
)
from segmentation.offline.belt import _belt_model, _reference_model
from segmentation.offline.colour import _belt_area, _colors, _illumination
from segmentation.offline.evidence import _belt_borders, _evidence, _fill_holes, _thresholds
from segmentation.offline.instances import _Analysis, _calibrated_score, _Instance, _shape
from segmentation.offline.joining import _join_across_gaps, _join_occluded
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams
from segmentation.offline.scene import SceneCheck, _quarter_misfit
from segmentation.offline.splitting import _cut_at_defects, _split_touching


def _analyze(work, ref, *, min_area: float, params: OfflineParams = P) -> _Analysis:
    import cv2
    import numpy as np

    h, w = work.shape[:2]
    blurred = cv2.GaussianBlur(work, (0, 0), 1.0)
    lg = _log(blurred, params=params)
    if ref is not None:
        model = _reference_model(lg, _log(cv2.GaussianBlur(ref, (0, 0), 1.0), params=params))
    else:
        model = _belt_model(lg, params=params)[0]
    m, cd = _evidence(lg, model)
    tm, tc = _thresholds(m, cd)
    misfit = _quarter_misfit(m, cd)

    # gradient of the log image (max over channels)
    gx = cv2.Sobel(lg, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lg, cv2.CV_32F, 0, 1, ksize=3)
    g2 = np.multiply(gx, gx, out=gx)
    g2 += np.multiply(gy, gy, out=gy)
    # (the channels split by OpenCV: NumPy is slow on a last axis of 3)
    grad, g2_1, g2_2 = cv2.split(g2)
    np.maximum(grad, g2_1, out=grad)
    np.maximum(grad, g2_2, out=grad)
    grad = np.sqrt(grad, out=grad)
    grad /= 8  # per-pixel log step

    beltlike = (np.abs(m) < tm) & (cd < tc)
    notbelt = ~beltlike
    strong = (m > 2 * tm) | (m < -0.45) | (cd > 2 * tc)
    flat = grad < max(0.035, 2.5 * _noise(grad) + float(_median(grad[::3, ::3])))

    # markers: 1 = belt, 2.. = flat patches of foreground
    k3 = np.ones((3, 3), np.uint8)
    belt_marker = beltlike & flat
    belt_marker &= cv2.dilate(notbelt.astype(np.uint8), k3) == 0
    # strong markers: clearly not belt (colour, brighter, much darker), textured or not;
    # weak markers: flat patches that are only somewhat darker (a shadow or a dark item)
    strong_u8 = strong.astype(np.uint8)
    strong_core = cv2.erode(strong_u8, k3)
    weak_core = cv2.erode(
        (notbelt & flat & (cv2.dilate(strong_u8, np.ones((5, 5), np.uint8)) == 0)).astype(np.uint8), k3
    )
    markers = np.zeros((h, w), np.int32)
    next_label = 2
    min_marker = max(6, int(0.00006 * h * w))
    for core in (strong_core, weak_core):
        n_core, core_labels, core_area = _components(core, 4)
        keep = np.zeros(n_core, bool)
        keep[1:] = core_area[1:] >= min_marker
        # a marker must be thick: at least a 5x5 block of the core (painted strokes are thinner)
        thick = cv2.erode(core, np.ones((5, 5), np.uint8))
        keep &= np.bincount(core_labels[thick > 0], minlength=n_core) > 0
        keep[0] = False
        remap = np.zeros(n_core, np.int32)
        remap[keep] = np.arange(next_label, next_label + keep.sum())
        next_label += int(keep.sum())
        core_markers = remap[core_labels]
        markers = np.where(core_markers > 0, core_markers, markers)
    markers[belt_marker] = 1

    image8 = cv2.LUT(blurred, _log_tables(params=params)["image8"])  # = clip((lg - log K) * scale, 0, 255) as uint8
    labels = cv2.watershed(image8, markers)
    lab_f = labels.astype(np.float32)
    ridge = labels < 0
    lab_f[ridge] = 0
    labels = np.where(ridge, cv2.dilate(lab_f, k3), lab_f).astype(np.int32)
    labels[labels < 1] = 1
    n = int(labels.max()) + 1

    # region statistics (of the foreground regions only: the belt, label 1, is most pixels)
    in_region = labels > 1
    region = labels[in_region]
    area = np.bincount(region, minlength=n).astype(np.float64)
    strong_frac = np.bincount(region, weights=strong[in_region], minlength=n) / np.maximum(area, 1)
    m_mean = np.bincount(region, weights=m[in_region], minlength=n) / np.maximum(area, 1)
    cd_mean = np.bincount(region, weights=cd[in_region], minlength=n) / np.maximum(area, 1)

    length, sharp = _belt_borders(labels, grad, n)

    regions = _DisjointSet(n)
    union = regions.union

    # 1) shadows: regions darker than the belt and colourless whose border with the belt is soft
    # (plain Python floats in the loop: NumPy scalars are slow one at a time)
    area_l, length, sharp = area.tolist(), length.tolist(), sharp.tolist()
    strong_frac, m_mean, cd_mean = strong_frac.tolist(), m_mean.tolist(), cd_mean.tolist()
    for r in range(2, n):
        if area_l[r] == 0:
            continue
        ln, sh = length[r], sharp[r]
        shadowish = -params.shadow_max_depth * tm < m_mean[r] < 0 and cd_mean[r] < 1.5 * tc and strong_frac[r] < 0.5
        if shadowish and ln > 0 and sh < 0.12:
            union(1, r)
        elif strong_frac[r] < 0.15 and abs(m_mean[r]) < 1.2 * tm and cd_mean[r] < 1.2 * tc:
            union(1, r)  # faint, belt-like: noise, wear, dirt

    groups = np.array(regions.roots(), np.int32)
    fg = groups[labels] != 1

    # 2) the items' outline: fill holes (belt-coloured parts of an item), cut thin bridges
    fg = _fill_holes(fg, max_hole=0.05 * h * w)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, k3)
    # 3) separate touching and overlapping items: one marker per bulge of the distance
    #    transform, flooded by colour, bulges joined again unless a neck separates them
    edge_level = params.edge_level
    inst = _split_touching(
        fg, image8, lg, grad, min_px=max(20, 0.3 * min_area * h * w), edge_level=edge_level, params=params
    )
    # 4) join the parts of an item that a strap, a seam-coloured band or another item cut apart
    inst = _join_across_gaps(inst, lg, params=params)
    # 5) cut items of one paint that touch without a neck at the notches where their outlines cross
    inst = _cut_at_defects(inst, lg, min_px=min_area * h * w, params=params)
    # 6) join touching parts of one paint whose union's hull adds no belt (an item cut by an occluder)
    inst = _join_occluded(inst, lg, min_px=min_area * h * w, params=params)

    # instances
    counts = np.bincount(inst.ravel())
    ids = np.flatnonzero(counts)
    counts = counts[ids]
    min_px = min_area * h * w
    belt_mask = inst == 0
    model_lum = cv2.transform(model, _mat([[1 / 3, 1 / 3, 1 / 3]]))
    belt_area = _belt_area(model_lum, h, w)
    neutral, light = _illumination(blurred, model_lum, belt_mask)
    instances = []
    boxes = _label_boxes(inst, int(ids[-1]) + 1)[0]
    for rid, cnt in zip(ids, counts, strict=False):
        if rid == 0 or cnt < min_px:
            continue
        bx0, by0, bx1, by1 = boxes[rid].tolist()
        cy0, cy1 = max(0, by0 - 1), min(h, by1 + 1)
        cx0, cx1 = max(0, bx0 - 1), min(w, bx1 + 1)
        crop = cv2.morphologyEx((inst[cy0:cy1, cx0:cx1] == rid).astype(np.uint8), cv2.MORPH_OPEN, k3) > 0
        ys, xs = _nonzero(crop)
        if len(ys) < min_px:
            continue
        ys, xs = ys + cy0, xs + cx0
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        sub = crop[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
        dist = cv2.distanceTransform(
            cv2.copyMakeBorder(sub.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0), cv2.DIST_L2, 3
        )
        if dist.max() < 3.0:  # a stroke, not an object
            continue
        contrast = float(np.abs(m[y0:y1, x0:x1][sub]).mean() + cd[y0:y1, x0:x1][sub].mean())
        edge = float(np.mean(grad[y0:y1, x0:x1][_border(sub)]))
        # share of the outline that borders the belt (a piece of a wrongly split item borders
        # its other pieces along much of its outline)
        py0, px0, py1, px1 = max(0, y0 - 1), max(0, x0 - 1), min(h, y1 + 1), min(w, x1 + 1)
        around = inst[py0:py1, px0:px1]
        own = np.zeros(around.shape, bool)
        own[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0] = sub
        ring = (cv2.dilate(own.astype(np.uint8), k3) > 0) & ~own
        belt_frac = float(np.mean(around[ring] == 0)) if ring.any() else 1.0
        area_px, gap = _hull_gap(sub)
        solidity = area_px / (area_px + gap)
        features = (contrast / (tm + tc), edge, len(ys) / (h * w), float(dist.max()), belt_frac, solidity)
        score = max(0.0001, round(float(_calibrated_score(*features, params=params)), 4))
        colors = _colors(blurred[y0:y1, x0:x1], sub, beltlike[y0:y1, x0:x1], neutral, light[y0:y1, x0:x1])
        elong, angle = _shape(ys, xs)
        instances.append(
            _Instance(
                mask=sub,
                box=(x0, y0, x1, y1),
                score=score,
                color=colors[0][0] if colors else "gray",
                colors=colors,
                belt_share=len(ys) / max(belt_area, 1),
                elongation=elong,
                angle=angle,
                fill=len(ys) / float(sub.size),
                features=features,
            )
        )
    instances.sort(key=lambda i: -i.score)
    scene = SceneCheck(misfit=misfit, unsure=sum(1 for i in instances if i.score < 0.5), reference=ref is not None)
    return _Analysis(shape=(h, w), instances=instances, belt_area=belt_area, scene=scene)
