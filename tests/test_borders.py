"""Border trimming: planted borders come off to the pixel, content stays, index and query agree."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from imagegen import image_bytes, make_image
from twice.borders import MIN_KEEP, TOLERANCE, WORK_SIDE, content_box, fill_corners, trim_borders
from twice.hashing import (
    DIHEDRAL,
    VIEW_SHIFTS,
    content_phash,
    dihedral_hashes,
    dihedral_image,
    hamming,
    phash,
    shifted,
    stored_hashes,
)
from twice.indexer import reindex
from twice.model import Preprocess
from twice.search import SearchEngine

COLOURS = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 40), (20, 90, 230)]
# (left, top, right, bottom) border widths: letterbox, pillarbox, a frame, one side only.
WIDTHS = [(0, 20, 0, 20), (15, 0, 15, 0), (3, 7, 11, 5), (0, 0, 30, 0), (1, 1, 1, 1)]


def jpeg_round_trip(image: Image.Image, quality: int = 75) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes(image, "JPEG", quality=quality))).convert("RGB")


def drawing(size=(120, 90), box=(30, 20, 90, 70)) -> Image.Image:
    """Clip art: a black ellipse and a red stroke on white inside ``box``, no straight edge."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    draw.ellipse((left, top, right - 1, bottom - 1), outline="black", width=2)
    draw.line((left + 8, bottom - 8, right - 8, top + 8), fill=(200, 0, 0), width=3)
    return image


def dusk_photo(seed: int, size=(160, 120)) -> Image.Image:
    """A photo-like image whose top is a dark, noisy, slowly brightening sky over a lit scene."""
    rng = np.random.default_rng(seed)
    w, h = size
    sky = np.linspace(5, 90, h)[:, None, None] * np.array([0.6, 0.7, 1.0]) + rng.normal(0, 3, (h, w, 3))
    image = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    scene = make_image(seed, (w, h // 2))
    image.paste(scene, (0, h - h // 2))
    return image


@pytest.mark.parametrize("colour", COLOURS)
@pytest.mark.parametrize("widths", WIDTHS)
def test_planted_borders_of_any_colour_come_off_to_the_pixel(colour, widths):
    original = make_image(7, (120, 90))
    bordered = ImageOps.expand(original, widths, colour)
    left, top, _, _ = widths
    assert content_box(bordered) == (left, top, left + 120, top + 90)


@pytest.mark.parametrize("colour", COLOURS)
def test_planted_borders_come_off_within_two_pixels_after_jpeg(colour):
    """JPEG rings at the bar's edge: up to two lines of it stay (never a line of content goes)."""
    original = make_image(8, (160, 120))
    left, top, right, bottom = content_box(
        jpeg_round_trip(ImageOps.expand(original, (24, 17, 24, 17), colour))
    )
    assert 22 <= left <= 24 and 15 <= top <= 17 and 184 <= right <= 186 and 137 <= bottom <= 139


def test_photo_like_images_and_a_dark_sky_are_left_whole():
    for seed in range(20):
        image = make_image(seed, (120, 90))
        assert content_box(image) == (0, 0, 120, 90), seed
        assert content_box(jpeg_round_trip(image)) == (0, 0, 120, 90), seed
        # A gradient under the tolerance at the top is a sky, not a band: no step to content.
        assert content_box(dusk_photo(seed)) == (0, 0, 160, 120), seed


def test_a_black_bar_over_a_dark_sky_stays_rather_than_cut_into_the_sky():
    """The bar runs into the sky without a step (the sky starts within the tolerance of black):
    that side is left as it is; the bar under the lit scene comes off."""
    photo = dusk_photo(3)
    assert content_box(ImageOps.expand(photo, (0, 30, 0, 30), "black")) == (0, 0, 160, 150)


def test_a_drawing_on_white_keeps_its_margin_and_a_picture_on_white_loses_it():
    """A band must end at a straight edge: a drawing's margin ends at its tip and stays (trimming
    it cost tilted copies recall, docs/benchmarks.md); a picture pasted on white has edges."""
    assert content_box(drawing()) == (0, 0, 120, 90)
    assert content_box(ImageOps.expand(drawing(), (0, 25, 0, 25), "black")) == (0, 25, 120, 115)
    canvas = Image.new("RGB", (200, 160), "white")
    canvas.paste(make_image(3, (120, 90)), (50, 40))
    assert content_box(canvas) == (50, 40, 170, 130)


def test_flat_images_and_small_drawings_on_large_canvases_are_left_whole():
    for colour in COLOURS:
        assert content_box(Image.new("RGB", (50, 40), colour)) == (0, 0, 50, 40)
    # Bars that would leave less than MIN_KEEP of the width: that axis is left whole.
    narrow = ImageOps.expand(make_image(3, (int(MIN_KEEP * 400) - 10, 90)), (190, 0, 140, 0), "black")
    assert content_box(narrow) == (0, 0, 400, 90)


def test_the_box_turns_with_the_image():
    """Trimming commutes with turns and flips, so dihedral hashes stay one DCT's views."""
    image = ImageOps.expand(make_image(4, (90, 60)), (5, 12, 20, 3), (10, 200, 10))
    for name in DIHEDRAL:
        turned = trim_borders(dihedral_image(image, name))
        assert np.array_equal(np.asarray(turned), np.asarray(dihedral_image(trim_borders(image), name))), name


def test_large_images_are_searched_reduced_and_the_box_mapped_back():
    original = make_image(5, (2000, 1500))
    bordered = ImageOps.expand(original, (0, 300, 0, 300), "black")
    factor = -(-2100 // WORK_SIDE)
    np.testing.assert_allclose(content_box(bordered), (0, 300, 2000, 1800), atol=factor)


def test_tolerance_is_checked():
    with pytest.raises(ValueError, match="got 300"):
        content_box(make_image(1), 300)


def test_hash_and_preprocess_describe_the_content():
    original = make_image(11, (120, 90))
    for colour in COLOURS[:3]:
        boxed = ImageOps.expand(original, (0, 20, 0, 20), colour)
        assert phash(boxed) == phash(original)
        assert np.array_equal(dihedral_hashes(boxed), dihedral_hashes(original))
        torch.testing.assert_close(Preprocess(32)(boxed), Preprocess(32)(original))
    untrimmed = Preprocess(32, trim=False)(ImageOps.expand(original, (0, 20, 0, 20), "black"))
    assert (untrimmed - Preprocess(32)(original)).abs().max() > 0.5


@pytest.mark.parametrize("colour", COLOURS)
def test_one_content_box_gives_the_tensor_and_hashes_that_trimming_each_alone_gives(colour):
    """Reindex workers trim an image once for the model's tensor and its plain pHash."""
    image = jpeg_round_trip(ImageOps.expand(make_image(9, (120, 90)), (14, 6, 3, 20), colour))
    content = trim_borders(image)
    assert content.size != image.size  # the border came off: the found box is what is reused
    for preprocess in (Preprocess(32), Preprocess(96)):
        assert torch.equal(preprocess(content, trimmed=True), preprocess(image))
    assert stored_hashes(image, content) == stored_hashes(image)


def noisy_light_margin(seed: int) -> Image.Image:
    """A dark picture in a light margin too noisy to be a border (levels 160-255), until a bright
    shift clips the margin to one white."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(160, 256, (110, 140, 3), dtype=np.uint8))
    image.paste(make_image(seed, (100, 70)).point(lambda level: level * 100 // 255), (20, 20))
    return image


def test_a_shift_can_change_the_box_so_the_photometric_views_are_trimmed_after_it():
    image = noisy_light_margin(2)
    bright = shifted(image, VIEW_SHIFTS["bright"])
    assert content_box(image) == (0, 0, 140, 110)
    assert content_box(bright) == (20, 20, 120, 90)
    _, bright_hash, _ = stored_hashes(image, trim_borders(image))
    assert bright_hash == phash(bright) != content_phash(bright.crop(content_box(image)))


def test_letterboxed_copies_find_their_original_through_reindex_and_search(tmp_path, options, embedder):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(6):
        make_image(seed, (120, 90)).save(folder / f"img_{seed}.png")
    drawing().save(folder / "drawing.png")
    # Indexed letterboxed: its original (the plain drawing) is the query below.
    ImageOps.expand(make_image(20, (120, 90)), (10, 0, 10, 0), "white").save(folder / "framed.png")
    reindex([folder], options, embedder, progress=False)
    engine = SearchEngine.open(options, embedder)
    queries = {
        "img_2.png": ImageOps.expand(make_image(2, (120, 90)), (0, 22, 0, 22), "black"),
        "img_4.png": jpeg_round_trip(
            ImageOps.expand(make_image(4, (120, 90)), (18, 0, 18, 0), (128, 128, 128))
        ),
        "drawing.png": ImageOps.expand(drawing(), (8, 8, 8, 8), (0, 0, 255)),
        "framed.png": make_image(20, (120, 90)),
    }
    for name, query in queries.items():
        top = engine.search_bytes(image_bytes(query), k=3)["results"][0]
        assert top["source"].endswith(name), name
        assert top["evidence"]["hash"]["distance"] <= 2, name
        assert top["score"] > 0.99, name
    engine.close()
    stored = Image.open(folder / "img_2.png").convert("RGB")
    assert hamming(dihedral_hashes(queries["img_2.png"]), phash(stored)).min() == 0


def tilted(image: Image.Image, degrees: float, fill) -> Image.Image:
    """Pillow's rotate as people call it: the same size, the corners filled."""
    return image.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=fill)


@pytest.mark.parametrize("fill", [(0, 0, 0), (255, 255, 255), (20, 90, 230)])
def test_corner_fill_paints_a_tilts_corners_with_the_content_mean(fill):
    copy = tilted(make_image(6, (120, 90)), 10, fill)
    filled = np.asarray(fill_corners(copy)).astype(int)
    corners = (np.abs(np.asarray(copy).astype(int) - fill).max(axis=-1) <= TOLERANCE) & (
        np.abs(filled - np.asarray(copy)).max(axis=-1) > 0
    )
    rest = np.asarray(copy)[~corners]
    assert corners[0, 0] and corners[-1, -1] and corners.mean() > 0.05
    np.testing.assert_allclose(filled[corners].mean(axis=0), rest.mean(axis=0), atol=2)
    for name in DIHEDRAL:  # it turns with the image
        turned = fill_corners(dihedral_image(copy, name))
        assert np.array_equal(np.asarray(turned), np.asarray(dihedral_image(fill_corners(copy), name))), name


def test_corner_fill_leaves_photos_and_drawing_backgrounds_alone():
    for seed in range(10):
        image = make_image(seed, (120, 90))
        assert fill_corners(image) is image
    art = drawing()  # its white background reaches far in from every side: not corners
    assert fill_corners(art) is art


def test_preprocess_fills_a_tilts_black_corners():
    copy = tilted(make_image(9, (120, 90)), 12, "black")
    assert (Preprocess(64, fill=False)(copy)[:, 0, 0] < -1).all()  # stark: far below the mean
    assert (Preprocess(64)(copy)[:, 0, 0].abs() < 0.5).all()
