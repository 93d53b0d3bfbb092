"""``score-distill``: images or a 3D shape optimised so that the model judges them likely
(score distillation: SDS, Poole et al. 2022; SDI, Lukoianov et al. 2024; tasks/score_distillation.py).

* ``generator=pixels``: n images (a latent model's: latents), one per label in turn.
* ``generator=gaussians``: n images, each painted by ``splats`` 2D Gaussians.
* ``generator=voxels``: one voxel field of density and colour (tasks/render.py), rendered from
  random cameras (azimuth 0-360, elevation in ``elevation``; orthographic, or pinhole cameras with
  a field of view of ``fov`` degrees). A model whose classes are named by
  azimuths in degrees (0, 45, 90, ...; a view-conditioned model) is given the class nearest each
  camera; a text model is given the prompt with "front view", "side view" or "back view".

Writes <run>/score_distill/<method>-<generator>/: result.png (the images, or the field from
eight sides), progress.png (the loss and the gradient norm along the way), result.pt (images in
[-1, 1], or the field's density and colour); for voxels also turntable.gif and field.ply (the
occupied voxels as a coloured point cloud, for any 3D viewer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from omegaconf import MISSING
from tqdm import tqdm

from ..config import parse_command
from ..devices import pick_device
from ..errors import ConfigError
from ..model import labels_in_turn
from ..pixels import to_uint8
from ..runs import load_run, record_made_by, resolve_labels
from ..tasks.render import VoxelField
from ..tasks.score_distillation import (
    SCHEDULES,
    WEIGHTS,
    Gaussians,
    Pixels,
    ddpm_sigma,
    distillation_loss,
    noise_time,
    sdi_noise,
)
from ..visualize import enlarged_grid, save_curves, save_gif, save_labelled_grid, save_point_cloud

USAGE = """\
score-distill run=DIR [key=value ...]
                          optimise images or a 3D voxel field with the model's score: method=sds
                          or sdi, generator=pixels, gaussians or voxels; keys: labels, n, steps,
                          lr, guidance, weighting, schedule, t_range, t_max_end, inversion_steps,
                          splats, resolution, size, samples, elevation, fov, background, seed,
                          out, device"""

VIEWS = {"front": 0.0, "side": 90.0, "back": 180.0}      # a text model's view prompts (DreamFusion, sec. 3.2)


@dataclass
class ScoreDistillCommand:
    run: str = MISSING
    method: Literal["sds", "sdi"] = "sds"
    generator: Literal["pixels", "gaussians", "voxels"] = "pixels"
    labels: Optional[list[Any]] = None     # classes in turn (2D), or a text model's prompt(s); voxels: one, or views
    n: int = 8                             # 2D: images optimised together; voxels: views rendered per step
    steps: int = 500                       # optimisation steps
    lr: float = 0.05                       # Adam's learning rate on the generator's parameters
    guidance: float = 3.0                  # classifier-free guidance weight (DreamFusion uses 100 with text)
    weighting: str = "dreamfusion"         # dreamfusion (w = 1 - alpha_bar) | uniform | x0
    t_range: list[float] = field(default_factory=lambda: [0.02, 0.98])    # noise levels, as fractions of DDPM's steps
    schedule: Optional[str] = None         # random | descending (default: sds random, sdi descending, their papers')
    t_max_end: float = 0.98                # random: the upper end moves linearly to this by the last step (annealing)
    inversion_steps: int = 10              # sdi: DDIM steps of the inversion that finds each step's noise
    splats: int = 200                      # gaussians: Gaussians per image
    resolution: int = 32                   # voxels: the grid's side
    size: int = 0                          # voxels: rendered image side (0: the model's)
    samples: int = 64                      # voxels: points along each ray
    elevation: list[float] = field(default_factory=lambda: [15.0, 15.0])   # voxels: camera elevations, degrees
    fov: Optional[float] = None            # voxels: the cameras' field of view in degrees; None: orthographic
    background: float = 1.0                # voxels: grey level behind the field, 0 (black) to 1 (white)
    seed: int = 0
    out: Optional[str] = None              # default <run>/score_distill/<method>-<generator>
    device: str = "auto"


def run(overrides: list[str]) -> Path:
    command, _ = parse_command(overrides, ScoreDistillCommand, "score-distill", None,
                               ("n", "steps", "inversion_steps", "splats", "samples"))
    check_request(command)
    model, run_dir = load_run(command.run)
    views = view_labels(command, model)
    if model.takes_prompts:
        use_prompts(command, model, views)
    resolve_labels(command, model)
    model.to(pick_device(command.device))
    generator = torch.Generator().manual_seed(command.seed)
    g = make_generator(command, model, generator).to(model.device)
    history = optimise(g, command, model, views, generator)
    out = Path(command.out) if command.out else run_dir.task("score_distill") / f"{command.method}-{command.generator}"
    save(g, command, model, out, history)
    record_made_by(out, "score-distill", command, model)
    return out


def optimise(g, command: ScoreDistillCommand, model, views: torch.Tensor | None,
             generator: torch.Generator) -> dict[str, list[float]]:
    """``command.steps`` steps of Adam on the generator's parameters, each with the gradient of
    ``distillation_loss``; the loss (per image) and the gradient norm of every step."""
    optimiser = torch.optim.Adam(g.parameters(), lr=command.lr)
    schedule = command.schedule or ("descending" if command.method == "sdi" else "random")
    history = {"loss": [], "gradient norm": []}
    for step in (bar := tqdm(range(command.steps), desc=f"{command.method} ({command.generator})", unit="step")):
        x, labels = outputs(g, command, model, views, generator)
        t = noise_time(step / max(1, command.steps - 1), tuple(command.t_range), command.t_max_end, schedule,
                       generator)
        denoiser = model.guided(len(x), command.guidance, labels)
        sigma = ddpm_sigma(t)
        eps = (sdi_noise(denoiser, x, sigma, command.inversion_steps) if command.method == "sdi"
               else torch.randn(x.shape, generator=generator).to(x.device))
        loss = distillation_loss(denoiser, x, sigma, eps, command.weighting)
        optimiser.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(g.parameters(), float("inf"))
        optimiser.step()
        history["loss"].append(loss.item() / len(x))
        history["gradient norm"].append(norm.item())
        bar.set_postfix(loss=f"{history['loss'][-1]:.3g}")
    return history


def use_prompts(command: ScoreDistillCommand, model, views: torch.Tensor | None) -> None:
    """A text model's classes: the prompts given as labels, or for voxels the one prompt given
    with each view's words added (its labels are then the views)."""
    prompts = [str(prompt) for prompt in command.labels or []]
    if not prompts:
        raise ConfigError(f"{command.run} is a text-to-image model: give prompts as labels, e.g. "
                          "'labels=[a photo of a red car]'")
    model.use_prompts([f"{prompts[0]}, {name} view" for name in VIEWS] if views is not None else prompts)
    command.labels = None if views is not None else prompts


def check_request(command: ScoreDistillCommand) -> None:
    if command.weighting not in WEIGHTS:
        raise ConfigError(f"weighting={command.weighting}: one of {', '.join(WEIGHTS)}")
    if command.schedule not in (None, *SCHEDULES):
        raise ConfigError(f"schedule={command.schedule}: one of {', '.join(SCHEDULES)}")
    t_range = list(command.t_range)
    if len(t_range) != 2 or not 0 < t_range[0] <= t_range[1] < 1 or not 0 < command.t_max_end < 1:
        raise ConfigError(f"t_range={list(command.t_range)}, t_max_end={command.t_max_end}: t_range is [t_min, t_max] "
                          "with 0 < t_min <= t_max < 1, and t_max_end in (0, 1), fractions of DDPM's 1000 steps")
    if len(command.elevation) != 2 or not -90 < command.elevation[0] <= command.elevation[1] < 90:
        raise ConfigError(f"elevation={list(command.elevation)}: [lowest, highest] in degrees, between -90 and 90")
    if command.fov is not None and not 0 < command.fov < 180:
        raise ConfigError(f"fov={command.fov}: the cameras' field of view in degrees, between 0 and 180 (or null: "
                          "orthographic cameras)")
    if command.lr <= 0 or command.resolution < 2 or command.size < 0 or not 0 <= command.background <= 1:
        raise ConfigError(f"lr={command.lr}, resolution={command.resolution}, size={command.size}, background="
                          f"{command.background}: lr must be > 0, resolution >= 2, size >= 0 (0: the model's) and "
                          "background in [0, 1]")


def view_labels(command: ScoreDistillCommand, model) -> torch.Tensor | None:
    """For voxels without a fixed label: the azimuth (degrees) of each class, when every class
    is named by one, or of each view prompt for a text model; None otherwise."""
    if command.generator != "voxels":
        return None
    if model.takes_prompts:
        if len(command.labels or []) != 1:
            raise ConfigError(f"{command.run} is a text-to-image model: give one prompt, e.g. 'labels=[a red car]' "
                              "(the front, side and back views are added to it)")
        return torch.tensor(list(VIEWS.values()))
    if command.labels:
        return None
    try:
        return torch.tensor([float(name) for name in model.class_names]) if model.class_names else None
    except ValueError:
        return None


def make_generator(command: ScoreDistillCommand, model, generator: torch.Generator) -> torch.nn.Module:
    shape = model.codec.data_shape(model.data_shape)
    if len(shape) != 3:
        raise ConfigError(f"score-distill makes images; {command.run} draws data of shape {list(shape)}")
    if command.generator == "pixels":
        return Pixels(command.n, model.data_shape)              # a latent model's latents
    if command.generator == "gaussians":
        return Gaussians(command.n, shape, command.splats, generator)
    return VoxelField(command.resolution, shape[0])


def outputs(g, command: ScoreDistillCommand, model, views: torch.Tensor | None, generator: torch.Generator):
    """The generator's outputs as the model sees them (a latent model's: the latents of the
    images, with gradients through the encoder), and their labels."""
    if command.generator != "voxels":
        x = g()
        labels = image_labels(command, model, len(x))
    else:
        azimuth = 360 * torch.rand(command.n, generator=generator)
        low, high = command.elevation
        elevation = low + (high - low) * torch.rand(command.n, generator=generator)
        x = g.render(azimuth, elevation, render_size(command, model), command.samples, command.background, command.fov)
        labels = nearest_views(azimuth, views) if views is not None else labels_in_turn(command.labels, 0, len(x))
    if command.generator != "pixels":
        x = model.codec.latents(x)
    return x, None if labels is None else labels.to(x.device)


def image_labels(command: ScoreDistillCommand, model, n: int) -> torch.Tensor | None:
    """The labels of n images: those asked for, in turn, else the model's own (its classes in turn)."""
    return labels_in_turn(command.labels, 0, n) if command.labels else model.default_labels(torch.arange(n))


def nearest_views(azimuth: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The index of the view azimuth nearest each camera's, around the circle."""
    gap = (azimuth[:, None] - views[None]).remainder(360)
    return torch.minimum(gap, 360 - gap).argmin(1)


def render_size(command: ScoreDistillCommand, model) -> int:
    return command.size or model.codec.data_shape(model.data_shape)[-1]


@torch.no_grad()
def save(g, command: ScoreDistillCommand, model, out: Path, history: dict) -> None:
    title = f"{command.method.upper()} on {command.run}, {command.steps} steps, guidance {command.guidance:g}"
    save_curves(history, out / "progress.png", title)
    if command.generator != "voxels":
        x = g()
        images = (model.codec.decode(x) if command.generator == "pixels" else x).detach()
        labels = image_labels(command, model, len(x))
        columns = ([model.class_names[label] for label in labels.tolist()] if labels is not None
                   else [f"#{k}" for k in range(len(x))])
        save_labelled_grid(to_uint8(images.clamp(-1, 1).cpu()), [command.generator], columns, out / "result.png",
                           title)
        torch.save(images.cpu(), out / "result.pt")
        print(out / "result.png")
        return
    size = max(64, render_size(command, model))
    elevation = sum(command.elevation) / 2
    turn = torch.arange(0, 360, 10.0)
    frames = [render(g, a, elevation, size, command) for a in turn]
    save_gif([enlarged_grid(frame, 1, tile=192) for frame in frames], out / "turntable.gif", seconds_per_frame=0.1,
             hold=0.1)
    sides = torch.arange(0, 360, 45.0)
    tiles = torch.cat([render(g, a, elevation, size, command) for a in sides])
    save_labelled_grid(tiles, ["render"], [f"{a:g}°" for a in sides.tolist()], out / "result.png", title)
    torch.save({"density": g.density.cpu(), "colour": g.colour.cpu()}, out / "result.pt")
    occupied = g.occupancy()
    save_point_cloud(occupied.cpu(), g.colour.cpu(), out / "field.ply")
    print(f"{out / 'result.png'}\n{out / 'turntable.gif'}\n{out / 'field.ply'} ({int(occupied.sum())} voxels)")


def render(g: VoxelField, azimuth: float, elevation: float, size: int, command: ScoreDistillCommand) -> torch.Tensor:
    image = g.render(torch.tensor([float(azimuth)]), torch.tensor([float(elevation)]), size, command.samples,
                     command.background, command.fov)
    return to_uint8(image.clamp(-1, 1).cpu())
