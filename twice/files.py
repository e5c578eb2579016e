"""Crash-safe file writes and the content-addressed image store."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SUFFIX_BY_FORMAT = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename. ``durable=False``
    skips the fsyncs (readers still never see half a file): the caller syncs later, off its
    critical path (``sync_files``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
        return self.root / relative

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)
