"""Edit families: drawn from their ranges, reproducible from the seed, held-out ones kept out."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from imagegen import make_image
from twice.augment import (
    FAMILIES,
    HELD_OUT_FAMILIES,
    RANGES,
    apply_transforms,
    draw_combo,
    draw_edit,
    family_names,
    parse_transform,
)
from twice.augment.families import NEAR_ONE, Choice, Integers, Uniform
from twice.augment.fills import HEX_COLOUR
from twice.augment.transforms import border_sides

DRAWS = 200


def canonical(specs) -> list[str]:
    return [s.canonical for s in specs]


def test_every_family_the_issue_names_is_registered_with_its_ranges():
    assert set(FAMILIES) == set(RANGES) == {
        "tilt", "border", "crop", "caption", "sticker", "stretch", "screenshot", "perspective",
        "rotate", "mirror", "bright", "dark", "gray", "blur", "jpeg", "scale", "overlay",
    }  # fmt: skip
    assert HELD_OUT_FAMILIES == ("perspective", "sticker")
    assert RANGES["tilt"]["degrees"] == Uniform(3.0, 20.0, 1)
    assert RANGES["crop"]["area"] == Uniform(0.3, 0.95) and RANGES["crop"]["aspect"] == Uniform(0.6, 1.6)
    assert RANGES["border"]["width"] == Uniform(0.03, 0.25)
    assert RANGES["jpeg"]["quality"] == Integers(10, 90)
    assert RANGES["rotate"]["degrees"] == Choice((90, 180, 270))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_draw_is_a_pure_function_of_the_seed(family):
    image = make_image(4, (64, 48))
    for seed in range(3):
        first = canonical(draw_edit(family, np.random.default_rng(seed)))
        assert canonical(draw_edit(family, np.random.default_rng(seed))) == first
        for spec in first:
            assert parse_transform(spec).canonical == spec  # an ordinary spec: `twice augment` replays it
        np.testing.assert_array_equal(
            np.asarray(apply_transforms(image, first)), np.asarray(apply_transforms(image, first))
        )
    draws = {tuple(canonical(draw_edit(family, np.random.default_rng(seed)))) for seed in range(20)}
    if family not in ("mirror", "gray"):  # the two without parameters
        assert len(draws) > 2


def values(specs) -> list[tuple]:
    return [parse_transform(s).values for s in specs]


def test_tilt_draws_stay_in_range_with_every_fill():
    rng = np.random.default_rng(0)
    fills, canvases, signs = Counter(), Counter(), Counter()
    for _ in range(DRAWS):
        ((degrees, fill, canvas),) = values(draw_edit("tilt", rng))
        assert abs(degrees) in RANGES["tilt"]["degrees"]
        fills["colour" if HEX_COLOUR.fullmatch(fill) else fill] += 1
        canvases[canvas] += 1
        signs[degrees > 0] += 1
    assert set(fills) == {"black", "white", "colour", "edge", "blur"}
    assert set(canvases) == {"expand", "same"} and set(signs) == {True, False}


def test_border_draws_letterbox_pillarbox_frames_and_sides_in_range():
    rng = np.random.default_rng(1)
    shapes = Counter()
    for _ in range(DRAWS):
        ((fill, *css),) = values(draw_edit("border", rng))
        sides = border_sides(*css)
        assert fill in ("black", "white", "blur") or HEX_COLOUR.fullmatch(fill)
        assert any(sides)
        assert all(w == 0 or w in RANGES["border"]["width"] for w in sides)
        top, right, bottom, left = sides
        if right == left == 0:
            shapes["letterbox" if top == bottom else "top or bottom"] += 1
        elif top == bottom == 0:
            shapes["pillarbox" if left == right else "left or right"] += 1
        else:
            shapes["frame" if len(set(sides)) == 1 else "mixed"] += 1
    assert {"letterbox", "pillarbox", "frame", "mixed"} <= set(shapes)


def test_crop_stretch_scale_and_photometric_draws_stay_in_range():
    rng = np.random.default_rng(2)
    r = RANGES
    for _ in range(DRAWS):
        ((area, aspect, x, y),) = values(draw_edit("crop", rng))
        assert area in r["crop"]["area"] and aspect in r["crop"]["aspect"] and 0 <= x <= 1 and 0 <= y <= 1
        ((sx, sy),) = values(draw_edit("stretch", rng))
        assert (sx == 1) != (sy == 1)  # one axis
        factor = sy if sx == 1 else sx
        assert factor in r["stretch"]["factor"] and abs(factor - 1) >= NEAR_ONE
        ((factor,),) = values(draw_edit("scale", rng))
        assert factor in r["scale"]["factor"] and abs(factor - 1) >= NEAR_ONE
        ((amount,),) = values(draw_edit("bright", rng))
        assert amount in r["bright"]["amount"]
        ((amount,),) = values(draw_edit("dark", rng))
        assert amount in r["dark"]["amount"]
        ((sigma,),) = values(draw_edit("blur", rng))
        assert sigma in r["blur"]["sigma"]
        ((quality,),) = values(draw_edit("jpeg", rng))
        assert quality in r["jpeg"]["quality"]
        ((strength, seed, _fill),) = values(draw_edit("perspective", rng))
        assert strength in r["perspective"]["strength"] and seed in r["perspective"]["seed"]
        ((count, seed),) = values(draw_edit("sticker", rng))
        assert count in r["sticker"]["count"] and seed in r["sticker"]["seed"]
        ((where, _seed),) = values(draw_edit("caption", rng))
        assert where in r["caption"]["where"]


def test_integer_ranges_reach_both_ends():
    rng = np.random.default_rng(3)
    qualities = {values(draw_edit("jpeg", rng))[0][0] for _ in range(2000)}
    assert min(qualities) == 10 and max(qualities) == 90


def test_combos_are_two_or_three_different_families_in_stage_order():
    rng = np.random.default_rng(4)
    sizes = Counter()
    for _ in range(DRAWS):
        specs = canonical(draw_combo(rng))
        sizes[len(specs)] += 1
        names = [s.split(":")[0] for s in specs]
        assert len(set(names)) == len(names)
        stages = [FAMILIES[FAMILIES_BY_TRANSFORM[name]].stage for name in names]
        assert stages == sorted(stages)
    assert set(sizes) == {2, 3}
    assert canonical(draw_combo(np.random.default_rng(9), ["tilt", "jpeg"], k=2))[-1].startswith("jpeg")
    assert len(draw_combo(rng, ["mirror", "gray", "tilt"], k=3)) == 3


# transform name -> family name (a family's specs use one transform; crop draws cropbox)
FAMILIES_BY_TRANSFORM = {**{name: name for name in FAMILIES}, "cropbox": "crop"}


def test_combos_are_a_pure_function_of_the_seed():
    for seed in range(10):
        assert canonical(draw_combo(np.random.default_rng(seed))) == canonical(
            draw_combo(np.random.default_rng(seed))
        )


def test_excluded_families_are_never_drawn():
    rng = np.random.default_rng(5)
    seen = Counter()
    for _ in range(500):
        for spec in canonical(draw_combo(rng, exclude=HELD_OUT_FAMILIES)):
            seen[FAMILIES_BY_TRANSFORM[spec.split(":")[0]]] += 1
    assert not set(seen) & set(HELD_OUT_FAMILIES)
    assert set(seen) == set(FAMILIES) - set(HELD_OUT_FAMILIES)  # everything else is drawn


def test_unknown_families_and_impossible_combos_are_refused():
    with pytest.raises(ValueError, match=r"unknown edit family 'stickers'; families: tilt, border"):
        family_names(exclude=["stickers"])
    with pytest.raises(ValueError, match="unknown edit family 'spin'"):
        draw_edit("spin", np.random.default_rng(0))
    with pytest.raises(ValueError, match="no edit family left"):
        family_names(["tilt"], exclude=["tilt"])
    with pytest.raises(ValueError, match=r"k must be in 1\.\.2"):
        draw_combo(np.random.default_rng(0), ["tilt", "gray"], k=3)
    assert family_names(["gray", "tilt", "gray"]) == ("gray", "tilt")
