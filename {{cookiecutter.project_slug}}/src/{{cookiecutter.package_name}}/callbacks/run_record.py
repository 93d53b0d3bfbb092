"""Writes a run's record (config.yaml, classes.json) once training has started, after a resumed
run's checkpoint has been restored: a start that fails leaves the record of the run as it was."""
from __future__ import annotations

from collections.abc import Callable

import lightning as L


class RunRecord(L.Callback):
    def __init__(self, write: Callable[[], None]):
        self.write = write

    def on_train_start(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self.write()
