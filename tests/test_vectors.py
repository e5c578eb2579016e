"""The FAISS store against a brute-force numpy oracle, plus persistence and damage."""

from __future__ import annotations

import numpy as np
import pytest

from twice.indexer import IndexFileError, IndexMismatchError, VectorIndex
from twice.indexer.vectors import index_spec, ivf_nlist, merge_shards


def unit_vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    scores = xq @ xb.T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def test_flat_search_matches_brute_force_after_add_and_remove():
    xb = unit_vectors(300)
    ids = np.arange(1000, 1300)
    index = VectorIndex("m1", 16)
    index.add(ids, xb)
    drop = ids[::3]
    assert index.remove(drop) == len(drop)
    assert index.remove([999_999]) == 0
    keep = ~np.isin(ids, drop)
    xq = unit_vectors(20, seed=1)
    _, found = index.search(xq, 5)
    np.testing.assert_array_equal(found, brute_force(ids[keep], xb[keep], xq, 5))
    np.testing.assert_array_equal(index.ids(), ids[keep])


def test_adding_an_existing_id_replaces_its_vector():
    xb = unit_vectors(4)
    index = VectorIndex("m1", 16)
    index.add(np.array([1, 2]), xb[:2])
    index.add(np.array([2]), xb[2:3])
    assert len(index) == 2
    ids, stored = index.vectors()
    np.testing.assert_array_equal(ids, [1, 2])
    np.testing.assert_allclose(stored[1], xb[2])


def replaced_once(index: VectorIndex, image_id: int, vector: np.ndarray) -> None:
    """Add ``vector`` under an id the index holds: still one vector under it, the new one."""
    before = len(index)
    index.add(np.array([image_id]), vector[None, :])
    ids, stored = index.vectors()
    assert len(index) == before and np.sum(ids == image_id) == 1
    np.testing.assert_allclose(stored[ids == image_id][0], vector, atol=0.02)  # SQ8 codes: close


def test_an_id_below_the_largest_is_replaced_in_every_state_of_the_index(tmp_path):
    # Adds skip the scan for stored ids when every new id is above the largest one stored:
    # the largest must be known after a load, a merge, a conversion and removals.
    xb = unit_vectors(3000, d=32, seed=11)
    ids = np.arange(3000) + 100
    index = VectorIndex("m1", 32, flat_limit=1000)
    index.add(ids[:500], xb[:500])
    index.save(tmp_path / "flat.twice")
    loaded = VectorIndex.load(tmp_path / "flat.twice", "m1", 32)
    replaced_once(loaded, 150, xb[2000])
    loaded.remove([ids[499]])  # the largest: a later add of a smaller id still replaces
    replaced_once(loaded, 598, xb[2001])
    loaded.add(ids[499:1500], xb[499:1500])  # past flat_limit: converted to IVF
    assert loaded.kind == "ivf"
    replaced_once(loaded, 1599, xb[2002])
    limits = {"flat_limit": 100, "compress_limit": 1000}
    merged = VectorIndex.trained("m1", xb[:2000], expected=3000, **limits)
    shard = VectorIndex.trained("m1", xb[:2000], expected=3000, **limits)
    shard.add(ids, xb)
    merge_shards(merged, [shard])
    replaced_once(merged, 3099, xb[0])


def test_switches_to_ivf_above_flat_limit_and_keeps_every_vector(tmp_path):
    xb = unit_vectors(3000, seed=2)
    ids = np.arange(3000) + 7
    index = VectorIndex("m1", 16, flat_limit=1000, nprobe=64)
    index.add(ids[:900], xb[:900])
    assert index.kind == "flat"
    index.add(ids[900:], xb[900:])
    assert index.kind == "ivf"
    stored_ids, stored = index.vectors()
    np.testing.assert_array_equal(stored_ids, ids)
    np.testing.assert_allclose(stored, xb)
    # every vector finds itself; nprobe covers all lists here, so search is exact
    _, found = index.search(xb[:50], 1)
    np.testing.assert_array_equal(found[:, 0], ids[:50])
    index.remove(ids[:10])
    index.save(tmp_path / "ivf.twice")
    loaded = VectorIndex.load(tmp_path / "ivf.twice", "m1", 16)
    assert loaded.kind == "ivf" and len(loaded) == 2990
    _, found = loaded.search(xb[10:20], 1)
    np.testing.assert_array_equal(found[:, 0], ids[10:20])


def test_save_load_round_trip(tmp_path):
    xb = unit_vectors(50)
    index = VectorIndex("model-a", 16)
    index.add(np.arange(50), xb)
    path = tmp_path / "index" / "vectors.twice"
    index.save(path)
    loaded = VectorIndex.load(path, "model-a", 16)
    assert (loaded.model_version, loaded.dim, len(loaded)) == ("model-a", 16, 50)
    np.testing.assert_array_equal(loaded.search(xb, 3)[1], index.search(xb, 3)[1])
    assert VectorIndex.read_header(path)["count"] == 50
    assert not [p for p in path.parent.iterdir() if p.name != path.name], "temporary files left behind"


def test_truncated_index_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "vectors.twice"
    index = VectorIndex("m1", 16)
    index.add(np.arange(20), unit_vectors(20))
    index.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(IndexFileError, match="vectors.twice.*truncated"):
        VectorIndex.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(IndexFileError, match="vectors.twice.*not a twice index"):
        VectorIndex.load(path)


def test_refuses_other_model_versions_and_dimensions(tmp_path):
    path = tmp_path / "vectors.twice"
    index = VectorIndex("model-a", 16)
    index.add(np.arange(3), unit_vectors(3))
    index.save(path)
    with pytest.raises(IndexMismatchError, match="model-a, not model-b"):
        VectorIndex.load(path, "model-b", 16)
    with pytest.raises(IndexMismatchError, match="16-d"):
        VectorIndex.load(path, "model-a", 32)
    with pytest.raises(IndexMismatchError, match="do not fit a 16-d index"):
        index.add(np.arange(3), unit_vectors(3, d=8))
    with pytest.raises(IndexMismatchError):
        index.search(unit_vectors(1, d=8), 1)


def test_search_edge_cases():
    index = VectorIndex("m1", 16)
    D, I = index.search(unit_vectors(2), 3)
    assert (I == -1).all()
    index.add(np.array([5]), unit_vectors(1))
    assert index.search(unit_vectors(1), 10)[1].tolist() == [[5]]
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(unit_vectors(1), 0)
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(np.array([1, 1]), unit_vectors(2))


def test_tiny_flat_limit_still_converts_to_ivf():
    xb = unit_vectors(120, seed=5)
    index = VectorIndex("m1", 16, flat_limit=10, nprobe=64)
    index.add(np.arange(120), xb)
    assert index.kind == "ivf"
    np.testing.assert_array_equal(index.search(xb[:5], 1)[1][:, 0], np.arange(5))


def test_vectors_come_in_id_order_whatever_the_insertion_order():
    xb = unit_vectors(3)
    index = VectorIndex("m1", 16)
    index.add(np.array([5, 2, 9]), xb)
    ids, stored = index.vectors()
    assert ids.tolist() == [2, 5, 9]
    np.testing.assert_allclose(stored, xb[[1, 0, 2]], atol=1e-6)
    index.add(np.array([1]), xb[:1])
    assert index.vectors()[0].tolist() == [1, 2, 5, 9]


def test_an_ivf_index_gives_its_vectors_and_ids_in_id_order():
    xb = unit_vectors(400, seed=6)
    ids = np.random.default_rng(1).permutation(400) * 3 + 1
    index = VectorIndex("m1", 16, flat_limit=10, nprobe=64)
    index.add(ids, xb)
    index.remove(ids[:5])
    assert index.kind == "ivf"
    stored_ids, stored = index.vectors()
    order = np.argsort(ids[5:])
    np.testing.assert_array_equal(stored_ids, ids[5:][order])
    np.testing.assert_array_equal(stored, xb[5:][order])
    np.testing.assert_array_equal(index.ids(), stored_ids)


def test_index_spec_follows_the_collection_size():
    assert index_spec(1000, flat_limit=1000) == "IDMap2,Flat"
    assert index_spec(1001, flat_limit=1000, compress_limit=5000) == f"IVF{ivf_nlist(1001)},Flat"
    assert index_spec(2_000_000) == f"IVF{ivf_nlist(2_000_000)},SQ8"


def test_grows_from_flat_to_ivf_to_sq8_and_keeps_every_vector(tmp_path):
    xb = unit_vectors(4000, d=32, seed=7)
    ids = np.arange(4000) * 2 + 1
    index = VectorIndex("m1", 32, flat_limit=1000, compress_limit=3000, nprobe=64)
    for start in range(0, 4000, 500):  # batches, as reindex adds them
        index.add(ids[start : start + 500], xb[start : start + 500])
        kind = index.index_type.split(",")[-1] if index.kind == "ivf" else "flat"
        assert kind == ("flat" if start < 1000 else "Flat" if start + 500 <= 3000 else "SQ8"), start
    assert index.compressed and index.index_type == f"IVF{ivf_nlist(3500)},SQ8"
    assert index.bytes_per_vector == 32 + 8  # one byte a dimension, and the id
    stored_ids, stored = index.vectors()
    np.testing.assert_array_equal(stored_ids, ids)
    # 8-bit codes: close, with the rare value outside the trained range clipped
    assert np.abs(stored - xb).mean() < 0.002
    cosines = np.sum(stored * xb, axis=1)
    assert np.median(cosines) > 0.999 and cosines.min() > 0.95
    index.save(tmp_path / "sq8.twice")
    loaded = VectorIndex.load(tmp_path / "sq8.twice", "m1", 32)
    assert loaded.index_type == index.index_type and loaded.compress_limit == 3000
    xq = unit_vectors(50, d=32, seed=8)
    _, found = loaded.search(xq, 10)
    truth = brute_force(ids, xb, xq, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.9  # nprobe covers every list: only the 8-bit codes cost recall


def test_a_trained_index_filled_in_shards_equals_one_filled_at_once():
    xb = unit_vectors(3000, d=32, seed=9)
    ids = np.arange(3000) + 100
    limits = {"flat_limit": 100, "compress_limit": 1000}
    whole = VectorIndex.trained("m1", xb[:2000], expected=3000, nprobe=8, **limits)
    assert whole.index_type == "IVF76,SQ8" and len(whole) == 0
    whole.add(ids, xb)
    merged = VectorIndex.trained("m1", xb[:2000], expected=3000, nprobe=8, **limits)
    shards = []
    for part in np.array_split(np.arange(3000), 3):  # e.g. one per worker
        shard = VectorIndex.trained("m1", xb[:2000], expected=3000, **limits)
        shard.add(ids[part], xb[part])
        shards.append(shard)
    merge_shards(merged, shards)
    assert len(merged) == 3000 and merged.index_type == whole.index_type
    xq = unit_vectors(20, d=32, seed=10)
    np.testing.assert_array_equal(merged.search(xq, 10)[1], whole.search(xq, 10)[1])
    with pytest.raises(ValueError, match="holds 3000 vectors"):
        merge_shards(merged, shards)
    with pytest.raises(IndexMismatchError, match="IDMap2,Flat"):
        merge_shards(VectorIndex.trained("m1", xb, expected=3000, **limits), [VectorIndex("m1", 32)])
