"""Measuring speed honestly: time that waits for the GPU to finish, FLOPs counted by torch
rather than estimated, and the device's own matmul peak, measured, to compare them with.

Model FLOPs utilisation (MFU) = FLOPs per image x images per second / peak FLOP/s: the share
of the hardware's arithmetic that does the model's work (Chowdhery et al. 2022, PaLM, app. B).

Memory is estimated before training (``training_memory``), on the meta device: the weights as
they are kept, the state that training keeps for each weight it trains, and the activations that
autograd saves for the backward pass, counted as a step at the configured batch saves them.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .devices import AUTOCAST, synchronize


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
    denoiser = meta_copy(denoiser)
    x0, sigma, noise, null = meta_batch(2, data_shape, condition)
    step = flops_of(lambda: denoiser.loss(x0, sigma, noise, null).mean().backward())
    with torch.no_grad():
        evaluation = flops_of(lambda: denoiser(x0, sigma, null))
    return step / 2, evaluation / 2


def meta_copy(module: nn.Module) -> nn.Module:
    """``module`` with its weights and buffers on the meta device: shapes and dtypes, no memory
    (its weights are never copied, which for a Stable Diffusion UNet would be 3.4 GB)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in module.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


def meta_batch(n: int, data_shape: tuple[int, ...], condition=None) -> tuple:
    """A batch of ``n`` examples on the meta device, as a training step takes it: clean data, noise
    levels, noise and (for a conditional network, whose kind ``condition`` is) the null condition."""
    x0, noise = (torch.ones(n, *data_shape, device="meta") for _ in range(2))
    null = condition.null(n, "meta") if condition is not None else None
    return x0, torch.ones(n, device="meta"), noise, null


def saved_activation_bytes(fn: Callable[[], object], weights: list[Tensor]) -> int:
    """Bytes of the tensors that autograd keeps for the backward pass while ``fn()`` runs: what
    stands in memory when a training step's forward pass ends. Each is counted once (a view by
    its base), the ``weights`` apart."""
    kept, skipped = {}, {id(w) for w in weights}

    def pack(tensor: Tensor) -> Tensor:
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in skipped:
            kept[id(base)] = base
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(t.numel() * t.element_size() for t in kept.values())


class FusedAttention(torch.autograd.Function):
    """Attention as fused kernels (flash or memory-efficient attention, which torch picks on GPUs
    and CPUs) keep it for the backward pass: queries, keys, values, the output and one float32
    log-sum-exp per query and head, never the N x N attention matrix, which the meta device's
    plain implementation would keep."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out


def fused_attention(q: Tensor, k: Tensor, v: Tensor, *args, **kwargs) -> Tensor:
    return FusedAttention.apply(q, k, v)


TRAINING_STATE = 4 + 8 + 4      # bytes per trained weight: its float32 gradient, AdamW's two moments, its EMA


@dataclass
class Memory:
    """A training step's memory on the device, estimated (bytes)."""

    weights: int           # every weight, as kept (an adapted pipeline's frozen ones in half precision when mixed)
    state: int             # gradients, optimiser moments and EMA of the trained weights
    activations: int       # what the forward pass keeps for the backward pass, at the batch size
    codec: int             # an autoencoder kept on the device to decode sample grids
    batch: int             # examples per step

    @property
    def total(self) -> int:
        return self.weights + self.state + self.activations + self.codec

    def describe(self) -> str:
        return (f"{size(self.total)} (weights {size(self.weights)}, training state {size(self.state)}, "
                f"activations {size(self.activations)} at batch {self.batch}"
                + (f", autoencoder {size(self.codec)}" if self.codec else "") + ")")


def size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def training_memory(denoiser: nn.Module, data_shape: tuple[int, ...], batch: int, precision: str,
                    condition=None, codec: nn.Module | None = None, frozen_in_half: bool = False) -> Memory:
    """The memory of training ``denoiser`` on batches of ``batch`` examples of ``data_shape`` in
    ``precision``, counted on a meta copy: no arithmetic, no memory. Under mixed precision the
    activations are counted at half the size of float32 ones (autocast computes matmuls and
    convolutions in half precision; the few operations it keeps in float32 are undercounted). Not
    counted: the CUDA context and the allocator's slack (together about 0.5-1 GiB), and, with
    gradient checkpointing, the one block that the backward pass recomputes at a time."""
    half = AUTOCAST.get(precision)
    copy_ = meta_copy(denoiser)
    trained = sum(p.numel() for p in copy_.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in copy_.parameters() if not p.requires_grad)
    kept = half if (half is not None and frozen_in_half) else torch.float32
    weights = trained * 4 + frozen * kept.itemsize
    copy_.float()                 # counted in float32 (whatever the weights are kept in), then scaled
    x0, sigma, noise, null = meta_batch(batch, data_shape, condition)
    with mock.patch.object(nn.functional, "scaled_dot_product_attention", fused_attention):
        float32_bytes = saved_activation_bytes(lambda: copy_.loss(x0, sigma, noise, null).mean(),
                                               list(copy_.parameters()))
    activations = float32_bytes * (half or torch.float32).itemsize // 4
    codec_bytes = sum(p.numel() * p.element_size() for p in codec.parameters()) if codec is not None else 0
    return Memory(weights, trained * TRAINING_STATE, activations, codec_bytes, batch)


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
