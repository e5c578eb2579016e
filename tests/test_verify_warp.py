"""The fallback fits of verification (an affine transform, a homography) for edits that are no
similarity: a stretched aspect and a keystone recovered, degenerate sets and wrong pairs refused,
the edit named in words, and the verdict they may change (only a duplicate the CNN already said)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from twice.augment.synthetic import make_synthetic_image
from twice.augment.transforms import homography as four_point_homography
from twice.augment.transforms import perspective, stretch
from twice.search.explain import explain, verification_json
from twice.search.verdicts import DUPLICATE, SIMILAR, Thresholds
from twice.search.verify import (
    VERIFIED_INLIERS,
    WARPED_EVIDENCE,
    WARPED_INLIERS,
    FeatureExtractor,
    Features,
    Geometry,
    implausible_warp,
    inliers_by_fit,
    verdict_signals,
    verify,
)

STORED_SIZE = (480, 360)
ANGLE_TOL = 1.5  # degrees
STRETCH_TOL = 0.05  # relative


def planted(points: np.ndarray, size: tuple[int, int], descriptors: np.ndarray) -> Features:
    """Features at given positions: equal descriptors on both sides make each pair a match."""
    return Features(points.astype(np.float32), descriptors, size, size, grey=True)


def random_points(seed: int, count: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).uniform((0, 0), size, (count, 2))


def unique_descriptors(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 128), dtype=np.uint8)


def through(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    mapped = np.c_[points, np.ones(len(points))] @ matrix.T
    return mapped[:, :2] / mapped[:, 2:]


def stretch_and_tilt(sx: float, degrees: float, shift=(120.0, 60.0)) -> np.ndarray:
    """Stored -> query: stretch the width by ``sx``, then turn ``degrees`` clockwise (y down)."""
    a = np.radians(degrees)
    turn = np.array([[np.cos(a), -np.sin(a), shift[0]], [np.sin(a), np.cos(a), shift[1]], [0, 0, 1]])
    return turn @ np.diag([sx, 1.0, 1.0])


def keystone(size: tuple[int, int], shrink: float) -> np.ndarray:
    """Stored -> query: the top side shrinks by ``shrink`` of its length towards its middle."""
    w, h = size
    corners = np.array([(0, 0), (w, 0), (w, h), (0, h)], float)
    moved = corners + np.array([(w * shrink / 2, 0), (-w * shrink / 2, 0), (0, 0), (0, 0)])
    return np.array([*four_point_homography(corners, moved), 1.0]).reshape(3, 3)


def planted_pair(to_query: np.ndarray, count: int = 24, seed: int = 0, query_size=(640, 480)):
    stored_points = random_points(seed, count, STORED_SIZE)
    descriptors = unique_descriptors(seed + 1, count)
    query = planted(through(to_query, stored_points), query_size, descriptors)
    return query, planted(stored_points, STORED_SIZE, descriptors)


# planted geometry: the fit recovers the edit ------------------------------------------------------


@pytest.mark.parametrize(("sx", "degrees"), [(1.5, 10.0), (0.65, -8.0), (1.6, 0.0)])
def test_a_planted_stretch_is_recovered_by_the_affine_fit(sx, degrees):
    query, stored = planted_pair(stretch_and_tilt(sx, degrees))
    result = verify(query, stored)
    assert result.verified and result.warped, result.reason
    assert result.similarity_inliers < VERIFIED_INLIERS <= WARPED_INLIERS <= result.inliers
    geometry = result.geometry
    assert geometry.fit == "affine"  # the homography fits a stretch as well, but is no better
    assert abs(geometry.angle - degrees) <= ANGLE_TOL
    assert abs(geometry.stretch / sx - 1.0) <= STRETCH_TOL
    assert not geometry.mirrored
    weighed = result.inliers if result.inliers >= WARPED_EVIDENCE else result.similarity_inliers
    assert verdict_signals(result)["inliers"] == weighed  # a fallback fit weighs from WARPED_EVIDENCE


@pytest.mark.parametrize("shrink", [0.35, 0.45])
def test_a_planted_keystone_is_recovered_by_the_homography(shrink):
    to_query = keystone(STORED_SIZE, shrink)
    query, stored = planted_pair(to_query, query_size=STORED_SIZE)
    counts = inliers_by_fit(query, stored)
    assert counts["homography"] >= 22 and counts["similarity"] < VERIFIED_INLIERS
    result = verify(query, stored)
    assert result.verified and result.geometry.fit == "homography"
    assert explain(result.geometry).startswith("in perspective")
    assert verification_json(result)["fit"] == "homography"
    assert result.geometry.crop is None  # the query shows all of the stored picture, narrowed at the top


def test_a_mirrored_keystone_is_recovered_with_the_mirror():
    size = STORED_SIZE
    flip = np.array([[-1.0, 0.0, size[0] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    query, stored = planted_pair(keystone(size, 0.35) @ flip, query_size=size)
    # the mirror's features as FeatureExtractor.both gives them: points flipped, same descriptors
    mirror_points = query.points.copy()
    mirror_points[:, 0] = (size[0] - 1) - mirror_points[:, 0]
    mirror = planted(mirror_points, size, query.descriptors)
    result = verify(query, stored, mirror)
    assert result.verified and result.geometry.fit == "homography" and result.geometry.mirrored


# degenerate sets and wrong pairs: no fit -----------------------------------------------------------


def test_collinear_matches_give_no_fallback_fit():
    xs = np.linspace(10, 470, 60)
    on_a_line = np.c_[xs, 0.5 * xs + 20]
    descriptors = unique_descriptors(3, 60)
    stored = planted(on_a_line, STORED_SIZE, descriptors)
    query = planted(through(stretch_and_tilt(1.4, 5.0), on_a_line), (800, 600), descriptors)
    result = verify(query, stored)
    assert not result.warped
    counts = inliers_by_fit(query, stored)
    assert counts["affine"] == 0 and counts["homography"] == 0


def test_random_correspondences_give_no_fit():
    """Matches that pair unrelated positions (a wrong pair's matches): nothing fits them all."""
    for seed in range(5):
        descriptors = unique_descriptors(seed, 80)
        query = planted(random_points(seed + 10, 80, STORED_SIZE), STORED_SIZE, descriptors)
        stored = planted(random_points(seed + 20, 80, STORED_SIZE), STORED_SIZE, descriptors)
        result = verify(query, stored)
        assert not result.verified, result.geometry
        assert max(inliers_by_fit(query, stored).values()) < WARPED_INLIERS


@pytest.mark.parametrize(
    ("matrix", "words"),
    [
        (np.diag([3.0, 1.0, 1.0]), "stretch or shear"),  # a 3x stretch: no copy edit
        (np.array([[1.0, 1.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), "stretch or shear"),  # a shear
        (np.diag([-1.0, 1.0, 1.0]), "turned-over"),  # a mirror is the mirrored pose's business
        (np.diag([20.0, 20.0, 1.0]), "scale"),
        (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.004, 0.0, 1.0]]), "infinity"),  # folds over
        (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0025, 0.0, 1.0]]), "stretch or shear"),  # steep
    ],
    ids=["stretch", "shear", "flip", "scale", "through-infinity", "steep"],
)
def test_implausible_warps_name_why(matrix, words):
    assert words in implausible_warp(matrix, STORED_SIZE)


def test_plausible_warps_pass():
    assert implausible_warp(stretch_and_tilt(1.6, 12.0), STORED_SIZE) is None
    assert implausible_warp(np.linalg.inv(keystone(STORED_SIZE, 0.35)), STORED_SIZE) is None


# real images ----------------------------------------------------------------------------------------


def drawing(seed: int = 0, size=(320, 240)) -> Image.Image:
    """Small coloured triangles scattered on white: different for every seed, made by the test."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y, r = (
            int(rng.integers(0, size[0] - 12)),
            int(rng.integers(0, size[1] - 12)),
            int(rng.integers(3, 10)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        draw.polygon([(x, y), (x + 2 * r, y + r // 2), (x + r, y + 2 * r)], fill=colour)
    return image


@pytest.fixture(scope="module")
def extract() -> FeatureExtractor:
    return FeatureExtractor()


def test_a_squashed_copy_of_a_photo_verifies_as_stretched(extract):
    original = make_synthetic_image(26, 1, (320, 240))
    plain, mirror = extract.both(stretch(original, 1.0, 0.6))
    result = verify(plain, extract(original), mirror)
    assert result.verified and result.warped, result.reason
    assert abs(result.geometry.stretch - 1 / 0.6) / (1 / 0.6) <= 0.08
    assert explain(result.geometry).startswith("stretched 6")  # ~67% wider than tall


def test_a_keystone_copy_keeps_more_inliers_under_the_homography(extract):
    original = make_synthetic_image(26, 2, (320, 240))
    plain, mirror = extract.both(perspective(original, 0.35, 1))
    counts = inliers_by_fit(plain, extract(original), mirror)
    assert counts["homography"] >= 2 * counts["similarity"]
    assert verify(plain, extract(original), mirror).verified


def test_different_drawings_fit_no_model(extract):
    for seed in range(3):
        plain, mirror = extract.both(drawing(seed + 10))
        counts = inliers_by_fit(plain, extract(drawing(seed + 20)), mirror)
        assert max(counts.values()) < VERIFIED_INLIERS, counts


# words and verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geometry", "words"),
    [
        (Geometry(False, 0.0, 0.78, None, None, "affine", 1.67), "stretched 67% wider, scaled to 78%"),
        (
            Geometry(False, 10.0, 1.2, None, None, "affine", 0.8),
            "stretched 25% taller, rotated 10° clockwise",
        ),
        (
            Geometry(False, 0.0, 0.9, None, (0.1, 0.0, 0.1, 0.0), "homography", 1.0),
            "in perspective, scaled to 90%",
        ),
        (Geometry(False, 0.0, 1.0, None, None, "affine", 1.02), "the same picture, no visible edit"),
    ],
)
def test_warped_edits_in_words(geometry, words):
    assert explain(geometry).startswith(words)


def test_a_warped_fit_lifts_the_cnn_alone_veto_only():
    rule = Thresholds()  # duplicate >= 0.90, similar >= 0.75, verify_inliers 8
    # the CNN alone says duplicate, the similarity fit found 5 inliers: demoted, unless warped
    assert rule.judge(0.95, None, structure=40, inliers=5).verdict == SIMILAR
    lifted = rule.judge(0.95, None, structure=40, inliers=5, warped=True)
    assert (lifted.verdict, lifted.demoted, lifted.decided_by) == (DUPLICATE, False, ["cnn"])
    # a warped fit makes no duplicate from a score the CNN calls similar or different
    assert rule.judge(0.80, None, structure=40, inliers=5, warped=True).verdict == SIMILAR
    assert rule.judge(0.40, None, structure=40, inliers=5, warped=True).verdict != DUPLICATE
    # ... nor lifts the recoloured demotion
    assert rule.judge(0.95, None, structure=40, inliers=5, warped=True, recoloured=True).verdict == SIMILAR


@pytest.mark.parametrize("sx", [1.2, 1.4])
def test_a_stretch_the_similarity_also_fits_is_explained_as_a_stretch(sx):
    query, stored = planted_pair(stretch_and_tilt(sx, 0.0), count=60)
    counts = inliers_by_fit(query, stored)
    assert VERIFIED_INLIERS <= counts["similarity"] < counts["affine"] / 2  # a tilt and crop, read wrong
    result = verify(query, stored)
    assert result.geometry.fit == "affine" and abs(result.geometry.stretch / sx - 1.0) <= STRETCH_TOL
    assert "stretched" in explain(result.geometry)
    assert verify(query, stored, fallback=False).geometry.fit == "similarity"
