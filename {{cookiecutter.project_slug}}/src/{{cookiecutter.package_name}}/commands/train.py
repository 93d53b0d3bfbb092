"""``train``: fit a model as configured, into runs/<name>/, resuming from its last.ckpt."""
from __future__ import annotations

import shlex
import signal
import time
from pathlib import Path

import torch
from lightning.pytorch.trainer.states import TrainerStatus

from ..config import load_config, run_config, student_config
from ..data import DiffusionDataModule, PairedDataModule
from ..devices import device_name, memory_errors, sampling_precision, training_device
from ..diffusion.distillation import ConsistencyDistillation, ConsistencyTuning, Objective
from ..diffusion.parameterizations import X0Prediction
from ..diffusion.schedules import karras_sigmas, training_noise
from ..errors import ConfigError, DataError, Interrupted
from ..evaluation.features import build_extractor
from ..evaluation.quality import evaluation_cost
from ..kinds import data_kind
from ..model import Model
from ..module import DiffusionModule
from ..pairs import class_images, reflow_pairs
from ..pixels import to_uint8
from ..runs import Run, load_codec, load_run, model_for_data, new_model, new_student, serve_scaled, with_base
from ..speed import Memory, flops_per_image, size, training_memory
from ..trainer import SPEED_WINDOW, build_trainer, duration, evaluation_sampling, graceful_stop, seed_process
from ..visualize import sampling_title, save_sample_grid, save_samples_picture

USAGE = """\
train   [key=value ...]   train; e.g. train experiment=digits trainer.max_steps=2000
                          (keys: configs/config.yaml; preset=NAME, experiment=NAME pick layers)"""


def run(overrides: list[str]) -> Path:
    cfg = load_config(overrides)
    teacher = None
    if cfg.distill.teacher:                  # a few-step student: the teacher's network, data and weights
        teacher, teacher_run = load_run(cfg.distill.teacher)
        cfg = student_config(cfg, teacher.config, teacher_data="pretrained" not in teacher.origin)
    cfg = with_base(cfg, overrides)          # adapters on a trained network: its network, noise levels and sampling
    run_dir = Run.named(cfg.name)
    if teacher is not None and run_dir.root.resolve() == teacher_run.root.resolve():
        raise ConfigError(f"name={cfg.name} is the teacher's own run ({teacher_run.root}): give the student a name "
                          "of its own")
    program = __package__.split(".")[0]
    evaluating = cfg.evaluation.every_n_steps > 0
    maybe_images = cfg.data.name not in ("toy2d", "tensor_file")      # a tensor file says once it is read
    extractor = build_extractor(cfg.evaluation, program) if evaluating and maybe_images else None
    seed_process(cfg.seed)
    objective = None
    if teacher is not None:                  # a run that cannot be resumed is refused before the pairs are drawn
        model = new_student(cfg, teacher)
        resume_from, start_step = run_dir.checkpoint_to_resume(cfg, model.data_shape, model.class_names)
        data, objective = METHODS[cfg.distill.method](cfg, teacher, run_dir)
    else:
        codec = load_codec(cfg.codec.source)     # a latent model's autoencoder, found (or refused) before any work
        data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup("fit")
    paired = isinstance(data, PairedDataModule)  # reflow's pairs: already in the teacher's space
    if teacher is not None and not paired:
        check_student_data(cfg, data.data_shape, teacher.codec.data_shape(teacher.data_shape))
        serve_scaled(data, model.codec)          # the teacher's scaling, as the teacher saw its data
    images = data_kind(data.data_shape, cfg.data.kind) == "image"
    if evaluating and images and extractor is None:
        extractor = build_extractor(cfg.evaluation, program)
    distances = evaluating and not images
    if cfg.model.name == "ideal":
        return memorise(cfg, run_dir, data, program)
    if teacher is None:
        model = model_for_data(cfg, data, codec)
        resume_from, start_step = run_dir.checkpoint_to_resume(cfg, data.data_shape, model.class_names)
    if model.codec.latent and not paired:
        encode_data(cfg, model, data, extractor)
    if cfg.lora.class_prompt:
        keep_the_class(cfg, model, data, run_dir)
    module = DiffusionModule(model, objective)
    trainer = build_trainer(cfg, run_dir, lambda: run_dir.save_config(cfg, data.class_names), extractor, distances)
    memory = memory_needed(cfg, module, data, trainer)
    if teacher is not None and cfg.distill.method == "cd":
        teacher.to(trainer.strategy.root_device)         # consistency distillation asks it at every step
    if trainer.is_global_zero:
        print(startup_summary(cfg, run_dir, start_step if resume_from else None, data, module, trainer, memory))
        if extractor is not None or distances:
            measure = f"FID and KID with {extractor.name}" if extractor else "SWD and MMD against the held-out data"
            print(quality_cost(cfg, module.model.nfe(evaluation_sampling(cfg)), measure, trainer.world_size))
    started = time.monotonic()
    kept = (override for override in overrides if not override.startswith("trainer.resume="))
    resume = f"{program} " + " ".join(["train", *map(shlex.quote, kept)])
    device = device_name(trainer.strategy.root_device)
    advice = (f"data.batch_size={cfg.data.batch_size} does not fit in memory on {device}: lower data.batch_size "
              f"(`{program} bench` finds the largest that fits a GPU)")
    try:
        with memory_errors(advice):
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
        print(closing_summary(cfg, run_dir, trainer.global_step, time.monotonic() - started, program))
    return run_dir.root


def encode_data(cfg, model: Model, data: DiffusionDataModule, extractor) -> None:
    """A latent model trains on the latents of its images, encoded once on the training device
    (``DiffusionDataModule.encode``), where its autoencoder then stays to decode the sample grids.
    A new latent model of this project's networks measures its latents' normalisation there
    (codec.latent_std); a pipeline's network, or a trained one's, keeps its own."""
    if extractor is not None and model.pretrained is not None:
        raise ConfigError("FID and KID during training are measured on this project's networks and on pixel "
                          "pipelines, and this run adapts a latent pipeline: set evaluation.every_n_steps=0")
    if cfg.data.random_crop:
        raise ConfigError("data.random_crop crops pixels at each step, and this model's images are encoded once, "
                          "centre-cropped: set data.random_crop=false")
    model.codec.to(training_device(cfg.trainer.accelerator))
    data.encode(model.codec, None if model.pretrained is not None else cfg.codec.latent_std)


def keep_the_class(cfg, model: Model, data: DiffusionDataModule, run_dir: Run) -> None:
    """DreamBooth's prior preservation: the base's own images of lora.class_prompt, drawn once
    (``pairs.class_images``; the adapters are still zero, so the model is its base), trained on
    beside the data (``DiffusionDataModule.add_prior``)."""
    prompt = cfg.lora.class_prompt
    if prompt in data.class_names:
        raise ConfigError(f"lora.class_prompt={prompt} is the caption of your images: name the class without the "
                          "subject's token (data.prompt='a photo of sks dog', lora.class_prompt='a photo of a dog')")
    device = training_device(cfg.trainer.accelerator)
    model.to(device).speed_up(sampling_precision(cfg.trainer.precision, device))
    images = class_images(model, cfg.sampling, prompt, run_dir.class_images, cfg.lora.class_images, cfg.seed)
    preview = run_dir.class_images / "preview.png"
    if not preview.is_file():
        save_sample_grid(to_uint8(model.codec.decode(images[:16].to(device)).cpu()), preview,
                         f"{len(images)} class images: {prompt} (the base's own)")
    data.add_prior(images, model.class_number(prompt))


def reflow(cfg, teacher: Model, run_dir: Run) -> tuple[PairedDataModule, None]:
    """Reflow's data: the pairs of ``teacher`` (``pairs.py``), drawn on the training device in
    the training precision, once (runs/<name>/pairs/ keeps them); the loss is denoising's."""
    device = training_device(cfg.trainer.accelerator)
    teacher.to(device).speed_up(sampling_precision(cfg.trainer.precision, device))
    distill = cfg.distill
    pairs = reflow_pairs(teacher, teacher_sampling(cfg, teacher), run_dir.pairs, distill.pairs, distill.shard_size,
                         distill.batch_size, cfg.seed)
    teacher.to("cpu")
    return PairedDataModule(cfg.data, cfg.seed, pairs, teacher.codec), None


def consistency_distillation(cfg, teacher: Model, run_dir: Run) -> tuple[DiffusionDataModule, Objective]:
    """CD's data are the teacher's; its loss asks the teacher, frozen, for one ODE step at each
    training step, guided as the teacher samples (distill.teacher_sampling.guidance)."""
    check_boundary_condition(cfg, teacher)
    teacher.denoiser.eval().requires_grad_(False)
    guidance = teacher_sampling(cfg, teacher).guidance
    levels = karras_sigmas(cfg.distill.levels, CD_SIGMA_MIN, cfg.diffusion.noise_max)[:-1]
    guided = lambda labels: teacher.guided(0, guidance, labels)        # noqa: E731 (the labels of each batch)
    return DiffusionDataModule(cfg.data, cfg.seed), ConsistencyDistillation(guided, levels)


def consistency_tuning(cfg, teacher: Model, run_dir: Run) -> tuple[DiffusionDataModule, Objective]:
    """ECT trains on the teacher's data, with the teacher's weights as its only use of it."""
    check_boundary_condition(cfg, teacher)
    tuning = ConsistencyTuning(training_noise(cfg.diffusion), cfg.distill.stage_steps)
    return DiffusionDataModule(cfg.data, cfg.seed), tuning


CD_SIGMA_MIN = 0.002        # the lowest level of consistency distillation's ladder (Song et al. 2023, as EDM's)

# What each distill.method trains on and with which loss (None: the denoising loss).
METHODS = {"reflow": reflow, "cd": consistency_distillation, "ect": consistency_tuning}


def check_boundary_condition(cfg, teacher: Model) -> None:
    """A consistency student needs D(x, 0) = x, which every parameterization but x0-prediction
    builds in (``diffusion/distillation.py``): without it nothing ties the student's answers to
    the data."""
    if isinstance(teacher.denoiser.parameterization, X0Prediction):
        raise ConfigError(f"distill.method={cfg.distill.method} needs a network whose denoiser returns x at noise "
                          f"level 0, and {cfg.distill.teacher} predicts x0 (diffusion.objective=x0, or a pipeline's "
                          "prediction type sample): distil it by reflow (experiment=reflow), or train the teacher "
                          "with another objective")


def check_student_data(cfg, data_shape, teacher_shape) -> None:
    """A student learns from data of its teacher's shape (a pipeline's student brings its own data)."""
    if tuple(data_shape) != tuple(teacher_shape):
        raise ConfigError(f"distill.teacher={cfg.distill.teacher} draws examples of shape {list(teacher_shape)}, but "
                          f"data.name={cfg.data.name} gives {list(data_shape)}: give the student data of its "
                          "teacher's shape (data.image_size, data.channels)")


def teacher_sampling(cfg, teacher: Model):
    """The teacher's sampling section, changed by distill.teacher_sampling."""
    return run_config(teacher.config, "sampling", cfg.distill.teacher_sampling).sampling


def memorise(cfg, run_dir: Run, data: DiffusionDataModule, program: str) -> Path:
    """model.name=ideal has nothing to learn: the training examples are the model
    (models/ideal.py). They are stored in last.ckpt, where every command finds a trained run's
    weights, with one sample grid to look at."""
    run_dir.checkpoint_to_resume(cfg, data.data_shape, data.class_names)     # never overwrites a run
    module = DiffusionModule(new_model(cfg, data.data_shape, data.class_names, data.cluster_sizes))
    examples = data.training_examples(list(range(len(data.train_set))))
    try:
        module.ema.memorise(examples, data.train_set.labels)
    except ValueError as error:
        raise DataError(f"model.name=ideal: {error}") from None
    run_dir.save_config(cfg, data.class_names)
    run_dir.last_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    weights = {key: value for key, value in module.state_dict().items() if key.startswith("ema.")}
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": weights, "global_step": 0},
               run_dir.last_checkpoint)
    count, model = cfg.trainer.sample_count, module.model
    result = model.sample(count, torch.Generator().manual_seed(cfg.seed))
    grid = run_dir.samples / "step_0000000.png"
    conditional = model.condition is not None
    title = "ideal denoiser, " + sampling_title(run_dir.root.name, cfg.sampling, result.nfe, conditional)
    save_samples_picture(result.x, grid, title, model.column_names(count), data.train_set.data[:count])
    smoothing = cfg.model.ideal.smoothing
    print("\n".join([
        f"ideal      {len(examples):,} training examples of {'x'.join(map(str, data.data_shape))} memorised "
        f"(no training){f', smoothing {smoothing:g}' if smoothing else ''}",
        f"  checkpoint {run_dir.last_checkpoint}",
        f"  grid       {grid}",
        f"  next       {program} sample run={run_dir.root}",
    ]))
    return run_dir.root


HEADROOM = 2**30       # the CUDA context and the allocator's slack, which the estimate leaves out


def memory_needed(cfg, module: DiffusionModule, data: DiffusionDataModule, trainer) -> Memory:
    """The memory a training step will take (``speed.training_memory``), estimated before it is
    allocated; on a CUDA GPU that it would not fit, a one-line error that names what to change,
    instead of running out of memory at the first step, or at the first grid hours later."""
    model = module.model
    checkpointing = hasattr(model.denoiser.net, "enable_gradient_checkpointing")
    if cfg.trainer.gradient_checkpointing and not checkpointing:
        raise ConfigError(f"trainer.gradient_checkpointing=true works on diffusers networks; model.name="
                          f"{cfg.model.name} is one of this project's, small enough without it: set it to false")
    batch = cfg.data.batch_size * (2 if data.prior is not None else 1)     # DreamBooth: as many class images
    codec = model.codec if model.codec.latent else None
    memory = training_memory(module.denoiser, model.data_shape, batch, str(trainer.precision), model.condition,
                             codec, module.frozen_half)
    device = trainer.strategy.root_device
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        if memory.total + HEADROOM > total:
            fixes = "lower data.batch_size" + (", or set trainer.gradient_checkpointing=true"
                                               if checkpointing and not cfg.trainer.gradient_checkpointing else "")
            raise ConfigError(f"training needs about {memory.describe()}, and {device_name(device)} has "
                              f"{size(total)}: {fixes}")
    return memory


def startup_summary(cfg, run_dir: Run, resumed_at: int | None, data: DiffusionDataModule, module: DiffusionModule,
                    trainer, memory: Memory) -> str:
    """What is about to happen, in a few lines: run (and the step it resumes from), data, model,
    device, length."""
    shape = "x".join(map(str, data.data_shape))
    if data.latent:
        autoencoder = cfg.codec.source or cfg.model.pretrained.source
        shape = f"{'x'.join(map(str, data.image_shape))} images as latents of {shape} ({autoencoder})"
    classes = data.class_names
    labels = ""
    if classes:
        kind = "class" if len(classes) == 1 else "classes"
        labels = f", {len(classes)} {kind} ({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})"
    parameters = sum(p.numel() for p in module.denoiser.parameters())
    trained = sum(p.numel() for p in module.denoiser.parameters() if p.requires_grad)
    adapters = (f" ({trained:,} of them trained: rank-{cfg.lora.rank} adapters on {cfg.lora.base})"
                if trained < parameters else "")
    step_flops, _ = flops_per_image(module.denoiser, module.model.data_shape, module.model.condition)
    processes = f" x {trainer.world_size} processes" if trainer.world_size > 1 else ""
    batch = cfg.data.batch_size * trainer.world_size
    images = cfg.trainer.max_steps * batch
    budget = f", at most {cfg.trainer.max_time} (trainer.max_time)" if cfg.trainer.max_time else ""
    optional = []
    if cfg.trainer.compile != "none":
        optional.append(f"  compile    {cfg.trainer.compile} (the first steps wait for it)")
    return "\n".join([
        f"run        {run_dir.root}" + (" (new)" if resumed_at is None else f" (resuming from step {resumed_at})"),
        f"  data     {cfg.data.name}: {len(data.train_set):,} training + {len(data.val_set):,} validation examples "
        f"of {shape}{labels}" + (f"; a {cfg.distill.method} student of {cfg.distill.teacher}"
                                 if cfg.distill.teacher else "") + prior_line(cfg, data),
        f"  model    {cfg.model.name}, {parameters / 1e6:.2f}M parameters{adapters}, {step_flops / 1e9:.3g} GFLOP per "
        f"image per training step; objective {cfg.diffusion.objective}",
        f"  device   {device_name(trainer.strategy.root_device)}{processes}, precision {trainer.precision}",
        f"  memory   about {memory.describe()}, estimated",
        f"  length   {cfg.trainer.max_steps:,} steps of {batch} = {images:,} images "
        f"({images / len(data.train_set):.1f} epochs){budget}; speed and time left after {SPEED_WINDOW[1]} steps",
        *optional,
        f"  grids    every {cfg.trainer.sample_every_n_steps} steps" +
        (f" and once after {cfg.trainer.first_grid_minutes:g} min" if cfg.trainer.first_grid_minutes else "") +
        f", {cfg.sampling.sampler} {cfg.sampling.steps} steps, in {run_dir.samples}",
    ])


def prior_line(cfg, data: DiffusionDataModule) -> str:
    if data.prior is None:
        return ""
    return (f"; each batch also holds as many of the {len(data.prior)} class images of '{cfg.lora.class_prompt}' "
            f"(weight {cfg.lora.prior_weight:g})")


def closing_summary(cfg, run_dir: Run, step: int, seconds: float, program: str) -> str:
    """Where everything the run wrote is, and what to do next."""
    grids = sorted(run_dir.samples.glob("step_*.png"))
    logs = run_dir.root / cfg.logger
    viewer = f" (view: tensorboard --logdir {logs})" if cfg.logger == "tensorboard" else ""
    return "\n".join([
        f"finished   step {step:,} of {cfg.trainer.max_steps:,} in {duration(seconds)}",
        f"  checkpoint {run_dir.last_checkpoint}",
        f"  grids      {run_dir.samples}/" + (f" (latest: {grids[-1].name})" if grids else ""),
        f"  config     {run_dir.config}",
        f"  logs       {logs}{viewer}",
        f"  next       {program} sample run={run_dir.root}",
    ])


def quality_cost(cfg, nfe: int, measure: str, world_size: int) -> str:
    """What measuring quality during training will cost (``nfe`` per sample), said before training starts."""
    evaluation = cfg.evaluation
    evaluating, training = evaluation_cost(evaluation.samples, nfe, evaluation.every_n_steps,
                                           cfg.data.batch_size * world_size)
    return (f"quality: {measure}: {evaluation.samples} samples x ({nfe} NFE + features) = "
            f"{evaluating:,} network evaluations every {evaluation.every_n_steps} steps, about "
            f"{100 * evaluating / training:.0f}% of training's {training:,}; the time is measured at each evaluation")
