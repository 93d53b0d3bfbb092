"""Memorisation: is a generated sample new, or a copy of a training example?

Each sample is compared with its nearest training examples, found exactly (brute force, chunk by
chunk). A sample counts as a copy when its nearest training example is much closer than the
second nearest: d1 < d2 / 3, the criterion of Yoon et al. 2023 ("Diffusion probabilistic models
generalize when they fail to memorize") and Gu et al. 2023 ("On memorization in diffusion
models"). A sample halfway between two examples has d1 = d2; a copy has d1 near 0.

Held-out real examples, judged the same way against the same training set, calibrate the
criterion: their share of "copies" is the rate of near-duplicates in the data itself, the floor
that a model which generalises comes down to. The ideal denoiser of the training set
(models/ideal.py) copies every time.

A model that generalises learns the data's distribution rather than its examples, so two models
trained on disjoint training sets of the same data turn the same noise into nearly the same
image (Kadkhodaie et al. 2024, "Generalization in diffusion models arises from geometry-adaptive
harmonic representations", who measure it by cosine similarity); two models that memorise turn
it into copies of their own, different, examples. ``same_noise_similarity`` measures it.
"""
from __future__ import annotations

import torch
from torch import Tensor

COPY_RATIO = 1 / 3      # d1 / d2 below this: a copy


def nearest_examples(queries: Tensor, examples: Tensor, k: int = 2, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """The Euclidean distances (B, k) and indices (B, k) of the ``k`` training ``examples``
    nearest to each of the ``queries`` (both flattened), nearest first. Exact: squared distances
    in float64, over ``chunk`` examples at a time, keeping the k best so far."""
    queries = queries.flatten(1).double()
    best = queries.new_zeros(len(queries), 0)              # the k best so far: none yet
    best_indices = torch.zeros_like(best, dtype=torch.long)
    for start in range(0, len(examples), chunk):
        block = examples[start:start + chunk].flatten(1).to(queries)
        squared = queries.square().sum(1, keepdim=True) - 2 * queries @ block.T + block.square().sum(1)
        indices = torch.arange(start, start + len(block), device=queries.device).expand(len(queries), -1)
        candidates = torch.cat([best, squared.clamp_min(0)], 1)
        candidate_indices = torch.cat([best_indices, indices], 1)
        best, order = candidates.topk(min(k, candidates.shape[1]), dim=1, largest=False)
        best_indices = candidate_indices.gather(1, order)
    return best.sqrt().float(), best_indices


def copy_share(distances: Tensor, ratio: float = COPY_RATIO) -> float:
    """The share of rows of ``distances`` (nearest first, as ``nearest_examples`` gives them)
    whose nearest example is closer than ``ratio`` times the second nearest."""
    return (distances[:, 0] < ratio * distances[:, 1]).double().mean().item()


def memorisation(samples: Tensor, held_out: Tensor, training: Tensor) -> dict:
    """Samples and held-out examples against the training examples: the share of copies of
    each, and every nearest distance and index (for the histogram and the pairs picture)."""
    sample_distances, sample_indices = nearest_examples(samples, training)
    held_out_distances, _ = nearest_examples(held_out, training)
    return {"copy_share": copy_share(sample_distances), "held_out_copy_share": copy_share(held_out_distances),
            "median_nearest": sample_distances[:, 0].median().item(),
            "held_out_median_nearest": held_out_distances[:, 0].median().item(),
            "nearest": sample_distances[:, 0], "nearest_index": sample_indices[:, 0],
            "held_out_nearest": held_out_distances[:, 0]}


def same_noise_similarity(samples: Tensor, twin_samples: Tensor) -> dict:
    """How alike two models' samples from the same noise are: the mean cosine similarity of
    ``samples[i]`` and ``twin_samples[i]``, both less the mean of all the samples (so that what
    every image shares, such as a background, does not count). 1: the same images; near 0: no
    more alike than samples from different noise, reported beside it as ``different_noise``
    (the mean over every pair i != j), and each pair's similarity as ``pairs``."""
    a, b = samples.flatten(1).double(), twin_samples.flatten(1).double()
    mean = torch.cat([a, b]).mean(0)
    a, b = torch.nn.functional.normalize(a - mean, dim=1), torch.nn.functional.normalize(b - mean, dim=1)
    cosines = a @ b.T
    n = len(cosines)
    different = (cosines.sum() - cosines.diagonal().sum()) / max(n * (n - 1), 1)
    return {"same_noise": cosines.diagonal().mean().item(), "different_noise": different.item(),
            "pairs": cosines.diagonal().float()}
