"""Drawing samples: the one way every part of the project does it (the ``sample`` command, the
sample grids of training, evaluation, the course tasks, a notebook), with no Lightning.

    result = generate(denoiser, sigmas, sampler, shape=(16, 1, 28, 28), generator=g)

``denoiser`` is any ``D(x, sigma) -> x0_hat``: a trained network, or one wrapped so that a
condition holds at every evaluation (guidance, inpainting, illusions; see ``guidance.py``).
``sigmas`` is a decreasing float64 sequence ending at 0 (``schedules.py``), ``sampler`` one of
``samplers.py``. Hooks watch or adjust every step (a progress bar, ``samplers.Trajectory``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .samplers import Denoiser, Generators, Hook, Sampler, SampleResult, standard_normal


@torch.no_grad()
def generate(denoiser: Denoiser, sigmas: Tensor, sampler: Sampler, *, shape: Sequence[int] | None = None,
             noise: Tensor | None = None, image: Tensor | None = None, strength: float = 1.0,
             generator: Generators = None, hooks: Iterable[Hook] = (),
             device: torch.device | str = "cpu") -> SampleResult:
    """Run ``sampler`` down ``sigmas`` from one of three starting points:

    * ``shape``: pure noise, x = sigmas[0] * eps with eps ~ N(0, I) drawn from ``generator`` on
      the generator's device, so a seed gives the same samples on every device; the result is
      float32 on ``device``.
    * ``noise``: the same with eps given (to fix each sample's noise whatever the batch it is in).
    * ``image``: a batch of images in [-1, 1], noised to the level a fraction ``strength`` of the
      way up ``sigmas`` (x = image + sigma * eps) and sampled down from there: SDEdit (Meng et al.
      2022). The sample keeps the image's coarse structure and redraws the details; strength 0
      returns the image as it is, strength 1 starts from sigmas[0], almost a fresh sample.

    ``generator`` (or one generator per sample) also gives the noise of stochastic samplers. No
    gradients are recorded; a
    denoiser wrapper that needs them (guidance by a gradient) enables them itself.
    """
    if sum(start is not None for start in (shape, noise, image)) != 1:
        raise ValueError("generate needs exactly one starting point: shape= or noise= (pure noise), or image= (SDEdit)")
    if not 0 <= strength <= 1 or (strength != 1 and image is None):
        raise ValueError(f"strength={strength}: a fraction in [0, 1], for a start from image= only")
    sigmas = sigmas.cpu()     # read as Python numbers at every step: on the host, so no step waits for the GPU
    if image is not None:
        sigmas = sigmas[round((1 - strength) * (len(sigmas) - 1)):]
        start = image
    else:
        start = torch.zeros(tuple(shape) if noise is None else noise.shape, device=device)
    if noise is None:
        noise = standard_normal(start.shape, generator)
    x = start + (sigmas[0] * noise.double()).to(start)
    return sampler(denoiser, sigmas, x, generator=generator, hooks=hooks)


def indexed_generators(indices: Tensor, seed: int) -> list[torch.Generator]:
    """One generator for each of the samples numbered ``indices``, seeded with seed + its number:
    sample i of a numbered set draws the same noise (where it starts, and a stochastic sampler's
    noise at every step) whatever batch it is drawn in and however many processes share the
    work (the FID protocol needs this)."""
    return [torch.Generator().manual_seed(seed + int(i)) for i in indices]


def indexed_noise(indices: Tensor, shape: Sequence[int], seed: int) -> Tensor:
    """The starting noise of the samples numbered ``indices`` (see ``indexed_generators``)."""
    return standard_normal((len(indices), *shape), indexed_generators(indices, seed))
