"""Interpolation: between two noises, and between two real images through their inversions.

Noise drawn from N(0, sigma^2 I) in d dimensions lies near the sphere of radius sigma sqrt(d):
the straight line between two such draws cuts inside it (at the middle its norm is about
1 / sqrt(2) of theirs), where the sampler has never started, and gives washed-out samples.
Spherical interpolation (Shoemake 1985) follows the great circle instead and keeps the norm.

A deterministic sampler is an invertible map from noise to data (it solves the probability-flow
ODE, Song et al. 2021): run backwards from sigma_min up to sigma_max, it finds the noise from
which an image is generated (DDIM inversion, Song, Meng & Ermon 2021, sec. 5.4). Two real
images can then be interpolated through their noises.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..diffusion.samplers import Denoiser, Hook, Sampler


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """The point a fraction t along the great circle from a to b (each example flattened):
    sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b, w the angle between them. Norms equal at
    both ends stay equal all along; nearly parallel inputs fall back to the straight line."""
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    cos = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
    angle = cos.clamp(-1, 1).acos()[:, None]
    parallel = angle < 1e-6
    sin = torch.where(parallel, torch.ones_like(angle), angle.sin())
    wa = torch.where(parallel, 1 - t, ((1 - t) * angle).sin() / sin)
    wb = torch.where(parallel, torch.full_like(angle, t), (t * angle).sin() / sin)
    return (wa * flat_a + wb * flat_b).reshape(a.shape).to(a.dtype)


def invert(denoiser: Denoiser, sigmas: Tensor, image: Tensor, sampler: Sampler,
           hooks: Iterable[Hook] = ()) -> Tensor:
    """The noise at sigmas[0] from which ``sampler`` (deterministic) generates ``image``:
    the same sampler run up the reversed noise levels, from the image taken as the state at the
    smallest nonzero level. ``sigmas`` is the generation sequence (decreasing, ending at 0);
    generating from the result with it reconstructs ``image`` up to the solver's error."""
    upward = sigmas[:-1].flip(0) if sigmas[-1] == 0 else sigmas.flip(0)
    with torch.no_grad():
        return sampler(denoiser, upward, image, hooks=hooks).x
