"""The Lightning Trainer as configured: precision, logger, callbacks, and the processes it runs in."""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from .callbacks import (
    AtomicCheckpointIO,
    DataDistances,
    GracefulStop,
    LastCheckpoint,
    QualityMetrics,
    RunRecord,
    SampleGrid,
    StepClock,
    StepProgress,
    say,
)
from .config import duration_seconds
from .devices import check_training_hardware, resolve_precision, set_float32_matmuls
from .errors import MissingPackage


def process_rank() -> int:
    """This process's global rank, read from the launcher's environment (0 when alone)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


def seed_process(seed: int) -> None:
    """Seed everything random in this process with seed + rank: each process of a multi-GPU run
    draws its own noise (Lightning's global seed alone would be the same on every rank)."""
    L.seed_everything(seed + process_rank(), verbose=False)


def wandb_logger(cfg, run):
    try:
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        raise MissingPackage("logger=wandb needs the wandb package: pip install wandb "
                             "(or choose logger=tensorboard)") from None
    return WandbLogger(project=cfg.name, save_dir=run.root, id=cfg.name, resume="allow")


# Logs go inside the run directory. TensorBoard keeps appending to one folder across resumes;
# CSV files would be overwritten, so each resume gets its own csv/version_N.
LOGGERS = {
    "tensorboard": lambda cfg, run: TensorBoardLogger(save_dir=run.root, name="tensorboard", version="",
                                                      default_hp_metric=False),
    "csv": lambda cfg, run: CSVLogger(save_dir=run.root, name="csv"),
    "wandb": wandb_logger,
}


def cluster_plugins() -> list:
    """Under SLURM, Lightning's own requeue handler is switched off: ``GracefulStop`` stops at
    the end of a step instead of saving from inside the signal handler, mid-step."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def graceful_stop(trainer: L.Trainer) -> GracefulStop:
    """The trainer's ``GracefulStop``: why training ended before trainer.max_steps, if it did."""
    return next(callback for callback in trainer.callbacks if isinstance(callback, GracefulStop))


SPEED_WINDOW = (10, 30)      # steps timed for the speed estimate, once compilation and warm-up are over


def duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def speed_estimate(cfg) -> Callable[[L.Trainer, float], None]:
    """What the measured speed means for this run: the time of an epoch and of the steps left."""
    def report(trainer: L.Trainer, images_per_second: float) -> None:
        batch = cfg.data.batch_size * trainer.world_size
        steps_left = cfg.trainer.max_steps - trainer.global_step
        epoch = len(trainer.datamodule.train_set) / images_per_second
        time_left = steps_left * batch / images_per_second
        budget = duration_seconds(cfg.trainer.max_time)
        stop = f" (trainer.max_time={cfg.trainer.max_time} stops it first)" if budget and budget < time_left else ""
        say(f"speed: {images_per_second:,.0f} images/s, {images_per_second / batch:.1f} steps/s; an epoch takes "
              f"{duration(epoch)}, the {steps_left:,} steps left to trainer.max_steps about "
              f"{duration(time_left)}{stop}")
    return report


def evaluation_sampling(cfg):
    """The run's sampling section with the evaluation's sampler and steps."""
    return OmegaConf.merge(cfg.sampling, {"sampler": cfg.evaluation.sampler, "steps": cfg.evaluation.steps})


def quiet_lightning() -> None:
    """Keep Lightning's output to what matters here: its info lines (accelerator found, visible
    GPUs, a logger-product tip, "fit stopped") are said by our own start-up and closing
    summaries, and four warnings are noise for this project: a deprecation inside Lightning
    itself, the logging interval of short runs, loader workers (data held in memory needs
    none), and the loader position on resume (only the DataLoader for data too big for GPU
    memory cannot restore it; a fresh shuffle from the restored random state is all that
    training needs)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                    "The number of training batches .* is smaller than the logging interval",
                    "The '(train|val)_dataloader' does not have many workers",
                    "You're resuming from a checkpoint that ended before the epoch ended"):
        warnings.filterwarnings("ignore", message=message)


def build_trainer(cfg, run, write_record: Callable[[], None], extractor=None, distances: bool = False,
                  speed_report: Callable[[L.Trainer, float], None] | None = None) -> L.Trainer:
    """The Trainer for ``cfg``, writing into the run directory ``run`` (a ``runs.Run``);
    ``write_record`` saves the run's configuration once training has started; with a feature
    ``extractor``, FID and KID are measured every evaluation.every_n_steps, with ``distances``
    the sliced Wasserstein distance and MMD to the held-out data. The speed of steps
    SPEED_WINDOW goes to ``speed_report`` (by default printed with what it means for the run)."""
    trainer_cfg = cfg.trainer
    check_training_hardware(trainer_cfg.accelerator, trainer_cfg.precision)
    set_float32_matmuls(trainer_cfg.tf32)
    quiet_lightning()
    callbacks = [
        LastCheckpoint(run.last_checkpoint, trainer_cfg.checkpoint_every_n_steps, cfg.seed),
        SampleGrid(run.samples, trainer_cfg.sample_every_n_steps, trainer_cfg.sample_count, cfg.seed,
                   trainer_cfg.first_grid_minutes, list(map(str, trainer_cfg.sample_labels))),
        RunRecord(write_record),
        LearningRateMonitor(logging_interval="step"),
    ]
    if extractor is not None:
        callbacks.append(QualityMetrics(extractor, cfg.evaluation, evaluation_sampling(cfg), run.fid))
    if distances:
        callbacks.append(DataDistances(cfg.evaluation, evaluation_sampling(cfg), run.fid))
    callbacks.append(StepClock(*SPEED_WINDOW, cfg.data.batch_size, speed_report or speed_estimate(cfg)))
    budget = duration_seconds(trainer_cfg.max_time)
    callbacks.append(StepProgress(cfg.data.batch_size, budget_seconds=budget))
    callbacks.append(GracefulStop(budget))      # last: it acts once the checkpoint is saved
    has_validation = cfg.data.val_fraction > 0
    return L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        strategy=trainer_cfg.strategy,
        num_nodes=trainer_cfg.num_nodes,
        precision=resolve_precision(trainer_cfg.precision, trainer_cfg.accelerator),
        max_steps=trainer_cfg.max_steps,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        val_check_interval=trainer_cfg.val_every_n_steps if has_validation else None,
        check_val_every_n_epoch=None,
        limit_val_batches=trainer_cfg.val_batches if has_validation else 0,
        num_sanity_val_steps=0,
        logger=LOGGERS[cfg.logger](cfg, run),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
        default_root_dir=run.root,
        benchmark=True,                 # cuDNN picks the fastest convolution for the fixed shapes
        detect_anomaly=trainer_cfg.detect_anomaly,
        enable_model_summary=False,
        enable_progress_bar=False,      # StepProgress: one bar over the steps, not one per epoch
        enable_checkpointing=False,
    )
