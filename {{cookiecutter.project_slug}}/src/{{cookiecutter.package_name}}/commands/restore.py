"""``restore``: fill in, sharpen, colour or edit training images with a trained model, and say
how well each result agrees with what was observed (the measurement consistency).

Methods (tasks/restore.py): ``inpaint`` (replacement), ``repaint`` (RePaint, ``resample``
tries per step), ``superres`` (DDNM projection, ``factor``), ``colorize`` (DDNM projection,
RGB models), ``dps`` (posterior sampling, ``zeta``; the degradation is the mask, or your own
differentiable ``degradation=package.module:function``) and ``sdedit`` (``strength``).
The images are ``images=[i,j,...]`` of the run's training data; the mask is ``mask=``. Writes
<run>/restore/<method>.png (original, observed and restored, a column per image) and the restored
images themselves (<method>.pt, in [-1, 1]).

Sequences (paths, signals) are restored the same way with ``inpaint``, ``repaint``, ``dps`` and
``sdedit``: the steps ``known_steps`` (default the first and the last: a fixed start and goal)
are observed and the rest filled in; a model conditioned on vectors is guided by each example's
own condition. The result holds the known steps exactly, in the data's own units.

A latent model restores by the two methods that need no pixels along the way: ``dps``, whose
pull differentiates the observation of the decoded estimate through the decoder (DPS, Chung et
al. 2023, with the decoder inside the observation: the "latent DPS" of Rout et al. 2023), and
``sdedit``, which noises the image's latents to ``strength``, denoises and decodes them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from omegaconf import MISSING, OmegaConf

from ..config import RUN_SECTIONS
from ..data import DiffusionDataModule
from ..devices import pick_device
from ..errors import ConfigError
from ..model import labels_in_turn
from ..pixels import to_uint8
from ..runs import open_run, record_made_by
from ..tasks.restore import PosteriorSampling, Projected, downsample, grayscale, masked, measurement_error, repaint
from ..visualize import save_labelled_grid, save_restored_sequences

USAGE = f"""\
restore run=DIR method=NAME [key=value ...]
                          inpaint | repaint | superres | colorize | dps | sdedit on images=[i,...] of the
                          training data; keys: mask, resample, factor, zeta, degradation, strength,
                          labels, seed, out, device, and any sampling key:
                          {", ".join(RUN_SECTIONS["sampling"])}"""

Method = Literal["inpaint", "repaint", "superres", "colorize", "dps", "sdedit"]

# DPS's default pull: on pixels (and a tensor file's data), and on latents seen through their
# decoder, whose gradients are larger (measured on examples/latent-mnist: 10 diverges there,
# 0.3 keeps the observed pixels best, 1 a little less well).
ZETA = {"data": 10.0, "latents": 0.3}


@dataclass
class RestoreCommand:
    run: str = MISSING
    method: Method = MISSING
    images: list[int] = field(default_factory=lambda: [0, 1, 2, 3])   # indices into the training data
    mask: Literal["center", "left", "right", "top", "bottom", "random"] = "center"   # the pixels hidden
    known_steps: list[int] = field(default_factory=lambda: [0, -1])   # sequences: the steps observed (-1: the last)
    resample: int = 10                   # repaint: tries per step
    factor: int = 2                      # superres: each factor x factor block is observed as its mean
    zeta: Optional[float] = None         # dps: strength of the pull towards the observation (default: ZETA)
    degradation: Optional[str] = None    # dps: package.module:function, a differentiable A(x) on [-1, 1] images
    strength: float = 0.5                # sdedit: 0 keeps the image, 1 draws afresh
    labels: Optional[list[Any]] = None   # conditional models: the label to restore towards (default: unguided)
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
    command, model, run_dir, sampling = open_run(overrides, RestoreCommand, "restore", ("resample", "factor"))
    check_request(command, model)
    model.to(pick_device(command.device))
    if command.method not in ("sdedit", "dps"):
        model.need_pixels(f"method={command.method} keeps known pixels at every step (a latent model takes "
                          "method=dps, through its decoder, or sdedit)")
    data = DiffusionDataModule.of_run(model.config)
    model.check_data(data.data_shape)
    examples = data.training_examples(command.images).to(model.device)
    truth = model.codec.latents(examples)            # as the network sees them (a tensor file's: scaled)
    n, size = len(truth), model.codec.data_shape(model.data_shape)[-1]       # a latent model's: its images'
    labels = labels_in_turn(command.labels, 0, n)
    if model.condition_table is not None:            # vector conditions: each example's own
        labels = data.train_set.labels[command.images]
    denoiser = model.guided(n, sampling.guidance if labels is not None else 0.0, labels)
    sequence = model.kind == "sequence"
    mask = (known(command.known_steps, size) if sequence else hidden(command.mask, size, command.seed)).to(model.device)
    observe, pseudo_inverse = {"superres": downsample(command.factor), "colorize": grayscale()}.get(
        command.method, masked(mask))
    if command.method == "dps" and command.degradation:
        observe = user_degradation(command.degradation)
    latent = model.codec.latent                      # observed, and judged, as images: DPS through the decoder
    seen = examples if latent else truth
    y = observe(seen)
    degrade = (lambda z: observe(model.codec.images(z))) if latent else observe
    z = restoration(command, denoiser, sampling, model, truth, mask, degrade, pseudo_inverse, y)
    x = model.codec.decode(z)
    report(command, x if latent else z, seen, observe, y)
    if sequence and command.method != "sdedit":
        x = torch.where(mask.bool(), examples, x)    # the known steps exactly, in the data's units
    out = run_dir.task("restore", command.out)
    title = f"{run_dir.root.name}: {command.method}, {sampling.sampler}, {sampling.steps} steps"
    if sequence:
        path = save_restored_sequences(examples.cpu(), x.cpu(), mask[0, 0].bool().cpu(), out / f"{command.method}.png",
                                       title, [f"#{i}" for i in command.images])
    else:
        shown = [examples, observed(command, examples, mask, pseudo_inverse, y), x]
        tiles = to_uint8(torch.cat(shown).clamp(-1, 1).cpu())
        path = save_labelled_grid(tiles, ["original", "observed", "restored"], [f"#{i}" for i in command.images],
                                  out / f"{command.method}.png", title)
    torch.save(x.cpu(), out / f"{command.method}.pt")
    print(f"{path}\n{out / f'{command.method}.pt'}")
    record_made_by(out, "restore", command, model, sampling)
    return path


def known(steps: list[int], length: int) -> torch.Tensor:
    """1 at the observed steps of a sequence (negative steps count from the end), else 0: (1, 1, length)."""
    keep = torch.zeros(1, 1, length)
    keep[..., steps] = 1
    return keep


def check_request(command, model) -> None:
    if OmegaConf.is_missing(command, "method"):
        raise ConfigError("restore needs method=inpaint|repaint|superres|colorize|dps|sdedit")
    if model.kind == "sequence":
        length = model.data_shape[-1]
        if command.method in ("superres", "colorize"):
            raise ConfigError(f"method={command.method} restores images; sequences take inpaint, repaint, dps or "
                              "sdedit, with known_steps")
        if not command.known_steps or any(not -length <= step < length for step in command.known_steps):
            raise ConfigError(f"known_steps={list(command.known_steps)}: steps of the sequences, from 0 to "
                              f"{length - 1} (or -1 for the last, -2 before it, ...), at least one")
    elif len(model.data_shape) != 3:
        raise ConfigError(f"restore works on images and sequences; {command.run} was trained on data of shape "
                          f"{list(model.data_shape)}")
    channels, *_, size = model.codec.data_shape(model.data_shape)
    if command.method == "superres" and size % command.factor:
        raise ConfigError(f"factor={command.factor} must divide the image size {size}")
    if command.method == "colorize" and channels != 3:
        raise ConfigError(f"colorize needs an RGB model; {command.run} has {channels} channel(s)")
    if not 0 <= command.strength <= 1:
        raise ConfigError(f"strength={command.strength} must be in [0, 1] (0 keeps the image, 1 draws afresh)")


def restoration(command, denoiser, sampling, model, truth, mask, degrade, pseudo_inverse, y) -> torch.Tensor:
    generator = torch.Generator().manual_seed(command.seed)
    if command.method in ("inpaint", "repaint"):
        resample = 1 if command.method == "inpaint" else command.resample
        return repaint(denoiser, model.sigmas(sampling), truth * mask, mask, resample=resample, generator=generator).x
    if command.method == "sdedit":
        return model.generate(denoiser, sampling, image=truth, strength=command.strength, generator=generator,
                              decode=False).x
    if command.method == "dps":
        zeta = command.zeta if command.zeta is not None else ZETA["latents" if model.codec.latent else "data"]
        wrapped = PosteriorSampling(denoiser, degrade, y, zeta)
    else:
        wrapped = Projected(denoiser, degrade, pseudo_inverse, y)
    return model.generate(wrapped, sampling, shape=tuple(truth.shape), generator=generator, decode=False).x


def observed(command, truth, mask, pseudo_inverse, y) -> torch.Tensor:
    """What the method was given to see, as a picture: the kept pixels, the low-resolution or gray
    image, or (SDEdit, DPS with a degradation of your own) the original."""
    if command.method in ("inpaint", "repaint", "dps") and not command.degradation:
        return truth * mask
    if command.method in ("superres", "colorize"):
        return pseudo_inverse(y)
    return truth


def report(command, x, truth, degrade, y) -> None:
    """How well the result agrees with what was observed (and how far it is from the original)."""
    distance = 100 * measurement_error(lambda v: v, x, truth) / 2
    if command.method == "sdedit":
        print(f"sdedit at strength {command.strength}: {distance:.1f}% RMS change from the input "
              "(of the [-1, 1] range)")
    else:
        print(f"{command.method}: measurement consistency |A(x) - y| = {measurement_error(degrade, x, y):.2e} RMS "
              f"(0 = agrees exactly); distance to the original {distance:.1f}%")
