"""Visual illusions: one sample that reads as different things under different views.

Visual anagrams (Geng, Park & Owens 2024): with views v_1..v_K (a flip, a rotation, a
permutation of the pixels) and a condition for each (a label, a prompt), every evaluation
averages the views' estimates, each mapped back:

    D(x, sigma) = 1/K sum_k v_k^{-1}( D_k(v_k(x), sigma) ),      D_k guided towards condition k.

A view must be an orthogonal map of the pixels (a permutation, possibly with sign flips): it
then carries Gaussian noise to Gaussian noise of the same level, so v_k(x) is as noisy as x and
D_k sees what it was trained on, and each v_k^{-1} D_k(v_k x) is itself the ideal denoiser of
the data seen through v_k. Views are tested to be orthogonal in tests/test_tasks.py.

Hybrid images (Oliva, Torralba & Schyns 2006, made with diffusion by Geng et al. 2024,
Factorized Diffusion): the low frequencies of one condition's estimate plus the high
frequencies of another's; seen from afar (or small) the image is the first, up close the second.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.guidance import evaluations
from ..diffusion.samplers import Denoiser


@dataclass(frozen=True)
class View:
    """An orthogonal pixel map of images (N, C, H, W) and its inverse."""

    name: str
    apply: Callable[[Tensor], Tensor]
    invert: Callable[[Tensor], Tensor]


def jigsaw(size: int, pieces: int = 4, seed: int = 0) -> View:
    """The image cut into pieces x pieces square tiles, put back in a fixed shuffled order."""
    if size % pieces:
        raise ValueError(f"a {size}x{size} image cannot be cut into {pieces}x{pieces} equal tiles")
    order = torch.randperm(pieces * pieces, generator=torch.Generator().manual_seed(seed))
    tile = size // pieces

    def to_tiles(x: Tensor) -> Tensor:          # (N, C, H, W) -> (N, C, pieces^2, tile, tile)
        n, c = x.shape[:2]
        return x.reshape(n, c, pieces, tile, pieces, tile).permute(0, 1, 2, 4, 3, 5).reshape(n, c, -1, tile, tile)

    def from_tiles(t: Tensor) -> Tensor:
        n, c = t.shape[:2]
        return t.reshape(n, c, pieces, pieces, tile, tile).permute(0, 1, 2, 4, 3, 5).reshape(n, c, size, size)

    return View(f"jigsaw{pieces}", lambda x: from_tiles(to_tiles(x)[:, :, order]),
                lambda x: from_tiles(to_tiles(x)[:, :, order.argsort()]))


VIEWS = {
    "identity": View("identity", lambda x: x, lambda x: x),
    "hflip": View("hflip", lambda x: x.flip(-1), lambda x: x.flip(-1)),
    "vflip": View("vflip", lambda x: x.flip(-2), lambda x: x.flip(-2)),
    "rot90": View("rot90", lambda x: x.rot90(1, (-2, -1)), lambda x: x.rot90(-1, (-2, -1))),
    "rot180": View("rot180", lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(2, (-2, -1))),
    "rot270": View("rot270", lambda x: x.rot90(-1, (-2, -1)), lambda x: x.rot90(1, (-2, -1))),
    "transpose": View("transpose", lambda x: x.transpose(-1, -2), lambda x: x.transpose(-1, -2)),
    "negate": View("negate", lambda x: -x, lambda x: -x),
}


def view(name: str, size: int) -> View:
    """A view by name: one of VIEWS, or ``jigsaw`` (4 x 4 tiles) for images of this size."""
    if name == "jigsaw":
        return jigsaw(size)
    if name not in VIEWS:
        raise ValueError(f"unknown view '{name}': use one of {', '.join([*VIEWS, 'jigsaw'])}")
    return VIEWS[name]


class Anagram:
    """The average of several denoisers, each looking through its own view (eq. above).
    ``parts`` pairs a view with the denoiser guided towards that view's condition."""

    def __init__(self, parts: Sequence[tuple[View, Denoiser]]):
        self.parts = list(parts)
        self.evaluations = sum(evaluations(denoiser) for _, denoiser in self.parts)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return sum(v.invert(denoiser(v.apply(x), sigma)) for v, denoiser in self.parts) / len(self.parts)


def low_pass(x: Tensor, std: float) -> Tensor:
    """A Gaussian blur of standard deviation ``std`` pixels (edge pixels repeated at the borders)."""
    radius = max(1, round(3 * std))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-taps**2 / (2 * std**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class Hybrid:
    """Low frequencies from ``far`` (what the image is from a distance), high frequencies from
    ``near``, split by a Gaussian blur of ``std`` pixels: D = low(D_far) + (D_near - low(D_near))."""

    def __init__(self, far: Denoiser, near: Denoiser, std: float = 2.0):
        self.far, self.near, self.std = far, near, std
        self.evaluations = evaluations(far) + evaluations(near)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        near = self.near(x, sigma)
        return low_pass(self.far(x, sigma), self.std) + near - low_pass(near, self.std)
