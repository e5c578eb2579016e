"""Reindex on SQLite and PostgreSQL catalogs: incremental, resumable after SIGKILL, bad input
skipped, model changes re-embed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageOps
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from awkward import bad_images, good_images
from conftest import ROOT, make_options
from imagegen import image_bytes, make_image, write_images
from twice.borders import trim_borders
from twice.hashing import stored_hashes
from twice.imageio import decode_image
from twice.indexer import Catalog, ImageRow, Indexer, VectorIndex, reindex
from twice.indexer.batches import iter_batches
from twice.indexer.store import FileStamp
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
    assert (second.added, second.already, second.unchanged, second.vectors) == (0, 0, 12, 12)
    write_images(tmp_path / "in", 3, start=100)
    (tmp_path / "in" / "copy.png").write_bytes((tmp_path / "in" / "img_0000.png").read_bytes())
    third = reindex([tmp_path / "in"], options, embedder, progress=False)
    assert (third.added, third.already, third.unchanged, third.vectors) == (3, 1, 12, 15)
    vectors, catalog_ids = state(options)
    assert len(vectors) == len(catalog_ids) == 15


def test_unchanged_files_are_not_read_again_and_changed_ones_are(tmp_path, options, embedder):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [folder / f"img_{seed}.bmp" for seed in range(4)]
    for seed, path in enumerate(paths):
        path.write_bytes(bmp_bytes(seed))
    reindex([folder], options, embedder, progress=False)
    # New bytes under an old stamp (same size, mtime put back): a run that read the file would
    # catalogue them; one that trusts the stamp does not.
    stat = paths[0].stat()
    paths[0].write_bytes(bmp_bytes(50))
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert paths[0].stat().st_size == stat.st_size
    # New bytes under a new mtime: read again and added.
    paths[1].write_bytes(bmp_bytes(51))
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    summary = reindex([folder], options, embedder, progress=False)
    assert (summary.unchanged, summary.added, summary.vectors) == (3, 1, 5)
    sources = [row.source for row in Catalog(options.catalog_url).get_many(range(1, 6)).values()]
    assert sources.count(str(paths[1])) == 2 and sources.count(str(paths[0])) == 1
    # Nothing new: the index file is left as it was.
    index_stamp = FileStamp.of(options.index_path)
    again = reindex([folder], options, embedder, progress=False)
    assert (again.unchanged, again.added) == (4, 0)
    assert FileStamp.of(options.index_path) == index_stamp
    assert "unchanged (not read) 4" in again.lines()[0]


def test_a_deleted_image_is_added_again_from_its_unchanged_file(tmp_path, options, embedder):
    folder = tmp_path / "in"
    write_images(folder, 3)
    reindex([folder], options, embedder, progress=False)
    indexer = Indexer(options, embedder.version, embedder.dim)
    indexer.remove(2)
    indexer.close()
    summary = reindex([folder], options, embedder, progress=False)
    assert (summary.unchanged, summary.added, summary.vectors) == (2, 1, 3)


def test_decode_workers_store_and_a_writer_thread_catalogue_with_a_stage_profile(tmp_path, options, embedder):
    folder = tmp_path / "in"
    paths = write_images(folder, 11, fmt="JPEG")
    (folder / "same.jpg").write_bytes(paths[3].read_bytes())  # the same bytes twice in one run
    summary = reindex([folder], options.with_overrides(workers=2, batch_size=4), embedder, progress=False)
    assert (summary.added, summary.already, summary.vectors, summary.workers) == (11, 1, 11, 2)
    stages = summary.stages
    assert min(stages.decode, stages.hash, stages.store, stages.embed, stages.write) > 0
    assert summary.lines()[-1].startswith("time: decode")
    vectors, catalog_ids = state(options)
    assert len(vectors) == len(catalog_ids) == 11
    rows = Catalog(options.catalog_url).get_many(catalog_ids)
    assert sorted(row.source for row in rows.values()) == sorted(map(str, paths))
    assert all(Path(options.images_dir, row.stored_path).exists() for row in rows.values())


def test_workers_trim_once_and_catalogue_what_trimming_each_alone_gives(tmp_path, options, embedder):
    """Decode workers find each image's content box once, for the tensor and the plain pHash,
    and hand a batch's tensors over stacked: the catalog and the index hold what the separate
    path computes from the same decoded images."""
    folder = tmp_path / "in"
    folder.mkdir()
    colours = [(0, 0, 0), (255, 255, 255), (200, 30, 40)]
    for seed in range(8):
        bars = (0, 12 + seed, 0, 12 + seed) if seed % 2 else (10 + seed, 0, 10 + seed, 0)
        boxed = ImageOps.expand(make_image(seed, (160, 120)), bars, colours[seed % 3])
        boxed.save(folder / f"boxed_{seed}.jpg", quality=90)
    summary = reindex([folder], options.with_overrides(workers=2, batch_size=4), embedder, progress=False)
    assert (summary.added, summary.workers) == (8, 2)
    catalog = Catalog(options.catalog_url)
    ids, xb = VectorIndex.load(options.index_path).vectors()
    rows = catalog.get_many(ids.tolist())
    catalog.close()
    images = []
    for image_id in ids.tolist():  # in the order reindex embedded them, batch by batch
        row = rows[image_id]
        image = decode_image(Path(row.source).read_bytes(), draft_side=embedder.draft_side).image
        assert trim_borders(image).size != image.size
        assert (row.phash, row.phash_bright, row.phash_dark) == stored_hashes(image)
        images.append(image)
    np.testing.assert_allclose(xb, embedder.embed_images(images, batch_size=4), atol=1e-5)


class TensorItems:
    """Dict items, most with a tensor of their own value, and a key whose tensors differ in shape."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        item = {"i": i}
        if i % 3:
            item["pixels"] = torch.full((3, 4, 4), float(i))
        if i in (4, 5):
            item["extra"] = torch.zeros(i)
        return item


def test_a_batchs_tensors_cross_from_the_workers_stacked_and_come_back_as_each_items_own():
    batches = list(iter_batches(TensorItems(), 4, workers=2))
    items = [item for batch in batches for item in batch]
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert [item["i"] for item in items] == list(range(10))
    for item in items:
        i = item["i"]
        assert ("pixels" in item) == bool(i % 3) and ("extra" in item) == (i in (4, 5))
        if i % 3:
            assert torch.equal(item["pixels"], torch.full((3, 4, 4), float(i)))
        if i in (4, 5):
            assert torch.equal(item["extra"], torch.zeros(i))


def bmp_bytes(seed: int) -> bytes:
    """An uncompressed image: every seed gives different bytes of the same length."""
    out = io.BytesIO()
    make_image(seed).save(out, format="BMP")
    return out.getvalue()


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
