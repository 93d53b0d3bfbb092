"""Toy 2D point clouds: small enough to train in a minute and to plot every sample."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def swiss_roll(n: int, g: torch.Generator) -> tuple[Tensor, None]:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    points = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 5
    return points + 0.05 * torch.randn(n, 2, generator=g), None


def moons(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.randint(2, (n,), generator=g)
    angle = math.pi * torch.rand(n, generator=g)
    upper = torch.stack([angle.cos(), angle.sin()], dim=1)
    lower = torch.stack([1 - angle.cos(), 0.5 - angle.sin()], dim=1)
    points = torch.where(labels[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
    return 1.5 * points + 0.05 * torch.randn(n, 2, generator=g), labels


def checkerboard(n: int, g: torch.Generator) -> tuple[Tensor, None]:
    """Uniform on the dark squares of a 4x4 board covering [-2, 2]^2."""
    cell = torch.randint(8, (n,), generator=g)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2
    offset = torch.rand(n, 2, generator=g)
    return torch.stack([col, row], dim=1) + offset - 2, None


def gaussians(n: int, g: torch.Generator, modes: int = 8, radius: float = 2.0,
              std: float = 0.15) -> tuple[Tensor, Tensor]:
    """``modes`` Gaussians evenly spaced on a circle; the label is the mode."""
    labels = torch.randint(modes, (n,), generator=g)
    angle = 2 * math.pi * labels / modes
    centres = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + std * torch.randn(n, 2, generator=g), labels


TOY_SHAPES = {"swiss_roll": swiss_roll, "moons": moons, "checkerboard": checkerboard, "gaussians": gaussians}


def make_toy2d(shape: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """``n`` points of the named shape, and their labels where the shape has natural ones."""
    return TOY_SHAPES[shape](n, torch.Generator().manual_seed(seed))
