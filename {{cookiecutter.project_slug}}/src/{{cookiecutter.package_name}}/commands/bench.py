"""``bench``: how fast the configured model trains and samples on this machine, and why.

Prints, for the model, data and preset that ``train`` would use with the same ``key=value``
pairs: the FLOPs of a training step and of a network evaluation (counted by torch), the
device's measured matmul peak, training images/s for the bare step (forward, backward,
optimiser) and for the full Lightning loop (data, EMA, logging, checks), the MFU of each,
sampling images/s at the configured sampler and NFE, peak GPU memory, the largest batch that
fits, and what that means for an epoch and for trainer.max_steps.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..config import load_config
from ..data import DiffusionDataModule
from ..diffusion.samplers import evaluations_per_sample
from ..module import AUTOCAST, DiffusionModule
from ..runs import Run, pick_device
from ..speed import flops_of, largest_batch, matmul_peak, seconds_per_call, synchronize
from ..trainer import SPEED_WINDOW, build_trainer, duration, resolve_precision, set_float32_matmuls

USAGE = """\
bench   [key=value ...]   measure training and sampling speed of the configured model here
                          (the keys of train, e.g. bench preset=h100 data.batch_size=256)"""

MATMUL_DTYPE = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TIMED_STEPS = 20


def run(overrides: list[str]) -> None:
    cfg = load_config(overrides)
    accelerator = cfg.trainer.accelerator
    device = pick_device({"gpu": "cuda"}.get(accelerator, accelerator))
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    set_float32_matmuls(cfg.trainer.tf32)
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup("fit")
    batch_size = min(cfg.data.batch_size, len(data.train_set))
    module = DiffusionModule(OmegaConf.to_container(cfg, resolve=True), list(data.data_shape), data.class_names)
    bench = Bench(module.to(device), device, precision)
    print(f"bench: {cfg.model.name}, {sum(p.numel() for p in module.denoiser.parameters()) / 1e6:.2f}M parameters, "
          f"data {list(data.data_shape)}, batch {batch_size}, on {device_name(device)}, {precision}, "
          f"compile {cfg.trainer.compile}, channels_last {cfg.trainer.channels_last}")

    step_flops, evaluation_flops = flops_per_image(module)
    peak = matmul_peak(device, MATMUL_DTYPE.get(precision, torch.float32))
    print(f"  FLOPs per image: {step_flops / 1e9:.3g} GFLOP per training step (forward + backward), "
          f"{evaluation_flops / 1e9:.3g} per network evaluation")
    print(f"  device peak: {peak / 1e12:.3g} TFLOP/s ({MATMUL_DTYPE.get(precision, torch.float32)} matmul, measured)")

    module.configure_model()
    bare = bench.training_speed(batch_size)
    print(f"  training, bare step: {bare:,.0f} images/s, MFU {100 * bare * step_flops / peak:.0f}%")
    memory = peak_memory(device)
    if memory:
        print(f"  peak memory: {memory / 2**30:.2f} GiB at batch {batch_size}"
              f"{'' if device.type == 'cuda' else ' (the whole process, in RAM)'}")
    loop = full_loop_speed(cfg, overrides)
    print(f"  training, full loop: {loop:,.0f} images/s, {100 * loop / bare:.0f}% of the bare step "
          f"(data, EMA, logging and checks), MFU {100 * loop * step_flops / peak:.0f}%")

    nfe = evaluations_per_sample(cfg.sampling, bool(module.num_classes))
    sample_batch = cfg.evaluation.batch_size
    sampling = bench.sampling_speed(sample_batch)
    print(f"  sampling: {sampling:,.1f} images/s ({cfg.sampling.sampler}, {cfg.sampling.steps} steps, {nfe} NFE, "
          f"batch {sample_batch}), MFU {100 * sampling * nfe * evaluation_flops / peak:.0f}%")

    if device.type == "cuda":
        del bench
        module.cpu()                   # the search has the GPU to itself
        fresh = DiffusionModule(OmegaConf.to_container(cfg, resolve=True), list(data.data_shape), data.class_names)
        fits = largest_batch(Bench(fresh.to(device), device, precision).one_step, batch_size)
        print(f"  largest batch that fits: {fits} (training step, doubling from {batch_size}, not compiled)")
    else:
        print("  largest batch that fits: searched on CUDA GPUs only")
    epoch = len(data.train_set) / loop
    steps = cfg.trainer.max_steps * batch_size / loop
    print(f"  time: an epoch ({len(data.train_set):,} images) {duration(epoch)}; "
          f"trainer.max_steps={cfg.trainer.max_steps:,} about {duration(steps)} on this device")


def flops_per_image(module: DiffusionModule) -> tuple[float, float]:
    """FLOPs per image of a training step (forward and backward) and of one network evaluation,
    counted by torch on a copy of the denoiser on the meta device: shapes only, no arithmetic."""
    denoiser = copy.deepcopy(module.denoiser).to("meta")
    x0, noise = (torch.ones(2, *module.data_shape, device="meta") for _ in range(2))
    sigma = torch.ones(2, device="meta")
    labels = torch.zeros(2, dtype=torch.long, device="meta") if module.num_classes else None
    step = flops_of(lambda: denoiser.loss(x0, sigma, noise, labels).mean().backward())
    with torch.no_grad():
        evaluation = flops_of(lambda: denoiser(x0, sigma, labels))
    return step / 2, evaluation / 2


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
    return device.type


class Bench:
    """The pieces of a training step and of sampling, on random data of the run's shape."""

    def __init__(self, module: DiffusionModule, device: torch.device, precision: str):
        self.module, self.device, self.precision = module, device, precision
        self.optimizer = module.adamw(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")

    def autocast(self):
        dtype = AUTOCAST.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def batch(self, n: int):
        module = self.module
        x0 = torch.rand(n, *module.data_shape, device=self.device) * 2 - 1
        labels = torch.randint(module.num_classes, (n,), device=self.device) if module.num_classes else None
        return x0, labels

    def one_step(self, n: int, batch=None) -> None:
        """One bare training step: forward, backward, clipping, the optimiser; no EMA, no checks."""
        module = self.module
        with self.autocast():
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
        module, generator = self.module, torch.Generator(self.device)
        module.speed_up_sampling(self.precision, module.cfg.trainer.compile)
        return n / seconds_per_call(lambda: module.sample(n, generator.manual_seed(0)), self.device, warmup=1, repeats=2)


def full_loop_speed(cfg, overrides: list[str]) -> float:
    """Images/s over SPEED_WINDOW of a real ``train`` in a scratch run directory: the Lightning
    loop with the data, the EMA, logging and the finite checks, timed as training times itself."""
    measured = []
    quiet = ["trainer.val_every_n_steps=1000000", "trainer.sample_every_n_steps=1000000", "trainer.sample_count=1",
             "trainer.checkpoint_every_n_steps=1000000", "evaluation.every_n_steps=0", "trainer.max_time=null",
             f"trainer.max_steps={SPEED_WINDOW[1]}", "trainer.resume=false"]
    loop_cfg = load_config([*overrides, *quiet])
    data = DiffusionDataModule(loop_cfg.data, loop_cfg.seed)
    data.setup("fit")
    module = DiffusionModule(OmegaConf.to_container(loop_cfg, resolve=True), list(data.data_shape), data.class_names)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(loop_cfg, Run(Path(scratch) / "bench"), lambda: None,
                                speed_report=lambda trainer, speed: measured.append(speed))
        trainer.fit(module, datamodule=data)
    synchronize(module.device)
    return measured[0]
