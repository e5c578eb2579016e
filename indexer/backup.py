"""``twice backup DEST`` / ``twice restore SRC``: a consistent snapshot of a data directory,
taken while the service and reindexes keep writing.

Order makes it consistent without stopping writers (see DESIGN.md's write contract: files
before rows, index durable before the catalog says so):

1. the index file is copied first. It is only ever replaced by a rename, so the copy is one
   whole saved version;
2. the catalog is copied with SQLite's online backup API: one transaction-consistent snapshot,
   taken after the index, so every vector in the copy belongs to a row in it unless that row
   was deleted meanwhile (an orphan, dropped on restore); rows added after the index copy
   have no vector yet (pending, embedded by the next reindex);
3. the files of every row in the copy are copied (and their sha256 checked on the way); a
   file gone meanwhile was deleted after the snapshot, so its row is dropped from the copy.

Everything is written into a hidden folder beside DEST and renamed to DEST at the end, so a
backup that died half-way never looks like one. PostgreSQL catalogs are refused: use
``pg_dump`` for the catalog and copy the index and images folders after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from twice.files import ImageStore, OutsideStore, atomic_write
from twice.version import __version__

from .check import CheckReport, check_data_dir, sqlite_path
from .vectors import IndexFileError, VectorIndex

LOG = logging.getLogger(__name__)

MANIFEST = "twice-backup.json"
CATALOG = "catalog.sqlite"
INDEX = Path("index") / "vectors.twice"
COPY_CHUNK = 1 << 20
PG_DUMP_HINT = (
    "the catalog is not a SQLite file ({url}): back it up with pg_dump (`pg_dump -Fc DB >"
    " catalog.dump`), then copy DATA_DIR/index and DATA_DIR/images (index first, images last);"
    " see docs/service.md, Operating"
)


@dataclass
class BackupSummary:
    path: str
    images: int = 0
    bytes: int = 0
    vectors: int = 0
    dropped: list[int] = field(default_factory=list)  # rows deleted while the backup ran
    damaged: list[int] = field(default_factory=list)  # stored bytes not matching their sha256
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        lines = [
            f"backup {self.path}: {self.images} images ({self.bytes / 1e6:.1f} MB), {self.vectors} vectors,"
            f" {self.seconds:.1f}s"
        ]
        if self.dropped:
            lines.append(
                f"left out {len(self.dropped)} images deleted while the backup ran: {self.dropped[:10]}"
            )
        if self.damaged:
            lines.append(
                f"WARNING {len(self.damaged)} stored files do not match their sha256 (copied as they"
                f" are; `twice check` lists them): {self.damaged[:10]}"
            )
        return lines


def backup(options, dest: str | Path) -> BackupSummary:
    """Snapshot ``options``' data directory into the new folder ``dest``."""
    started = time.monotonic()
    catalog_file = sqlite_path(options)
    if catalog_file is None:
        raise ValueError(PG_DUMP_HINT.format(url=options.catalog_url))
    if not catalog_file.exists():
        raise ValueError(f"{catalog_file}: no catalog to back up (is --data-dir right?)")
    dest = Path(dest)
    _check_empty(dest, "backup folder")
    work = _staging(dest)
    try:
        summary = BackupSummary(str(dest))
        summary.vectors = _copy_index(Path(options.index_path), work / INDEX)
        _snapshot_catalog(catalog_file, work / CATALOG)
        _copy_images(ImageStore(options.images_dir), work, summary)
        if Path(options.models_dir).is_dir():
            shutil.copytree(options.models_dir, work / "models")
        summary.seconds = time.monotonic() - started
        manifest = {
            "twice": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "data_dir": str(Path(options.data_dir).resolve()),
            **summary.to_dict(),
        }
        atomic_write(work / MANIFEST, json.dumps(manifest, indent=2).encode())
        _publish(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def restore(source: str | Path, options) -> CheckReport:
    """Make ``options``' data directory (new or empty) from the backup ``source``; returns the
    check of the result (orphan vectors of rows deleted during the backup are dropped)."""
    source = Path(source)
    if not (source / MANIFEST).is_file() or not (source / CATALOG).is_file():
        raise ValueError(f"{source}: not a twice backup (no {MANIFEST} and {CATALOG})")
    data_dir = Path(options.data_dir)
    if sqlite_path(options) != data_dir / CATALOG:
        raise ValueError(
            f"restore writes {data_dir / CATALOG}; the catalog is set to {options.catalog_url}"
            " (unset TWICE_DB_URL; for PostgreSQL restore pg_dump's dump with pg_restore)"
        )
    _check_empty(data_dir, "data directory")
    work = _staging(data_dir)
    try:
        for name in ("images", "index", "models"):
            if (source / name).is_dir():
                shutil.copytree(source / name, work / name)
        _snapshot_catalog(source / CATALOG, work / CATALOG)
        _publish(work, data_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return check_data_dir(options, repair=True)


# steps -----------------------------------------------------------------------------------------


def _check_empty(folder: Path, what: str) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder}: the {what} must be new or empty; move the one there aside first")


def _staging(target: Path) -> Path:
    work = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def _publish(work: Path, target: Path) -> None:
    if target.exists():
        target.rmdir()  # empty, checked
    os.replace(work, target)


def _copy_index(index: Path, target: Path) -> int:
    """Copy the saved index (one whole version: it is replaced only by renames); its count."""
    try:
        data = index.read_bytes()  # one open file: a rename meanwhile does not change what it reads
    except FileNotFoundError:
        return 0
    atomic_write(target, data)
    try:
        return len(VectorIndex.load(target))  # verifies the checksum of the copy
    except IndexFileError as exc:
        raise IndexFileError(
            f"{index} is damaged, not backed up ({exc}); `twice check --repair` moves it aside"
        ) from None


def _snapshot_catalog(catalog_file: Path, target: Path) -> None:
    """One consistent copy of a live SQLite catalog (the online backup API)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(catalog_file, timeout=30)
    copy = sqlite3.connect(target)
    try:
        with copy:
            source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    finally:
        copy.close()
        source.close()


def _copy_images(store: ImageStore, work: Path, summary: BackupSummary) -> None:
    catalog = sqlite3.connect(work / CATALOG)
    try:
        rows = catalog.execute("SELECT id, sha256, stored_path FROM images ORDER BY id").fetchall()
        target = ImageStore(work / "images")
        for image_id, sha256, stored in rows:
            try:
                digest, size = _copy_file(store.path(stored), target.root / stored)
            except FileNotFoundError:
                summary.dropped.append(image_id)
                continue
            except OutsideStore as exc:  # kept as it is: `twice check` lists it
                LOG.warning("image %d not copied: %s", image_id, exc)
                continue
            summary.images += 1
            summary.bytes += size
            if digest != sha256:
                summary.damaged.append(image_id)
        if summary.dropped:
            LOG.info("%d images were deleted while the backup ran: left out", len(summary.dropped))
            catalog.execute("PRAGMA foreign_keys=ON")  # variants of a dropped image lose their parent
            with catalog:
                catalog.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in summary.dropped])
    finally:
        catalog.close()


def _copy_file(source: Path, target: Path) -> tuple[str, int]:
    """Copy, fsync, and return the sha256 and size of what was copied."""
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(COPY_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest(), size
