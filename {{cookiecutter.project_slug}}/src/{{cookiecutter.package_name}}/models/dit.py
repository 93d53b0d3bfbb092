"""A Diffusion Transformer (Peebles & Xie 2023, "DiT"): the image is cut into patches,
a stack of transformer blocks with adaLN-Zero conditioning processes them, and a linear
layer turns each token back into a patch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conditioning import Condition, ConditionEmbedding


def sincos_positions(grid: int, dim: int) -> Tensor:
    """Fixed 2D sine-cosine position embeddings: half the channels for rows, half for columns."""
    quarter = dim // 4
    freqs = 1.0 / 10_000 ** (torch.arange(quarter) / quarter)
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = [f(c.flatten()[:, None] * freqs[None]) for c in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each with a shift, scale and gate from the condition
    (adaLN-Zero: the gates start at zero, so every block starts as the identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, emb: Tensor, seen: Tensor | None = None) -> Tensor:
        """``seen``: (B, N) True for the tokens that attention may look at (None: all)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(emb))[:, None].chunk(6, dim=2)
        b, n, d = x.shape
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if seen is None else seen[:, None, None, :]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, d)
        x = x + gate1 * self.proj(h)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DiT(nn.Module):
    def __init__(self, data_shape: tuple[int, int, int], patch_size: int = 2, width: int = 384,
                 depth: int = 12, heads: int = 6, condition: Condition | None = None):
        super().__init__()
        channels, size, _ = data_shape
        if size % patch_size or width % heads or width % 4:
            raise ValueError(f"DiT needs image size ({size}) divisible by patch_size ({patch_size}) "
                             f"and width ({width}) divisible by heads ({heads}) and by 4")
        self.patch_size, self.grid = patch_size, size // patch_size
        self.embed = ConditionEmbedding(width, condition)
        self.patchify = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        self.register_buffer("positions", sincos_positions(self.grid, width), persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.head = nn.Linear(width, patch_size * patch_size * channels)
        for layer in (self.final_modulation, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise, labels)
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.positions
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.final_modulation(F.silu(emb))[:, None].chunk(2, dim=2)
        h = self.head(self.norm(h) * (1 + scale) + shift)
        return self.unpatchify(h, x.shape[1])

    def unpatchify(self, tokens: Tensor, channels: int) -> Tensor:
        b, p, g = tokens.shape[0], self.patch_size, self.grid
        tokens = tokens.reshape(b, g, g, p, p, channels)
        return tokens.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, g * p, g * p)
