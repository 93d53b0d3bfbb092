"""Denoiser networks. Each is ``net(x, c_noise, condition=None)`` with output shaped like x.

A network is chosen by its name (model.name, whose section model.<name> holds its settings) and
by the kind of data it is given (``kinds.data_kind``: read off one example's shape, except that
a set of points (P, D) has the shape of a sequence (C, L) and says so, data.kind=set). ``MODELS``
is the one table: a network for a new kind of data is one entry under the name whose settings
it takes (the temporal U-Net takes the U-Net's).
"""
from __future__ import annotations

from torch import nn

from ..kinds import data_kind
from .conditioning import Condition
from .dit import DiT
from .ideal import IdealDenoiser
from .mlp import MLP
from .set_transformer import SetTransformer
from .temporal_unet import TemporalUNet
from .unet import UNet

# model.name -> {kind of data: network}
MODELS = {
    "unet": {"image": UNet, "sequence": TemporalUNet},
    "dit": {"image": DiT},
    "set_transformer": {"set": SetTransformer},
    "mlp": {"vector": MLP, "sequence": MLP, "set": MLP, "image": MLP},         # flattens whatever it is given
    "ideal": {"vector": IdealDenoiser, "sequence": IdealDenoiser, "image": IdealDenoiser},   # a denoiser, untrained
}


def build_model(cfg, data_shape: tuple[int, ...], condition: Condition | None = None) -> nn.Module:
    """The network that ``cfg.model.name`` names for this shape of data (``cfg``: a run's whole
    configuration), with the keyword arguments of its own section (and, for sets, whether
    their centre of mass is zero, data.zero_com); a ValueError says what cannot be built."""
    kind = data_kind(data_shape, cfg.data.kind)
    networks = MODELS[cfg.model.name]
    if kind not in networks:
        fitting = [name for name, table in MODELS.items() if kind in table]
        raise ValueError(f"it has no network for {kind} data; networks for {kind} data: {', '.join(fitting) or 'none'}")
    settings = dict(cfg.model[cfg.model.name])
    if networks[kind] is SetTransformer:
        settings["zero_com"] = cfg.data.zero_com
    return networks[kind](tuple(data_shape), condition=condition, **settings)
