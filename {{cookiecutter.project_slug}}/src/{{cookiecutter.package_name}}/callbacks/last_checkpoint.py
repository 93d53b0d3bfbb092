"""Keeps ``checkpoints/last.ckpt`` current: every N steps, at the end of training, and when
training is interrupted (Ctrl-C, SIGTERM, a crash), so that a rerun resumes where it stopped,
random state included."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch


class LastCheckpoint(L.Callback):
    def __init__(self, path: str | Path, every_n_steps: int, seed: int = 0):
        self.path, self.every_n_steps, self.seed = Path(path), every_n_steps, seed

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if trainer.global_step > 0:
            self.save(trainer)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        """Continue the saved random stream. Only a resumed fit gets here: loading weights to
        sample leaves the caller's random state alone. With several processes each needs a
        stream of its own, but the checkpoint holds rank 0's: they are reseeded instead."""
        rng = checkpoint.get("rng")
        if rng is None:
            return
        if trainer.world_size == 1:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            torch.manual_seed(resume_seed(self.seed, trainer.global_rank, checkpoint["global_step"]))

    def save(self, trainer) -> None:
        """Write to a temporary file and rename it, so an interruption during the write
        never leaves a truncated last.ckpt behind."""
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)


MAX_PROCESSES = 2**16


def resume_seed(seed: int, rank: int, step: int) -> int:
    """The seed of process ``rank`` when a multi-process run resumes at ``step`` >= 1: distinct
    for every (rank, step) pair with fewer than MAX_PROCESSES processes, and never a fresh
    run's seed + rank."""
    return seed + rank + MAX_PROCESSES * step
