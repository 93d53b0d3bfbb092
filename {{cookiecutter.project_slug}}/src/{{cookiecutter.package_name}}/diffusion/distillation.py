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
"""
from __future__ import annotations

from torch import Tensor


def reflow_noise(z: Tensor, x0: Tensor, sigma_max: float) -> Tensor:
    """The noise n that pairs the sample ``x0`` with the start ``sigma_max * z`` it was drawn
    from: the line x0 + sigma n passes through both (see above)."""
    return z - x0 / sigma_max
