"""Pictures: image grids, 2D scatter plots, sequences as curves or paths, sets of points from
several sides, and sampling trajectories, saved as PNG. ``save_samples_picture`` picks the
picture that suits the kind of data."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from .diffusion.samplers import Step
from .kinds import data_kind
from .pixels import to_uint8
from .sets import missing_points, real_points


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


def enlarged_grid(images: Tensor, ncol: int | None = None, tile: int = 64) -> np.ndarray:
    """``image_grid`` with pixels repeated until a tile is at least ``tile`` pixels wide."""
    return image_grid(images, ncol, max(1, math.ceil(tile / images.shape[-1])))


def save_image_grid(images: Tensor, path: str | Path, ncol: int | None = None) -> Path:
    """Save uint8 images as one PNG grid, enlarged to at least 64 pixels a tile."""
    return save_array(enlarged_grid(images, ncol), path)


def save_image(image: Tensor, path: str | Path) -> Path:
    """Save one uint8 (C, H, W) image exactly, pixel for pixel."""
    return save_array(image.cpu().permute(1, 2, 0).numpy(), path)


def save_array(array: np.ndarray, path: str | Path) -> Path:
    path = output_path(path)
    pil_image(array).save(path)
    return path


def pil_image(array: np.ndarray) -> Image.Image:
    """An (H, W, C) uint8 array as a PIL image: grayscale when it has one channel."""
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_scatter(points: Tensor, path: str | Path, title: str = "", reference: Tensor | None = None) -> Path:
    """Scatter plot of 2D samples, over the training data in grey when given."""
    fig, ax = new_figure()
    if reference is not None:
        ax.scatter(*reference[:, :2].T.cpu(), s=2, c="0.8", label="data")
    ax.scatter(*points[:, :2].T.cpu(), s=2, c="tab:blue", label="samples")
    ax.set(title=title, aspect="equal")
    ax.legend(loc="upper right", markerscale=4)
    return _save(fig, path)


def as_is(x: Tensor) -> Tensor:
    """What a pixel model's states are as pictures: themselves (the default ``decode``)."""
    return x


def save_trajectory_plot(trajectory: list[Step], final: Tensor, path: str | Path, title: str = "",
                         decode=as_is) -> Path:
    """How samples travel from noise to data: paths for 2D points; for images, rows of x_t and
    x0_hat for up to 4 samples at 8 steps, labelled with the step and its noise level. The
    states are shown as ``decode`` takes them to data (a latent model's, a tensor file's units)."""
    if final.ndim == 2:
        return save_paths_2d(trajectory, final, path, decode=decode)
    return save_labelled_grid(*denoising_grid(trajectory, samples=4, columns=8, decode=decode), path, title)


def paths_2d(trajectory: list[Step], final: Tensor, count: int, decode=as_is) -> Tensor:
    """(steps + 1, count, D): the states of ``count`` samples along their paths, x_t scaled by
    1 / sqrt(1 + sigma^2) to stay in view and taken to the data's units by ``decode``, then the
    samples themselves (``final``, already in them)."""
    return torch.stack([decode(scaled_state(step)[:count]) for step in trajectory] + [final[:count].cpu()])


def save_paths_2d(trajectory: list[Step], final: Tensor, path: str | Path, count: int = 300,
                  decode=as_is) -> Path:
    """The paths of ``count`` samples (``paths_2d``)."""
    states = paths_2d(trajectory, final, count, decode)
    fig, ax = new_figure()
    ax.plot(*states[..., :2].permute(2, 0, 1), lw=0.5, c="tab:blue", alpha=0.3)
    ax.scatter(*states[0, :, :2].T, s=4, c="0.6", label="noise (scaled)")
    ax.scatter(*states[-1, :, :2].T, s=4, c="tab:red", label="sample")
    ax.set(title="sampling trajectories", aspect="equal")
    ax.legend(loc="upper right", markerscale=3)
    return _save(fig, path)


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
    """FID against the number of network evaluations, one line per model and sampler (log-scaled
    NFE); the lines are named by sampler, and by model too when there are several."""
    fig, ax = new_figure()
    several = len({r["model"] for r in results}) > 1
    for model, sampler in dict.fromkeys((r["model"], r["sampler"]) for r in results):
        points = sorted((r["nfe"], r["fid"]) for r in results if (r["model"], r["sampler"]) == (model, sampler))
        ax.plot(*zip(*points), marker="o", label=f"{model}: {sampler}" if several else sampler)
    ax.set(xscale="log", xlabel="network evaluations per sample (NFE)", ylabel=ylabel, title="quality against cost")
    ax.legend()
    return _save(fig, path)


def save_histograms(values: dict[str, Tensor], path: str | Path, xlabel: str) -> Path:
    """Overlaid histograms of several sets of values, each named and normalised to a density."""
    fig, ax = new_figure()
    everything = torch.cat([v.flatten() for v in values.values()]).double()
    bins = np.linspace(everything.min().item(), everything.max().item() + 1e-9, 40)
    for name, v in values.items():
        ax.hist(v.double().numpy(), bins=bins, density=True, alpha=0.5, label=f"{name} ({len(v)})")
    ax.set(xlabel=xlabel, ylabel="density")
    ax.legend()
    return _save(fig, path)


def save_curves(curves: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Each named curve against the step, one panel each, log-scaled when all its values are positive."""
    fig = Figure(figsize=(5 * len(curves), 3.5))
    for ax, (name, values) in zip(fig.subplots(1, len(curves), squeeze=False)[0], curves.items()):
        ax.plot(values, linewidth=0.8)
        ax.set(xlabel="step", ylabel=name, yscale="log" if min(values, default=0) > 0 else "linear")
    fig.suptitle(title)
    return _save(fig, path)


def save_point_cloud(occupied: Tensor, colour: Tensor, path: str | Path) -> Path:
    """The centres of the ``occupied`` voxels (R, R, R; indexed z, y, x over [-1, 1]^3) with
    their ``colour`` (C, R, R, R; in [0, 1]) as an ASCII PLY point cloud (Turk 1994), the format
    that MeshLab, Blender, CloudCompare and trimesh open."""
    index = occupied.nonzero()                                         # (M, 3): z, y, x
    xyz = (-1 + 2 * index.double() / (occupied.shape[0] - 1)).flip(1)  # x, y, z
    rgb = (colour[:, index[:, 0], index[:, 1], index[:, 2]].T.clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = rgb.expand(-1, 3) if rgb.shape[1] == 1 else rgb[:, :3]
    header = ["ply", "format ascii 1.0", f"element vertex {len(index)}", "property float x", "property float y",
              "property float z", "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    rows = [f"{x:.5f} {y:.5f} {z:.5f} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(xyz.tolist(), rgb.tolist())]
    path = output_path(path)
    path.write_text("\n".join(header + rows) + "\n")
    return path


# -- labelled pictures and animations (the course tasks) --------------------------------------------
def figure_array(fig: Figure) -> np.ndarray:
    """A figure rendered to an RGB uint8 array (for animation frames)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def labelled_grid_figure(tiles: Tensor, row_labels: list[str], column_labels: list[str], title: str = "") -> Figure:
    """uint8 tiles (rows * columns, C, H, W), in row order, drawn as one grid with every row and
    column named (long names, such as prompts, wrapped to the width of a tile)."""
    rows, columns = len(row_labels), len(column_labels)
    column_labels = ["\n".join(textwrap.fill(line, 16) for line in label.split("\n")) for label in column_labels]
    size = tiles.shape[-1]
    fig = Figure(figsize=(1.1 * columns + 1.2, 1.1 * rows + 0.6))
    ax = fig.subplots()
    ax.imshow(image_grid(tiles, ncol=columns), cmap="gray" if tiles.shape[1] == 1 else None, vmin=0, vmax=255)
    centres = [1 + k * (size + 1) + size / 2 - 0.5 for k in range(max(rows, columns))]
    crowded = columns > 8 and max(map(len, column_labels), default=0) > 3
    ax.set_xticks(centres[:columns], column_labels, fontsize=7, rotation=45 if crowded else 0)
    ax.set_yticks(centres[:rows], row_labels, fontsize=7)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=9)
    return fig


def save_labelled_grid(tiles: Tensor, row_labels: list[str], column_labels: list[str], path: str | Path,
                       title: str = "") -> Path:
    return _save(labelled_grid_figure(tiles, row_labels, column_labels, title), path)


def save_sample_grid(images: Tensor, path: str | Path, title: str, column_names: list[str] | None = None) -> Path:
    """Samples as one titled grid; with ``column_names`` one column per name, named below (the
    labels of a class-conditional model cycle through them), else a square grid."""
    columns = len(column_names) if column_names else math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    return save_labelled_grid(images, [""] * rows, column_names or [""] * columns, path, title)


def save_samples_picture(x: Tensor, path: str | Path, title: str, column_names: list[str] | None = None,
                         reference: Tensor | None = None, kind: str | None = None) -> Path:
    """Samples as the picture that suits their ``kind`` (default: read off their shape):
    vectors as a scatter plot of their first two coordinates (over ``reference`` data, when
    given), sequences as curves (two channels: as paths in the plane), sets of points as scatter
    plots, images as a titled grid (with columns named by class when their labels cycle)."""
    kind = kind or data_kind(tuple(x.shape[1:]))
    if kind == "vector":
        return save_scatter(x, path, title, reference)
    if kind == "sequence":
        return save_paths(x, path, title) if x.shape[1] == 2 else save_sequences(x, path, title)
    if kind == "set":
        return save_sets(x, path, title)
    return save_sample_grid(to_uint8(x), path, title, column_names)


def panels(count: int, size: float = 2.4) -> tuple[Figure, list]:
    """A figure of ``count`` small square panels, at most 4 a row, without ticks."""
    columns = min(4, count)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(size * columns, size * rows + 0.5))
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.axis("off")
    return fig, list(axes[:count])


def save_sequences(x: Tensor, path: str | Path, title: str = "", count: int = 16) -> Path:
    """Up to ``count`` sequences (N, C, L), one panel each, a curve per channel over the steps."""
    shown = x[:count].cpu()
    fig, axes = panels(len(shown))
    for ax, sequence in zip(axes, shown):
        for channel in sequence:
            ax.plot(channel, lw=1)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def draw_path(ax, path: Tensor, colour: str = "tab:blue", label: bool = False) -> None:
    """A path (2, L) through the plane: its start a circle, its end a star."""
    ax.plot(*path, lw=1.2, c=colour)
    ax.scatter(*path[:, 0], s=30, c="tab:green", marker="o", zorder=3, label="start" if label else None)
    ax.scatter(*path[:, -1], s=60, c="tab:red", marker="*", zorder=3, label="end" if label else None)


def save_paths(x: Tensor, path: str | Path, title: str = "", count: int = 16) -> Path:
    """Up to ``count`` two-channel sequences (N, 2, L) as paths in the plane, one panel each."""
    shown = x[:count].cpu()
    fig, axes = panels(len(shown))
    low, high = shown.amin((0, 2)), shown.amax((0, 2))
    margin = 0.05 * (high - low).max()
    for i, (ax, sequence) in enumerate(zip(axes, shown)):
        draw_path(ax, sequence, label=i == 0)
        ax.set(aspect="equal", xlim=(low[0] - margin, high[0] + margin), ylim=(low[1] - margin, high[1] + margin))
    axes[0].legend(loc="best", fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def draw_example(ax, example: Tensor, kind: str) -> None:
    """One sequence (two channels: a path) or one set of points (its first two coordinates)."""
    if kind == "set":
        points = real_points(example)
        ax.scatter(points[:, 0], points[:, 1], s=12, c="tab:blue")
    elif len(example) == 2:
        draw_path(ax, example)
    else:
        for channel in example:
            ax.plot(channel, lw=1)


def data_frames(states: list[Tensor], kind: str, titles: list[str], count: int = 4) -> list[np.ndarray]:
    """The frames of a GIF of sequences or sets: for each state (N, ...), up to ``count`` of its
    examples side by side (``draw_example``), on axes fixed by the last state."""
    states = [state[:count].detach().cpu() for state in states]
    last = states[-1]
    finite = last[torch.isfinite(last)]
    low, high = (finite.min().item(), finite.max().item()) if len(finite) else (-1.0, 1.0)
    margin = 0.1 * (high - low) + 1e-6
    frames = []
    for state, title in zip(states, titles):
        fig, axes = panels(len(state), 2.2)
        for ax, example in zip(axes, state):
            draw_example(ax, example, kind)
            if kind == "set" or len(example) == 2:
                ax.set(aspect="equal", xlim=(low - margin, high + margin), ylim=(low - margin, high + margin))
            else:
                ax.set_ylim(low - margin, high + margin)
        fig.suptitle(title, fontsize=9)
        frames.append(figure_array(fig))
    return frames


def save_denoising_gif(trajectory: list[Step], final: Tensor, path: str | Path, kind: str, decode=as_is) -> Path:
    """Sequences and sets: the denoiser's estimate x0_hat at every step (``decode`` takes it to the
    data's units), then the sample."""
    states = [decode(step.x0_hat) for step in trajectory] + [final]
    titles = [f"x0_hat at step {step.i}, σ = {step.sigma:.3g}" for step in trajectory] + ["sample"]
    return save_gif(data_frames(states, kind, titles), path, seconds_per_frame=0.25)


def save_restored_sequences(truth: Tensor, restored: Tensor, known: Tensor, path: str | Path, title: str,
                            names: list[str]) -> Path:
    """Sequences (N, C, L) filled in from their ``known`` steps (L,): the original dashed grey,
    the restored in colour, the known steps as black dots; two channels as paths in the plane."""
    fig, axes = panels(len(truth), 2.8)
    for ax, original, result, name in zip(axes, truth, restored, names):
        if truth.shape[1] == 2:
            ax.plot(*original, ls="--", c="0.6", lw=1, label="original")
            draw_path(ax, result)
            ax.scatter(*original[:, known], s=14, c="k", zorder=4, label="known")
            ax.set(aspect="equal")
        else:
            for channel, (was, now) in enumerate(zip(original, result)):
                ax.plot(was, ls="--", c="0.6", lw=1)
                ax.plot(now, c=f"C{channel}", lw=1.2)
                ax.scatter(known.nonzero().flatten(), was[known], s=14, c="k", zorder=4)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title + "  (dashed: original, dots: known)", fontsize=9)
    return _save(fig, path)


def save_sets(x: Tensor, path: str | Path, title: str = "", count: int = 8) -> Path:
    """Up to ``count`` sets of points (N, P, D), missing points left out: 2D sets as one
    scatter plot each; 3D sets from three sides (x-y, x-z, y-z), a row each."""
    shown = x[:count].cpu()
    views = [(0, 1)] if shown.shape[-1] < 3 else [(0, 1), (0, 2), (1, 2)]
    fig = Figure(figsize=(2.2 * len(views) * min(2, len(shown)), 2.2 * math.ceil(len(shown) / 2) + 0.5))
    axes = fig.subplots(math.ceil(len(shown) / 2), 2 * len(views), squeeze=False).flatten()
    real = shown[~missing_points(shown)]
    extent = real.abs().max().item() * 1.1 if len(real) else 1.0
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set(aspect="equal", xlim=(-extent, extent), ylim=(-extent, extent))
    for i, points in enumerate(shown):
        points = real_points(points)
        for j, (a, b) in enumerate(views):
            ax = axes[i * len(views) + j]
            depth = {"c": points[:, 3 - a - b], "cmap": "viridis"} if len(views) > 1 else {"c": "tab:blue"}
            ax.scatter(points[:, a], points[:, b], s=12, **depth)
            ax.set_title(f"#{i} {'xyz'[a]}-{'xyz'[b]}" if len(views) > 1 else f"#{i} ({len(points)} points)",
                         fontsize=7)
    for ax in axes[len(shown) * len(views):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def save_samples(x: Tensor, trajectory: list[Step], out: Path, title: str,
                 column_names: list[str] | None = None, kind: str | None = None, decode=as_is) -> None:
    """What ``sample`` writes: samples.pt, samples.png (``save_samples_picture``), for images
    images/NNNNNN.png (exact pixels), and when a trajectory was kept trajectory.png (sequences
    and sets: trajectory.gif), its states taken to the data's units by ``decode``."""
    torch.save(x, out / "samples.pt")
    picture = save_samples_picture(x, out / "samples.png", title, column_names, kind=kind)
    if data_kind(tuple(x.shape[1:])) == "image":
        for i, image in enumerate(to_uint8(x)):
            save_image(image, out / "images" / f"{i:06d}.png")
    print(f"{len(x)} samples ({title}): {picture}")
    if trajectory and kind in ("sequence", "set"):
        print(f"trajectory: {save_denoising_gif(trajectory, x, out / 'trajectory.gif', kind, decode)}")
    elif trajectory:
        plot = save_trajectory_plot(trajectory, x[:len(trajectory[0].x)], out / "trajectory.png", title, decode)
        print(f"trajectory: {plot}")


def sampling_title(name: str, sampling, nfe: int, conditional: bool) -> str:
    """What made a picture of samples: the run, sampler, steps, network evaluations and guidance."""
    guidance = f", guidance {sampling.guidance:g}" if conditional else ""
    return f"{name}: {sampling.sampler}, {sampling.steps} steps, {nfe} NFE{guidance}"


def save_gif(frames: list[np.ndarray], path: str | Path, seconds_per_frame: float = 0.15, hold: float = 1.5) -> Path:
    """An animated GIF of (H, W, C) uint8 frames, looping, that rests ``hold`` seconds on its last."""
    path = output_path(path)
    images = [pil_image(frame) for frame in frames]
    durations = [round(1000 * seconds_per_frame)] * (len(images) - 1) + [round(1000 * hold)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def scaled_state(step: Step) -> Tensor:
    """x_t divided by sqrt(1 + sigma^2): the noisy state at the scale of the data, to be shown."""
    return step.x / math.sqrt(1 + step.sigma**2)


def denoising_grid(trajectory: list[Step], samples: int, columns: int,
                   decode=as_is) -> tuple[Tensor, list[str], list[str]]:
    """uint8 tiles with a row of x_t (at the data's scale) and a row of x0_hat for each of
    ``samples`` samples, at ``columns`` steps from the first to the last, as images (a latent
    model's states decoded by ``decode``: its noisy latents decode to noise of their own); the
    rows' and columns' labels (the step and its noise level)."""
    picks = np.linspace(0, len(trajectory) - 1, min(columns, len(trajectory))).round().astype(int)
    samples = min(samples, len(trajectory[0].x))
    tiles = torch.stack([tile for k in range(samples) for row in (
        [scaled_state(trajectory[i])[k] for i in picks], [trajectory[i].x0_hat[k] for i in picks]) for tile in row])
    rows = [label for k in range(samples) for label in (f"x_t #{k}", f"x0_hat #{k}")]
    return to_uint8(decode(tiles)), rows, [f"step {trajectory[i].i}\nσ={trajectory[i].sigma:.3g}" for i in picks]


def save_denoising(trajectory: list[Step], folder: Path, title: str, columns: int = 10,
                   decode=as_is) -> tuple[Path, Path]:
    """Images: denoising.png (``denoising_grid`` of every sample); denoising.gif, every step:
    x_t on the left, x0_hat on the right, one row per sample (decoded by ``decode``)."""
    samples = len(trajectory[0].x)
    grid = save_labelled_grid(*denoising_grid(trajectory, samples, columns, decode), folder / "denoising.png", title)
    frames = []
    for step in trajectory:
        pairs = torch.stack([tile for k in range(samples) for tile in (scaled_state(step)[k], step.x0_hat[k])])
        frames.append(enlarged_grid(to_uint8(decode(pairs)), ncol=2))
    return grid, save_gif(frames, folder / "denoising.gif")


def save_vector_fields(denoiser, sigmas: list[float], data: Tensor, path: str | Path, points: int = 21,
                       device: torch.device | str = "cpu") -> Path:
    """2D data: at each noise level, the arrows D(x, sigma) - x from a grid of noisy points
    towards where the denoiser sends them (its vector field), over the data in grey. Arrows are
    scaled per panel so that the longest spans two grid cells: compare lengths within a panel."""
    low, high = data.min(0).values - 1, data.max(0).values + 1
    axis_x, axis_y = (torch.linspace(low[d].item(), high[d].item(), points) for d in (0, 1))
    grid = torch.stack(torch.meshgrid(axis_x, axis_y, indexing="xy"), -1).reshape(-1, 2)
    fig = Figure(figsize=(3.2 * len(sigmas), 3.4))
    for ax, sigma in zip(fig.subplots(1, len(sigmas), squeeze=False)[0], sigmas):
        with torch.no_grad():
            arrows = (denoiser(grid.to(device), torch.full((len(grid),), sigma, device=device)) - grid.to(device)).cpu()
        arrows = arrows * 2 * (axis_x[1] - axis_x[0]) / arrows.norm(dim=1).max().clamp_min(1e-12)
        ax.scatter(*data[:2000, :2].T.cpu(), s=1, c="0.75")
        ax.quiver(*grid.T, *arrows.T, angles="xy", scale_units="xy", scale=1, width=0.004, color="tab:blue")
        ax.set(title=f"σ = {sigma:g}", aspect="equal", xlim=(low[0], high[0]), ylim=(low[1], high[1]))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("the denoiser's pull D(x, σ) - x (longest arrow scaled to two cells in each panel)", fontsize=10)
    return _save(fig, path)


def save_particles_gif(trajectory: list[Step], final: Tensor, data: Tensor, path: str | Path, count: int = 500) -> Path:
    """2D data: the samples moving from noise to data, one frame per step (x_t scaled to the
    data's scale), over the data in grey."""
    states = [scaled_state(step)[:count] for step in trajectory] + [final[:count].cpu()]
    sigmas = [step.sigma for step in trajectory] + [0.0]
    low, high = data.min(0).values - 1, data.max(0).values + 1
    frames = []
    for state, sigma in zip(states, sigmas):
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        ax.scatter(*data[:2000, :2].T.cpu(), s=1, c="0.8")
        ax.scatter(*state[:, :2].T, s=3, c="tab:blue")
        ax.set(title=f"σ = {sigma:.3g}", aspect="equal", xlim=(low[0], high[0]), ylim=(low[1], high[1]))
        frames.append(figure_array(fig))
    return save_gif(frames, path)
