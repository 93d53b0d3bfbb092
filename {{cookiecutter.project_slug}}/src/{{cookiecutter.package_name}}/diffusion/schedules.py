"""Noise levels in the sigma form ``x = x0 + sigma * eps`` (Karras et al. 2022, "EDM").

Every process here is the same family seen through a change of variables:

* a variance-preserving (VP) schedule with cumulative ``alpha_bar`` has
  ``x_vp = sqrt(alpha_bar) * x``, so ``alpha_bar = 1 / (1 + sigma^2)``;
* a flow ``x_t = (1 - t) x0 + t eps`` (t = 1 is noise) has ``x_t = (1 - t) * x``, so
  ``sigma = t / (1 - t)``.

Sequences are built in float64: rounding the sigmas to float32 alone moves samples by ~1e-5.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def t_from_sigma(sigma: Tensor | float) -> Tensor | float:
    return sigma / (1 + sigma)


def ddpm_linear_sigmas(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. 2020, §4: betas rise linearly from 1e-4 to 0.02 over 1000 steps. Increasing."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return sigma_from_alpha_bar(torch.cumprod(1 - betas, 0))


def cosine_sigmas(steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0) with
    f(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas clipped at 0.999. Increasing."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return sigma_from_alpha_bar(torch.cumprod(1 - betas, 0))


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    then 0. rho = 7 spends more steps at low noise."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def loglinear_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in log(sigma) from sigma_max to sigma_min, then 0."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def uniform_t_sigmas(n: int, sigma_max: float) -> Tensor:
    """Flows: n equal steps in t from t(sigma_max) (close to 1) down to t = 0."""
    t = torch.linspace(t_from_sigma(sigma_max), 0, n + 1, dtype=torch.float64)
    return t / (1 - t)


def trailing_sigmas(n: int, table: Tensor) -> Tensor:
    """Lin et al. 2024, Table 2, "trailing": timesteps round(T - i T/n) - 1 for i < n, so sampling
    starts from the last training step (the "leading" spacing of diffusers never does)."""
    steps = len(table)
    index = torch.round(steps - torch.arange(n, dtype=torch.float64) * steps / n).long() - 1
    return append_zero(table[index])


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


SCHEDULES = {
    "karras": lambda sampling, table: karras_sigmas(sampling.steps, sampling.sigma_min, sampling.sigma_max,
                                                    sampling.rho),
    "loglinear": lambda sampling, table: loglinear_sigmas(sampling.steps, sampling.sigma_min, sampling.sigma_max),
    "uniform_t": lambda sampling, table: uniform_t_sigmas(sampling.steps, sampling.sigma_max),
    "trailing": lambda sampling, table: trailing_sigmas(sampling.steps, table),
}


def sampling_sigmas(sampling, training_table: Tensor | None = None) -> Tensor:
    """The decreasing float64 sequence of ``sampling.steps + 1`` noise levels, ending at 0, that
    ``sampling.schedule`` names; ``trailing`` walks ``training_table``, the discrete noise levels
    a model was trained on."""
    if sampling.schedule == "trailing" and training_table is None:
        raise ValueError("the trailing schedule needs the discrete noise levels the model was trained on")
    return SCHEDULES[sampling.schedule](sampling, training_table)


class DiscreteNoise:
    """Training noise levels drawn uniformly from a table of discrete steps (Ho et al. 2020):
    the 1000 steps of the ``ddpm`` or ``cosine`` schedule."""

    def __init__(self, table: Tensor):
        self.table = table
        self.sigma_min, self.sigma_max = table.min().item(), table.max().item()

    def __call__(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        index = torch.randint(len(self.table), (n,), generator=generator)
        return self.table[index].float().to(device)


class LogNormalNoise:
    """Training noise levels with ln(sigma) ~ N(mean, std^2) (EDM: P_mean = -1.2, P_std = 1.2;
    EDM2, Karras et al. 2024, and our default: -0.4, 1.0).
    Because logit(t) = ln(t / (1 - t)) = ln(sigma), this is also the logit-normal t of flow
    models (Esser et al. 2024, "SD3", eq. 19, mean 0, std 1). Every sigma > 0 can be drawn."""

    sigma_min, sigma_max, table = 0.0, math.inf, None

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = mean, std

    def __call__(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        normal = torch.randn(n, generator=generator)
        return (self.mean + self.std * normal).exp().to(device)


class UniformTNoise:
    """Training noise levels uniform in t = sigma / (1 + sigma) on (0, t(sigma_max)] (rectified flow,
    Liu et al. 2023, t ~ U(0, 1), capped where sampling starts): the levels of a ``uniform_t``
    sampling schedule, each trained as often as any other, the start included (the one level a
    one-step sampler evaluates)."""

    sigma_min, table = 0.0, None

    def __init__(self, sigma_max: float):
        self.sigma_max = sigma_max

    def __call__(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        t = t_from_sigma(self.sigma_max) * (1 - torch.rand(n, generator=generator))      # never 0: sigma > 0
        return (t / (1 - t)).to(device)


class StartNoise:
    """Every training level at sigma_max, where a one-step sampler starts: trained on the pairs of
    a reflowed teacher, this is Liu et al.'s distillation of a k-rectified flow into one step
    (2023, §2.3), which spends the whole fit on the one level that step evaluates."""

    sigma_min, table = 0.0, None

    def __init__(self, sigma_max: float):
        self.sigma_max = sigma_max

    def __call__(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return torch.full((n,), self.sigma_max, device=device)


TRAINING_NOISE = {
    "ddpm": lambda diffusion: DiscreteNoise(ddpm_linear_sigmas()),
    "cosine": lambda diffusion: DiscreteNoise(cosine_sigmas()),
    "lognormal": lambda diffusion: LogNormalNoise(diffusion.noise_mean, diffusion.noise_std),
    "uniform_t": lambda diffusion: UniformTNoise(diffusion.noise_max),
    "start": lambda diffusion: StartNoise(diffusion.noise_max),
}


def training_noise(diffusion) -> DiscreteNoise | LogNormalNoise | UniformTNoise | StartNoise:
    """The distribution of training noise levels named by ``diffusion.train_noise``."""
    return TRAINING_NOISE[diffusion.train_noise](diffusion)
