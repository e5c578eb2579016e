"""One query path: exact bytes, hash and CNN evidence per result, calibrated verdicts, d4 TTA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_options
from imagegen import dusk_art, image_bytes, make_image
from twice.cli import main
from twice.hashing import DIHEDRAL, dihedral_image
from twice.indexer import Catalog, reindex
from twice.model import Embedder
from twice.search import SearchEngine, Thresholds, thresholds_for
from twice.search.engine import dihedral_tensors, family_margins, summarize
from twice.search.verdicts import DIFFERENT, DUPLICATE, MAX_WEIGHT, SIMILAR, EvidenceWeights
from twice.web.service import SearchService

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


@pytest.fixture(scope="module")
def plain_embedder(tmp_path_factory) -> Embedder:
    """A CNN without d4 pooling: its views of a turned image score differently (what TTA is for)."""
    return Embedder.from_options(make_options(tmp_path_factory.mktemp("unused"), invariance="none"))


@pytest.fixture
def plain_indexed(tmp_path, plain_embedder):
    """The six originals indexed by ``plain_embedder``; returns (options, images by seed)."""
    options = make_options(tmp_path / "plain-data")
    folder = tmp_path / "in"
    folder.mkdir()
    images = {}
    for seed in range(40, 46):
        images[seed] = make_image(seed, SIZE)
        images[seed].save(folder / f"img_{seed}.png")
    reindex([folder], options, plain_embedder, progress=False)
    return options, images


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
    assert evidence["hash"] == {
        "distance": 0,
        "bits": 64,
        "transform": "identity",
        "stored": None,  # its plain hash, not a photometric view
        "verdict": DUPLICATE,
    }
    assert evidence["cnn"]["score"] == pytest.approx(1.0, abs=1e-4)
    assert evidence["transform"] is None
    assert evidence["summary"] == "same bytes (sha256); hash 0 bits; CNN 1.000 (decided by exact, hash, cnn)"
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
    score = f"{evidence['cnn']['score']:.3f}"
    bits = evidence["hash"]["distance"]
    assert evidence["summary"] == f"hash {bits} bits, as {undo}; CNN {score} (decided by hash)"
    # Every other original: no signal fired, nothing decided.
    for hit in response["results"][1:]:
        assert hit["verdict"] == DIFFERENT and hit["evidence"]["decided_by"] == []
        assert hit["evidence"]["summary"].endswith("(decided by nothing)")
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
    # bright:60 moves hash bits (10 here): a duplicate at radius <= 10, only similar at 0. Not
    # bright:100, whose copy matches the stored bright view (search.hashing.STORED_VIEWS) at 0.
    pixels = np.clip(np.asarray(indexed[41], np.int16) + 60, 0, 255).astype(np.uint8)
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
    from twice.indexer import Indexer

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


def test_tta_d4_recovers_the_cnn_score_of_a_turned_copy(plain_indexed, plain_embedder):
    options, indexed = plain_indexed
    engine = open_engine(options, plain_embedder)
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


def test_cli_search_tta_flag(plain_indexed, tmp_path, capsys, monkeypatch):
    options, indexed = plain_indexed
    monkeypatch.setenv("TWICE_IMAGE_SIZE", "64")
    monkeypatch.setenv("TWICE_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("TWICE_DEVICE", "cpu")
    monkeypatch.setenv("TWICE_INVARIANCE", "none")
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


def test_within_a_verdict_the_weight_of_evidence_ranks(indexed, options, embedder):
    # Verification off: it would rightly refuse a duplicate between these small, different images.
    engine = open_engine(options.with_overrides(verify_top=0), embedder)
    # A CNN that calls everything a duplicate (what random weights and default thresholds do):
    # the original, which the hash also supports, must still come first.
    engine.thresholds = Thresholds(duplicate=-1.0, similar=-1.0, hash_duplicate=0, hash_similar=15)
    # +60, not the stored bright view's +100: the hash must only be similar (6 bits here).
    pixels = np.clip(np.asarray(indexed[42], np.int16) + 60, 0, 255).astype(np.uint8)
    response = engine.search_bytes(image_bytes(Image.fromarray(pixels)), k=6)
    assert all(hit["verdict"] == DUPLICATE for hit in response["results"])
    top = response["results"][0]
    assert top["source"].endswith("img_42.png")
    assert top["evidence"]["signals"] == ["cnn", "hash"]  # strongest first: cnn duplicate, hash similar
    assert all(hit["evidence"]["signals"] == ["cnn"] for hit in response["results"][1:])
    weights = [hit["evidence"]["weight"] for hit in response["results"]]
    assert weights == sorted(weights, reverse=True)
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
    from twice.search.engine import _rank_key

    def result(i, score, weight, distance, verdict=DUPLICATE, exact=False, transform=None, stored=None):
        hashed = {"distance": distance, "stored": stored} if distance is not None else None
        evidence = {"weight": weight, "hash": hashed, "transform": transform}
        return {"id": i, "score": score, "verdict": verdict, "exact": exact, "evidence": evidence}

    results = [
        result(1, 0.99, 2.0, 30),
        result(2, 0.95, 9.0, 0),
        result(3, 1.00, 9.0, 2),  # same weight: the higher CNN score
        result(4, 0.50, 9.0, 2),  # same weight, lower score
        result(5, 0.50, 9.0, 1),  # same weight and score: the nearer hash
        result(6, 0.10, 40.0, None, verdict=SIMILAR),  # a lower verdict, however heavy
        result(7, 0.20, -3.0, 0, exact=True),  # the same bytes first, whatever the rest
        result(8, 1.00, 9.004, 0, transform="mirror"),  # equal weight, but only as a mirror image
        result(9, 1.00, 9.0, 0, stored="dark"),  # equal weight, but only through its stored dark view
    ]
    assert [r["id"] for r in sorted(results, key=_rank_key)] == [7, 3, 2, 5, 4, 9, 8, 1, 6]


def test_default_weights_let_hash_bits_outweigh_a_cnn_that_cannot_tell():
    w = EvidenceWeights.default()
    # Random CNN weights score everything 0.99+: a 0.0001 edge must not beat 2 hash bits...
    assert w.weight(0.9983, 0) > w.weight(0.9984, 2)
    # ...while a CNN that separates (0.95 against 0.60) outweighs a few bits of JPEG noise.
    assert w.weight(0.95, 3) > w.weight(0.60, 0)
    assert w.weight(None, None) == 0.0 and w.hash_weight(64) == w.hash_weight(99) < 0
    # Far hashes do not rank: a crop the CNN finds at 25 bits is not sunk below a stranger at 17.
    assert w.hash_weight(17) == w.hash_weight(25) == w.hash_weight(40) > -MAX_WEIGHT
    assert w.weight(0.80, 25) > w.weight(0.78, 17)
    # One threshold gap of each signal weighs the same.
    t = Thresholds()
    gap_cnn = w.cnn_weight(t.duplicate) - w.cnn_weight(t.similar)
    gap_hash = w.hash_weight(t.hash_duplicate) - w.hash_weight(t.hash_similar)
    assert gap_cnn == pytest.approx(gap_hash)


def test_weights_are_stored_with_the_thresholds_and_bad_ones_fall_back(indexed, options, embedder):
    flat = EvidenceWeights(tuple([0.0] * 65), (0.0, 1.0), (0.0, 0.0), "calibrated")
    assert EvidenceWeights.from_dict(flat.to_dict()) == flat
    with pytest.raises(ValueError, match="one value per distance 0..64, got 3"):
        EvidenceWeights((1.0, 2.0, 3.0), (0.0,), (0.0,))
    with pytest.raises(
        ValueError, match="cnn weights need ascending knots and one weight each, got 2 knots for 1"
    ):
        EvidenceWeights(tuple([0.0] * 65), (1.0, 0.0), (0.0,))
    with pytest.raises(ValueError, match="gap weights need ascending knots"):
        EvidenceWeights(tuple([0.0] * 65), (0.0,), (0.0,), "calibrated", (0.0, 0.0), (1.0, 1.0))
    catalog = Catalog(options.catalog_url)
    details = {"hash_duplicate": 8, "hash_similar": 12, "weights": flat.to_dict()}
    catalog.set_thresholds(embedder.version, 0.9, 0.75, "calibrated", details)
    assert thresholds_for(catalog, embedder.version).weights == flat
    broken = details | {"weights": {"hash": [1.0], "cnn_knots": [0.0], "cnn": [0.0]}}
    catalog.set_thresholds(embedder.version, 0.9, 0.75, "calibrated", broken)
    assert thresholds_for(catalog, embedder.version).weights == EvidenceWeights.default()
    catalog.set_thresholds(embedder.version, 0.9, 0.75, "calibrated", details)
    catalog.close()
    engine = open_engine(options, embedder)
    response = engine.search_bytes(image_bytes(indexed[41]), k=3)
    assert response["thresholds"]["weights"] == "calibrated"
    # Flat weights: every result weighs 0, and the CNN score orders each verdict.
    assert {hit["evidence"]["weight"] for hit in response["results"]} == {0.0}
    engine.close()


def test_an_upload_says_which_image_search_calls_its_duplicate(indexed, options, embedder):
    catalog = Catalog(options.catalog_url)
    catalog.set_thresholds(embedder.version, 1.0, 1.0, "manual")  # the CNN never fires: hash only
    ids = {catalog.get(i).source.rsplit("/", 1)[-1]: i for i in catalog.ids().tolist()}
    catalog.close()
    service = SearchService(options, embedder=embedder)
    # A turned JPEG: only the same pixels reach a CNN score of 1.0 (even with d4 pooling).
    turned = image_bytes(dihedral_image(indexed[43], "rotate 90"), "JPEG", quality=80)
    added = service.add_bytes(turned, "turned.jpg")
    assert added["created"] and added["match"] == "duplicate"
    duplicate = added["duplicate_of"]
    assert duplicate["id"] == ids["img_43.png"] and duplicate["verdict"] == DUPLICATE
    assert duplicate["evidence"]["decided_by"] == ["hash"]
    assert duplicate["evidence"]["hash"]["transform"] == "rotate 270"
    unrelated = service.add_bytes(image_bytes(make_image(99, SIZE)), "new.png")
    assert unrelated["created"] and unrelated["match"] is None and unrelated["duplicate_of"] is None
    # The upload is searchable at once, by its own bytes.
    top = service.search_bytes(turned, k=1)["results"][0]
    assert top["id"] == added["id"] and top["exact"]
    service.close()


def test_the_original_of_a_matched_variant_is_a_candidate(tmp_path, options, embedder):
    from twice.indexer import Indexer

    original, variant = make_image(60, SIZE), make_image(61, SIZE)  # unlike: no signal links them
    indexer = Indexer(options, embedder.version, embedder.dim)
    parent = indexer.add_bytes(image_bytes(original), "original.png").row  # pending: no vector
    child = indexer.add_bytes(image_bytes(variant), "variant.png", parent_id=parent.id, transform="bright")
    indexer.add_vectors(np.array([child.row.id]), embedder.embed_images([variant]))
    indexer.save()
    indexer.close()
    engine = open_engine(options, embedder)
    engine.thresholds = Thresholds(hash_duplicate=-1, hash_similar=-1)  # no hash lookup either
    hits = engine.search_bytes(image_bytes(variant), k=3)["results"]
    assert [hit["id"] for hit in hits] == [child.row.id, parent.id]
    assert hits[1]["evidence"]["cnn"] is None and hits[1]["verdict"] == DIFFERENT
    engine.close()


def test_the_gap_below_the_best_score_ranks_within_a_verdict(indexed, options, embedder):
    engine = open_engine(options, embedder)
    query = image_bytes(dihedral_image(indexed[44], "mirror"), "JPEG", quality=70)
    plain = engine.search_bytes(query, k=6)["results"]
    best = max(hit["score"] for hit in plain)
    # Only the gap speaks: 5 nats for the best score of the query, 0 a hair below it.
    engine.thresholds = Thresholds(
        duplicate=1.0,
        similar=1.0,
        hash_duplicate=-1,
        hash_similar=-1,
        weights=EvidenceWeights(tuple([0.0] * 65), (0.0,), (0.0,), "calibrated", (0.0, 1e-4), (5.0, 0.0)),
    )
    hits = engine.search_bytes(query, k=6)["results"]
    assert hits[0]["score"] == best and hits[0]["evidence"]["weight"] == 5.0
    assert all(hit["evidence"]["weight"] < 5.0 for hit in hits[1:] if hit["score"] < best - 1e-4)
    engine.close()


def test_hash_candidates_reach_past_a_small_calibrated_similar_radius(indexed, options, embedder):
    from twice.indexer import Indexer

    indexer = Indexer(options, embedder.version, embedder.dim)
    fresh = make_image(74, SIZE)
    row = indexer.add_bytes(image_bytes(fresh), "fresh.png").row  # pending: only the hash can find it
    indexer.close()
    engine = open_engine(options, embedder)
    # A calibration where the hash only decides up to 2 bits (and the CNN, flat here, has no say).
    hash_only = EvidenceWeights(EvidenceWeights.default().hash, (0.0,), (0.0,), "calibrated")
    engine.thresholds = Thresholds(
        1.0, 1.0, "calibrated", hash_duplicate=0, hash_similar=2, weights=hash_only
    )
    # +70, not +100: a +100 copy now matches the stored bright view at 0 bits (STORED_VIEWS).
    bright = np.clip(np.asarray(fresh, np.int16) + 70, 0, 255).astype(np.uint8)
    hits = engine.search_bytes(image_bytes(Image.fromarray(bright)), k=6)["results"]
    hit = next(h for h in hits if h["id"] == row.id)  # 6 bits away: still a candidate...
    assert 2 < hit["evidence"]["hash"]["distance"] <= 12
    assert hit["evidence"]["hash"]["verdict"] == DIFFERENT  # ...whose hash verdict follows the thresholds
    assert hits[0]["id"] == row.id  # and the evidence weight puts it first
    engine.close()


def test_a_copy_matched_by_its_own_hash_ranks_before_one_matched_through_a_stored_view(
    indexed, options, embedder
):
    from twice.augment import apply_transform
    from twice.indexer import Indexer

    original = dusk_art(5, SIZE)
    dark = apply_transform(original, "dark")  # the blobs clip to black: the plain hash moves
    indexer = Indexer(options, embedder.version, embedder.dim)
    # Both pending (no vectors, no CNN score): the hash alone weighs, and both weigh the same.
    parent = indexer.add_bytes(image_bytes(original), "dusk.png").row
    copy = indexer.add_bytes(image_bytes(dark), "dusk_dark.png", parent_id=parent.id, transform="dark").row
    indexer.close()
    engine = open_engine(options, embedder)
    query = image_bytes(dark, "PNG", compress_level=1)  # the dark copy's pixels, not its bytes
    hits = {hit["id"]: hit for hit in engine.search_bytes(query, k=8)["results"]}
    assert hits[parent.id]["evidence"]["hash"]["stored"] == "dark"
    assert hits[copy.id]["evidence"]["hash"]["stored"] is None
    for hit in (hits[parent.id], hits[copy.id]):
        assert hit["exact"] is False and hit["verdict"] == DUPLICATE and hit["evidence"]["cnn"] is None
        assert hit["evidence"]["hash"]["distance"] == 0 and hit["evidence"]["transform"] is None
    assert hits[parent.id]["evidence"]["weight"] == hits[copy.id]["evidence"]["weight"]
    # Equal evidence otherwise (the original has the smaller id): the dark copy itself first.
    assert list(hits)[:2] == [copy.id, parent.id]
    engine.close()


def test_the_clear_match_rule_calls_a_score_that_stands_clear_a_duplicate():
    t = Thresholds(duplicate=0.9, similar=0.7, clear_score=0.5, clear_margin=0.3)
    assert t.clear_rule and not Thresholds().clear_rule  # off until calibrated
    clear = t.judge(0.6, None, margin=0.35)
    assert (clear.verdict, clear.cnn, clear.clear, clear.decided_by) == (DUPLICATE, DUPLICATE, True, ["cnn"])
    assert t.judge(0.6, None, margin=0.29).verdict == DIFFERENT  # a near rival
    assert t.judge(0.6, None).verdict == DIFFERENT  # margin unknown
    assert t.judge(0.45, None, margin=0.9).verdict == DIFFERENT  # under the floor
    assert t.judge(0.8, None, margin=0.1).verdict == SIMILAR
    plain = t.judge(0.95, None, margin=0.0)
    assert plain.verdict == DUPLICATE and not plain.clear  # the score alone decides
    with pytest.raises(ValueError, match="clear_score=0.5, clear_margin=-0.1"):
        Thresholds(clear_score=0.5, clear_margin=-0.1)


@pytest.mark.parametrize("seed", range(3))
def test_family_margins_match_a_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    scores = {i: float(s) for i, s in enumerate(rng.uniform(-0.2, 1.0, 15))}
    family = {i: int(rng.integers(0, 4)) for i in scores}
    floor = float(rng.uniform(-0.5, 0.5))
    margins = family_margins(scores, family, floor)
    for i, score in scores.items():
        rivals = [s for j, s in scores.items() if family[j] != family[i]]
        assert margins[i] == pytest.approx(score - max([*rivals, floor]))


def test_search_measures_each_margin_against_the_best_other_family(indexed, options, embedder, tmp_path):
    from twice.augment.variants import augment_catalog
    from twice.indexer import Indexer

    indexer = Indexer(options, embedder.version, embedder.dim)
    augment_catalog(indexer, progress=False)  # each original and its 4 variants: one family
    indexer.close()
    reindex([], options, embedder, progress=False)
    # Verification off: the CNN-alone rules are under test, on images too small to verify.
    engine = open_engine(options.with_overrides(verify_top=0), embedder)
    query = image_bytes(indexed[43], "JPEG", quality=60)
    assert "margin" not in engine.search_bytes(query, k=3)["results"][0]["evidence"]["cnn"]  # rule off

    engine.thresholds = Thresholds(
        1.0, 1.0, hash_duplicate=-1, hash_similar=-1, clear_score=-1.0, clear_margin=1.9
    )
    hits = engine.search_bytes(query, k=30)["results"]  # every row of the catalog
    family = {hit["id"]: hit["parent_id"] or hit["id"] for hit in hits}
    for hit in hits:
        rival = max(other["score"] for other in hits if family[other["id"]] != family[hit["id"]])
        assert hit["evidence"]["cnn"]["margin"] == pytest.approx(hit["score"] - rival, abs=2e-6)
    top = hits[0]
    assert top["source"].endswith("img_43.png") and top["verdict"] == DIFFERENT

    margin = top["evidence"]["cnn"]["margin"]
    assert margin > 0  # its own variants are no rivals
    engine.thresholds = Thresholds(
        1.0,
        1.0,
        hash_duplicate=-1,
        hash_similar=-1,
        clear_score=top["score"] - 0.01,
        clear_margin=margin - 1e-4,
    )
    response = engine.search_bytes(query, k=30)
    top = response["results"][0]
    assert top["verdict"] == DUPLICATE and top["evidence"]["cnn"]["clear"] is True
    assert "clear of other images (decided by cnn)" in top["evidence"]["summary"]
    # Its own variants may stand as clear; no other family's image does.
    assert {family[hit["id"]] for hit in response["results"] if hit["verdict"] == DUPLICATE} == {top["id"]}
    assert response["thresholds"]["clear_margin"] == pytest.approx(margin - 1e-4)
    engine.close()


def test_a_stored_clear_match_rule_reaches_search_and_a_broken_one_falls_back(indexed, options, embedder):
    catalog = Catalog(options.catalog_url)
    rule = {"hash_duplicate": 2, "hash_similar": 6, "clear_score": 0.55, "clear_margin": 0.25}
    catalog.set_thresholds(embedder.version, 0.8, 0.7, "calibrated", rule)
    assert thresholds_for(catalog, embedder.version) == Thresholds(0.8, 0.7, "calibrated", 2, 6, 0.55, 0.25)
    catalog.set_thresholds(embedder.version, 0.8, 0.7, "calibrated", rule | {"clear_margin": -3})
    assert thresholds_for(catalog, embedder.version) == Thresholds(0.8, 0.7, "calibrated")
    catalog.close()


@pytest.mark.parametrize(
    ("inliers", "reframed", "says_it"),
    [(20, True, True), (20, False, False), (80, True, False)],
)
def test_the_summary_names_a_low_agreement_only_where_the_rule_holds_the_fit_to_it(
    inliers, reframed, says_it
):
    verification = {
        "verified": True, "inliers": inliers, "explanation": "cropped to the centre 60%",
        "reframed": reframed, "agreement": 0.41, "recoloured": False,
    }  # fmt: skip
    evidence = {
        "exact": False,
        "hash": None,
        "cnn": {"score": 0.8},
        "verification": verification,
        "decided_by": [],
    }
    line = summarize(evidence)
    assert f"verified by {inliers} keypoints: cropped to the centre 60%" in line
    assert ("agree only 0.41" in line) == says_it
