"""Codecs: the one place that knows whether a model works in latents.

A pixel model denoises the data itself (``Identity``). A latent model (Rombach et al. 2022)
denoises the latents of an autoencoder: its samples are latents, and ``decode`` turns them into
images in [-1, 1] at the end. ``Model`` decodes every sample it returns; a task that starts from
images starts from their ``latents``; whatever needs pixels along the way (a picture of the
trajectory, restoration's known pixels) asks ``latent``.

Training a latent model encodes its images once (``encode``: each image's latent Gaussian, its
mean and standard deviation; ``data/datamodule.py`` caches them under the codec's ``identity``)
and draws a latent from them at every step. The latents the network sees are normalised per
channel, z' = (z - shift) * scale: for this project's own latent models the shift and scale are
measured on the data's latents, so that each channel has mean 0 and standard deviation
codec.latent_std (``normalise``; EDM2, Karras et al. 2024, normalises Stable Diffusion's latents
so); a pretrained pipeline's network expects its own VAE's fixed scaling factor. The measured
statistics are saved with the run, and ``decode`` undoes the normalisation before decoding.

Two autoencoders: a diffusers ``AutoencoderKL`` (Stable Diffusion's VAE, or any saved one,
loaded by ``adapters/pretrained.py``) and this project's own small one (``models/autoencoder.py``),
trained by the ``autoencoder`` command and saved as a folder:

    runs/<name>/autoencoder.safetensors   its weights
    runs/<name>/autoencoder.json          its shape (channels, latent channels, widths)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .models.autoencoder import Autoencoder
from .sets import point_counts

WEIGHTS, SHAPE = "autoencoder.safetensors", "autoencoder.json"


class Identity(nn.Module):
    """Pixels in, pixels out."""

    latent = False
    statistics = None

    def decode(self, x: Tensor) -> Tensor:
        return x

    def latents(self, images: Tensor) -> Tensor:
        return images

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(data_shape)

    def data_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(latent_shape)


class FeatureRange(nn.Module):
    """A tensor file's data other than images (vectors, sequences, sets of points), scaled so
    that each feature spans [-1, 1], the range the noise levels are made for (data.normalise;
    without it the data is taken as it is): x' = (x - centre) / half_range. A feature is a
    vector's coordinate, a sequence's channel; a set's coordinates share one scale and no shift
    (distances and rotations keep their meaning, and a centred set stays centred). For sets of
    different sizes it also keeps how many training sets have each number of points, the sizes
    that samples are drawn with (``Model.set_noise``). Measured once on the training data
    (``measure``), saved with the run (``statistics``), undone on every sample (``decode``).
    Until measured it changes nothing."""

    latent = False

    def __init__(self, kind: str, scale: bool = True):
        super().__init__()
        self.kind, self.scale = kind, scale
        self.statistics: dict | None = None

    def measure(self, data: Tensor) -> None:
        """The range of each feature of the training ``data`` (N, ...), missing points ignored."""
        features = data.transpose(0, 1).flatten(1) if self.kind == "sequence" else data.flatten(0, -2).T
        low = torch.stack([f[~torch.isnan(f)].min() for f in features])
        high = torch.stack([f[~torch.isnan(f)].max() for f in features])
        if self.kind == "set":
            half = torch.maximum(low.abs(), high.abs()).max().expand_as(low)
            low, high = -half, half
        if not self.scale:
            low, high = -torch.ones_like(low), torch.ones_like(high)
        statistics = {"low": low.tolist(), "high": high.tolist()}
        if self.kind == "set" and torch.isnan(data).any():
            statistics["points"] = torch.bincount(point_counts(data), minlength=data.shape[1] + 1).tolist()
        self.normalise(statistics)

    def normalise(self, statistics: dict) -> None:
        self.statistics = dict(statistics)

    def centre_and_half_range(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """Broadcast to x, on x's device; None until measured."""
        if self.statistics is None:
            return None
        low, high = (torch.tensor(self.statistics[key], device=x.device) for key in ("low", "high"))
        shape = [-1, 1] if self.kind == "sequence" else [-1]
        return ((high + low) / 2).reshape(shape), ((high - low) / 2).clamp_min(1e-12).reshape(shape)

    def latents(self, data: Tensor) -> Tensor:
        """Data in its own units -> what the network sees."""
        scaling = self.centre_and_half_range(data)
        return data if scaling is None else (data - scaling[0]) / scaling[1]

    def decode(self, x: Tensor) -> Tensor:
        """What the network made -> data in its own units."""
        scaling = self.centre_and_half_range(x)
        return x if scaling is None else x * scaling[1] + scaling[0]

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(data_shape)

    def data_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(latent_shape)


class LatentCodec(nn.Module):
    """An autoencoder as a codec: images of C x H x W to the Gaussians of latents of
    c x H/f x W/f and back, with the normalisation z' = (z - shift) * scale per channel.
    Subclasses say how their autoencoder encodes (``moments``) and decodes (``reconstruct``)."""

    latent = True
    encode_batch = 64         # images encoded at a time
    decode_batch = 64         # latents decoded at a time

    def __init__(self, network: nn.Module, in_channels: int, latent_channels: int, factor: int,
                 shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.network = network.requires_grad_(False).eval()
        self.in_channels, self.latent_channels, self.factor = in_channels, latent_channels, factor
        self.register_buffer("shift", torch.full((latent_channels,), float(shift)))
        self.register_buffer("scale", torch.full((latent_channels,), float(scale)))
        self.statistics: dict | None = None       # measured on the data (``normalise``), saved with the run

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def reconstruct(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(data_shape) != 3:
            raise ValueError(f"its autoencoder takes images, not examples of shape {list(data_shape)}")
        channels, height, width = data_shape
        if channels != self.in_channels or height % self.factor or width % self.factor:
            raise ValueError(f"its autoencoder takes images of {self.in_channels} channels whose sides divide by "
                             f"{self.factor}, not {channels}x{height}x{width}")
        return self.latent_channels, height // self.factor, width // self.factor

    def data_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = latent_shape
        return self.in_channels, height * self.factor, width * self.factor

    def identity(self) -> str:
        """A hash of the autoencoder's shape and weights: latents cached under it are its own."""
        digest = hashlib.sha256(repr((type(self.network).__name__, self.in_channels, self.latent_channels,
                                      self.factor, getattr(self.network, "config", None))).encode())
        for name, tensor in self.network.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def device(self) -> torch.device:
        return self.shift.device

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The latent Gaussian of each image in [-1, 1], as the autoencoder gives it (not
        normalised): mean and standard deviation stacked on the channels, (N, 2c, h, w), on the
        images' device."""
        chunks = [torch.cat(self.moments(chunk.to(self.device)), 1).float().to(images.device)
                  for chunk in images.split(self.encode_batch)]
        return torch.cat(chunks)

    def normalised(self, moments: Tensor) -> Tensor:
        """Moments from ``encode`` as the network sees them: the mean shifted and both scaled."""
        mean, std = moments.chunk(2, dim=1)
        shift, scale = self.shift.to(moments.device)[:, None, None], self.scale.to(moments.device)[:, None, None]
        return torch.cat([(mean - shift) * scale, std * scale], 1)

    def measure(self, moments: Tensor, latent_std: float) -> None:
        """Normalise each channel to mean 0 and standard deviation ``latent_std`` on the data
        whose latent Gaussians are ``moments`` (``encode``)."""
        self.normalise({**latent_statistics(moments), "latent_std": latent_std})

    def latents(self, images: Tensor) -> Tensor:
        """The normalised latents of ``images`` in [-1, 1] that a task starts from: the means of
        their Gaussians (the autoencoder's best guess, as ``decode`` takes it back). Gradients
        flow back to the images (score distillation optimises pictures seen through them)."""
        moments = torch.cat(self.moments(images.to(self.device)), 1).float().to(images.device)
        return self.normalised(moments).chunk(2, dim=1)[0]

    def normalise(self, statistics: dict) -> None:
        """Shift and scale by ``statistics``: the raw latents' mean and standard deviation per
        channel, and the standard deviation they are scaled to (``measure``; saved with a run)."""
        mean, std = (torch.tensor(statistics[key], dtype=torch.float32) for key in ("mean", "std"))
        if mean.shape != self.shift.shape or std.shape != self.scale.shape or not (std > 0).all():
            raise ConfigError(f"latent statistics {statistics} do not fit an autoencoder of "
                              f"{self.latent_channels} latent channels")
        self.shift.copy_(mean)
        self.scale.copy_(statistics["latent_std"] / std)
        self.statistics = {"mean": mean.tolist(), "std": std.tolist(), "latent_std": statistics["latent_std"]}

    def images(self, latents: Tensor) -> Tensor:
        """The images in [-1, 1] (the autoencoder's output, unclipped) of normalised latents, with
        gradients back to the latents: what a task that judges latents by their pixels
        differentiates through (restoration by DPS through the decoder)."""
        shift, scale = self.shift[:, None, None], self.scale[:, None, None]
        return self.reconstruct(latents.to(self.device) / scale + shift).float().to(latents.device)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``images`` without gradients, a few at a time on the autoencoder's device (decoding a
        sample grid must not take more memory than a training step)."""
        return torch.cat([self.images(chunk) for chunk in latents.split(self.decode_batch)])


def latent_statistics(moments: Tensor) -> dict:
    """Per channel, the mean and standard deviation of latents drawn from the Gaussians
    ``moments`` (``LatentCodec.encode``): a drawn latent's variance is the spread of the means
    plus the mean variance of each Gaussian."""
    mean, std = moments.double().chunk(2, dim=1)
    channel_mean = mean.mean(dim=(0, 2, 3))
    variance = mean.var(dim=(0, 2, 3), unbiased=False) + std.square().mean(dim=(0, 2, 3))
    return {"mean": channel_mean.tolist(), "std": variance.sqrt().tolist()}


class DiffusersAutoencoder(LatentCodec):
    """A diffusers ``AutoencoderKL``. Its pipelines scale the latents by ``config.scaling_factor``
    (after subtracting ``config.shift_factor``, where it has one), which is where the
    normalisation starts: a pipeline's network expects exactly that."""

    encode_batch = 4          # a 512-pixel image takes a gigabyte on the way
    decode_batch = 1

    def __init__(self, vae: nn.Module):
        config = vae.config
        super().__init__(vae, config.in_channels, config.latent_channels, 2 ** (len(config.block_out_channels) - 1),
                         getattr(config, "shift_factor", None) or 0.0, config.scaling_factor)

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        posterior = self.network.encode(images.to(self.network.dtype)).latent_dist
        return posterior.mean, posterior.std

    def reconstruct(self, z: Tensor) -> Tensor:
        return self.network.decode(z.to(self.network.dtype)).sample


class TrainedAutoencoder(LatentCodec):
    """This project's own autoencoder (``models/autoencoder.py``), trained by ``autoencoder``."""

    def __init__(self, network: Autoencoder):
        super().__init__(network, network.in_channels, network.latent_channels, network.factor)

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.network.encode(images)

    def reconstruct(self, z: Tensor) -> Tensor:
        return self.network.decode(z)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in self.network.state_dict().items()}, folder / WEIGHTS)
        (folder / SHAPE).write_text(json.dumps(self.network.shape, indent=1))

    @classmethod
    def load(cls, folder: Path) -> TrainedAutoencoder:
        from safetensors.torch import load_file

        try:
            network = Autoencoder(**json.loads((folder / SHAPE).read_text()))
            network.load_state_dict(load_file(folder / WEIGHTS))
        except Exception as error:        # a missing or damaged file, weights of another shape
            raise ConfigError(f"{folder} holds no readable autoencoder ({WEIGHTS} and {SHAPE}: "
                              f"{type(error).__name__}: {str(error).splitlines()[0][:120]})") from None
        return cls(network)


def is_trained_autoencoder(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file()
