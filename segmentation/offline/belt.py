"""The belt model: what the empty belt would look like at each pixel.

Without a reference, row profile + column profile + smooth residual in log intensity, along the
belt's running direction; with a camera's empty-scene reference, that reference corrected for the
change of light. See docs/offline-detector-method.md, step 1.
"""

from __future__ import annotations

from segmentation.offline.arrays import _masked_blur
from segmentation.offline.evidence import _evidence, _thresholds
from segmentation.offline.params import DEFAULT as P
from segmentation.offline.params import OfflineParams


def _modes(x, axis: int, bins: int = 96, line_index=None, lines: int | None = None, weights=None):
    """Per row (axis=1) or column (axis=0) of x (H x W x 3), the most frequent value of each
    channel: the belt is the commonest single level of a line across it even when items cover
    more of the line than belt does (they spread over many levels, the belt over a few)."""
    import numpy as np

    if line_index is None:  # one line per row (axis=1) or column (axis=0) of x
        height, width, channels = x.shape
        if axis == 0:
            # (pixels in x's own order, not transposed: each column's pixels still come top to
            # bottom, so every bin adds up the same values in the same order, without a copy)
            lines, line_index = width, np.tile(np.arange(width), height)
        else:
            lines, line_index = height, np.repeat(np.arange(height), width)
    else:  # x is 1 x N x 3, grouped by line_index (labels)
        channels = x.shape[2]
    assert lines is not None
    wt = None
    if weights is not None:
        wt = weights.ravel().astype(np.float64)
    # each line's histogram has an empty bin at either end, so the three-bin windows are sums of
    # shifted views (the same additions, in the same order, as with the ends handled apart), and
    # the windows of the sums are only added up at the chosen bin
    slots = bins + 2
    base = line_index * slots + 1
    rows = np.arange(lines)
    out = np.empty((lines, channels), np.float32)
    for c in range(channels):
        v = x[..., c].ravel()
        lo, hi = float(v.min()), float(v.max())
        if hi - lo < 1e-6:
            out[:, c] = lo
            continue
        codes = base + ((v - lo) * ((bins - 1) / (hi - lo))).astype(np.int32)
        counts = np.bincount(codes, weights=wt, minlength=lines * slots).reshape(lines, slots).astype(np.float32)
        sums = np.bincount(codes, weights=v if wt is None else v * wt, minlength=lines * slots).reshape(lines, slots)
        c3 = counts[:, 1:-1] + counts[:, :-2]
        c3 += counts[:, 2:]
        best = np.argmax(c3, axis=1)
        s3 = sums[rows, best + 1] + sums[rows, best] + sums[rows, best + 2]
        out[:, c] = s3 / np.maximum(c3[rows, best], 1e-9)
    return out[:, None, :] if axis == 1 else out[None, :, :]


def _runs_vertically(lg, *, params: OfflineParams = P) -> bool:
    """Whether the belt runs along y: a belt is constant along its running direction, so the
    profile across it (modes per column for a vertical belt) explains more of the image."""
    import numpy as np

    h, w = lg.shape[:2]
    sx, sy = max(1, w // params.belt_samples_x), max(1, h // params.belt_samples_y)
    sample = lg[::sy, ::sx]
    along_x = np.abs(sample - _modes(sample, axis=1))  # residual of a per-row profile
    along_y = np.abs(sample - _modes(sample, axis=0))  # residual of a per-column profile
    # the mean, not the median: the rails are a minority of the pixels, but a profile that
    # misses them leaves large residuals there
    return float(along_y.mean()) < float(along_x.mean())


def _belt_model(lg, *, params: OfflineParams = P):
    """Profile across the belt + profile along it (modes) + smooth residual. A belt running
    along y is modelled transposed."""
    import numpy as np

    if _runs_vertically(lg, params=params):
        model, fg = _belt_model_rows(np.ascontiguousarray(lg.transpose(1, 0, 2)), params=params)
        return np.ascontiguousarray(model.transpose(1, 0, 2)), np.ascontiguousarray(fg.T)
    return _belt_model_rows(lg, params=params)


def _outer_sum(rows, cols):
    """rows (H x 1 x 3) + cols (1 x W x 3) as an H x W x 3 image (OpenCV's replication is several
    times faster than NumPy broadcasting over a last axis of 3)."""
    import cv2

    size = (cols.shape[1], rows.shape[0])
    out = cv2.resize(rows, size, interpolation=cv2.INTER_NEAREST)
    out += cv2.resize(cols, size, interpolation=cv2.INTER_NEAREST)
    return out


def _foreground(lg, model):
    """Pixels that differ from the model by more than the noise thresholds, dilated."""
    import cv2
    import numpy as np

    m, cd = _evidence(lg, model)
    tm, tc = _thresholds(m, cd)
    return cv2.dilate(((np.abs(m) > tm) | (cd > tc)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def _belt_model_rows(lg, *, params: OfflineParams = P):
    """Row profile + column profile (modes) + smooth residual, for a belt running along x."""
    import numpy as np

    h, w = lg.shape[:2]
    sx, sy = max(1, w // params.belt_samples_x), max(1, h // params.belt_samples_y)
    x_rows, x_cols = lg[:, ::sx], lg[::sy]  # the samples the profiles are taken from
    # pixels of the belt's own chroma count fully in the profiles, others (items) little, so a
    # line mostly covered by coloured items still gets the belt's level
    chroma = _belt_chroma(x_cols)
    w_rows = _belt_chroma_weights(x_rows, chroma, params=params)
    w_cols = _belt_chroma_weights(x_cols, chroma, params=params)
    rows = _modes(x_rows, axis=1, weights=w_rows)
    cols = _modes(x_cols - rows[::sy], axis=0, weights=w_cols)
    profiles = _outer_sum(rows, cols)
    fg = _foreground(lg, profiles)
    # lines mostly covered by items, or whose commonest level is an item's (a white parcel is
    # flatter than the belt's texture): interpolated from the lines around them
    bad_rows, bad_cols = fg[:, ::sx].mean(axis=1) > 0.45, fg[::sy].mean(axis=0) > 0.45
    if bad_rows.any() or bad_cols.any():
        rows = _interpolate_unreliable(rows, bad_rows, axis=0, params=params)
        cols = _interpolate_unreliable(cols, bad_cols, axis=1, params=params)
        profiles = _outer_sum(rows, cols)
        fg = _foreground(lg, profiles)
    model = profiles + _masked_blur(lg - profiles, (~fg).astype(np.float32), sigma=max(h, w) / 10)
    return model, fg


def _chroma(x):
    """Log chroma (R - G, B - G of the log image) of an H x W x 3 array, H x W x 2."""
    import numpy as np

    return np.stack([x[..., 0] - x[..., 1], x[..., 2] - x[..., 1]], axis=-1)


def _belt_chroma(x):
    """The belt's chroma: the commonest chroma of x (log image)."""
    return _modes(_chroma(x).reshape(1, -1, 2), axis=1).reshape(2)


def _belt_chroma_weights(x, mode, *, params: OfflineParams = P):
    """Per pixel of x (log image), 1 for the belt's chroma `mode` falling towards 0.05 away from it."""
    import numpy as np

    green = x[..., 1]
    dr = x[..., 0] - green - np.float32(mode[0])
    db = x[..., 2] - green - np.float32(mode[1])
    return np.exp((dr * dr + db * db) * np.float32(-1 / params.belt_chroma_sigma**2)) + np.float32(0.05)


def _interpolate_unreliable(profile, bad, axis: int, *, params: OfflineParams = P):
    """`profile` (H x 1 x 3 or 1 x W x 3) with the entries flagged `bad` linearly interpolated
    from the good ones (unchanged when too few are good). A run of bad lines between two good
    lines of clearly different levels (a rail and the belt) stays as it is: the level between
    them is unknown."""
    import numpy as np

    if not bad.any() or bad.mean() > 0.7:
        return profile
    flat = profile.reshape(-1, 3).copy()
    idx = np.arange(len(flat))
    good = ~bad
    fill = bad.copy()
    starts = np.flatnonzero(bad & ~np.concatenate([[False], bad[:-1]]))
    ends = np.flatnonzero(bad & ~np.concatenate([bad[1:], [False]])) + 1
    for a, b in zip(starts, ends, strict=False):
        if a > 0 and b < len(flat) and np.abs(flat[a - 1] - flat[b]).mean() > params.interpolate_max_step:
            fill[a:b] = False
    for c in range(3):
        flat[fill, c] = np.interp(idx[fill], idx[good], flat[good, c])
    return flat.reshape(profile.shape)


def _reference_model(lg, lr):
    """The reference image's log `lr` (filtered like the image's, `lg`), corrected for the change
    of light between the two photos."""
    import cv2
    import numpy as np

    d = lg - lr
    h, w = lg.shape[:2]
    offset = np.median(d[::2, ::2].reshape(-1, 3), axis=0)
    model = lr + offset
    for _ in range(2):
        m, cd = _evidence(lg, model)
        tm, tc = _thresholds(m, cd)
        fg = (np.abs(m) > tm) | (cd > tc)
        fg = cv2.dilate(fg.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        model = lr + _masked_blur(d, (~fg).astype(np.float32), sigma=max(h, w) / 8)
    return model
