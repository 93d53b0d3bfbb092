"""Measuring speed honestly: time that waits for the GPU to finish, FLOPs counted by torch
rather than estimated, and the device's own matmul peak, measured, to compare them with.

Model FLOPs utilisation (MFU) = FLOPs per image x images per second / peak FLOP/s: the share
of the hardware's arithmetic that does the model's work (Chowdhery et al. 2022, PaLM, app. B).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .devices import synchronize


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Mean wall-clock seconds of ``fn()``, after ``warmup`` calls (compilation, caches, cuDNN's
    choice of kernels)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def flops_of(fn: Callable[[], object]) -> int:
    """Floating-point operations of ``fn()`` as torch counts them: matmuls, convolutions and
    attention, two per multiply-add (elementwise work is not counted, as is usual for MFU)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_per_image(denoiser: nn.Module, data_shape: tuple[int, ...], condition=None) -> tuple[float, float]:
    """FLOPs per image of a training step (forward and backward) and of one network evaluation,
    counted by torch on a copy of ``denoiser`` on the meta device: shapes only, no arithmetic.
    A conditional network (``condition``, its kind) is counted with its null condition."""
    denoiser = copy.deepcopy(denoiser).to("meta")
    x0, noise = (torch.ones(2, *data_shape, device="meta") for _ in range(2))
    sigma = torch.ones(2, device="meta")
    null = condition.null(2, "meta") if condition is not None else None
    step = flops_of(lambda: denoiser.loss(x0, sigma, noise, null).mean().backward())
    with torch.no_grad():
        evaluation = flops_of(lambda: denoiser(x0, sigma, null))
    return step / 2, evaluation / 2


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the practical peak, which is
    below the data sheet's (an H100 SXM's bf16 dense figure is 989 TFLOP/s)."""
    n = {"cuda": 8192, "mps": 4096}.get(device.type, 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / seconds_per_call(lambda: a @ b, device, warmup=2, repeats=10)


def largest_batch(step: Callable[[int], object], start: int, limit: int = 65536) -> int:
    """The largest of start, 2 start, 4 start, ... (up to ``limit``) for which ``step(batch)`` runs
    without running out of GPU memory; 0 if even ``start`` does not fit."""
    fits, batch = 0, start
    while batch <= limit:
        try:
            step(batch)
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        fits, batch = batch, 2 * batch
    return fits
