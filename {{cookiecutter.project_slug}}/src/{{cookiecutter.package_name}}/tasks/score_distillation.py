"""Score distillation: optimise the parameters theta of a differentiable generator g(theta) so
that its outputs x = g(theta) look like the model's samples, with no sampling at all.

SDS (Poole et al. 2022, "DreamFusion", eq. 3) noises x to a level sigma drawn at random and
moves x along the model's noise residual,

    grad_theta = E_{sigma, eps}[ w(sigma) (eps_hat(x + sigma eps, sigma, c) - eps) dx/dtheta ],

leaving out the Jacobian of the denoiser (the paper shows that this is the gradient of a weighted
KL divergence between the noised x and the model's distribution at each level). In the sigma
form, eps_hat = (x_sigma - x0_hat) / sigma, so the residual is (x - x0_hat) / sigma: SDS pulls
x towards the model's denoised guess of its noised self. Without guidance the optimum sits at
the modes, and the fresh noise of every step blurs the result (over-smoothing, and with strong
guidance over-saturation).

SDI (Lukoianov et al. 2024, "Score Distillation via Reparametrized DDIM") keeps the update and
changes the noise. The paper shows that SDS is DDIM written in terms of its running estimate of
the clean image, with one difference: DDIM's state at each level holds the noise that brought it
there, while SDS draws that noise afresh at every step, which is what blurs it. SDI recovers a
consistent noise for the generator's output x instead: it inverts DDIM from x up to sigma
(``sdi_noise``) and uses the noise that lands there, kappa = (x_sigma - x) / sigma, in the same
update; its noise levels descend one step at a time, as a sampler's do.

``distillation_loss`` is a number whose gradient with respect to x is exactly the weighted
residual above (the denoiser runs without gradients), to be back-propagated through g.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..diffusion.samplers import ddim, to_eps
from ..diffusion.schedules import ddpm_linear_sigmas
from .interpolate import invert

DDPM_SIGMAS = ddpm_linear_sigmas()      # the levels of DDPM's (and Stable Diffusion's) 1000 steps

WEIGHTS = {
    "dreamfusion": lambda sigma: sigma**2 / (1 + sigma**2),    # w = 1 - alpha_bar, the VP noise variance (DreamFusion)
    "uniform": lambda sigma: 1.0,                              # w = 1 on the noise residual
    "x0": lambda sigma: sigma,                                 # w = sigma: the step is x - x0_hat itself
}


SCHEDULES = ("random", "descending")


def noise_time(progress: float, t_range: tuple[float, float], t_max_end: float, schedule: str = "random",
               generator: torch.Generator | None = None) -> float:
    """The noise level of a step ``progress`` (0 to 1) of the way through the optimisation, as a
    DDPM step t (a fraction of the 1000; ``ddpm_sigma`` gives its sigma) in ``t_range`` =
    [t_min, t_max]:

    * ``random``: t drawn uniformly in [t_min, t_max] (DreamFusion: [0.02, 0.98]), where t_max
      moves linearly to ``t_max_end`` as the optimisation goes (the annealing of threestudio:
      large levels shape the whole, smaller ones its details);
    * ``descending``: t walks from t_max down to t_min, one level lower at every step, as a
      sampler does (DreamTime's monotone schedule, Huang et al. 2023; SDI's)."""
    t_min, t_max = t_range
    if schedule == "descending":
        return t_max - (t_max - t_min) * progress
    t_max = max(t_min, t_max + (t_max_end - t_max) * progress)
    return t_min + (t_max - t_min) * torch.rand((), generator=generator, dtype=torch.float64).item()


def ddpm_sigma(t: float) -> float:
    """The sigma of DDPM's step nearest the fraction t of its 1000 (t = 0: its smallest level)."""
    return DDPM_SIGMAS[round(min(max(t, 0.0), 1.0) * (len(DDPM_SIGMAS) - 1))].item()


def inversion_levels(sigma: float, steps: int) -> Tensor:
    """The decreasing noise levels, ending at 0, that SDI's inversion climbs: ``steps`` steps
    evenly spaced in t = sigma / (1 + sigma) (a flow's time) from 0 up to ``sigma``."""
    t = sigma / (1 + sigma)
    ts = torch.linspace(t, 0, steps + 1, dtype=torch.float64)
    return ts / (1 - ts)


def sdi_noise(denoiser, x: Tensor, sigma: float, steps: int) -> Tensor:
    """SDI's noise at ``sigma`` for x (Lukoianov et al. 2024): kappa = (x_sigma - x) / sigma, where
    x_sigma is x carried up to sigma by DDIM inversion (``tasks.interpolate.invert`` with the
    deterministic DDIM sampler), so that x + sigma kappa is the inverted state itself."""
    x = x.detach()
    return (invert(denoiser, inversion_levels(sigma, steps), x, ddim) - x) / sigma


def distillation_loss(denoiser, x: Tensor, sigma: float, eps: Tensor, weighting: str = "dreamfusion") -> Tensor:
    """A loss whose gradient with respect to x is w(sigma) (eps_hat - eps) = w(sigma) (x - x0_hat)
    / sigma for every example, with x0_hat = denoiser(x + sigma eps, sigma) evaluated without
    gradients: the Jacobian of the denoiser is left out, as SDS prescribes. ``eps`` is fresh noise
    (SDS) or ``sdi_noise`` (SDI). Its value, 0.5 |step|^2 summed over the batch, is the squared
    size of the step; only its gradient matters."""
    with torch.no_grad():
        levels = torch.full((len(x),), sigma, device=x.device)
        x0_hat = denoiser(x.detach() + sigma * eps, levels)
        step = WEIGHTS[weighting](sigma) * to_eps(x.detach(), x0_hat, sigma)
    return 0.5 * (x - (x.detach() - step)).square().sum()


class Pixels(nn.Module):
    """The simplest generator: the images (or a latent model's latents) themselves, from zeros."""

    def __init__(self, count: int, shape: tuple[int, ...]):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(count, *shape))

    def forward(self) -> Tensor:
        return self.x


class Gaussians(nn.Module):
    """Images painted by ``splats`` 2D Gaussians each: positions, sizes, colours in [-1, 1] and
    opacities, composited front to back in a fixed order over a background of 0, as 3D Gaussian
    splatting (Kerbl et al. 2023) composites its sorted splats: pixel = sum_k T_k a_k c_k with
    T_k = prod_{j<k} (1 - a_j). They start spread uniformly over the image, [-1, 1]^2, each of
    width 2 / sqrt(splats) (together they cover it), half opaque and nearly grey, tanh(0.1 z):
    drawn from ``generator``, so that a seed gives the same start."""

    def __init__(self, count: int, shape: tuple[int, int, int], splats: int = 200,
                 generator: torch.Generator | None = None):
        super().__init__()
        channels, self.height, self.width = shape
        self.position = nn.Parameter(2 * torch.rand(count, splats, 2, generator=generator) - 1)
        self.log_size = nn.Parameter(torch.full((count, splats), math.log(2 / math.sqrt(splats))))
        self.raw_colour = nn.Parameter(0.1 * torch.randn(count, splats, channels, generator=generator))
        self.raw_opacity = nn.Parameter(torch.zeros(count, splats))

    def forward(self) -> Tensor:
        rows = torch.linspace(-1, 1, self.height, device=self.position.device)
        columns = torch.linspace(-1, 1, self.width, device=self.position.device)
        grid = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), dim=-1)       # (H, W, 2): x, y
        offset = grid[None, None] - self.position[:, :, None, None]                    # (N, K, H, W, 2)
        size = self.log_size.exp()[:, :, None, None]
        alpha = torch.sigmoid(self.raw_opacity)[:, :, None, None] * torch.exp(-0.5 * offset.square().sum(-1) / size**2)
        before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
        colour = torch.tanh(self.raw_colour)                                            # (N, K, C)
        return torch.einsum("nkhw,nkc->nchw", before * alpha, colour)
