"""Perceptual hashes: dihedral views from one DCT, the multi-index lookup, catalog storage."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagegen import dusk_art, image_bytes, make_image, pale_art
from twice.augment import apply_transform
from twice.hashing import (
    DIHEDRAL,
    HASH_VERSION,
    MAX_RADIUS,
    HashIndex,
    dct_coefficients,
    dihedral_coefficients,
    dihedral_hashes,
    dihedral_image,
    hamming,
    hash_pairs,
    nearest_match,
    phash,
    popcount,
    resample_matrix,
    shifted,
    stored_hashes,
)
from twice.indexer import Catalog, Indexer, reindex
from twice.indexer.catalog import load_stored_hashes
from twice.search import SearchEngine

# What turns a query made by transform g back into the stored original: g's inverse.
INVERSE = {
    "identity": "identity",
    "rotate 90": "rotate 270",
    "rotate 180": "rotate 180",
    "rotate 270": "rotate 90",
    "mirror": "mirror",
    "flip": "flip",
    "transpose": "transpose",
    "transverse": "transverse",
}


def test_dct_of_a_turned_image_is_a_sign_and_transpose_pattern():
    # At 32x32 the resize is the identity, so the views must match a direct DCT exactly.
    image = make_image(3, (32, 32))
    views = dihedral_coefficients(dct_coefficients(image))
    for i, name in enumerate(DIHEDRAL):
        direct = dct_coefficients(dihedral_image(image, name))
        np.testing.assert_allclose(views[i], direct, atol=1e-9, err_msg=name)


def line_art(seed: int, size: tuple[int, int] = (100, 100), grey: int = 200) -> Image.Image:
    """Thin light strokes on white, like clip-art thumbnails: almost every DCT coefficient is tiny."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(3):
        box = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
        draw.arc(
            [box[0][0], box[1][0], box[0][1] + 5, box[1][1] + 5], int(rng.integers(0, 360)), 300, (grey,) * 3
        )
    return image


@pytest.mark.parametrize("size", [(96, 72), (40, 90), (100, 100), (333, 517)])
def test_dihedral_hashes_equal_hashes_of_the_turned_images(size):
    for seed in range(4):
        image = make_image(seed, size)
        views = dihedral_hashes(image)
        direct = np.array([phash(dihedral_image(image, name)) for name in DIHEDRAL])
        assert hamming(views, direct).max() == 0, (seed, hamming(views, direct))
        assert len(set(views.tolist())) == 8  # the views differ from each other


@pytest.mark.parametrize("seed", range(6))
def test_turned_line_art_hashes_exactly_like_its_view(seed):
    # Version 1 squashed with Pillow's 8-bit two-pass resize: on light strokes like these the
    # rounding, not the picture, set up to 16 bits, and turned clip art missed its original.
    image = line_art(seed)
    views = dihedral_hashes(image)
    for i, name in enumerate(DIHEDRAL):
        assert phash(dihedral_image(image, name)) == views[i], name


def test_a_contrast_and_brightness_change_without_clipping_keeps_the_hash():
    # pHash bits compare coefficients with their median: a*grey + b (a > 0) moves none of them,
    # as long as nothing rounds the squashed image (version 1 rounded it to 8 bits).
    for seed in range(4):
        grey = np.asarray(line_art(seed, grey=120).convert("L"), np.float64)
        faint = Image.fromarray((120 + grey * 0.5).round().astype(np.uint8))  # 180..247: no clipping
        assert phash(faint) == phash(Image.fromarray(grey.astype(np.uint8))), seed


def test_resampling_rows_sum_to_one_and_mirror():
    for n_in in (1, 7, 32, 100, 517):
        m = resample_matrix(n_in)
        assert m.shape == (32, n_in)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(m[::-1, ::-1], m, atol=1e-12)  # a reversed line squashes reversed
    np.testing.assert_allclose(resample_matrix(32), np.eye(32), atol=1e-12)  # same size: unchanged
    with pytest.raises(ValueError, match="cannot resample 0 pixels to 32"):
        resample_matrix(0)


def test_a_single_colour_image_has_the_dc_bit_only():
    for colour in ("white", (10, 200, 30)):
        views = dihedral_hashes(Image.new("RGB", (50, 40), colour))
        assert set(views.tolist()) == {-(2**63)}, colour  # only the first (DC) bit, in every view
    assert set(dihedral_hashes(Image.new("RGB", (50, 40), "black")).tolist()) == {0}


def test_hash_is_a_signed_64_bit_integer_and_stable():
    h = phash(make_image(1))
    assert isinstance(h, int) and -(2**63) <= h < 2**63
    assert phash(make_image(1)) == h
    assert hamming(h, phash(make_image(2))) > 10


def test_popcount_agrees_with_python():
    values = np.random.default_rng(0).integers(0, 2**63, size=50, dtype=np.int64).view(np.uint64)
    assert popcount(values).tolist() == [bin(int(v)).count("1") for v in values]


def test_turned_and_flipped_copies_are_found_with_the_transform_that_undoes_them():
    originals = {seed: make_image(seed) for seed in range(10, 20)}
    index = HashIndex(originals, [phash(im) for im in originals.values()])
    for name in DIHEDRAL:
        query = dihedral_image(originals[13], name)
        matches = index.search(dihedral_hashes(query), radius=4)
        assert matches[0].id == 13, name
        assert matches[0].distance <= 2
        assert matches[0].transform == INVERSE[name]


def test_hash_pairs_pair_turned_copies_with_the_turn_from_a_to_b():
    a, other = make_image(21), make_image(22)
    images = {1: a, 2: dihedral_image(a, "rotate 90"), 3: other, 4: dihedral_image(a, "mirror")}
    views = np.stack([dihedral_hashes(im) for im in images.values()])
    pairs = hash_pairs(list(images), views, radius=4)
    assert set(pairs) == {(1, 2), (1, 4), (2, 4)}
    assert (pairs[(1, 2)].id, pairs[(1, 2)].transform) == (2, "rotate 90")
    assert pairs[(1, 4)].transform == "mirror"
    # Which turn takes image 2 to image 4, checked on the pixels themselves.
    assert dihedral_image(images[2], pairs[(2, 4)].transform).tobytes() == images[4].tobytes()
    with pytest.raises(ValueError, match=r"views must have shape \(4, 8\), got \(4, 7\)"):
        hash_pairs(list(images), views[:, :7], 4)


def flip_bits(value: int, bits: np.ndarray) -> int:
    value &= 2**64 - 1
    for b in bits:
        value ^= 1 << int(b)
    return int(np.uint64(value).view(np.int64))


@pytest.mark.parametrize("radius", [0, 3, 4, 7, 8, 11, 15])
def test_multi_index_lookup_equals_a_linear_scan(radius):
    rng = np.random.default_rng(radius)
    stored = rng.integers(-(2**63), 2**63 - 1, size=3000, dtype=np.int64)
    # Plant near neighbours at every distance up to the radius and a little beyond it.
    base = int(stored[0])
    planted = [flip_bits(base, rng.choice(64, d, replace=False)) for d in range(0, MAX_RADIUS + 2)]
    index = HashIndex(range(3000 + len(planted)), np.r_[stored, planted])
    for query in (base, int(stored[7]), flip_bits(int(stored[9]), [1, 40])):
        views = np.array([query, int(stored[100])])  # two views: either may match
        found = {m.id: m.distance for m in index.search(views, radius)}
        assert found == index.brute_force(views, radius)
    found = {m.id for m in index.search(np.array([base]), radius)}
    assert {3000 + d for d in range(radius + 1)} <= found


def test_added_hashes_are_found_before_and_after_the_merge(monkeypatch):
    monkeypatch.setattr(HashIndex, "MERGE_AT", 3)
    index = HashIndex([1], [phash(make_image(1))])
    index.add([2], [phash(make_image(2))])
    assert [m.id for m in index.search(dihedral_hashes(make_image(2)), 0)] == [2]
    index.add([3, 4], [phash(make_image(3)), phash(make_image(4))])  # merges
    assert index._extra_count == 0 and len(index) == 4
    assert [m.id for m in index.search(dihedral_hashes(make_image(4)), 0)] == [4]


def test_bad_lookup_arguments_name_the_value():
    index = HashIndex([1], [5])
    with pytest.raises(ValueError, match="radius .* got 16"):
        index.search([5], 16)
    with pytest.raises(ValueError, match="got -1"):
        index.search([5], -1)
    with pytest.raises(ValueError, match="at most 8 query views, got 9"):
        index.search(list(range(9)), 2)
    with pytest.raises(ValueError, match="2 ids for 1 hashes"):
        HashIndex([1, 2], [3])
    with pytest.raises(ValueError, match="unknown dihedral transform 'spin'"):
        dihedral_image(make_image(1), "spin")


def test_ingest_stores_the_hash_of_the_decoded_image(options):
    indexer = Indexer(options, "test", 8)
    image = make_image(5)
    row = indexer.add_bytes(image_bytes(image), "a.png").row
    assert row.phash == phash(image) and row.phash_version == HASH_VERSION
    indexer.close()


def stored_by_id(catalog) -> dict[int, list[int]]:
    """{id: [plain, bright, dark]} of the catalog's current-version stored hashes."""
    ids, stored = load_stored_hashes(catalog)
    return dict(zip(ids.tolist(), stored.tolist(), strict=True))


def test_hashes_of_another_version_are_ignored_then_recomputed_by_reindex(tmp_path, options, embedder):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(3):
        line_art(seed).save(folder / f"art_{seed}.png")
    reindex([folder], options, embedder, progress=False)
    catalog = Catalog(options.catalog_url)
    current = stored_by_id(catalog)
    assert len(current) == 3
    catalog.close()
    # A catalog hashed by version 1: other bits under another version number.
    with sqlite3.connect(options.data_dir / "catalog.sqlite") as db:
        db.execute(
            "UPDATE images SET phash = (phash | 255) - (phash & 255), phash_version = ?", (HASH_VERSION - 1,)
        )
    catalog = Catalog(options.catalog_url)
    assert len(load_stored_hashes(catalog)[0]) == 0  # not comparable: no hash evidence from them
    catalog.close()
    engine = SearchEngine.open(options, embedder)
    query = dihedral_image(line_art(1), "rotate 90")
    hits = engine.search_bytes(image_bytes(query), k=3)["results"]
    assert all(hit["evidence"]["hash"] is None for hit in hits)
    engine.close()
    summary = reindex([], options, embedder, progress=False)
    assert summary.hashed == 3 and summary.added == 0
    catalog = Catalog(options.catalog_url)
    assert stored_by_id(catalog) == current
    catalog.close()
    assert reindex([], options, embedder, progress=False).hashed == 0
    engine = SearchEngine.open(options, embedder)
    top = engine.search_bytes(image_bytes(query), k=3)["results"][0]
    assert top["source"].endswith("art_1.png") and top["evidence"]["hash"]["distance"] == 0
    engine.close()


def catalog_columns(catalog: Catalog) -> list[str]:
    with catalog.session() as session:
        return [r[1] for r in session.connection().exec_driver_sql("PRAGMA table_info(images)")]


def test_an_old_catalog_gets_the_column_and_reindex_backfills_hashes(tmp_path, options, embedder):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(3):
        make_image(seed).save(folder / f"img_{seed}.png")
    reindex([folder], options, embedder, progress=False)
    # Make it a catalog written before hashes existed.
    with sqlite3.connect(options.data_dir / "catalog.sqlite") as db:
        db.execute("ALTER TABLE images DROP COLUMN phash")
        db.execute("DROP TABLE alembic_version")  # written before migrations existed
        db.execute("DROP TABLE audit")  # and before the audit trail
        db.execute("DROP TABLE source_files")  # and the re-run stamps
    catalog = Catalog(options.catalog_url)
    columns = catalog_columns(catalog)
    assert "phash" in columns
    assert all(catalog.get(i).phash is None for i in catalog.ids().tolist())
    catalog.close()
    summary = reindex([], options, embedder, progress=False)
    assert summary.hashed == 3
    assert any("perceptual hashes of 3" in line for line in summary.lines())
    catalog = Catalog(options.catalog_url)
    hashes = {catalog.get(i).source: catalog.get(i).phash for i in catalog.ids().tolist()}
    catalog.close()
    for seed in range(3):
        expected = phash(Image.open(folder / f"img_{seed}.png").convert("RGB"))
        assert hashes[str(folder / f"img_{seed}.png")] == expected
    assert reindex([], options, embedder, progress=False).hashed == 0


# stored photometric views -------------------------------------------------------------------


def test_stored_hashes_are_the_hashes_of_the_bright_and_dark_views():
    image = make_image(4)
    assert stored_hashes(image) == (
        phash(image),
        phash(apply_transform(image, "bright")),
        phash(apply_transform(image, "dark")),
    )
    # Everything at 155 or above brightens to plain white: that view says nothing (NULL).
    pale = Image.fromarray(np.full((40, 50, 3), 160, np.uint8))
    ImageDraw.Draw(pale).ellipse((5, 5, 30, 30), fill=(230, 230, 230))
    plain, bright, dark = stored_hashes(pale)
    assert plain == phash(pale) and bright is None and dark is not None


def test_ties_prefer_the_plain_hash_then_the_earlier_view():
    queries = np.array([0b1011, 0b0111], np.int64)
    match = nearest_match(queries, 7, (0b0011, 0b1011, None))
    assert (match.distance, match.stored, match.transform) == (0, "bright", "identity")
    match = nearest_match(queries, 7, (0b1011, 0b0111, None))  # 0 bits both ways: plain wins
    assert (match.distance, match.stored, match.transform) == (0, None, "identity")
    index = HashIndex([7, 7], [0b0111, 0b1011], kinds=[1, 0])
    assert index.search(queries, 0)[0].stored is None
    assert HashIndex([7], [0b0111], kinds=[2]).search(queries, 0)[0].stored == "dark"
    with pytest.raises(ValueError, match=r"kinds must be 1 indexes"):
        HashIndex([7], [1], kinds=[3])


@pytest.mark.parametrize(("make", "edit"), [(pale_art, "bright"), (dusk_art, "dark")])
def test_a_clipped_copy_is_found_through_its_originals_stored_view(tmp_path, options, embedder, make, edit):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(4):
        make(seed).save(folder / f"art_{seed}.png")
    make_image(9).save(folder / "photo.png")
    reindex([folder], options, embedder, progress=False)
    copy = apply_transform(make(1), edit)
    query = image_bytes(copy, "JPEG", quality=90)  # re-encoded, as copies travel
    # Clipping moved the plain hash far: the plain hash alone cannot find the original.
    assert hamming(dihedral_hashes(Image.open(folder / "art_1.png")), phash(copy)).min() > 8
    engine = SearchEngine.open(options, embedder)
    top = engine.search_bytes(query, k=3)["results"][0]
    engine.close()
    assert top["source"].endswith("art_1.png")
    assert top["evidence"]["hash"]["distance"] <= 2 and top["evidence"]["hash"]["stored"] == edit
    # The clipping left two outlines of a low-structure drawing: the hash view finds it first,
    # but a low-structure hash match is weak evidence; where verification (on stretched levels)
    # matches 2 points or fewer of what is left (the pale drawing brightened), it does not back
    # the CNN and the copy is only similar.
    assert "hash" in top["evidence"]["signals"]
    expected = "similar" if top["evidence"]["verification"]["inliers"] <= 2 else "duplicate"
    assert top["verdict"] == expected


def test_a_version_2_catalog_gets_the_view_columns_and_reindex_fills_them(tmp_path, options, embedder):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(3):
        pale_art(seed).save(folder / f"art_{seed}.png")
    reindex([folder], options, embedder, progress=False)
    # Make it a catalog written by hash version 2: no view columns.
    with sqlite3.connect(options.data_dir / "catalog.sqlite") as db:
        db.execute("ALTER TABLE images DROP COLUMN phash_bright")
        db.execute("ALTER TABLE images DROP COLUMN phash_dark")
        db.execute("UPDATE images SET phash_version = 2")
        db.execute("DROP TABLE alembic_version")  # written before migrations existed
        db.execute("DROP TABLE audit")  # and before the audit trail
        db.execute("DROP TABLE source_files")  # and the re-run stamps
    catalog = Catalog(options.catalog_url)
    columns = catalog_columns(catalog)
    assert {"phash_bright", "phash_dark"} <= set(columns)
    assert all(catalog.get(i).phash_bright is None for i in catalog.ids().tolist())
    assert len(load_stored_hashes(catalog)[0]) == 0  # version 2: not comparable until rehashed
    catalog.close()
    assert reindex([], options, embedder, progress=False).hashed == 3
    catalog = Catalog(options.catalog_url)
    rows = {r.source: r for r in catalog.get_many(catalog.ids().tolist()).values()}
    ids, stored = load_stored_hashes(catalog)
    catalog.close()
    assert len(ids) == 3
    for seed in range(3):
        image = Image.open(folder / f"art_{seed}.png").convert("RGB")
        row = rows[str(folder / f"art_{seed}.png")]
        assert (row.phash, row.phash_bright, row.phash_dark) == stored_hashes(image)
        assert row.phash_bright == phash(apply_transform(image, "bright"))
        assert row.phash_version == HASH_VERSION
    assert reindex([], options, embedder, progress=False).hashed == 0


@pytest.mark.parametrize("amount", [100, -50, 0, 300])
def test_shifted_adds_and_clips_every_channel_as_integer_arithmetic_does(amount):
    rgb = np.random.default_rng(3).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    expected = np.clip(rgb.astype(np.int32) + amount, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(shifted(Image.fromarray(rgb), amount)), expected)
    grey = Image.fromarray(rgb[..., 0])  # other modes are shifted as their RGB
    np.testing.assert_array_equal(
        np.asarray(shifted(grey, amount)), np.asarray(shifted(grey.convert("RGB"), amount))
    )
