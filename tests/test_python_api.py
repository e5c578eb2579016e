"""The Python API (``twice.open``): the README's example runs as printed, results are typed."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import twice
from conftest import ROOT, TEST_IMAGE_SIZE
from imagegen import make_image, write_images

MARKER = "<!-- python-api -->"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    assert MARKER in text, f"README.md lost the {MARKER} marker before its Python API example"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block, "no ```python block after the marker"
    return block.group(1)


@pytest.fixture
def small_model_env(monkeypatch):
    """What conftest's options say, for code that reads the environment as a user's would."""
    for name, value in {
        "IMAGE_SIZE": str(TEST_IMAGE_SIZE),
        "WORKERS": "0",
        "DEVICE": "cpu",
        "ALLOW_DOWNLOAD": "0",
        "SHIPPED_CHECKPOINT": "0",
        "CHECKPOINT_SECONDS": "0",
    }.items():
        monkeypatch.setenv(f"TWICE_{name}", value)


@pytest.fixture
def photos(tmp_path, monkeypatch, small_model_env):
    """A working folder as the README assumes it: photos/ and query.jpg (a copy of one photo,
    re-encoded), plus one photo saved twice in two formats so there is a duplicate group."""
    paths = write_images(tmp_path / "photos", 6)
    make_image(3).save(tmp_path / "photos" / "again.jpg", quality=95)
    make_image(1).save(tmp_path / "query.jpg", quality=90)
    monkeypatch.chdir(tmp_path)
    return paths


def test_readme_example_runs_and_finds_the_copy(photos, tmp_path):
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # k=5 of 7 indexed photos
    verdict, score, source = lines[0].split(" ", 2)
    assert (verdict, source) == ("duplicate", "photos/img_0001.png")
    assert float(score) > 0.9
    groups = namespace["groups"]
    assert all(isinstance(g, twice.DuplicateGroup) for g in groups)
    # The test model is a seeded random VGG-16 (everything scores above 0.99 against
    # everything), so a group may hold more; its two closest images are the two copies.
    closest = [{m.source for m in g.members[:2]} for g in groups]
    assert {"photos/img_0003.png", "photos/again.jpg"} in closest
    assert (tmp_path / "index_data" / "catalog.sqlite").is_file()


def test_search_takes_paths_bytes_images_and_arrays(photos, tmp_path):
    with twice.open("index_data") as library:
        summary = library.add(["photos"])
        assert summary.added == 7
        image = make_image(2)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        for query, source in [
            ("photos/img_0002.png", "photos/img_0002.png"),
            (buffer.getvalue(), "<bytes>"),
            (image, "<image>"),
            (np.asarray(image), "<array>"),
        ]:
            response = library.search(query, k=3)
            assert isinstance(response, twice.SearchResponse)
            assert response.query.source == source
            top = response.results[0]
            assert isinstance(top, twice.Match)
            assert top.source == "photos/img_0002.png" and top.verdict == "duplicate"
        with pytest.raises(TypeError, match="not list"):
            library.search([1, 2, 3])
        with pytest.raises(ValueError, match="uint8"):
            library.search(np.zeros((8, 8, 3), np.float32))


def test_results_have_the_fields_of_the_json(photos, tmp_path):
    with twice.open("index_data") as library:
        library.add(["photos"])
        typed = library.search("query.jpg", k=2).to_dict()
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "twice",
            "--data-dir",
            "index_data",
            "search",
            "query.jpg",
            "-k",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    raw = json.loads(cli.stdout)
    assert list(typed) == list(raw) and list(typed["query"]) == list(raw["query"])
    assert [list(hit) for hit in typed["results"]] == [list(hit) for hit in raw["results"]]
    assert [hit["id"] for hit in typed["results"]] == [hit["id"] for hit in raw["results"]]


def test_open_refuses_an_unknown_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['image_sise'\]"):
        twice.open("x", image_sise=64)


def test_importing_a_stage_does_not_load_the_model():
    code = "import sys, twice.indexer, twice.search, twice.web.app; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("name", "web_name"),
    [
        ("QueryImage", "QueryImage"),
        ("Match", "Match"),
        ("SearchResponse", "SearchResponse"),
        ("GroupMember", "GroupMember"),
        ("DuplicateGroup", "DuplicateGroup"),
        ("AddedImage", "AddResponse"),
    ],
)
def test_python_results_and_web_schemas_name_the_same_fields(name, web_name):
    """The web's pydantic models document the JSON the library's dataclasses carry; the web
    adds only its links (and the id of a query by id, the URL of an added image)."""
    from dataclasses import fields

    from twice import library
    from twice.web import schemas

    web_only = {"Match": set(schemas.Links.model_fields), "QueryImage": {"id"}, "AddedImage": {"url"}}
    python = [f.name for f in fields(getattr(library, name))]
    web = [field for field in getattr(schemas, web_name).model_fields if field not in web_only.get(name, ())]
    assert sorted(python) == sorted(web)
