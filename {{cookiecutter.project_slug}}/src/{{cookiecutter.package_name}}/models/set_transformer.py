"""A transformer over sets of points (P points of D numbers: atoms, a point cloud, particles).

Each point is a token; with no positional embedding, attention treats the points as a set, so
the network is permutation-equivariant: permuting the input points permutes the output the
same way (Lee et al. 2019, "Set Transformer"; Zaheer et al. 2017, "Deep Sets"). The blocks are
DiT's (adaLN-Zero conditioning on the noise level and the condition).

Sets of different sizes share one tensor: a smaller set's missing points are rows of NaN
(``sets.py``; ``data/sources.py`` turns a file's ``mask`` into them). The network reads its mask off the NaN
rows: attention never looks at a missing point, its output there is 0, and the NaN, which the
samplers carry along unchanged, never reaches a real point.

With ``zero_com`` the points live in the subspace whose centre of mass is zero, as in
E(3)-equivariant diffusion for molecules (Hoogeboom et al. 2022): the input's centre of mass is
taken out and so is the output's. Data, noise and samples are kept there too (the data module
centres each set; ``sampling`` projects each step, ``Model.sample``), so a sample's place in
space means nothing, only its shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sets import missing_points, without_centre
from .conditioning import Condition, ConditionEmbedding
from .dit import DiTBlock


class SetTransformer(nn.Module):
    def __init__(self, data_shape: tuple[int, int], width: int = 128, depth: int = 4, heads: int = 4,
                 zero_com: bool = False, condition: Condition | None = None):
        super().__init__()
        _, dim = data_shape
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.zero_com = zero_com
        self.embed = ConditionEmbedding(width, condition)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.head = nn.Linear(width, dim)
        for layer in (self.final_modulation, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c_noise: Tensor, condition: Tensor | None = None) -> Tensor:
        missing = missing_points(x)
        out = self.masked(torch.where(missing[..., None], 0.0, x), missing, self.embed(c_noise, condition))
        return torch.where(missing[..., None], 0.0, out)

    def masked(self, x: Tensor, missing: Tensor, emb: Tensor) -> Tensor:
        """The network on sets whose ``missing`` points hold any finite values: attention and
        the centre of mass ignore them, so they change no real point's output."""
        if self.zero_com:
            x = without_centre(x, missing)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb, seen=~missing)
        shift, scale = self.final_modulation(F.silu(emb))[:, None].chunk(2, dim=2)
        out = self.head(self.norm(h) * (1 + scale) + shift)
        return without_centre(out, missing) if self.zero_com else out
