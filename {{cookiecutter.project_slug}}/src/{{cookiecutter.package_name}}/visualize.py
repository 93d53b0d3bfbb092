"""Pictures: image grids, 2D scatter plots and sampling trajectories, saved as PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from .diffusion.samplers import Step
from .pixels import to_uint8


def new_figure() -> tuple[Figure, object]:
    """A matplotlib figure that is only ever saved: the Figure API needs no GUI backend and
    leaves a notebook's own backend alone (matplotlib.use would switch it)."""
    fig = Figure(figsize=(5, 5))
    return fig, fig.subplots()


def image_grid(images: Tensor, ncol: int | None = None, upscale: int = 1) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 (H', W', C) picture with a 1-pixel border between tiles;
    ``upscale`` repeats pixels so tiny images stay sharp."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + 1) + 1, ncol * (w + 1) + 1), 128, dtype=torch.uint8)
    for k, image in enumerate(images.cpu()):
        r, q = divmod(k, ncol)
        grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = image
    grid = grid.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(images: Tensor, path: str | Path, ncol: int | None = None) -> Path:
    """Save uint8 images as one PNG grid, enlarged to at least 64 pixels a tile."""
    upscale = max(1, math.ceil(64 / images.shape[-1]))
    return save_array(image_grid(images, ncol, upscale), path)


def save_image(image: Tensor, path: str | Path) -> Path:
    """Save one uint8 (C, H, W) image exactly, pixel for pixel."""
    return save_array(image.cpu().permute(1, 2, 0).numpy(), path)


def save_array(array: np.ndarray, path: str | Path) -> Path:
    path = output_path(path)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def save_scatter(points: Tensor, path: str | Path, title: str = "", reference: Tensor | None = None) -> Path:
    """Scatter plot of 2D samples, over the training data in grey when given."""
    fig, ax = new_figure()
    if reference is not None:
        ax.scatter(*reference[:, :2].T.cpu(), s=2, c="0.8", label="data")
    ax.scatter(*points[:, :2].T.cpu(), s=2, c="tab:blue", label="samples")
    ax.set(title=title, aspect="equal")
    ax.legend(loc="upper right", markerscale=4)
    return _save(fig, path)


def save_trajectory_plot(trajectory: list[Step], final: Tensor, path: str | Path) -> Path:
    """How samples travel from noise to data: paths for 2D points, a picture strip for images."""
    plot = save_paths_2d if final.ndim == 2 else save_denoising_strip
    return plot(trajectory, final, path)


def save_paths_2d(trajectory: list[Step], final: Tensor, path: str | Path, count: int = 300) -> Path:
    """The paths of ``count`` samples, with x_t scaled by 1 / sqrt(1 + sigma^2) to stay in view."""
    states = torch.stack([step.x[:count] / math.sqrt(1 + step.sigma**2) for step in trajectory]
                         + [final[:count].cpu()])
    fig, ax = new_figure()
    ax.plot(*states[..., :2].permute(2, 0, 1), lw=0.5, c="tab:blue", alpha=0.3)
    ax.scatter(*states[0, :, :2].T, s=4, c="0.6", label="noise (scaled)")
    ax.scatter(*states[-1, :, :2].T, s=4, c="tab:red", label="sample")
    ax.set(title="sampling trajectories", aspect="equal")
    ax.legend(loc="upper right", markerscale=3)
    return _save(fig, path)


def save_denoising_strip(trajectory: list[Step], final: Tensor, path: str | Path, samples: int = 4) -> Path:
    """For each of ``samples`` images, a row of x_t (scaled to unit variance) and a row of
    x0_hat, at 8 steps from the first to the last."""
    picks = np.linspace(0, len(trajectory) - 1, 8).round().astype(int)
    tiles = []
    for k in range(min(samples, len(final))):
        tiles += [trajectory[i].x[k] / math.sqrt(1 + trajectory[i].sigma**2) for i in picks]
        tiles += [trajectory[i].x0_hat[k] for i in picks]
    return save_image_grid(to_uint8(torch.stack(tiles)), path, ncol=len(picks))


def _save(fig, path: str | Path) -> Path:
    path = output_path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def output_path(path: str | Path) -> Path:
    """``path`` as a Path, with its folder created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_nfe_plot(results: list[dict], path: str | Path, ylabel: str) -> Path:
    """FID against the number of network evaluations, one line per sampler (log-scaled NFE)."""
    fig, ax = new_figure()
    for sampler in dict.fromkeys(r["sampler"] for r in results):
        points = sorted((r["nfe"], r["fid"]) for r in results if r["sampler"] == sampler)
        ax.plot(*zip(*points), marker="o", label=sampler)
    ax.set(xscale="log", xlabel="network evaluations per sample (NFE)", ylabel=ylabel, title="quality against cost")
    ax.legend()
    return _save(fig, path)
