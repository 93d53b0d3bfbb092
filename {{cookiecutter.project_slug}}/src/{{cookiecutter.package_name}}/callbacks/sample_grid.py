"""A fixed-seed grid of samples from the EMA weights (the module's ``model``), written every N steps, once a few minutes
after the start (a slow first run shows early whether it learns), and at the end.

The same starting noise every time, so successive grids show what training changed. A conditional
model draws its classes in turn, or the classes named in trainer.sample_labels (a text model's
prompts: the validation prompts of a LoRA run)."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from ..model import labels_in_turn
from ..visualize import sampling_title, save_samples_picture


class SampleGrid(L.Callback):
    def __init__(self, folder: str | Path, every_n_steps: int, count: int, seed: int = 0,
                 first_after_minutes: float = 0, labels: list[str] = ()):
        self.folder, self.every_n_steps, self.count, self.seed = Path(folder), every_n_steps, count, seed
        self.labels = list(labels)
        self.first_after = first_after_minutes * 60 or None
        self.last_step = -1

    def on_train_start(self, trainer, module) -> None:
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        early = self.first_after is not None and time.monotonic() - self.started >= self.first_after
        if trainer.global_step % self.every_n_steps == 0 or early:
            self.first_after = None if early else self.first_after
            self.write(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.write(trainer, module)

    @L.pytorch.utilities.rank_zero_only
    def write(self, trainer, module) -> None:
        step = trainer.global_step
        if step == self.last_step:
            return
        self.last_step = step
        model = module.model
        labels = [model.class_number(name) for name in self.labels] or None
        result = model.sample(self.count, torch.Generator().manual_seed(self.seed),
                              labels=labels_in_turn(labels, 0, self.count))
        path = self.folder / f"step_{step:07d}.png"
        title = f"step {step:,}, " + sampling_title(self.folder.parent.name, model.config.sampling, result.nfe,
                                                    model.condition is not None)
        reference = trainer.datamodule.train_set.data[: self.count]       # drawn under 2D points
        save_samples_picture(result.x, path, title, model.column_names(self.count, labels), reference, model.kind)
        log_picture(trainer.logger, path, step)


def log_picture(logger, path: Path, step: int) -> None:
    """Send a saved PNG to TensorBoard or Weights & Biases (CSV logs keep only the file)."""
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_image"):
        experiment.add_image("samples", np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")
    elif hasattr(logger, "log_image"):
        logger.log_image("samples", [str(path)], step=step)
