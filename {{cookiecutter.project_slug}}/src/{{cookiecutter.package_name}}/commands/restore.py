"""``restore``: fill in, sharpen, colour or edit training images with a trained model, and say
how well each result agrees with what was observed (the measurement consistency).

Methods (tasks/restore.py): ``inpaint`` (replacement), ``repaint`` (RePaint, ``resample``
tries per step), ``superres`` (DDNM projection, ``factor``), ``colorize`` (DDNM projection,
RGB models), ``dps`` (posterior sampling, ``zeta``; the degradation is the mask, or your own
differentiable ``degradation=package.module:function``) and ``sdedit`` (``strength``).
The images are ``images=[i,j,...]`` of the run's training data; the mask is ``mask=``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
from omegaconf import MISSING, OmegaConf

from ..config import run_config, sampling_keys
from ..data import DiffusionDataModule
from ..diffusion.generate import generate
from ..diffusion.samplers import configured_sampler
from ..diffusion.schedules import sampling_sigmas
from ..errors import ConfigError
from ..pixels import to_uint8, to_unit_range
from ..runs import load_run, pick_device
from ..tasks.restore import (PosteriorSampling, Projected, downsample, grayscale, masked, measurement_error, repaint,
                             sdedit)
from ..visualize import save_labelled_grid
from .sample import check_conditions, split_overrides

USAGE = f"""\
restore run=DIR method=NAME [key=value ...]
                          inpaint | repaint | superres | colorize | dps | sdedit on images=[i,...] of the
                          training data; keys: mask, resample, factor, zeta, degradation, strength,
                          labels, seed, out, device, and any sampling key: {", ".join(sampling_keys())}"""

Method = Literal["inpaint", "repaint", "superres", "colorize", "dps", "sdedit"]


@dataclass
class RestoreCommand:
    run: str = MISSING
    method: Method = MISSING
    images: list[int] = field(default_factory=lambda: [0, 1, 2, 3])   # indices into the training data
    mask: Literal["center", "left", "right", "top", "bottom", "random"] = "center"   # the pixels hidden
    resample: int = 10                   # repaint: tries per step
    factor: int = 2                      # superres: each factor x factor block is observed as its mean
    zeta: float = 10.0                   # dps: strength of the pull towards the observation
    degradation: Optional[str] = None    # dps: package.module:function, a differentiable A(x) on [-1, 1] images
    strength: float = 0.5                # sdedit: 0 keeps the image, 1 draws afresh
    labels: Optional[list[int]] = None   # conditional models: the label to restore towards (default: unguided)
    seed: int = 0
    out: Optional[str] = None            # default <run>/restore
    device: str = "auto"


def hidden(kind: str, size: int, seed: int) -> torch.Tensor:
    """1 where a pixel is observed, 0 where it is to be filled in: (1, 1, size, size)."""
    keep = torch.ones(1, 1, size, size)
    half, quarter = size // 2, size // 4
    if kind == "center":
        keep[..., quarter:quarter + half, quarter:quarter + half] = 0
    elif kind in ("left", "right"):
        keep[..., :, slice(0, half) if kind == "left" else slice(half, size)] = 0
    elif kind in ("top", "bottom"):
        keep[..., slice(0, half) if kind == "top" else slice(half, size), :] = 0
    else:
        keep = (torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    return keep


def user_degradation(where: str):
    try:
        module_name, name = where.split(":")
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"degradation={where!r} does not name a function: give it as package.module:function, "
                          f"importable from here ({type(error).__name__}: {error})") from None


def run(overrides: list[str]) -> Path:
    command, sampling_overrides = split_overrides(overrides, RestoreCommand, "restore", ("resample", "factor"))
    if OmegaConf.is_missing(command, "method"):
        raise ConfigError("restore needs method=inpaint|repaint|superres|colorize|dps|sdedit")
    module, run_dir = load_run(command.run)
    sampling = run_config(module.cfg, "sampling", sampling_overrides).sampling
    check_conditions(command, module.hparams.class_names if module.num_classes else [])
    if len(module.data_shape) != 3:
        raise ConfigError(f"restore works on images; {command.run} was trained on data of shape {list(module.data_shape)}")
    device = pick_device(command.device)
    module.to(device)
    channels, size = module.data_shape[0], module.data_shape[-1]
    data = DiffusionDataModule(module.cfg.data, module.cfg.seed)
    data.setup()
    reference = data.reference_images()
    if not command.images or max(command.images) >= len(reference) or min(command.images) < 0:
        raise ConfigError(f"images={list(command.images)}: the training data has {len(reference)} images (0 to {len(reference) - 1})")
    truth = to_unit_range(reference[list(command.images)]).to(device)
    n = len(truth)
    labels = torch.tensor(command.labels)[torch.arange(n) % len(command.labels)] if command.labels else None
    denoiser = module.guided(n, sampling.guidance, labels) if labels is not None else module.guided(n, 0.0)
    sigmas = sampling_sigmas(sampling, module.training_noise.table)
    sampler = configured_sampler(sampling)
    generator = torch.Generator().manual_seed(command.seed)
    mask = hidden(command.mask, size, command.seed).to(device)
    method = command.method
    if method == "superres" and size % command.factor:
        raise ConfigError(f"factor={command.factor} must divide the image size {size}")
    if method == "colorize" and channels != 3:
        raise ConfigError(f"colorize needs an RGB model; {command.run} has {channels} channel(s)")
    degrade, pseudo_inverse = {"superres": downsample(command.factor), "colorize": grayscale()}.get(method, masked(mask))
    if method == "dps" and command.degradation:
        degrade = user_degradation(command.degradation)
    y = degrade(truth)
    if method in ("inpaint", "repaint"):
        x = repaint(denoiser, sigmas, truth * mask, mask, resample=1 if method == "inpaint" else command.resample,
                    generator=generator).x
    elif method == "sdedit":
        x = sdedit(denoiser, sigmas, truth, command.strength, sampler, generator).x
    else:
        wrapped = (PosteriorSampling(denoiser, degrade, y, command.zeta) if method == "dps"
                   else Projected(denoiser, degrade, pseudo_inverse, y))
        x = generate(wrapped, sigmas, sampler, shape=truth.shape, generator=generator, device=device).x
    shown = truth * mask if method in ("inpaint", "repaint", "dps") and not command.degradation else (
        pseudo_inverse(y) if method in ("superres", "colorize") else truth)
    if method == "sdedit":
        print(f"sdedit at strength {command.strength}: {100 * measurement_error(lambda v: v, x, truth) / 2:.1f}% RMS "
              "change from the input (of the [-1, 1] range)")
    else:
        print(f"{method}: measurement consistency |A(x) - y| = {measurement_error(degrade, x, y):.2e} RMS "
              f"(0 = agrees exactly); distance to the original {100 * measurement_error(lambda v: v, x, truth) / 2:.1f}%")
    out = Path(command.out) if command.out else run_dir.root / "restore"
    tiles = to_uint8(torch.cat([truth, shown, x]).clamp(-1, 1).cpu())
    path = save_labelled_grid(tiles, ["original", "observed", "restored"], [f"#{i}" for i in command.images],
                              out / f"{method}.png", f"{run_dir.root.name}: {method}, {sampling.sampler}, {sampling.steps} steps")
    print(path)
    return path
