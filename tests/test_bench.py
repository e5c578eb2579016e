"""twice bench: metric oracles, the benchmark set split, PHash peers, FAISS oracle, CLI smoke tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bench.calibration import calibrate_on_distractors
from bench.machine import MemoryProbe
from bench.methods import EmbeddingMethod, dihedral_variants, hash_bits, random_embedder
from bench.metrics import Hit, QueryOutcome, duplicate_figures, outcome_of, recall_at, summarise
from bench.results import markdown_table, write_results
from bench.sources import Candidate, PoolFilter, blanked_by, build_bench_set, write_images
from bench.speed import SpeedConfig, measure_faiss_size
from conftest import make_options
from twice.augment import make_synthetic_image, parse_transforms
from twice.cli import main
from twice.indexer import Catalog
from twice.indexer.vectors import ivf_nlist
from twice.model import build_network
from twice.search import thresholds_for


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# metrics -------------------------------------------------------------------------------------


def test_outcome_rank_is_the_originals_position():
    a, b, c = Path("a.jpg"), Path("b.jpg"), Path("c.jpg")
    hits = [Hit(b, 0.9, True), Hit(a, 0.8, False), Hit(c, 0.1, False)]
    assert outcome_of("rotate", a, hits) == QueryOutcome("rotate", 2, 0.9, True)
    assert outcome_of("rotate", Path("z.jpg"), hits).rank is None
    assert outcome_of("negative", None, []) == QueryOutcome("negative", None, None, False)


def test_recall_and_duplicate_figures_match_a_hand_count():
    outcomes = [
        QueryOutcome("rotate", 1, 0.99, True),  # TP
        QueryOutcome("rotate", 3, 0.95, True, ("hash", "cnn")),  # wrong image called duplicate: FP
        QueryOutcome("blur", 1, 0.70, False),  # right, not called duplicate: FN
        QueryOutcome("blur", None, 0.50, False),  # missed
        QueryOutcome("negative", None, 0.97, True, ("cnn",)),  # FP
        QueryOutcome("negative", None, 0.20, False),
    ]
    assert recall_at(outcomes, 1) == 2 / 4
    assert recall_at(outcomes, 5) == 3 / 4
    figures = duplicate_figures(outcomes)
    assert figures["true_positives"] == 1 and figures["false_positives"] == 2
    assert figures["precision"] == 1 / 3 and figures["recall"] == 1 / 4
    assert figures["negative_false_rate"] == 1 / 2
    assert figures["false_positives_by_signal"] == {"hash+cnn": 1, "cnn": 1}
    summary = summarise(outcomes)
    assert summary["per_transform"]["rotate"] == {"n": 2, "recall@1": 0.5, "recall@5": 1.0}
    assert summary["per_transform"]["blur"] == {"n": 2, "recall@1": 0.5, "recall@5": 0.5}
    assert (summary["positives"], summary["negatives"]) == (4, 2)


def test_markdown_table_and_results_files(tmp_path):
    table = markdown_table(["name", "value"], [["a", 0.5], ["b", None]])
    assert table.splitlines() == ["| name | value |", "| --- | ---: |", "| a | 0.500 |", "| b | – |"]
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        markdown_table(["name", "value"], [["a"]])
    json_path, md_path = write_results("speed-quick", {"x": np.float32(1.5)}, "# hi", tmp_path)
    assert json.loads(json_path.read_text()) == {"x": 1.5}
    assert md_path.name == "speed-quick.md" and md_path.read_text() == "# hi\n"
    with pytest.raises(ValueError, match="bad results kind"):
        write_results("../x", {}, "", tmp_path)


def test_memory_probe_sees_an_allocation():
    with MemoryProbe() as probe:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
        block[::4096] = 2
    assert probe.peak_mib is not None and probe.peak_mib >= 50


# the benchmark set -----------------------------------------------------------------------------


def test_bench_set_roles_are_disjoint_seeded_and_complete(tmp_path):
    kw = {"sources": ("synthetic",), "transforms": ("rotate", "jpeg"), "install": False}
    first = build_bench_set(tmp_path / "a", 4, 3, 2, seed=1, **kw)
    again = build_bench_set(tmp_path / "b", 4, 3, 2, seed=1, **kw)
    other = build_bench_set(tmp_path / "c", 4, 3, 2, seed=2, **kw)
    roles = [first.originals, first.distractors, first.negatives]
    assert [len(r) for r in roles] == [4, 3, 2]
    digests = [{sha(p) for p in r} for r in roles]
    assert sum(len(d) for d in digests) == 9 and len(set().union(*digests)) == 9  # nothing shared
    assert [sha(p) for p in first.indexed] == [sha(p) for p in again.indexed]
    assert [sha(p) for p in first.indexed] != [sha(p) for p in other.indexed]
    copies = [q for q in first.queries if q.original is not None]
    assert len(copies) == 8 and {q.transform for q in copies} == {"rotate", "jpeg"}
    assert [q.path for q in first.queries if q.original is None] == first.negatives
    rotated = next(q for q in copies if q.transform == "rotate")
    with Image.open(rotated.original) as original, Image.open(rotated.path) as copy:
        assert copy.size == original.size[::-1]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["counts"]["queries"] == 10 and manifest["left_out"] == first.left_out == {}


def drawing(shape: str) -> Image.Image:
    """A clip-art-like drawing on white that is not symmetric, so its mirror is another image."""
    image = Image.new("RGB", (120, 90), "white")
    draw = ImageDraw.Draw(image)
    if shape == "flag":
        draw.polygon([(20, 15), (100, 30), (20, 45)], fill=(200, 30, 30))
        draw.line([(20, 15), (20, 80)], fill="black", width=4)
    else:
        draw.ellipse([10, 10, 60, 80], fill=(30, 90, 200))
        draw.rectangle([70, 50, 110, 85], fill=(20, 160, 60))
    return image


def test_pool_filter_keeps_out_repeats_near_copies_series_and_blanks():
    def clip(name):
        return Candidate("openclipart", name, lambda: None)

    flag = drawing("flag")
    pool_filter = PoolFilter()
    assert pool_filter.admit(clip("shapes/stars/star_41pt04step.png"), flag)
    assert not pool_filter.admit(clip("elsewhere/flag.png"), flag.copy())  # the same pixels
    mirrored = flag.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((150, 112))
    assert not pool_filter.admit(clip("elsewhere/flag_mirrored.png"), mirrored)
    shapes = drawing("shapes")
    assert not pool_filter.admit(clip("shapes/stars/star_43pt03step.png"), shapes)  # same series
    assert not pool_filter.admit(
        clip("special/gradients/faint.png"), Image.new("RGB", (90, 90), (252, 252, 252))
    )
    assert pool_filter.admit(clip("shapes/shapes.png"), shapes)
    assert pool_filter.left_out == {"repeat": 1, "near-copy": 1, "series": 1, "blank": 1}
    # Generated photos are named by number but are no series, and distinct pictures pass.
    for i in range(6):
        photo = make_synthetic_image(0, i)
        assert pool_filter.admit(Candidate("synthetic", f"synthetic-{i}", lambda: None), photo)
    assert sum(pool_filter.left_out.values()) == 4


def test_bench_set_refuses_unknown_source_and_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="flickr"):
        build_bench_set(tmp_path, 2, 0, 0, sources=("flickr",), install=False)
    with pytest.raises(ValueError, match="originals must be at least 1"):
        build_bench_set(tmp_path, 0, 1, 1, sources=("synthetic",), install=False)
    with pytest.raises(ValueError, match="negatives must be a count"):
        build_bench_set(tmp_path, 1, 1, -1, sources=("synthetic",), install=False)


def test_skimage_source_gives_its_bundled_samples(tmp_path):
    pytest.importorskip("skimage")
    bench_set = build_bench_set(tmp_path, 3, 0, 0, sources=("skimage",), transforms=("gray",), install=False)
    assert bench_set.sources["skimage"].endswith("bundled samples")
    assert all(bench_set.source_of[p.name] == "skimage" for p in bench_set.originals)


# methods -----------------------------------------------------------------------------------------


def test_dihedral_variants_and_hash_bits():
    image = Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3))
    variants = {np.asarray(v).tobytes() + bytes(v.size) for v in dihedral_variants(image)}
    assert len(variants) == 8
    bits = hash_bits(["8000000000000001", "0000000000000000"])
    assert bits.shape == (2, 64) and bits[0, 0] and bits[0, 63] and bits[0].sum() == 2 and not bits[1].any()


def test_phash_d4_finds_a_rotated_copy_that_plain_phash_misses(tmp_path):
    pytest.importorskip("imagededup")
    from bench.methods import PHashMethod

    bench_set = build_bench_set(
        tmp_path, 4, 0, 1, seed=3, sources=("synthetic",), transforms=("rotate",), install=False
    )
    queries = [q.path for q in bench_set.queries]
    answers = {}
    for dihedral in (False, True):
        method = PHashMethod(dihedral=dihedral)
        method.index(bench_set.indexed, tmp_path)
        answers[dihedral] = method.query_many(queries, 2)
    for query, hits in zip(bench_set.queries[:4], answers[True][:4], strict=True):
        assert hits[0].path == query.original.resolve() and hits[0].score == 1.0 and hits[0].duplicate
    plain = [
        o
        for q, hits in zip(bench_set.queries[:4], answers[False][:4], strict=True)
        for o in [outcome_of(q.transform, q.original.resolve(), hits)]
    ]
    assert sum(o.rank == 1 and o.top_duplicate for o in plain) < 4


def test_embedding_methods_use_reindex_search_and_the_bare_index(tmp_path, embedder):
    bench_set = build_bench_set(
        tmp_path / "set", 3, 1, 1, sources=("synthetic",), transforms=("jpeg",), install=False
    )
    options = make_options(tmp_path / "data")
    search = EmbeddingMethod("search", options, embedder)
    search.index(bench_set.indexed, tmp_path / "data")
    hits = search.query(bench_set.originals[0], 4)  # the exact bytes rank first
    assert hits[0].path == bench_set.originals[0] and hits[0].duplicate and len(hits) == 4
    assert hits[0].decided_by[0] == "exact"
    assert all(hit.decided_by == () for hit in hits if not hit.duplicate)
    cnn = EmbeddingMethod("cnn", options, embedder, "cnn", base=search)
    cnn.index(bench_set.indexed, tmp_path / "unused")
    assert cnn.engine is search.engine and not (tmp_path / "unused").exists()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bench_set.originals[0].read_bytes()[:100])  # truncated: skipped, not fatal
    answers = cnn.query_many([broken, *bench_set.originals], 4)
    assert answers[0] == []
    for original, hits in zip(bench_set.originals, answers[1:], strict=True):
        assert hits[0].path == original and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].duplicate == (hits[0].score >= cnn.threshold)
    odd = EmbeddingMethod("odd", options, embedder, search_kwargs={"no_such_option": "1"}, base=search)
    odd.index(bench_set.indexed, tmp_path / "data")
    with pytest.raises(ValueError, match="no_such_option"):
        odd.query(bench_set.originals[0], 4)
    with pytest.raises(ValueError, match="mode must be search or cnn"):
        EmbeddingMethod("bad", options, embedder, "magic")
    search.close()


def test_calibration_fits_on_variants_of_the_distractors_only(tmp_path, embedder):
    bench_set = build_bench_set(
        tmp_path / "set", 2, 4, 1, sources=("synthetic",), transforms=("rotate", "bright"), install=False
    )
    options = make_options(tmp_path / "data")

    def calibrator(folder):
        return calibrate_on_distractors(
            bench_set.distractors, ["rotate", "bright"], options, embedder, folder
        )

    search = EmbeddingMethod("search", options, embedder, calibrator=calibrator)
    search.index(bench_set.indexed, tmp_path / "data")
    summary = search.calibration.summary()
    assert (summary["images"], summary["positives"]) == (4, 8)  # 4 distractors x 2 transforms
    assert summary["negatives"] > 0 and summary["transforms"] == ["rotate", "bright"]
    # Nothing queried took part: the calibration catalog holds distractors and their variants only.
    catalog = Catalog(options.with_overrides(data_dir=tmp_path / "data" / "calibration").catalog_url)
    sources = {catalog.get(i).source for i in catalog.ids().tolist()}
    catalog.close()
    assert {str(p) for p in bench_set.distractors} <= sources and len(sources) == 4 + 8
    assert not sources & {str(p) for p in bench_set.originals + [q.path for q in bench_set.queries]}
    # Search answers with the fitted rule, stored with the bench index's model version.
    catalog = Catalog(options.catalog_url)
    stored = thresholds_for(catalog, embedder.version)
    catalog.close()
    fit = search.calibration.calibration.fit
    assert stored == fit.thresholds() and search.engine.thresholds == stored
    assert stored.weights.source == "calibrated"
    assert search.threshold == stored.duplicate
    if stored.hash_duplicate >= 0:  # the rule is given in words when the hash takes part
        assert search.rule == stored.duplicate_rule()
        assert search.rule.startswith(f"hash <= {stored.hash_duplicate} or CNN >= {stored.duplicate:.4f}")
    else:
        assert search.rule is None
    # The CNN-only method on the same index uses the CNN's own fit.
    cnn = EmbeddingMethod("cnn", options, embedder, "cnn", base=search)
    cnn.index(bench_set.indexed, tmp_path / "unused")
    assert cnn.threshold == search.calibration.cnn_alone.cnn_min and cnn.rule is None
    search.close()
    with pytest.raises(ValueError, match="at least one distractor"):
        calibrate_on_distractors([], ["rotate"], options, embedder, tmp_path / "none")


def test_an_original_that_a_transform_blanks_is_left_out(tmp_path):
    pale = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(pale).ellipse([20, 20, 100, 70], outline=(215, 215, 215), width=3)  # +100: white
    specs = parse_transforms(["rotate", "bright"])
    assert blanked_by(pale, specs) == "bright"
    assert blanked_by(drawing("flag"), specs) is None
    assert blanked_by(pale, parse_transforms(["rotate", "dark"])) is None
    pool = [
        Candidate("openclipart", name, lambda image=image: image)
        for name, image in (
            ("pale.png", pale),
            ("flag.png", drawing("flag")),
            ("shapes.png", drawing("shapes")),
        )
    ]
    chosen, left_out = write_images(tmp_path, pool, [("originals", 1), ("distractors", 1)], specs)
    assert left_out == {"blank copy": 1}
    assert [source for _, source in chosen["originals"]] == ["openclipart"]
    with Image.open(chosen["originals"][0][0]) as original:
        assert blanked_by(original.convert("RGB"), specs) is None
    # A distractor gets no copies: a pale one may stay.
    chosen, left_out = write_images(tmp_path / "d", pool[:1], [("distractors", 1)], specs)
    assert left_out == {} and len(chosen["distractors"]) == 1


# FAISS -------------------------------------------------------------------------------------------


def test_faiss_probing_every_list_is_exact():
    n = 1500
    nlist = ivf_nlist(n)
    config = SpeedConfig(faiss_dim=32, faiss_queries=20, nprobes=(1, nlist, 10 * nlist))
    rows = measure_faiss_size(n, config, gpu=False)
    flat, ivf = rows[0], rows[1:]
    assert flat["index"] == "IDMap2,Flat" and flat["recall@10"] == 1.0
    assert [r["nprobe"] for r in ivf] == [1, nlist]  # nprobe above nlist is skipped
    assert ivf[1]["recall@10"] == pytest.approx(1.0) and ivf[0]["recall@10"] < 1.0
    assert all(r["qps_batch"] > 0 and r["single_p50_ms_1thread"] > 0 for r in rows)


# the command -------------------------------------------------------------------------------------


def test_bench_quality_quick_writes_tables(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    argv = [
        "-q",
        "--data-dir",
        str(tmp_path / "data"),
        "bench",
        "quality",
        "--quick",
        "--results-dir",
        str(results),
        "--originals",
        "3",
        "--distractors",
        "2",
        "--negatives",
        "2",
        "--transforms",
        "rotate,jpeg",
        "--no-phash",
    ]
    monkeypatch.setattr("sys.argv", ["/somewhere/bin/twice", *argv])  # what the shell gives the command
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| rotate |" in out and "| **all** |" in out and "negatives called duplicate" in out
    (json_path,) = results.glob("quality-quick-*.json")
    payload = json.loads(json_path.read_text())
    assert payload["command"] == "twice " + " ".join(argv)
    assert payload["machine"]["cores"] >= 1 and payload["model"].startswith("vgg16-d256-s64-")
    assert [m["name"] for m in payload["methods"]] == ["twice search", "CNN (random)"]
    # Thresholds fitted on the 2 distractors' rotate and jpeg copies, then used by both rows.
    assert payload["calibration"]["positives"] == 4 and payload["calibration"]["images"] == 2
    assert payload["methods"][1]["threshold"] == payload["calibration"]["cnn_alone"]["cnn_min"]
    assert "fitted as `twice calibrate` fits them" in out
    for method in payload["methods"]:
        assert method["positives"] == 6 and method["negatives"] == 2
        assert 0.0 <= method["recall@1"] <= method["recall@5"] <= 1.0
        assert set(method["per_source"]) <= {"synthetic", "skimage"}
    assert (results / "quality-quick.md").read_text().startswith("## Quality")
    assert (results / "quality-quick.png").stat().st_size > 1000


def test_bench_speed_quick_measures_every_part(tmp_path, capsys):
    results = tmp_path / "results"
    argv = [
        "-q",
        "--data-dir",
        str(tmp_path / "data"),
        "bench",
        "speed",
        "--quick",
        "--results-dir",
        str(results),
        "--faiss-sizes",
        "600",
        "--nprobe",
        "1,4",
        "--queries",
        "2",
        "--reindex-images",
        "3",
        "--batch-sizes",
        "1,2",
        "--no-cli-process",
    ]
    assert main(argv) == 0
    payload = json.loads(next(results.glob("speed-quick-*.json")).read_text())
    assert {(r["setting"], r["batch"]) for r in payload["forward"]} >= {
        ("fp32", 1),
        ("fp32 channels-last", 2),
    }
    assert payload["reindex"]["images"] == 3 and payload["reindex"]["ratio_to_bare"] > 0
    assert payload["query"]["engine"]["n"] == 2 and payload["query"]["http"]["p95_ms"] > 0
    engine = payload["query"]["engine"]
    assert engine["cnn_only"]["n"] == 2 and engine["cnn_only"]["p50_ms"] > 0
    assert engine["ratio_to_cnn_only_p50"] > 0
    if torch.get_num_threads() > 1:  # the one-thread twins of the forward and query figures
        assert ("fp32 channels-last, 1 thread", 1) in {(r["setting"], r["batch"]) for r in payload["forward"]}
        assert payload["query"]["engine_1thread"]["n"] == 2
    assert torch.get_num_threads() == payload["machine"]["torch_threads"]  # restored afterwards
    assert [r["nprobe"] for r in payload["faiss"]] == [None, 1, 4]
    out = capsys.readouterr().out
    assert "POST /search" in out and "CNN only: decode, embed, FAISS top-10, rows" in out
    assert "over the CNN-only path at p50" in out


def test_cnn_only_search_is_the_bare_index_lookup(tmp_path, embedder):
    from bench.speed import cnn_only_search
    from twice.indexer import reindex
    from twice.search import SearchEngine

    bench_set = build_bench_set(
        tmp_path / "set", 3, 1, 0, sources=("synthetic",), transforms=("jpeg",), install=False
    )
    options = make_options(tmp_path / "data")
    reindex(bench_set.indexed, options, embedder, progress=False)
    engine = SearchEngine.open(options, embedder)
    hits = cnn_only_search(engine, bench_set.originals[1], 2)
    assert len(hits) == 2 and hits[0][0].source == str(bench_set.originals[1])
    assert hits[0][1] == pytest.approx(1.0, abs=1e-4) and hits[0][1] >= hits[1][1]
    engine.close()


def test_bench_speed_rejects_bad_sizes(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "bench", "speed", "--faiss-sizes", "10,x"]) == 1
    assert "--faiss-sizes takes comma-separated integers, got '10,x'" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "bench", "speed", "--parts", "gpu-magic"]) == 1
    assert "gpu-magic" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "bench", "quality", "--search-variant", "tta"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "bench", "quality", "--tag", "../x"]) == 1
    assert "--tag may hold letters" in capsys.readouterr().err


@pytest.mark.parametrize("invariance", ["d4", "none"])
def test_the_random_init_competitor_has_the_configured_pooling(tmp_path, invariance):
    embedder = random_embedder(make_options(tmp_path, invariance=invariance))
    assert embedder.net.invariance == invariance and f"-{invariance}-random-" in embedder.version


def test_the_random_init_competitor_is_the_weights_twice_falls_back_to(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-cache"))  # no ImageNet weights here
    options = make_options(tmp_path)
    fallback, info = build_network(options.arch, options.embed_dim, use_shipped=False, allow_download=False)
    embedder = random_embedder(options)
    assert info == embedder.weights
    for mine, theirs in zip(embedder.net.state_dict().values(), fallback.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_the_default_quality_run_draws_what_training_leaves_out():
    from bench.quality import QualityConfig
    from twice.augment.sources import HELD_OUT_DRAW

    cfg = QualityConfig()
    drawn = (cfg.sources, cfg.originals + cfg.distractors + cfg.negatives, cfg.seed)
    assert drawn == (HELD_OUT_DRAW.sources, HELD_OUT_DRAW.total, HELD_OUT_DRAW.seed)
