"""Verdict rules beyond the plain cuts: weak low-structure hashes, verification, shipped thresholds."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from imagegen import make_image
from twice.hashing import hash_structure
from twice.search.verdicts import (
    DIFFERENT,
    DUPLICATE,
    SIMILAR,
    Thresholds,
    shipped_thresholds,
)


def symmetric_drawing(size: int = 128, radius: int = 30) -> Image.Image:
    """A centred outline on white: the clip art whose hashes crowd together."""
    image = Image.new("RGB", (size, size), "white")
    c = size // 2
    ImageDraw.Draw(image).ellipse([c - radius, c - radius, c + radius, c + radius], outline="black", width=2)
    return image


def test_structure_tells_a_drawing_on_white_from_a_picture():
    rule = Thresholds()
    assert rule.is_low_structure(hash_structure(symmetric_drawing()))
    assert not rule.is_low_structure(hash_structure(make_image(3, (128, 96))))


def test_a_low_structure_pair_at_6_bits_is_not_a_duplicate_while_a_photo_pair_is():
    rule = Thresholds()  # hash duplicate <= 8 bits; CNN 0.5 is different
    drawing, photo = hash_structure(symmetric_drawing()), hash_structure(make_image(3, (128, 96)))
    weak = rule.judge(0.5, 6, structure=drawing)
    assert (weak.verdict, weak.hash, weak.weak_hash) == (SIMILAR, SIMILAR, True)
    strong = rule.judge(0.5, 6, structure=photo)
    assert (strong.verdict, strong.decided_by, strong.weak_hash) == (DUPLICATE, ["hash"], False)
    assert rule.judge(0.5, 6).verdict == DUPLICATE  # structure unknown: the hash keeps its say


def test_the_cnn_and_exact_bytes_still_make_a_low_structure_duplicate():
    rule = Thresholds()
    assert rule.judge(0.95, 6, structure=3).verdict == DUPLICATE
    assert rule.judge(0.1, 30, exact=True, structure=0).verdict == DUPLICATE


@pytest.mark.parametrize(
    ("score", "inliers", "verdict"),
    [
        (0.70, 8, DUPLICATE),  # verified, CNN within the slack below similar (0.75 - 0.15)
        (0.55, 10, DIFFERENT),  # a few inliers and a CNN far below similar: not verified
        (0.45, 12, DUPLICATE),  # a reframing fit with 12 inliers: the floor is 0.2
        (0.15, 64, DIFFERENT),  # ... and no lower
        (0.80, 7, SIMILAR),  # too few inliers
        (0.80, None, SIMILAR),  # verification did not run
    ],
)
def test_verification_makes_a_duplicate_with_enough_inliers(score, inliers, verdict):
    judgement = Thresholds().judge(score, inliers=inliers)
    assert judgement.verdict == verdict
    assert judgement.verified == (verdict == DUPLICATE)
    if judgement.verified:
        assert judgement.decided_by == ["verify"]


def test_no_geometry_demotes_a_low_structure_duplicate_only():
    rule = Thresholds()
    low = rule.judge(0.95, 4, structure=5, inliers=1)  # a CNN duplicate of a drawing, no geometry
    assert (low.verdict, low.demoted) == (SIMILAR, True)
    photo = rule.judge(0.95, 4, structure=40, inliers=0)  # a blurred photo copy: no keypoints, still a copy
    assert (photo.verdict, photo.demoted) == (DUPLICATE, False)
    assert rule.judge(0.95, None, structure=5, inliers=0).verdict == SIMILAR


def test_a_fit_in_place_needs_three_times_the_inliers():
    """Cards of one deck fit in place (no crop, border or tilt) with 8-22 inliers; a copy edited
    in place scores high on the CNN already, so the fit must be stronger to count."""
    rule = Thresholds()
    assert rule.judge(0.65, inliers=20, reframed=True).verdict == DUPLICATE
    assert rule.judge(0.65, inliers=20, reframed=False).verdict == DIFFERENT
    assert rule.judge(0.65, inliers=24, reframed=False).verdict == DUPLICATE


def test_a_reframing_fit_lowers_the_floor_and_a_fit_in_place_does_not():
    """Crops the CNN scores 0.23-0.53 keep 11-55 reframed inliers; wrong pairs reached 9."""
    rule = Thresholds()
    assert rule.verify_floor(12, reframed=True) == pytest.approx(0.2)
    assert rule.verify_floor(11, reframed=True) == pytest.approx(0.6)
    assert rule.verify_floor(12, reframed=False) == pytest.approx(0.6)
    assert rule.judge(0.3, inliers=12, reframed=True).verdict == DUPLICATE
    assert rule.judge(0.3, inliers=11, reframed=True).verdict == DIFFERENT
    assert rule.judge(0.3, inliers=40, reframed=False).verdict == DIFFERENT


def test_a_fit_in_place_backs_a_duplicate_of_the_cnn_alone():
    """A perspective copy at CNN 0.97 fits in place with 14 inliers: too few to verify on their
    own, enough to back the CNN (look-alike letters match fewer than 8)."""
    rule = Thresholds()
    backed = rule.judge(0.95, None, structure=40, inliers=14, reframed=False)
    assert (backed.verdict, backed.demoted, backed.verified) == (DUPLICATE, False, False)
    assert rule.judge(0.95, None, structure=40, inliers=7, reframed=False).verdict == SIMILAR


def test_too_little_geometry_vetoes_a_duplicate_of_the_cnn_alone():
    """The letters S and s: the CNN says duplicate, verification matches a few keypoints only."""
    rule = Thresholds()
    letters = rule.judge(0.95, None, structure=40, inliers=4)
    assert (letters.verdict, letters.demoted, letters.cnn) == (SIMILAR, True, DUPLICATE)
    assert rule.judge(0.95, None, structure=40).verdict == DUPLICATE  # too little detail to verify
    assert rule.judge(0.95, 4, structure=40, inliers=4).verdict == DUPLICATE  # the hash backs it
    assert rule.judge(0.95, None, structure=40, inliers=8).verdict == DUPLICATE  # verified


def test_no_geometry_demotes_a_hash_duplicate_the_cnn_disowns():
    """Two different drawings 4 bits apart with plenty of structure: the hash alone says
    duplicate, the CNN says different, verification finds nothing shared."""
    rule = Thresholds()
    drawings = rule.judge(0.30, 4, structure=40, inliers=1)
    assert (drawings.verdict, drawings.demoted) == (SIMILAR, True)
    assert rule.judge(0.30, 4, structure=40).verdict == DUPLICATE  # not verified: the hash stands
    assert rule.judge(0.30, 4, structure=40, inliers=12).verdict == DUPLICATE  # shared geometry: kept


def test_thresholds_refuse_bad_values_naming_them():
    with pytest.raises(ValueError, match="low_structure=80"):
        Thresholds(low_structure=80)
    with pytest.raises(ValueError, match="'guessed'"):
        Thresholds(source="guessed")


def test_shipped_thresholds_round_trip_and_say_so():
    fitted = Thresholds(0.8, 0.6, "calibrated", 5, 9, low_structure=18, verify_inliers=10)
    shipped = shipped_thresholds(fitted.to_shipped(), "m1")
    assert shipped.source == "shipped"
    kept = (shipped.duplicate, shipped.hash_duplicate, shipped.low_structure, shipped.verify_inliers)
    assert kept == (0.8, 5, 18, 10)
    assert shipped.weights.to_dict() == fitted.weights.to_dict()
    assert shipped_thresholds({"duplicate": 0.2, "similar": 0.9}, "m1") == Thresholds()  # unusable: defaults


def test_little_detail_makes_no_duplicate_without_identical_bytes():
    """Thin line stars at icon size: low structure, too few keypoints to verify, alike to the
    CNN at 0.99 and to the hash at 0 bits. A blurred photo has few keypoints but keeps its
    structure, and keeps its verdict."""
    rule = Thresholds()
    stars = rule.judge(0.99, 0, structure=5, featureless=True)
    assert (stars.verdict, stars.demoted, stars.cnn) == (SIMILAR, True, DUPLICATE)
    assert rule.judge(0.99, 0, structure=5).verdict == DUPLICATE  # verification did not say
    assert rule.judge(0.99, 0, structure=40, featureless=True).verdict == DUPLICATE  # a blurred photo
    assert rule.judge(0.5, 0, exact=True, structure=5, featureless=True).verdict == DUPLICATE


def test_a_plain_stored_image_needs_a_hash_match():
    """A LED or a flag has too few keypoints to verify against, and the CNN calls plain shapes
    of one kind alike (two flags of three stripes at 1.000): the CNN alone makes no duplicate
    there, however high; a hash match or identical bytes do."""
    rule = Thresholds()
    for score in (0.9, 0.99, 1.0):
        cnn_alone = rule.judge(score, 30, structure=40, featureless=True, plain=True)
        assert (cnn_alone.verdict, cnn_alone.demoted, cnn_alone.cnn) == (SIMILAR, True, DUPLICATE)
    weak_hash = rule.judge(0.99, 0, structure=5, featureless=True, plain=True)  # low structure
    assert (weak_hash.verdict, weak_hash.demoted) == (SIMILAR, True)
    assert rule.judge(0.5, 0, structure=40, featureless=True, plain=True).verdict == DUPLICATE
    assert rule.judge(0.99, 0, structure=40, featureless=True, plain=True).verdict == DUPLICATE
    assert rule.judge(0.5, 30, exact=True, featureless=True, plain=True).verdict == DUPLICATE
    assert rule.judge(0.99, 30, structure=40, featureless=True).verdict == DUPLICATE  # a blurred query


def test_recoloured_images_are_no_duplicate_whatever_else_says_so():
    rule = Thresholds()
    verified = rule.judge(0.99, 0, structure=40, inliers=60, reframed=False)
    assert (verified.verdict, verified.verified) == (DUPLICATE, True)
    recoloured = rule.judge(0.99, 0, structure=40, inliers=60, reframed=False, recoloured=True)
    assert (recoloured.verdict, recoloured.verified, recoloured.demoted) == (SIMILAR, False, True)
    assert rule.judge(0.99, 0, exact=True, recoloured=True).verdict == DUPLICATE
