"""Loners: images the report's candidate pairs leave without a duplicate are searched as search
searches a query (their 8 views, then their part views), so that a turned copy whose stored
vector is far from its original's still joins its original's group.

A real folder indexed by a single-view model (random weights, as the shipped model is
single-view). A trained single-view CNN scores a copy turned a quarter turn and edited further
0.0-0.3 against its original's stored vector; random weights score it 0.99, so the copy's stored
vector is replaced by one that scores 0 against every other image: only its turned views meet
the original again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_report_groups import drawing, index_single_view

from twice.augment import apply_transform
from twice.augment.synthetic import make_synthetic_image
from twice.hashing import DIHEDRAL
from twice.indexer import Catalog, VectorIndex
from twice.search.parts import PART_VIEWS
from twice.search.report_loners import loners
from twice.search.report_scan import scan_duplicates, threshold_warnings

TURNED = "rotate:90+screenshot:739427+bright:30"  # no hash view matches the original's


def plant_far(options, image_id: int) -> None:
    """The image's stored vector replaced by a unit vector orthogonal to every other stored one."""
    path = Path(options.index_path)
    header = VectorIndex.read_header(path)
    vectors = VectorIndex.load(path, header["model_version"], header["dim"])
    ids, xb = vectors.vectors()
    others = xb[ids != image_id].astype(np.float64)
    assert len(others) < xb.shape[1]  # room for a direction none of them has
    basis, _ = np.linalg.qr(others.T)
    v = np.random.default_rng(0).standard_normal(xb.shape[1])
    v -= basis @ (basis.T @ v)
    vectors.add(np.array([image_id]), (v / np.linalg.norm(v)).astype(np.float32)[None, :])
    vectors.save(path)


@pytest.fixture(scope="module")
def turned_far(tmp_path_factory):
    """(options, embedder, ids): a photo, a JPEG copy and a turned, edited copy whose stored vector
    is far from everything, among other photos with copies and drawings."""
    root = tmp_path_factory.mktemp("loners")
    folder = root / "in"
    folder.mkdir()
    photo = make_synthetic_image(3, 2)
    photo.save(folder / "photo.png")
    apply_transform(photo, "jpeg:80").save(folder / "photo_jpeg.png")
    apply_transform(photo, TURNED).save(folder / "photo_turned.png")
    for p in range(4):
        other = make_synthetic_image(5, p)
        other.save(folder / f"other_{p}.png")
        apply_transform(other, "jpeg:80").save(folder / f"other_{p}_jpeg.png")
    for d in range(6):
        drawing(d).save(folder / f"drawing_{d}.png")
    options, embedder, ids = index_single_view(folder, root / "data")
    plant_far(options, ids["photo_turned"])
    return options, embedder, ids


def scans_by_vectors_and_views(options, embedder):
    """The report's scan by the stored vectors alone, and with ``embedder`` for query views."""
    catalog = Catalog(options.catalog_url)
    try:
        return scan_duplicates(options, catalog), scan_duplicates(options, catalog, embedder=lambda: embedder)
    finally:
        catalog.close()


def test_a_turned_copy_far_from_its_original_joins_it_as_a_searched_loner(turned_far):
    options, embedder, ids = turned_far
    photo, turned = ids["photo"], ids["photo_turned"]
    plain, searched = scans_by_vectors_and_views(options, embedder)
    pair = (min(photo, turned), max(photo, turned))
    # The stored vectors and hashes never pair the two: the copy is a loner.
    assert pair not in plain.candidates.keys_list()
    assert turned in loners(plain.ids, plain.pairs.a, plain.pairs.b)
    assert not any(turned in group for group in plain.groups)
    # Searched by its views, as search searches it, it meets its original and joins its group.
    assert turned in searched.views.searched
    group = next(g for g in searched.groups if photo in g)
    assert set(group) == {photo, ids["photo_jpeg"], turned}
    score, judgement, hashed, verification = searched.judge(photo, turned)
    assert judgement.verdict == "duplicate" and verification["verified"]
    assert score > 0.5 and plain.judge(photo, turned)[0] < 0.1  # its views, not its stored vector
    assert hashed is None or hashed["distance"] > 12  # no hash view decided it
    # Searching the loners groups no drawing with anything.
    drawings = {i for name, i in ids.items() if name.startswith("drawing")}
    assert not any(drawings & set(g) for g in searched.groups)


def test_more_loners_than_the_limit_are_not_searched_and_the_report_says_so(turned_far):
    options, embedder, ids = turned_far
    catalog = Catalog(options.catalog_url)
    try:
        over = scan_duplicates(options.with_overrides(report_loners=2), catalog, embedder=lambda: embedder)
        off = scan_duplicates(options.with_overrides(report_loners=0), catalog, embedder=lambda: embedder)
    finally:
        catalog.close()
    assert over.views.searched == set() and over.unsearched > 2
    assert not any(ids["photo_turned"] in group for group in over.groups)
    assert any(f"{over.unsearched} images are in no duplicate pair" in w for w in threshold_warnings(over))
    assert off.views.searched == set() and off.unsearched == 0  # 0: off, nothing to warn about
    assert not any("no duplicate pair" in w for w in threshold_warnings(off))


def test_loners_are_the_images_in_no_pair():
    ids = np.array([1, 2, 3, 4, 5])
    assert loners(ids, np.array([1, 2]), np.array([2, 4])) == [3, 5]
    assert loners(ids, np.array([], np.int64), np.array([], np.int64)) == [1, 2, 3, 4, 5]


def test_a_member_far_from_its_original_is_judged_by_its_views_as_search_judges_it(turned_far):
    """Complete linkage judges each member of a component against its original
    (``DuplicateScan.weigh``): a turned copy that pairs with its siblings but whose stored vector
    is far from the original's must be judged by its views there too, not only when it is a loner."""
    options, embedder, ids = turned_far
    photo, turned = ids["photo"], ids["photo_turned"]
    unsearched = options.with_overrides(report_loners=0)  # no loner search: only the judging differs
    plain, viewed = scans_by_vectors_and_views(unsearched, embedder)
    assert viewed.views.searched == set()
    score, judgement, _, verification = viewed.judge(photo, turned)
    assert judgement.verdict == "duplicate" and verification["verified"] and score > 0.5
    assert viewed.is_duplicate(photo, turned)
    stored_score, stored_judgement, _, _ = plain.judge(photo, turned)
    assert stored_judgement.verdict != "duplicate" and stored_score < 0.1


def test_loners_their_views_leave_alone_are_searched_again_as_crops(turned_far):
    """As search searches a query again with its part views when its 8 views find no duplicate."""
    options, embedder, ids = turned_far
    catalog = Catalog(options.catalog_url)
    try:
        scan = scan_duplicates(options, catalog, embedder=lambda: embedder)
    finally:
        catalog.close()
    views = scan.views
    drawings = {i for name, i in ids.items() if name.startswith("drawing")}
    alone = set(loners(scan.ids, scan.pairs.a, scan.pairs.b))
    assert drawings <= alone and drawings <= views.as_crops
    # The turned copy's 8 views found its original: it is not searched as a crop.
    assert ids["photo_turned"] in views.searched and ids["photo_turned"] not in views.as_crops
    drawing = min(drawings)
    assert views.query_views(drawing, parts=True).shape[0] == len(DIHEDRAL) + len(PART_VIEWS)
    assert views.query_views(ids["photo_turned"]).shape[0] == len(DIHEDRAL)
    # A loner searched as a crop scores its pairs over all its views, the part views included.
    stored = scan.vector(ids["photo"])
    every_view = float(np.max(views.query_views(drawing, parts=True) @ stored))
    assert views.best(stored, drawing) == pytest.approx(every_view)
    # With part views off (as for search), loners are searched by their 8 views only.
    catalog = Catalog(options.catalog_url)
    try:
        plain = scan_duplicates(options.with_overrides(part_views=False), catalog, embedder=lambda: embedder)
    finally:
        catalog.close()
    assert drawings <= plain.views.searched and plain.views.as_crops == set() and plain.views.parts == {}
