"""Keeps ``checkpoints/last.ckpt`` current: every N steps, at the end of training, and when
training is interrupted (Ctrl-C, SIGTERM, a crash), so that a rerun resumes where it stopped,
random state and data position included: the random state of every process (CPU, and the
CUDA or MPS device it trains on), so that each continues its own stream."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..storage import save_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written with ``storage.save_atomically``: an interruption at any moment leaves
    the previous checkpoint intact. (Lightning's own writer passes every byte through the
    system's temporary folder, small and node-local on clusters, and a second copy in memory.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_atomically(checkpoint, path)


class LastCheckpoint(L.Callback):
    def __init__(self, path: str | Path, every_n_steps: int, seed: int = 0):
        self.path, self.every_n_steps, self.seed = Path(path), every_n_steps, seed
        self.saved_step = -1

    def on_fit_start(self, trainer, module) -> None:
        """A kill during a write leaves a ``.partial`` file: it is never read, and removed here."""
        if trainer.is_global_zero:
            for orphan in self.path.parent.glob("*.partial"):
                orphan.unlink()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)
        if trainer.received_sigterm and trainer.world_size == 1:
            raise SIGTERMException()       # stop now, not at the end of the epoch (DDP: Lightning does this)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if trainer.global_step > 0:
            self.save(trainer)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        """Every process runs this (the first one writes the file): with several processes their
        random states are gathered, one row each."""
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                             "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None}
        if trainer.world_size > 1:
            device = trainer.strategy.root_device
            states = {"torch": torch.get_rng_state()}
            if device.type == "cuda":
                states["cuda"] = torch.cuda.get_rng_state(device)
            checkpoint["rng"]["ranks"] = {kind: trainer.strategy.all_gather(state.to(device)).cpu()
                                          for kind, state in states.items()}

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        """Continue the saved random streams. Only a resumed fit gets here: loading weights to
        sample leaves the caller's random state alone. A run resumed with another number of
        processes than it was saved with cannot continue their streams: each is reseeded."""
        rng = checkpoint.get("rng")
        if rng is None:
            return
        ranks = rng.get("ranks")
        if trainer.world_size == 1 and ranks is None:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            if rng.get("mps") is not None and torch.backends.mps.is_available():
                torch.mps.set_rng_state(rng["mps"])
        elif ranks is not None and len(ranks["torch"]) == trainer.world_size:
            own = {kind: states[trainer.global_rank].clone() for kind, states in ranks.items()}  # a row of its own:
            torch.set_rng_state(own["torch"])                               # a view into the rows crashes torch
            if "cuda" in own:
                torch.cuda.set_rng_state(own["cuda"], trainer.strategy.root_device)
        else:
            if trainer.is_global_zero:
                print(f"note: {trainer.world_size} processes resume a run saved with another number of processes "
                      "(or by an earlier version): each one's random stream restarts from a new seed")
            torch.manual_seed(resume_seed(self.seed, trainer.global_rank, checkpoint["global_step"]))

    def save(self, trainer) -> None:
        """Once per step: a skipped (non-finite) batch does not advance the step."""
        if trainer.global_step != self.saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)    # the full state, optimiser included
            self.saved_step = trainer.global_step


MAX_PROCESSES = 2**16


def resume_seed(seed: int, rank: int, step: int) -> int:
    """The seed of process ``rank`` when a multi-process run resumes at ``step`` >= 1: distinct
    for every (rank, step) pair with fewer than MAX_PROCESSES processes, and never a fresh
    run's seed + rank."""
    return seed + rank + MAX_PROCESSES * step
