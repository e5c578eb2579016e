"""``twice backup`` / ``twice restore``: a snapshot taken while another process writes loses
no acknowledged image, and the restored data dir passes ``twice check``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import ROOT, make_options
from imagegen import image_bytes, make_image
from twice.cli import main
from twice.indexer import Catalog, Indexer, IndexFileError, VectorIndex
from twice.indexer.backup import backup, restore
from twice.indexer.check import check_data_dir

MODEL, DIM = "writer-test", 8

# Adds an image (file, row, vector, saved index) per step and prints "add <id>" once it is
# committed; every 4th step deletes the image added two steps before ("del <id>").
WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from imagegen import image_bytes, make_image
    from conftest import make_options
    from twice.indexer import Indexer

    indexer = Indexer(make_options(Path(sys.argv[1])), "writer-test", 8)
    rng = np.random.default_rng(0)
    added = []
    for seed in range(1000, 100000):
        row = indexer.add_bytes(image_bytes(make_image(seed, (64, 48))), f"seed{seed}").row
        vector = rng.standard_normal((1, 8)).astype("float32")
        indexer.add_vectors(np.array([row.id]), vector / np.linalg.norm(vector))
        indexer.save()
        added.append(row.id)
        print("add", row.id, flush=True)
        if seed % 4 == 0 and len(added) > 2:
            gone = added.pop(-3)
            indexer.remove(gone)
            print("del", gone, flush=True)
    """
)


def seeded_data_dir(path, count: int = 5):
    options = make_options(path)
    indexer = Indexer(options, MODEL, DIM)
    for seed in range(count):
        added = indexer.add_bytes(image_bytes(make_image(seed)), f"seed{seed}")
        indexer.add_vectors([added.row.id], [[1.0] + [0.0] * (DIM - 1)])
    indexer.save()
    indexer.close()
    return options


def catalog_rows(options) -> dict[int, str]:
    catalog = Catalog(options.catalog_url)
    try:
        return {i: row.sha256 for i, row in catalog.get_many(catalog.ids().tolist()).items()}
    finally:
        catalog.close()


def test_backup_and_restore_round_trip_through_the_cli(tmp_path, capsys):
    source = seeded_data_dir(tmp_path / "data")
    assert main(["--data-dir", str(source.data_dir), "backup", str(tmp_path / "snap"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["vectors"], summary["dropped"]) == (5, 5, [])
    target = make_options(tmp_path / "restored")
    assert main(["--data-dir", str(target.data_dir), "restore", str(tmp_path / "snap")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok")
    assert catalog_rows(target) == catalog_rows(source)
    assert VectorIndex.load(target.index_path).ids().tolist() == sorted(catalog_rows(source))
    assert check_data_dir(target).findings == []


def test_backup_under_load_keeps_every_acknowledged_image(tmp_path):
    options = seeded_data_dir(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(options.data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(writer.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(lines) < 15 and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(lines) >= 15, writer.stderr.read()
        acknowledged = list(lines)  # committed before the backup starts
        summary = backup(options, tmp_path / "snap")
        during = len(lines) - len(acknowledged)
    finally:
        writer.kill()
        writer.wait()
    assert during > 0, "the writer did not write while the backup ran"
    deleted = {int(line.split()[1]) for line in lines if line.startswith("del")}
    kept = {int(line.split()[1]) for line in acknowledged if line.startswith("add")} - deleted
    target = make_options(tmp_path / "restored")
    report = restore(tmp_path / "snap", target)
    assert report.ok, report.lines()
    restored = catalog_rows(target)
    assert kept <= set(restored), f"lost {sorted(kept - set(restored))}"
    catalog = Catalog(target.catalog_url)
    for image_id, sha256 in restored.items():  # every file there, whole
        stored = target.images_dir / catalog.get(image_id).stored_path
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha256
    catalog.close()
    assert summary.images == len(restored) and not summary.damaged
    assert check_data_dir(target).ok


def test_backup_refuses_a_used_folder_and_postgresql(tmp_path):
    options = seeded_data_dir(tmp_path / "data", count=1)
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "something").write_text("x")
    with pytest.raises(ValueError, match="must be new or empty"):
        backup(options, tmp_path / "snap")
    postgres = options.with_overrides(db_url="postgresql://localhost/twice")
    with pytest.raises(ValueError, match="pg_dump"):
        backup(postgres, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_restore_refuses_a_data_dir_in_use_and_a_non_backup(tmp_path):
    options = seeded_data_dir(tmp_path / "data", count=1)
    backup(options, tmp_path / "snap")
    with pytest.raises(ValueError, match="must be new or empty"):
        restore(tmp_path / "snap", options)
    with pytest.raises(ValueError, match="not a twice backup"):
        restore(tmp_path / "data", make_options(tmp_path / "new"))


def test_a_failed_backup_leaves_no_folder(tmp_path):
    options = seeded_data_dir(tmp_path / "data", count=2)
    options.index_path.write_bytes(options.index_path.read_bytes()[:100])  # truncated index
    with pytest.raises(IndexFileError, match=f"{options.index_path} is damaged, not backed up"):
        backup(options, tmp_path / "snap")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
