"""``train``: fit a model as configured, into runs/<name>/, resuming from its last.ckpt."""
from __future__ import annotations

import shlex
import signal
from pathlib import Path

from lightning.pytorch.trainer.states import TrainerStatus
from omegaconf import OmegaConf

from ..config import load_config
from ..data import DiffusionDataModule
from ..errors import Interrupted
from ..module import DiffusionModule
from ..runs import Run
from ..trainer import build_trainer, seed_process

USAGE = """\
train   [key=value ...]   train; e.g. train experiment=digits trainer.max_steps=2000
                          (keys: configs/config.yaml; preset=NAME, experiment=NAME pick layers)"""


def run(overrides: list[str]) -> Path:
    cfg = load_config(overrides)
    run_dir = Run.named(cfg.name)
    seed_process(cfg.seed)
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup("fit")
    module = DiffusionModule(OmegaConf.to_container(cfg, resolve=True), list(data.data_shape), data.class_names)
    resume_from = run_dir.checkpoint_to_resume(cfg, data.data_shape, data.class_names)
    trainer = build_trainer(cfg, run_dir, lambda: run_dir.save_config(cfg, data.class_names))
    if trainer.is_global_zero:
        print(f"run directory: {run_dir.root}" + (f" (resuming from {resume_from})" if resume_from else ""))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except SystemExit:       # Lightning's way out after Ctrl-C or SIGTERM, once last.ckpt is saved
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        signal_number = signal.SIGTERM if trainer.received_sigterm else signal.SIGINT
        command = " ".join(["train", *map(shlex.quote, (o for o in overrides if not o.startswith("trainer.resume=")))])
        raise Interrupted(f"{signal.Signals(signal_number).name} at step {trainer.global_step}; "
                          f"{run_dir.last_checkpoint} is saved. Resume with: {__package__.split('.')[0]} {command}",
                          signal_number) from None
    if trainer.is_global_zero:
        print(f"done: checkpoints in {run_dir.last_checkpoint.parent}, sample grids in {run_dir.samples}")
    return run_dir.root
