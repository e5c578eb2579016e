"""The FAISS vector store: vectors keyed by catalog id, one model version per index.

Chosen by the collection's size (``index_spec``): exact inner product (``IDMap2,Flat``) while
small; an inverted-file index (``IVF<n>,Flat``) once the collection passes ``flat_limit`` vectors;
past ``compress_limit`` the same inverted file with 8-bit scalar-quantised codes
(``IVF<n>,SQ8``: 256 bytes a 256-d vector instead of 1024, recall@10 measured by ``twice bench
index``). A large index is trained once on a sample (``VectorIndex.trained``) and then filled
batch by batch, or shard by shard (``merge_shards``). Saved as one file (header + FAISS bytes +
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
DEFAULT_COMPRESS_LIMIT = 1_000_000
DEFAULT_NPROBE = 32
TRAIN_POINTS_PER_LIST = 64  # k-means sample: FAISS wants 39 to 256 points per list


class IndexFileError(RuntimeError):
    """A saved index that cannot be read; the message names the file."""


class IndexMismatchError(ValueError):
    """Vectors or an index from another model version or dimension."""


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 4·sqrt(n), at least 64, and few enough that
    k-means has the 39 training points per list FAISS asks for (tiny test indexes)."""
    return int(max(1, min(65536, max(64, 4 * math.sqrt(n)), n // 39)))


def index_spec(
    n: int, flat_limit: int = DEFAULT_FLAT_LIMIT, compress_limit: int = DEFAULT_COMPRESS_LIMIT
) -> str:
    """The FAISS factory string twice uses for ``n`` vectors."""
    if n <= flat_limit:
        return "IDMap2,Flat"
    return f"IVF{ivf_nlist(n)},{'SQ8' if n > compress_limit else 'Flat'}"


def train_sample(xb: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """The rows k-means trains on: ``TRAIN_POINTS_PER_LIST`` a list, drawn with a seed."""
    rng = np.random.default_rng(seed)
    return xb[rng.choice(len(xb), size=min(len(xb), nlist * TRAIN_POINTS_PER_LIST), replace=False)]


class VectorIndex:
    """A FAISS index of L2-normalised vectors whose ids are catalog ids."""

    def __init__(
        self,
        model_version: str,
        dim: int,
        index: faiss.Index | None = None,
        flat_limit: int = DEFAULT_FLAT_LIMIT,
        nprobe: int = DEFAULT_NPROBE,
        compress_limit: int = DEFAULT_COMPRESS_LIMIT,
    ) -> None:
        self.model_version = model_version
        self.dim = int(dim)
        self.flat_limit = flat_limit
        self.compress_limit = compress_limit
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self.index = index if index is not None else self._new_flat()
        self._gpu_index: faiss.Index | None = None
        self.use_gpu = False
        self.log_position: LogPosition | None = None  # how far ``load`` replayed the log

    @classmethod
    def trained(
        cls, model_version: str, sample: np.ndarray, expected: int, nprobe: int = DEFAULT_NPROBE, **limits
    ) -> VectorIndex:
        """An empty index of the kind ``expected`` vectors call for, trained once on ``sample``
        (a few hundred thousand rows are plenty), ready to be filled batch by batch."""
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if sample.ndim != 2 or not len(sample):
            raise ValueError(f"a training sample must be a non-empty 2-d array, got shape {sample.shape}")
        vectors = cls(model_version, sample.shape[1], nprobe=nprobe, **limits)
        spec = index_spec(expected, vectors.flat_limit, vectors.compress_limit)
        if spec.startswith("IVF"):
            vectors.index = _train(spec, train_sample(sample, ivf_nlist(expected)))
        return vectors

    @property
    def index(self) -> faiss.Index:
        return self._index

    @index.setter
    def index(self, index: faiss.Index) -> None:
        with self._lock:
            self._index = index
            self.forget_id_bound()

    def forget_id_bound(self) -> None:
        """Say that ids reached the FAISS index other than through ``add`` (a new index, a merge)."""
        self._id_bound: int | None = None  # unknown until ``_max_id`` reads the ids

    # facts ------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``flat`` (exact) or ``ivf`` (approximate, searched with ``nprobe`` lists)."""
        return "ivf" if faiss.try_extract_index_ivf(self.index) is not None else "flat"

    @property
    def compressed(self) -> bool:
        """Whether the index stores 8-bit codes rather than the vectors themselves."""
        return isinstance(self.index, faiss.IndexIVFScalarQuantizer)

    @property
    def index_type(self) -> str:
        if self.kind == "flat":
            return "IDMap2,Flat"
        return f"IVF{faiss.extract_index_ivf(self.index).nlist},{'SQ8' if self.compressed else 'Flat'}"

    @property
    def bytes_per_vector(self) -> int:
        """Memory a stored vector takes: its code and its 8-byte id."""
        code = faiss.extract_index_ivf(self.index).code_size if self.kind == "ivf" else 4 * self.dim
        return int(code) + 8

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
            if int(ids.min()) <= self._max_id():  # new catalog ids are above every stored one
                self._remove(ids)
            grown = index_spec(len(self) + len(ids), self.flat_limit, self.compress_limit)
            if _rank(grown) > _rank(self.index_type):  # only ever forward: flat, IVF, IVF-SQ8
                self._convert(extra=(ids, xb))
            else:
                self.index.add_with_ids(xb, ids)
            self._id_bound = max(self._max_id(), int(ids.max()))
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
                "compress_limit": self.compress_limit,
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
            compress_limit=header.get("compress_limit", DEFAULT_COMPRESS_LIMIT),
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

    def _max_id(self) -> int:
        """An upper bound of the stored ids (-1: none): the largest id ever added to this FAISS
        index. Read from the index once; removals leave it an upper bound."""
        if self._id_bound is None:
            ids = self.ids()
            self._id_bound = int(ids[-1]) if len(ids) else -1
        return self._id_bound

    def _remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0 or len(self) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _convert(self, extra: tuple[np.ndarray, np.ndarray]) -> None:
        ids, xb = self.vectors()
        ids, xb = np.concatenate([ids, extra[0]]), np.concatenate([xb, extra[1]])
        spec = index_spec(len(ids), self.flat_limit, self.compress_limit)
        LOG.info("index grew to %d vectors: converting %s to %s", len(ids), self.index_type, spec)
        index = _train(spec, train_sample(xb, ivf_nlist(len(ids))))
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
        ivf = faiss.downcast_index(faiss.extract_index_ivf(self.index))
        invlists = ivf.invlists
        start = 0
        for list_no, n in enumerate(sizes):
            if n:
                codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), n * invlists.code_size)
                xb[row[start : start + n]] = self._decode(ivf, list_no, codes.reshape(n, -1))
                start += n
        return ids[order], xb

    def _decode(self, ivf: faiss.IndexIVF, list_no: int, codes: np.ndarray) -> np.ndarray:
        if not self.compressed:
            return codes.view(np.float32)
        xb = ivf.sq.decode(codes)
        return xb + ivf.quantizer.reconstruct(list_no) if ivf.by_residual else xb

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


def _rank(spec: str) -> int:
    """0 exact, 1 inverted file, 2 compressed inverted file."""
    return 0 if not spec.startswith("IVF") else 2 if spec.endswith("SQ8") else 1


def _train(spec: str, sample: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(sample.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    return index


def merge_shards(vectors: VectorIndex, shards: list[VectorIndex]) -> None:
    """Move the vectors of ``shards`` (filled from ``vectors``' trained, empty index, e.g. one
    per Ray worker or per batch of a large reindex) into ``vectors``: the inverted lists are
    merged code by code, with no retraining and no decode/encode round trip."""
    if len(vectors):
        raise ValueError(f"merge_shards needs an empty trained index, this one holds {len(vectors)} vectors")
    if vectors.kind != "ivf":
        raise ValueError(f"merge_shards needs an IVF index, not {vectors.index_type}")
    for shard in shards:
        if shard.index_type != vectors.index_type or shard.dim != vectors.dim:
            raise IndexMismatchError(
                f"shard {shard.index_type} ({shard.dim}-d) does not fit {vectors.index_type}"
            )
        vectors.index.merge_from(shard.index, 0)
    vectors.forget_id_bound()


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
