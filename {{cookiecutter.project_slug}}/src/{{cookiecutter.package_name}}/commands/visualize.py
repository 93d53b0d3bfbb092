"""``visualize``: how a trained model turns noise into data, as pictures.

Images: ``denoising.png``, the noisy state x_t and the estimate x0_hat at chosen steps of a
few samples, every row and column labelled, and ``denoising.gif``, every step (a latent model's
states decoded by its autoencoder). 2D data:
``vector_fields.png``, the denoiser's pull D(x, sigma) - x at several noise levels, and
``particles.gif``, the samples travelling from noise to the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import MISSING

from ..config import RUN_SECTIONS
from ..data import DiffusionDataModule
from ..devices import pick_device
from ..diffusion.samplers import Trajectory
from ..errors import ConfigError
from ..model import labels_in_turn
from ..runs import open_run, record_made_by
from ..visualize import sampling_title, save_denoising, save_particles_gif, save_vector_fields

USAGE = f"""\
visualize run=DIR [key=value ...]
                          pictures of the denoising: a labelled x_t / x0_hat grid and a GIF
                          (images), vector fields and moving particles (2D); keys: n, seed,
                          labels, columns, sigmas, out, device, and any sampling key:
                          {", ".join(RUN_SECTIONS["sampling"])}"""


FIELD_POINTS = 21        # arrows per side of a vector field


@dataclass
class VisualizeCommand:
    run: str = MISSING                    # a run directory (runs/<name>) or a .ckpt file
    n: Optional[int] = None               # samples followed: default 4 images, or 500 points
    seed: int = 0
    labels: Optional[list[Any]] = None    # conditional models: labels of the samples, in turn
    columns: int = 10                     # steps shown in denoising.png
    sigmas: list[float] = field(default_factory=lambda: [5.0, 1.0, 0.3, 0.05])   # 2D: noise levels of the vector fields
    out: Optional[str] = None             # default <run>/visualize
    device: str = "auto"


def run(overrides: list[str]) -> Path:
    command, model, run_dir, sampling = open_run(overrides, VisualizeCommand, "visualize", ("n", "columns"))
    if model.kind not in ("vector", "image"):
        raise ConfigError(f"visualize draws 2D points or images; {command.run} draws data of shape "
                          f"{list(model.data_shape)}")
    model.to(pick_device(command.device))
    points = model.kind == "vector"
    n = command.n or (500 if points else 4)
    labels = labels_in_turn(command.labels, 0, n)
    trajectory = Trajectory()
    result = model.sample(n, torch.Generator().manual_seed(command.seed), sampling, labels=labels, hooks=[trajectory])
    title = sampling_title(run_dir.root.name, sampling, result.nfe, model.condition is not None)
    out = run_dir.task("visualize", command.out)
    if points:                                       # in the network's units (a tensor file's: scaled)
        reference = model.codec.latents(DiffusionDataModule.of_run(model.config).reference_images())
        grid = FIELD_POINTS**2                       # one label for the whole field: the first asked for, or 0
        label = (labels[:1] if labels is not None else torch.zeros(1, dtype=torch.long)).expand(grid)
        denoiser = model.guided(grid, sampling.guidance, label)
        pictures = [save_vector_fields(denoiser, command.sigmas, reference, out / "vector_fields.png",
                                       FIELD_POINTS, model.device),
                    save_particles_gif(trajectory.steps, model.codec.latents(result.x), reference,
                                       out / "particles.gif")]
    else:
        pictures = list(save_denoising(trajectory.steps, out, title, command.columns, model.codec.decode))
    for picture in pictures:
        print(picture)
    record_made_by(out, "visualize", command, model, sampling)
    return out
