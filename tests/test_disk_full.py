"""A full disk is a fault like any other: a reindex, an upload and a report writing into a
data dir on a small tmpfs stop with an error naming the path, leave the data dir consistent
(``twice check`` passes) and complete once space is freed. Needs root to mount (skips without)."""

from __future__ import annotations

import errno
import io
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import make_options
from imagegen import image_bytes, make_image
from twice.cli import main
from twice.indexer import Catalog, VectorIndex, reindex
from twice.indexer.check import check_data_dir
from twice.library import Library
from twice.web import app as api

DISK = "8m"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {DISK} tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def noise_images(folder, count: int, side: int = 160) -> list:
    """PNGs of noise (~75 KB each: noise does not compress)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"noise_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def fill(disk, leave: int) -> object:
    """A filler file leaving about ``leave`` bytes free; delete it to free the space."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    size = filler.stat().st_size
    with open(filler, "r+b") as handle:
        handle.truncate(max(0, size - leave))
    return filler


def assert_no_space(error: BaseException, disk) -> None:
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(disk) in str(error), f"the error does not name the path: {error}"


def test_reindex_on_a_full_disk_stops_cleanly_and_resumes(small_disk, tmp_path, embedder):
    options = make_options(small_disk / "data", checkpoint_seconds=0.0)
    images = noise_images(tmp_path / "in", 48)  # ~3.6 MB
    filler = fill(small_disk, leave=1_500_000)
    with pytest.raises(OSError) as info:
        reindex([tmp_path / "in"], options, embedder, progress=False)
    assert_no_space(info.value, small_disk)
    report = check_data_dir(options)
    assert report.ok, report.lines()
    filler.unlink()
    summary = reindex([tmp_path / "in"], options, embedder, progress=False)
    assert summary.vectors == len(images)
    report = check_data_dir(options)
    assert report.ok and report.pending == 0, report.lines()


def test_upload_on_a_full_disk_is_refused_and_then_taken(small_disk, tmp_path, embedder):
    options = make_options(small_disk / "data")
    with Library(options, embedder) as library:
        library.add_image(image_bytes(make_image(1)), "first")
    filler = fill(small_disk, leave=20_000)
    big = image_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (160, 160, 3), np.uint8)))
    with Library(options, embedder) as library, pytest.raises(OSError) as info:
        library.add_image(big, "big")
    assert_no_space(info.value, small_disk)
    app = api.create_app(options, embedder=embedder)
    client = app.test_client()
    response = client.post("/images", data={"image": (io.BytesIO(big), "big.png")})
    assert response.status_code == 507 and response.get_json()["error"]["code"] == "storage_full"
    assert str(small_disk) not in response.get_data(as_text=True)  # paths stay in the server log
    filler.unlink()
    report = check_data_dir(options)  # what the failed uploads left
    assert report.ok and report.images == 1, report.lines()
    response = client.post("/images", data={"image": (io.BytesIO(big), "big.png")})
    assert response.status_code in (200, 201), response.get_json()
    api.service_of(app).close()
    report = check_data_dir(options)
    assert report.ok and report.images == 2, report.lines()
    catalog = Catalog(options.catalog_url)
    assert VectorIndex.load(options.index_path).ids().tolist() == catalog.ids().tolist()
    catalog.close()


def test_report_on_a_full_disk_names_the_file(small_disk, tmp_path, embedder, monkeypatch, capsys):
    options = make_options(tmp_path / "data")  # the data dir has room; the report's disk not
    reindex([p for p in noise_images(tmp_path / "in", 3, side=32)], options, embedder, progress=False)
    for key, value in options.to_env().items():
        monkeypatch.setenv(key, value)
    filler = fill(small_disk, leave=0)
    out = small_disk / "report.html"
    assert main(["report", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "No space left on device" in error and str(out) in error
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no half-written report
    filler.unlink()
    assert main(["report", "--out", str(out)]) == 0 and out.stat().st_size > 0
