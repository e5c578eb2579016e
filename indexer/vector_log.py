"""The write-ahead log of vector adds that sits beside an index file (``vectors.twice.log``).

Rewriting the whole index for one upload costs time in proportion to the index; appending one
record to this log and fsyncing it does not. ``VectorIndex.load`` replays the log after the index
file, and ``Indexer.save`` folds it into the file (rewrite, rename, then delete the log).

Layout: ``MAGIC``, ``<II`` (file version, header length), a JSON header (model version, dim and
a random token that names this log, so a reader can tell a new log from the one it read), then
fixed-size records: ``<q`` id, ``<I`` crc32 of the id and vector bytes, ``dim`` float32. Fixed
sizes mean a torn tail (a crash mid-append) is a partial record, cut off by the next append, and
a record whose checksum fails is skipped without losing the records after it. Only whole,
fsynced appends are acknowledged, so every acknowledged add is replayed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twice.files import atomic_write, fsync_dir

LOG = logging.getLogger(__name__)

MAGIC = b"TWICELOG"
FILE_VERSION = 1
_FIXED = len(MAGIC) + 8
HEADER_READ = 64 * 1024  # more than any header: read first, then seek to the records wanted


def log_path(index_path: Path) -> Path:
    """The log that belongs to ``index_path``."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".log")


@dataclass(frozen=True)
class LogPosition:
    """How far a reader has read one log: its token and the byte offset after the last record."""

    token: str
    offset: int


@dataclass
class LogRecords:
    """Records read from a log: ids, vectors (later records win on a repeated id), and where
    reading stopped."""

    ids: np.ndarray
    xb: np.ndarray
    position: LogPosition | None
    bad: int = 0  # records skipped for a failed checksum

    def __len__(self) -> int:
        return len(self.ids)


class VectorLog:
    """Append-only (id, vector) records of one model version and dimension."""

    def __init__(self, path: Path, model_version: str, dim: int) -> None:
        self.path = Path(path)
        self.model_version = model_version
        self.dim = int(dim)
        self.record_bytes = 12 + 4 * self.dim
        self._dtype = np.dtype([("id", "<i8"), ("crc", "<u4"), ("x", "<f4", (self.dim,))])

    def exists(self) -> bool:
        return self.path.exists()

    def read(self, after: LogPosition | None = None) -> LogRecords:
        """Records after ``after`` (all of them when it is None or names another log). A log of
        another model version or dimension holds nothing for this index and reads as empty."""
        try:
            with open(self.path, "rb") as handle:
                header, start = self._header(handle.read(HEADER_READ))
                if header is None:
                    return self._empty(None)
                position = LogPosition(header["token"], start)
                if after is not None and after.token == position.token:
                    start = max(start, after.offset)  # only what was appended since: no re-read
                handle.seek(start)
                blob = handle.read()
        except FileNotFoundError:
            return self._empty(None)
        if header["model_version"] != self.model_version or header["dim"] != self.dim:
            LOG.warning(
                "ignoring %s: it holds vectors of model %s (%d-d), not %s",
                self.path,
                header["model_version"],
                header["dim"],
                self.model_version,
            )
            return self._empty(position)
        whole = len(blob) // self.record_bytes
        end = start + whole * self.record_bytes
        records = np.frombuffer(blob, dtype=self._dtype, count=whole)
        good = np.array([self._crc(r["id"], r["x"]) == r["crc"] for r in records], dtype=bool)
        bad = int(whole - good.sum())
        if bad:
            LOG.warning("%s: skipped %d damaged records (a crash mid-append)", self.path, bad)
        ids, xb = _last_wins(records["id"][good].astype(np.int64), records["x"][good])
        return LogRecords(
            ids, np.ascontiguousarray(xb, dtype=np.float32), LogPosition(position.token, end), bad
        )

    def append(self, ids: np.ndarray, xb: np.ndarray) -> LogPosition:
        """Append records and fsync them; returns the position after them. The caller holds the
        index's file lock, so appends from several processes never interleave."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if xb.shape != (len(ids), self.dim):
            raise ValueError(f"log of {self.dim}-d vectors: got ids {ids.shape} and vectors {xb.shape}")
        token, start = self._open_for_append()
        records = np.empty(len(ids), dtype=self._dtype)
        records["id"], records["x"] = ids, xb
        records["crc"] = [self._crc(i, x) for i, x in zip(ids, xb, strict=True)]
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, start)  # a torn tail from a crash mid-append goes here
            os.lseek(fd, start, os.SEEK_SET)
            data = records.tobytes()
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        return LogPosition(token, start + len(data))

    def remove(self) -> None:
        """Delete the log (its records are in the index file now)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)

    # internals ------------------------------------------------------------------------------

    def _open_for_append(self) -> tuple[str, int]:
        """(token, offset of the end of the last whole record), making a new log if there is
        none or the one there is of another model or damaged."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size:
            with open(self.path, "rb") as handle:
                header, start = self._header(handle.read(HEADER_READ))
            if header is not None and (header["model_version"], header["dim"]) == (
                self.model_version,
                self.dim,
            ):
                return header["token"], start + (size - start) // self.record_bytes * self.record_bytes
            LOG.warning("replacing %s: not a log of model %s", self.path, self.model_version)
        token = secrets.token_hex(8)
        head = json.dumps({"model_version": self.model_version, "dim": self.dim, "token": token}).encode()
        blob = MAGIC + struct.pack("<II", FILE_VERSION, len(head)) + head
        atomic_write(self.path, blob)  # readers never see half a header
        return token, len(blob)

    def _header(self, blob: bytes) -> tuple[dict | None, int]:
        if len(blob) < _FIXED or not blob.startswith(MAGIC):
            if blob:
                LOG.warning("%s: not a twice vector log; ignored", self.path)
            return None, 0
        version, head_len = struct.unpack("<II", blob[len(MAGIC) : _FIXED])
        try:
            if version != FILE_VERSION:
                raise ValueError(f"version {version}")
            return json.loads(blob[_FIXED : _FIXED + head_len]), _FIXED + head_len
        except ValueError as exc:
            LOG.warning("%s: unreadable log header (%s); ignored", self.path, exc)
            return None, 0

    @staticmethod
    def _crc(image_id: np.integer, x: np.ndarray) -> int:
        return zlib.crc32(np.asarray(x, "<f4").tobytes(), zlib.crc32(struct.pack("<q", int(image_id))))

    def _empty(self, position: LogPosition | None) -> LogRecords:
        return LogRecords(np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32), position)


def _last_wins(ids: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One record per id, the latest one (an id written twice was replaced)."""
    if len(ids) < 2:
        return ids, xb
    _, first_from_end = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - first_from_end)
    return ids[keep], xb[keep]
