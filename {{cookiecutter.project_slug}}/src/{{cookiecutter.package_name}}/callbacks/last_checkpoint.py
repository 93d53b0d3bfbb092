"""Keeps ``checkpoints/last.ckpt`` current: every N steps, at the end of training, and when
training is interrupted (Ctrl-C, SIGTERM, a crash), so that a rerun resumes where it stopped."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class LastCheckpoint(L.Callback):
    def __init__(self, path: str | Path, every_n_steps: int):
        self.path, self.every_n_steps = Path(path), every_n_steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if trainer.global_step > 0:
            self.save(trainer)

    def save(self, trainer) -> None:
        """Write to a temporary file and rename it, so an interruption during the write
        never leaves a truncated last.ckpt behind."""
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)
