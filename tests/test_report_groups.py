"""Report groups that people can act on: search's verdict on every pair, and groups that do not
grow by chaining weak links.

A planted collection: photo-like originals (``augment.synthetic``), each with edited copies made
by augment's transforms, among clip-art-like drawings (outlined shapes on white) whose hashes
sit a few bits apart. Vectors are planted as a trained CNN would score them: easy edits near
their original, crops and tilts in the band where only verification can tell, drawings all
alike (0.7) but none a copy. The three linkages are measured by pair precision, pair recall and
whole families; the default must hold floors that single linkage misses.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bench.report_quality import score_groups
from imagegen import image_bytes
from twice.augment import apply_transform
from twice.augment.synthetic import make_synthetic_image
from twice.indexer import Catalog, Indexer, reindex
from twice.search.engine import SearchEngine
from twice.search.report import build_report
from twice.search.report_linkage import DEFAULT_LINKAGE, LINKAGES, components_within, link_groups
from twice.search.report_render import report_csv
from twice.search.report_scan import scan_duplicates
from twice.search.report_verify import is_enlargement
from twice.search.verdicts import Thresholds
from twice.search.verify import RETRY_INLIERS

DIM = 64
MODEL = "test-model-v1"
# Each edit and the CNN score it is planted at (a trained CNN finds crops and tilts hard).
EDITS = {
    "mirror": 0.97,
    "jpeg:30": 0.98,
    "bright": 0.93,
    "gray": 0.92,
    "scale:0.5": 0.97,
    "crop:0.8": 0.80,
    "tilt:10": 0.72,
    "caption": 0.82,
}
PHOTOS = 4
DRAWINGS = 120
DRAWING_SCORE = 0.7  # drawings look alike to the CNN: similar, never a duplicate


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def at_score(base: np.ndarray, score: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with the unit ``base`` is ``score``."""
    other = rng.standard_normal(base.shape).astype(np.float32)
    other = unit(other - (other @ base) * base)
    return unit(score * base + np.sqrt(1.0 - score**2) * other)


def drawing(seed: int, size=(160, 160)) -> Image.Image:
    """Clip art: one or two outlined circles, squares or triangles on white."""
    rng = np.random.default_rng([11, seed])
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.3, 0.7, 2) * (width, height)
        r = rng.uniform(0.15, 0.3) * width
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=4)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), outline=colour, width=4)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], outline=colour, width=4)
    return image


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(options, families): the data dir and each photo family's ids, original first."""
    from conftest import make_options

    options = make_options(tmp_path_factory.mktemp("groups") / "data")
    indexer = Indexer(options, MODEL, DIM)
    rng = np.random.default_rng(5)

    def add(image: Image.Image, vector: np.ndarray, name: str) -> int:
        row = indexer.add_bytes(image_bytes(image), f"/folder/{name}.png").row
        indexer.add_vectors(np.array([row.id]), vector[None, :])
        return row.id

    families = []
    for p in range(PHOTOS):
        photo, base = make_synthetic_image(3, p), unit(rng.standard_normal(DIM).astype(np.float32))
        family = [add(photo, base, f"photo_{p}")]
        for edit, score in EDITS.items():
            family.append(add(apply_transform(photo, edit), at_score(base, score, rng), f"photo_{p}_{edit}"))
        families.append(family)
    centre = unit(rng.standard_normal(DIM).astype(np.float32))
    for d in range(DRAWINGS):
        add(drawing(d), at_score(centre, np.sqrt(DRAWING_SCORE), rng), f"drawing_{d}")
    indexer.save()
    indexer.close()
    return options, families


def measure(report: dict, families: list[list[int]]) -> dict:
    """Pair precision and recall against the planted families, and families whole in one group
    with nothing else in it."""
    scores = score_groups([[m["id"] for m in g["members"]] for g in report["groups"]], families)
    return {
        **{key: scores[key] for key in ("precision", "recall", "whole", "largest", "groups")},
        "candidate_pairs": report["summary"]["candidate_pairs"],
        "verified_pairs": report["summary"]["verified_pairs"],
        "seconds": round(report["took_ms"] / 1000, 1),
    }


def test_linkages_measured_on_the_planted_collection(planted):
    options, families = planted
    figures = {
        linkage: measure(build_report(options, include_variants=True, linkage=linkage), families)
        for linkage in LINKAGES
    }
    print(figures)  # the measurement behind DEFAULT_LINKAGE (docs/how-it-works.md)
    chosen = figures[DEFAULT_LINKAGE]
    assert chosen["recall"] >= 0.95 and chosen["whole"] == 1.0  # every family whole, nothing else in it
    # Single linkage chains drawings whose hashes sit a few bits apart into one large group;
    # complete linkage keeps every group to an original and its duplicates. (These outlined
    # shapes have too little detail for local features, so verification cannot demote them.)
    assert figures["single"]["largest"] > chosen["largest"]
    assert chosen["precision"] >= figures["single"]["precision"] + 0.1


def test_report_members_explain_the_verified_edit(planted):
    options, families = planted
    report = build_report(options, include_variants=True)
    members = {m["id"]: m for g in report["groups"] for m in g["members"]}
    tilted = members[families[0][1 + list(EDITS).index("tilt:10")]]
    verification = tilted["evidence"]["verification"]
    assert tilted["verdict"] == "duplicate" and verification["verified"]
    assert "rotated 10° clockwise" in verification["explanation"]
    assert "verify" in tilted["evidence"]["decided_by"]
    assert report["summary"]["verified_pairs"] > 0 and report["summary"]["pairs_by"]["verify"] > 0
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(report_csv(report)))}
    assert rows[tilted["id"]]["edit"] == verification["explanation"]


def test_a_fresh_data_directory_reports_by_the_shipped_thresholds(planted):
    options, _ = planted
    shipped = Thresholds(duplicate=0.95, similar=0.85, hash_duplicate=2, hash_similar=4).to_shipped()
    default = build_report(options)
    report = build_report(options, shipped=shipped)
    assert default["thresholds"]["source"] == "default"
    assert report["thresholds"]["source"] == "shipped"
    assert (report["threshold"], report["hash_threshold"]) == (0.95, 2)
    assert not any("defaults" in warning for warning in report["warnings"])
    # Stricter shipped cuts: the grey (0.92) and brighter (0.93) copies are no CNN duplicates now.
    assert report["summary"]["pairs_by"]["cnn"] < default["summary"]["pairs_by"]["cnn"]


def test_the_original_is_the_picture_its_copies_keep_the_frame_of(tmp_path):
    """Copies that all pair with one another (a full clique ties the count of duplicates): the
    bordered, captioned, tilted and enlarged copies are the largest and were added first, yet the
    original is the photo, whose frame the grey, mirrored and re-encoded copies keep (and the
    enlarged one too: it is passed over as an enlargement of the photo)."""
    from conftest import make_options

    options = make_options(tmp_path / "data")
    indexer = Indexer(options, MODEL, DIM)
    rng = np.random.default_rng(9)
    photo, base = make_synthetic_image(3, 0), unit(rng.standard_normal(DIM).astype(np.float32))
    ids, images = {}, {}
    for name in ("border:white:0.2", "caption", "tilt:10", "scale:1.4", "photo", "mirror", "jpeg:60", "gray"):
        images[name] = photo if name == "photo" else apply_transform(photo, name)
        row = indexer.add_bytes(image_bytes(images[name]), f"/folder/{name}.png").row
        indexer.add_vectors(np.array([row.id]), at_score(base, 0.995, rng)[None, :])
        ids[name] = row.id
    indexer.save()
    indexer.close()
    area = {name: image.width * image.height for name, image in images.items()}
    assert min(area["border:white:0.2"], area["caption"], area["tilt:10"], area["scale:1.4"]) > area["photo"]
    report = build_report(options)
    (group,) = report["groups"]
    assert group["size"] == len(ids)
    assert group["members"][0]["id"] == ids["photo"]


def test_the_original_is_the_picture_most_of_its_group_are_duplicates_of(tmp_path):
    """A photo and its re-encode tie on the rule's counts (each pairs with a grey copy, each other
    and one more copy) and the re-encode was added first; but the copy only the photo pairs with
    is no duplicate of the re-encode (its vector far from it, its hash too: tilted), while the
    copy the re-encode pairs with is one of the photo too (a pair the scan never judged: each
    image's one nearest neighbour, ``verify_top`` 1, leaves it out). The photo heads the group,
    and so the group holds every copy; heading it with the re-encode left the photo-only copy
    out (bench report-quality seed 0: family 5, its brightened copy)."""
    from conftest import make_options

    options = make_options(tmp_path / "data", verify_top=1)
    indexer = Indexer(options, MODEL, DIM)
    axes = np.linalg.qr(np.random.default_rng(5).standard_normal((DIM, 4)))[0].T.astype(np.float32)
    photo = make_synthetic_image(3, 0)
    planted = {  # added in this order; each vector's cosines with the others by construction
        "reencoded": ("jpeg:60", 0.6 * axes[0] + 0.8 * axes[2]),
        "grey": ("gray", 0.95 * axes[0] + np.sqrt(1 - 0.95**2) * axes[1]),
        "photo": (None, axes[0]),
        # 0.85 with the re-encode, 0.5 with the photo: verified onto either, paired with the re-encode
        "tilted": ("tilt:10", 0.5 * axes[0] + 0.6875 * axes[2] + np.sqrt(1 - 0.25 - 0.6875**2) * axes[3]),
        # 0.85 with the photo, 0.09 with the re-encode: a duplicate of the photo alone
        "turned": ("tilt:-12", 0.85 * axes[0] - np.sqrt(1 - 0.85**2) * axes[2]),
    }
    ids = {}
    for name, (edit, vector) in planted.items():
        image = photo if edit is None else apply_transform(photo, edit)
        row = indexer.add_bytes(image_bytes(image), f"/folder/{name}.png").row
        indexer.add_vectors(np.array([row.id]), unit(vector.astype(np.float32))[None, :])
        ids[name] = row.id
    indexer.save()
    indexer.close()
    report = build_report(options)
    (group,) = report["groups"]
    assert group["members"][0]["id"] == ids["photo"]
    assert {m["id"] for m in group["members"]} == set(ids.values())
    assert all(m["verdict"] == "duplicate" for m in group["members"][1:])


def test_an_enlargement_is_told_from_a_reduction():
    photo = make_synthetic_image(3, 0).convert("L")
    larger, smaller = apply_transform(photo, "scale:1.3"), apply_transform(photo, "scale:0.7")
    assert is_enlargement(larger, photo)
    assert not is_enlargement(photo, smaller)  # the photo holds detail its reduction lost
    assert not is_enlargement(photo, larger)  # not larger at all


# linkage on its own -------------------------------------------------------------------------------


def test_complete_linkage_keeps_only_duplicates_of_the_original():
    # A chain 1-2-3-4 where only 2 is a duplicate of the original 1; 3-4 are a pair of their own.
    duplicates = {(1, 2), (2, 3), (3, 4)}

    def is_duplicate(x: int, y: int) -> bool:
        return (min(x, y), max(x, y)) in duplicates

    a, b = np.array([1, 2, 3]), np.array([2, 3, 4])
    groups = link_groups(a, b, np.ones(3), "original", is_duplicate, min)
    assert groups == [[1, 2], [3, 4]]
    assert link_groups(a, b, np.ones(3), "single", is_duplicate, min) == [[1, 2, 3, 4]]
    # Splitting at the weakest link drops 2-3 (the weakest) and keeps both pairs.
    assert link_groups(a, b, np.array([5.0, 1.0, 5.0]), "split", is_duplicate, min) == [[1, 2], [3, 4]]
    # Each group leads with the original its members were judged against, for the report to show.
    assert link_groups(a, b, np.ones(3), "original", is_duplicate, max) == [[2, 1], [4, 3]]
    assert link_groups(a, b, np.array([5.0, 1.0, 5.0]), "split", is_duplicate, max) == [[2, 1], [4, 3]]
    with pytest.raises(ValueError, match="linkage must be one of .*'chain'"):
        link_groups(a, b, np.ones(3), "chain", is_duplicate, min)


def test_components_within_a_subset():
    graph = {1: [2], 2: [1, 3], 3: [2], 5: [6], 6: [5]}
    assert components_within({1, 3, 5, 6}, graph) == [[5, 6]]
    assert components_within({1, 2, 3}, graph) == [[1, 2, 3]]


# report and search agree ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, embedder):
    """A photo, its edited copies and drawings, through the real reindex (random weights)."""
    from conftest import make_options

    root = tmp_path_factory.mktemp("agree")
    folder = root / "in"
    folder.mkdir()
    photo = make_synthetic_image(3, 1)
    photo.save(folder / "photo.png")
    for edit in ("tilt:10", "mirror", "crop:0.8"):
        apply_transform(photo, edit).save(folder / f"photo_{edit.replace(':', '_')}.png")
    for d in range(12):
        drawing(d).save(folder / f"drawing_{d}.png")
    options = make_options(root / "data")
    index_as_calibrated(folder, options, embedder)
    return options


def test_report_and_search_agree_on_each_pair(indexed, embedder):
    catalog = Catalog(indexed.catalog_url)
    scan = scan_duplicates(indexed, catalog)
    engine = SearchEngine.open(indexed, embedder)
    try:
        ids = {Path(row.source).stem: row.id for row in engine.catalog.get_many(scan.ids.tolist()).values()}
        compared = 0
        for name in ("photo_tilt_10", "photo_mirror", "photo_crop_0.8", "drawing_3"):
            response = engine.search_file(Path(indexed.images_dir) / path_of(engine, ids[name]), k=8)
            for result in response["results"]:
                if result["id"] == ids[name] or result["evidence"]["verification"] is None:
                    continue  # pairs that search verified: the report judges those with verification
                _, judgement, _, _ = scan.judge(result["id"], ids[name])
                assert judgement.verdict == result["verdict"], (name, result["source"], result["evidence"])
                compared += 1
        assert compared >= 8
    finally:
        engine.close()
        catalog.close()


def path_of(engine: SearchEngine, image_id: int) -> str:
    return engine.catalog.get_many([image_id])[image_id].stored_path


# turned copies score as search scores them ------------------------------------------------------


@pytest.fixture(scope="module")
def single_view(tmp_path_factory):
    """(options, embedder, ids): a photo, its turned and mirrored copies and a drawing, indexed by
    a single-view model (random weights, as the shipped model is single-view: search turns the
    query)."""
    root = tmp_path_factory.mktemp("turned")
    folder = root / "in"
    folder.mkdir()
    photo = make_synthetic_image(3, 2)
    photo.save(folder / "photo.png")
    for edit in ("rotate:90", "mirror"):
        apply_transform(photo, edit).save(folder / f"photo_{edit.replace(':', '_')}.png")
    drawing(1).save(folder / "drawing.png")
    return index_single_view(folder, root / "data")


def index_single_view(folder: Path, data_dir: Path):
    """(options, embedder, ids by file stem): ``folder`` indexed by a single-view model with
    random weights, and the thresholds `twice calibrate` fits for such a CNN: it never decides
    alone."""
    from conftest import make_options
    from twice.model import Embedder

    options = make_options(data_dir, invariance="none")
    embedder = Embedder.from_options(options)
    return options, embedder, index_as_calibrated(folder, options, embedder)


def index_as_calibrated(folder: Path, options, embedder) -> dict[str, int]:
    """Ids by file stem of ``folder`` indexed, with the thresholds `twice calibrate` fits for a
    CNN with random weights stored: the CNN alone never decides."""
    reindex([folder], options, embedder, progress=False)
    catalog = Catalog(options.catalog_url)
    catalog.set_thresholds(
        embedder.version, 1.0, 0.9, "calibrated", {"hash_duplicate": 8, "hash_similar": 12}
    )
    ids = {Path(row.source).stem: row.id for row in catalog.get_many(catalog.ids().tolist()).values()}
    catalog.close()
    return ids


def test_a_turned_copy_scores_in_the_report_as_in_search(single_view):
    options, embedder, ids = single_view
    engine = SearchEngine.open(options, embedder)
    catalog = Catalog(options.catalog_url)
    try:
        plain = scan_duplicates(options, catalog)
        turned = scan_duplicates(options, catalog, embedder=lambda: embedder)
        for copy in ("photo_rotate_90", "photo_mirror"):
            response = engine.search_file(Path(options.images_dir) / path_of(engine, ids[copy]), k=4)
            searched = next(r for r in response["results"] if r["id"] == ids["photo"])
            assert searched["evidence"]["cnn"]["view"] != "identity"  # search scored a turned view
            score = turned.judge(ids["photo"], ids[copy])[0]
            assert score == pytest.approx(searched["score"], abs=1e-3)
            # The stored vectors alone score the copy lower: the view is what search adds.
            assert plain.judge(ids["photo"], ids[copy])[0] < score - 1e-3
        assert turned.views is not None and turned.views.embedded >= 1
    finally:
        engine.close()
        catalog.close()


# colour: the report checks every duplicate as search checks every result it verifies ------------


def test_a_recoloured_drawing_whose_hash_matches_is_no_duplicate_in_the_report_or_search(tmp_path, embedder):
    """A red and a green drawing of the same shapes hash alike (the hash sees luma contrast, not
    hue) and the CNN calls them similar: a hash duplicate that only verification's colour check
    tells apart. Search checks it on every result it verifies; the report must check it too."""
    from test_verify import shapes, shifted

    from conftest import make_options

    folder = tmp_path / "in"
    folder.mkdir()
    red = shapes((200, 40, 40))
    red.save(folder / "red.png")
    shapes((40, 170, 90)).save(folder / "green.png")
    shifted(red, 60).save(folder / "brighter.png")
    for d in range(3):
        drawing(d).save(folder / f"drawing_{d}.png")
    options = make_options(tmp_path / "data")
    ids = index_as_calibrated(folder, options, embedder)
    catalog = Catalog(options.catalog_url)
    engine = SearchEngine.open(options, embedder)
    try:
        scan = scan_duplicates(options, catalog)
        _, judgement, hashed, verification = scan.judge(ids["red"], ids["green"])
        assert judgement.hash == "duplicate" and hashed["distance"] <= 8  # the hash alone says duplicate
        assert judgement.verdict == "similar" and verification["recoloured"]
        assert scan.is_duplicate(ids["red"], ids["brighter"])
        assert not any(ids["green"] in group for group in scan.groups)
        response = engine.search_file(Path(options.images_dir) / path_of(engine, ids["green"]), k=3)
        searched = next(r for r in response["results"] if r["id"] == ids["red"])
        assert searched["verdict"] == judgement.verdict  # report and search agree
    finally:
        engine.close()
        catalog.close()


def test_the_report_looks_again_at_a_pair_as_search_looks_at_its_first_candidate(tmp_path):
    """A flat scene and its captioned copy: too few keypoints to verify at OpenCV's contrast
    threshold, verified by search's second look at its first candidate; the report looks again
    at a pair the first look did not verify, so it groups them as search calls them
    (tests/test_verify.py)."""
    from conftest import make_options

    options = make_options(tmp_path / "data")
    indexer = Indexer(options, MODEL, DIM)
    rng = np.random.default_rng(4)
    scene = make_synthetic_image(0, 19)
    base = unit(rng.standard_normal(DIM).astype(np.float32))
    ids = {}
    planted = {"scene": (scene, base), "captioned": (apply_transform(scene, "caption:bottom:7"), None)}
    planted["other"] = (make_synthetic_image(5, 2), unit(rng.standard_normal(DIM).astype(np.float32)))
    for name, (image, vector) in planted.items():
        row = indexer.add_bytes(image_bytes(image), f"/folder/{name}.png").row
        vector = at_score(base, 0.8, rng) if vector is None else vector  # the uncertain band
        indexer.add_vectors(np.array([row.id]), vector[None, :])
        ids[name] = row.id
    indexer.save()
    indexer.close()
    report = build_report(options)
    (group,) = report["groups"]
    assert {m["id"] for m in group["members"]} == {ids["scene"], ids["captioned"]}
    verification = group["members"][1]["evidence"]["verification"]  # against the group's original
    assert verification["verified"] and verification["inliers"] >= RETRY_INLIERS
