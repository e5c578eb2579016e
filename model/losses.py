"""Metric-learning losses over a batch of L2-normalised embeddings with integer labels.

Items with the same label are positives of each other (an image and its augmented views),
every other item in the batch is a negative. Two families:

- ``InfoNCELoss``: softmax over the batch (NT-Xent / SupCon form). Every negative pushes with
  a weight that grows with its similarity, so the gradient never vanishes and the embedding
  cannot collapse to one point. The default: it is what trains a random-init VGG here.
- ``TripletLoss``: margin loss on Euclidean distances with online mining, ``batch_hard``
  (hardest positive and negative per anchor) or ``semi_hard`` (FaceNet: the closest negative
  that is still farther than the positive). Kept for comparison, see ``twice train --loss``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

LOG = logging.getLogger(__name__)

LOSSES = ("infonce", "triplet-batch-hard", "triplet-semi-hard")


def _check(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels):
        raise ValueError(
            f"need embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) boolean masks (N, N); the diagonal is neither."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


class InfoNCELoss(nn.Module):
    """Mean over anchors with a positive of −mean_p log softmax_{k≠a}(s_ak / τ)[p]."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(embeddings, labels)
        positive, _ = pair_masks(labels)
        logits = embeddings.float() @ embeddings.float().T / self.temperature
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        logits = logits.masked_fill(eye, float("-inf"))  # an item is not its own candidate
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        counts = positive.sum(dim=1)
        has = counts > 0
        if not has.any():
            return embeddings.sum() * 0.0
        per_anchor = -(log_prob.masked_fill(~positive, 0.0).sum(dim=1)[has] / counts[has])
        return per_anchor.mean()


class TripletLoss(nn.Module):
    """mean relu(d(a,p) − d(a,n) + margin) over mined triplets, d = Euclidean distance."""

    def __init__(self, margin: float = 0.2, mining: str = "batch_hard") -> None:
        super().__init__()
        if mining not in ("batch_hard", "semi_hard"):
            raise ValueError(f"mining must be batch_hard or semi_hard, not {mining!r}")
        if not margin > 0:
            raise ValueError(f"margin must be > 0, not {margin!r}")
        self.margin = float(margin)
        self.mining = mining

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(embeddings, labels)
        x = embeddings.float()
        # Gram-based distances; the clamp keeps sqrt's gradient finite at zero.
        sq = (x * x).sum(dim=1)
        dist = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=1e-12).sqrt()
        positive, negative = pair_masks(labels)
        if self.mining == "batch_hard":
            return self._batch_hard(dist, positive, negative)
        return self._semi_hard(dist, positive, negative)

    def _batch_hard(self, dist, positive, negative) -> torch.Tensor:
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not valid.any():
            return dist.sum() * 0.0
        hardest_p = dist.masked_fill(~positive, float("-inf")).max(dim=1).values
        hardest_n = dist.masked_fill(~negative, float("inf")).min(dim=1).values
        return F.relu(hardest_p - hardest_n + self.margin)[valid].mean()

    def _semi_hard(self, dist, positive, negative) -> torch.Tensor:
        # One term per (anchor, positive) pair: the closest negative beyond d(a,p), or,
        # when no negative is farther than the positive, the hardest negative of the anchor.
        a_idx, p_idx = positive.nonzero(as_tuple=True)
        if len(a_idx) == 0:
            return dist.sum() * 0.0
        d_ap = dist[a_idx, p_idx]
        d_an = dist[a_idx]  # (P, N)
        neg = negative[a_idx]
        keep = neg.any(dim=1)
        if not keep.any():
            return dist.sum() * 0.0
        beyond = neg & (d_an > d_ap[:, None])
        semi = d_an.masked_fill(~beyond, float("inf")).min(dim=1).values
        hardest = d_an.masked_fill(~neg, float("inf")).min(dim=1).values
        chosen = torch.where(beyond.any(dim=1), semi, hardest)
        return F.relu(d_ap - chosen + self.margin)[keep].mean()


def make_loss(name: str, temperature: float = 0.1, margin: float = 0.2) -> nn.Module:
    """The loss called ``name`` (one of ``LOSSES``)."""
    if name == "infonce":
        return InfoNCELoss(temperature)
    if name == "triplet-batch-hard":
        return TripletLoss(margin, "batch_hard")
    if name == "triplet-semi-hard":
        return TripletLoss(margin, "semi_hard")
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
