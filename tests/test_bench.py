"""twice bench: metric oracles, confidence intervals, drawn edits, the benchmark set split, PHash
peers, FAISS oracle, CLI smoke tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bench.calibration import calibrate_on_distractors, calibration_transforms
from bench.machine import MemoryProbe, machine_facts
from bench.methods import EmbeddingMethod, dihedral_variants, hash_bits, random_embedder
from bench.metrics import (
    Hit,
    QueryOutcome,
    duplicate_figures,
    outcome_of,
    recall_at,
    summarise,
    wilson,
)
from bench.results import markdown_table, stamp_lines, write_results
from bench.sources import (
    Candidate,
    Edit,
    PoolFilter,
    Role,
    blanked_by,
    build_bench_set,
    draw_edits,
    edit_rows,
    write_images,
)
from bench.speed import SpeedConfig, measure_faiss_size
from conftest import make_options
from twice.augment import apply_transforms, make_synthetic_image, parse_transforms
from twice.augment.families import HELD_OUT_FAMILIES
from twice.augment.sources import APT_SOURCES
from twice.cli import main
from twice.indexer import Catalog
from twice.indexer.vectors import ivf_nlist
from twice.model import build_network
from twice.search import thresholds_for

SYNTHETIC_JPEG = {
    "original_sources": ("synthetic",),
    "distractor_sources": ("synthetic",),
    "rows": edit_rows(families=(), combos=(), transforms=("jpeg",)),
    "install": False,
}


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
    assert figures["precision_ci95"] == pytest.approx(list(wilson(1, 3)))
    assert figures["negative_false_rate"] == 1 / 2
    assert figures["negative_false_rate_ci95"] == list(wilson(1, 2))
    assert figures["copies_matched_wrong"] == 1 and figures["negatives_called_duplicate"] == 1
    assert figures["false_positives_by_signal"] == {"hash+cnn": 1, "cnn": 1}
    summary = summarise(outcomes)
    rotate = summary["per_edit"]["rotate"]
    assert [rotate[k] for k in ("n", "recall@1", "recall@5", "duplicate_recall")] == [2, 0.5, 1.0, 0.5]
    assert rotate["recall@1_ci95"] == list(wilson(1, 2)) and rotate["recall@5_ci95"] == list(wilson(2, 2))
    blur = summary["per_edit"]["blur"]
    assert [blur[k] for k in ("n", "recall@1", "recall@5", "duplicate_recall")] == [2, 0.5, 0.5, 0.0]
    assert (summary["positives"], summary["negatives"]) == (4, 2)
    assert summary["recall@1_ci95"] == list(wilson(2, 4))


def test_wilson_interval_matches_hand_computed_values():
    # Closed forms at the ends: 0 of n -> [0, z^2 / (n + z^2)], n of n -> [n / (n + z^2), 1].
    z2 = 1.959964**2
    assert wilson(0, 100) == pytest.approx((0.0, z2 / (100 + z2)))
    assert wilson(100, 100) == pytest.approx((100 / (100 + z2), 1.0))
    assert wilson(100, 100)[0] == pytest.approx(0.9630, abs=1e-4)  # 100 of 100 is not proof of 1.00
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook example
    assert wilson(0, 0) is None
    with pytest.raises(ValueError, match="k=3, n=2"):
        wilson(3, 2)


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
    rows = edit_rows(families=("tilt", "crop"), combos=(), transforms=("rotate",))
    kw = {**SYNTHETIC_JPEG, "rows": rows}
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
    assert len(copies) == 12 and {q.edit for q in copies} == {"tilt", "crop", "rotate"}
    assert [q.specs for q in copies] == [q.specs for q in again.queries if q.original is not None]
    assert [q.specs for q in copies] != [q.specs for q in other.queries if q.original is not None]
    # Drawn anew per original: four tilts, four crop boxes, the fixed rotate the same each time.
    assert len({q.specs for q in copies if q.edit == "tilt"}) == 4
    assert len({q.specs for q in copies if q.edit == "crop"}) == 4
    assert {q.specs for q in copies if q.edit == "rotate"} == {("rotate",)}
    assert [q.path for q in first.queries if q.original is None] == first.negatives
    rotated = next(q for q in copies if q.edit == "rotate")
    with Image.open(rotated.original) as original, Image.open(rotated.path) as copy:
        assert copy.size == original.size[::-1]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["counts"]["queries"] == 14 and manifest["left_out"] == first.left_out == {}
    assert manifest["queries"][0] == first.queries[0].record()
    assert first.groups == {"tilt": "seen", "crop": "seen", "rotate": "fixed"}


def test_a_recorded_copy_is_remade_from_its_specs(tmp_path):
    rows = edit_rows(families=("tilt", "border", "crop", "sticker"), combos=(2, 3))
    bench_set = build_bench_set(tmp_path, 2, 0, 0, original_sources=("synthetic",), rows=rows, install=False)
    for query in bench_set.queries:
        assert query.path.suffix == ".png" or query.specs[-1].startswith("jpeg")
        if query.path.suffix != ".png":
            continue
        with Image.open(query.original) as original, Image.open(query.path) as copy:
            remade = apply_transforms(original.convert("RGB"), query.specs)
            assert np.array_equal(np.asarray(copy.convert("RGB")), np.asarray(remade)), query.specs
    combos = [q for q in bench_set.queries if q.edit.startswith("combo")]
    assert sorted(len(q.specs) for q in combos) == [2, 2, 3, 3]


def test_drawn_edits_are_reproducible_and_each_row_keeps_its_draws():
    rows = edit_rows(families=("tilt", "border", "perspective"), combos=(2,))
    first, again = draw_edits(rows, 0, 5), draw_edits(rows, 0, 5)
    assert [e.canonical for e in first] == [e.canonical for e in again]
    assert [e.canonical for e in draw_edits(rows, 0, 6)] != [e.canonical for e in first]
    # Another family added changes no other family's draw (a combination's pool grows with it).
    more = edit_rows(families=("jpeg", "tilt", "border", "perspective"), combos=(2,))
    by_row = {e.row: e.canonical for e in draw_edits(more, 0, 5)}
    assert [by_row[e.row] for e in first[:3]] == [e.canonical for e in first[:3]]
    groups = {row.name: row.group for row in rows}
    assert groups == {"tilt": "seen", "border": "seen", "perspective": "held-out", "combo of 2": "combo"}
    # Combinations are drawn from the seen families only.
    for slot in range(20):
        combo = draw_edits(rows, 0, slot)[-1]
        assert not any(spec.name in HELD_OUT_FAMILIES for spec in combo.specs)


def test_edit_rows_refuse_what_cannot_be_measured():
    with pytest.raises(ValueError, match="unknown edit family 'wobble'"):
        edit_rows(families=("wobble",))
    with pytest.raises(ValueError, match="a combination takes 2..1"):
        edit_rows(families=("tilt", "perspective"), combos=(2,))
    with pytest.raises(ValueError, match="no edits to measure"):
        edit_rows(families=(), combos=())
    with pytest.raises(ValueError, match="distinct names"):
        edit_rows(families=("rotate",), combos=(), transforms=("rotate",))


def test_calibration_draws_seen_families_once_from_a_stream_of_its_own():
    families = ("tilt", "border", "perspective", "sticker")
    rows = edit_rows(families=families, combos=(2,), transforms=("jpeg:30",))
    specs = calibration_transforms(rows, 0)
    assert [s.split(":")[0] for s in specs] == ["tilt", "border", "jpeg"]
    assert specs == calibration_transforms(rows, 0)
    # Its own generator stream: not the draw of any original's slot.
    for slot in range(20):
        assert [e.canonical[0] for e in draw_edits(rows, 0, slot)[:2]] != specs[:2]
    with pytest.raises(ValueError, match="no edit to calibrate on"):
        calibration_transforms(edit_rows(families=("sticker",), combos=()), 0)


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
        build_bench_set(tmp_path, 2, 0, 0, original_sources=("flickr",), install=False)
    with pytest.raises(ValueError, match="originals must be at least 1"):
        build_bench_set(tmp_path, 0, 1, 1, install=False)
    with pytest.raises(ValueError, match="negatives must be a count"):
        build_bench_set(tmp_path, 1, 1, -1, install=False)


def test_skimage_source_gives_its_bundled_samples(tmp_path):
    pytest.importorskip("skimage")
    rows = edit_rows(families=(), combos=(), transforms=("gray",))
    bench_set = build_bench_set(tmp_path, 3, 0, 0, original_sources=("skimage",), rows=rows, install=False)
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

    rows = edit_rows(families=(), combos=(), transforms=("rotate",))
    bench_set = build_bench_set(
        tmp_path,
        4,
        0,
        1,
        seed=3,
        original_sources=("synthetic",),
        distractor_sources=("synthetic",),
        rows=rows,
        install=False,
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
        for o in [outcome_of(q.edit, q.original.resolve(), hits)]
    ]
    assert sum(o.rank == 1 and o.top_duplicate for o in plain) < 4


def test_embedding_methods_use_reindex_search_and_the_bare_index(tmp_path, embedder):
    bench_set = build_bench_set(tmp_path / "set", 3, 1, 1, **SYNTHETIC_JPEG)
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
    rows = edit_rows(families=(), combos=(), transforms=("rotate", "bright"))
    bench_set = build_bench_set(
        tmp_path / "set",
        2,
        4,
        1,
        original_sources=("synthetic",),
        distractor_sources=("synthetic",),
        rows=rows,
        install=False,
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


def edits(*specs: str) -> list[Edit]:
    return [Edit(spec, (parsed,)) for spec, parsed in zip(specs, parse_transforms(list(specs)), strict=True)]


def test_an_original_that_an_edit_blanks_is_left_out(tmp_path):
    pale = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(pale).ellipse([20, 20, 100, 70], outline=(215, 215, 215), width=3)  # +100: white
    assert blanked_by(pale, edits("rotate", "bright")) == "bright"
    assert blanked_by(drawing("flag"), edits("rotate", "bright")) is None
    assert blanked_by(pale, edits("rotate", "dark")) is None
    chain = Edit("combo of 2", tuple(parse_transforms(["mirror", "bright"])))
    assert blanked_by(pale, [chain]) == "mirror,bright"
    pool = [
        Candidate("openclipart", name, lambda image=image: image)
        for name, image in (
            ("pale.png", pale),
            ("flag.png", drawing("flag")),
            ("shapes.png", drawing("shapes")),
        )
    ]
    roles = [Role("originals", 1, ("openclipart",)), Role("distractors", 1, ("openclipart",))]
    chosen, left_out = write_images(tmp_path, pool, roles, lambda slot: edits("rotate", "bright"))
    assert left_out == {"blank copy": 1}
    assert [c.name for _, c in chosen["originals"]] == ["flag.png"]
    assert [c.name for _, c in chosen["distractors"]] == ["shapes.png"]  # each candidate used once
    with Image.open(chosen["originals"][0][0]) as original:
        assert blanked_by(original.convert("RGB"), edits("rotate", "bright")) is None
    # A distractor gets no copies: a pale one may stay.
    distractors = [Role("distractors", 1, ("openclipart",))]
    chosen, left_out = write_images(tmp_path / "d", pool[:1], distractors, lambda slot: edits("bright"))
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
        "--families",
        "tilt,border,sticker",
        "--combos",
        "2",
        "--calibrate",
        "--no-phash",
    ]
    monkeypatch.setattr("sys.argv", ["/somewhere/bin/twice", *argv])  # what the shell gives the command
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| tilt | 3 |" in out and "| combo of 2 | 3 |" in out and "| **all but held-out** | 9 |" in out
    held_out = out[out.index("**Held-out families**") :]
    assert "| sticker | 3 |" in held_out and "| **held-out** | 3 |" in held_out
    assert "negatives called duplicate (goal ≤ 0.005)" in out
    (json_path,) = results.glob("quality-quick-*.json")
    payload = json.loads(json_path.read_text())
    assert payload["command"] == "twice " + " ".join(argv)
    assert payload["machine"]["cores"] >= 1 and payload["model"].startswith("vgg16-d256-s64-")
    assert [m["name"] for m in payload["methods"]] == ["twice search", "CNN (random)"]
    edits = {"tilt": "seen", "border": "seen", "sticker": "held-out", "combo of 2": "combo"}
    assert payload["set"]["edits"] == edits
    queries = payload["set"]["queries"]
    assert len(queries) == 3 * 4 + 2 and all(q["specs"] for q in queries if q["edit"] != "negative")
    assert {q["specs"][0].split(":")[0] for q in queries if q["edit"] == "tilt"} == {"tilt"}
    # Thresholds fitted on the 2 distractors' tilt and border draws, then used by both rows.
    assert payload["calibration"]["positives"] == 4 and payload["calibration"]["images"] == 2
    assert [s.split(":")[0] for s in payload["calibration"]["transforms"]] == ["tilt", "border"]
    assert payload["methods"][1]["threshold"] == payload["calibration"]["cnn_alone"]["cnn_min"]
    assert "fitted as `twice calibrate` fits them" in out
    for method in payload["methods"]:
        assert method["positives"] == 12 and method["negatives"] == 2 and len(method["outcomes"]) == 14
        assert 0.0 <= method["recall@1"] <= method["recall@5"] <= 1.0
        low, high = method["recall@1_ci95"]
        assert low <= method["recall@1"] <= high
        assert method["per_group"]["held-out"]["n"] == 3 and method["all but held-out"]["n"] == 9
        assert set(method["per_source"]) == {"synthetic"}
        assert method["duplicate"]["negative_false_rate_ci95"] is not None
    assert (results / "quality-quick.md").read_text().startswith("## Quality")
    assert (results / "quality-quick.png").stat().st_size > 1000


def test_bench_quality_refuses_bad_edit_flags(tmp_path, capsys):
    base = ["--data-dir", str(tmp_path), "bench", "quality", "--quick", "--no-install"]
    assert main([*base, "--families", "wobble"]) == 1
    assert "unknown edit family 'wobble'" in capsys.readouterr().err
    assert main([*base, "--combos", "two"]) == 1
    assert "--combos takes comma-separated sizes or 'none', got 'two'" in capsys.readouterr().err
    assert main([*base, "--calibration-images", "5"]) == 1
    assert "--calibration-images needs --calibrate" in capsys.readouterr().err


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

    bench_set = build_bench_set(tmp_path / "set", 3, 1, 0, **SYNTHETIC_JPEG)
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
    assert (cfg.sources, cfg.seed) == (HELD_OUT_DRAW.sources, HELD_OUT_DRAW.seed)
    assert cfg.calibrate is False  # the users' protocol: out of the box


def test_the_bench_set_holds_no_image_training_may_use(tmp_path):
    if not all(folder.is_dir() for _package, folder in APT_SOURCES.values()):
        pytest.skip("the Debian clip-art sources are not installed (twice bench setup)")
    rows = edit_rows(families=(), combos=(), transforms=("gray",))
    bench_set = build_bench_set(tmp_path / "held-out", 6, 6, 4, rows=rows, install=False)
    assert {bench_set.source_of[p.name] for p in bench_set.originals} <= {"synthetic", "skimage"}
    assert {bench_set.source_of[p.name] for p in bench_set.distractors + bench_set.negatives} <= {
        "openclipart",
        "tuxpaint",
    }
    assert bench_set.seen_in_training() == []
    # Another seed draws outside the held-out pool, and the set says so.
    other = build_bench_set(tmp_path / "other", 1, 6, 0, seed=5, rows=rows, install=False)
    assert other.seen_in_training()


def test_the_negatives_bench_sorts_answers_and_knows_one_picture_turned_or_mirrored(tmp_path):
    from bench.negatives import SAME_PICTURE, kind_of

    (tmp_path / "stars").mkdir()
    picture = make_synthetic_image(0, 3, size=(120, 90))
    paths = {}
    for name, image in {
        "stars/star_74pt13step.png": picture,
        "cat.png": picture,
        "cat_mirrored.png": picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "cat_turned.png": picture.transpose(Image.Transpose.ROTATE_270),
        "dog.png": make_synthetic_image(0, 4, size=(120, 90)),
        "cat_darker.png": Image.eval(picture, lambda v: max(v - 40, 0)),
    }.items():
        image.save(tmp_path / name)
        paths[name] = str(tmp_path / name)
    cat = paths["cat.png"]
    assert kind_of(paths["stars/star_74pt13step.png"], paths["dog.png"], ["cnn"]) == "stars"
    assert kind_of(paths["stars/star_74pt13step.png"], cat, ["exact", "cnn"]) == "identical bytes"
    assert kind_of(paths["cat_mirrored.png"], cat, ["verify"]) == SAME_PICTURE
    assert kind_of(paths["cat_turned.png"], cat, ["cnn"]) == SAME_PICTURE
    # A copy someone edited is no other name for one picture: the bench counts it an answer to judge.
    assert kind_of(paths["cat_darker.png"], cat, ["hash"]) == "other"
    assert kind_of(paths["dog.png"], cat, ["verify"]) == "other"


def test_the_negatives_bench_searches_never_indexed_clip_art(tmp_path, monkeypatch):
    from bench.negatives import run

    if not all(folder.is_dir() for _package, folder in APT_SOURCES.values()):
        pytest.skip("the Debian clip-art sources are not installed (twice bench setup)")
    for key, value in {"TWICE_IMAGE_SIZE": "64", "TWICE_WORKERS": "0", "TWICE_DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)
    result = run(indexed=6, queries=4, seed=7, work=tmp_path / "w")
    assert 0 < result["indexed"] <= 6 and result["searched"] + result["skipped"] == 4
    assert result["duplicates"] == len(result["answers"]) == sum(result["by_kind"].values())


def test_quality_cnn_only_runs_the_cnn_column_on_its_own_index(tmp_path):
    from bench.quality import QualityConfig, make_methods

    config = QualityConfig(search=False, random_init=False, phash=False)
    (cnn,) = make_methods(config, make_options(tmp_path / "data"))
    assert (cnn.name, cnn.mode, cnn.base) == ("CNN (random)", "cnn", None)


def test_quality_tells_crop_recall_per_band_of_area_kept(tmp_path):
    from bench.metrics import MethodScores, QueryOutcome
    from bench.quality import crop_area, crop_by_area
    from bench.sources import BenchSet, Query

    assert crop_area(("cropbox:0.55:1.2:0.1:0.9",)) == 0.55
    assert crop_area(("tilt:7:black", "cropbox:0.3:1:0:0")) == 0.3
    assert crop_area(("tilt:7:black",)) is None
    original = tmp_path / "a.jpg"
    drawn = [
        ("crop", "cropbox:0.35:1:0:0", 1),
        ("crop", "cropbox:0.5:1:0:0", 2),
        ("crop", "cropbox:0.59:1:0:0", 1),
    ]
    drawn += [("crop", "cropbox:0.6:1:1:1", 1), ("combo of 2", "cropbox:0.9:1:0:0", None)]
    queries = [
        Query(tmp_path / f"q{i}.jpg", original, edit, (spec,)) for i, (edit, spec, _) in enumerate(drawn)
    ]
    bench_set = BenchSet(tmp_path, [original], [], [], queries, [], {}, {})
    scores = MethodScores("twice search", "")
    scores.outcomes = [QueryOutcome(edit, rank, 0.9, rank == 1) for edit, _, rank in drawn]
    bands = crop_by_area(bench_set, scores)
    assert list(bands) == ["under 40 %", "40-60 %", "60 % or more"]  # the combo's crop is no crop row
    assert [bands[b]["n"] for b in bands] == [1, 2, 1]
    assert bands["40-60 %"]["recall@1"] == 0.5 and bands["40-60 %"]["recall@5"] == 1.0
    assert bands["60 % or more"]["duplicate_recall"] == 1.0


def test_every_result_names_the_libraries_its_figures_depend_on():
    """Verification's keypoints differ between OpenCV versions, int8 between ONNX Runtime ones:
    a figure without them cannot be compared with another machine's."""
    facts = machine_facts()
    assert facts["opencv"] == cv2.__version__
    date_line = stamp_lines({"machine": facts, "command": "twice bench quality"})[1]
    assert f"opencv {cv2.__version__}" in date_line and "onnxruntime " in date_line
