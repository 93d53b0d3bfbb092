"""``sample``: draw samples from a trained run and save them as pictures and a tensor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import MISSING
from tqdm import tqdm

from ..config import RUN_SECTIONS, CompileMode, Precision
from ..devices import device_name, host_memory, memory_errors, pick_device, sampling_precision
from ..diffusion.samplers import Step, Trajectory
from ..errors import ConfigError
from ..model import labels_in_turn
from ..runs import fresh_output, open_run, record_made_by
from ..visualize import sampling_title, save_samples

USAGE = f"""\
sample  run=DIR [key=value ...]
                          draw samples from runs/<name>, a .ckpt file, an export folder or a
                          diffusers pipeline (a folder, or hf:<hub id>); keys: n, batch_size,
                          seed, labels, conditions, out, device, precision, compile, trajectory,
                          and any sampling key:
                          {", ".join(RUN_SECTIONS["sampling"])}"""


@dataclass
class SampleCommand:
    run: str = MISSING                   # runs/<name>, a .ckpt file, an export or a diffusers pipeline
    n: int = 64                          # number of samples
    batch_size: int = 256
    seed: int = 0
    labels: Optional[list[Any]] = None   # conditional models: labels to draw in turn, by name or number; or prompts
    conditions: Optional[list[list[Any]]] = None   # or several weighted labels for every sample: [[3, 1.5], [8, 1.0]]
    out: Optional[str] = None            # output folder; default <run>/generated
    device: str = "auto"                 # auto | cpu | cuda | mps
    precision: Precision = "auto"        # auto: bf16 on Ampere+ GPUs, fp16 on older ones, float32 on CPU
    compile: CompileMode = "none"        # torch.compile: default | reduce-overhead (CUDA graphs) | max-autotune
    trajectory: bool = False             # also plot how samples travel from noise to data


def run(overrides: list[str]) -> Path:
    """Sample from a trained run; the sampling section of its config gives the defaults."""
    command, model, run_dir, sampling = open_run(overrides, SampleCommand, "sample", ("n", "batch_size"))
    device = pick_device(command.device)
    if command.trajectory:
        if model.kind not in ("vector", "image", "sequence", "set"):
            raise ConfigError("trajectory=true draws the paths of points, the steps of images, sequences or sets; "
                              f"{command.run} draws data of shape {list(model.data_shape)}")
    out = fresh_output(Path(command.out) if command.out else run_dir.generated)
    model.to(device)
    model.speed_up(sampling_precision(command.precision, device), command.compile)
    with memory_errors(f"batch_size={command.batch_size} does not fit in memory on {device_name(device)}: "
                       "lower batch_size (the n samples are drawn in batches of it)"):
        x, nfe, trajectory = draw(model, command, sampling)
    names = None if command.conditions else model.column_names(command.n, command.labels)
    title = sampling_title(run_dir.root.name, sampling, nfe, model.condition is not None)
    save_samples(x, trajectory, out, title, names, model.kind, model.codec.decode)
    record_made_by(out, "sample", command, model, sampling)
    return out


def check_room(command: SampleCommand, first: torch.Tensor) -> None:
    """Once the first batch is drawn: all n samples (kept, then joined and saved) must fit in this
    machine's free memory, or sample stops now, not at the end."""
    needed = 2 * command.n * first[0].numel() * first.element_size()
    free = host_memory()
    if free is not None and needed > free:
        raise ConfigError(f"n={command.n} samples of shape {list(first.shape[1:])} need about "
                          f"{needed / 2**30:.1f} GiB, and this machine has {free / 2**30:.1f} GiB available: draw "
                          "fewer at a time (several runs with different seed= and out=)")


def draw(model, command: SampleCommand, sampling) -> tuple[torch.Tensor, int, list[Step]]:
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
            result = model.sample(size, generator, sampling, batch_labels, conditions, hooks)
            samples.append(result.x.cpu())
            if start == 0:
                check_room(command, samples[0])
    return torch.cat(samples), result.nfe, trajectory.steps
