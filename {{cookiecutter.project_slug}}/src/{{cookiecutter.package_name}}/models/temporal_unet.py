"""A temporal U-Net for sequences (C channels over L steps): the 1D U-Net of diffusion planners
and policies (Janner et al. 2022, "Planning with Diffusion"; Chi et al. 2023, "Diffusion
Policy", ConditionalUnet1D). Convolutions run over time; each residual block is modulated by
the noise level and the condition (FiLM, Perez et al. 2018: a scale and a shift per channel);
every level after the first halves the length, and skip connections join the two halves."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kinds import steps_first_doubt
from .conditioning import Condition, ConditionEmbedding
from .unet import SelfAttention, group_norm


class TemporalBlock(nn.Module):
    """conv -> norm -> Mish, FiLM-modulated by the condition, conv -> norm -> Mish, plus the
    input (through a 1x1 convolution when the width changes): Chi et al.'s residual block."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, kernel: int = 5):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), group_norm(cout), nn.Mish())
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.conv2 = nn.Sequential(nn.Dropout(dropout), nn.Conv1d(cout, cout, kernel, padding=kernel // 2),
                                   group_norm(cout), nn.Mish())
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(F.mish(emb))[:, :, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(self.conv1(x) * (1 + scale) + shift)


class TemporalAttention(SelfAttention):
    """The U-Net's self-attention over the steps: a sequence is an image one pixel high."""

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return super().forward(x[:, :, None])[:, :, 0]


class TemporalUNet(nn.Module):
    """The U-Net's settings (model.unet) over time: ``channel_mult[l]`` sets the width of level l,
    ``blocks_per_level`` residual blocks per level on each way, down and up,
    self-attention at ``attention_levels``. The length must halve evenly at every level."""

    def __init__(self, data_shape: tuple[int, int], channels: int = 64, channel_mult: tuple[int, ...] = (1, 2, 2),
                 blocks_per_level: int = 2, attention_levels: tuple[int, ...] = (), dropout: float = 0.0,
                 condition: Condition | None = None):
        super().__init__()
        in_channels, length = data_shape
        if length % 2 ** (len(channel_mult) - 1):
            doubt = steps_first_doubt(in_channels, length)
            raise ValueError(f"sequence length {length} must be divisible by 2^{len(channel_mult) - 1} for "
                             f"channel_mult {list(channel_mult)} (pad the sequences, or shorten channel_mult)"
                             + (f"; {doubt}" if doubt else ""))
        emb_dim = 4 * channels
        self.embed = ConditionEmbedding(emb_dim, condition)
        self.inp = nn.Conv1d(in_channels, channels, 5, padding=2)

        def stage(cin: int, cout: int, level: int) -> nn.ModuleList:
            """``blocks_per_level`` residual blocks (and attention where asked) from cin to cout."""
            layers = []
            for i in range(blocks_per_level):
                layers.append(TemporalBlock(cin if i == 0 else cout, cout, emb_dim, dropout))
                if level in attention_levels:
                    layers.append(TemporalAttention(cout))
            return nn.ModuleList(layers)

        widths = [channels * m for m in channel_mult]
        ins = [channels, *widths[:-1]]
        self.down = nn.ModuleList(stage(cin, w, level) for level, (cin, w) in enumerate(zip(ins, widths)))
        self.shorten = nn.ModuleList(nn.Conv1d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        deepest = widths[-1]
        self.middle = nn.ModuleList([TemporalBlock(deepest, deepest, emb_dim, dropout), TemporalAttention(deepest),
                                     TemporalBlock(deepest, deepest, emb_dim, dropout)])
        # on the way up, each level takes its own skip: from the level below (or the middle) + its own width
        below = [deepest, *widths[:0:-1]]
        self.up = nn.ModuleList(stage(b + w, w, level) for level, b, w in zip(range(len(widths) - 1, -1, -1),
                                                                                below, widths[::-1]))
        self.lengthen = nn.ModuleList(nn.ConvTranspose1d(w, w, 4, stride=2, padding=1) for w in widths[:0:-1])
        self.out = nn.Sequential(group_norm(channels * channel_mult[0]), nn.Mish(),
                                 nn.Conv1d(channels * channel_mult[0], in_channels, 1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, c_noise: Tensor, condition: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise, condition)
        h, skips = self.inp(x), []
        for level, blocks in enumerate(self.down):
            h = run(blocks, h, emb)
            skips.append(h)
            if level < len(self.shorten):
                h = self.shorten[level](h)
        h = run(self.middle, h, emb)
        for level, blocks in enumerate(self.up):
            h = run(blocks, torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.lengthen):
                h = self.lengthen[level](h)
        return self.out(h)


def run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    """A stage: its blocks (and attention layers) in turn, each given the condition."""
    for layer in layers:
        h = layer(h, emb)
    return h
