"""The edit that made a copy, in plain words: "rotated 10° clockwise, cropped to the centre 62%
of each side, mirrored, darker"; "in perspective" or "stretched 40% wider" when the similarity
fit did not verify and a homography or an affine fit did.

Geometry comes from a verified fit (``search.verify.Geometry``); the photometric change from
the hash view that matched (the stored image's bright or dark view: the query is brighter or
darker) and from colour (a grey query of a colour image).
"""

from __future__ import annotations

from .verify import ANGLE_DEGREES, CROP_SHARE, SCALE_CHANGE, Geometry, Verification

SIDES = ("left", "top", "right", "bottom")
CENTRED = 0.05  # a crop whose centre is this close to the image's centre is "the centre"
SQUARE = 0.04  # a crop whose sides keep shares this close is "N% of each side"
PHOTOMETRIC = {"bright": "brighter", "dark": "darker"}


def explain(geometry: Geometry, hash_view: str | None = None, grey: bool = False) -> str:
    """One line for people; ``hash_view`` is the stored view the hash matched (bright, dark)."""
    parts = [
        p for p in (_warp(geometry), _angle(geometry.angle), _crop(geometry.crop), _scale(geometry)) if p
    ]
    if geometry.mirrored:
        parts.append("mirrored")
    if borders := _borders(geometry.borders):
        parts.append(borders)
    parts += [PHOTOMETRIC[hash_view]] if hash_view in PHOTOMETRIC else []
    parts += ["grey"] if grey else []
    return ", ".join(parts) if parts else "the same picture, no visible edit"


def verification_json(
    verification: Verification | None, hash_view: str | None = None, grey: bool = False
) -> dict | None:
    """The ``verification`` object of a result's evidence (None: not run)."""
    if verification is None:
        return None
    geometry = verification.geometry
    out = {
        "verified": verification.verified,
        "inliers": verification.inliers,
        "matches": verification.matches,
        "mirrored": None,
        "angle": None,
        "scale": None,
        "crop": None,
        "borders": None,
        "fit": None,
        "explanation": None,
        "reason": verification.reason,
        "recoloured": verification.recoloured,
        "plain": verification.plain,
        "reframed": verification.reframed,
        "agreement": None if verification.agreement is None else round(verification.agreement, 3),
    }
    if geometry is not None:
        out |= {
            "mirrored": geometry.mirrored,
            "angle": geometry.angle,
            "scale": geometry.scale,
            "crop": _box(geometry.crop),
            "borders": _box(geometry.borders),
            "fit": geometry.fit,
            "explanation": explain(geometry, hash_view, grey),
        }
    return out


def _box(values: tuple[float, ...] | None) -> dict | None:
    return None if values is None else dict(zip(SIDES, values, strict=True))


def _warp(geometry: Geometry) -> str | None:
    """ "in perspective" (a homography kept) or "stretched 40% wider" (an affine fit)."""
    if geometry.fit == "homography":
        return "in perspective"
    if geometry.fit != "affine" or abs(geometry.stretch - 1.0) < SCALE_CHANGE:
        return None
    if geometry.stretch > 1.0:
        return f"stretched {geometry.stretch - 1.0:.0%} wider"
    return f"stretched {1.0 / geometry.stretch - 1.0:.0%} taller"


def _angle(angle: float) -> str | None:
    if abs(angle) < ANGLE_DEGREES:
        return None
    way = "clockwise" if angle > 0 else "counter-clockwise"
    return f"rotated {abs(angle):.0f}° {way}"


def _scale(geometry: Geometry) -> str | None:
    if abs(geometry.scale - 1.0) < SCALE_CHANGE:
        return None
    return f"scaled to {geometry.scale:.0%}"


def _crop(box: tuple[float, float, float, float] | None) -> str | None:
    if box is None:
        return None
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    where = _where((left + right) / 2, (top + bottom) / 2)
    if abs(width - height) <= SQUARE:
        return f"cropped to the {where} {(width + height) / 2:.0%} of each side"
    return f"cropped to the {where} {width:.0%} of the width and {height:.0%} of the height"


def _where(x: float, y: float) -> str:
    """ "centre", "top left", "right", ... for a box centred at (x, y) (fractions)."""
    vertical = "" if abs(y - 0.5) < CENTRED else ("top" if y < 0.5 else "bottom")
    horizontal = "" if abs(x - 0.5) < CENTRED else ("left" if x < 0.5 else "right")
    return " ".join(p for p in (vertical, horizontal) if p) or "centre"


def _borders(borders: tuple[float, float, float, float] | None) -> str | None:
    if borders is None:
        return None
    sides = [f"{side} {share:.0%}" for side, share in zip(SIDES, borders, strict=True) if share >= CROP_SHARE]
    if not sides:
        return None
    return f"border{'s' if len(sides) > 1 else ''} added ({', '.join(sides)})"
