"""Restoration: samples that agree with what was observed of an image.

An observation is y = A(x) for a known degradation A: the kept pixels of an inpainting mask,
the average of each f x f block (super-resolution), the mean of the colour channels
(colourisation), or any differentiable function (DPS). Each method returns the sample; how
well it agrees with y is ``measurement_error``.

* ``repaint``: inpainting by replacement (Song et al. 2021, app. I) and RePaint (Lugmayr et al.
  2022, Algorithm 1 with jump length 1). Replacement alone is biased: the known pixels are
  re-noised independently of the path, so the missing ones never see y itself (on a correlated
  Gaussian it misses the conditional mean by most of the correlation; tests/test_tasks.py).
  Resampling each step several times lets them harmonise and converges to the conditional.
* ``Projected``: DDNM (Wang, Yu & Zhang 2023): every estimate is projected onto the solutions
  of A x = y, x0_hat + A^+(y - A x0_hat), for linear A with a right inverse A^+ (A A^+ = I).
  The last estimate is the sample, so it satisfies the measurement exactly.
* ``PosteriorSampling``: DPS (Chung et al. 2023) for any differentiable A: a gradient step
  towards agreement at every evaluation, of normalised size zeta.
SDEdit (Meng et al. 2022), noising an image part of the way and denoising it back, is
``generate(..., image=..., strength=...)`` (``diffusion/generate.py``).

Each wrapper states its cost as ``GuidedDenoiser`` does: ``evaluations``, those of the denoiser
it wraps (DPS's gradient is not counted: it costs about one more evaluation).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.guidance import evaluations
from ..diffusion.parameterizations import per_example
from ..diffusion.samplers import Denoiser, Generators, SampleResult, randn_like

Degradation = Callable[[Tensor], Tensor]


def measurement_error(degrade: Degradation, x: Tensor, y: Tensor) -> float:
    """Root mean square of A(x) - y: 0 when the sample agrees exactly with the observation."""
    return (degrade(x) - y).square().mean().sqrt().item()


# -- linear degradations with a right inverse: A(A_pinv(y)) = y ----------------------------------
def downsample(f: int) -> tuple[Degradation, Degradation]:
    """Super-resolution by f: A averages each f x f block; A^+ repeats each pixel f x f times."""
    return (lambda x: F.avg_pool2d(x, f)), (lambda y: F.interpolate(y, scale_factor=f, mode="nearest"))


def grayscale() -> tuple[Degradation, Degradation]:
    """Colourisation: A is the mean of the colour channels; A^+ copies the gray to each."""
    return (lambda x: x.mean(1, keepdim=True)), (lambda y: y.expand(-1, 3, -1, -1))


def masked(mask: Tensor) -> tuple[Degradation, Degradation]:
    """Inpainting: A keeps the pixels where ``mask`` is 1 (and zeroes the rest); A^+ = A."""
    return (lambda x: x * mask), (lambda y: y * mask)


class Projected:
    """DDNM's range-null-space step: D'(x) = D(x) + A^+(y - A D(x)): the part of the estimate
    that A sees is replaced by the observation, the part it cannot see (its null space) kept."""

    def __init__(self, denoiser: Denoiser, degrade: Degradation, pseudo_inverse: Degradation, y: Tensor):
        self.denoiser, self.degrade, self.pseudo_inverse, self.y = denoiser, degrade, pseudo_inverse, y
        self.evaluations = evaluations(denoiser)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        x0_hat = self.denoiser(x, sigma)
        return x0_hat + self.pseudo_inverse(self.y - self.degrade(x0_hat))


class PosteriorSampling:
    """DPS: the likelihood's score, approximated through the estimate, added to the prior's:
    grad log p(y | x) ~ -zeta grad_x ||y - A(D(x))|| (the paper's step zeta / ||y - A(x0_hat)||
    times the gradient of the squared error). In the sigma form a score term g enters the
    estimate as sigma^2 g (score = (D - x) / sigma^2), so D' = D - zeta sigma^2 grad_x ||r||.
    The paper adds its step to x once per DDPM step, so its zeta (about 1 for 1000 steps) is
    on another scale: here 3 to 10 suits data in [-1, 1] whatever the number of steps. DPS is
    approximate: it pulls towards agreement, not exactly onto the posterior."""

    def __init__(self, denoiser: Denoiser, degrade: Degradation, y: Tensor, zeta: float = 10.0):
        self.denoiser, self.degrade, self.y, self.zeta = denoiser, degrade, y, zeta
        self.evaluations = evaluations(denoiser)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            x0_hat = self.denoiser(x, sigma)
            residual = (self.y - self.degrade(x0_hat)).flatten(1).norm(dim=1)
            (gradient,) = torch.autograd.grad(residual.sum(), x)
        return x0_hat.detach() - self.zeta * per_example(sigma, x) ** 2 * gradient


def repaint(denoiser: Denoiser, sigmas: Tensor, y: Tensor, mask: Tensor, *, resample: int = 1,
            generator: Generators = None) -> SampleResult:
    """Inpaint the pixels where ``mask`` is 0 from those where it is 1 (``y``, in [-1, 1]).

    Ancestral sampling (DDPM's posterior step, ``ddim`` with eta = 1) in which, before each
    evaluation at level sigma_i, the known pixels are set to y + sigma_i z. With resample = r
    each step is taken r times, going back up to sigma_i (x + sqrt(sigma_i^2 - sigma_{i+1}^2) z)
    between tries: r = 1 is plain replacement; RePaint uses r = 10."""
    x, nfe = sigmas[0].item() * randn_like(y, generator), 0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        for attempt in range(resample):
            x = mask * (y + sigma * randn_like(y, generator)) + (1 - mask) * x
            x0_hat = denoiser(x, torch.full((len(x),), sigma, device=x.device, dtype=x.dtype))
            nfe += evaluations(denoiser)
            fresh = sigma_next * math.sqrt(1 - sigma_next**2 / sigma**2)      # the posterior's noise
            kept = math.sqrt(sigma_next**2 - fresh**2) * (x - x0_hat) / sigma          # of x's own noise
            x = x0_hat + kept + fresh * randn_like(x, generator)
            if attempt < resample - 1:
                x = x + math.sqrt(sigma**2 - sigma_next**2) * randn_like(x, generator)
    return SampleResult(mask * y + (1 - mask) * x, nfe)
