"""Training speed from the run itself: images per second over a window of steps, timed once
the first steps (compilation, cuDNN's choice of kernels, caches) are over."""
from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L

from ..devices import synchronize


class StepClock(L.Callback):
    """Times steps ``first`` to ``last`` of this command; ``report(trainer, images_per_second)``
    is called once, in the first process, when they are done."""

    def __init__(self, first: int, last: int, batch_size: int, report: Callable[[L.Trainer, float], None]):
        self.first, self.last, self.batch_size, self.report = first, last, batch_size, report
        self.steps, self.start = 0, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps in (self.first, self.last):
            synchronize(module.device)
            if self.steps == self.first:
                self.start = time.perf_counter()
            elif trainer.is_global_zero:
                images = (self.last - self.first) * self.batch_size * trainer.world_size
                self.report(trainer, images / (time.perf_counter() - self.start))
