"""The Lightning Trainer as configured: precision, logger, checkpoints and resume."""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .callbacks import LastCheckpoint, SampleGrid
from .config import ConfigError


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 autocast on Ampere or newer GPUs, fp16 with a gradient scaler on older
    ones (a T4 reports bf16 support, but only through slow emulation), float32 elsewhere."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability()
        return "bf16-mixed" if major >= 8 else "16-mixed"
    return "32-true"


# Batches are drawn from a fresh shuffle of in-memory data: after a resume in mid-epoch there
# is no data-loader position worth restoring, so Lightning's warning about it is noise.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def build_logger(cfg, run_dir: Path):
    """Logs go inside the run directory. TensorBoard keeps appending to one folder across
    resumes; CSV files would be overwritten, so each resume gets its own csv/version_N."""
    if cfg.logger == "tensorboard":
        return TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False)
    if cfg.logger == "csv":
        return CSVLogger(save_dir=run_dir, name="csv")
    try:
        from lightning.pytorch.loggers import WandbLogger
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("logger=wandb needs the wandb package: pip install wandb "
                          "(or choose logger=tensorboard)") from None
    return WandbLogger(project=cfg.name, save_dir=run_dir, id=cfg.name, resume="allow")


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def checkpoint_to_resume(cfg, run_dir: Path) -> Path | None:
    """last.ckpt of this run when resuming; a finished or interrupted run is never overwritten."""
    last = last_checkpoint(run_dir)
    if not last.is_file():
        return None
    if not cfg.trainer.resume:
        raise ConfigError(f"{run_dir} already holds a run; resume it with trainer.resume=true "
                          f"or start another with name=<new name>")
    return last


def build_trainer(cfg, run_dir: Path) -> L.Trainer:
    trainer_cfg = cfg.trainer
    callbacks = [
        LastCheckpoint(last_checkpoint(run_dir), trainer_cfg.checkpoint_every_n_steps, cfg.seed),
        SampleGrid(run_dir / "samples", trainer_cfg.sample_every_n_steps, trainer_cfg.sample_count, cfg.seed),
        LearningRateMonitor(logging_interval="step"),
    ]
    has_validation = cfg.data.val_fraction > 0
    return L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        precision=resolve_precision(trainer_cfg.precision, trainer_cfg.accelerator),
        max_steps=trainer_cfg.max_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        val_check_interval=trainer_cfg.val_every_n_steps if has_validation else None,
        check_val_every_n_epoch=None,
        limit_val_batches=None if has_validation else 0,
        num_sanity_val_steps=0,
        logger=build_logger(cfg, run_dir),
        callbacks=callbacks,
        default_root_dir=run_dir,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
