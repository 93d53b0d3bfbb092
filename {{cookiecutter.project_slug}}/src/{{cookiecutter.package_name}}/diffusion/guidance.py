"""Classifier-free guidance (Ho & Salimans 2022), with any number of weighted conditions.

For conditions c_k with weights w_k the guided denoiser is

    D(x, sigma) = D_u + sum_k w_k (D(x, sigma, c_k) - D_u),     D_u = D(x, sigma, null).

One condition with w = 1 is the conditional model, w = 0 the unconditional one, and w > 1
guides harder: this is eq. 6 of the paper, (1 + w') eps_c - w' eps_u with w = 1 + w'.
Guiding x0_hat and guiding eps_hat are the same thing, because eps_hat = (x - x0_hat) / sigma
is affine in x0_hat for a fixed x and sigma. All terms are evaluated in one batched call.
"""
from __future__ import annotations

import torch
from torch import Tensor


class GuidedDenoiser:
    """``D(x, sigma)`` guided towards ``conditions``: a list of (labels, weight) pairs."""

    def __init__(self, denoiser, conditions: list[tuple[Tensor, float]], null_label: int):
        self.denoiser, self.conditions, self.null_label = denoiser, conditions, null_label
        self.unconditional_weight = 1 - sum(weight for _, weight in conditions)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        labels = [label for label, _ in self.conditions]
        weights = [weight for _, weight in self.conditions]
        if self.unconditional_weight != 0:
            labels.append(torch.full_like(labels[0], self.null_label))
            weights.append(self.unconditional_weight)
        k = len(labels)
        x0_hats = self.denoiser(x.repeat(k, *[1] * (x.ndim - 1)), sigma.repeat(k), torch.cat(labels))
        return sum(w * part for w, part in zip(weights, x0_hats.chunk(k)))
