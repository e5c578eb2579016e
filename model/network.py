"""The embedding network: a torchvision VGG-16 trunk, GeM pooling, a linear head, L2 norm, and
a whitening fitted after training (identity until ``twice whiten`` fits it)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg

ARCHS = ("vgg16", "vgg16_bn")
INVARIANCES = ("d4", "none")
TRUNK_CHANNELS = 512


def vgg_features(batch_norm: bool) -> nn.Sequential:
    """torchvision's VGG-16 conv layers with its own init, without building the 120M-parameter
    classifier that ``torchvision.models.vgg16()`` would make and we would throw away."""
    features = vgg.make_layers(vgg.cfgs["D"], batch_norm=batch_norm)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    return features


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): p=1 is average, p→∞ is max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        pooled = F.adaptive_avg_pool2d(x.float().clamp(min=self.eps).pow(p), 1)
        return pooled.pow(1.0 / p).flatten(1)


def dihedral_views(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The 8 quarter turns and flips of an (N,C,H,W) batch, identity first."""
    for quarter_turns in range(4):
        turned = torch.rot90(x, quarter_turns, (2, 3))
        yield turned
        yield torch.flip(turned, (3,))


def check_invariance(invariance: str) -> str:
    if invariance not in INVARIANCES:
        raise ValueError(f"unknown invariance {invariance!r}; choose one of {', '.join(INVARIANCES)}")
    return invariance


class Whitening(nn.Module):
    """``normalize((x - mean) @ projection)``: PCA whitening of unit embeddings, fitted after training.

    A trained net spends most of its variance on directions every image shares (clip art on
    white, say), so unrelated images score high against each other; whitening (Jégou & Chum,
    ECCV 2012) gives each direction equal weight. It starts as the identity, is not trained
    (buffers), and is computed in fp32 whatever the autocast: it amplifies low-variance directions,
    where bf16 rounding would become noise.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim))

    @property
    def fitted(self) -> bool:
        eye = torch.eye(len(self.mean), device=self.mean.device)
        return bool(self.mean.any() or not torch.equal(self.projection, eye))

    def set(self, mean: torch.Tensor, projection: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.projection.copy_(projection)

    def reset(self) -> None:
        """Back to the identity (before training changes the embedding it was fitted to)."""
        self.mean.zero_()
        self.projection.copy_(torch.eye(len(self.mean)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return x
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize((x.float() - self.mean) @ self.projection, dim=1)


class EmbeddingNet(nn.Module):
    """Image batch (N,3,H,W), standardised -> L2-normalised embeddings (N, dim).

    With ``invariance="d4"`` the pooled trunk features are averaged over the image's 8 quarter
    turns and flips before the head (transformation-invariant pooling): a rotated or mirrored
    copy gets the same embedding as its original by construction, whatever the weights. That
    costs 8 trunk passes; training uses the single-view ``embed_view``.
    """

    def __init__(self, arch: str = "vgg16", dim: int = 256, invariance: str = "d4") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
        self.arch = arch
        self.dim = dim
        self.invariance = check_invariance(invariance)
        # The last max-pool would halve an already small map; GeM pools the conv5 map instead.
        self.trunk = vgg_features(batch_norm=arch.endswith("_bn"))[:-1]
        self.pool = GeM()
        self.head = nn.Linear(TRUNK_CHANNELS, dim)
        self.whitening = Whitening(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.invariance == "none":
            return self.embed_view(x)
        views = dihedral_views(x)
        features = sum(self.pool(self.trunk(view)) for view in views) / 8
        return self._project(features)

    def embed_view(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of the batch as it is, without the dihedral pooling."""
        return self._project(self.pool(self.trunk(x)))

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(self.head(features.to(self.head.weight.dtype)).float(), dim=1)
        return self.whitening(unit)
