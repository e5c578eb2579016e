"""Crash-safe file writes, file digests and the content-addressed image store."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

LOG = logging.getLogger(__name__)

SUFFIX_BY_FORMAT = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


READ_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename. ``durable=False``
    skips the fsyncs (readers still never see half a file): the caller syncs later, off its
    critical path (``sync_files``).

    On failure (a full disk: ENOSPC) ``path`` is as it was, the temporary file is gone, and
    the ``OSError`` names ``path``: a bare "No space left on device" does not say where.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    if durable:
        fsync_dir(path.parent)


def sync_files(paths: list[Path]) -> None:
    """Make files written with ``durable=False`` durable: each file, then each folder once."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in {path.parent for path in paths}:
        fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """Image bytes stored once, under ``root/ab/<sha256><suffix>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def relative_path(self, sha256: str, image_format: str) -> str:
        return f"{sha256[:2]}/{sha256}{SUFFIX_BY_FORMAT.get(image_format, '.img')}"

    def put(self, data: bytes, sha256: str, image_format: str, durable: bool = True) -> str:
        """Store the bytes (idempotent); returns the path relative to the store. With
        ``durable=False`` the caller makes them durable (``sync_files``) before relying on them."""
        relative = self.relative_path(sha256, image_format)
        target = self.root / relative
        if not target.exists() or target.stat().st_size != len(data):
            atomic_write(target, data, durable)
        return relative

    def path(self, relative: str) -> Path:
        """The file of a stored path, never outside the store: ``OutsideStore`` for a path
        that leaves it (``..``, absolute, or a symbolic link inside pointing out). Catalog
        rows are data, and a row written by another tool must not make us serve or delete
        ``/etc/passwd``."""
        path = self.root / relative
        resolved, root = path.resolve(), self.root.resolve()
        if not resolved.is_relative_to(root) or resolved == root:
            raise OutsideStore(f"stored path {relative!r} leads outside the image store {self.root}")
        return path

    def remove(self, relative: str) -> bool:
        """Delete a stored file; False (and a warning) for a path outside the store."""
        try:
            path = self.path(relative)
        except OutsideStore as exc:
            LOG.warning("not deleting: %s", exc)
            return False
        path.unlink(missing_ok=True)
        return True


class OutsideStore(ValueError):
    """A stored path that would leave the image store."""
