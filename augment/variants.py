"""Writing variants of catalogued originals: the library side of ``twice augment``.

Every original (a row with neither parent nor transform) gets one variant row per transform
spec (or ``+`` chain of specs), written through ``Indexer.add_bytes`` with ``parent_id`` and
the canonical ``transform`` so that the catalog records the link. Variant rows have no vector
until ``twice reindex``.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from sqlalchemy import select
from tqdm import tqdm

from twice.imageio import ImageError, read_file_bytes
from twice.indexer import ImageRow, Indexer

from .transforms import ORIGINAL_FOUR, VariantSpec, encode_jpeg, parse_transforms

LOG = logging.getLogger(__name__)

# Variants only need to be recognisable, not poster-sized: bounding the longer side keeps
# memory and store size sane for huge originals (and scale:2 of a bounded image stays sane).
DEFAULT_MAX_SIDE = 2048


@dataclass
class AugmentSummary:
    """What one augment run did; ``added`` counts new variant rows per transform."""

    originals: int = 0
    transforms: list[str] = field(default_factory=list)
    added: Counter = field(default_factory=Counter)
    existing: int = 0  # (original, transform) pairs already in the catalog
    identical: int = 0  # variant bytes equal to an image already stored (e.g. a symmetric picture)
    bounded: int = 0  # originals shrunk to max_side before transforming
    skipped: Counter = field(default_factory=Counter)  # reason -> originals or variants skipped
    seconds: float = 0.0

    @property
    def total_added(self) -> int:
        return sum(self.added.values())

    def to_dict(self) -> dict:
        return {
            **self.__dict__,
            "added": dict(self.added),
            "skipped": dict(self.skipped),
            "total_added": self.total_added,
        }

    def lines(self, hint: bool = True) -> list[str]:
        """Human summary; with ``hint``, a last line saying what to run next (when there is one)."""
        per = ", ".join(f"{n} {spec}" for spec, n in sorted(self.added.items()))
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        lines = [
            f"originals {self.originals}, transforms {','.join(self.transforms)}",
            f"added {self.total_added} variants"
            + (f" ({per})" if per else "")
            + f", already present {self.existing}, identical to a stored image {self.identical}",
            f"skipped {skipped}"
            + (f" ({reasons})" if reasons else "")
            + (f"; {self.bounded} large originals bounded" if self.bounded else ""),
            f"took {self.seconds:.1f}s",
        ]
        if not hint:
            return lines
        if not self.originals:
            lines.append("no originals in the catalog yet: add images with `twice reindex FOLDER` first")
        elif self.total_added:
            lines.append(f"run `twice reindex` to embed the {self.total_added} new variants")
        return lines


def variant_bytes(image: Image.Image, spec: VariantSpec) -> bytes:
    """The bytes to store for ``spec`` of ``image``: the JPEG itself for ``jpeg:q`` (its
    artefacts are the point), lossless PNG otherwise so the stored pixels are exactly the
    transform's output. A chain is stored as its last step stores what the others made."""
    *head, last = spec.steps
    for step in head:
        image = step.apply(image)
    if last.name == "jpeg":
        return encode_jpeg(image, last.values[0])
    image = last.apply(image)
    buffer = io.BytesIO()
    # Grey variants as 1-channel PNG: a third of the size, decoded back to the same RGB.
    # Level 1 encodes twice as fast as the default 6 for about 7% more bytes.
    (image.convert("L") if last.name == "gray" else image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def bound_image(image: Image.Image, max_side: int) -> tuple[Image.Image, bool]:
    """``image`` with its longer side at most ``max_side``; True when it had to shrink."""
    if max(image.size) <= max_side:
        return image, False
    bounded = image.copy()
    bounded.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return bounded, True


def originals(indexer: Indexer, ids: Iterable[int] | None = None) -> list[ImageRow]:
    """Catalogued originals (no parent, no transform), by id; only ``ids`` when given."""
    query = select(ImageRow).where(ImageRow.parent_id.is_(None), ImageRow.transform.is_(None))
    if ids is not None:
        query = query.where(ImageRow.id.in_([int(i) for i in ids]))
    with indexer.catalog.session() as session:
        return list(session.scalars(query.order_by(ImageRow.id)))


def existing_variants(indexer: Indexer) -> dict[int, set[str]]:
    """parent id -> transforms already catalogued for it."""
    query = select(ImageRow.parent_id, ImageRow.transform).where(
        ImageRow.parent_id.is_not(None), ImageRow.transform.is_not(None)
    )
    found: dict[int, set[str]] = {}
    with indexer.catalog.session() as session:
        for parent_id, transform in session.execute(query):
            found.setdefault(parent_id, set()).add(transform)
    return found


def augment_catalog(
    indexer: Indexer,
    specs: str | Iterable[str | VariantSpec] = ORIGINAL_FOUR,
    *,
    only_new: bool = False,
    ids: Iterable[int] | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    progress: bool = True,
) -> AugmentSummary:
    """Write the missing variants of every original (or of ``ids``); idempotent.

    ``only_new`` skips originals that already have any variant (quick after a crawl);
    otherwise every missing (original, transform) pair is filled in. Undecodable originals
    are logged, counted by reason and skipped.
    """
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16 pixels, not {max_side!r}")
    started = time.monotonic()
    parsed = parse_transforms(specs)
    summary = AugmentSummary(transforms=[s.canonical for s in parsed])
    rows = originals(indexer, ids)
    done = existing_variants(indexer)
    summary.originals = len(rows)
    # Pillow releases the GIL while transforming and encoding, so threads overlap that work.
    workers = max(1, int(indexer.options.workers))
    bar = tqdm(rows, desc="augmenting", unit="img", disable=not progress or not rows)
    with ThreadPoolExecutor(workers) as pool:
        for row in bar:
            have = done.get(row.id, set())
            todo = [] if only_new and have else [s for s in parsed if s.canonical not in have]
            summary.existing += len(parsed) - len(todo)
            if todo:
                _augment_one(indexer, row, todo, max_side, summary, pool)
                bar.set_postfix(added=summary.total_added, skipped=sum(summary.skipped.values()))
    bar.close()
    summary.seconds = time.monotonic() - started
    LOG.debug("augment: %s", "; ".join(summary.lines()))
    return summary


def _augment_one(
    indexer: Indexer,
    row: ImageRow,
    todo: list[VariantSpec],
    max_side: int,
    summary: AugmentSummary,
    pool: ThreadPoolExecutor,
) -> None:
    try:
        image = _load_original(indexer, row)
    except ImageError as exc:
        summary.skipped[exc.reason] += 1
        LOG.warning("skipped original #%d: %s", row.id, exc)
        return
    image, was_bounded = bound_image(image, max_side)
    summary.bounded += was_bounded
    meta = {"augment": {"bounded_from": [row.width, row.height]}} if was_bounded else None
    encoded = pool.map(lambda spec: variant_bytes(image, spec), todo)
    for spec, data in zip(todo, encoded, strict=True):
        _add_variant(indexer, row, data, spec, meta, summary)


def _load_original(indexer: Indexer, row: ImageRow) -> Image.Image:
    path = indexer.store.path(row.stored_path)
    data = read_file_bytes(path, indexer.options.max_image_bytes)
    return indexer.decode(data, str(path)).image


def _add_variant(
    indexer: Indexer, row: ImageRow, data: bytes, spec: VariantSpec, meta, summary: AugmentSummary
) -> None:
    canonical = spec.canonical
    try:
        added = indexer.add_bytes(
            data, source=f"{row.source}#{canonical}", parent_id=row.id, transform=canonical, meta=meta
        )
    except ImageError as exc:  # e.g. a variant over the byte or pixel limits
        summary.skipped[f"variant {exc.reason}"] += 1
        LOG.warning("skipped %s of #%d: %s", canonical, row.id, exc)
        return
    if added.created:
        summary.added[canonical] += 1
    else:
        summary.identical += 1
        LOG.debug("%s of #%d has the same bytes as #%d; not stored twice", canonical, row.id, added.row.id)
