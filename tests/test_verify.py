"""Geometric verification by local features: planted edits recovered, degenerate fits refused,
the edit explained in words, and the verification carried by a search over HTTP and the CLI."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageOps

from conftest import make_options
from imagegen import image_bytes, make_image
from twice.augment.synthetic import make_synthetic_image
from twice.augment.transforms import apply_transforms, bright, dark
from twice.cli import main
from twice.imageio import decode_image
from twice.indexer import reindex
from twice.search.engine import SearchEngine, check_verify_top
from twice.search.explain import explain, verification_json
from twice.search.report_html import evidence_html
from twice.search.report_render import evidence_columns
from twice.search.verdicts import (
    AGREEMENT_INLIERS,
    DEFAULT_VERIFY_INLIERS,
    DIFFERENT,
    DUPLICATE,
    IN_PLACE_FACTOR,
    REFRAMED_AGREEMENT,
    Thresholds,
)
from twice.search.verify import (
    RETRY_INLIERS,
    VERIFIED_INLIERS,
    FeatureCache,
    FeatureExtractor,
    Features,
    Geometry,
    Verification,
    distances,
    distinct,
    hue_agreement,
    hue_shift,
    mirrored,
    second_look,
    stretched,
    verdict_signals,
    verify,
)
from twice.web import app as api

# Tolerances of the recovered edit (SIFT at 512 px on a 320 px photo).
ANGLE_TOL = 1.0  # degrees
SCALE_TOL = 0.03  # relative
BOX_TOL = 0.02  # fraction of a side


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).resize((320, 320), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def extract() -> FeatureExtractor:
    return FeatureExtractor()


def check(extract: FeatureExtractor, stored: Image.Image, query: Image.Image):
    plain, mirrored = extract.both(query)
    return verify(plain, extract(stored), mirrored)


def tilted(image: Image.Image, degrees: float, fill=(0, 0, 0)) -> Image.Image:
    return image.rotate(-degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)


# planted edits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "angle", "mirrored", "scale"),
    [
        (lambda im: tilted(im, 10), 10.0, False, 1.0),
        (lambda im: tilted(im, -7), -7.0, False, 1.0),
        (lambda im: im.transpose(Image.Transpose.ROTATE_270), 90.0, False, 1.0),  # a quarter turn clockwise
        (lambda im: tilted(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 5), 5.0, True, 1.0),
        (lambda im: im.resize((160, 160), Image.Resampling.LANCZOS), 0.0, False, 0.5),
        (lambda im: im.resize((480, 480), Image.Resampling.LANCZOS), 0.0, False, 1.5),
    ],
    ids=["tilt-10", "tilt-minus-7", "rotate-90", "mirror-tilt-5", "scale-half", "scale-1.5"],
)
def test_turns_mirrors_and_scales_are_recovered(photo, extract, edit, angle, mirrored, scale):
    result = check(extract, photo, edit(photo))
    assert result.verified, result.reason
    assert result.inliers >= VERIFIED_INLIERS
    geometry = result.geometry
    assert geometry.mirrored is mirrored
    assert abs(geometry.angle - angle) <= ANGLE_TOL
    assert abs(geometry.scale / scale - 1.0) <= SCALE_TOL
    assert geometry.crop is None


@pytest.mark.parametrize("box", [(0.2, 0.2, 0.8, 0.8), (0.35, 0.05, 0.95, 0.65), (0.0, 0.3, 0.7, 1.0)])
def test_the_crop_box_is_recovered(photo, extract, box):
    side = photo.width
    query = photo.crop(tuple(round(v * side) for v in box))
    result = check(extract, photo, query)
    assert result.verified, result.reason
    assert np.allclose(result.geometry.crop, box, atol=BOX_TOL)
    assert result.geometry.borders is None
    assert abs(result.geometry.angle) <= ANGLE_TOL and abs(result.geometry.scale - 1.0) <= SCALE_TOL


def test_added_borders_are_recovered(photo, extract):
    canvas = Image.new("RGB", (320, 480), (0, 0, 0))  # letterbox: 80 px above and below
    canvas.paste(photo, (0, 80))
    result = check(extract, photo, canvas)
    assert result.verified, result.reason
    assert np.allclose(result.geometry.borders, (0.0, 80 / 480, 0.0, 80 / 480), atol=BOX_TOL)
    assert result.geometry.crop is None


# degenerate fits -----------------------------------------------------------------------------------


def test_matches_all_onto_one_point_do_not_verify(photo, extract):
    features = extract(photo)
    collapsed = replace(features, points=np.full_like(features.points, 100.0))
    result = verify(features, collapsed)
    assert not result.verified
    assert result.inliers <= 1  # hundreds of matches, one position
    assert distinct(collapsed.points, 4.0) == 1


def test_a_flat_image_does_not_verify(extract):
    flat = Image.fromarray(np.random.default_rng(0).integers(126, 130, (240, 320, 3), dtype=np.uint8))
    result = check(extract, flat, flat)
    assert not result.verified and result.inliers == 0
    assert "too few keypoints" in result.reason


def test_unrelated_photos_do_not_verify(photo, extract):
    for other in (skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()):
        result = check(extract, photo, Image.fromarray(other))
        assert not result.verified
        assert result.inliers < VERIFIED_INLIERS


def test_orb_verifies_too(photo):
    result = check(FeatureExtractor("orb"), photo, tilted(photo, 10))
    assert result.verified and abs(result.geometry.angle - 10) <= ANGLE_TOL


def unstretched(image: Image.Image) -> tuple[Features, Features]:
    """SIFT on the grey image as it is (no levels stretched), and its mirror image's features."""
    import cv2

    grey = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = cv2.SIFT_create(1000).detectAndCompute(grey, None)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    descriptors = np.clip(descriptors, 0, 255).astype(np.uint8)
    features = Features(points, descriptors, image.size, image.size, False)
    return features, mirrored(features)


@pytest.mark.parametrize(
    ("index", "edit"),
    [(19, lambda im: dark(im, 60)), (19, lambda im: bright(im, 90)), (25, lambda im: dark(im, 80))],
    ids=["darker", "brighter", "darker-busier"],
)
def test_a_darkened_or_brightened_simple_scene_keeps_the_keypoints_to_verify(extract, index, edit):
    """A flat synthetic scene darkened or brightened (its levels squeezed, clipped at one end)
    keeps too few keypoints to verify on its grey levels as they are; stretched to the full
    range, it keeps enough for a fit in place to verify with the inliers a duplicate in place
    needs (three times ``verify_inliers``)."""
    scene = make_synthetic_image(0, index)
    copy = edit(scene)
    query, mirror = unstretched(copy)
    as_they_are = verify(query, unstretched(scene)[0], mirror)
    ours = check(extract, scene, copy)
    assert as_they_are.inliers < VERIFIED_INLIERS
    assert ours.verified and not ours.reframed
    assert ours.inliers >= IN_PLACE_FACTOR * DEFAULT_VERIFY_INLIERS
    # a CNN score and a hash distance that say neither duplicate nor similar by themselves
    verdicts = [Thresholds().judge(0.6, 20, structure=64, **verdict_signals(v)) for v in (as_they_are, ours)]
    assert [v.verdict for v in verdicts] == [DIFFERENT, DUPLICATE] and verdicts[1].verified


def test_levels_are_stretched_only_where_they_leave_room():
    rng = np.random.default_rng(0)
    darkened = rng.integers(0, 160, (60, 80)).astype(np.uint8)
    assert stretched(darkened).max() == 255 and stretched(darkened).min() == 0
    full = rng.integers(0, 256, (60, 80)).astype(np.uint8)
    full[:6], full[-6:] = 0, 255  # lines on white: black and white both past the percentiles
    flat = rng.integers(126, 131, (60, 80)).astype(np.uint8)  # noise is not made into detail
    for unchanged in (full, flat):
        assert np.array_equal(stretched(unchanged), unchanged)


@pytest.mark.parametrize(
    ("edit", "reframed"),
    [
        (lambda im: tilted(im, 8), True),
        (lambda im: im.crop((40, 30, 280, 300)), True),
        (lambda im: im.point(lambda v: min(255, v + 40)), False),  # brighter, in place
        (lambda im: im.transpose(Image.Transpose.ROTATE_90), False),  # a quarter turn moves nothing
    ],
    ids=["tilt", "crop", "brighter", "quarter-turn"],
)
def test_a_fit_says_whether_it_moved_the_picture(photo, extract, edit, reframed):
    result = check(extract, photo, edit(photo))
    assert result.verified and result.reframed is reframed


def test_mirrored_sift_features_are_those_of_the_mirror_image(photo, extract):
    """The permuted descriptors agree with SIFT run on the mirror image at the mirrored keypoints
    (a wrong permutation of the 4x4x8 histogram is as far off as unrelated descriptors)."""
    import cv2

    plain = extract(photo)
    derived = mirrored(plain)
    width = plain.size[0]
    assert np.allclose(derived.points[:, 0], width - 1 - plain.points[:, 0])
    grey = cv2.cvtColor(np.asarray(photo.convert("RGB")), cv2.COLOR_RGB2GRAY)
    keypoints, _ = cv2.SIFT_create(1000).detectAndCompute(grey, None)
    flipped = [
        cv2.KeyPoint(width - 1 - k.pt[0], k.pt[1], k.size, (180 - k.angle) % 360, k.response, k.octave)
        for k in keypoints
    ]
    _, computed = cv2.SIFT_create(1000).compute(cv2.flip(grey, 1), flipped)
    plain_cv = np.clip(cv2.SIFT_create(1000).compute(grey, keypoints)[1], 0, 255).astype(np.uint8)
    ours = mirrored(replace(plain, descriptors=plain_cv)).descriptors.astype(float)
    assert np.abs(ours - np.clip(computed, 0, 255)).mean() < 4
    assert np.abs(plain_cv.astype(float) - np.clip(computed, 0, 255)).mean() > 15
    with pytest.raises(ValueError, match="orb"):
        mirrored(FeatureExtractor("orb")(photo))


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="'surf'"):
        FeatureExtractor("surf")
    with pytest.raises(ValueError, match="0 < contrast < 1.*, 0"):
        FeatureExtractor(contrast=0)
    with pytest.raises(ValueError, match="-1"):
        FeatureCache(-1)
    with pytest.raises(ValueError, match="verify_top.*99"):
        check_verify_top(99)


def test_the_feature_cache_keeps_the_most_recent(photo, extract):
    cache = FeatureCache(capacity=2)
    made = []

    def compute():
        made.append(1)
        return extract(photo)

    for image_id in (1, 2, 1, 3, 1, 2):
        cache.get(image_id, compute)
    assert len(cache) == 2
    assert (cache.hits, cache.misses, len(made)) == (2, 4, 4)  # 2 was evicted by 3, then by 1


# the edit in words ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geometry", "hash_view", "grey", "words"),
    [
        (Geometry(False, 10.0, 1.0, None, None), None, False, "rotated 10° clockwise"),
        (Geometry(False, -4.6, 1.0, None, None), None, False, "rotated 5° counter-clockwise"),
        (
            Geometry(True, 10.0, 1.0, (0.19, 0.19, 0.81, 0.81), None),
            None,
            False,
            "rotated 10° clockwise, cropped to the centre 62% of each side, mirrored",
        ),
        (
            Geometry(False, 0.0, 1.0, (0.4, 0.0, 1.0, 0.6), None),
            "dark",
            False,
            "cropped to the top right 60% of each side, darker",
        ),
        (
            Geometry(False, 0.0, 1.0, (0.0, 0.1, 0.5, 0.9), None),
            None,
            False,
            "cropped to the left 50% of the width and 80% of the height",
        ),
        (
            Geometry(False, 0.0, 0.5, None, (0.0, 0.14, 0.0, 0.14)),
            "bright",
            False,
            "scaled to 50%, borders added (top 14%, bottom 14%), brighter",
        ),
        (
            Geometry(False, 0.0, 1.0, None, (0.0, 0.0, 0.0, 0.2)),
            None,
            True,
            "border added (bottom 20%), grey",
        ),
        (Geometry(False, 0.4, 1.02, None, None), None, False, "the same picture, no visible edit"),
    ],
)
def test_explanations_of_planted_edits(geometry, hash_view, grey, words):
    assert explain(geometry, hash_view, grey) == words


def test_a_real_edit_is_explained(photo, extract):
    query = tilted(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 10).convert("L").convert("RGB")
    plain, mirrored = extract.both(query)
    stored = extract(photo)
    out = verification_json(verify(plain, stored, mirrored), grey=plain.grey and not stored.grey)
    assert out["verified"] and out["mirrored"] is True and out["crop"] is None
    assert out["explanation"] == "rotated 10° clockwise, mirrored, grey"


def test_no_fit_has_no_explanation(photo, extract):
    out = verification_json(check(extract, photo, Image.fromarray(skimage.data.coffee())))
    assert out["verified"] is False and out["explanation"] is None and out["angle"] is None
    assert out["reason"]
    assert verification_json(None) is None


# through the product --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, embedder, photo):
    """The photo among small generated images, indexed by the real reindex."""
    root = tmp_path_factory.mktemp("verify")
    folder = root / "in"
    folder.mkdir()
    photo.save(folder / "astronaut.png")
    for seed in range(5):
        make_image(seed, (96, 72)).save(folder / f"img_{seed}.png")
    options = make_options(root / "data")
    reindex([folder], options, embedder, progress=False)
    return options


def test_search_over_http_returns_the_verification(indexed, embedder, photo):
    app = api.create_app(indexed, embedder=embedder)
    try:
        query = image_bytes(tilted(photo, 10, fill=(255, 255, 255)))
        response = app.test_client().post("/search", data={"image": (io.BytesIO(query), "q.png"), "k": "3"})
        assert response.status_code == 200, response.data[:500]
        top = response.get_json()["results"][0]
        assert top["source"].endswith("astronaut.png")
        verification = top["evidence"]["verification"]
        assert verification["verified"] and verification["inliers"] >= VERIFIED_INLIERS
        assert abs(verification["angle"] - 10) <= ANGLE_TOL and verification["mirrored"] is False
        assert verification["explanation"] == "rotated 10° clockwise"
        assert (
            "verified by" in top["evidence"]["summary"]
            and "rotated 10° clockwise" in top["evidence"]["summary"]
        )
        others = [r["evidence"]["verification"] for r in response.get_json()["results"][1:]]
        assert all(v is None or not v["verified"] for v in others)
    finally:
        api.service_of(app).close()


def test_verification_off_leaves_it_null(indexed, embedder, photo):
    app = api.create_app(replace(indexed, verify_top=0), embedder=embedder)
    try:
        query = image_bytes(tilted(photo, 10))
        response = app.test_client().post("/search", data={"image": (io.BytesIO(query), "q.png")})
        assert all(r["evidence"]["verification"] is None for r in response.get_json()["results"])
    finally:
        api.service_of(app).close()


def test_the_cli_says_the_edit_in_words(indexed, photo, tmp_path, capsys, monkeypatch):
    query = tmp_path / "copy.png"
    photo.crop((64, 64, 256, 256)).save(query)
    monkeypatch.setenv("TWICE_IMAGE_SIZE", str(indexed.image_size))
    code = main(["--data-dir", str(indexed.data_dir), "search", str(query), "-k", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "cropped to the centre 60% of each side" in out


def test_report_rows_show_the_edit():
    verification = {"verified": True, "inliers": 40, "explanation": "rotated 10° clockwise, mirrored"}
    evidence = {"hash": None, "signals": ["cnn"], "decided_by": ["cnn"], "verification": verification}
    assert "rotated 10° clockwise, mirrored" in evidence_html(evidence)
    assert evidence_columns(evidence) | {"decided_by": "cnn"} == evidence_columns(evidence)
    assert evidence_columns(evidence)["edit"] == "rotated 10° clockwise, mirrored"
    assert evidence_columns(evidence)["inliers"] == 40
    unverified = evidence | {"verification": {"verified": False, "inliers": 2, "explanation": None}}
    assert "edit" not in evidence_html(unverified)
    assert "edit" not in evidence_html(evidence | {"verification": None})


@pytest.mark.parametrize(
    ("geometry", "reframed"),
    [
        (Geometry(False, 0.0, 1.0, None, None), False),  # in place
        (Geometry(True, 90.0, 1.0, None, None), False),  # a quarter turn, mirrored: still in place
        (Geometry(False, 2.0, 1.0, None, None), False),  # the fit's angle noise on look-alikes
        (Geometry(False, -4.0, 1.0, None, None), True),  # a tilt
        (Geometry(False, 0.0, 0.6, (0.1, 0.1, 0.7, 0.7), None), True),  # a crop
        (Geometry(False, 0.0, 1.0, None, (0.0, 0.12, 0.0, 0.12)), True),  # letterbox bars
    ],
)
def test_a_fit_reframes_the_picture_only_by_a_crop_borders_or_a_real_tilt(geometry, reframed):
    assert Verification(20, 30, geometry).reframed is reframed


def thin_ring(radius: int) -> Image.Image:
    """A one-pixel circle at icon size: little structure, too few keypoints to verify."""
    image = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(image).ellipse((50 - radius, 50 - radius, 50 + radius, 50 + radius), outline=(90, 90, 90))
    return image


def engine_over(tmp_path, embedder, name: str, image: Image.Image) -> SearchEngine:
    """A search engine over ``image`` (saved as ``name``) and one other picture, with a CNN cut
    so low that the CNN alone calls the image's look-alikes duplicates."""
    folder = tmp_path / "in"
    folder.mkdir()
    image.save(folder / name)
    make_image(1, (96, 72)).save(folder / "other.png")
    options = make_options(tmp_path / "data")
    reindex([folder], options, embedder, progress=False)
    engine = SearchEngine.open(options, embedder)
    engine.thresholds = replace(engine.thresholds, duplicate=0.5, similar=0.3)
    return engine


def test_the_query_keypoints_start_with_the_search_and_only_when_verification_is_on(tmp_path, embedder):
    engine = engine_over(tmp_path, embedder, "shapes.png", shapes((200, 40, 40)))
    try:
        decoded = decode_image(image_bytes(shapes((200, 40, 40))), "q.png")
        query, mirror = engine.find_keypoints(decoded)["query"].result(timeout=60)
        assert len(query) >= VERIFIED_INLIERS and len(mirror) == len(query)
        engine.verify_top = 0
        assert engine.find_keypoints(decoded) == {}
    finally:
        engine.close()


def test_a_featureless_look_alike_is_similar_and_its_own_bytes_a_duplicate(tmp_path, embedder):
    folder = tmp_path / "in"
    engine = engine_over(tmp_path, embedder, "ring.png", thin_ring(40))
    try:
        ring = engine.search_bytes(image_bytes(thin_ring(38)), k=1)["results"][0]
        assert ring["source"].endswith("ring.png") and ring["evidence"]["cnn"]["verdict"] == "duplicate"
        assert ring["verdict"] == "similar"
        same = engine.search_bytes((folder / "ring.png").read_bytes(), k=1)["results"][0]
        assert same["verdict"] == "duplicate" and same["exact"]
    finally:
        engine.close()


# colour ---------------------------------------------------------------------------------------------


def shapes(colour: tuple[int, int, int]) -> Image.Image:
    """A drawing: coloured shapes with corners on white, rich enough in keypoints to verify."""
    return two_colours(colour, colour)


def two_colours(triangles: tuple[int, int, int], boxes: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (240, 240), "white")
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x, y = 20 + 35 * i, 30 + (i % 3) * 60
        draw.polygon([(x, y), (x + 30, y + 10), (x + 12, y + 45)], fill=triangles, outline="black")
        draw.rectangle((x, y + 100, x + 20 + 3 * i, y + 130), fill=boxes, outline="black")
    return image


def shifted(image: Image.Image, amount: int) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + amount, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("query", "recoloured"),
    [
        (lambda im: shapes((40, 170, 90)), True),  # the same drawing in green
        (lambda im: shifted(im, 100), False),  # brighter
        (lambda im: shifted(im, -50), False),  # darker
        (lambda im: Image.open(io.BytesIO(image_bytes(im, "JPEG", quality=20))).convert("RGB"), False),
        (lambda im: im.convert("L").convert("RGB"), False),  # grey: no hues to compare
    ],
    ids=["green", "bright", "dark", "jpeg-20", "grey"],
)
def test_a_recoloured_drawing_is_told_from_copies_that_keep_its_hues(extract, query, recoloured):
    red = shapes((200, 40, 40))
    result = check(extract, red, query(red))
    assert result.verified, result.reason  # the same shapes fit either way: colour tells them apart
    assert result.recoloured is recoloured
    assert verification_json(result)["recoloured"] is recoloured


def test_parts_that_swap_colours_are_recoloured_though_the_hues_overall_are_the_same(extract):
    red, blue = (200, 40, 40), (40, 60, 200)
    stored, swapped = two_colours(red, blue), two_colours(blue, red)
    result = check(extract, stored, swapped)
    assert result.verified, result.reason
    query, original = extract(swapped), extract(stored)
    assert hue_agreement(query.hues, original.hues) > 0.9  # one histogram: only aligned hues tell
    assert result.recoloured
    copy = check(extract, stored, shifted(stored, 60).rotate(90, expand=True))
    assert copy.verified and not copy.recoloured


def test_hues_are_compared_only_where_both_images_have_colour(extract):
    stored = extract(shapes((200, 40, 40)))
    grey = extract(shapes((200, 40, 40)).convert("L").convert("RGB"))
    same_place = np.eye(3)
    assert grey.chroma is None and hue_shift(grey, stored, same_place) is None
    assert hue_shift(stored, stored, same_place) == 0.0
    assert hue_shift(extract(shapes((40, 60, 200))), stored, same_place) == 1.0


def test_a_stored_image_without_detail_is_plain(photo, extract):
    flat = Image.new("RGB", (200, 200), (30, 120, 200))
    assert check(extract, flat, photo).plain
    blurred = check(extract, photo, Image.new("RGB", (200, 200), (128, 128, 128)))
    assert not blurred.conclusive and not blurred.plain


def test_search_calls_a_recoloured_drawing_similar_and_a_brighter_copy_a_duplicate(tmp_path, embedder):
    engine = engine_over(tmp_path, embedder, "red.png", shapes((200, 40, 40)))
    try:
        green = engine.search_bytes(image_bytes(shapes((40, 170, 90))), k=1)["results"][0]
        assert green["source"].endswith("red.png") and green["evidence"]["cnn"]["verdict"] == "duplicate"
        assert green["verdict"] == "similar" and green["evidence"]["verification"]["recoloured"]
        assert "in other colours" in green["evidence"]["summary"]
        brighter = engine.search_bytes(image_bytes(shifted(shapes((200, 40, 40)), 60)), k=1)["results"][0]
        assert brighter["source"].endswith("red.png") and brighter["verdict"] == "duplicate"
    finally:
        engine.close()


# a second look ---------------------------------------------------------------------------------------


def test_a_second_look_only_replaces_a_first_that_failed_when_it_verifies_with_enough_inliers():
    failed = Verification(5, 9, None, "only 5 consistent matches")
    found = Geometry(False, 0.0, 1.0, None, (0.0, 0.0, 0.0, 0.1))
    assert second_look(failed, Verification(RETRY_INLIERS, 30, found)).inliers == RETRY_INLIERS
    assert second_look(failed, Verification(RETRY_INLIERS - 1, 30, found)) is failed
    assert second_look(failed, Verification(40, 60, None, "no consistent transform")) is failed


def test_search_verifies_a_captioned_flat_scene_by_a_second_look(tmp_path, embedder):
    """A flat scene with a white caption bar added: its stretched levels differ from the stored
    scene's and it keeps too few keypoints to verify at OpenCV's contrast threshold; the first
    candidate's second look at a lower one verifies it with the caption bar as a border."""
    scene = make_synthetic_image(0, 19)
    captioned = apply_transforms(scene, ["caption:bottom:7"])
    first = check(FeatureExtractor(), scene, captioned)
    assert not first.verified
    engine = engine_over(tmp_path, embedder, "scene.png", scene)
    try:
        top = engine.search_bytes(image_bytes(captioned), k=1)["results"][0]
    finally:
        engine.close()
    verification = top["evidence"]["verification"]
    assert top["source"].endswith("scene.png")
    assert verification["verified"] and verification["inliers"] >= RETRY_INLIERS
    assert verification["borders"]["bottom"] > 0.05


# aligned agreement -------------------------------------------------------------------------------


def pasted(left: Image.Image, right: Image.Image, split: int) -> Image.Image:
    """``left``'s columns up to ``split`` beside ``right``'s from there on: two pictures sharing a part."""
    out = right.copy()
    out.paste(left.crop((0, 0, split, left.height)), (0, 0))
    return out


@pytest.fixture(scope="module")
def other_photo() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea()).resize((320, 320), Image.Resampling.LANCZOS)


@pytest.mark.parametrize(
    "edit",
    [
        lambda im: im.crop((60, 0, 320, 320)),
        lambda im: tilted(im, 10, (255, 255, 255)).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        lambda im: apply_transforms(im, ["caption:bottom:0"]),
    ],
)
def test_a_copy_agrees_with_its_original_once_aligned(photo, extract, edit):
    checked = check(extract, photo, edit(photo))
    assert checked.verified and checked.agreement is not None and checked.agreement > 0.9


def sharing_a_part(photo: Image.Image, other_photo: Image.Image) -> Image.Image:
    """The astronaut's columns 60-100 moved to the left edge, another photo beside them."""
    return pasted(photo.crop((60, 0, 320, 320)), other_photo, 40)


def test_a_picture_sharing_only_a_part_disagrees_once_aligned(photo, other_photo, extract):
    checked = check(extract, photo, sharing_a_part(photo, other_photo))
    assert checked.verified and checked.reframed
    # enough inliers for a duplicate at any CNN score, fewer than a fit that needs no agreement
    assert 2 * DEFAULT_VERIFY_INLIERS <= checked.inliers < AGREEMENT_INLIERS
    assert checked.agreement is not None and checked.agreement < REFRAMED_AGREEMENT


def test_a_reframed_fit_makes_a_duplicate_only_where_the_aligned_images_agree(photo, other_photo, extract):
    """At a CNN score far below the duplicate cut, only verification can say duplicate: the crop
    does, the photo that shares a part with the original does not."""
    thresholds, score = Thresholds(), 0.4
    crop = check(extract, photo, photo.crop((60, 0, 320, 320)))
    shared = check(extract, photo, sharing_a_part(photo, other_photo))
    assert thresholds.judge(score, **verdict_signals(crop)).verdict == DUPLICATE
    judged = thresholds.judge(score, **verdict_signals(shared))
    assert judged.verdict != DUPLICATE and not judged.verified
    # the same fit without its agreement measured: verification alone would make it a duplicate
    unmeasured = verdict_signals(replace(shared, agreement=None))
    assert thresholds.judge(score, **unmeasured).verdict == DUPLICATE


def test_a_reframing_fit_with_many_inliers_is_not_held_to_agreement(photo, extract):
    """A crop with a sticker or a caption over it keeps hundreds of inliers and agrees less."""
    crop = check(extract, photo, photo.crop((60, 0, 320, 320)))
    covered = replace(crop, agreement=0.1)
    assert covered.reframed and covered.inliers >= AGREEMENT_INLIERS
    assert Thresholds().judge(0.4, **verdict_signals(covered)).verdict == DUPLICATE


def test_a_fit_in_place_is_not_held_to_agreement(photo, extract):
    """A sticker or a text overlay over a copy lowers its agreement; a fit that leaves the picture
    in place keeps its say (IN_PLACE_FACTOR inliers needed already)."""
    checked = check(extract, photo, photo)
    low = replace(checked, agreement=0.1)
    assert not low.reframed
    assert Thresholds().judge(0.4, **verdict_signals(low)).verdict == DUPLICATE


def test_descriptor_distances_are_exact_squared_distances():
    # SIFT descriptors are bytes: every sum stays a whole number float32 holds exactly, so the
    # in-place arithmetic changes no match, not even a tie.
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (60, 128)).astype(np.uint8)
    b = np.r_[a[:5], rng.integers(0, 256, (40, 128)).astype(np.uint8)]
    b[0, :] = 255 - a[0]  # the farthest a byte descriptor can be
    exact = ((a.astype(np.int64)[:, None, :] - b.astype(np.int64)[None, :, :]) ** 2).sum(-1)
    found = distances(a, b, "sift")
    assert found.dtype == np.float32 and np.array_equal(found, exact)
    assert (np.diag(found[:5, :5])[1:] == 0).all()


def test_no_result_is_a_duplicate_that_verification_never_looked_at(tmp_path, embedder):
    """Random weights score different photographs alike (CNN 0.99): verification demotes the
    first candidate, and each unverified duplicate that rises into the top in its place is
    verified in turn, however many results are asked for."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry", "hubble_deep_field"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.resize((256, 192), Image.Resampling.LANCZOS).save(folder / f"{name}.png")
    options = make_options(tmp_path / "data", verify_top=1)
    reindex([folder], options, embedder, progress=False)
    query = Image.fromarray(skimage.data.coins()).convert("RGB").resize((256, 192), Image.Resampling.LANCZOS)
    app = api.create_app(options, embedder=embedder)
    try:
        response = app.test_client().post(
            "/search", data={"image": (io.BytesIO(image_bytes(query)), "q.png"), "k": "6"}
        )
        results = response.get_json()["results"]
        assert len(results) == 6
        scores = [r["evidence"]["cnn"]["score"] for r in results]
        assert min(scores) >= Thresholds().duplicate  # the CNN alone calls every one a duplicate
        assert [r["verdict"] for r in results[:1]] != ["duplicate"]
        for r in results:
            assert r["verdict"] != "duplicate" or r["evidence"]["verification"] is not None
    finally:
        api.service_of(app).close()


def test_borders_a_copy_added_are_no_part_of_its_agreement(photo, extract):
    """A crop framed in a pale border: the border covers the original's picture once aligned,
    and counted, it pulled the agreement of a true copy under ``REFRAMED_AGREEMENT``."""
    crop = photo.crop((40, 60, 300, 200))
    framed = ImageOps.expand(crop, border=(30, 0, 24, 18), fill=(158, 181, 237))
    checked = check(extract, photo, framed)
    assert checked.reframed and checked.agreement is not None
    assert checked.agreement >= 0.9
    query, mirror = extract.both(framed)
    assert query.content == pytest.approx((30 / 314, 0.0, 290 / 314, 140 / 158), abs=0.01)
    everything = (0.0, 0.0, 1.0, 1.0)
    counted = verify(replace(query, content=everything), extract(photo), replace(mirror, content=everything))
    assert counted.agreement < checked.agreement - 0.1
