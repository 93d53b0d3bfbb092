"""``guidance-grid``: what classifier-free guidance does, one picture: a row per class, a
column per guidance weight, the same noise along each row (so only the weight changes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import MISSING

from ..config import RUN_SECTIONS
from ..devices import pick_device
from ..diffusion.generate import indexed_noise
from ..errors import ConfigError
from ..pixels import to_uint8
from ..runs import open_run, record_made_by
from ..visualize import save_labelled_grid

USAGE = f"""\
guidance-grid run=DIR [key=value ...]
                          classes x guidance weights in one PNG; keys: labels (default all, at most
                          16), weights, seed, out, device, and any sampling key:
                          {", ".join(RUN_SECTIONS["sampling"])}"""


@dataclass
class GuidanceGridCommand:
    run: str = MISSING
    labels: Optional[list[Any]] = None                   # the rows (default: the first 16 classes)
    weights: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 5.0, 8.0])   # the columns
    seed: int = 0
    out: Optional[str] = None                            # default <run>/guidance/grid.png
    device: str = "auto"


def run(overrides: list[str]) -> Path:
    command, model, run_dir, sampling = open_run(overrides, GuidanceGridCommand, "guidance-grid")
    if not model.num_classes:
        raise ConfigError(f"guidance-grid needs a class-conditional model; {command.run} is unconditional")
    model.to(pick_device(command.device))
    labels = list(command.labels) if command.labels else list(range(min(16, model.num_classes)))
    noise = indexed_noise(torch.arange(len(labels)), model.data_shape, command.seed)
    columns = []
    for weight in command.weights:
        conditions = [(torch.tensor(labels), weight)]
        columns.append(model.sample(len(labels), torch.Generator(), sampling, conditions=conditions, noise=noise).x)
    tiles = torch.stack(columns, 1).flatten(0, 1)                # row by row: a class, all its weights
    path = Path(command.out) if command.out else run_dir.task("guidance") / "grid.png"
    title = f"{run_dir.root.name}: classifier-free guidance, {sampling.sampler}, {sampling.steps} steps"
    print(save_labelled_grid(to_uint8(tiles.cpu()), [model.class_names[label] for label in labels],
                             [f"w={weight:g}" for weight in command.weights], path, title))
    record_made_by(path.parent, "guidance-grid", command, model, sampling)
    return path
