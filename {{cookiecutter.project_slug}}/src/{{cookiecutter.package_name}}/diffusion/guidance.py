"""Classifier-free guidance (Ho & Salimans 2022), with any number of weighted conditions.

For conditions c_k with weights w_k the guided denoiser is

    D(x, sigma) = D_u + sum_k w_k (D(x, sigma, c_k) - D_u),     D_u = D(x, sigma, null).

One condition with w = 1 is the conditional model, w = 0 the unconditional one, and w > 1
guides harder: this is eq. 6 of the paper, (1 + w') eps_c - w' eps_u with w = 1 + w'.
Guiding x0_hat and guiding eps_hat are the same thing, because eps_hat = (x - x0_hat) / sigma
is affine in x0_hat for a fixed x and sigma. All terms are evaluated in one batched call.

``GuidedDenoiser`` is the pattern of every denoiser wrapper (``tasks/``): it takes a denoiser,
is called as ``D(x, sigma)``, and states its own cost, ``evaluations``, the network evaluations
of one call. The samplers count NFE with it (``evaluations``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def evaluations(denoiser) -> int:
    """Network evaluations of one call of ``denoiser``: what a wrapper states in its
    ``evaluations``; one for a network (or any denoiser that states nothing)."""
    return getattr(denoiser, "evaluations", 1)


class GuidedDenoiser:
    """``D(x, sigma)`` guided towards ``conditions``, a list of (condition batch, weight) pairs,
    against ``null``, the null condition batch (for class labels, the null label repeated).
    Terms of weight 0 are left out: they would cost an evaluation and add nothing."""

    def __init__(self, denoiser, conditions: list[tuple[Tensor, float]], null: Tensor):
        self.denoiser = denoiser
        unconditional = (null, 1 - sum(weight for _, weight in conditions))
        self.terms = [(condition, weight) for condition, weight in [*conditions, unconditional] if weight != 0]
        self.evaluations = len(self.terms) * evaluations(denoiser)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        k = len(self.terms)
        conditions = torch.cat([condition for condition, _ in self.terms])
        x0_hats = self.denoiser(x.repeat(k, *[1] * (x.ndim - 1)), sigma.repeat(k), conditions)
        return sum(weight * part for (_, weight), part in zip(self.terms, x0_hats.chunk(k)))
