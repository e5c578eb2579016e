"""Batches of work items prepared in worker processes (decode, hash, preprocess).

torch's DataLoader does the process pool; it is imported only when a batch job runs, so that
importing the catalog stays light. A dataset is any object with ``__len__`` and ``__getitem__``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class ItemSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...


def _worker_init(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # decode workers must not fight the network for cores


def iter_batches(dataset: ItemSource, batch_size: int, workers: int) -> Iterator[list]:
    """Batches of dataset items (lists, uncollated) prepared in ``workers`` processes (0: here)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from loader
