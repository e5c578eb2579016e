"""What ``twice reindex`` remembers of the files it read: path, size, mtime and the sha256 of
their bytes (the ``source_files`` table), so a re-run skips unchanged files without reading them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from .schema import SourceFile

# SQLite allows 32766 bound parameters per statement; PostgreSQL 65535.
_CHUNK = 5000


class Stamped(Protocol):
    size: int
    mtime_ns: int


def seen_source_files(catalog) -> dict[str, tuple[int, int, str]]:
    """{path: (size, mtime_ns, sha256)} of every file a reindex has read."""
    with catalog.session() as session:
        rows = session.execute(
            select(SourceFile.path, SourceFile.size, SourceFile.mtime_ns, SourceFile.sha256)
        )
        return {path: (size, mtime_ns, sha) for path, size, mtime_ns, sha in rows}


def record_source_files(session: Session, files: Sequence[tuple[str, Stamped, str]]) -> None:
    """Remember (path, stamp, sha256) of files just read, replacing what was known of them."""
    if not files:
        return
    latest = {path: (stamp, sha) for path, stamp, sha in files}  # a path listed twice: the last
    paths = list(latest)
    for start in range(0, len(paths), _CHUNK):
        session.execute(delete(SourceFile).where(SourceFile.path.in_(paths[start : start + _CHUNK])))
    values = [
        {"path": path, "size": stamp.size, "mtime_ns": stamp.mtime_ns, "sha256": sha}
        for path, (stamp, sha) in latest.items()
    ]
    session.execute(insert(SourceFile), values)
