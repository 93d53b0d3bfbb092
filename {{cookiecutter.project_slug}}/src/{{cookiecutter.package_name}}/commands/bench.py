"""``bench``: how fast the configured model trains and samples on this machine, and why.

Prints, for the model, data and preset that ``train`` would use with the same ``key=value``
pairs: the FLOPs of a training step and of a network evaluation (counted by torch), the
device's measured matmul peak, training images/s for the bare step (forward, backward,
optimiser) and for the full Lightning loop (data, EMA, logging, checks), the MFU of each,
sampling images/s at the configured sampler and NFE, peak GPU memory, the largest batch that
fits, and what that means for an epoch and for trainer.max_steps.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from ..config import load_config
from ..data import DiffusionDataModule
from ..devices import (
    autocast,
    device_name,
    matmul_dtype,
    resolve_precision,
    set_float32_matmuls,
    synchronize,
    training_device,
)
from ..errors import ConfigError
from ..module import DiffusionModule
from ..runs import Run, model_for_data, with_base
from ..speed import flops_per_image, largest_batch, matmul_peak, seconds_per_call, size, training_memory
from ..trainer import SPEED_WINDOW, build_trainer, duration

USAGE = """\
bench   [key=value ...]   measure training and sampling speed of the configured model here
                          (the keys of train, e.g. bench preset=h100 data.batch_size=256)"""

TIMED_STEPS = 20


def run(overrides: list[str]) -> None:
    cfg = with_base(load_config(overrides), overrides)
    if cfg.model.name == "ideal":
        raise ConfigError("model.name=ideal has no network to train or time: its cost is one pass over the "
                          "training examples per evaluation (time `sample` instead)")
    device = training_device(cfg.trainer.accelerator)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    set_float32_matmuls(cfg.trainer.tf32)
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup("fit")
    batch_size = min(cfg.data.batch_size, len(data.train_set))
    module = DiffusionModule(model_for_data(cfg, data))
    model = module.model
    bench = Bench(module.to(device), device, precision)
    print(f"bench: {cfg.model.name}, {sum(p.numel() for p in module.denoiser.parameters()) / 1e6:.2f}M parameters, "
          f"data {list(data.data_shape)}, batch {batch_size}, on {device_name(device)}, {precision}, "
          f"compile {cfg.trainer.compile}, channels_last {cfg.trainer.channels_last}")

    step_flops, evaluation_flops = flops_per_image(module.denoiser, model.data_shape, model.condition)
    peak = matmul_peak(device, matmul_dtype(precision))
    print(f"  FLOPs per image: {step_flops / 1e9:.3g} GFLOP per training step (forward + backward), "
          f"{evaluation_flops / 1e9:.3g} per network evaluation")
    print(f"  device peak: {peak / 1e12:.3g} TFLOP/s ({matmul_dtype(precision)} matmul, measured)")

    module.configure_model()
    if module.frozen_half:
        module.frozen_in_half(precision)
    estimate = training_memory(module.denoiser, model.data_shape, batch_size, precision, model.condition,
                               frozen_in_half=module.frozen_half)          # the autoencoder stays on the CPU here
    bare = bench.training_speed(batch_size)
    print(f"  training, bare step: {bare:,.0f} images/s, MFU {100 * bare * step_flops / peak:.0f}%")
    memory = peak_memory(device)
    if memory:
        where = "" if device.type == "cuda" else " (the whole process, in RAM)"
        print(f"  peak memory: {size(memory)} at batch {batch_size}{where}; estimated before training: "
              f"{estimate.describe()}")
    loop = full_loop_speed(cfg, overrides)
    print(f"  training, full loop: {loop:,.0f} images/s, {100 * loop / bare:.0f}% of the bare step "
          f"(data, EMA, logging and checks), MFU {100 * loop * step_flops / peak:.0f}%")

    if model.codec.latent:
        print(codec_speed(model.codec, model.data_shape, batch_size, device))
    nfe = model.nfe(cfg.sampling)
    sample_batch = cfg.evaluation.batch_size
    sampling = bench.sampling_speed(sample_batch)
    print(f"  sampling: {sampling:,.1f} images/s ({cfg.sampling.sampler}, {cfg.sampling.steps} steps, {nfe} NFE, "
          f"batch {sample_batch}), MFU {100 * sampling * nfe * evaluation_flops / peak:.0f}%")

    if device.type == "cuda":
        del bench
        module.cpu()                   # the search has the GPU to itself
        fresh = DiffusionModule(model_for_data(cfg, data))
        fits = largest_batch(Bench(fresh.to(device), device, precision).one_step, batch_size)
        print(f"  largest batch that fits: {fits} (training step, doubling from {batch_size}, not compiled)")
    else:
        print("  largest batch that fits: searched on CUDA GPUs only")
    epoch = len(data.train_set) / loop
    steps = cfg.trainer.max_steps * batch_size / loop
    print(f"  time: an epoch ({len(data.train_set):,} images) {duration(epoch)}; "
          f"trainer.max_steps={cfg.trainer.max_steps:,} about {duration(steps)} on this device")


def codec_speed(codec, latent_shape, n: int, device: torch.device) -> str:
    """How fast the autoencoder of a latent model encodes images (once per data set, then cached)
    and decodes latents (every sample), in batches of ``n``."""
    codec.to(device)
    images = torch.rand(n, *codec.data_shape(latent_shape), device=device) * 2 - 1
    latents = torch.randn(n, *latent_shape, device=device)
    encoding = n / seconds_per_call(lambda: codec.encode(images), device, warmup=1, repeats=3)
    decoding = n / seconds_per_call(lambda: codec.decode(latents), device, warmup=1, repeats=3)
    return (f"  autoencoder: encodes {encoding:,.0f} images/s (once, then cached), decodes {decoding:,.0f} "
            f"latents/s; the network sees latents of {'x'.join(map(str, latent_shape))}")


def peak_memory(device: torch.device) -> int | None:
    """Bytes: the most GPU memory allocated, or elsewhere the process's peak resident size
    (None on Windows, which has no ``resource`` module)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024       # macOS counts bytes, Linux KiB


class Bench:
    """The pieces of a training step and of sampling, on random data of the run's shape."""

    def __init__(self, module: DiffusionModule, device: torch.device, precision: str):
        self.module, self.device, self.precision = module.train(), device, precision
        self.optimizer = module.adamw(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")

    def batch(self, n: int):
        model = self.module.model
        x0 = torch.rand(n, *model.data_shape, device=self.device) * 2 - 1
        labels = torch.randint(model.num_classes, (n,), device=self.device) if model.num_classes else None
        return x0, labels

    def one_step(self, n: int, batch=None) -> None:
        """One bare training step: forward, backward, clipping, the optimiser; no EMA, no checks."""
        module = self.module
        with autocast(self.device, self.precision):
            loss = module.batch_loss(batch or self.batch(n))
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(module.denoiser.parameters(), module.cfg.optim.grad_clip or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def training_speed(self, n: int) -> float:
        batch = self.batch(n)
        warmup = 5 if self.module.cfg.trainer.compile == "none" else 10
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return n / seconds_per_call(lambda: self.one_step(n, batch), self.device, warmup, TIMED_STEPS)

    def sampling_speed(self, n: int) -> float:
        """The configured sampler on the EMA weights, in the training precision and compiled
        like the training network (as ``sample precision=... compile=...`` would)."""
        model, generator = self.module.model, torch.Generator(self.device)
        model.speed_up(self.precision, self.module.cfg.trainer.compile)
        return n / seconds_per_call(lambda: model.sample(n, generator.manual_seed(0)), self.device, warmup=1, repeats=2)


def full_loop_speed(cfg, overrides: list[str]) -> float:
    """Images/s over SPEED_WINDOW of a real ``train`` in a scratch run directory: the Lightning
    loop with the data, the EMA, logging and the finite checks, timed as training times itself."""
    measured = []
    quiet = ["trainer.val_every_n_steps=1000000", "trainer.sample_every_n_steps=1000000", "trainer.sample_count=1",
             "trainer.checkpoint_every_n_steps=1000000", "evaluation.every_n_steps=0", "trainer.max_time=null",
             f"trainer.max_steps={SPEED_WINDOW[1]}", "trainer.resume=false"]
    loop_cfg = with_base(load_config([*overrides, *quiet]), [*overrides, *quiet])
    data = DiffusionDataModule(loop_cfg.data, loop_cfg.seed)
    data.setup("fit")
    module = DiffusionModule(model_for_data(loop_cfg, data))
    model = module.model
    if model.codec.latent:                        # a latent model trains on its images' latents
        data.encode(model.codec, None if model.pretrained is not None else loop_cfg.codec.latent_std)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(loop_cfg, Run(Path(scratch) / "bench"), lambda: None,
                                speed_report=lambda trainer, speed: measured.append(speed))
        trainer.fit(module, datamodule=data)
    synchronize(module.device)
    return measured[0]
