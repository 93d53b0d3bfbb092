"""Denoiser networks. Each is ``net(x, c_noise, condition=None)`` with output shaped like x.

A network is chosen by its name (model.name, whose section model.<name> holds its settings) and
by the kind of data it is given, read off one example's shape (``data_kind``). ``MODELS`` is the
one table: a network for a new kind of data is one entry under the name whose settings it takes
(a temporal U-Net for sequences would be ``MODELS["unet"]["sequence"]``).
"""
from __future__ import annotations

from torch import nn

from .conditioning import ClassLabels
from .dit import DiT
from .ideal import IdealDenoiser
from .mlp import MLP
from .unet import UNet

# model.name -> {kind of data: network}
MODELS = {
    "unet": {"image": UNet},
    "dit": {"image": DiT},
    "mlp": {"vector": MLP, "sequence": MLP, "image": MLP},         # flattens whatever it is given
    "ideal": {"vector": IdealDenoiser, "sequence": IdealDenoiser, "image": IdealDenoiser},   # a denoiser, untrained
}
KINDS = {1: "vector", 2: "sequence", 3: "image"}        # dimensions of one example -> its kind


def data_kind(data_shape: tuple[int, ...]) -> str:
    """What one example of this shape is: a vector (D,), a sequence (C, L) or an image (C, H, W)."""
    return KINDS.get(len(data_shape), f"{len(data_shape)}-dimensional array")


def build_model(cfg, data_shape: tuple[int, ...], condition: ClassLabels | None = None) -> nn.Module:
    """The network named by ``cfg.name`` for this shape of data, with the keyword arguments of
    its own section; a ValueError says what cannot be built."""
    kind = data_kind(data_shape)
    networks = MODELS[cfg.name]
    if kind not in networks:
        fitting = [name for name, table in MODELS.items() if kind in table]
        raise ValueError(f"it has no network for {kind} data; networks for {kind} data: {', '.join(fitting) or 'none'}")
    return networks[kind](tuple(data_shape), condition=condition, **cfg[cfg.name])
