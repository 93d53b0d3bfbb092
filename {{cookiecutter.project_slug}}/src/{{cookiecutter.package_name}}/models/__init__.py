"""Denoiser networks. Each is ``net(x, c_noise, labels=None)`` with output shaped like x."""
from __future__ import annotations

from torch import nn

from .dit import DiT
from .mlp import MLP
from .unet import UNet

MODELS = {"unet": UNet, "dit": DiT, "mlp": MLP}


def build_model(cfg, data_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """The network named by ``cfg.name`` with the keyword arguments of its own section."""
    kwargs = dict(cfg[cfg.name])
    return MODELS[cfg.name](tuple(data_shape), num_classes=num_classes, **kwargs)
