"""Duplicate reports: pair finding against a brute-force oracle, grouping, originals,
variants, HTML/JSON/CSV output, incremental runs, the CLI.

Vectors are planted (not embedded): a random-weight CNN scores every pair ~0.99, so the
catalog rows and image files are real but each row's vector is chosen by the test.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import faiss
import numpy as np
import pytest
from PIL import Image

from imagegen import image_bytes, make_image
from indexer import Catalog, ImageRow, Indexer, IndexFileError, IndexMismatchError
from search.pairs import find_pairs, group_pairs, plant_groups
from search.report import build_report, pick_original, render, report_csv
from twice.cli import main

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

    def add(self, vector: np.ndarray, size=(48, 36), **columns) -> int:
        self.seed += 1
        data = image_bytes(make_image(self.seed, size))
        row = self.indexer.add_bytes(data, f"/photos/img_{self.seed}.png", **columns).row
        self.indexer.add_vectors(np.array([row.id]), vector[None, :])
        return row.id

    def random(self) -> np.ndarray:
        return unit(self.rng.standard_normal(DIM).astype(np.float32))

    def save(self) -> None:
        self.indexer.save()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.indexer.vectors.vectors()


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
    planted = planted_collection(collection, groups=(3, 2, 2), singles=6)
    first = build_report(collection.options, record=True)
    assert first["cache"]["full"] and first["changes"] is None
    ids, xb = collection.vectors()
    vec = dict(zip(ids.tolist(), xb, strict=True))
    # Grow one group, add a new one, remove a member of another.
    collection.add(near(vec[planted[0][0]], collection.rng))
    fresh = collection.random()
    collection.add(fresh)
    collection.add(near(fresh, collection.rng))
    collection.indexer.remove(planted[2][1])
    collection.save()

    incremental = build_report(collection.options, record=True)
    full = build_report(collection.options, incremental=False)
    assert incremental["cache"]["full"] is False
    assert incremental["cache"]["searched"] == 3 and incremental["cache"]["removed"] == 1
    assert incremental["cache"]["reused_pairs"] == 3 + 1  # the 3-group's pairs and the 2-group's
    assert comparable(incremental) == comparable(full)
    changes = incremental["changes"]
    assert (changes["new_groups"], changes["grown_groups"], changes["gone_groups"]) == (1, 1, 1)
    assert changes["images_added"] == 3 and changes["groups_then"] == 3 and changes["groups_now"] == 3
    assert sorted(g["change"] for g in incremental["groups"]) == ["grown", "new", "unchanged"]


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


def test_cli_writes_each_format(collection, tmp_path, capsys):
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
