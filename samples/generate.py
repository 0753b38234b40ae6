"""Draw the synthetic conveyor-belt photos in this folder (seeded, so reruns give the same files).

    .venv/bin/python samples/generate.py

Thin wrapper around `tools.belt_scenes` (the scene generator with exact ground truth that the
offline detector's tests and `python -m tools.eval_offline` use): a belt with seams, ribs, rails,
faded paint, uneven light and noise, carrying suitcases, bags and parcels that cast shadows,
some touching or overlapping, one of them black on the black belt. These are demo inputs for
local emulation; they are not photographs and carry no licence restrictions.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tools.belt_scenes import make_scene  # noqa: E402

# (file, scene index in the "samples" stream, number of items): picked to show the cases.
SAMPLES = (("belt-01.jpg", 1, 3), ("belt-02.jpg", 2, 5), ("belt-03.jpg", 3, 2))
MAX_BYTES = 80_000


def main() -> None:
    for name, index, count in SAMPLES:
        scene = make_scene("tuning", index, kind="belt", count=count, size=(1280, 720), salt="samples")
        for quality in (85, 80, 75, 70, 65):
            path = HERE / name
            scene.image.save(path, quality=quality, optimize=True)
            if path.stat().st_size <= MAX_BYTES:
                break
        print(f"wrote {name} ({path.stat().st_size // 1000} KB, {len(scene.items)} items)")


if __name__ == "__main__":
    main()
