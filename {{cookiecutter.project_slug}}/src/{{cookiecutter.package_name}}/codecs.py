"""Codecs: the one place that knows whether a model works in latents.

A pixel model denoises the data itself (``Identity``). A latent model (Rombach et al. 2022)
denoises the latents of an autoencoder: its samples are latents, and ``decode`` turns them into
images in [-1, 1] at the end. ``Model`` decodes every sample it returns; whatever needs pixels
along the way (a picture of the trajectory, starting from a training image) asks ``latent``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Identity(nn.Module):
    """Pixels in, pixels out."""

    latent = False

    def decode(self, x: Tensor) -> Tensor:
        return x


class PretrainedAutoencoder(nn.Module):
    """The VAE of a pretrained latent pipeline (diffusers' ``AutoencoderKL``), whose latents the
    pipeline scales by ``config.scaling_factor`` to about unit variance."""

    latent = True

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        scaled = (latents / self.vae.config.scaling_factor).to(self.vae.dtype)
        return self.vae.decode(scaled).sample.float()
