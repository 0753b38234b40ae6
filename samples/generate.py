"""Draw the synthetic conveyor-belt photos in this folder (seeded, so reruns give the same files).

    python samples/generate.py

A dark rubber belt with seams and metal side rails under uneven light, carrying suitcases
and bags (rounded boxes in plain colours with handles and shadows). These are demo inputs
for local emulation; they are not photographs and carry no licence restrictions.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
COLOURS = {
    "red": (178, 34, 34), "blue": (30, 70, 160), "green": (40, 120, 60), "yellow": (220, 190, 40),
    "black": (25, 25, 28), "orange": (230, 120, 30), "purple": (110, 50, 140), "gray": (128, 128, 130),
}


def belt(width: int, height: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (width, height), (48, 48, 52))
    draw = ImageDraw.Draw(image)
    rail = height // 12
    draw.rectangle((0, 0, width, rail), fill=(150, 152, 158))
    draw.rectangle((0, height - rail, width, height), fill=(150, 152, 158))
    for x in range(rng.randrange(60, 120), width, rng.randrange(180, 260)):
        draw.line((x, rail, x, height - rail), fill=(38, 38, 41), width=3)
    light = Image.linear_gradient("L").rotate(90).resize((width, height))
    return Image.composite(image, Image.eval(image, lambda v: int(v * 0.7)), light)


def luggage(image: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    shadow = Image.new("L", image.size, 0)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(shadow).rounded_rectangle((x0 + 10, y0 + 12, x1 + 10, y1 + 12), radius=18, fill=110)
    image.paste((10, 10, 12), mask=shadow.filter(ImageFilter.GaussianBlur(8)))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle(box, radius=18, fill=colour, outline=tuple(max(0, c - 40) for c in colour), width=4)
    handle_w = (x1 - x0) // 4
    cx = (x0 + x1) // 2
    draw.rounded_rectangle((cx - handle_w, y0 + 8, cx + handle_w, y0 + 24), radius=6, fill=(20, 20, 20))


def scene(seed: int, count: int, size: tuple[int, int] = (1280, 720)) -> Image.Image:
    rng = random.Random(seed)
    image = belt(*size, rng)
    width, height = size
    slot = width // count
    for index in range(count):
        w, h = rng.randrange(160, slot - 20), rng.randrange(180, int(height * 0.6))
        x0 = index * slot + rng.randrange(10, slot - w)
        y0 = rng.randrange(height // 12 + 10, height - height // 12 - h - 10)
        luggage(image, (x0, y0, x0 + w, y0 + h), rng.choice(list(COLOURS.values())))
    return image


if __name__ == "__main__":
    for seed, count in ((1, 3), (2, 4), (3, 2)):
        scene(seed, count).save(HERE / f"belt-{seed:02d}.jpg", quality=85)
        print(f"wrote belt-{seed:02d}.jpg")
