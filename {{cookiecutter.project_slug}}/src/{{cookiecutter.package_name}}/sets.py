"""The one convention for sets of points, (N, P, D): a set smaller than P points fills the rest
with rows of NaN, its missing points. NaN travels through batching, noising and every sampler
step unchanged and apart (all of them act point by point), and no real value is NaN (the data
refuses them), so the missing points need no mask beside the data. Whatever mixes points (a
network, a centre of mass, a distance) reads them with ``missing_points``."""
import torch
from torch import Tensor


def missing_points(x: Tensor) -> Tensor:
    """(N, P) True where a point of the sets x (N, P, D) is missing (a row of NaN); (P,) of one set."""
    return torch.isnan(x).any(-1)


def real_points(points: Tensor) -> Tensor:
    """The real points of one set (P, D): its rows that are not missing."""
    return points[~missing_points(points)]


def point_counts(x: Tensor) -> Tensor:
    """(N,) the number of real points of each set of x (N, P, D)."""
    return (~missing_points(x)).sum(1)


def without_centre(x: Tensor, missing: Tensor | None = None) -> Tensor:
    """Each set moved so that the centre of mass of its real points is zero (Hoogeboom et al.
    2022's zero centre-of-mass subspace), over its real points (``missing``: the missing ones,
    else the NaN rows, which stay NaN)."""
    real = ~(missing_points(x) if missing is None else missing)[..., None]
    centre = torch.where(real, x, 0.0).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp_min(1)
    return x - centre


def random_rotations(n: int, dim: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """n rotation matrices (dim x dim, determinant +1) drawn uniformly (Haar): the QR
    decomposition of a Gaussian matrix with the signs of R's diagonal moved into Q (Mezzadri
    2007), and one column negated where the determinant is -1."""
    q, r = torch.linalg.qr(torch.randn(n, dim, dim, generator=generator).to(device))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    flip = torch.ones(n, dim, device=q.device)
    flip[:, 0] = torch.sign(torch.linalg.det(q))
    return q * flip[:, None, :]


def rotated(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each set of x (N, P, D) turned by its own random rotation about the origin."""
    return x @ random_rotations(len(x), x.shape[-1], x.device, generator).transpose(1, 2)
