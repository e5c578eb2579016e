"""Part views: the query searched as a part of a larger picture, for copies that are crops.

A crop to a third of the area, squashed to the model's input, shows its content ~1.7 times
larger than its original's squash does, and the CNN scores it 0.2-0.5 against that original.
Shrinking the query's content to ``PART_SCALE`` of the side and pasting it into a canvas of
its own mean colour, at the corners and the centre (``PART_PLACES``), puts it back near the
scale and place it had in the original. Measured on the bench's 60 crops (30-95 % of the area, 300
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
# Where the content goes, as (column, row) shares of the room left around it: the four corners
# and the centre. The edge middles of a 3 x 3 grid added nothing: on the bench's 180 crops,
# screenshots and combinations of 3 edits, recall@1 0.972 and duplicate recall 0.833 with the
# 9 places and with these 5 (2026-12-05), for 4 fewer views to embed.
PART_PLACES = ((0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (1.0, 1.0))
PART_VIEWS = tuple(f"part {n} of {len(PART_PLACES)}" for n in range(1, len(PART_PLACES) + 1))


def part_tensors(image: Image.Image, preprocess: Preprocess) -> list[torch.Tensor]:
    """One (3, S, S) tensor per place of ``PART_PLACES``: ``image``'s content shrunk into a
    canvas there, prepared as ``preprocess`` prepares an image but without trimming the fill."""
    content = trim_borders(image.convert("RGB"))
    fill = tuple(int(v) for v in np.asarray(content).reshape(-1, 3).mean(axis=0))
    side = preprocess.size
    inner = max(1, round(side * PART_SCALE))
    shrunk = content.resize((inner, inner), Image.Resampling.BILINEAR)
    room = side - inner
    tensors = []
    for across, down in PART_PLACES:
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(shrunk, (round(room * across), round(room * down)))
        tensors.append(preprocess(canvas, trimmed=True))  # the fill stays
    return tensors
