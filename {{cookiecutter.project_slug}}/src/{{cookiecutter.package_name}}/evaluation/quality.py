"""FID and KID of generated samples against the data.

FID (Heusel et al. 2017) is the Frechet distance between Gaussians fitted to the features of
real and generated images,

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)),

biased at small sample counts (so the count is always part of its name: fid@5k). KID
(Binkowski et al. 2018) is the unbiased squared MMD with the kernel k(x, y) = (x.y / D + 1)^3,
averaged over random subsets; it is usable with a few thousand samples. Both come from
torchmetrics; features are extracted once and handed to both.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from ..pixels import to_uint8
from ..storage import save_atomically


class GivenFeatures(nn.Module):
    """torchmetrics' metrics run their ``feature`` network on what ``update`` receives; this one
    passes features through, so that one extraction serves both FID and KID."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def reference_file(cache_dir: str, fingerprint: str, image_size: int, channels: int, extractor: nn.Module) -> Path:
    """Where the reference statistics are cached, named by everything they depend on: the data's
    content, how it is cropped and converted, and the extractor."""
    key = json.dumps([fingerprint, image_size, channels, extractor.key])
    return Path(cache_dir).expanduser() / f"reference-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


@torch.no_grad()
def reference_statistics(images: Tensor, extractor: nn.Module, path: Path, batch_size: int,
                         kid_reference: int, device: torch.device, progress=None) -> dict:
    """Features of the reference images (uint8 (N, C, H, W), un-augmented): their sum and sum of
    outer products for FID, and up to ``kid_reference`` of them, picked at random, for KID.
    Computed once and stored at ``path`` (see ``reference_file``); reused after that."""
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    keep = torch.zeros(len(images), dtype=torch.bool)
    keep[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:kid_reference]] = True
    total, outer, kept = 0, 0, []
    for start in range(0, len(images), batch_size):
        features = extractor(images[start:start + batch_size].to(device)).double().cpu()
        total, outer = total + features.sum(0), outer + features.T @ features
        kept.append(features[keep[start:start + batch_size]].float())
        if progress:
            progress(len(features))
    statistics = {"sum": total, "outer": outer, "count": len(images), "kid_features": torch.cat(kept)}
    save_atomically(statistics, path)
    return statistics


def shares(n: int, batch_size: int, rank: int, world_size: int) -> Iterator[Tensor]:
    """The sample indices this process draws: batches of ``batch_size`` consecutive indices,
    batch b going to process b mod world_size. Every index is drawn by exactly one process."""
    for b, start in enumerate(range(0, n, batch_size)):
        if b % world_size == rank:
            yield torch.arange(start, min(n, start + batch_size))


@torch.no_grad()
def sample_features(draw: Callable[[Tensor], Tensor], extractor: nn.Module, n: int, batch_size: int,
                    rank: int = 0, world_size: int = 1, keep: Callable[[Tensor, Tensor], None] | None = None,
                    progress=None) -> Tensor:
    """Features of this process's share of ``n`` samples. ``draw(indices)`` returns the samples
    (float in [-1, 1]) numbered ``indices`` (see ``Model.sample_numbered``: they do not
    depend on how the work is cut); ``keep(indices, images)`` may store their uint8 pixels.
    Outside autocast: features and metrics are computed in full precision."""
    device = next(extractor.parameters(), torch.empty(0)).device      # a network without weights: the CPU
    features = []
    with torch.autocast(device.type, enabled=False):
        for indices in shares(n, batch_size, rank, world_size):
            images = to_uint8(draw(indices)).to(device)
            features.append(extractor(images).float().cpu())
            if keep:
                keep(indices, images.cpu())
            if progress:
                progress(len(indices))
    return torch.cat(features)


def fid_kid(reference: dict, features: Tensor, kid_subset_size: int, seed: int, kid_subsets: int = 100) -> dict:
    """FID and KID (mean and standard deviation over ``kid_subsets`` subsets of at most
    ``kid_subset_size`` of each set: Binkowski et al. 2018) of generated ``features`` against
    the reference statistics. The global random state is left untouched (KID's subsets are
    drawn from ``seed``), so evaluating during training never changes the training run."""
    dim = features.shape[1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        # Every process passes all the features (gathered beforehand), so the metrics must not
        # sum their states over processes once more, as torchmetrics otherwise does under DDP.
        fid = FrechetInceptionDistance(feature=GivenFeatures(dim), reset_real_features=False, sync_on_compute=False)
        subset = min(kid_subset_size, len(features), len(reference["kid_features"]))
        kid = KernelInceptionDistance(feature=GivenFeatures(dim), subsets=kid_subsets, subset_size=subset,
                                      sync_on_compute=False)
    fid.real_features_sum = reference["sum"].double()
    fid.real_features_cov_sum = reference["outer"].double()
    fid.real_features_num_samples = torch.tensor(int(reference["count"]))
    fid.update(features, real=False)
    kid.update(reference["kid_features"].float(), real=True)
    kid.update(features.float(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item(), "samples": len(features)}


def count_name(n: int) -> str:
    """5000 -> '5k', 50000 -> '50k', 1234 -> '1234': the sample count in a metric's name."""
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def evaluation_cost(samples: int, nfe: int, every_n_steps: int, batch_size: int) -> tuple[int, int]:
    """Network evaluations of one evaluation (NFE per sample, plus the feature extractor, about
    one network), and of the training between two (a trained image costs about three: the
    forward pass, and the backward pass at twice that)."""
    return samples * (nfe + 1), 3 * every_n_steps * batch_size
