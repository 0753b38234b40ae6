"""Every tunable of the offline detector and the empty-belt gate, in one frozen object.

Chosen on the generator's "tuning" split (tools/belt_scenes.py), never on "heldout"; how each value
was chosen is in docs/offline-tuning-history.md. `DEFAULT` is what the detector and the gate use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfflineParams:
    # detector
    work_side: int = 448  # pixels: longest side of the copy the analysis runs on
    min_area: float = 0.0015  # share of the image: the smallest item reported
    max_items: int = 50  # detections per image at most, most confident first
    log_offset: float = 8.0  # added to 0-255 intensities before the log: keeps dark-pixel noise bounded

    # belt model (belt.py)
    belt_samples_x: int = 100  # samples per row the belt's column profile is taken from
    belt_samples_y: int = 72  # samples per column the belt's row profile is taken from
    belt_chroma_sigma: float = 0.12  # log-chroma distance at which a pixel counts ~1/3 in the belt profiles
    interpolate_max_step: float = 0.3  # log brightness: a run of lines between levels this far apart is kept

    # shadows (analysis.py)
    shadow_max_depth: float = 3.0  # noise thresholds: a colourless region darker than this is an item, not a shadow
    edge_level: float = 0.05  # log step per pixel of an edge that may cut a piece

    # splitting touching items (splitting.py)
    split_neck: float = 0.72  # bulges join when the ridge between them reaches this share of the lower peak (no neck)
    split_max_color_dist: float = 0.35  # L1 log colour: bulges without a neck within this are one item
    split_merge_gap: float = 0.15  # hull gap a join of bulges may add, relative to the smaller bulge
    colour_k: int = 6  # k-means clusters of a blob's colours (before close centres are joined)
    colour_samples: int = 2000  # pixels the colour clusters are fitted on
    colour_lum_weight: float = 0.25  # weight of log brightness against log chroma in the clusters
    colour_merge: float = 0.5  # L1 log units: cluster centres this close are one colour
    defect_solidity: float = 0.9  # only items less convex than this (area / hull area) are cut at notches
    defect_depth: float = 0.15  # share of the item's equivalent radius: a notch this deep may end a cut
    defect_free: int = 2  # working pixels: a notch with no other item this close is open to the belt
    defect_piece_solidity: float = 0.85  # both pieces of a cut must be at least this convex
    defect_gap_left: float = 0.6  # share of the whole's hull gap the two pieces may keep between them
    defect_cuts: int = 2  # cuts per item at most
    defect_one_paint: float = 0.8  # paint distance: the two pieces' commonest colours differ by at most this

    # joining pieces into items (joining.py)
    merge_max_gap: float = 0.15  # hull gap a join of one paint may add, relative to the smaller piece
    merge_max_gap_other: float = 0.07  # the same for pieces of different colours
    merge_lum_weight: float = 0.2  # weight of the brightness part of a paint distance
    max_color_dist: float = 0.5  # paint distance: pieces within this are one paint
    other_colour_max_concavity: float = 1.0  # pieces of different colours join only if their union is this convex
    patch_max_outline: float = 0.35  # ... and the smaller borders the belt along at most this share of its outline
    patch_max_foreign: float = 0.15  # ... and pieces of a third paint along at most this share of it
    gap_reach: int = 11  # working pixels: pieces up to this far apart may be one item
    gap_thin: int = 4  # belt strips narrower than 2 * gap_thin + 1 pixels inside an item's hull are straps or seams
    gap_max_concavity: float = 0.15  # wider belt inside the union's hull, relative to the smaller part, at most
    patch_inside: float = 0.7  # share of a piece's area inside the union's hull that makes it a patch of it
    occluded_one_paint: float = 0.3  # paint distance: parts cut by an occluder differ by at most this
    occluded_belt_gap: float = 0.05  # belt the union's hull may add, relative to the smaller part

    # confidence: logistic function of standardised features (contrast, edge, log area share,
    # thickness, belt-bordering outline share, solidity), fitted on tuning scenes
    cal_mu: tuple[float, ...] = (1.8881, 0.2705, -4.2708, 1.9435, 0.7113, 0.9199)  # feature means
    cal_sd: tuple[float, ...] = (0.5058, 0.0917, 1.0996, 0.8526, 0.2871, 0.0916)  # feature standard deviations
    cal_w: tuple[float, ...] = (0.5839, -0.2130, 0.2606, 0.7220, 0.8072, 0.4448)  # logistic weights
    cal_b: float = 0.7065  # logistic intercept

    # masks (instances.py)
    mask_smooth: float = 0.8  # working pixels: blur of the mask before it is scaled up
    mask_level: float = 0.75  # cut level of the scaled-up mask: sheds the soft edge and contact shadow

    # scene check (scene.py)
    scene_misfit_max: float = 0.08  # log units: the best-fitting quarter may be this far from the belt model
    scene_max_unsure: int = 11  # candidate regions below 0.5 confidence at most (more is clutter)

    # empty-belt gate (gate.py)
    gate_side: int = 320  # gate pixels: longest side of the copies compared
    gate_min_blob: float = 0.0005  # share of the image: a blob this large keeps a frame from being empty
    gate_max_camera_shift: float = 0.03  # share of the longest side: the largest camera shift registered away
    gate_envelope: int = 1  # gate pixels: a pixel matches the reference anywhere this close
    gate_belt_band_cover: float = 0.04  # a line belongs to the moving band when this share of it still differs
    gate_belt_band_min_lines: int = 8  # gate pixels: a narrower band is not a belt
    gate_periodic_match: float = 0.8  # a periodic belt: the shortest run whose match is this close to the best
    gate_opening: int = 5  # gate pixels: a blob must hold a square this wide (strokes, seams, bolts do not)
    gate_grow: int = 2  # gate pixels: the core takes in the not-belt pixels this close to it
    gate_holes: tuple[float, float] = (0.001, 0.01)  # image shares: enclosed matching areas this large are filled


DEFAULT = OfflineParams()
