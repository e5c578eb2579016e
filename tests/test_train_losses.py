"""Training losses against brute-force loops on 5x32 random embeddings (PML-style oracle)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from twice.model.losses import InfoNCELoss, TripletLoss, make_loss

LABELS = torch.tensor([0, 0, 1, 1, 2])  # item 4 has no positive: it only ever serves as a negative


def embeddings(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return F.normalize(torch.randn(5, 32), dim=1)


def dist(x: torch.Tensor, i: int, j: int) -> float:
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j], strict=True)))


def cos(x: torch.Tensor, i: int, j: int) -> float:
    return sum(float(a) * float(b) for a, b in zip(x[i], x[j], strict=True))


def oracle_infonce(x: torch.Tensor, labels: list[int], t: float) -> float:
    terms = []
    for a in range(len(x)):
        positives = [p for p in range(len(x)) if p != a and labels[p] == labels[a]]
        if not positives:
            continue
        denom = sum(math.exp(cos(x, a, k) / t) for k in range(len(x)) if k != a)
        terms.append(-sum(math.log(math.exp(cos(x, a, p) / t) / denom) for p in positives) / len(positives))
    return sum(terms) / len(terms)


def oracle_batch_hard(x: torch.Tensor, labels: list[int], margin: float) -> float:
    terms = []
    for a in range(len(x)):
        pos = [dist(x, a, p) for p in range(len(x)) if p != a and labels[p] == labels[a]]
        neg = [dist(x, a, n) for n in range(len(x)) if labels[n] != labels[a]]
        if pos and neg:
            terms.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(terms) / len(terms)


def oracle_semi_hard(x: torch.Tensor, labels: list[int], margin: float) -> float:
    terms = []
    for a in range(len(x)):
        for p in range(len(x)):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = dist(x, a, p)
            d_neg = [dist(x, a, n) for n in range(len(x)) if labels[n] != labels[a]]
            beyond = [d for d in d_neg if d > d_ap]
            d_an = min(beyond) if beyond else min(d_neg)
            terms.append(max(0.0, d_ap - d_an + margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_infonce_matches_the_loop(seed, t):
    x = embeddings(seed)
    got = float(InfoNCELoss(t)(x, LABELS))
    assert got == pytest.approx(oracle_infonce(x, LABELS.tolist(), t), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_batch_hard_triplet_matches_the_loop(seed, margin):
    x = embeddings(seed)
    got = float(TripletLoss(margin, "batch_hard")(x, LABELS))
    assert got == pytest.approx(oracle_batch_hard(x, LABELS.tolist(), margin), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_semi_hard_triplet_matches_the_loop(seed, margin):
    x = embeddings(seed)
    got = float(TripletLoss(margin, "semi_hard")(x, LABELS))
    assert got == pytest.approx(oracle_semi_hard(x, LABELS.tolist(), margin), rel=1e-5, abs=1e-6)


def test_collapsed_embeddings_sit_at_the_margin_for_triplet_but_not_at_zero_for_infonce():
    # The failure mode the issue saw: every embedding the same point.
    x = F.normalize(torch.ones(5, 32), dim=1)
    assert float(TripletLoss(0.2, "batch_hard")(x, LABELS)) == pytest.approx(0.2, abs=1e-5)
    assert float(InfoNCELoss(0.1)(x, LABELS)) == pytest.approx(math.log(4), rel=1e-5)


def test_losses_have_gradients_and_no_positives_gives_zero():
    x = embeddings(3).requires_grad_(True)
    for name in ("infonce", "triplet-batch-hard", "triplet-semi-hard"):
        loss = make_loss(name)(x, LABELS)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert float(make_loss(name)(x.detach(), torch.arange(5))) == 0.0


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="unknown loss 'arcface'"):
        make_loss("arcface")
    with pytest.raises(ValueError, match="temperature must be > 0, not 0"):
        InfoNCELoss(0)
    with pytest.raises(ValueError, match="mining must be"):
        TripletLoss(0.2, "easy")
    with pytest.raises(ValueError, match=r"\(5, 32\) and \(4,\)"):
        InfoNCELoss()(embeddings(), torch.arange(4))
