"""Classifier-free guidance (Ho & Salimans 2022), with any number of weighted conditions.

For conditions c_k with weights w_k the guided denoiser is

    D(x, sigma) = D_u + sum_k w_k (D(x, sigma, c_k) - D_u),     D_u = D(x, sigma, null).

One condition with w = 1 is the conditional model, w = 0 the unconditional one, and w > 1
guides harder: this is eq. 6 of the paper, (1 + w') eps_c - w' eps_u with w = 1 + w'.
Guiding x0_hat and guiding eps_hat are the same thing, because eps_hat = (x - x0_hat) / sigma
is affine in x0_hat for a fixed x and sigma. All terms are evaluated in one batched call, so a
guided step costs one network evaluation per term: NFE counts them (``evaluations_per_call``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def evaluations_per_call(weights: list[float]) -> int:
    """Network evaluations of one guided call: one per term of nonzero weight, the unconditional
    term (weight 1 - sum of the others) included. One condition costs one evaluation at w = 0 or
    w = 1 and two at any other weight."""
    return sum(weight != 0 for weight in [*weights, 1 - sum(weights)])


class GuidedDenoiser:
    """``D(x, sigma)`` guided towards ``conditions``: a list of (labels, weight) pairs. Terms of
    weight 0 are left out: they would cost an evaluation and add nothing."""

    def __init__(self, denoiser, conditions: list[tuple[Tensor, float]], null_label: int):
        self.denoiser = denoiser
        unconditional = (torch.full_like(conditions[0][0], null_label), 1 - sum(weight for _, weight in conditions))
        self.terms = [(label, weight) for label, weight in [*conditions, unconditional] if weight != 0]
        self.evaluations = len(self.terms)          # = evaluations_per_call of the weights

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        k = self.evaluations
        labels = torch.cat([label for label, _ in self.terms])
        x0_hats = self.denoiser(x.repeat(k, *[1] * (x.ndim - 1)), sigma.repeat(k), labels)
        return sum(weight * part for (_, weight), part in zip(self.terms, x0_hats.chunk(k)))
