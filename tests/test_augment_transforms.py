"""The transform registry: each transform against a hand-computed expectation, spec parsing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from twice.augment import (
    ORIGINAL_FOUR,
    TRANSFORMS,
    all_transforms,
    apply_transform,
    apply_transforms,
    parse_transform,
    parse_transforms,
)
from twice.augment.transforms import encode_jpeg

# Six distinct colours, one per label, so a grid of labels is a tiny image whose expected
# rotations and flips can be written down by hand.
PALETTE = {
    1: (255, 0, 0),
    2: (0, 255, 0),
    3: (0, 0, 255),
    4: (10, 20, 30),
    5: (200, 100, 50),
    6: (255, 255, 255),
}
GRID = [
    [1, 2, 3],
    [4, 5, 6],
]


def grid_image(grid: list[list[int]]) -> Image.Image:
    return Image.fromarray(np.array([[PALETTE[v] for v in row] for row in grid], dtype=np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def row_image(values: list[int]) -> Image.Image:
    """A 1-pixel-high image whose pixels are grey levels ``values`` in every channel."""
    return Image.fromarray(np.array([[[v, v, v] for v in values]], dtype=np.uint8), "RGB")


# exact transforms, against hand-written expectations ------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # clockwise: the left column, read bottom-up, becomes the top row
        ("rotate", [[4, 1], [5, 2], [6, 3]]),
        ("rotate:90", [[4, 1], [5, 2], [6, 3]]),
        ("rotate:180", [[6, 5, 4], [3, 2, 1]]),
        ("rotate:270", [[3, 6], [2, 5], [1, 4]]),
        ("mirror", [[3, 2, 1], [6, 5, 4]]),
        ("flip", [[4, 5, 6], [1, 2, 3]]),
    ],
)
def test_geometric_transforms_move_pixels_exactly(spec, expected):
    out = apply_transform(grid_image(GRID), spec)
    np.testing.assert_array_equal(pixels(out), pixels(grid_image(expected)))


def test_bright_adds_100_to_every_channel_clipped_at_255():
    out = apply_transform(row_image([0, 100, 154, 155, 156, 255]), "bright")
    np.testing.assert_array_equal(pixels(out)[0, :, 0], [100, 200, 254, 255, 255, 255])
    # every channel, not just grey: (10, 20, 30) -> (110, 120, 130); (200, 100, 50) -> (255, 200, 150)
    np.testing.assert_array_equal(
        pixels(apply_transform(grid_image(GRID), "bright"))[1, :2], [[110, 120, 130], [255, 200, 150]]
    )


def test_dark_subtracts_50_clipped_at_0_and_amounts_are_parameters():
    np.testing.assert_array_equal(
        pixels(apply_transform(row_image([0, 49, 50, 51, 200, 255]), "dark"))[0, :, 0], [0, 0, 0, 1, 150, 205]
    )
    np.testing.assert_array_equal(
        pixels(apply_transform(row_image([0, 10, 250]), "bright:5"))[0, :, 0], [5, 15, 255]
    )
    np.testing.assert_array_equal(
        pixels(apply_transform(row_image([0, 10, 250]), "dark:10"))[0, :, 0], [0, 0, 240]
    )


def test_gray_is_itu_601_luma_in_all_three_channels():
    out = pixels(apply_transform(grid_image(GRID), "gray"))
    # 0.299 R + 0.587 G + 0.114 B, rounded: red 76, green 150, blue 29, (10,20,30) 18,
    # (200,100,50) 124 (59.8 + 58.7 + 5.7 = 124.2), white 255
    expected = np.array([[76, 150, 29], [18, 124, 255]], dtype=np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], expected)


def test_crop_centre_keeps_the_middle_window():
    source = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    out = pixels(apply_transform(Image.fromarray(source), "crop:0.5"))
    # 5 of 10 pixels each way, starting at (10 - 5) // 2 = 2
    np.testing.assert_array_equal(out, source[2:7, 2:7])


def test_crop_with_seed_is_a_reproducible_window_of_the_original():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(source)
    windows = set()
    for seed in range(6):
        out = pixels(apply_transform(image, f"crop:0.5:{seed}"))
        assert out.shape == (10, 15, 3)
        np.testing.assert_array_equal(out, pixels(apply_transform(image, f"crop:0.5:{seed}")))
        found = [
            (top, left)
            for top in range(11)
            for left in range(16)
            if np.array_equal(source[top : top + 10, left : left + 15], out)
        ]
        assert len(found) == 1
        windows.add(found[0])
    assert len(windows) > 1  # the seed moves the window


# inexact transforms, against properties that pin them down --------------------------------------


def test_scale_resizes_by_the_factor():
    image = grid_image([[1, 2, 3, 4] * 2] * 6)  # 8x6
    assert apply_transform(image, "scale").size == (4, 3)
    assert apply_transform(image, "scale:2").size == (16, 12)
    uniform = Image.new("RGB", (10, 10), (30, 60, 90))
    flat = np.full((3, 3, 3), [30, 60, 90])
    np.testing.assert_array_equal(pixels(apply_transform(uniform, "scale:0.3")), flat)


def test_jpeg_is_what_a_jpeg_of_that_quality_decodes_to():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).resize((64, 64))
    low, high = apply_transform(image, "jpeg:10"), apply_transform(image, "jpeg:95")
    with Image.open(io.BytesIO(encode_jpeg(image, 10))) as decoded:
        np.testing.assert_array_equal(pixels(low), np.asarray(decoded.convert("RGB")))
    error = lambda out: np.abs(pixels(out).astype(int) - pixels(image).astype(int)).mean()  # noqa: E731
    assert error(high) < error(low)
    assert error(low) > 2


def test_blur_keeps_flat_areas_and_smooths_edges():
    flat = Image.new("RGB", (16, 16), (120, 30, 200))
    np.testing.assert_array_equal(pixels(apply_transform(flat, "blur:3")), pixels(flat))
    checker = Image.fromarray((np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    assert pixels(apply_transform(checker, "blur:1")).std() < 0.5 * pixels(checker).std()


def test_tilt_expands_the_canvas_and_fills_corners_white():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    out = apply_transform(image, "tilt:30")
    a = np.radians(30)
    expected = (40 * np.cos(a) + 20 * np.sin(a), 40 * np.sin(a) + 20 * np.cos(a))
    assert abs(out.width - expected[0]) <= 2 and abs(out.height - expected[1]) <= 2
    assert tuple(pixels(out)[0, 0]) == (255, 255, 255)
    assert tuple(pixels(out)[out.height // 2, out.width // 2]) == (0, 0, 0)
    # positive tilt turns clockwise, like rotate: the top-left corner of the picture moves right
    marked = image.copy()
    marked.paste((255, 0, 0), (0, 0, 6, 6))
    turned = pixels(apply_transform(marked, "tilt:30"))
    red_cols = np.nonzero((turned[..., 0] > 200) & (turned[..., 1] < 60))[1]
    red_rows = np.nonzero((turned[..., 0] > 200) & (turned[..., 1] < 60))[0]
    assert red_rows.mean() < turned.shape[0] / 2 and red_cols.min() > 0
    assert apply_transform(marked, "tilt:-30").size == out.size


def test_overlay_stamps_only_the_lower_right_corner():
    image = Image.new("RGB", (160, 120), (40, 90, 160))
    out = pixels(apply_transform(image, "overlay"))
    changed = np.any(out != pixels(image), axis=2)
    rows, cols = np.nonzero(changed)
    assert changed.sum() > 100
    assert rows.min() > 120 // 2 and cols.min() > 160 // 3
    assert not np.array_equal(out, pixels(apply_transform(image, "overlay:COPY")))


@pytest.mark.parametrize("spec", [s.canonical for s in all_transforms()] + ["crop:0.5:3", "tilt:-7.5"])
def test_every_transform_is_deterministic_and_returns_rgb(spec):
    rng = np.random.default_rng(2)
    for mode in ("RGB", "L", "RGBA"):
        image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).convert(mode)
        first, second = apply_transform(image, spec), apply_transform(image, spec)
        assert first.mode == "RGB"
        np.testing.assert_array_equal(pixels(first), pixels(second))


def test_apply_transforms_composes_in_order():
    image = grid_image(GRID)
    np.testing.assert_array_equal(
        pixels(apply_transforms(image, ["rotate", "rotate"])), pixels(apply_transform(image, "rotate:180"))
    )
    np.testing.assert_array_equal(
        pixels(apply_transforms(image, ["mirror", "flip"])), pixels(apply_transform(image, "rotate:180"))
    )


# spec strings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("rotate", "rotate"),
        ("rotate:90", "rotate"),
        ("ROTATE:180", "rotate:180"),
        (" rotate : 270 ", "rotate:270"),
        ("bright:100", "bright"),
        ("bright:60", "bright:60"),
        ("dark:50", "dark"),
        ("crop:0.80", "crop"),
        ("crop:0.8:7", "crop:0.8:7"),
        ("crop:0.5", "crop:0.5"),
        ("jpeg:30", "jpeg:30"),
        ("jpeg:50", "jpeg"),
        ("blur:2.0", "blur"),
        ("blur:1.25", "blur:1.25"),
        ("scale:1", "scale:1"),
        ("tilt:-5", "tilt:-5"),
        ("overlay:Hello there", "overlay:Hello there"),
    ],
)
def test_canonical_spec_drops_defaults_and_normalises_numbers(spec, canonical):
    parsed = parse_transform(spec)
    assert parsed.canonical == canonical == str(parsed)
    assert parse_transform(canonical) == parsed


def test_original_four_are_registered_with_the_original_defaults():
    assert ORIGINAL_FOUR == ("rotate", "mirror", "bright", "dark")
    assert [parse_transform(n).values for n in ORIGINAL_FOUR] == [(90,), (), (100,), (50,)]
    assert set(TRANSFORMS) >= {
        "rotate",
        "mirror",
        "flip",
        "bright",
        "dark",
        "crop",
        "jpeg",
        "scale",
        "blur",
        "gray",
        "tilt",
        "overlay",
    }


def test_unknown_transform_is_refused_with_the_valid_list():
    valid = r"unknown transform 'spin'; valid transforms: rotate\[:90\|180\|270\], mirror"
    with pytest.raises(ValueError, match=valid):
        parse_transform("spin")
    with pytest.raises(ValueError) as info:
        parse_transforms("rotate,rotat")
    for name in TRANSFORMS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rotate:45", r"degrees must be one of 90\|180\|270, not '45'"),
        ("bright:0", r"amount must be in 1\.\.255, not '0'"),
        ("bright:300", r"amount must be in 1\.\.255"),
        ("bright:lots", r"amount must be an integer in 1\.\.255, not 'lots'"),
        ("dark:2.5", r"amount must be an integer"),
        ("crop:0", r"fraction must be in 0\.05\.\.1"),
        ("crop:0.5:-3", r"seed must be in 0\.\.2147483647"),
        ("jpeg:100", r"quality must be in 1\.\.95"),
        ("blur:inf", r"sigma must be finite"),
        ("mirror:2", r"'mirror:2' takes at most 0 parameter\(s\): mirror"),
        ("crop:0.5:1:2", r"takes at most 2 parameter\(s\): crop\[:FRACTION\[:SEED\]\]"),
        ("overlay:" + "x" * 33, r"text must be 1\.\.32 printable characters"),
    ],
)
def test_bad_parameters_are_refused_naming_the_spec_and_range(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_transform(spec)


def test_parse_transforms_splits_dedupes_and_expands_all():
    assert [s.canonical for s in parse_transforms("rotate, rotate:90,mirror,,bright:100")] == [
        "rotate",
        "mirror",
        "bright",
    ]
    assert [s.canonical for s in parse_transforms("all")] == list(TRANSFORMS)
    assert [s.canonical for s in parse_transforms(["jpeg:30", "all"])][0] == "jpeg:30"
    with pytest.raises(ValueError, match="no transforms given"):
        parse_transforms(" , ")
    with pytest.raises(ValueError, match="must be a string"):
        parse_transform(90)
