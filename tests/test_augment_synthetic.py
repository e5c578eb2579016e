"""The synthetic collection: deterministic, distinct, photo-like JPEGs; existing files kept."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from PIL import Image

from imagegen import image_bytes
from twice.augment import make_collection, make_synthetic_image
from twice.augment.synthetic import FAMILIES, JPEG_QUALITY

SIZE = (96, 64)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_collection_is_deterministic_per_seed(tmp_path):
    a = make_collection(tmp_path / "a", 6, seed=1, size=SIZE)
    b = make_collection(tmp_path / "b", 6, seed=1, size=SIZE)
    c = make_collection(tmp_path / "c", 6, seed=2, size=SIZE)
    assert [p.name for p in a] == [p.name for p in b]
    assert [digest(p) for p in a] == [digest(p) for p in b]
    assert not {digest(p) for p in a} & {digest(p) for p in c}


def test_images_are_jpeg_of_the_requested_size_and_photo_like(tmp_path):
    for path in make_collection(tmp_path, 6, size=SIZE):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == SIZE
            pixels = np.asarray(image, dtype=np.float32)
        assert pixels.std() > 8  # not a flat field
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # many colours, like a photo


def test_images_are_visually_distinct_and_all_families_appear(tmp_path):
    paths = make_collection(tmp_path, 9, size=SIZE)
    arrays = [np.asarray(Image.open(p), dtype=np.float32) for p in paths]
    for x, y in itertools.combinations(arrays, 2):
        assert np.abs(x - y).mean() > 10
    assert len(FAMILIES) == 3
    # each family draws something recognisably its own: index i uses FAMILIES[i % 3]
    rng = np.random.default_rng(0)
    for family in FAMILIES:
        assert family(rng, (64, 48)).size == (64, 48)


def test_existing_files_are_kept_and_counted_in_the_list(tmp_path):
    first = make_collection(tmp_path, 4, size=SIZE)
    first[1].write_bytes(b"kept as is")
    again = make_collection(tmp_path, 6, size=SIZE)
    assert again[:4] == first and len(again) == 6
    assert first[1].read_bytes() == b"kept as is"
    assert all(p.exists() for p in again)
    assert make_collection(tmp_path / "none", 0) == []


def test_single_image_function_matches_the_files(tmp_path):
    (path,) = make_collection(tmp_path, 1, seed=5, size=SIZE)
    expected = image_bytes(make_synthetic_image(5, 0, SIZE), "JPEG", quality=JPEG_QUALITY)
    assert path.read_bytes() == expected
    assert make_synthetic_image(5, 1, SIZE).tobytes() != make_synthetic_image(5, 0, SIZE).tobytes()


@pytest.mark.parametrize(
    ("count", "size", "message"),
    [(-1, SIZE, "count must be >= 0"), (2, (8, 64), "size must be at least 16x16")],
)
def test_bad_arguments_are_refused(tmp_path, count, size, message):
    with pytest.raises(ValueError, match=message):
        make_collection(tmp_path, count, size=size)
