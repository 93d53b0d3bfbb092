"""Samplers in the sigma form, one function each, following their papers.

A sampler takes a denoiser ``D(x, sigma) -> x0_hat`` (``sigma`` a tensor of shape (batch,)),
a decreasing float64 sequence of noise levels ending at 0, and the starting point ``x``
(usually ``sigmas[0] * noise``; see ``generate.py``). It returns a :class:`SampleResult`: the
sample and its NFE, the network evaluations it made: each denoiser call costs what the
denoiser states (``guidance.evaluations``: two for a guided call, one for a network).

Hooks are called once per step with that step's :class:`Step`, after the denoiser's first
estimate and before the update; a hook may replace ``step.x`` or ``step.x0_hat`` (to project,
to record, to show progress) and the update uses what it leaves there. Heun's corrector
evaluation is not shown to hooks: a condition that must hold at every network evaluation
belongs in a denoiser wrapper (see ``guidance.py``), not in a hook.

Every stochastic sampler takes a ``torch.Generator``; the same generator state gives the
same sample. ``SAMPLERS`` at the end is the one table of what each sampler is: its function, the
options of the sampling section it reads, its denoiser calls per step and whether it draws noise.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .guidance import evaluations

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""The contract every sampler relies on: ``D(x, sigma) -> x0_hat``, ``sigma`` of shape (batch,)."""

Hook = Callable[["Step"], None]


@dataclass
class Step:
    """One sampler step: its index, its noise level, the current x and the estimate of x0."""

    i: int
    sigma: float
    x: Tensor
    x0_hat: Tensor


@dataclass
class SampleResult:
    x: Tensor
    nfe: int            # network evaluations per sample


class Sampler(Protocol):
    def __call__(self, denoiser: Denoiser, sigmas: Tensor, x: Tensor, *, generator: Generators = None,
                 hooks: Iterable[Hook] = ()) -> SampleResult: ...


class Trajectory:
    """A hook that keeps a CPU copy of every step (x and x0_hat), for pictures of the sampling path."""

    def __init__(self):
        self.steps: list[Step] = []

    def __call__(self, step: Step) -> None:
        self.steps.append(Step(step.i, step.sigma, step.x.detach().cpu(), step.x0_hat.detach().cpu()))


class _Bookkeeper:
    """What every sampler shares: evaluating D, counting NFE, calling the hooks."""

    def __init__(self, denoiser: Denoiser, hooks: Iterable[Hook]):
        self.denoiser, self.hooks, self.nfe = denoiser, list(hooks), 0
        self.cost = evaluations(denoiser)

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        self.nfe += self.cost
        return self.denoiser(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype))

    def step(self, i: int, sigma: float, x: Tensor, x0_hat: Tensor) -> Step:
        step = Step(i, sigma, x, x0_hat)
        for hook in self.hooks:
            hook(step)
        return step

    def result(self, x: Tensor) -> SampleResult:
        return SampleResult(x, self.nfe)


def to_eps(x: Tensor, x0_hat: Tensor, sigma: float) -> Tensor:
    """eps_hat = (x - x0_hat) / sigma: the noise estimate, which is also the slope dx/dsigma
    of the probability-flow ODE (Karras et al. 2022, eq. 3)."""
    return (x - x0_hat) / sigma


Generators = torch.Generator | list[torch.Generator] | None
"""One generator for the batch, or one per sample (``diffusion.generate.indexed_generators``)."""


def standard_normal(shape: tuple[int, ...], generator: Generators, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """N(0, I) noise of ``shape``, drawn from ``generator`` on the generator's own device (so a
    seed gives the same noise on every device; ``device`` without a generator). From a list of
    generators, one per sample, sample k's noise comes from generator k: it then does not depend
    on the batch the sample is drawn in."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator])
    device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def randn_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x (see ``standard_normal``), moved to x's device."""
    return standard_normal(x.shape, generator, x.dtype, x.device).to(x.device)


def ddim(denoiser: Denoiser, sigmas: Tensor, x: Tensor, *, eta: float = 0.0,
         generator: Generators = None, hooks: Iterable[Hook] = ()) -> SampleResult:
    """DDIM (Song et al. 2021, eq. 12) in the sigma form.

    With eps = (x - x0_hat) / sigma_i, each step is

        x_{i+1} = x0_hat + sqrt(sigma_{i+1}^2 - s^2) eps + s z,
        s = eta * sigma_{i+1} * sqrt(1 - sigma_{i+1}^2 / sigma_i^2),

    where s is eq. 16's sigma_t(eta) divided by sqrt(alpha_bar_{t-1}), capped at sigma_{i+1}
    (eta > 1 adds more noise than the posterior, at most all of it). eta = 0 is deterministic
    and is exactly Euler's method on the probability-flow ODE dx/dsigma = eps (Karras et al.
    2022, eq. 3); for a flow model it is the Euler step in t. eta = 1 draws from the DDPM
    posterior q(x_{i+1} | x_i, x0_hat) (ancestral sampling).
    """
    book = _Bookkeeper(denoiser, hooks)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        x0_hat = book.denoise(x, sigma)
        step = book.step(i, sigma, x, x0_hat)
        eps = to_eps(step.x, step.x0_hat, sigma)
        s = min(sigma_next, eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2)))
        x = step.x0_hat + math.sqrt(sigma_next**2 - s**2) * eps
        if s > 0:
            x = x + s * randn_like(x, generator)
    return book.result(x)


def heun(denoiser: Denoiser, sigmas: Tensor, x: Tensor, *, churn: float = 0.0, generator: Generators = None,
         hooks: Iterable[Hook] = ()) -> SampleResult:
    """Heun's second-order method with optional churn (Karras et al. 2022, Algorithm 2).

    With churn = 0 this is Algorithm 1, the deterministic probability-flow ODE solver. Each
    step first raises the noise from sigma_i to sigma_hat = (1 + gamma) sigma_i with
    gamma = min(churn / N, sqrt(2) - 1) at every level (the paper's S_tmin = 0, S_tmax = inf,
    S_noise = 1), takes an Euler step to sigma_{i+1}, then corrects it with the slope there.
    The step to sigma = 0 stays a plain Euler step (the slope at 0 is undefined), so N steps
    cost 2N - 1 evaluations. Hooks see the first evaluation of each step, not the corrector's.
    """
    book = _Bookkeeper(denoiser, hooks)
    n = len(sigmas) - 1
    gamma = min(churn / n, math.sqrt(2) - 1)
    for i in range(n):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * randn_like(x, generator)
        x0_hat = book.denoise(x, sigma_hat)
        step = book.step(i, sigma_hat, x, x0_hat)
        eps = to_eps(step.x, step.x0_hat, sigma_hat)
        x_next = step.x + (sigma_next - sigma_hat) * eps
        if sigma_next > 0:
            x0_next = book.denoise(x_next, sigma_next)
            eps_next = to_eps(x_next, x0_next, sigma_next)
            x_next = step.x + (sigma_next - sigma_hat) * (eps + eps_next) / 2
        x = x_next
    return book.result(x)


def generalized(denoiser: Denoiser, sigmas: Tensor, x: Tensor, *, gamma: float = 1.0, mu: float = 0.0,
                second_order: bool = False, generator: Generators = None,
                hooks: Iterable[Hook] = ()) -> SampleResult:
    """The course's generalised sampler (Permenter & Yuan 2024, "Interpreting and improving
    diffusion models from an optimization perspective", Algorithm 2).

    With eps_i = (x - x0_hat) / sigma_i and the averaged direction
    eps_bar = gamma eps_i + (1 - gamma) eps_{i-1} (eps_i alone on the first step), each step is

        x_{i+1} = x_i - (sigma_i - sigma') eps_bar + sqrt(sigma_{i+1}^2 - sigma'^2) z,
        sigma' = (sigma_{i+1} / sigma_i^mu)^(1 / (1 - mu)),   i.e. sigma_{i+1} = sigma_i^mu sigma'^(1 - mu).

    gamma = 1, mu = 0 is DDIM; gamma = 1, mu = 0.5 is DDPM (ancestral); gamma = 2, mu = 0 is the
    paper's accelerated sampler. As an ODE solver gamma = 2 is still first order (it was chosen
    for few-step quality). ``second_order=True`` replaces gamma by the variable-step
    Adams-Bashforth weight gamma_i = 1 + h_i / (2 h_{i-1}), h_i = sigma_i - sigma_{i+1}, which
    is second order. This sigma' is the course library's (smalldiffusion); README.md, "Sampling",
    tells how an early version of it differs.
    """
    if not 0 <= mu < 1:
        raise ValueError(f"mu must be in [0, 1), got {mu}")
    book = _Bookkeeper(denoiser, hooks)
    eps_previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        x0_hat = book.denoise(x, sigma)
        step = book.step(i, sigma, x, x0_hat)
        eps = to_eps(step.x, step.x0_hat, sigma)
        if eps_previous is None:
            eps_bar = eps
        else:
            weight = gamma
            if second_order:
                weight = 1 + (sigma - sigma_next) / (2 * (sigmas[i - 1].item() - sigma))
            eps_bar = weight * eps + (1 - weight) * eps_previous
        sigma_prime = (sigma_next / sigma**mu) ** (1 / (1 - mu))
        x = step.x - (sigma - sigma_prime) * eps_bar
        noise_std = math.sqrt(max(0.0, sigma_next**2 - sigma_prime**2))
        if noise_std > 0:
            x = x + noise_std * randn_like(x, generator)
        eps_previous = eps
    return book.result(x)


def dpmpp_2m(denoiser: Denoiser, sigmas: Tensor, x: Tensor, *, eta: float = 0.0, generator: Generators = None,
             hooks: Iterable[Hook] = ()) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) in the sigma form
    (alpha = 1, lambda = -ln sigma, h_i = lambda_{i+1} - lambda_i):

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D_bar,
        D_bar = (1 + 1/(2 r_i)) x0_hat_i - 1/(2 r_i) x0_hat_{i-1},   r_i = h_{i-1} / h_i.

    The first step, and the step to sigma = 0 (where h is infinite), use D_bar = x0_hat_i: first
    order there, second order elsewhere, one evaluation per step.

    ``eta`` > 0 integrates the same D_bar along a reverse SDE instead of the probability-flow
    ODE (the paper's SDE-DPM-Solver++(2M), ``dpmpp_2m_sde``), so that each step forgets part of
    its error and draws fresh noise. The SDEs of Karras et al. 2022 (eq. 6) with beta = eta / sigma
    read dx = (1 + eta) (D - x) dlambda + noise; holding D at D_bar over a step and integrating
    exactly gives

        x_{i+1} = e^{-(1 + eta) h_i} x_i + (1 - e^{-(1 + eta) h_i}) D_bar + sigma_{i+1} sqrt(1 - e^{-2 eta h_i}) z.

    eta = 0 is the ODE step above (e^{-h_i} = sigma_{i+1} / sigma_i); eta = 1 is the reverse-time
    SDE (Song et al. 2021), whose first-order step is DDPM's ancestral step.
    """
    book = _Bookkeeper(denoiser, hooks)
    x0_previous, h_previous = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        x0_hat = book.denoise(x, sigma)
        step = book.step(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = step.x0_hat
            break
        h = math.log(sigma / sigma_next)
        d_bar = step.x0_hat
        if x0_previous is not None:
            r = h_previous / h
            d_bar = (1 + 1 / (2 * r)) * step.x0_hat - 1 / (2 * r) * x0_previous
        x = math.exp(-(1 + eta) * h) * step.x - math.expm1(-(1 + eta) * h) * d_bar
        if eta > 0:
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * randn_like(x, generator)
        x0_previous, h_previous = step.x0_hat, h
    return book.result(x)


def consistency(denoiser: Denoiser, sigmas: Tensor, x: Tensor, *, generator: Generators = None,
                hooks: Iterable[Hook] = ()) -> SampleResult:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1), for a consistency model,
    whose D(x, sigma) is the end of the ODE path through x: each step takes that end and noises it
    afresh to the next level,

        x_{i+1} = x0_hat + sigma_{i+1} z,

    so one step is one evaluation at sigma_0, and more steps correct its errors at lower levels
    (the levels are the sampling schedule's; the paper's z is scaled by sqrt(sigma_{i+1}^2 -
    eps^2), with eps = 0 here). This is DDIM with all of its noise fresh (eta large)."""
    book = _Bookkeeper(denoiser, hooks)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        step = book.step(i, sigma, x, book.denoise(x, sigma))
        x = step.x0_hat
        if sigma_next > 0:
            x = x + sigma_next * randn_like(x, generator)
    return book.result(x)


@dataclass(frozen=True)
class SamplerFacts:
    """What one sampler is: its ``function``, the ``options`` of the sampling section it reads,
    the options it ``fixes`` itself, its denoiser calls per step (the step to sigma = 0 takes one:
    the slope there is undefined, so a second-order step falls back to Euler's), and whether it
    ``draws_noise`` with the options and the number of steps (``steps``) it is given (else the
    same start always gives the same sample: it solves the probability-flow ODE, or it is
    consistency sampling in one step)."""

    function: Callable[..., SampleResult]
    options: tuple[str, ...] = ()
    fixes: dict = field(default_factory=dict)
    calls_per_step: int = 1
    draws_noise: Callable[[dict], bool] = lambda options: False

    def settings(self, sampling) -> dict:
        return {**self.fixes, **{option: getattr(sampling, option) for option in self.options}}

    def configured(self, sampling) -> Sampler:
        """The sampler with its options from ``sampling`` (a sampling config section)."""
        return functools.partial(self.function, **self.settings(sampling))

    def calls(self, steps: int) -> int:
        """Denoiser calls for ``steps`` steps: Heun's 2N - 1, one per step for the others."""
        return self.calls_per_step * (steps - 1) + 1

    def deterministic(self, sampling) -> bool:
        return not self.draws_noise({**self.settings(sampling), "steps": sampling.steps})


def _eta_above_zero(options: dict) -> bool:
    return options["eta"] > 0


# ``euler`` is DDIM with eta = 0 and ``ddpm`` is DDIM with eta = 1: the same updates, one
# implementation (tests check both identities against the papers' own formulas); so are the
# ODE and SDE forms of DPM-Solver++(2M).
SAMPLERS: dict[str, SamplerFacts] = {
    "euler": SamplerFacts(ddim, fixes={"eta": 0.0}, draws_noise=_eta_above_zero),
    "ddim": SamplerFacts(ddim, options=("eta",), draws_noise=_eta_above_zero),
    "ddpm": SamplerFacts(ddim, fixes={"eta": 1.0}, draws_noise=_eta_above_zero),
    "heun": SamplerFacts(heun, options=("churn",), calls_per_step=2, draws_noise=lambda options: options["churn"] > 0),
    "generalized": SamplerFacts(generalized, options=("gamma", "mu", "second_order"),
                                draws_noise=lambda options: options["mu"] > 0),
    "dpmpp_2m": SamplerFacts(dpmpp_2m, fixes={"eta": 0.0}, draws_noise=_eta_above_zero),
    "dpmpp_2m_sde": SamplerFacts(dpmpp_2m, fixes={"eta": 1.0}, draws_noise=_eta_above_zero),
    "consistency": SamplerFacts(consistency, draws_noise=lambda options: options["steps"] > 1),
}


def configured_sampler(sampling) -> Sampler:
    """The sampler named by ``sampling.sampler``, with its options from the same config section."""
    return SAMPLERS[sampling.sampler].configured(sampling)
