"""The vector every network is conditioned on: the noise level, plus a class label if any."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn


def sinusoidal_features(c_noise: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer positional features (Vaswani et al. 2017) of the scalar noise level.

    c_noise = ln(sigma) / 4 is small, so it is scaled by 1000 first to spread the phases."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c_noise.device) / half)
    angles = 1000 * c_noise.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ConditionEmbedding(nn.Module):
    """Maps (c_noise, labels) to one vector. Label ``num_classes`` is the null label that
    classifier-free guidance trains with and samples against."""

    def __init__(self, dim: int, num_classes: int | None = None, features: int = 128):
        super().__init__()
        self.features = features
        self.noise = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None

    def forward(self, c_noise: Tensor, labels: Tensor | None) -> Tensor:
        """In float32 even under autocast: nearby noise levels must stay distinguishable, and
        bf16 keeps only 8 bits of mantissa."""
        device = c_noise.device.type
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            emb = self.noise(sinusoidal_features(c_noise, self.features))
            if self.label is not None:
                if labels is None:
                    raise ValueError("this network is class-conditional: pass labels "
                                     f"(use {self.label.num_embeddings - 1} for unconditional)")
                emb = emb + self.label(labels)
        return emb
