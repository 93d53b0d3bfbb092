"""Distances between samples and data of any kind, where FID means nothing (points, paths,
sets of points): the sliced Wasserstein distance and the kernel MMD, on features that suit the
data (``features``), each standardised by the reference data so that no feature's units weigh
more than another's.

* Sliced Wasserstein-2 (Rabin et al. 2011; Bonneel et al. 2015): the root mean square over
  random unit directions of the 1D Wasserstein-2 distance between the two sets projected on
  each, which is exact in 1D from the sorted values (their quantile functions).
* MMD (Gretton et al. 2012): the unbiased squared maximum mean discrepancy with the Gaussian
  kernel k(x, y) = exp(-|x - y|^2 / 2 h^2), h the median distance between reference points
  (the median heuristic; ``bandwidth``).

Both are about 0 for two samples of the same distribution (the MMD estimate is unbiased, so it
can be slightly negative). Sets of points are compared by the histogram of the distances
between their points (and their number of points): a feature that no permutation, translation
or rotation of a set changes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sets import missing_points, point_counts

SET_BINS = 16       # histogram bins of a set's pairwise distances


def random_directions(dim: int, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` unit vectors drawn uniformly on the sphere in ``dim`` dimensions, (dim, count)."""
    directions = torch.randn(dim, count, generator=generator, dtype=torch.float64)
    return directions / directions.norm(dim=0, keepdim=True)


def wasserstein_1d(u: Tensor, v: Tensor, p: int = 2) -> Tensor:
    """W_p^p between the empirical distributions of the columns of u (n, K) and v (m, K), for
    each column: the integral over q in (0, 1) of |F_u^-1(q) - F_v^-1(q)|^p, exact for
    piecewise-constant quantile functions (the breakpoints of both, merged)."""
    u, v = u.sort(0).values, v.sort(0).values
    n, m = len(u), len(v)
    levels = torch.cat([torch.arange(1, n + 1, dtype=u.dtype) / n, torch.arange(1, m + 1, dtype=u.dtype) / m])
    levels = levels.sort().values
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    at = levels - widths / 2                                     # the middle of each piece
    pick_u = (at * n).floor().long().clamp_max(n - 1)
    pick_v = (at * m).floor().long().clamp_max(m - 1)
    return (widths[:, None] * (u[pick_u] - v[pick_v]).abs() ** p).sum(0)


def sliced_wasserstein(x: Tensor, y: Tensor, directions: Tensor) -> float:
    """SW_2 between samples x (n, D) and y (m, D) along ``directions`` (D, K)."""
    return wasserstein_1d(x.double() @ directions, y.double() @ directions).mean().sqrt().item()


def bandwidth(x: Tensor, limit: int = 2000) -> float:
    """The Gaussian kernel's width for the standardised features x (N, D): the median distance
    between two of the first ``limit`` rows (the median heuristic), or, where half of them or more
    coincide, sqrt(2 D), the distance between two examples of features of variance 1."""
    x = x[:limit].double()
    median = torch.cdist(x, x)[torch.triu_indices(len(x), len(x), 1).unbind()].median().item()
    return median if median > 0 else math.sqrt(2 * x.shape[1])


def mmd(x: Tensor, y: Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between x (n, D) and y (m, D) with the
    Gaussian kernel of ``bandwidth``: the means of k over distinct pairs within x and within y,
    less twice the mean over pairs across."""
    x, y = x.double(), y.double()

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2))

    def within(a: Tensor) -> Tensor:
        return (kernel(a, a).sum() - len(a)) / (len(a) * (len(a) - 1))       # the diagonal k(a_i, a_i) = 1 left out

    return (within(x) + within(y) - 2 * kernel(x, y).mean()).item()


def pairwise_distances(sets: Tensor) -> tuple[Tensor, Tensor]:
    """The distances between the points of each set (N, P, D), (N, P, P), and which of them are
    between two distinct real points (each pair once): a missing point is nowhere."""
    missing = missing_points(sets)
    points = sets.nan_to_num().double()
    pairs = ~missing[:, :, None] & ~missing[:, None, :] & torch.ones(sets.shape[1], sets.shape[1]).bool().triu(1)
    return torch.cdist(points, points), pairs


def pairwise_histograms(sets: Tensor, distances: Tensor, pairs: Tensor, top: float) -> Tensor:
    """For each set, the share of its pairs of real points (``pairwise_distances``) at each
    distance, in ``SET_BINS`` bins over [0, top] (the last bin takes everything further), and its
    number of real points over P."""
    bins = (distances / top * SET_BINS).floor().long().clamp(0, SET_BINS - 1)
    counts = torch.zeros(len(sets), SET_BINS, dtype=torch.float64)
    counts.scatter_add_(1, bins.flatten(1), pairs.flatten(1).double())
    shares = counts / counts.sum(1, keepdim=True).clamp_min(1)
    return torch.cat([shares, point_counts(sets)[:, None].double() / sets.shape[1]], 1)


def features(samples: Tensor, reference: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """What the distances compare, for the samples and for the reference: vectors and sequences
    flattened, sets as their pairwise histograms (over distances up to the largest between two
    real points of the reference), both standardised by the reference features' mean and
    standard deviation (a feature constant in the reference, such as a histogram bin no
    reference set reaches, is only centred)."""
    if kind == "set":
        theirs = pairwise_distances(reference)
        top = max(theirs[0][theirs[1]].max().item() if theirs[1].any() else 0.0, 1e-12)
        samples = pairwise_histograms(samples, *pairwise_distances(samples), top)
        reference = pairwise_histograms(reference, *theirs, top)
    samples, reference = samples.flatten(1).double(), reference.flatten(1).double()
    mean, std = reference.mean(0), reference.std(0)
    std = torch.where(std > 1e-9, std, torch.ones_like(std))
    return (samples - mean) / std, (reference - mean) / std


def distances(samples: Tensor, reference: Tensor, kind: str, seed: int = 0, directions: int = 500) -> dict:
    """SW_2 and MMD^2 of ``samples`` against ``reference`` data (both in the data's units) on
    ``features``, with ``directions`` random directions drawn from ``seed``."""
    ours, theirs = features(samples.cpu(), reference.cpu(), kind)
    directions = random_directions(ours.shape[1], directions, torch.Generator().manual_seed(seed))
    return {"swd": sliced_wasserstein(ours, theirs, directions), "mmd": mmd(ours, theirs, bandwidth(theirs)),
            "samples": len(samples)}
