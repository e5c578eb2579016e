"""Training images: where they come from, held-out split, and (anchor, positive) pairs.

Only sources the project may use: images it generates (``augment.make_collection``),
scikit-image's bundled samples, Debian's ``openclipart-png`` and ``tuxpaint-stamps-default``
(when installed), and folders the user names. The images ``twice bench quality`` draws by
default are left out (``exclude_bench``), so the bench measures images the model never saw.
Every image is decoded once, shrunk, and kept in memory; a pair is a pure function of
``(seed, epoch, index)``, so a run resumed mid-epoch sees exactly the batches an
uninterrupted run would have seen, whatever the worker count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from twice.augment import FamilyAugment, SeededViews, Step, make_collection
from twice.augment.sources import APT_SOURCES, HELD_OUT_DRAW, SOURCE_NAMES, drawn_names
from twice.imageio import ImageError, iter_image_files, load_image

from .embedder import Preprocess

LOG = logging.getLogger(__name__)

SOURCES = SOURCE_NAMES  # the same built-in sources the bench draws from
SYNTHETIC_SEED = 1000
# scikit-image loader name -> its file name, where they differ (the bench names loaders).
SKIMAGE_FILE_STEMS = {
    "cat": "chelsea",
    "immunohistochemistry": "ihc",
    "shepp_logan_phantom": "phantom",
    "colorwheel": "color",
    "clock": "clock_motion",
    "checkerboard": "chessboard_GRAY",
}
MIN_SIDE = 24  # smaller images (icons, spacers) teach nothing at the training size
# Sibling negatives: drawings filed in one folder (the cards of one deck, the pieces of one jigsaw,
# the icons of one theme) share their layout, and the CNN scores them 0.75-0.99 alike, so they
# come out as `duplicate` (bench.negatives). A batch slot given to a folder-mate of another image
# of the batch is a hard negative for it. Files whose 16 x 16 grey thumbnails differ by less than
# this (mean levels) are the same drawing filed twice, never a negative.
SAME_DRAWING_LEVELS = 4.0
FOLDER_KEY = "twice_folder"  # where ``load_images`` notes each image's folder (PIL ``info``)

# Positive views: the registry's transforms, with the ones the original system failed on
# (quarter turns, mirror, flips) and the light shifts drawn more often than in DEFAULT_STEPS:
# a short trial had light shifts, grey and blur as the slowest transforms to learn.
TRAIN_STEPS: tuple[Step, ...] = (
    Step("crop", 0.4, 0.6, 0.95),
    Step("rotate", 0.5, choices=(90, 180, 270)),
    Step("mirror", 0.5),
    Step("flip", 0.2),
    Step("tilt", 0.2, -12.0, 12.0),
    Step("scale", 0.3, 0.3, 1.5),
    Step("bright", 0.4, 20, 110),
    Step("dark", 0.4, 20, 90),
    Step("gray", 0.2),
    Step("blur", 0.2, 0.5, 2.5),
    Step("overlay", 0.1),
    Step("jpeg", 0.4, 15, 90),
)
# With d4 pooling, quarter turns and flips are exact by construction: the positives teach the
# rest, with grey and blur (the slowest to learn in the earlier runs) drawn more often. Anchor
# and positive share one random pose, so the single view learns in every orientation.
D4_STEPS: tuple[Step, ...] = (
    Step("crop", 0.5, 0.6, 0.95),
    Step("tilt", 0.3, -12.0, 12.0),
    Step("scale", 0.3, 0.3, 1.5),
    Step("bright", 0.4, 20, 110),
    Step("dark", 0.4, 20, 90),
    Step("gray", 0.3),
    Step("blur", 0.3, 0.5, 2.5),
    Step("overlay", 0.15),
    Step("jpeg", 0.4, 15, 90),
)
STEPS_FOR_INVARIANCE = {"d4": D4_STEPS, "none": TRAIN_STEPS}


@dataclass
class Sources:
    """What to gather: named built-in sources plus user folders."""

    names: Sequence[str] = SOURCES
    folders: Sequence[Path] = ()
    synthetic_count: int = 2000
    max_per_source: int = 1500
    seed: int = 0
    exclude_bench: bool = True  # keep `twice bench quality`'s default images out of training

    def __post_init__(self) -> None:
        for name in self.names:
            if name not in SOURCES:
                raise ValueError(f"unknown training source {name!r}; choose from {', '.join(SOURCES)}")
        if self.synthetic_count < 0 or self.max_per_source < 1:
            raise ValueError(
                f"synthetic_count must be >= 0 and max_per_source >= 1, not"
                f" {self.synthetic_count!r} and {self.max_per_source!r}"
            )


def gather_paths(sources: Sources, cache_dir: Path) -> dict[str, list[Path]]:
    """Image files per source; generated ones are written under ``cache_dir`` once."""
    found: dict[str, list[Path]] = {}
    bench_named = {"skimage", "openclipart", "tuxpaint"} & set(sources.names)
    excluded = drawn_names(HELD_OUT_DRAW) if sources.exclude_bench and bench_named else {}
    for name in sources.names:
        if name == "synthetic":
            # Collection seed 1000+: the bench draws its synthetic images from collection 0.
            paths = make_collection(
                cache_dir / "synthetic", sources.synthetic_count, SYNTHETIC_SEED + sources.seed, (256, 192)
            )
        elif name == "skimage":
            paths = _drop_excluded(name, skimage_samples(), excluded.get(name, set()))
        else:
            package, folder = APT_SOURCES[name]
            if not folder.is_dir():
                LOG.warning("source %s skipped: %s not found (apt-get install %s)", name, folder, package)
                continue
            paths = _drop_excluded(name, list(iter_image_files([folder])), excluded.get(name, set()))
        found[name] = _subsample(paths, sources.max_per_source, sources.seed)
    for folder in sources.folders:
        found[str(folder)] = list(iter_image_files([folder]))  # raises naming a missing folder
    for name, paths in found.items():
        LOG.info("training source %s: %d files", name, len(paths))
    return found


def _drop_excluded(source: str, paths: list[Path], names: set[str]) -> list[Path]:
    if not names:
        return paths
    if source == "skimage":
        stems = names | {SKIMAGE_FILE_STEMS.get(n, n) for n in names}
        kept = [p for p in paths if p.stem not in stems]
    else:
        root = APT_SOURCES[source][1]
        kept = [p for p in paths if str(p.relative_to(root)) not in names]
    LOG.info("source %s: %d files the bench uses left out of training", source, len(paths) - len(kept))
    return kept


def _subsample(paths: list[Path], limit: int, seed: int) -> list[Path]:
    if len(paths) <= limit:
        return paths
    keep = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
    return [paths[i] for i in keep]


def skimage_samples() -> list[Path]:
    """The sample images that ship inside scikit-image (files only: its loaders may try a download)."""
    try:
        import skimage.data
    except ImportError:
        LOG.warning("source skimage skipped: scikit-image is not installed (pip install scikit-image)")
        return []
    folder = Path(skimage.data.__file__).parent
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))


def load_images(paths: Iterable[Path], max_side: int, progress: bool = True) -> list[Image.Image]:
    """Decode, flatten to RGB and shrink to ``max_side``; bad or tiny files are logged, counted, skipped."""
    paths = list(paths)
    images, skipped = [], 0
    for path in tqdm(paths, desc="loading images", unit="img", disable=not progress):
        try:
            image = load_image(path).image
        except (ImageError, OSError) as exc:
            LOG.warning("training image skipped: %s", exc)
            skipped += 1
            continue
        if min(image.size) < MIN_SIDE:
            skipped += 1
            continue
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        image.info[FOLDER_KEY] = str(Path(path).parent)
        images.append(image)
    if skipped:
        LOG.info(
            "%d of %d training files skipped (unreadable or smaller than %d px)",
            skipped,
            len(paths),
            MIN_SIDE,
        )
    return images


def split_holdout(images: list, holdout: int, seed: int) -> tuple[list, list]:
    """(train, held-out): ``holdout`` images drawn with ``seed``, the rest for training."""
    if not 0 <= holdout < len(images):
        raise ValueError(f"holdout must be in 0..{len(images) - 1} for {len(images)} images, not {holdout!r}")
    order = np.random.default_rng([seed, 1]).permutation(len(images))
    held = set(order[:holdout].tolist())
    train = [im for i, im in enumerate(images) if i not in held]
    return train, [images[i] for i in sorted(held)]


class PairDataset(Dataset):
    """Item ``i`` of epoch ``e``: (original tensor, augmented view tensor), seeded by (seed, e, i).

    Both tensors are then turned/flipped by one random dihedral transform, so the single view
    learns in every orientation (queries are searched in all 8).
    """

    def __init__(
        self,
        images: list[Image.Image],
        size: int,
        seed: int = 0,
        augment: SeededViews | None = None,
    ):
        if not images:
            raise ValueError("no training images")
        self.images = images
        self.preprocess = Preprocess(size, black_point=False)
        self.augment = augment or FamilyAugment(seed)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        view, _ = self.augment.view(image, rng)
        pose = int(rng.integers(8))
        return _dihedral(self.preprocess(image), pose), _dihedral(self.preprocess(view), pose)


def _dihedral(tensor: torch.Tensor, pose: int) -> torch.Tensor:
    """Pose 0..7 of a (C,H,W) tensor: ``pose // 2`` quarter turns, then a mirror if odd."""
    turned = torch.rot90(tensor, pose // 2, (1, 2))
    return torch.flip(turned, (2,)) if pose % 2 else turned


def epoch_order(
    n: int, batch: int, seed: int, epoch: int, siblings: Sequence[Sequence[int]] | None = None, pairs: int = 0
) -> list[list[int]]:
    """The batches (index lists, last partial one dropped) of one epoch.

    With ``siblings`` (per image, the other images of its folder that may be its negatives) and
    ``pairs``, the last ``pairs`` slots of a batch go to a sibling each of the first images of the
    batch that have one: hard negatives for them.
    """
    order = np.random.default_rng([seed, epoch, 7]).permutation(n).tolist()
    batches = [order[i : i + batch] for i in range(0, n - batch + 1, batch)]
    if siblings is None or pairs <= 0:
        return batches
    if not 0 < pairs <= batch // 2:
        raise ValueError(f"sibling pairs must be in 1..{batch // 2} for batch {batch}, not {pairs!r}")
    rng = np.random.default_rng([seed, epoch, 11])
    return [_with_siblings(b, siblings, pairs, rng) for b in batches]


def _with_siblings(batch: list[int], siblings: Sequence[Sequence[int]], pairs: int, rng) -> list[int]:
    kept, slots = batch[: len(batch) - pairs], batch[len(batch) - pairs :]
    taken = set(batch)
    for i in list(kept):
        if not slots:
            break
        free = [j for j in siblings[i] if j not in taken]
        if free:
            sibling = int(free[rng.integers(len(free))])
            kept.append(sibling)
            taken.add(sibling)
            slots.pop(0)
    return kept + slots


def folder_siblings(images: Sequence[Image.Image]) -> list[list[int]]:
    """Per image, the other images loaded from its folder that are not the same drawing (see
    ``SAME_DRAWING_LEVELS``); empty for generated images and for folders of one."""
    by_folder: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        if FOLDER_KEY in image.info:
            by_folder.setdefault(image.info[FOLDER_KEY], []).append(i)
    thumbs = {
        i: np.asarray(images[i].convert("L").resize((16, 16), Image.Resampling.BOX), np.float32)
        for members in by_folder.values()
        if len(members) > 1
        for i in members
    }
    siblings: list[list[int]] = [[] for _ in images]
    for members in by_folder.values():
        for i in members:
            siblings[i] = [
                j for j in members if j != i and np.abs(thumbs[i] - thumbs[j]).mean() >= SAME_DRAWING_LEVELS
            ]
    return siblings
