"""``train``: fit a model as configured, into runs/<name>/, resuming from its last.ckpt."""
from __future__ import annotations

import shlex
import signal
from pathlib import Path

from lightning.pytorch.trainer.states import TrainerStatus
from omegaconf import OmegaConf

from ..config import load_config
from ..data import DiffusionDataModule
from ..diffusion.samplers import evaluations_per_sample
from ..errors import Interrupted
from ..evaluation.features import build_extractor
from ..evaluation.quality import check_images, evaluation_cost
from ..module import DiffusionModule
from ..runs import Run
from .bench import flops_per_image
from ..trainer import build_trainer, evaluation_sampling, graceful_stop, seed_process

USAGE = """\
train   [key=value ...]   train; e.g. train experiment=digits trainer.max_steps=2000
                          (keys: configs/config.yaml; preset=NAME, experiment=NAME pick layers)"""


def run(overrides: list[str]) -> Path:
    cfg = load_config(overrides)
    run_dir = Run.named(cfg.name)
    program = __package__.split(".")[0]
    extractor = build_extractor(cfg.evaluation, program) if cfg.evaluation.every_n_steps else None
    seed_process(cfg.seed)
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup("fit")
    if extractor is not None:
        check_images(data.data_shape, cfg.data.name)
    module = DiffusionModule(OmegaConf.to_container(cfg, resolve=True), list(data.data_shape), data.class_names)
    resume_from = run_dir.checkpoint_to_resume(cfg, data.data_shape, data.class_names)
    trainer = build_trainer(cfg, run_dir, lambda: run_dir.save_config(cfg, data.class_names), extractor)
    if trainer.is_global_zero:
        print(f"run directory: {run_dir.root}" + (f" (resuming from {resume_from})" if resume_from else ""))
        print(model_summary(module, cfg))
        if extractor is not None:
            print(quality_cost(cfg, extractor.name, trainer.world_size))
    resume = f"{program} " + " ".join(["train", *map(shlex.quote, (o for o in overrides if not o.startswith("trainer.resume=")))])
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except SystemExit:       # Lightning's way out after Ctrl-C or SIGTERM, once last.ckpt is saved
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        signal_number = signal.SIGTERM if trainer.received_sigterm else signal.SIGINT
        raise Interrupted(f"{signal.Signals(signal_number).name} at step {trainer.global_step}; "
                          f"{run_dir.last_checkpoint} is saved. Resume with: {resume}", signal_number,
                          trainer.is_global_zero) from None
    stop = graceful_stop(trainer)
    if stop.reason == "SIGUSR1":
        then = f"requeued SLURM job {stop.requeued}, which resumes here" if stop.requeued else f"resume with: {resume}"
        raise Interrupted(f"SIGUSR1 at step {trainer.global_step}; {run_dir.last_checkpoint} is saved; {then}",
                          signal.SIGUSR1, trainer.is_global_zero)
    if trainer.is_global_zero:
        if stop.reason == "max_time":
            print(f"time budget trainer.max_time={cfg.trainer.max_time} spent at step {trainer.global_step} of "
                  f"{cfg.trainer.max_steps}; the same command continues from {run_dir.last_checkpoint}")
        print(f"done: checkpoints in {run_dir.last_checkpoint.parent}, sample grids in {run_dir.samples}")
    return run_dir.root


def model_summary(module: DiffusionModule, cfg) -> str:
    """Size and cost of the model, before training; its measured speed follows after 30 steps."""
    parameters = sum(p.numel() for p in module.denoiser.parameters())
    step_flops, _ = flops_per_image(module)
    return (f"model: {cfg.model.name}, {parameters / 1e6:.2f}M parameters, {step_flops / 1e9:.3g} GFLOP per image "
            f"per training step, batch {cfg.data.batch_size}; `bench` measures what that costs here")


def quality_cost(cfg, extractor_name: str, world_size: int) -> str:
    """What FID during training will cost, said before training starts."""
    evaluation, nfe = cfg.evaluation, evaluations_per_sample(evaluation_sampling(cfg))
    evaluating, training = evaluation_cost(evaluation.samples, nfe, evaluation.every_n_steps,
                                           cfg.data.batch_size * world_size)
    return (f"quality: FID and KID with {extractor_name}: {evaluation.samples} samples x ({nfe} NFE + features) = "
            f"{evaluating:,} network evaluations every {evaluation.every_n_steps} steps, about "
            f"{100 * evaluating / training:.0f}% of training's {training:,}; the time is measured at each evaluation")
