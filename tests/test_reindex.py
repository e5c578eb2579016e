"""Reindex on SQLite and PostgreSQL catalogs: incremental, resumable after SIGKILL, bad input
skipped, model changes re-embed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from awkward import bad_images, good_images
from conftest import ROOT, make_options
from imagegen import image_bytes, make_image, write_images
from twice.indexer import Catalog, ImageRow, Indexer, VectorIndex, reindex
from twice.model import Embedder


@pytest.fixture
def options(tmp_path: Path, db_url: str):
    """Options of a new data dir, its catalog on each backend in turn."""
    return make_options(tmp_path / "data", db_url=db_url)


def state(options) -> tuple[dict[str, np.ndarray], list[int]]:
    """sha256 -> vector for every indexed image, and the catalog ids (the final state)."""
    catalog = Catalog(options.catalog_url)
    ids, xb = VectorIndex.load(options.index_path).vectors()
    rows = catalog.get_many(ids.tolist())
    catalog_ids = catalog.ids().tolist()
    catalog.close()
    return {rows[i].sha256: v for i, v in zip(ids.tolist(), xb, strict=True)}, catalog_ids


def test_reindex_adds_new_images_once(tmp_path, options, embedder):
    write_images(tmp_path / "in", 12)
    first = reindex([tmp_path / "in"], options, embedder, progress=False)
    assert (first.added, first.already, first.vectors) == (12, 0, 12)
    second = reindex([tmp_path / "in"], options, embedder, progress=False)
    assert (second.added, second.already, second.vectors) == (0, 12, 12)
    write_images(tmp_path / "in", 3, start=100)
    (tmp_path / "in" / "copy.png").write_bytes((tmp_path / "in" / "img_0000.png").read_bytes())
    third = reindex([tmp_path / "in"], options, embedder, progress=False)
    assert (third.added, third.already, third.vectors) == (3, 13, 15)
    vectors, catalog_ids = state(options)
    assert len(vectors) == len(catalog_ids) == 15


def test_bad_files_are_skipped_counted_and_harmless(tmp_path, options, embedder):
    folder = tmp_path / "in"
    write_images(folder, 4)
    reindex([folder], options, embedder, progress=False)
    before = state(options)
    for name, (data, _reason) in bad_images().items():
        (folder / name).write_bytes(data)
    for name, data in good_images().items():
        (folder / name).write_bytes(data)
    summary = reindex([folder], options, embedder, progress=False)
    expected = {}
    for _data, reason in bad_images().values():
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(summary.skipped) == expected
    assert summary.added == len(good_images())
    after_vectors, _ = state(options)
    for sha, vector in before[0].items():
        np.testing.assert_array_equal(after_vectors[sha], vector)


def test_new_model_version_re_embeds_everything(tmp_path, options, embedder):
    write_images(tmp_path / "in", 5)
    reindex([tmp_path / "in"], options, embedder, progress=False)
    bigger = options.with_overrides(image_size=80)
    other = Embedder.from_options(bigger)
    summary = reindex([], bigger, other, progress=False)
    assert summary.rebuilt and summary.embedded_pending == 5 and summary.vectors == 5
    assert VectorIndex.read_header(options.index_path)["model_version"] == other.version


def test_orphan_vectors_are_dropped_and_pending_rows_embedded(tmp_path, options, embedder):
    write_images(tmp_path / "in", 4)
    reindex([tmp_path / "in"], options, embedder, progress=False)
    indexer = Indexer(options, embedder.version, embedder.dim)
    victim = int(indexer.catalog.ids()[0])
    indexer.catalog.delete(victim)  # as if a delete crashed before touching the index
    added = indexer.add_bytes((tmp_path / "in" / "img_0001.png").read_bytes() + b"", "dup")
    assert not added.created
    indexer.close()
    summary = reindex([], options, embedder, progress=False)
    assert summary.orphans_removed == 1 and summary.vectors == 3


def run_reindex_cli(options, folder: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "TWICE_DATA_DIR": str(options.data_dir),
        "TWICE_DB_URL": options.db_url,
        "TWICE_IMAGE_SIZE": "64",
        "TWICE_BATCH_SIZE": "4",
        "TWICE_WORKERS": "0",
        "TWICE_CHECKPOINT_SECONDS": "0",
        "TWICE_ALLOW_DOWNLOAD": "0",
        "TWICE_DEVICE": "cpu",
    }
    cmd = [sys.executable, "-m", "twice", "-q", "reindex", str(folder)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def catalog_rows(options) -> int:
    """Rows in the catalog, read without migrating it (0 until the reindex has made it)."""
    engine = create_engine(options.catalog_url, connect_args={"timeout": 1} if not options.db_url else {})
    try:
        with engine.connect() as db:
            return db.scalar(select(func.count()).select_from(ImageRow))
    except SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def test_reindex_killed_midway_resumes_to_the_same_final_state(tmp_path, new_db_url):
    folder = tmp_path / "in"
    write_images(folder, 40)
    killed = make_options(tmp_path / "killed", db_url=new_db_url())
    clean = make_options(tmp_path / "clean", db_url=new_db_url())

    proc = run_reindex_cli(killed, folder)
    deadline = time.monotonic() + 120
    while catalog_rows(killed) < 12 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "reindex finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < catalog_rows(killed) < 40

    for options in (killed, clean):
        proc = run_reindex_cli(options, folder)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()

    killed_vectors, killed_ids = state(killed)
    clean_vectors, clean_ids = state(clean)
    assert len(killed_ids) == len(clean_ids) == 40
    assert killed_vectors.keys() == clean_vectors.keys()
    for sha in clean_vectors:
        np.testing.assert_allclose(killed_vectors[sha], clean_vectors[sha], atol=1e-5)


def test_concurrent_writers_do_not_lose_each_others_vectors(tmp_path, options, embedder):
    first = Indexer(options, embedder.version, embedder.dim)
    second = Indexer(options, embedder.version, embedder.dim)
    assert len(first.vectors) == len(second.vectors) == 0  # both read the (absent) file now
    for writer, seed in ((second, 1), (first, 2)):
        added = writer.add_bytes(image_bytes(make_image(seed)), f"upload-{seed}")
        writer.add_vectors([added.row.id], embedder.embed_images([added.decoded.image]))
        writer.save()
    first.close()
    second.close()
    assert VectorIndex.load(options.index_path).ids().tolist() == [1, 2]
