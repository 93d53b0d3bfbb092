"""``sample``: draw samples from a trained run and save them as pictures and a tensor."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm import tqdm

from ..config import CompileMode, at_least, merge, parse_overrides, refuse_unknown_keys, run_config, sampling_keys
from ..diffusion.samplers import Step, Trajectory
from ..errors import ConfigError
from ..data import DiffusionDataModule
from ..pixels import to_uint8, to_unit_range
from ..runs import load_run, pick_device
from ..trainer import resolve_precision
from ..visualize import sampling_title, save_image, save_sample_grid, save_scatter, save_trajectory_plot

USAGE = f"""\
sample  run=DIR [key=value ...]
                          draw samples from runs/<name>, a .ckpt file, an export folder or a
                          diffusers pipeline (a folder, or hf:<hub id>); keys: n, batch_size,
                          seed, labels, conditions, out, device, precision, compile, trajectory,
                          and any sampling key:
                          {", ".join(sampling_keys())}"""


@dataclass
class SampleCommand:
    run: str = MISSING                   # a run directory (runs/<name>), a .ckpt file, an export or a diffusers pipeline
    n: int = 64                          # number of samples
    batch_size: int = 256
    seed: int = 0
    labels: Optional[list[Any]] = None   # conditional models: labels to draw, used in turn, by name or number (text models: prompts)
    conditions: Optional[list[list[Any]]] = None   # or several weighted labels for every sample: [[3, 1.5], [8, 1.0]]
    out: Optional[str] = None            # output folder; default <run>/generated
    device: str = "auto"                 # auto | cpu | cuda | mps
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"   # auto: bf16 on Ampere+ GPUs, fp16 on older, float32 on CPU
    compile: CompileMode = "none"        # torch.compile the network: default | reduce-overhead (CUDA graphs) | max-autotune
    trajectory: bool = False             # also plot how samples travel from noise to data


def run(overrides: list[str]) -> Path:
    """Sample from a trained run; the sampling section of its config gives the defaults."""
    command, module, run_dir, sampling = open_run(overrides)
    device = pick_device(command.device)
    if command.trajectory and module.latent:
        raise ConfigError(f"trajectory=true draws pixels along the way; {command.run} samples latents (decoded only at the end)")
    out = fresh_output(Path(command.out) if command.out else run_dir.generated)
    module.to(device)
    speed_up(module, command.precision, command.compile, device)
    x, nfe, trajectory = draw(module, command, sampling)
    names = None if command.conditions else module.column_names(command.n, command.labels)
    save_samples(x, trajectory, out, sampling_title(run_dir.root.name, sampling, nfe, bool(module.num_classes)), names)
    record_origin(out, "sample", command, module, sampling)
    return out


def speed_up(module, precision: str, compile_mode: str, device: torch.device) -> str:
    """The network's precision on this device (``auto`` as in training) and its compilation."""
    precision = resolve_precision(precision, device.type)
    if precision == "16-mixed" and device.type != "cuda":
        raise ConfigError(f"precision=16-mixed needs a CUDA GPU; on {device.type} use 32-true or bf16-mixed")
    module.speed_up_sampling(precision, compile_mode)
    return precision


def resolve_labels(command, class_names: list[str]) -> None:
    """Labels given by class name (``labels=[rose]``) or by number (``labels=[3]``) become class
    numbers, in the command itself; conditions (where the command has them) are [label, weight]
    pairs with a finite weight."""
    conditions = command.get("conditions") or []
    if (command.labels or conditions) and not class_names:
        raise ConfigError(f"labels and conditions need a class-conditional model; {command.run} was trained "
                          "with model.conditional=false")
    if any(len(pair) != 2 or not is_finite_number(pair[1]) for pair in conditions):
        raise ConfigError(f"conditions={list(conditions)}: each condition is a [label, weight] pair with a "
                          "finite weight, e.g. conditions=[[3,1.5],[8,1.0]]")
    if command.labels:
        command.labels = [class_number(label, class_names) for label in command.labels]
    if conditions:
        command.conditions = [[class_number(label, class_names), float(weight)] for label, weight in conditions]


def class_number(label, class_names: list[str]) -> int:
    """A class by its name, else by its number."""
    if str(label) in class_names:
        return class_names.index(str(label))
    if str(label).isdigit() and int(label) < len(class_names):
        return int(label)
    named = [f"{i}={name}" for i, name in enumerate(class_names) if name != str(i)]
    shown = f" or a name ({', '.join(named[:12])}{', ...' if len(named) > 12 else ''})" if named else ""
    raise ConfigError(f"label {label} is not one of the model's classes: give a class number from 0 to "
                      f"{len(class_names) - 1}{shown}")


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_origin(out: Path, name: str, command, module, sampling: DictConfig | None = None) -> Path:
    """made_by.yaml beside a command's pictures: the command line, the model (checkpoint or
    export, and its training step), the sampling settings and the command's own settings."""
    origin = {"command": f"{__package__.split('.')[0]} {name}",
              "made": datetime.now().astimezone().isoformat(timespec="seconds"),
              "model": dict(module.origin),
              "sampling": OmegaConf.to_container(sampling) if sampling is not None else None,
              "settings": OmegaConf.to_container(command)}
    path = Path(out) / "made_by.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(origin), path)
    return path


OUTPUTS = ("samples.pt", "samples.png", "trajectory.png", "made_by.yaml")
IMAGE_NAME = re.compile(r"\d{6}\.png")


def fresh_output(out: Path) -> Path:
    """The output folder, writable and holding nothing from an earlier ``sample`` (mixed with
    these, old images would poison an FID folder). Files that sample did not write are never
    deleted: a folder of other images is refused instead."""
    images = out / "images"
    try:
        out.mkdir(parents=True, exist_ok=True)
        stale = sorted(images.iterdir()) if images.is_dir() else []
        foreign = [path.name for path in stale if not IMAGE_NAME.fullmatch(path.name)]
        if foreign:
            raise ConfigError(f"out={out}: {images} holds files that sample did not write ({foreign[0]}, ...); "
                              "choose another out=")
        for path in stale + [out / name for name in OUTPUTS if (out / name).exists()]:
            path.unlink()
        (out / ".writable").touch()
        (out / ".writable").unlink()
    except OSError as error:
        raise ConfigError(f"cannot write samples to out={out}: {error.strerror or error}") from None
    return out


def labels_in_turn(labels: list[int] | None, start: int, stop: int) -> torch.Tensor | None:
    """The labels of samples start..stop-1 when ``labels`` are used in turn (None: no labels)."""
    return torch.tensor(labels)[torch.arange(start, stop) % len(labels)] if labels else None


def draw(module, command: SampleCommand, sampling: DictConfig) -> tuple[torch.Tensor, int, list[Step]]:
    """All samples in batches, with one progress bar over every step; the NFE per sample and
    the first batch's trajectory when asked for."""
    weighted = [(int(label), weight) for label, weight in command.conditions or []]
    generator = torch.Generator().manual_seed(command.seed)
    starts = range(0, command.n, command.batch_size)
    samples, trajectory = [], Trajectory()
    with tqdm(total=len(starts) * sampling.steps, desc="sampling", unit="step") as bar:
        for start in starts:
            size = min(command.batch_size, command.n - start)
            batch_labels = labels_in_turn(command.labels, start, start + size)
            conditions = [(torch.full((size,), label), weight) for label, weight in weighted] or None
            hooks = [lambda step: bar.update()] + ([trajectory] if command.trajectory and start == 0 else [])
            result = module.sample(size, generator, sampling, batch_labels, conditions, hooks)
            samples.append(result.x.cpu())
    return torch.cat(samples), result.nfe, trajectory.steps


def save_samples(x: torch.Tensor, trajectory: list[Step], out: Path, title: str,
                 column_names: list[str] | None = None) -> None:
    """samples.pt, samples.png (a titled grid, columns named by class when they cycle, or a
    scatter plot for 2D points), images/NNNNNN.png (exact pixels), and trajectory.png when a
    trajectory was kept."""
    torch.save(x, out / "samples.pt")
    if x.ndim == 2:
        picture = save_scatter(x, out / "samples.png", title)
    else:
        images = to_uint8(x)
        picture = save_sample_grid(images, out / "samples.png", title, column_names)
        for i, image in enumerate(images):
            save_image(image, out / "images" / f"{i:06d}.png")
    print(f"{len(x)} samples ({title}): {picture}")
    if trajectory:
        print(f"trajectory: {save_trajectory_plot(trajectory, x[:len(trajectory[0].x)], out / 'trajectory.png', title)}")


def open_run(overrides: list[str], schema=SampleCommand, name: str = "sample",
             counts: tuple[str, ...] = ("n", "batch_size")) -> tuple:
    """How every command that draws from a trained run starts: its ``key=value`` pairs read
    (``split_overrides``), the run loaded, its sampling section updated with the sampling keys
    given, and the labels asked for checked. Returns (command, module, run directory, sampling)."""
    command, sampling_overrides = split_overrides(overrides, schema, name, counts)
    module, run_dir = load_run(command.run)
    sampling = run_config(module.cfg, "sampling", sampling_overrides).sampling
    if module.takes_prompts:
        module.use_prompts(prompts_asked(command, name))
    resolve_labels(command, module.hparams.class_names if module.num_classes else [])
    return command, module, run_dir, sampling


def prompts_asked(command, name: str) -> list[str]:
    """A text-to-image model's classes: the prompts given as labels (and in conditions), each once."""
    given = [*(command.get("labels") or []), *(pair[0] for pair in command.get("conditions") or [])]
    if not given:
        how = "give prompts as labels, e.g. 'labels=[a photo of a cat]'" if "labels" in command else "it needs prompts"
        raise ConfigError(f"{command.run} is a text-to-image model: {how} ({name})")
    return list(dict.fromkeys(str(prompt) for prompt in given))


def split_overrides(overrides: list[str], schema=SampleCommand, name: str = "sample",
                    counts: tuple[str, ...] = ("n", "batch_size")) -> tuple:
    """Sampling keys (steps=20) go to the run's sampling section; the rest describe the command
    (the fields of the dataclass ``schema``), the ``counts`` among them at least 1."""
    parsed = parse_overrides(overrides)
    refuse_unknown_keys(parsed.keys(), [f.name for f in fields(schema)] + sampling_keys(), "the command line")
    sampling = OmegaConf.create({k: v for k, v in parsed.items() if k in sampling_keys()})
    rest = OmegaConf.create({k: v for k, v in parsed.items() if k not in sampling_keys()})
    command = merge(OmegaConf.structured(schema), rest, "the command line")
    if OmegaConf.is_missing(command, "run"):
        raise ConfigError(f"{name} needs run=<run directory or .ckpt file>, e.g. run=runs/digits")
    test, valid = at_least(1)
    for key in counts:
        if command[key] is not None and not test(command[key]):
            raise ConfigError(f"bad value for '{key}': {command[key]} (must be {valid})")
    return command, sampling


def training_images(module, indices: list[int]) -> torch.Tensor:
    """Images number ``indices`` of the run's training data, as the network sees them, in [-1, 1]
    (for a pretrained pipeline: the data this project's configuration names)."""
    if module.latent:
        raise ConfigError("this model samples latents, decoded by its VAE only at the end: starting from training "
                          "images needs a pixel-space model")
    data = DiffusionDataModule(module.cfg.data, module.cfg.seed)
    data.setup()
    reference = data.reference_images()
    check_data_fits(module, reference.shape[1:])
    if not indices or max(indices) >= len(reference) or min(indices) < 0:
        raise ConfigError(f"images={list(indices)}: the training data has {len(reference)} images (0 to {len(reference) - 1})")
    return to_unit_range(reference[list(indices)]).to(module.device)


def check_data_fits(module, data_shape) -> None:
    """The configured data has the model's shape (a pretrained model takes this project's data keys)."""
    if tuple(data_shape) != module.data_shape:
        raise ConfigError(f"the data (data.name={module.cfg.data.name}, shape {list(data_shape)}) does not fit the "
                          f"model (shape {list(module.data_shape)}): set data.name, data.image_size and data.channels "
                          "to data of the model's kind (in configs/local.yaml for a pretrained model)")
