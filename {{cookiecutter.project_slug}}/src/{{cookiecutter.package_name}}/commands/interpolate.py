"""``interpolate``: a strip of samples that changes one thing at a time, as a PNG and a GIF.

* ``between=noise``: spherical interpolation between the noises of two seeds.
* ``between=images``: two training images (a latent model's: their latents) inverted to their
  noises (the deterministic sampler run upwards), then interpolated; how well each inversion
  reconstructs its image is printed.
* ``between=labels``: one noise, the guidance moving from one label to another.
* ``between=guidance``: one noise and label, the guidance weight swept over ``weights``.
* ``between=conditions``: a model conditioned on vectors; one noise, the condition moving in a
  straight line from that of training example ``images[0]`` to that of ``images[1]``.

Images make a strip; sequences and sets a picture of every frame and a GIF.

The sampler must be deterministic (euler, ddim with eta=0, heun without churn, dpmpp_2m, ...):
noise added along the way would change every frame, not only what is interpolated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from omegaconf import MISSING

from ..config import RUN_SECTIONS
from ..data import DiffusionDataModule
from ..devices import pick_device
from ..diffusion.samplers import SAMPLERS, configured_sampler
from ..errors import ConfigError
from ..pixels import to_uint8
from ..runs import open_run, record_made_by
from ..tasks.interpolate import invert, slerp
from ..visualize import data_frames, enlarged_grid, save_gif, save_labelled_grid, save_samples_picture

USAGE = f"""\
interpolate run=DIR [key=value ...]
                          a strip PNG and a GIF: between=noise (seeds=[0,1]), images (images=[i,j] of
                          the training data, inverted), labels (labels=[3,8]) or guidance
                          (weights=[0,1,2,4]); keys: frames, label, out, device, and any sampling key:
                          {", ".join(RUN_SECTIONS["sampling"])}"""


@dataclass
class InterpolateCommand:
    run: str = MISSING
    between: Literal["noise", "images", "labels", "guidance", "conditions"] = "noise"
    frames: int = 9                        # pictures in the strip (noise, images, labels)
    seeds: list[int] = field(default_factory=lambda: [0, 1])      # between=noise: the two noises
    images: list[int] = field(default_factory=lambda: [0, 1])     # between=images, conditions: training examples
    labels: Optional[list[Any]] = None     # between=labels: the two labels; otherwise the label to draw (conditional)
    weights: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 5.0, 8.0])   # between=guidance
    seed: int = 0                          # the noise of labels and guidance sweeps
    out: Optional[str] = None              # default <run>/interpolate
    device: str = "auto"


def run(overrides: list[str]) -> Path:
    command, model, run_dir, sampling = open_run(overrides, InterpolateCommand, "interpolate", ("frames",))
    check_request(command, sampling, model)
    model.to(pick_device(command.device))
    plan = {"noise": between_noises, "images": between_images, "labels": between_labels,
            "guidance": across_guidance, "conditions": between_conditions}[command.between]
    frames, names = plan(model, command, sampling)
    out = run_dir.task("interpolate", command.out)
    title = f"{run_dir.root.name}: between {command.between}, {sampling.sampler}, {sampling.steps} steps"
    if model.kind == "image":
        images = to_uint8(frames)
        strip = save_labelled_grid(images, [""], names, out / f"{command.between}.png", title)
        pictures = [enlarged_grid(image[None], 1, tile=128) for image in images]
    else:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(frames.cpu(), out / f"{command.between}.pt")
        strip = save_samples_picture(frames, out / f"{command.between}.png", title, kind=model.kind)
        pictures = [frame for frame in data_frames([x[None] for x in frames], model.kind, names, count=1)]
    gif = save_gif(pictures + pictures[-2:0:-1], out / f"{command.between}.gif", seconds_per_frame=0.2, hold=0.2)
    print(f"{strip}\n{gif}")
    record_made_by(out, "interpolate", command, model, sampling)
    return out


def check_request(command, sampling, model) -> None:
    if model.kind not in ("image", "sequence", "set"):
        raise ConfigError(f"interpolate draws images, sequences or sets; {command.run} was trained on data of shape "
                          f"{list(model.data_shape)}")
    if command.between == "conditions" and model.condition_table is None:
        raise ConfigError(f"between=conditions needs a model conditioned on vectors (a tensor file's 'conditions'); "
                          f"{command.run} is not")
    if not SAMPLERS[sampling.sampler].deterministic(sampling):
        raise ConfigError(f"interpolate needs a deterministic sampler, and sampler={sampling.sampler} adds noise "
                          "(eta, churn or mu above 0, ddpm, or consistency in more than one step); use "
                          "sampler=dpmpp_2m or sampler=euler (a consistency student: steps=1)")
    if command.between in ("labels", "guidance") and not model.num_classes:
        raise ConfigError(f"between={command.between} needs a class-conditional model; {command.run} is unconditional")
    if command.between == "labels" and len(command.labels or []) != 2:
        raise ConfigError("between=labels needs two labels, e.g. labels=[3,8]")
    if len(command.seeds) != 2 or len(command.images) != 2:
        raise ConfigError("seeds and images each name two, e.g. seeds=[0,1] images=[12,345]")


def fractions(frames: int) -> list[float]:
    return np.linspace(0, 1, frames).tolist()


def labels_of(command, model, n: int) -> torch.Tensor | None:
    """n copies of the label to draw (the first asked for, or 0) for a conditional model, else None."""
    if not model.num_classes:
        return None
    return torch.tensor([command.labels[0] if command.labels else 0]).expand(n)


def between_noises(model, command, sampling):
    a, b = (torch.randn(1, *model.data_shape, generator=torch.Generator().manual_seed(seed)) for seed in command.seeds)
    noise = torch.cat([slerp(a, b, t) for t in fractions(command.frames)])
    x = model.sample(len(noise), torch.Generator(), sampling, labels=labels_of(command, model, len(noise)),
                     noise=noise).x
    return x, [f"t={t:.2f}" for t in fractions(command.frames)]


def between_images(model, command, sampling):
    data = DiffusionDataModule.of_run(model.config)
    model.check_data(data.data_shape)
    images = data.training_examples(command.images).to(model.device)
    denoiser = model.guided(2, sampling.guidance, labels_of(command, model, 2))
    sigmas = model.sigmas(sampling)
    start = model.codec.latents(images)                  # a latent model inverts its images' latents
    noises = invert(denoiser, sigmas, start, configured_sampler(sampling)) / sigmas[0].item()
    rebuilt = model.sample(2, torch.Generator(), sampling, labels=labels_of(command, model, 2), noise=noises.cpu()).x
    for index, image, copy in zip(command.images, images, rebuilt):
        error = (copy - image).square().mean().sqrt().item()
        print(f"image {index}: inverted and regenerated with {100 * error / 2:.2f}% RMS error (of the [-1, 1] range)")
    noise = torch.cat([slerp(noises[:1].cpu(), noises[1:].cpu(), t) for t in fractions(command.frames)])
    x = model.sample(len(noise), torch.Generator(), sampling, labels=labels_of(command, model, len(noise)),
                     noise=noise).x
    return x, [f"t={t:.2f}" for t in fractions(command.frames)]


def between_labels(model, command, sampling):
    a, b = command.labels
    noise = torch.randn(1, *model.data_shape, generator=torch.Generator().manual_seed(command.seed))
    frames = []
    for t in fractions(command.frames):
        conditions = [(torch.tensor([a]), (1 - t) * sampling.guidance), (torch.tensor([b]), t * sampling.guidance)]
        frames.append(model.sample(1, torch.Generator(), sampling, conditions=conditions, noise=noise).x)
    return torch.cat(frames), [f"{a}→{b}\nt={t:.2f}" for t in fractions(command.frames)]


def between_conditions(model, command, sampling):
    data = DiffusionDataModule.of_run(model.config)
    a, b = data.train_set.labels[command.images]
    noise = torch.randn(1, *model.data_shape, generator=torch.Generator().manual_seed(command.seed))
    frames = [model.sample(1, torch.Generator(), sampling, labels=((1 - t) * a + t * b)[None], noise=noise).x
              for t in fractions(command.frames)]
    i, j = command.images
    return torch.cat(frames), [f"#{i}→#{j} t={t:.2f}" for t in fractions(command.frames)]


def across_guidance(model, command, sampling):
    noise = torch.randn(1, *model.data_shape, generator=torch.Generator().manual_seed(command.seed))
    frames = [model.sample(1, torch.Generator(), sampling, conditions=[(labels_of(command, model, 1), weight)],
                           noise=noise).x
              for weight in command.weights]
    return torch.cat(frames), [f"w={weight:g}" for weight in command.weights]
