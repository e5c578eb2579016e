"""The FAISS vector store: vectors keyed by catalog id, one model version per index.

Exact inner product (``IDMap2,Flat``) while small; an inverted-file index (``IVF<n>,Flat``)
once the collection passes ``flat_limit`` vectors. Saved as one file (header + FAISS bytes +
checksum) written to a temporary name and renamed, so a crash never leaves half an index.
Adds between saves go to a write-ahead log beside the file (``vector_log``); ``load`` replays it.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import zlib
from pathlib import Path

import faiss
import numpy as np

from twice.files import atomic_write

from .vector_log import LogPosition, VectorLog, log_path

LOG = logging.getLogger(__name__)

MAGIC = b"TWICEVEC"
FILE_VERSION = 1
DEFAULT_FLAT_LIMIT = 200_000
DEFAULT_NPROBE = 32


class IndexFileError(RuntimeError):
    """A saved index that cannot be read; the message names the file."""


class IndexMismatchError(ValueError):
    """Vectors or an index from another model version or dimension."""


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 4·sqrt(n), at least 64, and few enough that
    k-means has the 39 training points per list FAISS asks for (tiny test indexes)."""
    return int(max(1, min(65536, max(64, 4 * math.sqrt(n)), n // 39)))


class VectorIndex:
    """A FAISS index of L2-normalised vectors whose ids are catalog ids."""

    def __init__(
        self,
        model_version: str,
        dim: int,
        index: faiss.Index | None = None,
        flat_limit: int = DEFAULT_FLAT_LIMIT,
        nprobe: int = DEFAULT_NPROBE,
    ) -> None:
        self.model_version = model_version
        self.dim = int(dim)
        self.flat_limit = flat_limit
        self.nprobe = nprobe
        self.index = index if index is not None else self._new_flat()
        self._lock = threading.RLock()
        self._gpu_index: faiss.Index | None = None
        self.use_gpu = False
        self.log_position: LogPosition | None = None  # how far ``load`` replayed the log

    # facts ------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return "ivf" if faiss.try_extract_index_ivf(self.index) is not None else "flat"

    @property
    def index_type(self) -> str:
        if self.kind == "flat":
            return "IDMap2,Flat"
        return f"IVF{faiss.extract_index_ivf(self.index).nlist},Flat"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """Every stored id, sorted."""
        with self._lock:
            if self.kind == "flat":
                return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
            return np.sort(self._ivf_ids()[1])

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, vectors), in id order; used by reports and index conversion."""
        with self._lock:
            if self.kind == "ivf":
                return self._ivf_vectors()
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            xb = self.index.index.reconstruct_n(0, len(ids)) if len(ids) else self._empty()
        if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
            return ids, xb  # already in id order: no second copy of every vector
        order = np.argsort(ids, kind="stable")
        return ids[order], xb[order]

    # changes ----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        """Add vectors under catalog ids; an id already present is replaced."""
        ids, xb = self._check(ids, xb)
        if len(ids) == 0:
            return
        with self._lock:
            self._remove(ids)
            if self.kind == "flat" and len(self) + len(ids) > self.flat_limit:
                self._convert_to_ivf(extra=(ids, xb))
            else:
                self.index.add_with_ids(xb, ids)
            self._gpu_index = None

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove ids (unknown ids are ignored); returns how many were removed."""
        with self._lock:
            removed = self._remove(np.asarray(ids, dtype=np.int64))
            self._gpu_index = None
            return removed

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: (D, I) of shape (nq, k); missing slots have id -1."""
        xq = self._check_queries(xq)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock:
            if len(self) == 0:
                return np.full((len(xq), k), -np.inf, "float32"), np.full((len(xq), k), -1)
            return self._searcher().search(xq, min(k, len(self)))

    # persistence ------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write to a temporary file, fsync, rename: readers see the old or the new index."""
        with self._lock:
            payload = faiss.serialize_index(self.index).tobytes()
            header = {
                "model_version": self.model_version,
                "dim": self.dim,
                "index_type": self.index_type,
                "count": len(self),
                "nprobe": self.nprobe,
                "flat_limit": self.flat_limit,
                "payload_bytes": len(payload),
                "payload_crc32": zlib.crc32(payload),
            }
        head = json.dumps(header).encode()
        blob = MAGIC + struct.pack("<II", FILE_VERSION, len(head)) + head + payload
        atomic_write(Path(path), blob)
        LOG.debug("saved %d vectors to %s", header["count"], path)

    @classmethod
    def load(
        cls, path: Path, model_version: str | None = None, dim: int | None = None, replay_log: bool = True
    ) -> VectorIndex:
        """Read a saved index, refusing a damaged file or another model version/dimension, and
        replay the adds its write-ahead log holds (unless ``replay_log`` is False)."""
        path = Path(path)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise IndexFileError(f"{path}: cannot read index file ({exc.strerror})") from exc
        header, payload = _split_file(path, blob)
        if model_version is not None and header["model_version"] != model_version:
            raise IndexMismatchError(
                f"{path} holds vectors of model {header['model_version']}, not {model_version}:"
                " run `twice reindex` to re-embed with the current model"
            )
        if dim is not None and header["dim"] != dim:
            raise IndexMismatchError(f"{path} holds {header['dim']}-d vectors, not {dim}-d")
        index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        loaded = cls(
            header["model_version"],
            header["dim"],
            index,
            flat_limit=header.get("flat_limit", DEFAULT_FLAT_LIMIT),
            nprobe=header.get("nprobe", DEFAULT_NPROBE),
        )
        if replay_log:
            loaded.replay(VectorLog(log_path(path), loaded.model_version, loaded.dim))
        return loaded

    def replay(self, log: VectorLog) -> int:
        """Add the log's records written since ``log_position``; returns how many."""
        records = log.read(self.log_position)
        if len(records):
            self.add(records.ids, records.xb)
        if records.position is not None:
            self.log_position = records.position
        return len(records)

    @staticmethod
    def read_header(path: Path) -> dict:
        """The header of a saved index without loading its vectors (checksum not verified)."""
        path = Path(path)
        with open(path, "rb") as handle:
            start = handle.read(len(MAGIC) + 8)
            if len(start) < len(MAGIC) + 8 or not start.startswith(MAGIC):
                raise IndexFileError(f"{path}: not a twice index file")
            _version, head_len = struct.unpack("<II", start[len(MAGIC) :])
            return json.loads(handle.read(head_len))

    def to_gpu(self) -> bool:
        """Search on GPU 0 from now on when FAISS sees a GPU; returns whether it does."""
        self.use_gpu = faiss.get_num_gpus() > 0
        self._gpu_index = None
        return self.use_gpu

    # internals --------------------------------------------------------------------------

    def _new_flat(self) -> faiss.Index:
        return faiss.index_factory(self.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)

    def _check(self, ids: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if xb.ndim != 2 or xb.shape[1] != self.dim:
            raise IndexMismatchError(f"vectors of shape {xb.shape} do not fit a {self.dim}-d index")
        if len(ids) != len(xb):
            raise ValueError(f"{len(ids)} ids for {len(xb)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        return ids, xb

    def _check_queries(self, xq: np.ndarray) -> np.ndarray:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim == 1:
            xq = xq[None, :]
        if xq.shape[1] != self.dim:
            raise IndexMismatchError(f"query of dimension {xq.shape[1]} for a {self.dim}-d index")
        return xq

    def _remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0 or len(self) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _convert_to_ivf(self, extra: tuple[np.ndarray, np.ndarray]) -> None:
        ids, xb = self.vectors()
        ids, xb = np.concatenate([ids, extra[0]]), np.concatenate([xb, extra[1]])
        nlist = ivf_nlist(len(ids))
        LOG.info("index passed %d vectors: converting to IVF%d,Flat", self.flat_limit, nlist)
        index = faiss.index_factory(self.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = xb[rng.choice(len(xb), size=min(len(xb), nlist * 64), replace=False)]
        index.train(sample)
        index.add_with_ids(xb, ids)
        self.index = index

    def _ivf_ids(self) -> tuple[list[int], np.ndarray]:
        """Each inverted list's size, and every stored id in list order."""
        invlists = faiss.extract_index_ivf(self.index).invlists
        sizes = [invlists.list_size(list_no) for list_no in range(invlists.nlist)]
        ids = np.empty(sum(sizes), np.int64)
        start = 0
        for list_no, n in enumerate(sizes):
            if n:
                ids[start : start + n] = faiss.rev_swig_ptr(invlists.get_ids(list_no), n)
                start += n
        return sizes, ids

    def _ivf_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) in id order, each list's codes written once, straight to its rows:
        at a million vectors, gathering the lists and then sorting held three copies."""
        sizes, ids = self._ivf_ids()
        order = np.argsort(ids, kind="stable")
        row = np.empty_like(order)
        row[order] = np.arange(len(order))
        xb = np.empty((len(ids), self.dim), np.float32)
        invlists = faiss.extract_index_ivf(self.index).invlists
        start = 0
        for list_no, n in enumerate(sizes):
            if n:
                codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), n * invlists.code_size)
                xb[row[start : start + n]] = codes.view(np.float32).reshape(n, self.dim)
                start += n
        return ids[order], xb

    def _searcher(self) -> faiss.Index:
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = self.nprobe
        if not self.use_gpu:
            return self.index
        if self._gpu_index is None:
            self._gpu_resources = getattr(self, "_gpu_resources", None) or faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
            if self.kind == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", self.nprobe)
        return self._gpu_index


def _split_file(path: Path, blob: bytes) -> tuple[dict, bytes]:
    fixed = len(MAGIC) + 8
    if len(blob) < fixed or not blob.startswith(MAGIC):
        raise IndexFileError(f"{path}: not a twice index file (bad magic or too short)")
    version, head_len = struct.unpack("<II", blob[len(MAGIC) : fixed])
    if version != FILE_VERSION:
        raise IndexFileError(f"{path}: index file version {version}, this twice reads {FILE_VERSION}")
    try:
        header = json.loads(blob[fixed : fixed + head_len])
    except ValueError as exc:
        raise IndexFileError(f"{path}: damaged index header") from exc
    payload = blob[fixed + head_len :]
    if len(payload) != header["payload_bytes"] or zlib.crc32(payload) != header["payload_crc32"]:
        raise IndexFileError(
            f"{path}: index file is truncated or damaged ({len(payload)} of"
            f" {header['payload_bytes']} payload bytes, checksum mismatch);"
            " delete it and run `twice reindex` to rebuild it from the catalog"
        )
    return header, payload
