"""Codecs: the one place that knows whether a model works in latents.

A pixel model denoises the data itself (``Identity``). A latent model (Rombach et al. 2022)
denoises the latents of an autoencoder: its samples are latents, and ``decode`` turns them into
images in [-1, 1] at the end. ``Model`` decodes every sample it returns; whatever needs pixels
along the way (a picture of the trajectory, starting from a training image) asks ``latent``.
Training a latent model encodes its images once (``encode``; ``data/datamodule.py`` caches the
result under the codec's ``identity``).
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn


class Identity(nn.Module):
    """Pixels in, pixels out."""

    latent = False

    def decode(self, x: Tensor) -> Tensor:
        return x

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(data_shape)

    def data_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(latent_shape)


class PretrainedAutoencoder(nn.Module):
    """The VAE of a pretrained latent pipeline (diffusers' ``AutoencoderKL``): an image of
    C x H x W is a Gaussian over latents of c x H/f x W/f, which the pipeline scales by
    ``config.scaling_factor`` to about unit variance."""

    latent = True
    batch_size = 4          # images encoded at a time: a 512-pixel image takes a gigabyte on the way

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    @property
    def factor(self) -> int:
        """f: each level of the encoder but the last halves the resolution."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = data_shape
        if channels != self.vae.config.in_channels or height % self.factor or width % self.factor:
            raise ValueError(f"its autoencoder takes images of {self.vae.config.in_channels} channels whose sides "
                             f"divide by {self.factor}, not {channels}x{height}x{width}")
        return self.vae.config.latent_channels, height // self.factor, width // self.factor

    def data_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = latent_shape
        return self.vae.config.in_channels, height * self.factor, width * self.factor

    def identity(self) -> str:
        """A hash of the VAE's configuration and weights: latents cached under it are its own."""
        digest = hashlib.sha256(repr(sorted(self.vae.config.items())).encode())
        for name, tensor in self.vae.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The latent Gaussian of each image in [-1, 1], scaled: mean and standard deviation
        stacked on the channels, (N, 2c, h, w). A latent is drawn from them at each training step
        (``data/datamodule.py``), as diffusers' training scripts draw one from ``latent_dist``."""
        scale, device = self.vae.config.scaling_factor, next(self.vae.parameters()).device
        moments = []
        for chunk in images.split(self.batch_size):
            posterior = self.vae.encode(chunk.to(device, self.vae.dtype)).latent_dist
            moments.append(torch.cat([posterior.mean, posterior.std], 1).float().mul(scale).to(images.device))
        return torch.cat(moments)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1], decoded on the VAE's device one at a time: decoding is the most
        memory that drawing a sample grid takes, and one at a time it stays below a training
        step's."""
        scale, device = self.vae.config.scaling_factor, next(self.vae.parameters()).device
        images = [self.vae.decode((latent / scale).to(device, self.vae.dtype)).sample.float().to(latents.device)
                  for latent in latents.split(1)]
        return torch.cat(images)
