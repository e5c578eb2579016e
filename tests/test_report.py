"""Duplicate reports: pair finding against a brute-force oracle, grouping, originals,
variants, hash pairs, HTML/JSON/CSV output, incremental runs, the CLI.

Vectors are planted (not embedded): a random-weight CNN scores every pair ~0.99, so the
catalog rows and image files are real but each row's vector is chosen by the test. Hash pairs
come from the real images: turned, flipped and re-encoded copies made here.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from urllib.parse import unquote

import faiss
import numpy as np
import pytest
from PIL import Image

from conftest import make_options
from imagegen import image_bytes, make_image, pale_art
from twice.augment import apply_transform
from twice.cli import main
from twice.hashing import (
    INVERSE,
    STORED_VIEWS,
    dihedral_hashes,
    hamming,
    hash_pairs,
    is_flat,
    phash,
    stored_hashes,
)
from twice.indexer import Catalog, ImageRow, Indexer, IndexFileError, IndexMismatchError
from twice.indexer.catalog import load_stored_hashes
from twice.search.pairs import chains_from, find_pairs, group_pairs, pair_graph, plant_groups
from twice.search.report import build_report
from twice.search.report_groups import pick_original
from twice.search.report_hashes import pair_evidence, pair_match, pairs_touching
from twice.search.report_render import render, report_csv

DIM = 64
MODEL = "test-model-v1"


# helpers -------------------------------------------------------------------------------------


def oracle_pairs(ids: np.ndarray, xb: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair i < j with x_i . x_j >= threshold, from the dense matrix (small n only)."""
    S = xb @ xb.T
    i, j = np.nonzero(np.triu(threshold <= S, 1))
    return {(int(min(ids[a], ids[b])), int(max(ids[a], ids[b]))) for a, b in zip(i, j, strict=True)}


def oracle_groups(pairs: set[tuple[int, int]]) -> list[list[int]]:
    """Connected components by repeated merging: slow and obviously right."""
    groups: list[set[int]] = []
    for a, b in pairs:
        touching = [g for g in groups if a in g or b in g]
        merged = {a, b}.union(*touching)
        groups = [g for g in groups if g not in touching] + [merged]
    return sorted((sorted(g) for g in groups), key=lambda g: (-len(g), g[0]))


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def near(base: np.ndarray, rng: np.random.Generator, noise: float = 0.15) -> np.ndarray:
    return unit(base + rng.standard_normal(base.shape).astype(np.float32) * noise / np.sqrt(DIM))


class Collection:
    """A real data dir (catalog, stored images, saved index) whose vectors the test picks."""

    def __init__(self, options) -> None:
        self.options = options
        self.indexer = Indexer(options, MODEL, DIM)
        self.rng = np.random.default_rng(7)
        self.seed = 0
        self.images: dict[int, Image.Image] = {}

    def add(self, vector: np.ndarray, size=(48, 36), image: Image.Image | None = None, **columns) -> int:
        """One stored image (a fresh picture unless ``image``) with ``vector`` as its embedding."""
        self.seed += 1
        image = make_image(self.seed, size) if image is None else image
        row = self.indexer.add_bytes(image_bytes(image), f"/photos/img_{self.seed}.png", **columns).row
        self.indexer.add_vectors(np.array([row.id]), vector[None, :])
        self.images[row.id] = image
        return row.id

    def random(self) -> np.ndarray:
        return unit(self.rng.standard_normal(DIM).astype(np.float32))

    def save(self) -> None:
        self.indexer.save()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.indexer.vectors.vectors()


@pytest.fixture
def options(tmp_path):
    """Verification off: the vectors are planted, and the pictures behind them are unrelated
    small images that verification would rightly tell apart (too plain to verify, in other
    colours). Reports with verification: test_report_groups.py, test_verify.py."""
    return make_options(tmp_path / "data", verify_top=0)


@pytest.fixture
def collection(options):
    coll = Collection(options)
    yield coll
    coll.indexer.close()


def planted_collection(coll: Collection, groups=(3, 2, 4), singles: int = 12) -> list[list[int]]:
    planted = []
    for size in groups:
        base = coll.random()
        planted.append(sorted(coll.add(base if k == 0 else near(base, coll.rng)) for k in range(size)))
    for _ in range(singles):
        coll.add(coll.random())
    coll.save()
    return sorted(planted, key=lambda g: (-len(g), g[0]))


def report_groups(report: dict) -> list[list[int]]:
    return sorted(
        (sorted(m["id"] for m in g["members"]) for g in report["groups"]), key=lambda g: (-len(g), g[0])
    )


# pairs and groups ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["knn", "range"])
def test_pairs_match_the_brute_force_oracle(method):
    # One group of 40 is larger than the first k-NN round (16): the search must widen.
    xb, planted = plant_groups(1500, DIM, 30, group_size=(2, 5), noise=0.3, seed=3)
    big = np.arange(1000, 1040)
    xb[big] = unit(xb[1000] + np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32) * 0.02)
    ids = np.arange(len(xb), dtype=np.int64) * 3 + 5  # ids are not positions
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(xb, ids)
    a, b, s = find_pairs(index, ids, xb, 0.9, method=method, batch_size=256)
    expected = oracle_pairs(ids, xb, 0.9)
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == expected
    assert len(a) == len(expected)  # each pair once
    assert (a < b).all() and (s >= 0.9).all()
    dots = np.einsum("ij,ij->i", xb[(a - 5) // 3], xb[(b - 5) // 3])
    np.testing.assert_allclose(s, dots, atol=1e-5)
    assert group_pairs(a, b) == oracle_groups(expected)


def test_group_pairs_joins_chains_and_orders_largest_first():
    a = np.array([1, 2, 10, 7, 30])
    b = np.array([2, 3, 11, 3, 31])
    assert group_pairs(a, b) == [[1, 2, 3, 7], [10, 11], [30, 31]]
    assert group_pairs(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == []


@pytest.mark.parametrize("seed", range(3))
def test_chains_are_shortest_chains_of_pairs(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 30, 45), rng.integers(0, 30, 45)
    a, b = a[a != b], b[a != b]
    graph = pair_graph(a, b)
    linked = {frozenset(p) for p in zip(a.tolist(), b.tolist(), strict=True)}
    hops = {0: 0}  # oracle: relax every pair until nothing changes
    while True:
        before = dict(hops)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            for u, v in ((x, y), (y, x)):
                if u in hops and hops[u] + 1 < hops.get(v, 10**9):
                    hops[v] = hops[u] + 1
        if hops == before:
            break
    chains = chains_from(0, graph)
    assert set(chains) == set(hops)
    for end, between in chains.items():
        path = [0, *between, end] if end != 0 else [0]
        assert len(path) - 1 == hops[end]
        assert all(frozenset(step) in linked for step in pairwise(path))


def test_find_pairs_rejects_bad_arguments():
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(4))
    xq = unit(np.ones((2, 4), dtype=np.float32))
    index.add_with_ids(xq, np.array([1, 2]))
    with pytest.raises(ValueError, match="threshold must be in"):
        find_pairs(index, np.array([1, 2]), xq, 1.5)
    with pytest.raises(ValueError, match="method must be one of knn, range, got 'dense'"):
        find_pairs(index, np.array([1, 2]), xq, 0.9, method="dense")
    with pytest.raises(ValueError, match="3 ids for 2 query vectors"):
        find_pairs(index, np.array([1, 2, 3]), xq, 0.9)


# the report ----------------------------------------------------------------------------------


def test_report_finds_every_planted_group_with_scores_to_the_original(collection):
    planted = planted_collection(collection)
    report = build_report(collection.options)
    assert report_groups(report) == planted
    assert report["model"] == MODEL
    assert report["threshold"] == pytest.approx(0.9)  # default duplicate threshold
    assert report["summary"]["groups"] == 3 and report["summary"]["duplicate_images"] == 6
    ids, xb = collection.vectors()
    vec = dict(zip(ids.tolist(), xb, strict=True))
    for group in report["groups"]:
        original, *others = group["members"]
        assert original["role"] == "original" and original["score"] == 1.0
        for member in others:
            assert member["score"] == pytest.approx(float(vec[member["id"]] @ vec[original["id"]]), abs=1e-5)
            assert member["verdict"] == "duplicate"
            assert Path(member["path"]).is_file()
    assert [g["size"] for g in report["groups"]] == [4, 3, 2]  # largest group first


def test_a_member_chained_to_the_original_says_through_which_images(collection, tmp_path):
    # A-B and B-C are duplicate pairs (cosine 0.93), A-C is not (0.72): with single linkage
    # one group, and C's evidence against the original A says `different`, so the report
    # names the chain (the default linkage leaves C out: tests/test_report_groups.py). D pairs
    # with A only, so A has as many duplicates as B and is the original by its resolution.
    u, w = collection.random(), collection.random()
    w = unit(w - (w @ u) * u)
    angle = np.radians([0.0, 22.0, 44.0, -22.0])
    a, b, c, d = (unit(np.cos(t) * u + np.sin(t) * w) for t in angle)
    first = collection.add(a, size=(64, 48))  # the largest: the original
    middle, last = collection.add(b), collection.add(c)
    collection.add(d)
    collection.save()
    report = build_report(collection.options, linkage="single")
    (group,) = report["groups"]
    members = {m["id"]: m for m in group["members"]}
    assert group["members"][0]["id"] == first
    assert members[middle]["via"] == [] and members[middle]["verdict"] == "duplicate"
    assert members[last]["via"] == [middle] and members[last]["verdict"] == "different"
    assert f"joined via #{middle}<" in render(report, "html", tmp_path / "r.html")
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(report_csv(report)))}
    assert (rows[last]["via"], rows[middle]["via"], rows[first]["via"]) == (str(middle), "", "")


def test_report_refuses_bad_input(collection, options):
    with pytest.raises(IndexFileError, match="no index yet"):
        build_report(options)
    planted_collection(collection, groups=(2,), singles=1)
    with pytest.raises(ValueError, match="threshold must be in \\(-1, 1\\], got 2.0"):
        build_report(options, threshold=2.0)
    with pytest.raises(ValueError, match="per_page must be an integer from 1 to 1000, got 0"):
        build_report(options, page=1, per_page=0)
    with pytest.raises(IndexMismatchError, match="not other-model"):
        build_report(options, model_version="other-model")


def test_original_is_largest_then_earliest_then_smallest_id(collection):
    early = datetime(2020, 1, 1, tzinfo=timezone.utc)
    base = collection.random()
    small = collection.add(base, size=(40, 30))
    large_late = collection.add(near(base, collection.rng), size=(80, 60), added_at=early + timedelta(days=2))
    large_early = collection.add(near(base, collection.rng), size=(60, 80), added_at=early)
    base2 = collection.random()
    first = collection.add(base2, size=(50, 50), added_at=early)
    second = collection.add(near(base2, collection.rng), size=(50, 50), added_at=early)
    collection.save()
    report = build_report(collection.options)
    originals = {g["members"][0]["id"]: g for g in report["groups"]}
    assert set(originals) == {large_early, first}
    assert [m["id"] for m in originals[large_early]["members"]][1:] == sorted(
        [small, large_late],
        key=lambda i: -next(m["score"] for m in originals[large_early]["members"] if m["id"] == i),
    )
    assert second in [m["id"] for m in originals[first]["members"]]
    # The rule on rows directly, one tie-break at a time.
    rows = [
        ImageRow(id=5, width=10, height=10, added_at=early),
        ImageRow(id=4, width=10, height=10, added_at=early + timedelta(seconds=1)),
        ImageRow(id=9, width=10, height=10, added_at=early),
    ]
    assert pick_original(rows).id == 5
    assert pick_original([*rows, ImageRow(id=99, width=20, height=10, added_at=early)]).id == 99
    with pytest.raises(ValueError, match="at least one row"):
        pick_original([])


def build_variants(coll: Collection) -> dict[str, int]:
    """A: original + 2 known variants; B: original + variant + an unrelated copy; C: a missed variant."""
    a = coll.random()
    ids = {"a": coll.add(a, size=(64, 48))}
    ids["a_rot"] = coll.add(near(a, coll.rng), size=(48, 64), parent_id=ids["a"], transform="rotate")
    ids["a_mir"] = coll.add(near(a, coll.rng), parent_id=ids["a"], transform="mirror", size=(64, 48))
    b = coll.random()
    ids["b"] = coll.add(b, size=(64, 48))
    ids["b_dark"] = coll.add(near(b, coll.rng), parent_id=ids["b"], transform="dark", size=(64, 48))
    ids["b_copy"] = coll.add(near(b, coll.rng), size=(32, 24))
    c = coll.random()
    ids["c"] = coll.add(c, size=(64, 48))
    ids["c_bright"] = coll.add(coll.random(), parent_id=ids["c"], transform="bright", size=(64, 48))
    coll.save()
    return ids


def test_known_variants_are_summarised_by_default_and_listed_on_request(collection):
    ids = build_variants(collection)
    report = build_report(collection.options)
    assert report["summary"]["groups"] == 2
    assert report["summary"]["variant_only_groups"] == 1 and report["summary"]["variant_only_images"] == 3
    [group] = report["groups"]  # A is only known variants: counted, not listed
    assert [(m["id"], m["role"]) for m in group["members"]] == [
        (ids["b"], "original"),
        (ids["b_copy"], "duplicate"),
    ]
    assert group["hidden_variants"] == 1 and group["findings"] == 1

    full = build_report(collection.options, include_variants=True)
    listed = {m["id"]: m for g in full["groups"] for m in g["members"]}
    assert set(listed) == {ids[k] for k in ("a", "a_rot", "a_mir", "b", "b_dark", "b_copy")}
    assert listed[ids["a_rot"]]["role"] == "variant" and listed[ids["a_rot"]]["transform"] == "rotate"
    assert listed[ids["b_dark"]]["parent_id"] == ids["b"]

    recall = report["recall"]
    assert (recall["recovered"], recall["total"]) == (3, 4)
    assert recall["by_transform"]["bright"] == {"recovered": 0, "total": 1}
    assert recall["by_transform"]["rotate"] == {"recovered": 1, "total": 1}
    assert [m["id"] for m in recall["missed"]] == [ids["c_bright"]]


def test_pages_split_the_listed_groups(collection):
    planted_collection(collection, groups=(2, 2, 2, 3, 4), singles=2)
    whole = build_report(collection.options)
    pages = [build_report(collection.options, page=p, per_page=2) for p in (1, 2, 3)]
    assert (
        [g["group"] for p in pages for g in p["groups"]]
        == [g["group"] for g in whole["groups"]]
        == [1, 2, 3, 4, 5]
    )
    assert pages[0]["pagination"] == {"page": 1, "per_page": 2, "total_groups": 5, "pages": 3}
    assert build_report(collection.options, page=9, per_page=2)["groups"] == []


# hash pairs ----------------------------------------------------------------------------------

# What each augment-style copy is, as the dihedral view that turns the original into it.
TURNS = {
    "rotate 90": Image.Transpose.ROTATE_270,  # PIL turns counter-clockwise
    "mirror": Image.Transpose.FLIP_LEFT_RIGHT,
    "rotate 180": Image.Transpose.ROTATE_180,
    "transpose": Image.Transpose.TRANSPOSE,
}


def set_thresholds(options, cnn: float = 1.0, hash_duplicate: int = 8, hash_similar: int = 12) -> None:
    """Store thresholds for the model; the default is what `twice calibrate` fits for a
    random-weight CNN: the CNN never decides (cut 1.0), the hash does."""
    catalog = Catalog(options.catalog_url)
    try:
        details = {"hash_duplicate": hash_duplicate, "hash_similar": hash_similar}
        catalog.set_thresholds(MODEL, cnn, cnn, "calibrated", details)
    finally:
        catalog.close()


def bits(x: int) -> int:
    return bin(x & (2**64 - 1)).count("1")


def oracle_hash_pairs(options, radius: int) -> dict[tuple[int, int], int]:
    """Every pair within ``radius`` bits by plain loops: each stored file hashed in its 8 views
    and compared, both ways, with the other image's stored hash and the hashes of its bright
    and dark views (unless flat); the nearer way counts."""
    catalog = Catalog(options.catalog_url)
    ids, stored = load_stored_hashes(catalog)  # the plain hash; the views are recomputed below
    rows = catalog.get_many(ids.tolist())
    catalog.close()
    stored = dict(zip(ids.tolist(), stored[:, 0].tolist(), strict=True))
    views, targets = {}, {}
    for i in ids.tolist():
        with Image.open(Path(options.images_dir) / rows[i].stored_path) as image:
            views[i] = dihedral_hashes(image.convert("RGB")).tolist()
            edited = [phash(apply_transform(image.convert("RGB"), name)) for name in STORED_VIEWS]
        targets[i] = [stored[i]] + [h for h in edited if not is_flat(h)]
    pairs = {}
    for a in ids.tolist():
        for b in ids.tolist():
            if a < b:
                d = min(
                    min(bits(v ^ t) for v in views[a] for t in targets[b]),
                    min(bits(v ^ t) for v in views[b] for t in targets[a]),
                )
                if d <= radius:
                    pairs[(a, b)] = d
    return pairs


def turned_collection(coll: Collection) -> dict[str, int]:
    """A: original + rotated and mirrored known variants; B: original + an upside-down copy and a
    JPEG-re-encoded copy, both unknown (findings); 8 unrelated singles. Every vector is random,
    so the CNN pairs none of them."""
    a = make_image(500, (64, 48))
    ids = {"a": coll.add(coll.random(), image=a)}
    ids["a_rot"] = coll.add(
        coll.random(), image=a.transpose(TURNS["rotate 90"]), parent_id=ids["a"], transform="rotate"
    )
    ids["a_mir"] = coll.add(
        coll.random(), image=a.transpose(TURNS["mirror"]), parent_id=ids["a"], transform="mirror"
    )
    b = make_image(501, (64, 48))
    ids["b"] = coll.add(coll.random(), image=b)
    ids["b_180"] = coll.add(coll.random(), image=b.transpose(TURNS["rotate 180"]))
    ids["b_jpeg"] = coll.add(coll.random(), image=Image.open(io.BytesIO(image_bytes(b, "JPEG", quality=85))))
    for _ in range(8):
        coll.add(coll.random())
    coll.save()
    return ids


def test_pairs_touching_finds_what_hash_pairs_finds_for_the_new_images():
    pictures = [make_image(seed, (40, 30)) for seed in range(100, 130)]
    names = list(TURNS)
    copies = [p.transpose(TURNS[names[k % 4]]) for k, p in enumerate(pictures[:12])]
    lighter = [Image.eval(p, lambda v: min(255, v + 25)) for p in pictures[12:18]]
    images = pictures + copies + lighter
    rng = np.random.default_rng(3)
    ids = np.sort(rng.choice(np.arange(1, 10_000), size=len(images), replace=False))
    order = rng.permutation(len(images))  # which picture each id holds: originals not first
    views = np.stack([dihedral_hashes(images[k]) for k in order])
    holder = {int(k): int(i) for k, i in zip(order, ids, strict=True)}
    for radius in (4, 8, 12):
        full = hash_pairs(ids, views, radius)
        # the brute-force oracle: both directions, plain loops
        expected = {}
        for p in range(len(ids)):
            for q in range(p + 1, len(ids)):
                forward = hamming(views[p], views[q][0]).min()
                backward = hamming(views[q], views[p][0]).min()
                if min(forward, backward) <= radius:
                    expected[(int(ids[p]), int(ids[q]))] = int(min(forward, backward))
        assert {k: m.distance for k, m in full.items()} == expected
        assert pairs_touching(ids, views, np.ones(len(ids), bool), radius) == full
        for _ in range(4):
            new = rng.random(len(ids)) < 0.3
            touched = set(ids[new].tolist())
            want = {k: m for k, m in full.items() if touched & set(k)}
            assert pairs_touching(ids, views, new, radius) == want
    # Each turned copy pairs with its picture at 0-2 bits, as the turn that makes it.
    full = hash_pairs(ids, views, 8)
    for k in range(12):
        original, copy, turn = holder[k], holder[30 + k], names[k % 4]
        key = (min(original, copy), max(original, copy))
        assert full[key].distance <= 2
        assert full[key].transform == (turn if original < copy else INVERSE[turn])
        # pair_match says what turns its first image into its second, whichever id is smaller.
        po, pc = int(np.searchsorted(ids, original)), int(np.searchsorted(ids, copy))
        assert pair_match(original, views[po], copy, views[pc]).transform == turn
        assert pair_match(copy, views[pc], original, views[po]).transform == INVERSE[turn]


def test_hash_pairs_group_turned_and_re_encoded_copies_the_cnn_misses(collection, tmp_path):
    set_thresholds(collection.options)  # CNN cut 1.0: only the hash can pair these
    ids = turned_collection(collection)
    report = build_report(collection.options, include_variants=True)
    expected = oracle_groups(set(oracle_hash_pairs(collection.options, 8)))
    assert report_groups(report) == expected
    assert expected == [
        sorted([ids["a"], ids["a_mir"], ids["a_rot"]]),
        sorted([ids["b"], ids["b_180"], ids["b_jpeg"]]),
    ]
    assert report["threshold"] == 1.0 and report["hash_threshold"] == 8
    assert report["summary"]["pairs_by"]["cnn"] == 0 and report["summary"]["pairs_by"]["hash"] >= 4
    members = {m["id"]: m for g in report["groups"] for m in g["members"]}
    assert {g["members"][0]["id"] for g in report["groups"]} == {ids["a"], ids["b"]}  # originals
    for key, turn in (("a_rot", "rotate 90"), ("a_mir", "mirror"), ("b_180", "rotate 180")):
        evidence = members[ids[key]]["evidence"]
        assert members[ids[key]]["verdict"] == "duplicate"
        assert evidence["hash"]["transform"] == turn and evidence["hash"]["distance"] <= 2
        assert evidence["transform"] == turn and evidence["decided_by"] == ["hash"]
        assert evidence["cnn"]["verdict"] == "different" and evidence["signals"] == ["hash"]
    jpeg = members[ids["b_jpeg"]]["evidence"]
    assert jpeg["hash"]["transform"] == "identity" and jpeg["transform"] is None
    assert report["recall"]["recovered"] == report["recall"]["total"] == 2
    assert report["recall"]["by_signal"] == {"cnn": 0, "hash": 2}
    # Reported by default: the known variants are summarised, the unknown copies listed.
    default = build_report(collection.options)
    assert [[m["id"] for m in g["members"]] for g in default["groups"]] == [
        [ids["b"], ids["b_180"], ids["b_jpeg"]]
    ]

    page = render(report, "html", tmp_path / "r.html")
    assert re.search(r"hash [0-2] bits &middot; rotate 90", page)
    assert re.search(r"hash [0-2] bits &middot; mirror", page)
    assert "or hash &le; 8 bits" in page and "Recall check: 2/2 known variant pairs recovered" in page
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(report_csv(report)))}
    assert rows[ids["a_rot"]]["hash_transform"] == "rotate 90" and rows[ids["a_rot"]]["decided_by"] == "hash"
    assert rows[ids["a"]]["hash_distance"] == ""  # the original is compared with nothing

    set_thresholds(collection.options, hash_duplicate=-1, hash_similar=-1)  # the CNN alone
    alone = build_report(collection.options, include_variants=True)
    assert alone["groups"] == [] and alone["recall"]["recovered"] == 0 and alone["cache"]["hash"]["off"]


@pytest.mark.parametrize("bright_first", [False, True])
def test_a_brightened_variant_pairs_with_its_original_through_the_bright_view(
    collection, tmp_path, bright_first
):
    set_thresholds(collection.options, hash_duplicate=2, hash_similar=4)  # the demo's calibrated cut
    original = pale_art(3)
    brightened = apply_transform(original, "bright")
    # Clipping moved the plain hash far: plain hashes alone miss this pair in either direction.
    plain = min(
        hamming(dihedral_hashes(brightened), phash(original)).min(),
        hamming(dihedral_hashes(original), phash(brightened)).min(),
    )
    assert plain > 8
    if bright_first:  # same size: the earlier one is the group's original, whose view did not match
        ids = {"a_bright": collection.add(collection.random(), image=brightened)}
        ids["a"] = collection.add(collection.random(), image=original)
    else:
        ids = {"a": collection.add(collection.random(), image=original)}
        ids["a_bright"] = collection.add(
            collection.random(), image=brightened, parent_id=ids["a"], transform="bright"
        )
    for _ in range(6):
        collection.add(collection.random())
    collection.save()
    report = build_report(collection.options, include_variants=True)
    assert report_groups(report) == [sorted(ids.values())]
    assert report_groups(report) == oracle_groups(set(oracle_hash_pairs(collection.options, 2)))
    first, second = ("a_bright", "a") if bright_first else ("a", "a_bright")
    assert report["groups"][0]["members"][0]["id"] == ids[first]  # the original
    member = report["groups"][0]["members"][1]
    assert member["id"] == ids[second]
    # Whichever is the original, the matched view is the plain image's bright one.
    whose = "member" if bright_first else "original"
    hashed = member["evidence"]["hash"]
    assert (hashed["distance"], hashed["stored"], hashed["stored_of"]) == (0, "bright", whose)
    assert json.loads(render(report, "json"))["groups"][0]["members"][1]["evidence"]["hash"] == hashed
    page = render(report, "html", tmp_path / "r.html")
    shown = "its own bright view" if bright_first else "bright view of the original"
    assert f"hash 0 bits &middot; {shown}</div>" in page
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(report_csv(report)))}
    assert (rows[ids[second]]["hash_stored"], rows[ids[second]]["hash_stored_of"]) == ("bright", whose)
    assert rows[ids[first]]["hash_stored"] == rows[ids[first]]["hash_stored_of"] == ""
    if not bright_first:
        assert report["recall"]["by_transform"]["bright"] == {"recovered": 1, "total": 1}


def test_pair_evidence_says_whose_stored_view_matched():
    original, turned = pale_art(4), pale_art(5)
    brightened = apply_transform(original, "bright")

    def views(image):
        return np.r_[dihedral_hashes(image), [h or 0 for h in stored_hashes(image)[1:]]]

    match, side = pair_evidence(1, views(original), 2, views(brightened))
    assert (match.id, match.distance, match.stored, side) == (2, 0, "bright", 1)  # 1's bright view
    match, side = pair_evidence(2, views(brightened), 1, views(original))
    assert (match.id, match.distance, match.stored, side) == (1, 0, "bright", 1)
    assert pair_match(2, views(brightened), 1, views(original)) == match
    mirrored = turned.transpose(TURNS["mirror"])
    match, side = pair_evidence(3, views(turned), 4, views(mirrored))  # plain hashes: nobody's view
    assert (match.distance, match.transform, match.stored, side) == (0, "mirror", None, None)


def test_threshold_overrides_the_cnn_cut_and_keeps_the_hash_cut(collection):
    set_thresholds(collection.options)
    planted = planted_collection(collection, groups=(3, 2), singles=2)
    ids = turned_collection(collection)
    report = build_report(collection.options, threshold=0.9, include_variants=True)
    hashed = [sorted([ids["a"], ids["a_mir"], ids["a_rot"]]), sorted([ids["b"], ids["b_180"], ids["b_jpeg"]])]
    assert report_groups(report) == sorted(planted + hashed, key=lambda g: (-len(g), g[0]))
    assert report["thresholds"]["source"] == "manual" and report["thresholds"]["duplicate"] == 0.9
    assert report["thresholds"]["hash_duplicate"] == 8
    by = report["summary"]["pairs_by"]
    assert by["cnn"] == 3 + 1 and by["hash"] >= 4 and by["both"] == 0


def test_hash_cache_is_reused_at_a_smaller_radius_and_searched_again_at_a_larger(collection, caplog):
    set_thresholds(collection.options)
    turned_collection(collection)
    first = build_report(collection.options, include_variants=True)
    assert first["cache"]["hash"]["full"] and first["cache"]["hash"]["decoded"] == 14
    set_thresholds(collection.options, hash_duplicate=1, hash_similar=12)
    smaller = build_report(collection.options, include_variants=True)
    assert smaller["cache"]["hash"]["full"] is False and smaller["cache"]["hash"]["decoded"] == 0
    assert comparable(smaller) == comparable(
        build_report(collection.options, include_variants=True, incremental=False)
    )
    set_thresholds(collection.options, hash_duplicate=10, hash_similar=12)  # the full run cached radius 1
    larger = build_report(collection.options, include_variants=True)
    assert (
        larger["cache"]["hash"]["full"] is True
        and "radius 10 above cached 1" in larger["cache"]["hash"]["reason"]
    )
    assert larger["cache"]["hash"]["decoded"] == 0  # the views are reused, only pairs searched
    assert report_groups(larger) == report_groups(first)


def test_an_unreadable_stored_image_is_left_out_of_hash_pairs(collection, caplog):
    set_thresholds(collection.options)
    ids = turned_collection(collection)
    catalog = Catalog(collection.options.catalog_url)
    path = Path(collection.options.images_dir) / catalog.get_many([ids["b_jpeg"]])[ids["b_jpeg"]].stored_path
    catalog.close()
    path.write_bytes(path.read_bytes()[:60])  # truncated on disk after it was catalogued
    report = build_report(collection.options, include_variants=True)
    assert report["cache"]["hash"]["skipped"] == 1 and report["summary"]["hashed_images"] == 13
    assert report_groups(report)[1] == sorted([ids["b"], ids["b_180"]])
    assert f"no hash views for image {ids['b_jpeg']}" in caplog.text


def test_report_warns_about_default_thresholds_and_a_group_of_nearly_everything(collection, tmp_path):
    base = collection.random()
    for _ in range(12):  # what a random-weight CNN does at the default 0.9: everything is near
        collection.add(near(base, collection.rng))
    collection.add(collection.random())
    collection.save()
    report = build_report(collection.options)
    assert len(report["warnings"]) == 2
    assert "thresholds are the defaults" in report["warnings"][0]
    assert "one group holds 12 of 13 images" in report["warnings"][1]
    assert 'class="warning">Warning: one group holds 12 of 13' in render(report, "html", tmp_path / "r.html")
    set_thresholds(collection.options)
    assert build_report(collection.options)["warnings"] == []


# output --------------------------------------------------------------------------------------


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images, self.links, self.ids, self.rows, self.sorters = [], [], set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "tr" and attrs.get("class") == "group":
            self.rows.append(attrs)
        if tag == "th" and "onclick" in attrs:
            self.sorters.append(attrs["onclick"])


def test_html_parses_and_its_images_and_links_work(collection, tmp_path):
    ids = build_variants(collection)
    report = build_report(collection.options, include_variants=True)
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    out.write_text(render(report, "html", out))
    page = PageParser()
    page.feed(out.read_text())
    page.close()
    members = [m for g in report["groups"] for m in g["members"]]
    assert len(page.images) == len(members) == 6
    for src in page.images:
        assert src.startswith("data:image/jpeg;base64,")
        Image.open(io.BytesIO(__import__("base64").b64decode(src.split(",", 1)[1]))).verify()
    files = [link for link in page.links if not link.startswith("#")]
    assert len(files) == 6
    for link in files:  # relative to the page, pointing at the stored image
        assert (out.parent / unquote(link)).resolve().is_file()
    for link in page.links:
        if link.startswith("#"):
            assert link[1:] in page.ids
    assert [int(r["data-size"]) for r in page.rows] == [3, 3]
    assert any("'size'" in s for s in page.sorters) and any("'score'" in s for s in page.sorters)
    assert "Recall check: 3/4 known variant pairs recovered" in out.read_text()
    assert str(ids["c_bright"]) in out.read_text()  # the missed variant is named


def test_html_survives_a_missing_image_file(collection, tmp_path):
    planted_collection(collection, groups=(2,), singles=0)
    report = build_report(collection.options)
    Path(report["groups"][0]["members"][1]["path"]).unlink()
    page = PageParser()
    page.feed(render(report, "html", tmp_path / "r.html"))
    assert len(page.images) == 1  # the other card says "no preview"


def test_csv_carries_the_json_content(collection):
    build_variants(collection)
    report = json.loads(render(build_report(collection.options, include_variants=True), "json"))
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    expected = [(g["group"], m["id"], m["role"], m["score"]) for g in report["groups"] for m in g["members"]]
    assert [(int(r["group"]), int(r["id"]), r["role"], float(r["score"])) for r in rows] == expected
    assert {r["transform"] for r in rows} == {"", "rotate", "mirror", "dark"}


# incremental runs ----------------------------------------------------------------------------


def comparable(report: dict) -> dict:
    """The report without timings, cache facts and change labels (relative to the last run)."""
    strip = ("took_ms", "generated_at", "cache", "changes")
    kept = {k: v for k, v in report.items() if k not in strip}
    kept["groups"] = [{k: v for k, v in g.items() if k != "change"} for g in report["groups"]]
    return kept


def test_incremental_run_equals_a_full_run_and_says_what_changed(collection):
    # CNN groups (planted vectors) and a hash group (a picture and its turned copy, random vectors).
    planted = planted_collection(collection, groups=(3, 2, 2), singles=6)
    picture = make_image(600, (64, 48))
    turned = [collection.add(collection.random(), image=picture)]
    turned.append(collection.add(collection.random(), image=picture.transpose(TURNS["rotate 90"])))
    collection.save()
    first = build_report(collection.options, record=True)
    assert first["cache"]["full"] and first["changes"] is None
    assert first["cache"]["hash"]["full"] and first["cache"]["hash"]["decoded"] == 7 + 6 + 2
    assert sorted(turned) in report_groups(first)
    ids, xb = collection.vectors()
    vec = dict(zip(ids.tolist(), xb, strict=True))
    # Grow one CNN group and the hash group, add a new group of each kind, remove a member.
    collection.add(near(vec[planted[0][0]], collection.rng))
    fresh = collection.random()
    collection.add(fresh)
    collection.add(near(fresh, collection.rng))
    collection.add(collection.random(), image=picture.transpose(TURNS["mirror"]))
    single = next(i for i in ids.tolist() if not any(i in g for g in planted) and i not in turned)
    collection.add(collection.random(), image=collection.images[single].transpose(TURNS["transpose"]))
    collection.indexer.remove(planted[2][1])
    collection.save()

    incremental = build_report(collection.options, record=True)
    full = build_report(collection.options, incremental=False)
    assert incremental["cache"]["full"] is False
    assert incremental["cache"]["searched"] == 5 and incremental["cache"]["removed"] == 1
    assert incremental["cache"]["reused_pairs"] == 3 + 1  # the 3-group's pairs and the 2-group's
    hashed = incremental["cache"]["hash"]
    assert hashed["full"] is False and hashed["decoded"] == hashed["searched"] == 5
    assert hashed["reused_pairs"] == 1  # the picture and its turned copy
    assert full["cache"]["hash"]["full"] and full["cache"]["hash"]["decoded"] == 7 + 6 + 2 + 5 - 1
    assert comparable(incremental) == comparable(full)
    assert incremental["summary"]["pairs_by"]["hash"] == 3 + 1
    changes = incremental["changes"]
    assert (changes["new_groups"], changes["grown_groups"], changes["gone_groups"]) == (2, 2, 1)
    assert changes["images_added"] == 5 and changes["groups_then"] == 4 and changes["groups_now"] == 5
    assert sorted(g["change"] for g in incremental["groups"]) == ["grown", "grown", "new", "new", "unchanged"]


def test_cache_is_reused_above_its_cut_off_and_rebuilt_below(collection):
    planted_collection(collection)
    build_report(collection.options, threshold=0.9)
    higher = build_report(collection.options, threshold=0.95)
    assert higher["cache"]["full"] is False and higher["threshold"] == 0.95
    assert report_groups(higher) == report_groups(
        build_report(collection.options, threshold=0.95, incremental=False)
    )
    lower = build_report(collection.options, threshold=0.5)
    assert lower["cache"]["full"] is True and "below the cached cut-off" in lower["cache"]["reason"]


def test_a_reused_id_with_new_bytes_is_searched_again(collection, options):
    planted = planted_collection(collection, groups=(2,), singles=2)
    build_report(options)
    # Rewrite one catalogued row's sha256, as if its id now held other bytes.
    catalog = Catalog(options.catalog_url)
    with catalog.session() as session:
        session.get(ImageRow, planted[0][1]).sha256 = "f" * 64
    catalog.close()
    report = build_report(options)
    assert report["cache"]["searched"] == 1 and report["cache"]["removed"] == 1
    assert report_groups(report) == planted


# the command ---------------------------------------------------------------------------------


def test_cli_writes_each_format(collection, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TWICE_VERIFY_TOP", "0")  # as the fixture: planted vectors (see ``options``)
    build_variants(collection)
    data_dir = str(collection.options.data_dir)
    assert main(["--data-dir", data_dir, "-q", "report", "-o", str(tmp_path / "r.json"), "--no-record"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["recall"]["total"] == 4 and len(report["groups"]) == 1
    assert "wrote" in capsys.readouterr().out
    assert main(["--data-dir", data_dir, "report", "--format", "csv", "-o", "-", "--include-variants"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("group,group_size,role,id")
    assert "recall check: 3/4 known variant pairs recovered" in out.err
    assert main(["--data-dir", data_dir, "report"]) == 0
    written = list((collection.options.data_dir / "reports").glob("report-*.html"))
    assert len(written) == 1 and "<table" in written[0].read_text()
    assert main(["--data-dir", data_dir, "report", "--threshold", "7"]) == 1
    assert "threshold must be in (-1, 1], got 7.0" in capsys.readouterr().err


def test_cli_report_without_an_index_says_so(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "empty"), "report"]) == 1
    assert "no index yet; run `twice reindex FOLDER` first" in capsys.readouterr().err


def test_two_reports_at_once_both_succeed_and_agree(collection):
    # The API may serve two GET /duplicates while the pair cache is being rewritten.
    import threading

    planted = planted_collection(collection)
    results, errors = [], []

    def run() -> None:
        try:
            results.append(report_groups(build_report(collection.options, incremental=False)))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [planted] * 3
    assert build_report(collection.options)["cache"]["full"] is False
