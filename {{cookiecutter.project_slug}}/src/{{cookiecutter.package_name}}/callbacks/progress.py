"""Progress of a step-based run, in the first process: on a terminal or in a notebook one bar
over the steps to trainer.max_steps (with the mean loss since the last update, images per
second and the time left); in a log file (sbatch, nohup) one plain line every
``every_seconds``, since a bar is drawn there only once, at the end. With a time budget
(trainer.max_time, ``budget_seconds``) the line counts towards whichever end comes first."""
from __future__ import annotations

import sys
import time

import lightning as L
import torch
from tqdm.auto import tqdm


def clock(seconds: float) -> str:
    """1:02:03 or 02:03."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class StepProgress(L.Callback):
    def __init__(self, batch_size: int, every_seconds: float = 30.0, bar: bool | None = None,
                 budget_seconds: float | None = None):
        self.batch_size, self.every_seconds, self.budget = batch_size, every_seconds, budget_seconds
        if bar is None:                                   # a terminal or a notebook
            bar = sys.stderr.isatty() or "ipykernel" in sys.modules
        self.bar = bar
        self.progress = None

    def on_train_start(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        self.total, self.first_step = trainer.max_steps, trainer.global_step
        self.images_per_step = self.batch_size * trainer.world_size
        self.loss_sum, self.losses = torch.zeros((), device=module.device), torch.zeros((), device=module.device)
        self.start = self.shown_at = time.monotonic()
        self.shown_step = self.first_step
        if self.bar:
            self.progress = tqdm(total=self.total, initial=self.first_step, unit="step", dynamic_ncols=True,
                                 desc="training", mininterval=1.0)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        loss = (outputs.get("loss") if isinstance(outputs, dict) else outputs).detach()
        finite = torch.isfinite(loss)              # a skipped step's loss is left out of the mean
        self.loss_sum += torch.where(finite, loss, 0.0)      # on the device: no wait for the GPU on every step
        self.losses += finite
        interval = 1.0 if self.bar else self.every_seconds
        if time.monotonic() - self.shown_at >= interval:
            self.show(trainer.global_step)

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self.show(trainer.global_step)
            if self.progress is not None:
                self.progress.close()

    def show(self, step: int) -> None:
        now = time.monotonic()
        loss = (self.loss_sum / self.losses).item()          # nan when every step was skipped
        speed = (step - self.shown_step) * self.images_per_step / max(now - self.shown_at, 1e-9)
        self.loss_sum.zero_()
        self.losses.zero_()
        self.shown_at, self.shown_step = now, step
        if self.progress is not None:
            self.progress.set_postfix_str(f"loss {loss:.4f}, {speed:,.0f} img/s", refresh=False)
            self.progress.update(step - self.progress.n)
            return
        elapsed = now - self.start
        steps_per_second = (step - self.first_step) / max(elapsed, 1e-9)
        left = (self.total - step) / steps_per_second if steps_per_second > 0 else float("inf")
        done = step / self.total
        if self.budget is not None and self.budget - elapsed < left:      # the time budget ends it first
            left, done = max(self.budget - elapsed, 0.0), min(elapsed / self.budget, 1.0)
        print(f"step {step:,}/{self.total:,} ({100 * done:.0f}%)  loss {loss:.4f}  {speed:,.0f} img/s  "
              f"elapsed {clock(elapsed)}  left {clock(left) if left < float('inf') else '?'}", flush=True)


def say(message: str) -> None:
    """Print a line during training without breaking the progress bar."""
    tqdm.write(message, file=sys.stdout)
