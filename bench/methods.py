"""The competitors of ``bench quality``: twice's models through the product's own path
(``twice.library.Library``: ``add`` as ``twice reindex`` does, ``search`` as ``POST /search``
does), and imagededup's PHash as its users run it (and with the query's 8 dihedral variants)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from twice.imageio import ImageError, decode_image, read_file_bytes
from twice.library import Library
from twice.model import RANDOM_WEIGHTS, Embedder, pick_device, pick_precision, seeded_network
from twice.search import SearchEngine

from .calibration import BenchCalibration, store_thresholds
from .metrics import Hit

LOG = logging.getLogger(__name__)

PHASH_BITS = 64
PHASH_THRESHOLD = 10  # imagededup's default max_distance_threshold for find_duplicates


def random_embedder(options) -> Embedder:
    """A seeded random-init VGG-16 (the same weights twice falls back to without any)."""
    net = seeded_network(options.arch, options.embed_dim, options.invariance)
    device = pick_device(options.device)
    precision = pick_precision(device, options.precision)
    return Embedder.in_precision(
        net, RANDOM_WEIGHTS, options.image_size, device, precision, options.models_dir
    )


class EmbeddingMethod:
    """A twice model, its images added to a ``Library`` (``twice.open``), asked in one of two ways.

    ``search``: ``Library.search_json`` per query file, the whole product (exact bytes, hash
    evidence, CNN, combined verdicts); ``search_kwargs`` go to it as they are, so search variants
    (``tta=d4``) are compared by name. ``cnn``: the model alone, the query embedded and looked
    up in the FAISS index, a duplicate when the score reaches the model's duplicate threshold;
    this is the fair way to compare models. A method given ``base`` reuses that method's index.

    ``calibrator``, given a folder, fits thresholds on images that are never queried
    (``bench.calibration``); they are stored with the index, so search uses them, and a CNN-only
    method on the same index uses the CNN-alone rule fitted on the same pairs.
    """

    def __init__(
        self,
        name: str,
        options,
        embedder: Embedder,
        mode: str = "search",
        search_kwargs: dict | None = None,
        base: EmbeddingMethod | None = None,
        calibrator: Callable[[Path], BenchCalibration] | None = None,
    ) -> None:
        if mode not in ("search", "cnn"):
            raise ValueError(f"mode must be search or cnn, not {mode!r}")
        self.name, self.options, self.embedder, self.mode, self.base = name, options, embedder, mode, base
        self.search_kwargs = dict(search_kwargs or {})
        self.calibrator = calibrator
        self.calibration: BenchCalibration | None = None
        self.calibration_seconds = 0.0
        self.library: Library | None = None
        self.engine: SearchEngine | None = None
        self.threshold: float | None = None
        self.rule: str | None = None  # the duplicate rule in words, when it is more than a CNN cut

    def describe(self) -> str:
        d = self.embedder.describe()
        how = "FAISS top-k of the embedding only" if self.mode == "cnn" else "twice.open(...).search"
        extra = "".join(f", {k}={v}" for k, v in self.search_kwargs.items())
        shared = f"; reuses the index of {self.base.name}" if self.base is not None else ""
        model = f"{d['arch']} ({d['weights']} weights) at {d['image_size']} px, {d['precision']}"
        return f"{how}; {model}{extra}{shared}"

    def index(self, paths: list[Path], workdir: Path, progress: bool = False) -> None:
        if self.base is not None and self.base.library is not None:
            self.library, self.engine = self.base.library, self.base.engine
            self.calibration = self.base.calibration
        else:
            options = self.options.with_overrides(data_dir=workdir)
            self.library = Library(options, self.embedder)
            summary = self.library.add(paths, progress=progress)
            if summary.skipped:
                LOG.warning("%s: reindex skipped %s", self.name, dict(summary.skipped))
            if self.calibrator is not None:
                started = time.perf_counter()
                self.calibration = self.calibrator(workdir / "calibration")
                store_thresholds(options, self.calibration)
                self.calibration_seconds = time.perf_counter() - started
            self.engine = self.library.engine()  # opens the library after any calibration
        thresholds = self.engine.thresholds
        self.threshold = thresholds.duplicate
        if self.mode == "cnn" and self.calibration is not None:
            self.threshold = self.calibration.cnn_alone.cnn_min  # the CNN's own best rule
        elif self.mode == "search" and thresholds.hash_duplicate >= 0:
            self.rule = thresholds.duplicate_rule()

    def query_many(self, paths: list[Path], k: int, progress: bool = False) -> list[list[Hit]]:
        if self.mode == "cnn":
            return self._cnn_many(paths, k, progress)
        bar = tqdm(paths, desc=f"{self.name} queries", unit="q", disable=not progress)
        return [self.query(p, k) for p in bar]

    def query(self, path: Path, k: int) -> list[Hit]:
        """One query file through the library, as ``twice search`` and ``POST /search`` ask."""
        if self.library is None:
            raise RuntimeError(f"{self.name}: query before index")
        try:
            response = self.library.search_json(path, k, **self.search_kwargs)
        except TypeError as exc:
            raise ValueError(
                f"search variant {self.search_kwargs} not supported by this twice: {exc}"
            ) from exc
        return [
            Hit(
                Path(r["source"]),
                float(r["score"]),
                r["verdict"] == "duplicate",
                tuple(r["evidence"]["decided_by"]) if r["verdict"] == "duplicate" else (),
            )
            for r in response["results"]
        ]

    def _cnn_many(self, paths: list[Path], k: int, progress: bool) -> list[list[Hit]]:
        if self.engine is None:
            raise RuntimeError(f"{self.name}: query before index")
        answers = []
        batch = self.options.batch_size
        bar = tqdm(total=len(paths), desc=f"{self.name} queries", unit="q", disable=not progress)
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            images = [self._decode(p) for p in chunk]
            good = [image for image in images if image is not None]
            D, I = (
                self.engine.vectors.search(self.embedder.embed_images(good, batch), k) if good else ([], [])
            )
            rows = self.engine.catalog.get_many(int(i) for i in np.asarray(I).ravel() if i >= 0)
            answered = iter(zip(D, I, strict=True))
            for image in images:
                if image is None:  # unreadable query: no answers, counted as a miss
                    answers.append([])
                    continue
                scores, ids = next(answered)
                answers.append(
                    [
                        Hit(Path(rows[i].source), float(d), float(d) >= self.threshold)
                        for d, i in zip(scores.tolist(), ids.tolist(), strict=True)
                        if i in rows
                    ]
                )
            bar.update(len(chunk))
        bar.close()
        return answers

    def _decode(self, path: Path) -> Image.Image | None:
        o = self.options
        try:
            data = read_file_bytes(path, o.max_image_bytes)
            return decode_image(
                data, str(path), o.max_image_bytes, o.max_image_pixels, self.embedder.draft_side
            ).image
        except ImageError as exc:
            LOG.warning("%s: skipped query %s", self.name, exc)
            return None

    def close(self) -> None:
        if self.library is not None and self.base is None:
            self.library.close()


def dihedral_variants(image: Image.Image) -> list[Image.Image]:
    """The 8 symmetries of the square: 4 rotations, each with and without a mirror."""
    rotations = [image, *(image.rotate(angle, expand=True) for angle in (90, 180, 270))]
    return rotations + [r.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for r in rotations]


def hash_bits(hashes: list[str]) -> np.ndarray:
    """imagededup's 16-hex-digit hashes -> (N, 64) bits."""
    raw = np.array([int(h, 16) for h in hashes], dtype=np.uint64).astype(">u8")
    return np.unpackbits(raw.view(np.uint8).reshape(-1, 8), axis=1).astype(bool)


class PHashMethod:
    """imagededup's PHash: ``encode_images`` of each indexed folder, ``find_duplicates`` for the
    duplicate verdict (its default threshold of 10 bits), Hamming distance for the ranking.
    With ``dihedral`` the query is hashed in its 8 dihedral variants and the closest counts."""

    def __init__(self, dihedral: bool = False, threshold: int = PHASH_THRESHOLD) -> None:
        from imagededup.methods import PHash  # a bench extra: import only when asked for

        self.phasher = PHash(verbose=False)
        self.dihedral, self.threshold_bits = dihedral, threshold
        self.name = "phash-d4" if dihedral else "phash"
        self.threshold = 1 - threshold / PHASH_BITS
        self.keys: list[Path] = []
        self.bits = np.zeros((0, PHASH_BITS), bool)
        self.encodings: dict[str, str] = {}

    def describe(self) -> str:
        how = "query in 8 dihedral variants, closest wins" if self.dihedral else "as its users run it"
        return f"imagededup PHash, duplicate at <= {self.threshold_bits} bits, {how}"

    def index(self, paths: list[Path], workdir: Path, progress: bool = False) -> None:
        wanted = {str(p.resolve()) for p in paths}
        self.encodings = {k: c for k, c in self._encode_folders(paths).items() if k in wanted and c}
        self.keys = [Path(k) for k in self.encodings]
        self.bits = hash_bits(list(self.encodings.values()))

    def query_many(self, paths: list[Path], k: int, progress: bool = False) -> list[list[Hit]]:
        if self.dihedral:
            bar = tqdm(paths, desc=f"{self.name} queries", unit="q", disable=not progress)
            return [self._query_dihedral(p, k) for p in bar]
        codes = self._encode_folders(paths)
        duplicates = self._library_duplicates(codes)
        answers = []
        for path in paths:
            key = str(path.resolve())
            distance = self._distances(codes[key]) if codes.get(key) else np.full(len(self.keys), PHASH_BITS)
            flagged = np.array([str(p) in duplicates.get(key, ()) for p in self.keys], dtype=bool)
            answers.append(self._ranked(distance, flagged, k))
        return answers

    def _query_dihedral(self, path: Path, k: int) -> list[Hit]:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        codes = [self.phasher.encode_image(image_array=np.asarray(v)) for v in dihedral_variants(image)]
        distance = np.min([self._distances(c) for c in codes if c], axis=0)
        return self._ranked(distance, distance <= self.threshold_bits, k)

    def _ranked(self, distance: np.ndarray, flagged: np.ndarray, k: int) -> list[Hit]:
        order = np.argsort(distance, kind="stable")[:k]
        return [Hit(self.keys[i], 1 - float(distance[i]) / PHASH_BITS, bool(flagged[i])) for i in order]

    def _encode_folders(self, paths: list[Path]) -> dict[str, str]:
        codes = {}
        for folder in sorted({p.parent for p in paths}):
            for name, code in self.phasher.encode_images(image_dir=str(folder), num_enc_workers=1).items():
                codes[str((folder / name).resolve())] = code
        return codes

    def _distances(self, code: str) -> np.ndarray:
        return (self.bits != hash_bits([code])[0]).sum(axis=1)

    def _library_duplicates(self, queries: dict[str, str]) -> dict[str, set[str]]:
        """imagededup's own find_duplicates over indexed + query hashes, once for all queries."""
        found = self.phasher.find_duplicates(
            encoding_map={**self.encodings, **{k: c for k, c in queries.items() if c}},
            max_distance_threshold=self.threshold_bits,
            scores=True,
        )
        return {key: {name for name, _d in found.get(key, [])} for key in queries}

    def close(self) -> None:
        pass
