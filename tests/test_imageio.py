"""Safe decoding of awkward and hostile image files."""

from __future__ import annotations

import pickle

import pytest

from awkward import bad_images, exif_rotated_jpeg, good_images
from imagegen import image_bytes, make_image
from twice.imageio import ImageError, decode_image, load_image


@pytest.mark.parametrize("name", sorted(good_images()))
def test_awkward_but_valid_files_decode_to_rgb(name):
    decoded = decode_image(good_images()[name], name)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (decoded.width, decoded.height) or decoded.format == "JPEG"
    assert len(decoded.sha256) == 64


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_files_raise_image_error_with_reason_and_source(name):
    data, reason = bad_images()[name]
    with pytest.raises(ImageError, match=name) as info:
        decode_image(data, name)
    assert info.value.reason == reason


def test_exif_orientation_is_applied_before_anything_else():
    decoded = decode_image(exif_rotated_jpeg(), "exif.jpg")
    assert decoded.image.size == (48, 64)  # stored 64x48, viewed rotated
    assert (decoded.width, decoded.height) == (48, 64)


def test_byte_and_pixel_limits():
    data = image_bytes(make_image(1, (64, 48)))
    with pytest.raises(ImageError, match="byte limit") as info:
        decode_image(data, "big.png", max_bytes=100)
    assert info.value.reason == "too_large"
    with pytest.raises(ImageError, match="decompression bomb") as info:
        decode_image(data, "wide.png", max_pixels=1000)
    assert info.value.reason == "bomb"


def test_jpeg_draft_decodes_smaller_but_reports_full_size():
    data = image_bytes(make_image(2, (800, 600)), "JPEG")
    decoded = decode_image(data, "photo.jpg", draft_side=128)
    assert (decoded.width, decoded.height) == (800, 600)
    assert 128 <= min(decoded.image.size) < 600


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png.*cannot be read"):
        load_image(tmp_path / "missing.png")
    path = tmp_path / "big.png"
    path.write_bytes(image_bytes(make_image(3)))
    with pytest.raises(ImageError, match="big.png.*byte limit"):
        load_image(path, max_bytes=10)


def test_image_errors_survive_pickling_from_a_worker_process():
    error = ImageError("bomb", "big.png", "90000000 pixels")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.source, str(copy)) == ("bomb", "big.png", str(error))
