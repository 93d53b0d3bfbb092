"""What the network predicts, and how that becomes a denoiser.

Every parameterization is one choice of four functions in EDM's preconditioning
(Karras et al. 2022, eq. 7):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

``c_in`` fixes what the network sees, ``c_skip`` and ``c_out`` turn its output into the
denoised estimate x0_hat, and its training target follows from asking D(x, sigma) = x0:

    F_target = (x0 - c_skip x) / c_out.

Training on the plain mean squared error of F (weight 1 in F's space) gives each method its
published loss: the eps-MSE of DDPM, the v-MSE of progressive distillation, EDM's
lambda(sigma) = 1 / c_out^2, and the velocity MSE of flow matching. The fourth function,
c_noise, belongs to the network: ours are told ln(sigma) / 4 (EDM, Table 1), a network trained
on discrete timesteps is told its timestep (see ``NetworkDenoiser.c_noise``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class Parameterization(ABC):
    """Returns (c_skip, c_out, c_in) for a tensor of noise levels. ``sigma_data``, the standard
    deviation of the data, enters only EDM's scalings."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    @abstractmethod
    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """c_skip, c_out and c_in, broadcastable against x."""


class EpsPrediction(Parameterization):
    """DDPM (Ho et al. 2020): F predicts the noise; x0 = x - sigma eps. The network sees the
    variance-preserving input x / sqrt(1 + sigma^2)."""

    def scalings(self, sigma):
        return torch.ones_like(sigma), -sigma, (1 + sigma**2).rsqrt()


class X0Prediction(Parameterization):
    """F predicts the clean data itself."""

    def scalings(self, sigma):
        return torch.zeros_like(sigma), torch.ones_like(sigma), (1 + sigma**2).rsqrt()


class VPrediction(Parameterization):
    """Salimans & Ho 2022, §4: v = alpha eps - s x0 for x_vp = alpha x0 + s eps, with
    alpha = 1 / sqrt(1 + sigma^2) and s = sigma alpha, so x0 = alpha^2 x - s v."""

    def scalings(self, sigma):
        alpha = (1 + sigma**2).rsqrt()
        return alpha**2, -sigma * alpha, alpha


class EDMPreconditioning(Parameterization):
    """Karras et al. 2022, Table 1: unit-variance input and target for data of std sigma_data.
    With sigma_data = 1 this is v-prediction with F = -v."""

    def scalings(self, sigma):
        total = sigma**2 + self.sigma_data**2
        return self.sigma_data**2 / total, sigma * self.sigma_data * total.rsqrt(), total.rsqrt()


class FlowVelocity(Parameterization):
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): for
    x_t = (1 - t) x0 + t eps, F predicts v = eps - x0 and x0 = x_t - t v, where
    t = sigma / (1 + sigma) and x_t = x / (1 + sigma)."""

    def scalings(self, sigma):
        c_in = 1 / (1 + sigma)
        return c_in, -sigma * c_in, c_in


LOSS_WEIGHTS = {
    "natural": lambda sigma, sigma_data, gamma: None,
    "uniform": lambda sigma, sigma_data, gamma: torch.ones_like(sigma),
    "min_snr": lambda sigma, sigma_data, gamma: sigma.pow(-2).clamp(max=gamma),
    "soft_min_snr": lambda sigma, sigma_data, gamma: 1 / (sigma**2 + sigma_data**2),
    "edm": lambda sigma, sigma_data, gamma: (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2,
}


def x0_loss_weight(kind: str, sigma: Tensor, sigma_data: float, gamma: float) -> Tensor | None:
    """lambda(sigma), the weight on ||D(x, sigma) - x0||^2 (EDM eq. 2), with SNR = 1 / sigma^2.

    ``natural``: None, i.e. the objective's own loss (lambda = 1 / c_out^2).
    ``uniform``: lambda = 1, the plain x0 error.
    ``min_snr``: lambda = min(SNR, gamma) (Hang et al. 2023, "Min-SNR weighting", gamma = 5);
    for eps-prediction this is their min(SNR, gamma) / SNR on the eps loss.
    ``soft_min_snr``: lambda = 1 / (sigma^2 + sigma_data^2), a smooth minimum of SNR and
    1 / sigma_data^2 (Crowson et al. 2024, "HDiT", §3.4).
    ``edm``: lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM, Table 1).
    """
    return LOSS_WEIGHTS[kind](sigma, sigma_data, gamma)


PARAMETERIZATIONS = {"eps": EpsPrediction, "x0": X0Prediction, "v": VPrediction, "edm": EDMPreconditioning,
                     "flow": FlowVelocity}


def build_parameterization(objective: str, sigma_data: float) -> Parameterization:
    return PARAMETERIZATIONS[objective](sigma_data)


def per_example(levels: Tensor, x: Tensor) -> Tensor:
    """Noise levels of shape (batch,), one per example, shaped to broadcast against ``x``."""
    return levels.reshape(-1, *[1] * (x.ndim - 1))


class NetworkDenoiser(nn.Module):
    """A network made into a denoiser by its parameterization: ``D(x, sigma, labels) -> x0_hat``.

    ``sigma_min`` and ``sigma_max`` are the noise levels the network was trained on (all of
    (0, inf) for continuous training noise). The scalings, the target and the loss run in
    float32 even under autocast; only the network itself runs in lower precision.
    """

    def __init__(self, net: nn.Module, parameterization: Parameterization, sigma_min: float, sigma_max: float):
        super().__init__()
        self.net = net
        self.parameterization = parameterization
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def c_noise(self, sigma: Tensor) -> Tensor:
        """How the network is told the noise level: ln(sigma) / 4 (EDM, Table 1). A network trained
        on discrete timesteps overrides this to map sigma to its timestep."""
        return sigma.log() / 4

    def _network(self, x: Tensor, sigma: Tensor, labels: Tensor | None):
        sigma = per_example(sigma.float(), x)
        c_skip, c_out, c_in = self.parameterization.scalings(sigma)
        out = self.net(c_in * x, self.c_noise(sigma.flatten()), labels).float()
        return out, c_skip, c_out

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        out, c_skip, c_out = self._network(x, sigma, labels)
        return c_skip * x + c_out * out

    def loss(self, x0: Tensor, sigma: Tensor, noise: Tensor, labels: Tensor | None = None,
             x0_weight: Tensor | None = None) -> Tensor:
        """Per-example loss in the network's own space (EDM eq. 8):
        lambda(sigma) c_out(sigma)^2 ||F - F_target||^2, which equals lambda(sigma) ||D - x0||^2.
        Without ``x0_weight`` (lambda), the weight on F is 1: the objective's own loss. The mean
        runs over the example's real numbers: a set's missing points (NaN rows) count for nothing."""
        x = x0 + per_example(sigma, x0) * noise
        out, c_skip, c_out = self._network(x, sigma, labels)
        target = (x0 - c_skip * x) / c_out
        real = ~torch.isnan(x0.flatten(1))
        error = torch.where(real, (out - target).flatten(1), 0.0).square().sum(1) / real.sum(1)
        if x0_weight is None:
            return error
        return x0_weight.float() * c_out.flatten() ** 2 * error
