"""Few-step students of a trained model (the teacher).

Reflow (Liu et al. 2023, "Flow straight and fast", §2.2-2.3). A deterministic sampler maps each
noise z to one sample x0 = ODE(sigma_max z): a coupling of noise and data. A new model trained on
the straight lines between the two ends of each pair learns a flow whose paths cross less, so
fewer, larger steps follow them: with a perfect fit every path is straight and one Euler step
from sigma_max z lands on x0. Reflowing the reflowed model (2-rectified, 3-rectified) straightens
further.

In the sigma form ``x = x0 + sigma n`` of this project the straight line from the sampler's start
sigma_max z to x0 is x(sigma) = x0 + sigma n with the paired noise

    n = z - x0 / sigma_max,

so that x(sigma_max) = sigma_max z exactly (a rectified flow in t = sigma / (1 + sigma), the
same line). Along it the probability-flow slope dx/dsigma = (x - D(x, sigma)) / sigma equals n
exactly when D(x, sigma) = x0: the denoiser that reflow trains (``NetworkDenoiser.loss`` with the
pair's noise) is the one whose Euler steps are exact.

Consistency models (Song et al. 2023, "Consistency models") learn the consistency function
f(x, sigma): the end at sigma = 0 of the teacher's probability-flow ODE path through x at level
sigma. One evaluation at sigma_max is a sample; the multistep sampler (``samplers.consistency``)
re-noises it to a lower level and evaluates again. f(x, 0) = x: every parameterization here but
x0-prediction has c_skip(0) = 1 and c_out(0) = 0, so a student keeps its teacher's
parameterization and has the boundary condition built in (as ECT does). Both methods compare
the student at a level t with itself, without gradient, at a lower level r of the same path:

    loss = d(f(x_t, t), sg f(x_r, r)) / (t - r),     f(x_r, 0) = x0,

with iCT's pseudo-Huber distance d and weight 1 / (t - r) (Song & Dhariwal 2023, §3.2-3.5, who
also found that the target needs no EMA copy of the student):

* consistency distillation (``ConsistencyDistillation``): t and r adjacent levels of a fixed
  ladder, x_r one Heun step of the frozen teacher from x_t;
* easy consistency tuning (``ConsistencyTuning``): no teacher but the starting weights,
  x_r = x0 + r n on the noise n of x_t = x0 + t n, and a gap t - r that shrinks during training.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .parameterizations import per_example
from .samplers import Denoiser, randn_like, to_eps


def reflow_noise(z: Tensor, x0: Tensor, sigma_max: float) -> Tensor:
    """The noise n that pairs the sample ``x0`` with the start ``sigma_max * z`` it was drawn
    from: the line x0 + sigma n passes through both (see above)."""
    return z - x0 / sigma_max


# -- consistency ----------------------------------------------------------------------------

def pseudo_huber(difference: Tensor, real: Tensor) -> Tensor:
    """iCT's distance (Song & Dhariwal 2023, §3.3) per example: sqrt(||a - b||^2 + c^2) - c with
    c = 0.00054 sqrt(dim), the L2 distance for large differences and a scaled squared L2 for
    small ones, so that a few badly wrong examples do not swamp a batch. Only the ``real``
    numbers count, and dim is their number: a set's missing points (NaN rows) count for nothing."""
    real = real.flatten(1)
    c = 0.00054 * real.sum(1).sqrt()
    return (torch.where(real, difference.flatten(1), 0.0).square().sum(1) + c**2).sqrt() - c


def consistency_loss(student: Callable[..., Tensor], x0: Tensor, x_t: Tensor, t: Tensor, x_r: Tensor, r: Tensor,
                     labels: Tensor | None) -> Tensor:
    """d(f(x_t, t), sg f(x_r, r)) / (t - r) per example, with f(x_r, 0) = x0 (see above). The
    target is evaluated with the random state of the prediction: the same dropout masks (ECT)."""
    with torch.random.fork_rng(devices=[x0.device] if x0.is_cuda else []):
        prediction = student(x_t, t, labels)
    with torch.no_grad():
        target = student(x_r, r.clamp(min=1e-6), labels)       # ln(sigma) tells a network the level: not 0
    target = torch.where(per_example(r > 0, x0), target, x0)
    return pseudo_huber(prediction - target, ~torch.isnan(x0)) / (t - r)


def heun_step(denoiser: Denoiser, x: Tensor, t: Tensor, r: Tensor) -> Tensor:
    """One step of Heun's method from level t to level r > 0 (each example its own) on the
    probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Algorithm 1)."""
    t_, r_ = per_example(t, x), per_example(r, x)
    slope = to_eps(x, denoiser(x, t), t_)
    euler = x + (r_ - t_) * slope
    return x + (r_ - t_) * (slope + to_eps(euler, denoiser(euler, r), r_)) / 2


Objective = Callable[..., Tensor]
"""A student's loss, ``objective(student, x0, labels, step, generator=None)`` per example at
training step ``step``: ``ConsistencyDistillation`` and ``ConsistencyTuning``."""


class ConsistencyDistillation:
    """CD (Song et al. 2023, Algorithm 2): t and r are adjacent levels of ``levels`` (N decreasing
    Karras levels; the paper's N = 18, sigma from 0.002 to 80, rho = 7), drawn uniformly, and x_r
    is one Heun step of the teacher from x_t. ``teacher(labels)`` is the teacher's denoiser for
    those labels (guided as the teacher samples: the guidance is distilled in)."""

    def __init__(self, teacher: Callable[[Tensor | None], Denoiser], levels: Tensor):
        self.teacher, self.levels = teacher, levels

    def __call__(self, student, x0: Tensor, labels: Tensor | None, step: int,
                 generator: torch.Generator | None = None) -> Tensor:
        n = torch.randint(len(self.levels) - 1, (len(x0),), generator=generator)
        t, r = (self.levels[n + offset].float().to(x0.device) for offset in (0, 1))    # r: the next level down
        x_t = x0 + per_example(t, x0) * randn_like(x0, generator)
        with torch.no_grad():
            x_r = heun_step(self.teacher(labels), x_t, t, r)
        return consistency_loss(student, x0, x_t, t, x_r, r, labels)


class ConsistencyTuning:
    """ECT (Geng et al. 2024, "Consistency models made easy", §3): t from ``noise`` (ECT's
    ln t ~ N(-1.1, 2^2)), x_t and x_r on the same noise n, and r from the gap schedule

        r = max(0, t (1 - (1 + k sigmoid(-b t)) / q^(s + 1))),   k = 8, b = 1, q = 2,

    at stage s = step // stage_steps of training: the gap t - r halves from one stage to the
    next. At stage 0, r = 0 for all but large t: the loss is a diffusion loss, the one the teacher
    was trained with, so tuning starts where pretraining stopped."""

    def __init__(self, noise: Callable[..., Tensor], stage_steps: int, q: float = 2.0, k: float = 8.0,
                 b: float = 1.0):
        self.noise, self.stage_steps, self.q, self.k, self.b = noise, stage_steps, q, k, b

    def lower_level(self, t: Tensor, step: int) -> Tensor:
        stage = step // self.stage_steps
        shrink = (1 + self.k * torch.sigmoid(-self.b * t)) / self.q ** (stage + 1)
        return (t * (1 - shrink)).clamp(min=0)

    def __call__(self, student, x0: Tensor, labels: Tensor | None, step: int,
                 generator: torch.Generator | None = None) -> Tensor:
        t = self.noise(len(x0), x0.device, generator)
        r = self.lower_level(t, step)
        noise = randn_like(x0, generator)
        x_t, x_r = x0 + per_example(t, x0) * noise, x0 + per_example(r, x0) * noise
        return consistency_loss(student, x0, x_t, t, x_r, r, labels)
