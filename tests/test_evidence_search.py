"""One query path: exact bytes, hash and CNN evidence per result, calibrated verdicts, d4 TTA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imagegen import image_bytes, make_image
from indexer import Catalog, reindex
from search import SearchEngine, Thresholds, thresholds_for
from search.engine import dihedral_tensors
from search.hashing import DIHEDRAL, dihedral_image
from search.verdicts import DIFFERENT, DUPLICATE, SIMILAR
from twice.cli import main

SIZE = (72, 72)  # square: a turned copy preprocesses to exactly the turned tensor


@pytest.fixture
def indexed(tmp_path, options, embedder):
    """Six originals indexed; returns their images by seed."""
    folder = tmp_path / "in"
    folder.mkdir()
    images = {}
    for seed in range(40, 46):
        images[seed] = make_image(seed, SIZE)
        images[seed].save(folder / f"img_{seed}.png")
    reindex([folder], options, embedder, progress=False)
    return images


def open_engine(options, embedder, **kw) -> SearchEngine:
    return SearchEngine.open(options, embedder, **kw)


def by_source(response: dict, suffix: str) -> dict:
    return next(hit for hit in response["results"] if hit["source"].endswith(suffix))


def test_exact_bytes_are_a_duplicate_with_every_signal(indexed, options, embedder, tmp_path):
    engine = open_engine(options, embedder)
    response = engine.search_file(tmp_path / "in" / "img_42.png", k=3)
    top = response["results"][0]
    assert top["source"].endswith("img_42.png")
    assert top["exact"] is True and top["verdict"] == DUPLICATE
    evidence = top["evidence"]
    assert evidence["exact"] is True
    assert evidence["signals"][0] == "exact" and "hash" in evidence["signals"]
    assert evidence["hash"] == {"distance": 0, "bits": 64, "transform": "identity", "verdict": DUPLICATE}
    assert evidence["cnn"]["score"] == pytest.approx(1.0, abs=1e-4)
    assert evidence["transform"] is None
    assert len(response["query"]["phash"]) == 16
    assert response["tta"] == "none"
    assert {"hash_duplicate", "hash_similar"} <= set(response["thresholds"])
    json.dumps(response)  # JSON-ready
    engine.close()


@pytest.mark.parametrize("name", ["rotate 90", "mirror", "transverse"])
def test_a_turned_copy_is_a_duplicate_by_hash_and_says_which_turn(indexed, options, embedder, name):
    engine = open_engine(options, embedder)
    # The CNN may not fire (random weights); the hash must carry the verdict alone.
    engine.thresholds = Thresholds(duplicate=1.0, similar=1.0)
    query = image_bytes(dihedral_image(indexed[44], name), "JPEG", quality=90)
    response = engine.search_bytes(query, k=6)
    top = response["results"][0]
    assert top["source"].endswith("img_44.png")
    assert top["verdict"] == DUPLICATE and top["exact"] is False
    evidence = top["evidence"]
    assert evidence["decided_by"] == ["hash"]
    assert evidence["hash"]["distance"] <= 4
    undo = {"rotate 90": "rotate 270", "mirror": "mirror", "transverse": "transverse"}[name]
    assert evidence["hash"]["transform"] == evidence["transform"] == undo
    assert evidence["cnn"]["verdict"] == DIFFERENT
    # Every other original: no signal fired, nothing decided.
    for hit in response["results"][1:]:
        assert hit["verdict"] == DIFFERENT and hit["evidence"]["decided_by"] == []
        # Beyond the lookup radius the distance is still measured and shown.
        assert hit["evidence"]["hash"]["distance"] > engine.thresholds.hash_similar
        assert hit["evidence"]["hash"]["verdict"] == DIFFERENT
    engine.close()


def test_verdict_combines_signals_strongest_wins():
    t = Thresholds(duplicate=0.95, similar=0.8, hash_duplicate=4, hash_similar=10)
    assert t.judge(0.5, 3).verdict == DUPLICATE
    assert t.judge(0.96, 30).verdict == DUPLICATE
    assert t.judge(0.85, 12).verdict == SIMILAR
    assert t.judge(0.5, 8).verdict == SIMILAR
    assert t.judge(0.5, None).verdict == DIFFERENT
    assert t.judge(0.5, 40, exact=True).verdict == DUPLICATE
    j = t.judge(0.97, 2)
    assert j.signals == ["hash", "cnn"] and j.decided_by == ["hash", "cnn"]
    j = t.judge(0.85, 2)
    assert j.signals == ["hash", "cnn"] and j.decided_by == ["hash"]
    with pytest.raises(ValueError, match="hash_duplicate=9, hash_similar=3"):
        Thresholds(hash_duplicate=9, hash_similar=3)
    with pytest.raises(ValueError, match="hash_similar=16"):
        Thresholds(hash_duplicate=1, hash_similar=16)


def test_search_uses_the_calibrated_thresholds_of_its_model(indexed, options, embedder):
    catalog = Catalog(options.catalog_url)
    details = {"hash_duplicate": 0, "hash_similar": 15}
    catalog.set_thresholds(embedder.version, 1.0, 1.0, "calibrated", details)
    catalog.set_thresholds("another-model", 0.5, 0.1, "calibrated", {"hash_duplicate": 9, "hash_similar": 9})
    assert thresholds_for(catalog, embedder.version) == Thresholds(1.0, 1.0, "calibrated", 0, 15)
    catalog.close()
    engine = open_engine(options, embedder)
    # bright:100 moves a few hash bits: a duplicate at radius <= 8, only similar at 0.
    pixels = np.clip(np.asarray(indexed[41], np.int16) + 100, 0, 255).astype(np.uint8)
    response = engine.search_bytes(image_bytes(Image.fromarray(pixels)), k=6)
    assert response["thresholds"]["source"] == "calibrated"
    assert response["thresholds"]["hash_duplicate"] == 0
    hit = by_source(response, "img_41.png")
    assert hit["evidence"]["hash"]["distance"] > 0
    assert hit["verdict"] == SIMILAR and hit["evidence"]["decided_by"] == ["hash"]
    engine.close()


def test_a_broken_stored_hash_threshold_falls_back_to_defaults(indexed, options, embedder):
    catalog = Catalog(options.catalog_url)
    catalog.set_thresholds(embedder.version, 0.9, 0.8, "manual", {"hash_duplicate": 20, "hash_similar": 3})
    assert thresholds_for(catalog, embedder.version) == Thresholds(0.9, 0.8, "manual")
    catalog.close()


def test_hash_candidates_outside_the_cnn_top_k_are_scored_and_found(indexed, options, embedder):
    engine = open_engine(options, embedder)
    query = dihedral_image(indexed[45], "flip")
    response = engine.search_bytes(image_bytes(query), k=1)  # FAISS k+1 = 2 of 6
    top = response["results"][0]
    assert top["source"].endswith("img_45.png") and top["verdict"] == DUPLICATE
    assert -1.0 <= top["evidence"]["cnn"]["score"] <= 1.0
    assert top["score"] == top["evidence"]["cnn"]["score"]
    engine.close()


def test_new_catalog_rows_are_found_by_hash_without_reopening(indexed, options, embedder):
    from indexer import Indexer

    engine = open_engine(options, embedder)
    engine.search_bytes(image_bytes(indexed[40]), k=2)  # builds the hash lookup
    indexer = Indexer(options, embedder.version, embedder.dim)
    fresh = make_image(77, SIZE)
    row = indexer.add_bytes(image_bytes(fresh), "fresh.png").row  # pending: no vector yet
    indexer.close()
    response = engine.search_bytes(image_bytes(dihedral_image(fresh, "rotate 180"), "JPEG"), k=3)
    top = response["results"][0]
    assert top["id"] == row.id and top["verdict"] == DUPLICATE
    assert top["evidence"]["cnn"] is None  # no vector yet: the hash alone decided
    engine.close()


def test_dihedral_tensor_views_equal_preprocessed_turned_images(embedder):
    image = make_image(9, (64, 64))  # the model's size: no resampling differences at all
    tensor = embedder.preprocess(image)
    for name, view in zip(DIHEDRAL, dihedral_tensors(tensor), strict=True):
        expected = embedder.preprocess(dihedral_image(image, name))
        torch.testing.assert_close(view, expected, msg=name)


def test_tta_d4_recovers_the_cnn_score_of_a_turned_copy(indexed, options, embedder):
    engine = open_engine(options, embedder)
    query = image_bytes(dihedral_image(indexed[43], "rotate 90"))
    plain = by_source(engine.search_bytes(query, k=6), "img_43.png")
    d4 = engine.search_bytes(query, k=6, tta="d4")
    hit = by_source(d4, "img_43.png")
    assert d4["tta"] == "d4"
    assert hit["evidence"]["cnn"]["view"] == "rotate 270"
    assert hit["score"] == pytest.approx(1.0, abs=1e-3)
    assert hit["score"] >= plain["score"]
    with pytest.raises(ValueError, match="tta must be one of none, d4, got 'd8'"):
        engine.search_bytes(query, tta="d8")
    engine.close()


def test_cli_search_tta_flag(indexed, options, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TWICE_IMAGE_SIZE", "64")
    monkeypatch.setenv("TWICE_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("TWICE_DEVICE", "cpu")
    path = tmp_path / "q.png"
    dihedral_image(indexed[40], "mirror").save(path)
    argv = ["-q", "--data-dir", str(options.data_dir), "search", str(path), "-k", "2", "--json"]
    assert main([*argv, "--tta", "d4"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["tta"] == "d4"
    assert response["results"][0]["evidence"]["cnn"]["view"] == "mirror"
    with pytest.raises(SystemExit):
        main([*argv, "--tta", "d9"])
    assert "invalid choice: 'd9'" in capsys.readouterr().err


def test_within_a_verdict_more_signals_rank_first(indexed, options, embedder):
    engine = open_engine(options, embedder)
    # A CNN that calls everything a duplicate (what random weights and default thresholds do):
    # the original, which the hash also supports, must still come first.
    engine.thresholds = Thresholds(duplicate=-1.0, similar=-1.0, hash_duplicate=0, hash_similar=15)
    pixels = np.clip(np.asarray(indexed[42], np.int16) + 100, 0, 255).astype(np.uint8)
    response = engine.search_bytes(image_bytes(Image.fromarray(pixels)), k=6)
    assert all(hit["verdict"] == DUPLICATE for hit in response["results"])
    top = response["results"][0]
    assert top["source"].endswith("img_42.png")
    assert top["evidence"]["signals"] == ["cnn", "hash"]  # strongest first: cnn duplicate, hash similar
    assert all(hit["evidence"]["signals"] == ["cnn"] for hit in response["results"][1:])
    engine.close()


def test_hash_candidates_are_scored_exactly_on_an_ivf_index_too(tmp_path, embedder):
    from conftest import make_options

    options = make_options(tmp_path / "data", flat_limit=64)  # 72 images: IVF64 once 64 + 8 pass it
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(72):
        make_image(seed, (40, 40)).save(folder / f"img_{seed}.png")
    reindex([folder], options, embedder, progress=False)
    engine = open_engine(options, embedder)
    assert engine.vectors.kind == "ivf"
    query = dihedral_image(make_image(33, (40, 40)), "flip")
    top = engine.search_bytes(image_bytes(query), k=1)["results"][0]
    assert top["source"].endswith("img_33.png") and top["evidence"]["hash"]["transform"] == "flip"
    ids, xb = engine.vectors.vectors()
    expected = float(xb[ids == top["id"]][0] @ embedder.embed_images([query])[0])  # brute force
    assert top["score"] == pytest.approx(expected, abs=1e-5)
    engine.close()


def test_rank_order_within_a_verdict():
    from search.engine import _rank_key

    def result(i, score, signals, decided, distance, verdict=DUPLICATE, exact=False):
        hashed = {"distance": distance} if distance is not None else None
        evidence = {"signals": signals, "decided_by": decided, "hash": hashed}
        return {"id": i, "score": score, "verdict": verdict, "exact": exact, "evidence": evidence}

    results = [
        result(1, 0.99, ["cnn"], ["cnn"], 30),  # CNN alone
        result(2, 0.95, ["hash"], ["hash"], 0),  # hash alone, exact hash
        result(3, 1.00, ["hash"], ["hash"], 2),  # hash alone, a JPEG of the same pixels
        result(4, 0.50, ["hash", "cnn"], ["hash"], 9),  # both fired
        result(5, 0.10, [], [], None, verdict=SIMILAR),
        result(6, 0.20, ["exact", "hash", "cnn"], ["exact", "hash", "cnn"], 0, exact=True),
    ]
    assert [r["id"] for r in sorted(results, key=_rank_key)] == [6, 4, 3, 2, 1, 5]
