"""A U-Net denoiser (Ronneberger et al. 2015) in the style of DDPM (Ho et al. 2020) and
ADM (Dhariwal & Nichol 2021): residual blocks whose normalisation is scaled and shifted by
the condition vector, self-attention at chosen resolutions, and skip connections from each
encoder block to the decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conditioning import Condition, ConditionEmbedding


def group_norm(channels: int) -> nn.GroupNorm:
    """Group normalisation (Wu & He 2018) with up to 32 groups of at least 4 channels, the most
    that divide the width: a decoder block of width 48 sees 144 channels, which 32 does not divide."""
    most = max(1, min(32, channels // 4))
    return nn.GroupNorm(max(g for g in range(1, most + 1) if channels % g == 0), channels)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv, then norm modulated by the condition (scale, shift) -> SiLU -> conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.modulation = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.dropout = group_norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        while channels % self.heads:          # widths that are not a multiple of head_dim
            self.heads -= 1
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """``channel_mult[l]`` sets the width of level l; every level after the first halves the
    resolution. Each level has ``blocks_per_level`` residual blocks on the way down and one
    more on the way up; levels listed in ``attention_levels`` add self-attention."""

    def __init__(self, data_shape: tuple[int, int, int], channels: int = 64,
                 channel_mult: tuple[int, ...] = (1, 2, 2), blocks_per_level: int = 2,
                 attention_levels: tuple[int, ...] = (), dropout: float = 0.0,
                 condition: Condition | None = None):
        super().__init__()
        in_channels, size, _ = data_shape
        if size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"image size {size} must be divisible by 2^{len(channel_mult) - 1} "
                             f"for channel_mult {list(channel_mult)}")
        if any(level >= len(channel_mult) for level in attention_levels):
            raise ValueError(f"attention_levels {list(attention_levels)} name levels beyond the "
                             f"{len(channel_mult)} of channel_mult {list(channel_mult)} (levels count from 0)")
        emb_dim = 4 * channels
        self.embed = ConditionEmbedding(emb_dim, condition)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)

        def block(cin, cout, level):
            layers = [ResBlock(cin, cout, emb_dim, dropout)]
            if level in attention_levels:
                layers.append(SelfAttention(cout))
            return nn.ModuleList(layers)

        widths = [channels * m for m in channel_mult]
        self.down, skip_widths, width = nn.ModuleList(), [channels], channels
        for level, w in enumerate(widths):
            for _ in range(blocks_per_level):
                self.down.append(block(width, w, level))
                width = w
                skip_widths.append(width)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(width, width, 3, stride=2, padding=1)]))
                skip_widths.append(width)
        self.middle = nn.ModuleList([ResBlock(width, width, emb_dim, dropout), SelfAttention(width),
                                     ResBlock(width, width, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(blocks_per_level + 1):
                self.up.append(block(width + skip_widths.pop(), w, level))
                width = w
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(width, width, 3, padding=1)]))
        self.out = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise, labels)
        h = self.inp(x)
        skips = [h]
        for layers in self.down:
            h = apply(layers, h, emb)
            skips.append(h)
        h = apply(self.middle, h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = apply(layers, h, emb)
        return self.out(h)


def apply(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    """Run a stage: blocks that take the condition get it, plain layers (resampling) do not."""
    for layer in layers:
        h = layer(h, emb) if isinstance(layer, (ResBlock, SelfAttention)) else layer(h)
    return h
