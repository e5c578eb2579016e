"""Part views: the query searched as a part of a larger picture, for copies that are crops.

A crop to a third of the area, squashed to the model's input, shows its content ~1.7 times
larger than its original's squash does, and the CNN scores it 0.2-0.5 against that original.
Shrinking the query's content to ``PART_SCALE`` of the side and pasting it into a canvas of
its own mean colour, at ``PART_GRID`` x ``PART_GRID`` places, puts it back near the scale and
place it had in the original. Measured on the bench's 60 crops (30-95 % of the area, 300
clip-art distractors, shipped model): the original is the best match of the part views for
0.93 of the crops against 0.82 for the query's own 8 views; taken with those views (the best
score of any view) 0.88, and every other edit unchanged within one query in 60
(docs/how-it-works.md). Scale 0.6 did worse (0.85) and both scales no better than 0.75 alone.

The canvas is not trimmed again (its fill is the uniform border that trimming would remove).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from twice.borders import trim_borders

if TYPE_CHECKING:
    import torch

    from twice.model.embedder import Preprocess

PART_SCALE = 0.75  # the query's side in the canvas, as a share of the canvas side
PART_GRID = 3  # places per axis: the corners, the edge middles and the centre
PART_VIEWS = tuple(
    f"part {row * PART_GRID + col + 1} of {PART_GRID**2}"
    for row in range(PART_GRID)
    for col in range(PART_GRID)
)


def part_tensors(image: Image.Image, preprocess: Preprocess) -> list[torch.Tensor]:
    """PART_GRID**2 (3, S, S) tensors: ``image``'s content shrunk into a canvas at each place,
    prepared as ``preprocess`` prepares an image but without trimming the canvas's fill."""
    content = trim_borders(image.convert("RGB"))
    fill = tuple(int(v) for v in np.asarray(content).reshape(-1, 3).mean(axis=0))
    side = preprocess.size
    inner = max(1, round(side * PART_SCALE))
    shrunk = content.resize((inner, inner), Image.Resampling.BILINEAR)
    room = side - inner
    tensors = []
    for row in range(PART_GRID):
        for col in range(PART_GRID):
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(shrunk, (round(room * col / (PART_GRID - 1)), round(room * row / (PART_GRID - 1))))
            tensors.append(preprocess(canvas, trimmed=True))  # the fill stays
    return tensors
