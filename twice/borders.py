"""Borders are not content: find an image's content box inside uniform borders of any colour.

Letterboxing, pillarboxing, frames and passe-partouts add bands of one colour to the sides of
a picture; perceptual hashes and the CNN squash the whole image, so a band moves every
coefficient and every activation. ``content_box`` peels them off, and every description of an
image's content (``twice.hashing``'s pHash, the embedder's ``Preprocess``) starts from
``trim_borders``: the same rule at index and at query time.

The rule, per side: the outermost line (row or column) gives the side's colour (its median);
the line is a border line when at least ``BORDER_SHARE`` of its pixels are within ``tolerance``
grey levels of that colour in every channel (JPEG noise stays inside), and the band is the run
of border lines from the edge. Bands are peeled in passes, all four sides from the same box,
so the result does not depend on the order of the sides and a turned or mirrored image gives
the turned or mirrored box: a black letterbox around clip art on white comes off in the first
pass, the white margin in the second. A side's next band must differ in colour from its last
one by more than twice the tolerance: a slow gradient (a dusk sky) is content, not a stack of
borders. An axis whose bands would leave less than ``MIN_KEEP`` of it is left whole, so a
flat image, or a small drawing on a large canvas, is described as it is.

A drawing on white is trimmed to its drawing: deliberately, since trimming the same way at
index and query time loses nothing, and its copies in a larger canvas, letterboxed or
framed, then match it (docs/benchmarks.md, "Border trimming").
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

LOG = logging.getLogger(__name__)

TOLERANCE = 24  # grey levels per channel: JPEG noise in a flat band stays well inside
BORDER_SHARE = 0.98  # of a line's pixels within the tolerance: a border line
MIN_KEEP = 0.2  # an axis whose bands would leave less than this share of it is left whole
MAX_PASSES = 4  # nested borders peeled (frame, mat, margin, ...)
STEP_LINES = 3  # lines past a band searched for the step to content (a resized edge blurs it)
STEP_SHARE = 0.5  # of a line's pixels far from the band's colour: a picture's straight edge
MAX_FILL_SHARE = 0.4  # corner runs covering more than this are a drawing's background, not corners
WORK_SIDE = 256  # larger images are searched on a reduced copy (descriptions squash to 64 px)
_FIRST_CHUNK = 8  # lines tested at once, doubling: most images stop at their first line

Box = tuple[int, int, int, int]
Colour = tuple[int, ...]  # (r, g, b) grey levels


def content_box(image: Image.Image, tolerance: int = TOLERANCE) -> Box:
    """(left, top, right, bottom) of ``image``'s content inside uniform borders, as PIL's crop
    takes it; the whole image when it has no border (or is flat).

    Images larger than ``WORK_SIDE`` are searched on a box-filtered copy and the box mapped
    back: within the reduction factor of the exact box, which no squashed description sees.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or not 0 <= tolerance <= 255:
        raise ValueError(f"border tolerance must be an integer from 0 to 255 grey levels, got {tolerance!r}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    factor = -(-max(rgb.size) // WORK_SIDE)
    small = rgb.reduce(factor) if factor > 1 else rgb
    left, top, right, bottom = _peel(np.asarray(small), tolerance)
    if factor == 1:
        return left, top, right, bottom
    width, height = rgb.size
    return left * factor, top * factor, min(right * factor, width), min(bottom * factor, height)


def _peel(pixels: np.ndarray, tolerance: int) -> Box:
    """The content box of (H, W, 3) ``pixels``: bands peeled in passes from all four sides at once."""
    height, width = pixels.shape[:2]
    if not _any_edge_is_border(pixels, tolerance):
        return 0, 0, width, height  # no side starts a band: the first pass would peel nothing
    # uint8 views, no copies: most images stop at their first few lines.
    rows = pixels
    columns = pixels.transpose(1, 0, 2)
    box = [0, 0, width, height]
    last: list[Colour | None] = [None] * 4  # each side's last band colour
    for _ in range(MAX_PASSES):
        left, top, right, bottom = box
        across, down = rows[top:bottom, left:right], columns[left:right, top:bottom]
        # Each side as lines scanned from its edge inwards: top, bottom, left, right.
        sides = (across, across[::-1], down, down[::-1])
        bands = [_band(lines, tolerance, last[k]) for k, lines in enumerate(sides)]
        (t, _), (b, _), (lf, _), (r, _) = bands
        if t + b > (1 - MIN_KEEP) * (bottom - top):
            t = b = 0
        if lf + r > (1 - MIN_KEEP) * (right - left):
            lf = r = 0
        if not any((t, b, lf, r)):
            break
        for k, depth in enumerate((t, b, lf, r)):
            if depth:
                last[k] = bands[k][1]
        box = [left + lf, top + t, right - r, bottom - b]
    return box[0], box[1], box[2], box[3]


def _any_edge_is_border(pixels: np.ndarray, tolerance: int) -> bool:
    """Whether any side's outermost line is a border line: ``_band``'s first test, alone (an
    image whose four edges are not, most photos, is left whole by the first pass)."""
    height, width = pixels.shape[:2]
    # A side has lines to peel only when its axis has two or more (``_band``).
    edges = [pixels[0], pixels[-1]] if height >= 2 else []
    if width >= 2:
        edges += [pixels[:, 0], pixels[:, -1]]
    return any(_share_within(line[None], _line_colour(line), tolerance)[0] >= BORDER_SHARE for line in edges)


def _band(lines: np.ndarray, tolerance: int, previous: Colour | None) -> tuple[int, Colour | None]:
    """(depth, colour): how many of ``lines`` (rows from a side's edge inwards) are a uniform
    band of the first line's colour, ending in a clear step to content; 0 when there is no
    such band, or its colour is too close to the side's last band (a gradient, not a border)."""
    if len(lines) < 2:
        return 0, None
    colour = _line_colour(lines[0])
    if previous is not None and _distance(colour, previous) <= 2 * tolerance:
        return 0, None
    depth, chunk = 0, _FIRST_CHUNK
    while depth < len(lines):
        block = lines[depth : depth + chunk]
        border = _share_within(block, colour, tolerance) >= BORDER_SHARE
        if not border.all():
            depth += int(np.argmin(border))
            if not depth:
                return 0, None
            stepped = _steps(lines[depth : depth + STEP_LINES], colour, tolerance)
            return (depth, colour) if stepped else (0, None)
        depth += len(block)
        chunk *= 2
    return depth, colour


def _line_colour(line: np.ndarray) -> Colour:
    """The median colour of an (n, 3) line, per channel, rounded half to even."""
    ordered = np.sort(line, axis=0)
    middle = len(line) // 2
    if len(line) % 2:
        return tuple(ordered[middle].tolist())
    below, above = ordered[middle - 1 : middle + 1].tolist()
    return tuple(round((a + b) / 2) for a, b in zip(below, above, strict=True))


def _distance(colour: Colour, other: Colour) -> int:
    """The largest difference between two colours in any channel."""
    return max(abs(a - b) for a, b in zip(colour, other, strict=True))


def _share_within(lines: np.ndarray, colour: Colour, distance: int) -> np.ndarray:
    """Per line of (k, n, 3) ``lines``, the share of its pixels within ``distance`` grey levels
    of ``colour`` in every channel."""
    low = tuple(max(level - distance, 0) for level in colour)
    high = tuple(min(level + distance, 255) for level in colour)
    within = _in_range(lines, low, high)  # 255 where within: the sum is 255 times the count
    return within.sum(axis=-1, dtype=np.int64) / (255 * within.shape[-1])


def _in_range(lines: np.ndarray, low: Colour, high: Colour) -> np.ndarray:
    """(k, n) non-zero where every channel of (k, n, 3) ``lines`` is in [low, high]: OpenCV's
    inRange, one call where numpy takes six (the border search is most of a worker's hashing)."""
    import cv2  # here: importing OpenCV takes 0.1 s that every `twice` command would pay

    return cv2.inRange(lines, low, high).reshape(lines.shape[:2])


def _steps(lines: np.ndarray, colour: Colour, tolerance: int) -> bool:
    """Whether content starts with a straight edge: in one of the first lines past a band, at
    least ``STEP_SHARE`` of the pixels far (twice the tolerance) from the band's colour. A
    gradient only creeps past the tolerance; a drawing's margin ends at the drawing's tip."""
    return bool((_share_within(lines, colour, 2 * tolerance) <= 1 - STEP_SHARE).any())


def trim_borders(image: Image.Image, tolerance: int = TOLERANCE) -> Image.Image:
    """``image`` cropped to its ``content_box`` (the image itself when there is nothing to trim)."""
    box = content_box(image, tolerance)
    if box == (0, 0, *image.size):
        return image
    LOG.debug("trimmed %s to %s", image.size, box)
    return image.crop(box)


def fill_corners(image: Image.Image, tolerance: int = TOLERANCE) -> Image.Image:
    """The corner triangles of a tilted copy filled with the mean colour of the rest.

    When the four corner pixels share one colour (within ``tolerance``), the runs of that
    colour reaching in from each side along rows and columns are the fill a rotation left
    (black by default in Pillow and OpenCV, white, any colour); filled with the content's mean,
    the network sees no stark triangles. Left alone when the runs would cover more than
    ``MAX_FILL_SHARE``: that is a drawing's own background. Symmetric in the four sides, so it
    commutes with turns and flips. Cheap on the small image the embedder squashes to.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    points = [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)]
    corners = np.array([rgb.getpixel(xy) for xy in points], dtype=np.int16)
    colour = np.sort(corners, axis=0)[1:3].mean(axis=0)  # their median
    if np.abs(corners - colour).max() > tolerance:
        return image  # most photos: told by four pixels, before the image is read
    pixels = np.asarray(rgb, dtype=np.int16)
    within = np.abs(pixels - colour).max(axis=-1) <= tolerance
    mask = np.zeros_like(within)
    for turns in range(4):  # the runs from each side: turned so that side is on the left
        view = np.rot90(within, turns)
        run = np.where(view.all(axis=1), view.shape[1], np.argmin(view, axis=1))
        np.rot90(mask, turns)[...] |= np.arange(view.shape[1])[None, :] < run[:, None]
    if not mask.any() or mask.mean() > MAX_FILL_SHARE:
        return image
    filled = pixels.copy()
    filled[mask] = pixels[~mask].mean(axis=0).round()
    return Image.fromarray(filled.astype(np.uint8))
