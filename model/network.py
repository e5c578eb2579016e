"""The embedding network: a torchvision VGG-16 trunk, GeM pooling, a linear head, L2 norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg

ARCHS = ("vgg16", "vgg16_bn")
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


class EmbeddingNet(nn.Module):
    """Image batch (N,3,H,W), ImageNet-normalised -> L2-normalised embeddings (N, dim)."""

    def __init__(self, arch: str = "vgg16", dim: int = 256) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
        self.arch = arch
        self.dim = dim
        # The last max-pool would halve an already small map; GeM pools the conv5 map instead.
        self.trunk = vgg_features(batch_norm=arch.endswith("_bn"))[:-1]
        self.pool = GeM()
        self.head = nn.Linear(TRUNK_CHANNELS, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.trunk(x))
        return F.normalize(self.head(features.to(self.head.weight.dtype)).float(), dim=1)
