"""What a network is conditioned on: the noise level, and a condition of one kind, if any.

A condition batch is a tensor whose first dimension is the batch. Each kind of condition says
what its batches hold, gives its **null condition**, the "no condition" that classifier-free
guidance (Ho & Salimans 2022) trains with (``drop``) and samples against (``null``), and builds
the network's embedding of it, the null condition included. One contract, shared by the
networks (``ConditionEmbedding``), the condition dropout of training (``module.py``), the
guidance wrapper (``diffusion/guidance.py``, given ``null``) and the data (which gives the batches).

    kind           batch              null condition
    ClassLabels    (N,) int64         the label ``count``, one past the last class

A new kind (a vector of observations, an image, a text embedding) is one class here with the
same three methods: its null is a learned embedding of its own, as the null label's is.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn


class ClassLabels:
    """Class labels 0 .. count - 1 (data labels, k-means clusters, or the prompts of a text model)."""

    def __init__(self, count: int):
        self.count = count

    def null(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """n null labels."""
        return torch.full((n,), self.count, dtype=torch.long, device=device)

    def drop(self, labels: Tensor, p: float) -> Tensor:
        """Classifier-free guidance training: a share ``p`` of the labels, drawn at random,
        replaced by the null label."""
        dropped = torch.rand(len(labels), device=labels.device) < p
        return torch.where(dropped, self.null(len(labels), labels.device), labels)

    def embedding(self, dim: int) -> nn.Module:
        """A learned vector per label, the null label's included."""
        return nn.Embedding(self.count + 1, dim)


def sinusoidal_features(c_noise: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer positional features (Vaswani et al. 2017) of the scalar noise level.

    c_noise = ln(sigma) / 4 is small, so it is scaled by 1000 first to spread the phases."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c_noise.device) / half)
    angles = 1000 * c_noise.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ConditionEmbedding(nn.Module):
    """Maps (c_noise, condition) to one vector: the noise level's features through an MLP, plus
    the condition's embedding when the network is conditional (``condition``, its kind)."""

    def __init__(self, dim: int, condition: ClassLabels | None = None, features: int = 128):
        super().__init__()
        self.features = features
        self.noise = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = condition.embedding(dim) if condition is not None else None

    def forward(self, c_noise: Tensor, labels: Tensor | None) -> Tensor:
        """In float32 even under autocast: nearby noise levels must stay distinguishable, and
        bf16 keeps only 8 bits of mantissa."""
        device = c_noise.device.type
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            emb = self.noise(sinusoidal_features(c_noise, self.features))
            if self.label is not None:
                if labels is None:
                    raise ValueError("this network is conditional: pass its condition "
                                     f"(class labels; use {self.label.num_embeddings - 1} for unconditional)")
                emb = emb + self.label(labels)
        return emb
