"""Geometric verification: do two images show the same picture, and how was one made from the other?

Keypoints (SIFT by default) on both images at a bounded size, nearest-neighbour matching with
Lowe's ratio test kept one-to-one (each match is the other side's best too), done twice: with
the query and with its mirror image. A RANSAC similarity transform (rotation, uniform scale,
shift; a mirror comes from the mirrored query) is fitted to each set of matches and the better
one kept. Its inliers are counted at distinct positions, so that a blob of keypoints at one spot
(SIFT gives a point several orientations) counts once; a fit whose scale is out of bounds is no
fit. The transform, read from the stored image to the query, says the edit: the angle, the
mirror, the scale, the box of the stored image that the query shows (a crop) and the borders
the query added around it (letterbox, caption bar).

A similarity first: most edits people make to copies (turns, tilts, crops, letterboxes,
resizing, mirroring) are similarities, and more degrees of freedom let unrelated drawings fit
more wrong pairs from few matches. Only when the similarity does not verify, and the pose it
found most in has ``FALLBACK_MATCHES`` one-to-one matches or more, a fallback fit follows the
edits that are not similarities: an affine transform (a stretched aspect, with a tilt or crop)
and a homography (a keystone: a screen or print photographed at an angle). Each must be a
plausible edit (its anisotropy bounded, the query's frame a convex quad that is not turned
over, within the scale bounds) and reach ``WARPED_INLIERS``, more than the similarity needs
(docs/verification.md).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from twice.borders import content_box

LOG = logging.getLogger(__name__)

DETECTORS = ("sift", "orb")
DEFAULT_DETECTOR = "sift"
MAX_SIDE = 512  # px: keypoints are found on the image resized to this long side (never enlarged)
MAX_KEYPOINTS = 1000
MIN_KEYPOINTS = 12  # an image with fewer (flat, a few strokes) cannot be verified
# Keypoints are found on the grey image with its levels stretched to the full range (``stretched``):
# SIFT's contrast threshold is absolute, so a darkened or brightened copy (its levels squeezed
# and clipped) or a dim, flat scene keeps too few keypoints to verify, while an image that already
# spans the full range (most clip art: lines on white) is unchanged. The range is read between
# these percentiles (a few stray pixels do not hold it open) and only stretched when it is at
# least STRETCH_MIN_RANGE levels wide (a flat image's noise is not amplified into keypoints).
# Measured (python -m bench.verification): copies with >= 8 inliers 0.861 -> 0.886, wrong clip-art
# pairs with >= 8 of 2,000 18 -> 18; on the quality bench's top-5 candidates (30 originals, 570
# copies, 2,783 wrong ones) copies found first with >= 8 inliers 525 -> 538 of 566, most inliers of
# a wrong one 11 -> 10. A lower contrast threshold instead (0.01) verified more copies (554) but
# made 6 more of 999 never-indexed drawings duplicates (stars, icons of one set).
STRETCH_PERCENTILES = (0.5, 99.5)
STRETCH_MIN_RANGE = 48
# A second look at a search's first candidate when the first did not verify: SIFT at a lower
# contrast threshold (OpenCV's default is 0.04) finds keypoints in dim, flat scenes that the
# stretch cannot lift (a copy that added a white caption bar or black borders spans the full range
# already). Everywhere, 0.01 verified 554 of those 566 copies (stretched: 538) but made 6 more of
# 999 never-indexed drawings duplicates: stars of one set escaping the rule for featureless
# drawings, icons of one set verified by 12-15 reframed inliers. So the second look may only
# verify, never lift a demotion, and only with RETRY_INLIERS.
RETRY_CONTRAST = 0.01
RETRY_INLIERS = 20
RATIO = 0.8  # Lowe's ratio test: best match distance < RATIO x second best
RANSAC_PIXELS = 4.0  # inlier tolerance, px at MAX_SIDE
MIN_SCALE, MAX_SCALE = 1 / 8, 8.0  # feature-image scale of a plausible fit (a crop to 1/8 per side)
CELL = 4.0  # px at MAX_SIDE: inliers closer than this on either image count as one position
# A fit needs at least this many inliers at distinct positions to count as verified. Measured on
# clip art against clip art (the hard wrong pairs): see docs/verification.md.
VERIFIED_INLIERS = 8
# The fallback fits (affine, homography): tried only on a pose with this many one-to-one matches
# (fewer cannot reach WARPED_INLIERS at distinct positions, and the cost stays bounded), kept
# only with WARPED_INLIERS, and only as plausible edits: the linear part's (the homography's
# local Jacobian's, at the query's corners and centre) singular values at most MAX_ANISOTROPY
# apart (a stretch of 0.6-1.6 is 1.67). That bounds shear, and a homography's perspective too: a
# keystone steep enough to shrink the far side's scale 3-fold is 2.3 anisotropic there. Among
# the 1,982 of 2,000 hard wrong clip-art pairs whose similarity fit fails, no fallback fit reached
# more than 7 inliers; keystones and stretched crops that the similarity misses keep 11-20
# (docs/verification.md).
FITS = ("similarity", "affine", "homography")
FALLBACK_MATCHES = 12
WARPED_INLIERS = 10
# A fallback fit with this many inliers weighs as a similarity fit would (a crop of a stretched
# copy at CNN 0.33 keeps 22 affine inliers): twice the most any wrong pair reached where the
# fallback decides (7 of 1,982 pairs the similarity fails; bench/results/verification-fits.md).
WARPED_EVIDENCE = 2 * WARPED_INLIERS
# ... and replaces a similarity fit that verified when it has this many times its inliers (a
# planted 1.15-1.4x stretch: the similarity keeps 10-27 of 40-80 points, the affine fit all).
WARPED_GAIN = 2.0
# The homography is kept over the affine fit only with more inliers than this many times the
# affine's: a stretched copy fits both alike and is a stretch, not a keystone.
HOMOGRAPHY_GAIN = 1.25
MAX_ANISOTROPY = 2.2
VERIFIED_NATS = 6.0
# Geometry below these is noise of the fit, not an edit.
ANGLE_DEGREES = 1.5
# A tilt that moves the picture (``Verification.reframed``): wrong pairs of one stamp set fit
# with 1.5-2.5° of angle noise, the tilts people make start at ~3°.
TILT_DEGREES = 3.0
SCALE_CHANGE = 0.08
CROP_SHARE = 0.03  # a crop or border under 3% of a side is not reported
GREY_SPREAD = 4.0  # mean |channel - luma| below this: a grey image
# Colour: a chroma-weighted histogram of hues (CIELAB a*b* angle) at a small size. The edits
# people make to copies keep hues (a grey copy loses them all), recoloured drawings of one set
# (a red and a green button, LEDs, arrows, jigsaw pieces) do not: see docs/verification.md.
HUE_BINS = 12
HUE_SIDE = 96  # px: the long side the hues are read at
COLOURFUL_CHROMA = 12.0  # a pixel with more CIELAB chroma than this is in colour
COLOURFUL_SHARE = 0.03  # an image with fewer pixels in colour has no hues to compare
RECOLOURED_AGREEMENT = 0.2  # hue histograms sharing less than this: recoloured, not a copy
# Aligned hues (``hue_shift``): once a fit aligns the pair, the pixels in colour in both are
# compared hue by hue. A copy keeps each pixel's hue (a brighter, darker, re-encoded or blurred
# copy moves it little, a grey copy has none); a drawing of one set in other colours (a green
# and a teal arrow, whose hue histograms overlap) moves them all. Measured on the bench's pairs
# (docs/verification.md): 1,076 verified copies moved at most 0.26 of such pixels by over 45°,
# drawings of one set in other colours 0.60-1.00.
HUE_CHROMA = 20.0  # CIELAB chroma a pixel needs in both images for its hue to be compared
HUE_TURN = 45.0  # degrees: a hue moved more than this is another colour
RECOLOURED_SHARE = 0.5  # more of the compared pixels moved than this: recoloured
HUE_MIN_PIXELS = 100  # at AGREEMENT_SIDE: fewer compared pixels say nothing
# Aligned agreement (``agreement``): once a fit verifies, the query is warped onto the stored
# image by it and their grey levels compared inside the overlap, at this long side, blurred by
# AGREEMENT_BLUR px (RANSAC's tolerance of a few pixels at MAX_SIDE), as a normalised
# correlation. A copy agrees where it shows the picture; different drawings of one set that
# share a part (icons of one theme, a/ä, flags) fit that part and differ around it.
AGREEMENT_SIDE = 128
AGREEMENT_BLUR = 0.75
AGREEMENT_MIN_PIXELS = 256  # a smaller overlap says nothing
REFIT_AGREEMENT = 0.9  # a similarity fit agreeing less is aligned by the fallback fit too


@dataclass(frozen=True)
class Features:
    """The keypoints of one image: positions in the resized image's pixels, their descriptors."""

    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray  # (n, d) uint8 (SIFT: 128 values; ORB: 32 bytes of bits)
    size: tuple[int, int]  # (width, height) of the resized image the points are in
    full_size: tuple[int, int]  # (width, height) of the full image (the scale is reported in it)
    grey: bool  # the image has no colour
    detector: str = DEFAULT_DETECTOR
    hues: np.ndarray | None = None  # (HUE_BINS,) shares of chroma per hue; None: too little colour
    thumb: np.ndarray | None = None  # the grey levels at AGREEMENT_SIDE, to compare once aligned
    # The picture inside uniform borders (``twice.borders.content_box``), as shares of each side
    # (left, top, right, bottom): borders are not content, so agreement leaves them out.
    content: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    chroma: np.ndarray | None = None  # (2, h, w) int8: CIELAB a*, b* at the thumb's size; None: grey

    def __len__(self) -> int:
        return len(self.points)

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.hues, self.thumb, self.chroma) if a is not None)
        return self.points.nbytes + self.descriptors.nbytes + extra


@dataclass(frozen=True)
class Geometry:
    """A fitted edit: how the stored image became the query."""

    mirrored: bool
    angle: float  # degrees, clockwise
    scale: float  # query pixels per stored pixel (full sizes)
    crop: tuple[float, float, float, float] | None  # (left, top, right, bottom) of the stored image
    borders: tuple[float, float, float, float] | None  # (left, top, right, bottom) of the query
    fit: str = "similarity"  # which transform was kept: similarity, affine or homography
    stretch: float = 1.0  # the query's width : height change (an affine or homography fit; 1: none)


@dataclass(frozen=True)
class Verification:
    """One pair's result: inliers at distinct positions, and the edit when the fit verifies."""

    inliers: int  # of the fit kept (a fallback fit's when it verified, else the similarity's)
    matches: int  # one-to-one matches the fit was tried on (the better of plain and mirrored)
    geometry: Geometry | None  # None unless verified
    reason: str | None = None  # why it did not verify, in words
    conclusive: bool = True  # False: too little detail to match at all (says nothing either way)
    plain: bool = False  # the stored image has too little detail to verify anything against
    recoloured: bool = False  # both images in colour, in different hues (``hue_agreement``)
    similarity_inliers: int | None = None  # the similarity fit's, when a fallback fit was kept
    agreement: float | None = None  # of the two images aligned by the fit (``agreement``)

    @property
    def verified(self) -> bool:
        return self.geometry is not None

    @property
    def warped(self) -> bool:
        """Whether a fallback fit (affine, homography) verified the pair, not the similarity."""
        return self.geometry is not None and self.geometry.fit != "similarity"

    @property
    def reframed(self) -> bool:
        """Whether the fit moved the picture: a crop, added borders or a tilt off the quarter turns."""
        g = self.geometry
        if g is None:
            return False
        off_axis = abs((g.angle + 45.0) % 90.0 - 45.0) >= TILT_DEGREES
        return g.crop is not None or g.borders is not None or off_axis

    @property
    def evidence(self) -> int | None:
        """The inlier count a verdict may weigh: the similarity fit's (its rules were measured on
        it), or a fallback fit's from ``WARPED_EVIDENCE`` inliers; None when the images had too
        little detail."""
        if not self.conclusive:
            return None
        if self.similarity_inliers is None or self.inliers >= WARPED_EVIDENCE:
            return self.inliers
        return self.similarity_inliers


class FeatureExtractor:
    """Finds keypoints and descriptors at a bounded size; ``detector`` is ``sift`` or ``orb``."""

    def __init__(
        self,
        detector: str = DEFAULT_DETECTOR,
        max_side: int = MAX_SIDE,
        max_keypoints: int = MAX_KEYPOINTS,
        contrast: float = 0.04,
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
        if max_side < 32 or max_keypoints < MIN_KEYPOINTS or not 0.0 < contrast < 1.0:
            raise ValueError(
                f"max_side must be >= 32, max_keypoints >= {MIN_KEYPOINTS} and 0 < contrast < 1,"
                f" got {max_side}, {max_keypoints}, {contrast}"
            )
        self.detector = detector
        self.max_side = max_side
        self.max_keypoints = max_keypoints
        self.contrast = contrast  # SIFT's contrast threshold (ORB has none)
        self._local = threading.local()  # OpenCV detectors are not shared between threads

    def _cv_detector(self):
        made = getattr(self._local, "detector", None)
        if made is None:
            if self.detector == "sift":
                made = cv2.SIFT_create(self.max_keypoints, contrastThreshold=self.contrast)
            else:
                made = cv2.ORB_create(self.max_keypoints)
            self._local.detector = made
        return made

    def __call__(self, image: Image.Image | np.ndarray, full_size: tuple[int, int] | None = None) -> Features:
        """The features of an RGB image; ``full_size`` when ``image`` was decoded smaller."""
        return self.both(image, full_size, mirror=False)[0]

    def both(
        self, image: Image.Image | np.ndarray, full_size: tuple[int, int] | None = None, mirror: bool = True
    ) -> tuple[Features, Features | None]:
        """The features of the image and (``mirror``) of its mirror image, in the mirror's own
        frame (``verify`` maps them back)."""
        rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB image, got an array of shape {rgb.shape}")
        grey_level = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        grey = is_grey(rgb, grey_level)
        small = stretched(bounded(grey_level, self.max_side))
        size = (small.shape[1], small.shape[0])
        full = tuple(full_size) if full_size else (rgb.shape[1], rgb.shape[0])
        hues = None if grey else hue_histogram(rgb)
        plain = self._features(small, size, full, grey, hues)
        chroma = None if grey or plain.thumb is None else chroma_thumb(rgb, plain.thumb.shape)
        plain = replace(plain, content=content_shares(rgb), chroma=chroma)
        if not mirror:
            return plain, None
        if self.detector == "sift":
            return plain, mirrored(plain)
        flipped = self._features(cv2.flip(small, 1), size, full, grey, hues)
        # fits map back to the plain frame
        return plain, replace(flipped, thumb=plain.thumb, content=plain.content, chroma=plain.chroma)

    def _features(self, small: np.ndarray, size, full, grey: bool, hues: np.ndarray | None) -> Features:
        thumb = bounded(small, AGREEMENT_SIDE)
        keypoints, descriptors = self._cv_detector().detectAndCompute(small, None)
        if descriptors is None or not keypoints:
            width = 128 if self.detector == "sift" else 32
            points, descriptors = np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8)
            return Features(points, descriptors, size, full, grey, self.detector, hues, thumb)
        points = np.array([kp.pt for kp in keypoints], np.float32).reshape(-1, 2)
        # SIFT's float descriptors hold whole numbers 0..255: a byte each keeps them exactly
        descriptors = np.clip(descriptors, 0, 255).astype(np.uint8)
        return Features(points, descriptors, size, full, grey, self.detector, hues, thumb)


def mirrored(features: Features) -> Features:
    """SIFT features of the mirror image, from the image's own, without a second detection.

    A keypoint moves to x -> (w - 1) - x. Its descriptor (4 x 4 cells of 8 orientation bins, in
    the keypoint's own rotated frame) mirrors too: the rows of cells swap (the mirror reflects the
    frame across the keypoint's orientation axis) and each bin o becomes -o (mod 8). Measured on
    scikit-image's astronaut at 512 px: descriptors computed on the mirror image at the mirrored
    keypoints differ from these by 2.7 levels on average (24 for unrelated ones).
    """
    if features.detector != "sift":
        raise ValueError(f"only SIFT descriptors mirror by permutation, not {features.detector}")
    points = features.points.copy()
    points[:, 0] = (features.size[0] - 1) - points[:, 0]
    cells = features.descriptors.reshape(-1, 4, 4, 8)[:, ::-1]
    descriptors = cells[..., (-np.arange(8)) % 8].reshape(-1, 128)
    return replace(features, points=points, descriptors=np.ascontiguousarray(descriptors))


def bounded(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image resized so that its long side is at most ``max_side`` (never enlarged)."""
    height, width = image.shape[:2]
    factor = max_side / max(width, height)
    if factor >= 1.0:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def stretched(grey: np.ndarray) -> np.ndarray:
    """The grey image with its levels (between ``STRETCH_PERCENTILES``) stretched to 0..255;
    as it is when they span less than ``STRETCH_MIN_RANGE`` (flat) or the full range already."""
    low, high = np.percentile(grey, STRETCH_PERCENTILES)
    if high - low < STRETCH_MIN_RANGE or (low <= 0 and high >= 255):
        return grey
    levels = (grey.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(levels + 0.5, 0, 255).astype(np.uint8)


def is_grey(rgb: np.ndarray, luma: np.ndarray) -> bool:
    step = max(1, max(rgb.shape[:2]) // 128)  # a sample is plenty
    sample = rgb[::step, ::step].astype(np.float32)
    return float(np.abs(sample - luma[::step, ::step, None]).mean()) < GREY_SPREAD


def hue_histogram(rgb: np.ndarray) -> np.ndarray | None:
    """Shares of chroma per hue (``HUE_BINS`` bins of the CIELAB a*b* angle) at a small size;
    None when under ``COLOURFUL_SHARE`` of the pixels are in colour."""
    small = bounded(rgb, HUE_SIDE)
    lab = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2LAB).astype(np.float32)
    a, b = lab[..., 1] - 128.0, lab[..., 2] - 128.0
    chroma = np.hypot(a, b)
    coloured = chroma > COLOURFUL_CHROMA
    if coloured.mean() < COLOURFUL_SHARE:
        return None
    angle = np.arctan2(b[coloured], a[coloured]) % (2 * np.pi)
    bins = np.minimum((angle / (2 * np.pi) * HUE_BINS).astype(np.int64), HUE_BINS - 1)
    histogram = np.bincount(bins, weights=chroma[coloured], minlength=HUE_BINS)
    return (histogram / histogram.sum()).astype(np.float32)


def chroma_thumb(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """CIELAB a*, b* of an RGB image resized to ``shape`` (height, width), as int8 (2, h, w)."""
    small = cv2.resize(np.ascontiguousarray(rgb), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    return (lab[..., 1:].astype(np.int16) - 128).astype(np.int8).transpose(2, 0, 1).copy()


def hue_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """How much of two hue histograms coincide, 0..1; a neighbouring bin counts half (a darker
    or brighter copy's hues drift a little where channels clip)."""

    def spread(h: np.ndarray) -> np.ndarray:
        return (h + 0.5 * np.roll(h, 1) + 0.5 * np.roll(h, -1)) / 2.0

    return float(np.minimum(spread(a), spread(b)).sum())


def recoloured(query: Features, stored: Features) -> bool:
    """Both images in colour, and their hue histograms barely coincide (no alignment needed;
    once a fit aligns them, ``hue_shift`` compares hues pixel by pixel)."""
    if query.hues is None or stored.hues is None:
        return False
    return hue_agreement(query.hues, stored.hues) < RECOLOURED_AGREEMENT


def content_shares(rgb: np.ndarray) -> tuple[float, float, float, float]:
    """The picture's box inside uniform borders, as shares of the width and height."""
    height, width = rgb.shape[:2]
    left, top, right, bottom = content_box(Image.fromarray(rgb))
    return left / width, top / height, right / width, bottom / height


def content_mask(shape: tuple[int, ...], content: tuple[float, float, float, float]) -> np.ndarray:
    """255 inside the content box of an image of ``shape`` (height, width), 0 on its borders."""
    height, width = shape[:2]
    left, top, right, bottom = content
    mask = np.zeros((height, width), np.uint8)
    mask[round(top * height) : round(bottom * height), round(left * width) : round(right * width)] = 255
    return mask


def hue_shift(query: Features, stored: Features, to_stored: np.ndarray) -> float | None:
    """Of the pixels in colour in both images once the query is warped onto the stored image by
    a fitted query -> stored transform (feature pixels), the share whose hue moved more than
    ``HUE_TURN``; None when either is grey or under ``HUE_MIN_PIXELS`` are compared."""
    if query.chroma is None or stored.chroma is None:
        return None
    aligned = _aligned(query, stored, to_stored)
    if aligned is None:
        return None
    transform, target, overlap = aligned
    a, b = (cv2.warpPerspective(c.astype(np.float32), transform, target) for c in query.chroma)
    sa, sb = stored.chroma.astype(np.float32)
    compared = overlap & (a * a + b * b > HUE_CHROMA**2) & (sa * sa + sb * sb > HUE_CHROMA**2)
    if compared.sum() < HUE_MIN_PIXELS:
        return None
    a, b, sa, sb = a[compared], b[compared], sa[compared], sb[compared]
    # the angle between the two a*b* vectors, from their dot and cross products
    turn = np.abs(np.arctan2(a * sb - b * sa, a * sa + b * sb))
    return float((turn > np.radians(HUE_TURN)).mean())


def _aligned(query: Features, stored: Features, to_stored: np.ndarray):
    """The query thumb -> stored thumb transform, the stored thumb's (width, height), and the
    overlap (a boolean mask on the stored thumb) where the query's content lands; None without
    thumbnails or with an overlap under ``AGREEMENT_MIN_PIXELS``."""
    if query.thumb is None or stored.thumb is None:
        return None
    to_thumb = np.diag([stored.thumb.shape[1] / stored.size[0], stored.thumb.shape[0] / stored.size[1], 1.0])
    from_thumb = np.diag([query.size[0] / query.thumb.shape[1], query.size[1] / query.thumb.shape[0], 1.0])
    transform = to_thumb @ to_stored @ from_thumb
    target = (stored.thumb.shape[1], stored.thumb.shape[0])
    inside = content_mask(query.thumb.shape, query.content)
    overlap = cv2.warpPerspective(inside, transform, target, flags=cv2.INTER_NEAREST)
    overlap = cv2.erode(overlap, np.ones((3, 3), np.uint8)) > 0  # the warp's edge is interpolated
    if overlap.sum() < AGREEMENT_MIN_PIXELS:
        return None
    return transform, target, overlap


def agreement(query: Features, stored: Features, to_stored: np.ndarray) -> float | None:
    """How well the query, warped onto the stored image by a fitted query -> stored transform
    (feature pixels), agrees with it inside their overlap: the normalised correlation of their
    blurred grey levels, -1..1; None without thumbnails or with too small an overlap. The query's
    uniform borders are no part of the overlap (a copy cropped to 49 % with a border added agreed
    0.60 with its original when the border counted, under ``REFRAMED_AGREEMENT``); the stored
    image's margins stay in (a drawing's white ground is part of the picture: leaving it out lets
    icons of one theme that share a part agree, 3 more never-indexed drawings called duplicate)."""
    aligned = _aligned(query, stored, to_stored)
    if aligned is None:
        return None
    transform, target, overlap = aligned
    warped = cv2.warpPerspective(query.thumb, transform, target, flags=cv2.INTER_LINEAR)
    a = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), AGREEMENT_BLUR)[overlap]
    b = cv2.GaussianBlur(stored.thumb.astype(np.float32), (0, 0), AGREEMENT_BLUR)[overlap]
    a, b = a - a.mean(), b - b.mean()
    spread = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / spread) if spread > 0 else None


# matching ---------------------------------------------------------------------------------------


def distances(a: np.ndarray, b: np.ndarray, detector: str) -> np.ndarray:
    """All pairwise descriptor distances, squared L2 (SIFT) or Hamming bits (ORB)."""
    if detector == "orb":
        a_bits = np.unpackbits(a, axis=1).astype(np.float32)
        b_bits = np.unpackbits(b, axis=1).astype(np.float32)
        return a_bits.sum(1)[:, None] + b_bits.sum(1)[None, :] - 2.0 * a_bits @ b_bits.T
    a, b = a.astype(np.float32), b.astype(np.float32)
    # In place: each temporary of a 1000 x 1000 expression costs more than the product itself
    # (8 ms -> 2.5 ms a pair of images). Whole numbers under 2**24 throughout, so exact.
    d = a @ b.T
    d *= -2.0
    d += (a * a).sum(1)[:, None]
    d += (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def mutual_matches(query: Features, stored: Features) -> np.ndarray:
    """(m, 2) index pairs (query, stored): each passes the ratio test and is the other's best."""
    if len(query) < 2 or len(stored) < 2:
        return np.zeros((0, 2), np.int64)
    d = distances(query.descriptors, stored.descriptors, query.detector)
    rows = np.arange(len(d))
    best = np.argmin(d, axis=1)
    mutual = np.argmin(d, axis=0)[best] == rows
    first = d[rows, best]
    d[rows, best] = np.inf  # d is ours: the row minimum now is the second best
    # squared L2 compares with the squared ratio; Hamming distances compare as they are
    ratio = RATIO**2 if query.detector == "sift" else RATIO
    passes = first < ratio * d.min(axis=1)
    keep = np.flatnonzero(passes & mutual)
    return np.stack([keep, best[keep]], axis=1)


# fitting ----------------------------------------------------------------------------------------


class Pose(NamedTuple):
    """The query (or its mirror image) matched to the stored image: matched points, feature pixels."""

    src: np.ndarray  # (m, 2) query points
    dst: np.ndarray  # (m, 2) stored points
    flip_width: int | None  # the mirror's width (its points map back by x -> (w - 1) - x); None: plain
    unit: float  # tolerances scale with the feature image: its long side / MAX_SIDE
    size: tuple[int, int]  # (width, height) of the query's feature image


class Fit(NamedTuple):
    """One transform fitted to one pose."""

    inliers: int  # at distinct positions
    matches: int
    to_stored: np.ndarray | None  # query -> stored 3x3 in feature pixels (plain query's frame)
    reason: str | None  # why there is no fit
    model: str = "similarity"


def verify(
    query: Features, stored: Features, mirror: Features | None = None, fallback: bool = True
) -> Verification:
    """Fit the query (and its mirror image, when given) to the stored image; keep the better.
    A similarity first; when it does not verify, or verifies leaving most matches out, the
    fallback fits (``FITS``; ``fallback``), kept over a verified similarity only with
    ``WARPED_GAIN`` times its inliers."""
    other_hues = recoloured(query, stored)
    if len(query) < MIN_KEYPOINTS or len(stored) < MIN_KEYPOINTS:
        few = min(len(query), len(stored))
        reason = f"too few keypoints ({few}): an image with little detail"
        plain = len(stored) < MIN_KEYPOINTS
        return Verification(0, 0, None, reason, False, plain=plain, recoloured=other_hues)
    if query.detector != stored.detector:
        raise ValueError(f"features of different detectors: {query.detector} and {stored.detector}")
    poses = poses_of(query, stored, mirror)
    fits = [fit_model(p, "similarity") for p in poses]
    kept = max(range(len(poses)), key=lambda i: (fits[i].inliers, fits[i].matches))
    best = fits[kept]
    similar = best.to_stored is not None and best.inliers >= VERIFIED_INLIERS
    # only the pose the similarity found most in (a mirrored keystone fits the mirror best), and
    # after a verified similarity only where it left most matches out (a stretch may explain them)
    tried = fallback and (not similar or WARPED_GAIN * best.inliers <= best.matches)
    warped = best_fallback(poses[kept]) if tried else None
    if similar and (warped is None or not _explains_better(warped, best)):
        found = geometry(best.to_stored, query, stored)
        agreed = agreement(query, stored, best.to_stored)
        if fallback and agreed is not None and agreed < REFIT_AGREEMENT:
            # a perspective or stretched copy that the similarity only approximates: aligned by
            # the fallback fit of the same matches, it agrees (0.35 -> 0.75, 0.60 -> 1.00)
            refit = warped if tried else best_fallback(poses[kept])
            if refit is not None and refit.to_stored is not None:
                agreed = max(agreed, agreement(query, stored, refit.to_stored) or agreed)
        other_hues = other_hues or _hues_moved(query, stored, best.to_stored)
        return Verification(best.inliers, best.matches, found, agreement=agreed, recoloured=other_hues)
    if warped is not None and warped.inliers >= WARPED_INLIERS:
        found = geometry(warped.to_stored, query, stored, warped.model)
        return Verification(
            warped.inliers,
            warped.matches,
            found,
            similarity_inliers=best.inliers,
            agreement=agreement(query, stored, warped.to_stored),
            recoloured=other_hues or _hues_moved(query, stored, warped.to_stored),
        )
    reason = best.reason or f"only {best.inliers} consistent matches"
    return Verification(best.inliers, best.matches, None, reason, recoloured=other_hues)


def _hues_moved(query: Features, stored: Features, to_stored: np.ndarray) -> bool:
    shift = hue_shift(query, stored, to_stored)
    return shift is not None and shift > RECOLOURED_SHARE


def second_look(first: Verification, second: Verification) -> Verification:
    """The second look (``RETRY_CONTRAST``) when it verifies with ``RETRY_INLIERS``, else the first."""
    if second.verified and (second.evidence or 0) >= RETRY_INLIERS:
        return second
    return first


def _explains_better(warped: Fit, similarity: Fit) -> bool:
    """Whether a fallback fit beats a similarity that verified: a stretch also fits a similarity,
    with a third of its points (the band the stretch moves least), read as a tilt and a crop."""
    return warped.inliers >= max(WARPED_EVIDENCE, WARPED_GAIN * similarity.inliers)


def inliers_by_fit(query: Features, stored: Features, mirror: Features | None = None) -> dict[str, int]:
    """Each transform's inliers (the better pose), every fit tried: what ``bench.verification``
    measures on copies and wrong pairs to set ``WARPED_INLIERS``."""
    if len(query) < MIN_KEYPOINTS or len(stored) < MIN_KEYPOINTS:
        return dict.fromkeys(FITS, 0)
    return {model: best_fit(poses_of(query, stored, mirror), model).inliers for model in FITS}


def poses_of(query: Features, stored: Features, mirror: Features | None) -> list[Pose]:
    """The query matched to the stored image, and its mirror image too when given."""
    poses = [pose(query, stored, flip_width=None)]
    if mirror is not None:
        poses.append(pose(mirror, stored, flip_width=query.size[0]))
    return poses


def pose(query: Features, stored: Features, flip_width: int | None) -> Pose:
    pairs = mutual_matches(query, stored)
    src, dst = query.points[pairs[:, 0]], stored.points[pairs[:, 1]]
    return Pose(src, dst, flip_width, max(query.size) / MAX_SIDE, query.size)


def best_fit(poses: list[Pose], model: str) -> Fit:
    """``model`` fitted to each pose, the one with most inliers (then matches) kept."""
    return max((fit_model(p, model) for p in poses), key=lambda f: (f.inliers, f.matches))


def best_fallback(p: Pose) -> Fit | None:
    """The fallback fit of a pose (the affine, unless the homography has clearly more inliers);
    None when the pose has too few matches to try."""
    if len(p.src) < FALLBACK_MATCHES:
        return None
    affine, homography = fit_model(p, "affine"), fit_model(p, "homography")
    return homography if homography.inliers > HOMOGRAPHY_GAIN * affine.inliers else affine


def verdict_signals(verification: Verification | None, query_featureless: bool = False) -> dict:
    """What a verification tells ``Thresholds.judge`` (its keyword arguments); ``None``: not run."""
    if verification is None:
        return {"inliers": None, "reframed": True, "featureless": query_featureless}
    return {
        "inliers": verification.evidence,
        "reframed": verification.reframed,
        "featureless": query_featureless or not verification.conclusive,
        "plain": verification.plain,
        "recoloured": verification.recoloured,
        "warped": verification.warped,
        "agreement": verification.agreement,
    }


def fit_model(p: Pose, model: str) -> Fit:
    """``model`` (``FITS``) fitted to one pose with RANSAC, its inliers counted; no transform
    when there are too few matches or the fit is no plausible edit."""
    least, estimate, implausible = ESTIMATORS[model]
    if len(p.src) < least:
        return Fit(0, len(p.src), None, f"only {len(p.src)} matching keypoints", model)
    transform, mask = estimate(p)
    if transform is None or mask is None:
        return Fit(0, len(p.src), None, "no consistent transform", model)
    if reason := implausible(transform, p.size):
        return Fit(0, len(p.src), None, reason, model)
    return _counted(p, transform, mask, model)


def _similarity(p: Pose):
    return _two_by_three(cv2.estimateAffinePartial2D, p)


def _affine(p: Pose):
    return _two_by_three(cv2.estimateAffine2D, p)


def _two_by_three(estimator, p: Pose):
    """(3x3 transform or None, inlier mask) of an OpenCV estimator of 2x3 transforms."""
    fit, mask = estimator(p.src, p.dst, **_ransac(p), maxIters=2000, confidence=0.995, refineIters=10)
    return _homogeneous(fit), mask


def _homography(p: Pose):
    return cv2.findHomography(p.src, p.dst, cv2.USAC_MAGSAC, **_ransac(p), maxIters=2000, confidence=0.995)


def _homogeneous(fit: np.ndarray | None) -> np.ndarray | None:
    return None if fit is None else np.vstack([fit, [0.0, 0.0, 1.0]])


def implausible_scale(transform: np.ndarray, _size) -> str | None:
    """Why a similarity transform is no plausible edit (None: it is): its scale is out of bounds."""
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    return None if MIN_SCALE <= scale <= MAX_SCALE else f"implausible scale {scale:.3g}"


def _ransac(p: Pose) -> dict:
    return {"ransacReprojThreshold": RANSAC_PIXELS * p.unit}


def _counted(p: Pose, transform: np.ndarray, mask: np.ndarray, model: str) -> Fit:
    """The fit with its inliers counted at distinct positions, mapped to the plain query's frame."""
    inlier = mask.ravel().astype(bool)
    cell = CELL * p.unit
    count = min(distinct(p.src[inlier], cell), distinct(p.dst[inlier], cell))
    if p.flip_width is not None:  # the mirror's points: query x -> (w - 1) - x first
        transform = transform @ np.array([[-1.0, 0.0, p.flip_width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return Fit(count, len(p.src), transform, None, model)


def implausible_warp(transform: np.ndarray, size: tuple[int, int]) -> str | None:
    """Why a query->stored affine transform or homography is no plausible edit (None: it is):
    the query's frame must map to a convex quad that is not turned over (a mirror is the
    mirrored pose's business), within the scale bounds, its local Jacobian nowhere more than
    ``MAX_ANISOTROPY`` anisotropic."""
    if not np.all(np.isfinite(transform)) or abs(transform[2, 2]) < 1e-6:
        return "a homography through infinity"
    transform = transform / transform[2, 2]
    if not np.all(np.isfinite(transform)):
        return "a homography through infinity"
    corners = _corners(size).astype(np.float64)
    w = corners @ transform[2, :2] + 1.0
    if np.any(w <= 0.05):
        return "the query's frame folds through infinity"
    quad = project(transform, corners).astype(np.float32)
    if cv2.contourArea(quad, oriented=True) <= 0 or not cv2.isContourConvex(quad):
        return "the query's frame maps to a turned-over or non-convex quad"
    scales, anisotropy = [], []
    for point in (*corners, corners.mean(0)):
        singular = np.linalg.svd(jacobian(transform, point), compute_uv=False)
        scales.append(float(np.sqrt(singular[0] * singular[1])))
        anisotropy.append(float(singular[0] / max(singular[1], 1e-12)))
    if not MIN_SCALE <= min(scales) <= max(scales) <= MAX_SCALE:
        return f"implausible scale {min(scales):.3g}-{max(scales):.3g}"
    if max(anisotropy) > MAX_ANISOTROPY:
        return f"implausible stretch or shear {max(anisotropy):.3g}"
    return None


# model -> (the fewest matches it is fitted to, estimator, plausibility check)
ESTIMATORS = {
    "similarity": (3, _similarity, implausible_scale),
    "affine": (3, _affine, implausible_warp),
    "homography": (4, _homography, implausible_warp),
}


def project(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (n, 2) through a 3x3 projective transform."""
    mapped = np.c_[points, np.ones(len(points))] @ transform.T
    return mapped[:, :2] / mapped[:, 2:]


def jacobian(transform: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The 2x2 derivative of a projective transform at ``point``."""
    w = float(transform[2, :2] @ point + transform[2, 2])
    mapped = project(transform, point[None])[0]
    return (transform[:2, :2] - np.outer(mapped, transform[2, :2])) / w


def distinct(points: np.ndarray, cell: float) -> int:
    """How many different positions ``points`` take, on a grid of ``cell`` pixels."""
    if not len(points):
        return 0
    return len(np.unique(np.floor(points / cell).astype(np.int64), axis=0))


def verification_weight(verification: Verification | None) -> float:
    """How strongly a verification says "duplicate", in nats, to order results of one verdict.

    Measured (docs/verification.md): among 2,000 clip-art pairs with the nearest hashes, none
    reached ``VERIFIED_INLIERS``, and most true copies do: a verified pair is ~ e^6 times likelier
    a copy. A fit that fails weighs nothing: flat images and drawings often cannot be verified."""
    return VERIFIED_NATS if verification is not None and verification.verified else 0.0


# the edit ---------------------------------------------------------------------------------------


def geometry(to_stored: np.ndarray, query: Features, stored: Features, fit: str = "similarity") -> Geometry:
    """Read the edit off a query->stored transform (3x3, feature pixels): for an affine fit or a
    homography, its local linear part at the stored image's centre."""
    to_query = np.linalg.inv(to_stored)
    to_query = to_query / to_query[2, 2]
    linear = jacobian(to_query, np.array(stored.size, np.float64) / 2.0)
    mirrored = bool(np.linalg.det(linear) < 0)
    if mirrored:  # mirror the stored image first, then rotate: undo the flip's column sign
        linear = linear @ np.diag([-1.0, 1.0])
    # linear = rotation @ upper triangle (QR): the rotation, then the axes' own scales
    rotation, upper = np.linalg.qr(linear)
    signs = np.sign(np.diag(upper))
    rotation, upper = rotation * signs, upper * signs[:, None]
    # y points down, so the standard counter-clockwise angle is clockwise on screen
    angle = float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0])))
    feature_scale = float(np.sqrt(abs(np.linalg.det(linear))))
    # feature pixels -> full pixels on each side
    pixels = (query.full_size[0] / query.size[0]) / (stored.full_size[0] / stored.size[0])
    stretch = 1.0 if fit == "similarity" else float(upper[0, 0] / upper[1, 1])
    crop = _shown_box(to_stored, query.size, stored.size)
    borders = _content_box(to_query, stored.size, query.size)
    return Geometry(
        mirrored, round(angle, 1), round(feature_scale * pixels, 3), crop, borders, fit, round(stretch, 3)
    )


def _corners(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)


def _mapped_box(transform: np.ndarray, source: tuple[int, int], target: tuple[int, int]):
    """Bounding box, in fractions of ``target``, of ``source``'s frame mapped into ``target``
    and cut to it; None when the two do not overlap."""
    quad = project(transform, _corners(source).astype(np.float64)).astype(np.float32)
    if cv2.contourArea(quad, oriented=True) < 0:
        quad = quad[::-1].copy()  # intersectConvexConvex wants both polygons turning one way
    area, overlap = cv2.intersectConvexConvex(quad, _corners(target))
    if overlap is None or area <= 0:
        return None
    left, top = overlap.reshape(-1, 2).min(0)
    right, bottom = overlap.reshape(-1, 2).max(0)
    width, height = target
    return float(left / width), float(top / height), float(right / width), float(bottom / height)


def _shown_box(to_stored: np.ndarray, query_size, stored_size) -> tuple[float, float, float, float] | None:
    """The box of the stored image the query shows, or None when it shows (nearly) all of it."""
    box = _mapped_box(to_stored, query_size, stored_size)
    if box is None:
        return None
    left, top, right, bottom = box
    if max(left, top, 1.0 - right, 1.0 - bottom) < CROP_SHARE:
        return None
    return tuple(round(v, 3) for v in box)


def _content_box(to_query: np.ndarray, stored_size, query_size) -> tuple[float, float, float, float] | None:
    """The borders the query added around the stored picture (left, top, right, bottom, as
    fractions of the query's sides), or None when there are none."""
    box = _mapped_box(to_query, stored_size, query_size)
    if box is None:
        return None
    left, top, right, bottom = box
    borders = (left, top, 1.0 - right, 1.0 - bottom)
    if max(borders) < CROP_SHARE:
        return None
    return tuple(round(max(v, 0.0), 3) for v in borders)


# stored images, on demand -----------------------------------------------------------------------


class FeatureCache:
    """The features of stored images by catalog id, computed on demand, the most recent kept.

    An image's features take 21 KB on average (SIFT; up to 136 KB at 1,000 keypoints) against
    1 KB for its vector: stored at index time they would make the index ~20 times larger, so
    they are computed when a query needs them and the most recent ``capacity`` kept."""

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        self.capacity = capacity
        self._items: OrderedDict[int, Features] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, image_id: int, compute: Callable[[], Features | None]) -> Features | None:
        with self._lock:
            if image_id in self._items:
                self._items.move_to_end(image_id)
                self.hits += 1
                return self._items[image_id]
            self.misses += 1
        features = compute()  # outside the lock: other queries go on meanwhile
        if features is not None and self.capacity:
            with self._lock:
                self._items[image_id] = features
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return features

    def __len__(self) -> int:
        return len(self._items)
