"""What a network is conditioned on: the noise level, and a condition of one kind, if any.

A condition batch is a tensor whose first dimension is the batch. Each kind of condition says
what its batches hold, gives its **null condition**, the "no condition" that classifier-free
guidance (Ho & Salimans 2022) trains with (``drop``) and samples against (``null``), and builds
the network's embedding of it, the null condition included. One contract, shared by the
networks (``ConditionEmbedding``), the condition dropout of training (``module.py``), the
guidance wrapper (``diffusion/guidance.py``, given ``null``) and the data (which gives the batches).

    kind           batch              null condition
    ClassLabels    (N,) int64         the label ``count``, one past the last class
    Vectors        (N, K) float       a row of NaN (no real condition holds one: the data refuses them)

A new kind (an image, a text embedding) is one class here with the same three methods: its
null is a learned embedding of its own, as the null label's and the null vector's are.
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


class Vectors:
    """Vectors of ``K`` real numbers (observations, start and goal states, properties), such as a
    diffusion planner or policy is conditioned on (Janner et al. 2022; Chi et al. 2023).

    ``low`` and ``high`` are each feature's range in the training data: the embedding scales
    the features to [-1, 1] itself, so that conditions are given everywhere in the data's own
    units. ``examples`` are a few training conditions: what samples are drawn for when none
    are asked for (as classes come in turn)."""

    def __init__(self, low: list[float], high: list[float], examples: list[list[float]]):
        self.low, self.high = torch.tensor(low, dtype=torch.float32), torch.tensor(high, dtype=torch.float32)
        self.examples = torch.tensor(examples, dtype=torch.float32).reshape(-1, len(low))
        self.features = len(low)

    @classmethod
    def measured(cls, conditions: Tensor, examples: int = 64) -> Vectors:
        """The ranges of training ``conditions`` (N, K), and the first ``examples`` of them."""
        return cls(conditions.min(0).values.tolist(), conditions.max(0).values.tolist(),
                   conditions[:examples].tolist())

    def table(self) -> dict:
        """What rebuilds this kind (saved with a run): the ranges and the examples."""
        return {"low": self.low.tolist(), "high": self.high.tolist(), "examples": self.examples.tolist()}

    def null(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """n null conditions: rows of NaN."""
        return torch.full((n, self.features), math.nan, device=device)

    def drop(self, conditions: Tensor, p: float) -> Tensor:
        """A share ``p`` of the rows, drawn at random, replaced by the null row."""
        dropped = torch.rand(len(conditions), device=conditions.device) < p
        return torch.where(dropped[:, None], math.nan, conditions)

    def embedding(self, dim: int) -> nn.Module:
        return VectorEmbedding(self, dim)


class VectorEmbedding(nn.Module):
    """A vector condition scaled to [-1, 1] per feature, through a small MLP; null rows (NaN)
    get a learned vector of their own. The ranges are the run's (``Vectors.table``), not
    weights: they stay out of the state dict."""

    def __init__(self, kind: Vectors, dim: int):
        super().__init__()
        self.register_buffer("centre", (kind.high + kind.low) / 2, persistent=False)
        self.register_buffer("half_range", ((kind.high - kind.low) / 2).clamp_min(1e-12), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(kind.features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, conditions: Tensor) -> Tensor:
        null = torch.isnan(conditions).any(1, keepdim=True)
        scaled = torch.where(null, 0.0, (conditions.float() - self.centre) / self.half_range)
        return torch.where(null, self.null, self.mlp(scaled))


Condition = ClassLabels | Vectors        # the kinds a network may be conditioned on


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

    def __init__(self, dim: int, condition: Condition | None = None, features: int = 128):
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
                    raise ValueError("this network is conditional: pass its condition (the null condition, "
                                     "``condition.null(n)``, for unconditional)")
                emb = emb + self.label(labels)
        return emb
