"""A residual MLP for vectors (toy 2D data) or small flattened images."""
from __future__ import annotations

import math

from torch import Tensor, nn

from .conditioning import Condition, ConditionEmbedding


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.layers = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.layers(self.norm(h) + emb)


class MLP(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], width: int = 256, depth: int = 4,
                 condition: Condition | None = None):
        super().__init__()
        dim = math.prod(data_shape)
        self.embed = ConditionEmbedding(width, condition)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise, labels)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).view(x.shape)
