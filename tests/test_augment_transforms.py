"""The transform registry: each transform against a hand-computed expectation, spec parsing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter
from sqlalchemy import select

from imagegen import image_bytes, make_image
from twice.augment import (
    ORIGINAL_FOUR,
    TRANSFORMS,
    all_transforms,
    apply_transform,
    apply_transforms,
    drawings,
    parse_transform,
    parse_transforms,
    parse_variant,
)
from twice.augment.drawings import FONT_FILE, font_file
from twice.augment.fills import backdrop
from twice.augment.transforms import TransformChain, TransformSpec, encode_jpeg
from twice.cli import main
from twice.imageio import decode_image
from twice.indexer import ImageRow, Indexer

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


EXTRA_SPECS = ["crop:0.5:3", "tilt:-7.5", "tilt:15:edge", "tilt:-8:blur:same", "perspective:0.4:3:blur"]
MORE_SPECS = ["border:blur:0.1:0.2", "pad:0.5:edge", "caption:over:3", "sticker:3:9", "screenshot:5"]


@pytest.mark.parametrize("spec", [s.canonical for s in all_transforms()] + EXTRA_SPECS + MORE_SPECS)
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


# chains: several transforms, one variant ------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # rotate: [[4, 1], [5, 2], [6, 3]], then each row reversed
        ("rotate+mirror", [[1, 4], [2, 5], [3, 6]]),
        # mirror: [[3, 2, 1], [6, 5, 4]], then its left column read bottom-up is the top row
        ("mirror+rotate", [[6, 3], [5, 2], [4, 1]]),
    ],
)
def test_a_chain_applies_its_steps_in_order(spec, expected):
    np.testing.assert_array_equal(
        pixels(apply_transform(grid_image(GRID), spec)), pixels(grid_image(expected))
    )


def test_border_then_cropbox_cuts_the_hand_computed_box_of_the_framed_picture():
    image = numbered_image(100, 80)
    # 10% black margins: 10 px left and right, 8 px top and bottom, 120x96; then a quarter of
    # the area (half of each side) at the top left: 60x48, the picture from (10, 8) on.
    expected = np.zeros((48, 60, 3), dtype=np.uint8)
    expected[8:, 10:] = pixels(image)[:40, :50]
    np.testing.assert_array_equal(
        pixels(apply_transform(image, "border:black:0.1+cropbox:0.25:1:0:0")), expected
    )
    # The other order frames the 50x40 corner: 5 px left and right, 4 px top and bottom.
    expected = np.zeros((48, 60, 3), dtype=np.uint8)
    expected[4:44, 5:55] = pixels(image)[:40, :50]
    np.testing.assert_array_equal(
        pixels(apply_transform(image, "cropbox:0.25:1:0:0+border:black:0.1")), expected
    )


def test_a_chain_is_canonical_step_by_step_and_one_step_is_a_plain_spec():
    chain = parse_variant(" TILT:10:black + cropbox:0.60:1:0.5:0.5 ")
    assert isinstance(chain, TransformChain) and chain.canonical == "tilt:10:black+cropbox" == str(chain)
    assert chain.steps == (parse_transform("tilt:10:black"), parse_transform("cropbox"))
    assert parse_variant(chain.canonical) == chain
    assert (
        isinstance(parse_variant("rotate:90"), TransformSpec)
        and parse_variant("rotate:90").canonical == "rotate"
    )
    assert [s.canonical for s in parse_transforms("rotate+mirror,ROTATE:90+mirror,mirror+rotate,all")][
        :3
    ] == [
        "rotate+mirror",
        "mirror+rotate",
        "rotate",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "tilt:10:black+cropbox:2",
            r"transform chain 'tilt:10:black\+cropbox:2', step 2 of 2 \('cropbox:2'\):"
            r" transform 'cropbox:2': area must be in 0\.01\.\.1, not '2'",
        ),
        ("rotate+spin+mirror", r"step 2 of 3 \('spin'\): unknown transform 'spin'; valid transforms: rotate"),
        ("rotate++mirror", r"transform chain 'rotate\+\+mirror', step 2 of 3 is empty"),
        ("+rotate", r"step 1 of 2 is empty"),
        ("all+rotate", r"step 1 of 2 \('all'\): unknown transform 'all'"),
    ],
)
def test_a_bad_chain_is_refused_naming_the_bad_step(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_transforms(f"mirror,{spec}")


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
        ("overlay:" + "x" * 33, r"text must be 1\.\.32 printable characters without , : or \+"),
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


# edits as copies in the wild get them: fills, borders, boxes, drawings ----------------------------


def numbered_image(w: int, h: int) -> Image.Image:
    """Every pixel distinct-ish: (x, y, x ^ y) in its channels, so any window can be located."""
    y, x = np.indices((h, w))
    return Image.fromarray(np.stack([x, y, (x ^ y) % 256], axis=2).astype(np.uint8), "RGB")


def test_tilt_default_keeps_the_stored_pixels_of_pillow_white_expand():
    image = numbered_image(48, 32)
    expected = image.rotate(-10.0, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    np.testing.assert_array_equal(pixels(apply_transform(image, "tilt")), np.asarray(expected))
    np.testing.assert_array_equal(pixels(apply_transform(image, "tilt:10:white")), np.asarray(expected))


@pytest.mark.parametrize(
    ("spec", "corner"),
    [
        ("tilt:15:black", (0, 0, 0)),
        ("tilt:-15:white", (255, 255, 255)),
        ("tilt:15:3366cc", (0x33, 0x66, 0xCC)),
    ],
)
def test_tilt_fills_the_corners_with_the_colour(spec, corner):
    out = pixels(apply_transform(Image.new("RGB", (40, 30), (200, 10, 10)), spec))
    h, w = out.shape[:2]
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        assert tuple(out[y, x]) == corner
    assert tuple(out[h // 2, w // 2]) == (200, 10, 10)


def test_tilt_same_canvas_keeps_the_size_and_cuts_the_corners_like_pillow():
    image = numbered_image(40, 30)
    out = apply_transform(image, "tilt:12:black:same")
    assert out.size == (40, 30)
    assert tuple(pixels(out)[0, 0]) == (0, 0, 0)
    expected = image.rotate(-12, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))  # Pillow's default
    np.testing.assert_array_equal(pixels(out), np.asarray(expected))


@pytest.mark.parametrize("canvas", ["expand", "same"])
@pytest.mark.parametrize("fill", ["edge", "blur"])
def test_tilt_edge_and_blur_move_the_picture_exactly_as_the_colour_fills(fill, canvas):
    image = numbered_image(48, 32)
    plain = pixels(apply_transform(image, f"tilt:-17:white:{canvas}"))
    filled = pixels(apply_transform(image, f"tilt:-17:{fill}:{canvas}"))
    assert filled.shape == plain.shape
    # where the whole bicubic neighbourhood lies inside the picture, the pixels are the same
    inside = Image.new("L", image.size, 255).rotate(17, expand=canvas == "expand", fillcolor=0)
    deep = np.asarray(inside.filter(ImageFilter.MinFilter(7))) == 255
    assert deep.sum() > 0.3 * deep.size
    np.testing.assert_array_equal(filled[deep], plain[deep])
    assert not np.array_equal(filled[~deep], plain[~deep])  # the corners are not white any more


def test_tilt_edge_replicates_the_border_and_blur_puts_the_picture_behind():
    flat = Image.new("RGB", (40, 30), (0, 128, 255))
    np.testing.assert_array_equal(
        pixels(apply_transform(flat, "tilt:20:edge")), np.full((42, 48, 3), [0, 128, 255])
    )
    image = numbered_image(48, 32)
    out = apply_transform(image, "tilt:20:blur")
    behind = pixels(backdrop(image, out.size))
    np.testing.assert_array_equal(pixels(out)[0, 0], behind[0, 0])  # a corner: only the backdrop
    np.testing.assert_array_equal(pixels(out)[-1, -1], behind[-1, -1])
    assert len({tuple(pixels(out)[y, x]) for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1))}) > 1


@pytest.mark.parametrize(
    ("spec", "margins", "colour"),
    [
        # (left, top, right, bottom) in pixels of a 100x50 picture
        ("border", (5, 2, 5, 2), (0, 0, 0)),  # 0.05 of each side: 5 of 100, 2.5 -> 2 of 50
        ("border:white:0.1", (10, 5, 10, 5), (255, 255, 255)),
        ("border:black:0.2:0", (0, 10, 0, 10), (0, 0, 0)),  # letterbox
        ("border:00ff00:0:0.25", (25, 0, 25, 0), (0, 255, 0)),  # pillarbox
        ("border:ff0000:0.1:0.2:0.4", (20, 5, 20, 20), (255, 0, 0)),
        ("border:white:0.1:0.2:0.3:0.04", (4, 5, 20, 15), (255, 255, 255)),
    ],
)
def test_border_adds_margins_of_the_colour_in_css_order(spec, margins, colour):
    image = numbered_image(100, 50)
    out = pixels(apply_transform(image, spec))
    left, top, right, bottom = margins
    assert out.shape == (50 + top + bottom, 100 + left + right, 3)
    np.testing.assert_array_equal(out[top : top + 50, left : left + 100], pixels(image))
    margin = np.ones(out.shape[:2], bool)
    margin[top : top + 50, left : left + 100] = False
    assert (out[margin] == colour).all()


@pytest.mark.parametrize(
    ("size", "spec", "margins"),
    [
        ((100, 50), "pad", (0, 25, 0, 25)),  # wider than square: letterbox to 100x100
        ((101, 50), "pad:1", (0, 25, 0, 26)),  # the odd pixel goes below
        ((100, 50), "pad:3", (25, 0, 25, 0)),  # narrower than 3:1: pillarbox to 150x50
        ((90, 160), "pad:1.7778:white", (97, 0, 97, 0)),  # a phone video in a 16:9 frame: 284x160
        ((100, 50), "pad:2", (0, 0, 0, 0)),  # already there
    ],
)
def test_pad_letterboxes_or_pillarboxes_to_the_aspect(size, spec, margins):
    image = numbered_image(*size)
    out = pixels(apply_transform(image, spec))
    left, top, right, bottom = margins
    w, h = size
    assert out.shape == (h + top + bottom, w + left + right, 3)
    np.testing.assert_array_equal(out[top : top + h, left : left + w], pixels(image))
    bars = np.concatenate(
        [out[:top].reshape(-1, 3), out[top + h :].reshape(-1, 3), out[:, :left].reshape(-1, 3)]
    )
    assert (bars == (255 if spec.endswith("white") else 0)).all()


def test_border_and_pad_edge_and_blur_fills():
    image = numbered_image(40, 20)
    edge = pixels(apply_transform(image, "border:edge:0.5:0"))  # 10 rows above and below
    np.testing.assert_array_equal(edge[:10], np.repeat(pixels(image)[:1], 10, axis=0))
    np.testing.assert_array_equal(edge[30:], np.repeat(pixels(image)[-1:], 10, axis=0))
    blurred = pixels(apply_transform(image, "pad:1:blur"))  # 40x40, 10 rows above and below
    np.testing.assert_array_equal(blurred[:10], pixels(backdrop(image, (40, 40)))[:10])
    np.testing.assert_array_equal(blurred[10:30], pixels(image))


@pytest.mark.parametrize(
    ("spec", "box"),
    [
        # area 0.6: sqrt(0.6) = 0.7746 of each side, 77x62; centred in the 23x18 left over,
        # 11.5 -> 12 (Python rounds half to even)
        ("cropbox", (12, 9, 89, 71)),
        ("cropbox:0.25", (25, 20, 75, 60)),  # half of each side, centred
        ("cropbox:0.25:1:0:0", (0, 0, 50, 40)),
        ("cropbox:0.25:1:1:1", (50, 40, 100, 80)),
        ("cropbox:0.5:2:0.5:0", (0, 0, 100, 40)),  # twice as wide as tall relative: full width, half height
        ("cropbox:0.5:0.5:0.2:0.5", (10, 0, 60, 80)),  # half width, full height, 0.2 of the 50 px left
        ("cropbox:0.5:4", (0, 20, 100, 60)),  # too wide: full width, the area kept
        # 100 * sqrt(0.36) x 80 * sqrt(0.16 / 2.25) = 60 x 21.3 -> 60x21, top 29.5 -> 30
        ("cropbox:0.16:2.25:0.5:0.5", (20, 30, 80, 51)),
    ],
)
def test_cropbox_cuts_the_hand_computed_box(spec, box):
    image = numbered_image(100, 80)
    left, top, right, bottom = box
    out = pixels(apply_transform(image, spec))
    np.testing.assert_array_equal(out, pixels(image)[top:bottom, left:right])


@pytest.mark.parametrize(
    ("spec", "size"), [("stretch", (60, 30)), ("stretch:1:0.5", (40, 15)), ("stretch:0.6:1.6", (24, 48))]
)
def test_stretch_resizes_each_axis(spec, size):
    assert apply_transform(Image.new("RGB", (40, 30), (9, 99, 199)), spec).size == size
    np.testing.assert_array_equal(
        pixels(apply_transform(Image.new("RGB", (40, 30), (9, 99, 199)), spec)),
        np.full((*size[::-1], 3), [9, 99, 199]),
    )


def test_caption_bar_is_added_below_or_above_and_text_over_stays_in_the_lower_part():
    image = numbered_image(120, 80)
    below, above = (
        pixels(apply_transform(image, "caption:bottom:4")),
        pixels(apply_transform(image, "caption:top:4")),
    )
    assert below.shape == above.shape and below.shape[0] > 80 and below.shape[1] == 120
    np.testing.assert_array_equal(below[:80], pixels(image))
    np.testing.assert_array_equal(above[-80:], pixels(image))
    bar = below[80:]
    assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 2  # text drawn on the bar, anti-aliased
    over = pixels(apply_transform(image, "caption:over:4"))
    rows = np.nonzero(np.any(over != pixels(image), axis=(1, 2)))[0]
    assert over.shape == pixels(image).shape and rows.size and rows.min() > 80 // 2
    assert not np.array_equal(below, pixels(apply_transform(image, "caption:bottom:5")))  # the seed's text


def test_captions_use_dejavu_from_the_debian_package():
    assert font_file() == FONT_FILE  # fonts-dejavu-core, installed by .ci/run


def test_caption_falls_back_to_pillows_font_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(drawings, "FONT_FILE", drawings.FONT_FILE.with_name("missing.ttf"))
    font_file.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="twice.augment.drawings"):
            first = apply_transform(numbered_image(120, 80), "caption:bottom:1")
            apply_transform(numbered_image(120, 80), "caption:top:2")
        assert first.height > 80
        assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
        assert "fonts-dejavu-core" in caplog.records[0].message
    finally:
        font_file.cache_clear()


def test_stickers_are_small_and_seeded():
    image = Image.new("RGB", (200, 100), (30, 120, 60))
    for seed in range(5):
        out = pixels(apply_transform(image, f"sticker:1:{seed}"))
        rows, cols = np.nonzero(np.any(out != pixels(image), axis=2))
        assert rows.size  # something was pasted
        assert cols.max() - cols.min() < 0.2 * 100 + 2 and rows.max() - rows.min() < 0.2 * 100 + 2
    one, three = pixels(apply_transform(image, "sticker:1:7")), pixels(apply_transform(image, "sticker:3:7"))
    assert np.any(one != three)


def test_screenshot_holds_the_picture_unchanged_inside_window_chrome():
    image = numbered_image(80, 60)
    for seed in range(4):
        out = pixels(apply_transform(image, f"screenshot:{seed}"))
        assert out.shape[0] > 60 and out.shape[1] >= 80
        hits = [
            (y, x)
            for y in range(out.shape[0] - 59)
            for x in range(out.shape[1] - 79)
            if np.array_equal(out[y : y + 60, x : x + 80], pixels(image))
        ]
        assert len(hits) == 1 and hits[0][0] > 0  # below a title bar at least
    assert not np.array_equal(
        pixels(apply_transform(image, "screenshot:1")), pixels(apply_transform(image, "screenshot:2"))
    )


def test_perspective_keeps_the_size_and_fills_the_margins():
    image = Image.new("RGB", (80, 60), (250, 250, 250))
    for seed in range(4):
        out = pixels(apply_transform(image, f"perspective:0.4:{seed}:black"))
        assert out.shape == (60, 80, 3)
        black = np.all(out == 0, axis=2)
        assert 0.05 < black.mean() < 0.4  # the receding side's two corners, about 0.4 / 2 of the area
        corners = [black[0, 0], black[0, -1], black[-1, -1], black[-1, 0]]
        assert sum(corners) >= 2
    sides = {
        tuple(
            np.all(pixels(apply_transform(image, f"perspective:0.4:{s}")) == 0, axis=2)[
                [0, 0, -1, -1], [0, -1, -1, 0]
            ]
        )
        for s in range(12)
    }
    assert len(sides) > 1  # the seed picks the side


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("tilt:10:white", "tilt"),
        ("tilt:10:BLACK", "tilt:10:black"),
        ("tilt:-5:#FF8800:same", "tilt:-5:ff8800:same"),
        ("tilt:3:white:expand", "tilt:3"),
        ("border:black:0.05", "border"),
        ("border:white:0.1:0.1:0.1:0.1", "border:white:0.1"),
        ("border:white:0.1:0.2:0.1:0.2", "border:white:0.1:0.2"),
        ("border:white:0.1:0.2:0.3:0.2", "border:white:0.1:0.2:0.3"),
        ("border:white:0.1:0:0.1:0", "border:white:0.1:0"),
        ("border:white:0.1:0.2:0.3:0.4", "border:white:0.1:0.2:0.3:0.4"),
        ("pad:1.0:black", "pad"),
        ("pad:0.5625:blur", "pad:0.5625:blur"),
        ("cropbox:0.6:1:0.5:0.5", "cropbox"),
        ("cropbox:0.5:1.2:0:1", "cropbox:0.5:1.2:0:1"),
        ("stretch:1.5:1", "stretch"),
        ("stretch:1:0.7", "stretch:1:0.7"),
        ("caption:bottom:0", "caption"),
        ("caption:OVER:12", "caption:over:12"),
        ("sticker:1:0", "sticker"),
        ("screenshot:0", "screenshot"),
        ("perspective:0.2:0:black", "perspective"),
        ("perspective:0.3:9:edge", "perspective:0.3:9:edge"),
    ],
)
def test_new_specs_are_canonical_and_round_trip(spec, canonical):
    parsed = parse_transform(spec)
    assert parsed.canonical == canonical
    assert parse_transform(canonical) == parsed
    np.testing.assert_array_equal(
        pixels(apply_transform(numbered_image(40, 30), spec)),
        pixels(apply_transform(numbered_image(40, 30), canonical)),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tilt:10:purple", r"fill must be one of black\|white\|edge\|blur\|RRGGBB, not 'purple'"),
        ("tilt:10:ff00", r"fill must be one of"),
        ("tilt:10:white:bigger", r"canvas must be one of expand\|same, not 'bigger'"),
        ("border:black:1.5", r"top must be in 0\.\.1, not '1\.5'"),
        ("pad:0", r"aspect must be in 0\.1\.\.10"),
        ("cropbox:0", r"area must be in 0\.01\.\.1"),
        ("caption:left", r"where must be one of bottom\|top\|over, not 'left'"),
        ("sticker:4", r"count must be in 1\.\.3"),
        ("perspective:0.9", r"strength must be in 0\.01\.\.0\.6"),
    ],
)
def test_new_transforms_refuse_bad_parameters(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_transform(spec)


def add_original(options, image: Image.Image) -> int:
    """Catalog ``image`` as an original (no model, no vector) and return its id."""
    indexer = Indexer(options, "test-no-model", 4)
    try:
        return indexer.add_bytes(image_bytes(image), source="/photos/a.png").row.id
    finally:
        indexer.close()


def variants_of(options, parent: int) -> dict[str, ImageRow]:
    """The catalogued variants of ``parent`` by their transform column."""
    indexer = Indexer(options, "test-no-model", 4)
    try:
        with indexer.catalog.session() as session:
            query = select(ImageRow).where(ImageRow.parent_id == parent)
            return {row.transform: row for row in session.scalars(query)}
    finally:
        indexer.close()


def test_twice_augment_stores_black_tilts_and_letterboxes_through_the_cli(options, capsys):
    parent = add_original(options, make_image(3, (96, 72)))
    specs = "tilt:10:black,pad:1.7778,border:white:0.1:0,cropbox:0.5:1.2:0:1"
    assert main(["--data-dir", str(options.data_dir), "-q", "augment", "--transforms", specs]) == 0
    assert "added 4 variants" in capsys.readouterr().out
    rows = variants_of(options, parent)
    assert set(rows) == {"tilt:10:black", "pad:1.7778", "border:white:0.1:0", "cropbox:0.5:1.2:0:1"}
    original = make_image(3, (96, 72))
    for spec, row in rows.items():
        stored = decode_image((options.images_dir / row.stored_path).read_bytes()).image
        np.testing.assert_array_equal(pixels(stored.convert("RGB")), pixels(apply_transform(original, spec)))
    assert (rows["pad:1.7778"].width, rows["pad:1.7778"].height) == (128, 72)  # 96x72 pillarboxed to 16:9


def test_twice_augment_stores_a_chain_as_one_variant_through_the_cli(options, capsys):
    parent = add_original(options, make_image(3, (96, 72)))
    specs = "tilt:10:black+cropbox:0.6:1:0.5:0.5,rotate+jpeg:30"
    command = ["--data-dir", str(options.data_dir), "-q", "augment", "--transforms", specs]
    assert main(command) == 0
    assert "added 2 variants (1 rotate+jpeg:30, 1 tilt:10:black+cropbox)" in capsys.readouterr().out
    assert main(command) == 0
    assert "added 0 variants, already present 2" in capsys.readouterr().out
    rows = variants_of(options, parent)
    assert set(rows) == {"tilt:10:black+cropbox", "rotate+jpeg:30"}
    assert rows["rotate+jpeg:30"].source == "/photos/a.png#rotate+jpeg:30"
    original = make_image(3, (96, 72))
    tilted = (options.images_dir / rows["tilt:10:black+cropbox"].stored_path).read_bytes()
    expected = apply_transform(apply_transform(original, "tilt:10:black"), "cropbox")
    np.testing.assert_array_equal(pixels(decode_image(tilted).image.convert("RGB")), pixels(expected))
    # A chain ending in jpeg stores the JPEG itself, of the picture the other steps made.
    stored = (options.images_dir / rows["rotate+jpeg:30"].stored_path).read_bytes()
    assert stored == encode_jpeg(apply_transform(original, "rotate"), 30)
