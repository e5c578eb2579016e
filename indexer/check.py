"""``twice check``: verify a data directory the way ``PRAGMA integrity_check`` verifies SQLite.

What is checked, and what ``repair`` does where no guess is needed (anything else is listed):

- catalog damaged (``PRAGMA integrity_check``, foreign keys): a fault; restore a backup;
- index file damaged or truncated: moved aside, every image becomes pending;
- vectors whose catalog row is gone (orphans): dropped from the index;
- stored file missing, or bytes not matching the row's sha256: copied back from the row's
  source file when that file still has the same sha256;
- stored path leading outside the image store: listed (never served or deleted);
- perceptual hashes missing or of an older version: recomputed from the stored file;
- stray temporary files, files no row refers to, older than ``STRAY_AGE``: removed;
- images without a vector (pending): not a fault, the next reindex embeds them (``twice
  check --repair`` does, with the model).

A younger stray file may belong to a writer that is running now (a file is written before its
row commits), so it is noted, never removed.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from twice.files import ImageStore, OutsideStore, atomic_write, file_sha256
from twice.hashing import HASH_VERSION
from twice.imageio import ImageError, decode_image, read_file_bytes

from .catalog import Catalog
from .schema import ImageRow
from .store import Indexer, image_hashes
from .vectors import IndexFileError, VectorIndex

LOG = logging.getLogger(__name__)

STRAY_AGE = 600.0  # seconds: a younger unreferenced or temporary file may be mid-write


@dataclass
class Finding:
    """One kind of problem, the catalog ids (or files) it concerns, and what became of it."""

    kind: str
    message: str
    ids: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    fault: bool = True  # False: a note (pending images are a normal state)
    fixable: bool = False
    repaired: str = ""  # what repair did; empty when nothing

    @property
    def open(self) -> bool:
        """A fault that is still there."""
        return self.fault and not self.repaired

    def line(self) -> str:
        label = "REPAIRED" if self.repaired else ("FAULT" if self.fault else "note")
        listed = [*(f"#{i}" for i in self.ids[:10]), *self.files[:5]]
        more = len(self.ids) + len(self.files) - len(listed)
        where = f" ({', '.join(listed)}{f', and {more} more' if more > 0 else ''})" if listed else ""
        done = f": {self.repaired}" if self.repaired else ""
        return f"{label} {self.kind}: {self.message}{where}{done}"


@dataclass
class CheckReport:
    data_dir: str
    images: int = 0
    vectors: int = 0
    files_hashed: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.open for f in self.findings)

    @property
    def pending(self) -> int:
        return sum(len(f.ids) for f in self.findings if f.kind == "pending")

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        head = f"checked {self.data_dir}: {self.images} images, {self.vectors} vectors"
        faults = sum(f.open for f in self.findings)
        tail = "ok" if self.ok else f"{faults} fault{'s' * (faults != 1)} remain"
        return [head, *(f.line() for f in self.findings), tail]


def check_data_dir(options, repair: bool = False, hash_files: bool = True) -> CheckReport:
    """Check ``options.data_dir``; with ``repair``, fix what needs no guessing as it is found.

    ``hash_files=False`` checks presence and size instead of every file's sha256 (quick).
    """
    data_dir = Path(options.data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: no such data directory")
    report = CheckReport(str(data_dir))
    if not _catalog_intact(options, report):
        return report  # nothing else can be trusted
    catalog = Catalog(options.catalog_url)
    try:
        rows = _rows(catalog)
        report.images = len(rows)
        store = ImageStore(options.images_dir)
        _check_index(options, catalog, rows, report, repair)
        _check_files(store, rows, report, repair, hash_files)
        _check_hashes(options, catalog, store, rows, report, repair)
        _check_strays(options, rows, report, repair)
    finally:
        catalog.close()
    return report


# the catalog -----------------------------------------------------------------------------------


def sqlite_path(options) -> Path | None:
    """The catalog's SQLite file, or None for another database (PostgreSQL)."""
    url = options.catalog_url
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def _catalog_intact(options, report: CheckReport) -> bool:
    path = sqlite_path(options)
    if path is None:
        report.add(Finding("catalog", "not SQLite: the database server checks its own pages", fault=False))
        return True
    if not path.exists():
        raise ValueError(f"{path}: no catalog here (is --data-dir right?)")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
            problems = [] if problems == ["ok"] else problems
            problems += [f"foreign key {r}" for r in connection.execute("PRAGMA foreign_key_check")]
        connection.close()
    except sqlite3.OperationalError as exc:  # cannot open or read it (full disk, rights): not damage
        raise OSError(errno.EIO, f"cannot read the catalog ({exc})", str(path)) from exc
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems:
        report.add(
            Finding(
                "catalog_damaged",
                f"{path}: {'; '.join(problems[:5])}; restore a backup (`twice restore`)"
                " or try `sqlite3 catalog.sqlite .recover`",
            )
        )
    return not problems


@dataclass(frozen=True)
class Row:
    id: int
    sha256: str
    stored_path: str
    source: str
    bytes: int
    current_hash: bool


def _rows(catalog: Catalog) -> list[Row]:
    columns = (ImageRow.id, ImageRow.sha256, ImageRow.stored_path, ImageRow.source, ImageRow.bytes)
    current = ImageRow.phash.is_not(None) & (ImageRow.phash_version == HASH_VERSION)
    with catalog.session() as session:
        result = session.execute(select(*columns, current).order_by(ImageRow.id)).all()
    return [Row(*values[:5], bool(values[5])) for values in result]


# the vector index ------------------------------------------------------------------------------


def _check_index(options, catalog: Catalog, rows: list[Row], report: CheckReport, repair: bool) -> None:
    path = Path(options.index_path)
    ids = np.array([row.id for row in rows], dtype=np.int64)
    vector_ids = np.zeros(0, dtype=np.int64)
    if path.exists():
        try:
            vectors = VectorIndex.load(path)
        except IndexFileError as exc:
            finding = report.add(Finding("index_damaged", str(exc), fixable=True))
            if not repair:
                return  # which images have vectors is unknown
            aside = path.with_name(f"{path.name}.damaged-{_stamp()}")
            os.replace(path, aside)
            finding.repaired = f"moved to {aside.name}; every image is now pending"
        else:
            vector_ids = vectors.ids()
            report.vectors = len(vector_ids)
            orphans = np.setdiff1d(vector_ids, ids, assume_unique=True)
            if len(orphans):
                finding = report.add(
                    Finding(
                        "orphan_vectors",
                        "vectors whose image is not catalogued",
                        orphans.tolist(),
                        fixable=True,
                    )
                )
                if repair:
                    _drop_orphans(options, vectors)
                    finding.repaired = "dropped from the index"
                    vector_ids = np.intersect1d(vector_ids, ids, assume_unique=True)
                    report.vectors = len(vector_ids)
    pending = np.setdiff1d(ids, vector_ids, assume_unique=True)
    if len(pending):
        message = "images without a vector yet: `twice reindex` (or `twice check --repair`) embeds them"
        report.add(Finding("pending", message, pending.tolist(), fault=False, fixable=True))


def _drop_orphans(options, vectors: VectorIndex) -> None:
    indexer = Indexer(options, vectors.model_version, vectors.dim)
    try:
        indexer.drop_orphans()
        indexer.save()  # under the index file lock, merging what another writer saved
    finally:
        indexer.close()


# stored files ----------------------------------------------------------------------------------


def _check_files(
    store: ImageStore, rows: list[Row], report: CheckReport, repair: bool, hash_files: bool
) -> None:
    missing, corrupt, outside = [], [], []
    for row in rows:
        try:
            path = store.path(row.stored_path)
        except OutsideStore:
            outside.append(row)
            continue
        if not path.is_file():
            missing.append(row)
        elif hash_files:
            report.files_hashed += 1
            if file_sha256(path) != row.sha256:
                corrupt.append(row)
        elif path.stat().st_size != row.bytes:
            corrupt.append(row)
    if outside:
        message = "stored path leads outside the image store: never served or deleted; delete the row"
        report.add(Finding("outside_store", message, [r.id for r in outside]))
    for kind, broken, what in (
        ("missing_file", missing, "stored file is missing"),
        ("corrupt_file", corrupt, "stored bytes do not match the catalog's sha256"),
    ):
        if broken:
            _report_broken_files(store, kind, what, broken, report, repair)


def _report_broken_files(
    store, kind: str, what: str, rows: list[Row], report: CheckReport, repair: bool
) -> None:
    restorable = [row for row in rows if _source_matches(row)]
    hint = "" if restorable else "; restore a backup or delete these images"
    finding = report.add(Finding(kind, what + hint, [r.id for r in rows], fixable=bool(restorable)))
    if not repair or not restorable:
        return
    for row in restorable:
        atomic_write(store.path(row.stored_path), Path(row.source).read_bytes())
    left = [r.id for r in rows if r not in restorable]
    if left:  # part repaired: the rest stay a fault of their own
        finding.ids = [r.id for r in restorable]
        report.add(Finding(kind, what + "; restore a backup or delete these images", left))
    finding.repaired = f"copied {len(restorable)} back from their source files"


def _source_matches(row: Row) -> bool:
    source = Path(row.source)
    try:
        return source.is_absolute() and source.is_file() and file_sha256(source) == row.sha256
    except OSError:
        return False


# perceptual hashes -----------------------------------------------------------------------------


def _check_hashes(
    options, catalog, store: ImageStore, rows: list[Row], report: CheckReport, repair: bool
) -> None:
    stale = [row for row in rows if not row.current_hash]
    if not stale:
        return
    message = f"perceptual hashes missing or not of version {HASH_VERSION}: search ignores them"
    finding = report.add(Finding("stale_hashes", message, [r.id for r in stale], fixable=True))
    if not repair:
        return
    values, failed = [], []
    for row in stale:
        try:
            data = read_file_bytes(store.path(row.stored_path), options.max_image_bytes)
            image = decode_image(
                data, row.stored_path, options.max_image_bytes, options.max_image_pixels
            ).image
        except (ImageError, OutsideStore, OSError) as exc:
            LOG.warning("cannot hash image %d: %s", row.id, exc)
            failed.append(row.id)
            continue
        values.append({"id": row.id, **image_hashes(image), "phash_version": HASH_VERSION})
    if values:
        with catalog.session() as session:
            session.execute(update(ImageRow), values)
        finding.ids = [v["id"] for v in values]
        finding.repaired = f"recomputed {len(values)}"
    if failed:
        report.add(Finding("stale_hashes", "cannot be hashed: their stored file is unreadable", failed))


# stray files -----------------------------------------------------------------------------------


def _check_strays(options, rows: list[Row], report: CheckReport, repair: bool) -> None:
    referenced = {row.stored_path for row in rows}
    images = Path(options.images_dir)
    temporary = [path for path in _files(Path(options.data_dir)) if _is_temporary(path)]
    unreferenced = [
        path
        for path in _files(images)
        if not _is_temporary(path) and path.relative_to(images).as_posix() not in referenced
    ]
    for kind, paths, what in (
        ("temporary_files", temporary, "temporary files a crashed writer left"),
        ("unreferenced_files", unreferenced, "files in the image store that no image row refers to"),
    ):
        _report_strays(kind, what, paths, report, repair, options.data_dir)


def _report_strays(kind: str, what: str, paths: list[Path], report, repair: bool, data_dir: Path) -> None:
    now = time.time()
    old = [p for p in paths if now - p.lstat().st_mtime >= STRAY_AGE]
    young = [p for p in paths if p not in old]
    names = [str(p.relative_to(data_dir)) for p in old]
    if old:
        finding = report.add(Finding(kind, what, files=names, fixable=True))
        if repair:
            for path in old:
                path.unlink(missing_ok=True)
            finding.repaired = f"removed {len(old)}"
    if young:
        message = f"{what}, younger than {STRAY_AGE:.0f}s: a writer may be using them"
        report.add(Finding(kind, message, files=[str(p.relative_to(data_dir)) for p in young], fault=False))


def _files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        for root, _dirs, names in os.walk(folder):
            for name in names:
                yield Path(root) / name


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")  # files.atomic_write's names


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
