"""Ends training cleanly before it is cut off: when this command's time budget
(``trainer.max_time``) is spent, or when SLURM warns that the job's time is nearly up.

``scripts/slurm.sbatch`` asks SLURM (``--signal=SIGUSR1@90``) to send SIGUSR1 to every process
90 seconds before the time limit. Either way, all processes stop together at the end of a
step, the usual end of training saves last.ckpt and draws a sample grid, and after SIGUSR1 the
first process requeues the job, which resumes in the same run directory."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import lightning as L

SHARED_DECISION_EVERY = 10
"""Steps between two decisions when there are several processes: sharing one makes the CPU wait
for the GPU, which then idles while the next step is queued. Ten steps of a GPU run take
seconds, well inside SLURM's 90 s of warning."""


def slurm_job_id() -> str | None:
    """This job's id as ``scontrol`` wants it (``<array job>_<task>`` in a job array), or None
    outside SLURM."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class GracefulStop(L.Callback):
    def __init__(self, budget: int | None):
        self.budget = budget            # seconds (trainer.max_time), None for no budget
        self.signalled = False          # set by the SIGUSR1 handler of this process
        self.reason: str | None = None  # why training stopped early: "max_time" or "SIGUSR1"
        self.requeued: str | None = None
        self.previous_handler = None

    def on_train_start(self, trainer, module) -> None:
        self.start = time.monotonic()
        if hasattr(signal, "SIGUSR1"):          # not on Windows
            self.previous_handler = signal.signal(signal.SIGUSR1, self.on_signal)

    def on_signal(self, signum, frame) -> None:
        self.signalled = True          # acted on at the end of the step: a handler must not save mid-step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.world_size > 1 and trainer.global_step % SHARED_DECISION_EVERY:
            return
        out_of_time = self.budget is not None and time.monotonic() - self.start >= self.budget
        # One decision for all processes (any one's signal or clock), so they stop at the same step.
        if not trainer.strategy.reduce_boolean_decision(out_of_time or self.signalled, all=False):
            return
        signalled = trainer.strategy.reduce_boolean_decision(self.signalled, all=False)
        self.reason = "SIGUSR1" if signalled else "max_time"
        trainer.should_stop = True

    def on_train_end(self, trainer, module) -> None:
        """Runs after LastCheckpoint has saved (it comes later in the callback list)."""
        job = slurm_job_id()
        if self.reason == "SIGUSR1" and trainer.is_global_zero and job:
            try:
                requeued = subprocess.run(["scontrol", "requeue", job], capture_output=True).returncode == 0
            except FileNotFoundError:
                requeued = False
            self.requeued = job if requeued else None

    def teardown(self, trainer, module, stage: str) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGUSR1, self.previous_handler)
            self.previous_handler = None
