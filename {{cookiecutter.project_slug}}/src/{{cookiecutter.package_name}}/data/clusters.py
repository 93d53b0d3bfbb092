"""Labels for unlabelled data, found in the data itself: self-guided diffusion (Hu et al. 2023,
"Self-Guided Diffusion Models") trains a conditional model on cluster numbers instead of class
labels, so that conditional sampling and classifier-free guidance work without any labels.

The clusters are k-means clusters (Lloyd's algorithm from k-means++ seeds, Arthur & Vassilvitskii
2007) of small thumbnails: 16x16 pixels keep the coarse shape that a cluster should stand for
(which digit, which layout), not the stroke-level detail. On MNIST, 50 clusters of 16x16
thumbnails hold one digit each for more than four fifths of the images, and guiding by them
gives clear digits where the unconditional model draws ambiguous ones (benchmarks/RESULTS.md in
the template's repository)."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError

THUMBNAIL = 16          # pixels per side of the images that are clustered
PER_CLUSTER = 20        # examples a cluster holds at the least on average: small data gets fewer clusters


def thumbnails(data: Tensor) -> Tensor:
    """(N, D) float features to cluster: images (N, C, H, W: uint8, or float in [-1, 1])
    scaled to [0, 1] and averaged down to at most 16x16 pixels; other data (2D points) as it is."""
    if data.ndim == 4:
        unit = data.float() / 255 if data.dtype == torch.uint8 else (data.float() + 1) / 2
        return F.adaptive_avg_pool2d(unit, min(THUMBNAIL, data.shape[-1])).flatten(1)
    return data.float().flatten(1)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k starting centres: the first a random point, each next one a point drawn with
    probability proportional to its squared distance from the nearest centre so far."""
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    nearest = torch.cdist(x, centres).squeeze(1) ** 2
    for found in range(1, k):
        if not nearest.any():
            raise DataError(f"data.clusters={k}, but the data holds only {found} distinct examples")
        new = x[torch.multinomial(nearest, 1, generator=generator)]
        centres = torch.cat([centres, new])
        nearest = torch.minimum(nearest, torch.cdist(x, new).squeeze(1) ** 2)
    return centres


def kmeans(x: Tensor, k: int, seed: int = 0, max_iterations: int = 100) -> Tensor:
    """The cluster of each row of ``x`` (N, D): Lloyd's algorithm (assign each point to its
    nearest centre, move each centre to the mean of its points) until no point changes cluster.
    Clusters are numbered from the largest down, so cluster 0 is the most common kind of example."""
    if not 1 <= k <= len(x):
        raise DataError(f"data.clusters={k} needs at least {k} examples; there are {len(x)}")
    centres = kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed))
    assigned = torch.full((len(x),), -1)
    for _ in range(max_iterations):
        nearest = torch.cdist(x, centres).argmin(1)
        if torch.equal(nearest, assigned):
            break
        assigned = nearest
        sums = torch.zeros_like(centres).index_add_(0, assigned, x)
        counts = torch.bincount(assigned, minlength=k)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    by_size = torch.bincount(assigned, minlength=k).argsort(descending=True, stable=True)
    return by_size.argsort()[assigned]


def cluster_count(asked: int, examples: int) -> int:
    """How many clusters ``examples`` can fill: ``asked``, but at most one per ``PER_CLUSTER``
    examples (and at least one), so that the model sees enough of each cluster to learn it."""
    count = max(1, min(asked, examples // PER_CLUSTER))
    if count < asked:
        warnings.warn(f"data.clusters={asked}, but {examples} examples fill only {count} cluster(s) of "
                      f"{PER_CLUSTER} or more on average: using {count}", stacklevel=2)
    return count


def cluster_labels(data: Tensor, asked: int, seed: int) -> tuple[Tensor, list[str]]:
    """Each example's cluster (see ``kmeans``) among ``asked`` clusters, or fewer for small
    data (see ``cluster_count``), and the clusters' names."""
    k = cluster_count(asked, len(data))
    labels = kmeans(thumbnails(data), k, seed)
    return labels, [f"cluster {i}" for i in range(k)]
