"""A small KL autoencoder: the first stage of latent diffusion (Rombach et al. 2022), trained
here on your own data by the ``autoencoder`` command, as the course's lab trains one on MNIST.

The encoder maps an image of C x H x W to a diagonal Gaussian over latents of c x H/f x W/f
(f = 2^(levels - 1)); the decoder maps a latent back to an image. The loss is the VAE's
(Kingma & Welling 2014): the reconstruction error of a latent drawn from the Gaussian, plus
``kl_weight`` times its KL divergence from N(0, I). A small weight keeps the latents detailed
and only gently regular; the diffusion model sees them normalised per channel anyway
(``codecs.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import group_norm


class Block(nn.Module):
    """norm -> SiLU -> conv, twice, with a residual connection."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.layers = nn.Sequential(group_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                    group_norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.layers(x)


class Autoencoder(nn.Module):
    """Encoder: a block per level, halving the side between levels; decoder: the mirror image,
    doubling it (nearest neighbours, then a convolution)."""

    def __init__(self, in_channels: int, latent_channels: int = 4, channels: tuple[int, ...] = (32, 64)):
        super().__init__()
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.channels = tuple(channels)
        widths = self.channels
        encoder: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            encoder.append(Block(widths[max(level - 1, 0)], width))
            if level < len(widths) - 1:
                encoder.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        encoder += [group_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        for level in reversed(range(len(widths))):
            decoder.append(Block(widths[min(level + 1, len(widths) - 1)], widths[level]))
            if level > 0:
                decoder += [nn.Upsample(scale_factor=2, mode="nearest"),
                            nn.Conv2d(widths[level], widths[level], 3, padding=1)]
        decoder += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    @property
    def shape(self) -> dict:
        """The arguments that build this network again (saved beside its weights)."""
        return {"in_channels": self.in_channels, "latent_channels": self.latent_channels,
                "channels": list(self.channels)}

    @property
    def factor(self) -> int:
        """f: how many times smaller a latent's sides are than its image's."""
        return 2 ** (len(self.channels) - 1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian of each image's latent: its mean and standard deviation."""
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, torch.exp(0.5 * log_var.clamp(-30.0, 20.0))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def loss(self, x: Tensor, kl_weight: float) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, reconstruction error, KL): the mean squared error of the image decoded from a
        latent drawn by the reparameterisation z = mean + std * eps, plus ``kl_weight`` times
        KL(N(mean, std^2) || N(0, 1)), both per element."""
        mean, std = self.encode(x)
        z = mean + std * torch.randn_like(std)
        reconstruction = F.mse_loss(self.decode(z), x)
        kl = kl_from_standard_normal(mean, std)
        return reconstruction + kl_weight * kl, reconstruction, kl


def kl_from_standard_normal(mean: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean, std^2) || N(0, 1)) per latent value, averaged: (mean^2 + std^2 - 1) / 2 - ln std
    (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean.square() + std.square() - 1 - 2 * std.log()).mean()
