"""``train``: fit a model as configured, into runs/<name>/, resuming from its last.ckpt."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ..config import load_config
from ..data import DiffusionDataModule
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
    resume_from = run_dir.checkpoint_to_resume(cfg.trainer.resume)
    trainer = build_trainer(cfg, run_dir)
    if trainer.is_global_zero:
        run_dir.save_config(cfg, data.class_names)
        print(f"run directory: {run_dir.root}" + (f" (resuming from {resume_from})" if resume_from else ""))
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=False)
    if trainer.is_global_zero:
        print(f"done: checkpoints in {run_dir.last_checkpoint.parent}, sample grids in {run_dir.samples}")
    return run_dir.root
