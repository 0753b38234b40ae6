"""The weight-free lost-bag descriptor and its text counterpart: invariances, accents, text ranking,
and degenerate crops (pure functions, no servers)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segmentation.search.descriptor import DIM, describe
from segmentation.search.text import describe_text, text_terms


def crop(
    colour: tuple[int, int, int],
    *,
    aspect: float = 0.65,
    ribbon: tuple[int, int, int] | None = None,
    background: tuple[int, int, int] = (70, 70, 74),
    radius: float = 0.15,
    seed: int = 0,
) -> Image.Image:
    """A detector-style crop: a bag (rounded box, long side 200 px) on a belt with a 4 % margin,
    a little shading and sensor noise."""
    w, h = 200, int(200 * aspect)
    mx, my = 8, max(4, int(0.04 * h))
    im = Image.new("RGB", (w + 2 * mx, h + 2 * my), background)
    draw = ImageDraw.Draw(im)
    draw.rounded_rectangle((mx, my, mx + w, my + h), radius=int(radius * h), fill=colour)
    draw.rectangle((mx + 10, my + h // 2 - 12, mx + 18, my + h // 2 + 12), fill=(25, 25, 25))  # handle
    if ribbon is not None:
        draw.ellipse((mx + 24, my + h // 2 - 14, mx + 40, my + h // 2 + 14), fill=ribbon)
    a = np.asarray(im, np.float32)
    a *= np.linspace(0.9, 1.1, a.shape[1])[None, :, None]
    a += np.random.default_rng(seed).normal(0, 2, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def relit(im: Image.Image, gain: float, cast: tuple[float, float, float]) -> Image.Image:
    a = np.asarray(im, np.float32) * gain * np.array(cast, np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def rotated(im: Image.Image, angle: float, background: tuple[int, int, int] = (70, 70, 74)) -> Image.Image:
    """Rotated like a bag lying at another angle, re-cropped to the new box with a small margin."""
    big = im.rotate(angle, expand=True, resample=Image.Resampling.BILINEAR, fillcolor=background)
    return big


RED, BLUE, BLACK, GREEN = (190, 32, 36), (34, 74, 170), (24, 24, 27), (40, 130, 60)


@pytest.mark.parametrize(
    "change",
    [
        lambda im: relit(im, 0.65, (1, 1, 1)),
        lambda im: relit(im, 1.4, (1, 1, 1)),
        lambda im: relit(im, 1.0, (1.05, 1.0, 0.94)),
        lambda im: rotated(im, 90),
        lambda im: rotated(im, 33),
        lambda im: relit(rotated(im, 160), 0.8, (0.96, 1.0, 1.05)),
    ],
    ids=["darker", "brighter", "warm-cast", "quarter-turn", "tilted", "turned-and-relit"],
)
@pytest.mark.parametrize("colour, other", [(RED, BLUE), (BLUE, GREEN), (GREEN, RED)])
def test_one_bag_under_other_light_and_pose_stays_closer_than_a_bag_of_another_colour(change, colour, other):
    reference = describe(crop(colour))
    same = describe(change(crop(colour, seed=1)))
    different = describe(crop(other, seed=2))
    assert float(same @ reference) > float(different @ reference)


def test_a_darker_view_of_a_black_bag_stays_closer_than_a_grey_bag():
    reference = describe(crop(BLACK, background=(95, 95, 98)))
    same = describe(relit(crop(BLACK, background=(95, 95, 98), seed=1), 0.75, (1, 1, 1)))
    grey = describe(crop((140, 140, 142), background=(95, 95, 98), seed=2))
    assert float(same @ reference) > float(grey @ reference)


def test_a_ribbon_changes_the_vector_and_finds_the_ribboned_bag():
    plain = describe(crop(BLACK))
    ribboned = describe(crop(BLACK, ribbon=(230, 200, 30)))
    again = describe(rotated(crop(BLACK, ribbon=(230, 200, 30), seed=3), 120))
    assert float(plain @ ribboned) < 0.95
    assert float(again @ ribboned) > float(again @ plain)


def test_the_aspect_ratio_separates_a_long_bag_from_a_boxy_one():
    long_bag = describe(crop(BLACK, aspect=0.45))
    boxy = describe(crop(BLACK, aspect=0.75, seed=1))
    long_again = describe(rotated(crop(BLACK, aspect=0.45, seed=2), 70))
    assert float(long_again @ long_bag) > float(long_again @ boxy)


def test_vectors_are_unit_length_float32_of_dim_and_repeatable():
    im = crop(RED, ribbon=(30, 30, 200))
    v = describe(im)
    assert v.shape == (DIM,) and v.dtype == np.float32
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
    assert np.array_equal(v, describe(im))


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (1, 1), (200, 10, 10)),
        Image.new("RGB", (3, 40), (0, 0, 0)),
        Image.new("RGB", (64, 64), (255, 255, 255)),
        Image.new("RGB", (64, 48), (0, 0, 0)),
        Image.new("L", (30, 20), 128),
        Image.new("RGBA", (50, 50), (10, 200, 10, 0)),
    ],
    ids=["one-pixel", "sliver", "white", "black", "greyscale", "transparent"],
)
def test_tiny_and_one_colour_crops_give_a_finite_unit_vector(image):
    v = describe(image)
    assert v.shape == (DIM,)
    assert np.isfinite(v).all()
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5


def test_red_suitcase_text_ranks_the_red_bag_first():
    crops = {"red": crop(RED), "blue": crop(BLUE, seed=1), "black": crop(BLACK, seed=2), "green": crop(GREEN, seed=3)}
    query = describe_text("red suitcase")
    scores = {name: float(describe(im) @ query) for name, im in crops.items()}
    assert max(scores, key=lambda k: scores[k]) == "red"


@pytest.mark.parametrize("colour, words", [(BLUE, "navy blue case"), (BLACK, "black bag"), (GREEN, "green holdall")])
def test_each_colour_word_ranks_its_own_bag_first(colour, words):
    candidates = [RED, BLUE, BLACK, GREEN, (236, 202, 40), (236, 236, 230)]
    query = describe_text(words)
    scores = [float(describe(crop(c, seed=i)) @ query) for i, c in enumerate(candidates)]
    assert candidates[int(np.argmax(scores))] == colour


def test_dark_and_light_shift_the_lightness():
    dark_green, light_green = describe(crop((25, 80, 40))), describe(crop((120, 200, 120)))
    dark_query, light_query = describe_text("dark green bag"), describe_text("light green bag")
    assert float(dark_green @ dark_query) > float(dark_green @ light_query)
    assert float(light_green @ light_query) > float(light_green @ dark_query)


def test_the_accent_colour_of_a_description_picks_the_bag_with_that_ribbon():
    yellow_ribbon = describe(crop(BLACK, ribbon=(236, 202, 40)))
    blue_ribbon = describe(crop(BLACK, ribbon=(40, 80, 220), seed=1))
    query = describe_text("black suitcase with a yellow ribbon")
    assert float(yellow_ribbon @ query) > float(blue_ribbon @ query)


def test_a_kind_word_picks_the_matching_shape():
    duffel = describe(crop(BLACK, aspect=0.42, radius=0.5))
    suitcase = describe(crop(BLACK, aspect=0.7, seed=1))
    assert float(duffel @ describe_text("black duffel")) > float(duffel @ describe_text("black suitcase"))
    assert float(suitcase @ describe_text("black suitcase")) > float(suitcase @ describe_text("black duffel"))


def test_text_vectors_are_unit_length_or_zero():
    v = describe_text("Dark green hard-shell suitcase with a yellow ribbon")
    assert v.shape == (DIM,) and v.dtype == np.float32
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
    nothing = describe_text("lost it at gate 12, please help")
    assert nothing.shape == (DIM,) and not nothing.any()


def test_text_terms_split_colours_from_other_words():
    colours, others = text_terms("Dark green hard-shell suitcase with a yellow ribbon")
    assert colours == ["green", "yellow"]
    assert others == ["dark", "hard-shell", "suitcase", "ribbon"]
    assert text_terms("Grey and navy backpack")[0] == ["gray", "blue"]
