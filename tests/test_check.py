"""``twice check [--repair]`` on real data dirs with planted faults: each is found, the
fixable ones are fixed, the rest stay listed with a non-zero exit status."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_options
from imagegen import write_images
from twice.cli import main
from twice.indexer import Catalog, ImageRow, VectorIndex, reindex
from twice.indexer.check import STRAY_AGE, check_data_dir

N_IMAGES = 6


@pytest.fixture(scope="module")
def template(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("check")
    options = make_options(root / "data")
    write_images(root / "sources", N_IMAGES)
    reindex([root / "sources"], options, embedder, progress=False)
    return root


@pytest.fixture
def data(template, tmp_path, monkeypatch):
    """A copy of the indexed data dir (with its source files), and the CLI pointed at it."""
    shutil.copytree(template / "sources", tmp_path / "sources")
    shutil.copytree(template / "data", tmp_path / "data")
    options = make_options(tmp_path / "data")
    _point_sources(options, template / "sources", tmp_path / "sources")
    for key, value in options.to_env().items():
        monkeypatch.setenv(key, value)
    return options


def _point_sources(options, old: Path, new: Path) -> None:
    with sqlite3.connect(options.data_dir / "catalog.sqlite") as db:
        db.execute("UPDATE images SET source = replace(source, ?, ?)", (str(old), str(new)))
    db.close()


def rows(options) -> dict[int, ImageRow]:
    catalog = Catalog(options.catalog_url)
    try:
        return catalog.get_many(catalog.ids().tolist())
    finally:
        catalog.close()


def run_check(capsys, *args: str) -> tuple[int, dict]:
    status = main(["check", "--json", *args])
    return status, json.loads(capsys.readouterr().out)


def kinds(result: dict, faults_only: bool = True) -> dict[str, list]:
    return {
        f["kind"]: f["ids"] or f["files"]
        for f in result["findings"]
        if (f["fault"] or not faults_only) and not f["repaired"]
    }


def age(path: Path) -> None:
    old = time.time() - STRAY_AGE - 60
    os.utime(path, (old, old))


def test_a_healthy_data_dir_passes(data, capsys):
    status, result = run_check(capsys)
    assert status == 0 and result["ok"] and result["findings"] == []
    assert result["images"] == result["vectors"] == result["files_hashed"] == N_IMAGES


def test_each_planted_fault_is_found_and_repair_fixes_them(data, capsys):
    options = data
    by_id = rows(options)
    ids = sorted(by_id)
    store = options.images_dir
    (store / by_id[ids[0]].stored_path).unlink()  # deleted file
    corrupt = store / by_id[ids[1]].stored_path  # corrupted bytes, same size
    blob = bytearray(corrupt.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(blob))
    index = VectorIndex.load(options.index_path)
    index.remove([ids[2]])  # a row without a vector
    index.add(np.array([9999]), np.eye(1, index.dim, dtype=np.float32))  # an orphan vector
    index.save(options.index_path)
    with sqlite3.connect(options.data_dir / "catalog.sqlite") as db:  # hashes of an old version
        db.execute("UPDATE images SET phash_version = 1 WHERE id = ?", (ids[3],))
    db.close()
    temp = store / "ab" / ".abc.png.x1y2.tmp"  # a crashed writer's temporary file
    temp.parent.mkdir(exist_ok=True)
    temp.write_bytes(b"half")
    stray = store / "ab" / ("ab" + "0" * 62 + ".png")  # a file no row refers to
    stray.write_bytes(b"orphan")
    for path in (temp, stray):
        age(path)

    status, found = run_check(capsys)
    assert status == 1 and not found["ok"]
    assert kinds(found) == {
        "missing_file": [ids[0]],
        "corrupt_file": [ids[1]],
        "orphan_vectors": [9999],
        "stale_hashes": [ids[3]],
        "temporary_files": ["images/ab/.abc.png.x1y2.tmp"],
        "unreferenced_files": [f"images/ab/{stray.name}"],
    }
    assert kinds(found, faults_only=False)["pending"] == [ids[2]]

    status, repaired = run_check(capsys, "--repair")
    assert status == 0 and repaired["ok"], repaired
    assert repaired["embedded"]["embedded_pending"] == 1
    status, after = run_check(capsys)
    assert status == 0 and after["findings"] == [] and after["vectors"] == N_IMAGES
    assert not temp.exists() and not stray.exists()
    assert VectorIndex.load(options.index_path).ids().tolist() == ids


def test_truncated_index_is_found_and_rebuilt(data, capsys):
    blob = data.index_path.read_bytes()
    data.index_path.write_bytes(blob[: len(blob) // 2])
    status, found = run_check(capsys)
    assert status == 1 and "truncated" in found["findings"][0]["message"]
    assert kinds(found) == {"index_damaged": []}
    status, repaired = run_check(capsys, "--repair")
    assert status == 0 and repaired["embedded"]["embedded_pending"] == N_IMAGES
    assert list(data.index_path.parent.glob("vectors.twice.damaged-*"))  # kept for a look
    assert run_check(capsys)[1]["findings"] == []


def test_what_needs_a_guess_is_listed_not_repaired(data, capsys):
    options = data
    by_id = rows(options)
    ids = sorted(by_id)
    (options.images_dir / by_id[ids[0]].stored_path).unlink()
    Path(by_id[ids[0]].source).unlink()  # no source to copy back from
    with sqlite3.connect(options.data_dir / "catalog.sqlite") as db:
        db.execute("UPDATE images SET stored_path = '../../etc/passwd' WHERE id = ?", (ids[1],))
    db.close()
    status, result = run_check(capsys, "--repair")
    assert status == 1
    assert kinds(result) == {"missing_file": [ids[0]], "outside_store": [ids[1]]}
    text = "\n".join(check_data_dir(options).lines())
    assert "restore a backup or delete these images" in text and "outside the image store" in text
    assert text.endswith("2 faults remain")


def test_young_stray_files_are_only_noted(data, capsys):
    temp = data.index_path.parent / ".vectors.twice.abc.tmp"  # maybe a save in progress
    temp.write_bytes(b"x")
    status, result = run_check(capsys, "--repair")
    assert status == 0 and temp.exists()
    assert kinds(result, faults_only=False) == {"temporary_files": ["index/.vectors.twice.abc.tmp"]}


def test_damaged_catalog_is_a_fault(data, capsys):
    catalog = data.data_dir / "catalog.sqlite"
    blob = bytearray(catalog.read_bytes())
    page = 4096
    blob[page : page + 200] = os.urandom(200)  # the second page: a table's b-tree
    catalog.write_bytes(bytes(blob))
    status, result = run_check(capsys)
    assert status == 1 and [f["kind"] for f in result["findings"]] == ["catalog_damaged"]
    assert "catalog.sqlite" in result["findings"][0]["message"]


def test_no_data_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "nope"), "check"]) == 1
    assert "no such data directory" in capsys.readouterr().err
