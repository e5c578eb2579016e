"""The seeded random pipeline: reproducible, built from the registry, honest about its specs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from imagegen import make_image
from twice.augment import (
    DEFAULT_STEPS,
    FAMILIES,
    HELD_OUT_FAMILIES,
    FamilyAugment,
    RandomAugment,
    Step,
    apply_transforms,
    parse_transform,
    with_overrides,
)


def test_same_seed_same_views_different_seed_different_views():
    image = make_image(0, (64, 48))
    a, b, c = RandomAugment(seed=7), RandomAugment(seed=7), RandomAugment(seed=8)
    views_a = [a.view(image) for _ in range(6)]
    views_b = [b.view(image) for _ in range(6)]
    specs_c = [c.sample_specs() for _ in range(6)]
    for (img_a, specs_a), (img_b, specs_b) in zip(views_a, views_b, strict=True):
        assert specs_a == specs_b
        np.testing.assert_array_equal(np.asarray(img_a), np.asarray(img_b))
    assert [s for _, s in views_a] != specs_c
    assert len({tuple(s) for _, s in views_a}) > 1  # successive views differ


def test_reseed_restarts_the_sequence():
    aug = RandomAugment(seed=3)
    first = [aug.sample_specs() for _ in range(4)]
    aug.reseed(3)
    assert [aug.sample_specs() for _ in range(4)] == first


def test_recorded_specs_reproduce_the_view_exactly():
    image = make_image(1, (64, 48))
    aug = RandomAugment(seed=11)
    for _ in range(8):
        view, specs = aug.view(image)
        assert isinstance(view, Image.Image) and view.mode == "RGB"
        for spec in specs:
            assert parse_transform(spec).canonical == spec  # canonical, from the registry
        np.testing.assert_array_equal(np.asarray(view), np.asarray(apply_transforms(image, specs)))


def test_call_returns_a_pil_image_that_differs_from_the_input():
    image = make_image(2, (64, 48))
    aug = RandomAugment(seed=0)
    for _ in range(5):
        view = aug(image)
        assert isinstance(view, Image.Image)
        assert view.size != image.size or not np.array_equal(np.asarray(view), np.asarray(image))


def test_step_probabilities_are_respected():
    aug = RandomAugment(seed=5)
    n = 2000
    counts = Counter(spec.split(":")[0] for _ in range(n) for spec in aug.sample_specs())
    for step in DEFAULT_STEPS:
        assert abs(counts[step.name] / n - step.p) < 0.05, step


def test_parameters_stay_inside_their_ranges():
    steps = (
        Step("bright", 1.0, 20, 40),
        Step("blur", 1.0, 0.5, 1.0),
        Step("rotate", 1.0, choices=(180,)),
        Step("crop", 1.0, 0.6, 0.7),
    )
    aug = RandomAugment(seed=1, steps=steps)
    seen = set()
    for _ in range(200):
        specs = [parse_transform(s) for s in aug.sample_specs()]
        bright, blur, rotate, crop = specs
        assert 20 <= bright.values[0] <= 40
        assert 0.5 <= blur.values[0] <= 1.0
        assert rotate.values == (180,)
        assert 0.6 <= crop.values[0] <= 0.7 and crop.values[1] >= 0  # a seeded crop position
        seen.add(bright.values[0])
    assert min(seen) == 20 and max(seen) == 40  # integer ranges include both ends


def test_max_ops_and_at_least_one():
    aug = RandomAugment(seed=2, steps=[Step(name, 0.9) for name in ("mirror", "flip", "gray")], max_ops=2)
    assert all(1 <= len(aug.sample_specs()) <= 2 for _ in range(100))
    rare = RandomAugment(seed=2, steps=[Step("mirror", 0.01)])
    assert all(rare.sample_specs() == ["mirror"] for _ in range(20))
    allow_empty = RandomAugment(seed=2, steps=[Step("mirror", 0.01)], at_least_one=False)
    assert [] in [allow_empty.sample_specs() for _ in range(20)]
    never = RandomAugment(seed=2, steps=[Step("mirror", 0.0), Step("flip", 1.0)])
    assert all(never.sample_specs() == ["flip"] for _ in range(20))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Step("spin"), r"unknown transform 'spin'; valid transforms: rotate"),
        (lambda: Step("bright", 1.5), r"probability must be in 0\.\.1, not 1\.5"),
        (lambda: Step("bright", 0.5, 10, 300), r"amount must be in 1\.\.255"),
        (lambda: Step("bright", 0.5, 50, 10), r"need low <= high"),
        (lambda: Step("mirror", 0.5, 1, 2), r"takes no parameter"),
        (lambda: Step("rotate", 0.5, choices=(45,)), r"must be one of 90\|180\|270"),
        (lambda: RandomAugment(steps=()), r"at least one step"),
        (lambda: RandomAugment(max_ops=0), r"max_ops must be >= 1"),
        (lambda: RandomAugment(steps=[Step("mirror", 0.0)]), r"probability > 0"),
    ],
)
def test_bad_pipeline_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_overrides_replace_a_step_keep_its_range_or_add_one():
    no_jpeg = DEFAULT_STEPS[:-1]
    steps = with_overrides(no_jpeg, ["bright:0.9:60:110", "dark:0", "jpeg:0.5:30:40"])
    by_name = {step.name: step for step in steps}
    assert by_name["bright"] == Step("bright", 0.9, 60, 110)
    assert by_name["dark"] == Step("dark", 0.0, 20, 80)
    assert steps[-1] == Step("jpeg", 0.5, 30, 40)
    assert [s.name for s in steps] == [s.name for s in DEFAULT_STEPS]
    assert with_overrides(DEFAULT_STEPS, []) == DEFAULT_STEPS


@pytest.mark.parametrize(
    ("override", "message"),
    [("bright", "NAME:P"), ("bright:x", "must be numbers"), ("bright:0.5:1", "NAME:P"),
     ("bright:2", "probability"), ("bright:0.5:90:10", "low <= high"), ("bright:0.5:1:900", "bright")],
)  # fmt: skip
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        with_overrides(DEFAULT_STEPS, [override])


# views drawn from edit families ------------------------------------------------------------------

# transform name -> the family that draws it (crop draws cropbox; every other family its own name)
FAMILY_OF = {**{name: name for name in FAMILIES}, "cropbox": "crop"}


def families_of(specs: list[str]) -> set[str]:
    return {FAMILY_OF[spec.split(":")[0]] for spec in specs}


def test_a_family_view_is_a_pure_function_of_its_seed():
    image = make_image(5, (64, 48))
    a, b = FamilyAugment(seed=1), FamilyAugment(seed=99)
    b.sample_specs()  # another history: a view drawn from its own generator does not care
    for seed in range(12):
        view_a, specs_a = a.view(image, np.random.default_rng(seed))
        view_b, specs_b = b.view(image, np.random.default_rng(seed))
        assert specs_a == specs_b
        np.testing.assert_array_equal(np.asarray(view_a), np.asarray(view_b))
        np.testing.assert_array_equal(np.asarray(view_a), np.asarray(apply_transforms(image, specs_a)))
        assert view_a.mode == "RGB"
    c, d = FamilyAugment(seed=4), FamilyAugment(seed=4)
    assert [c.sample_specs() for _ in range(10)] == [d.sample_specs() for _ in range(10)]


def test_family_views_leave_the_held_out_families_out_by_default():
    aug = FamilyAugment(seed=0)
    seen = set()
    for _ in range(600):
        seen |= families_of(aug.sample_specs())
    assert not seen & set(HELD_OUT_FAMILIES)
    assert seen == set(FAMILIES) - set(HELD_OUT_FAMILIES)
    everything = FamilyAugment(seed=0, exclude=())
    drawn = set().union(*(families_of(everything.sample_specs()) for _ in range(600)))
    assert set(HELD_OUT_FAMILIES) <= drawn


def test_family_views_are_single_edits_or_combos_at_the_given_rate():
    n, aug = 1000, FamilyAugment(seed=2, combo_p=0.3)
    sizes = Counter(len(aug.sample_specs(np.random.default_rng(i))) for i in range(n))
    assert abs((sizes[2] + sizes[3]) / n - 0.3) < 0.05 and sizes[1] > 0 and sizes[3] > 0
    singles = FamilyAugment(seed=3, families=["tilt", "border"], combo_p=0.0)
    for _ in range(50):
        specs = singles.sample_specs()
        assert len(specs) == 1 and families_of(specs) <= {"tilt", "border"}
    combos = FamilyAugment(seed=3, families=["tilt", "border", "gray"], combo_p=1.0)
    assert all(len(combos.sample_specs()) in (2, 3) for _ in range(50))


def test_family_augment_refuses_bad_settings():
    with pytest.raises(ValueError, match="combo_p must be in 0..1, not 1.5"):
        FamilyAugment(combo_p=1.5)
    with pytest.raises(ValueError, match="unknown edit family 'tilted'"):
        FamilyAugment(families=["tilted"])
    with pytest.raises(ValueError, match="combinations need at least 2 families"):
        FamilyAugment(families=["tilt"])
    assert FamilyAugment(families=["tilt"], combo_p=0).sample_specs()[0].startswith("tilt")
