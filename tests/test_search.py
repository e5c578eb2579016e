"""Search from the command line: JSON shape, exact matches, verdicts, clear refusals."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from imagegen import image_bytes, make_image, write_images
from twice.cli import main
from twice.hashing import DIHEDRAL
from twice.indexer import IndexFileError, IndexMismatchError, reindex
from twice.model import Embedder
from twice.search import SearchEngine, Thresholds

CLI_ENV = {
    "TWICE_IMAGE_SIZE": "64",
    "TWICE_WORKERS": "0",
    "TWICE_ALLOW_DOWNLOAD": "0",
    "TWICE_DEVICE": "cpu",
}


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    for key, value in CLI_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TWICE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_cli_reindex_then_search_json(cli_env, capsys):
    paths = write_images(cli_env / "in", 6)
    assert main(["-q", "reindex", str(cli_env / "in")]) == 0
    capsys.readouterr()
    assert main(["-q", "search", str(paths[2]), "-k", "3", "--json"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert set(response) >= {"query", "results", "model", "thresholds", "took_ms"}
    top = response["results"][0]
    assert top["source"] == str(paths[2]) and top["exact"] and top["score"] == 1.0
    assert top["verdict"] == "duplicate"
    assert len(response["results"]) == 3
    assert {"id", "path", "score", "verdict", "width", "height", "parent_id", "transform"} <= set(top)
    assert len({hit["id"] for hit in response["results"]}) == 3


def test_cli_search_refuses_bad_input_with_nonzero_exit(cli_env, capsys):
    write_images(cli_env / "in", 2)
    main(["-q", "reindex", str(cli_env / "in")])
    bad = cli_env / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    assert main(["-q", "search", str(bad)]) == 1
    assert "bad.jpg: not an image" in capsys.readouterr().err
    assert main(["-q", "search", str(cli_env / "missing.png")]) == 1
    assert main(["-q", "search", str(cli_env / "in" / "img_0000.png"), "-k", "0"]) == 1
    assert "k must be an integer from 1 to 100" in capsys.readouterr().err


def test_search_before_any_reindex_says_what_to_do(cli_env, capsys):
    query = cli_env / "q.png"
    query.write_bytes(image_bytes(make_image(1)))
    assert main(["-q", "search", str(query)]) == 1
    assert "run `twice reindex" in capsys.readouterr().err


def test_search_refuses_an_index_of_another_model(tmp_path, options, embedder):
    write_images(tmp_path / "in", 3)
    reindex([tmp_path / "in"], options, embedder, progress=False)
    other = Embedder.from_options(options.with_overrides(image_size=80))
    with pytest.raises(IndexMismatchError, match="twice reindex"):
        SearchEngine.open(options, other)
    with pytest.raises(IndexFileError, match="no index yet"):
        SearchEngine.open(options.with_overrides(data_dir=tmp_path / "empty"), embedder)


def test_verdicts_follow_thresholds(tmp_path, options, embedder):
    paths = write_images(tmp_path / "in", 4)
    reindex([tmp_path / "in"], options, embedder, progress=False)
    engine = SearchEngine.open(options, embedder)
    engine.thresholds = Thresholds(duplicate=1.0, similar=-1.0)
    response = engine.search_bytes(paths[0].read_bytes(), k=4)
    verdicts = [hit["verdict"] for hit in response["results"]]
    assert verdicts == ["duplicate", "similar", "similar", "similar"]
    engine.close()
    with pytest.raises(ValueError, match="similar <= duplicate"):
        Thresholds(duplicate=0.5, similar=0.7)
    assert Thresholds(0.9, 0.7).verdict(0.95) == "duplicate"
    assert Thresholds(0.9, 0.7).verdict(0.8) == "similar"
    assert Thresholds(0.9, 0.7).verdict(0.2) == "different"


def test_cli_search_prints_the_stored_clear_match_rule(cli_env, capsys):
    from twice.indexer import Catalog
    from twice.options import Options

    paths = write_images(cli_env / "in", 4)
    assert main(["-q", "reindex", str(cli_env / "in")]) == 0
    assert main(["-q", "search", str(paths[1]), "-k", "2"]) == 0
    assert "clear of other images" not in capsys.readouterr().out  # off until calibrated
    catalog = Catalog(Options.from_env().catalog_url)
    version = catalog.index_record().model_version
    rule = {"hash_duplicate": 2, "hash_similar": 6, "clear_score": 0.55, "clear_margin": 0.25}
    catalog.set_thresholds(version, 0.8, 0.7, "calibrated", rule)
    catalog.close()
    assert main(["-q", "search", str(paths[1]), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "duplicate: hash <= 2 or CNN >= 0.8000 or (CNN >= 0.5500 and 0.2500 clear of other images)" in out


def test_a_single_view_model_searches_the_query_turns_by_default(tmp_path, options):
    """One stored view per image; the query's 8 turns/flips are searched, so a turned copy
    meets its original's view exactly even with random weights."""
    single = options.with_overrides(invariance="none")
    embedder = Embedder.from_options(single)
    paths = write_images(tmp_path / "in", 4)
    reindex([str(tmp_path / "in")], single, embedder=embedder, progress=False)
    engine = SearchEngine.open(single, embedder)
    turned = make_image(2).transpose(Image.Transpose.ROTATE_90)
    response = engine.search_bytes(image_bytes(turned), k=1)
    assert response["tta"] == "d4"
    top = response["results"][0]
    assert top["source"] == str(paths[2]) and top["score"] > 0.999
    assert engine.search_bytes(image_bytes(turned), k=1, tta="none")["tta"] == "none"


def spread(region) -> float:
    """The largest per-channel standard deviation of a (3, h, w) tensor region."""
    return float(region.std(dim=(1, 2)).max())


def test_part_views_shrink_the_content_into_a_canvas_at_each_place():
    from twice.model.embedder import Preprocess
    from twice.search.parts import PART_PLACES, PART_VIEWS, part_tensors

    tensors = part_tensors(make_image(3, (120, 90)), Preprocess(64, black_point=False, fill=False))
    assert len(tensors) == len(PART_VIEWS) == len(PART_PLACES) == 5
    assert all(t.shape == (3, 64, 64) for t in tensors)
    centre = tensors[2]  # 48 px of content, 8 px of fill on each side
    assert spread(centre[:, 20:40, 0:7]) < 1e-5 and spread(centre[:, 20:40, 57:64]) < 1e-5
    assert spread(centre[:, 20:40, 10:20]) > 0.1
    first, last = tensors[0], tensors[-1]  # content at the top left, then at the bottom right
    assert spread(first[:, 20:40, 52:62]) < 1e-5  # the fill right of the content, untrimmed
    assert spread(first[:, 20:40, 2:12]) > 0.1  # the content
    assert spread(last[:, 20:40, 2:12]) < 1e-5
    assert spread(last[:, 20:40, 52:62]) > 0.1


def test_a_query_without_a_duplicate_is_searched_as_a_part_of_a_larger_picture(tmp_path, options):
    single = options.with_overrides(invariance="none")
    embedder = Embedder.from_options(single)
    paths = write_images(tmp_path / "in", 5)
    reindex([str(tmp_path / "in")], single, embedder=embedder, progress=False)
    crop = Image.open(paths[2]).convert("RGB")
    crop = crop.crop((crop.width // 3, 0, crop.width, crop.height * 2 // 3))
    found = {}
    for parts in (True, False):
        engine = SearchEngine.open(single.with_overrides(part_views=parts), embedder)
        engine.thresholds = Thresholds(duplicate=1.0, similar=-1.0)  # no view finds a duplicate
        found[parts] = engine.search_bytes(image_bytes(crop), k=5)["results"]
        exact = engine.search_bytes(paths[1].read_bytes(), k=5)["results"]
        engine.close()
        assert all(not r["evidence"]["cnn"]["view"].startswith("part") for r in exact)  # not needed
    views = {r["evidence"]["cnn"]["view"] for r in found[True]}
    assert not any(v.startswith("part") for r in found[False] for v in [r["evidence"]["cnn"]["view"]])
    with_parts = {r["id"]: r["score"] for r in found[True]}
    for r in found[False]:  # more views: no image scores lower
        if r["id"] in with_parts:
            assert with_parts[r["id"]] >= r["score"] - 1e-6
    assert all(
        r["evidence"]["transform"] is None
        for r in found[True]
        if r["evidence"]["cnn"]["view"] in views - set(DIHEDRAL)
    )
