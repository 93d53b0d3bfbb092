"""A differentiable volume renderer in pure torch: a voxel grid of density and colour seen by
cameras around it (the emission-absorption model of NeRF, Mildenhall et al. 2020, eq. 3, on a
grid as in Plenoxels, Fridovich-Keil et al. 2022).

The grid fills the cube [-1, 1]^3 (x to the right, y up, z towards the camera at azimuth 0),
its values at the voxel centres, trilinearly interpolated between them and zero outside. A
camera at azimuth a and elevation e (degrees) looks at the origin from the direction
(cos e sin a, sin e, cos e cos a). An orthographic camera casts parallel rays, one a pixel; a
pinhole camera with a field of view (``fov``, degrees, as DreamFusion's cameras) casts them
from one point, far enough away that the ball the orthographic view shows just fills its view,
so that near things look larger than far ones. Each ray's colour is

    C = sum_k T_k alpha_k c_k + T background,     alpha_k = 1 - exp(-density_k delta),
    T_k = exp(-sum_{j<k} density_j delta),         T = exp(-sum_k density_k delta),

at ``samples`` midpoints delta apart. Everything is differentiable in the density and the
colour, which is what score distillation needs (``score_distillation.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UP = (0.0, 1.0, 0.0)
OCCUPIED = 0.1        # the share of a ray that an occupied voxel stops (``occupied``)


def camera_axes(azimuth: Tensor, elevation: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each camera's right, up and forward unit vectors (B, 3), from angles in degrees."""
    a, e = torch.deg2rad(azimuth.double()), torch.deg2rad(elevation.double())
    towards_camera = torch.stack([e.cos() * a.sin(), e.sin(), e.cos() * a.cos()], dim=-1)
    forward = -towards_camera
    right = F.normalize(torch.linalg.cross(forward, torch.tensor(UP, dtype=forward.dtype).expand_as(forward)), dim=-1)
    up = torch.linalg.cross(right, forward)
    return right, up, forward


def ray_points(azimuth: Tensor, elevation: Tensor, size: int, samples: int, extent: float,
               fov: float | None = None) -> Tensor:
    """The sample points (B, size * size, samples, 3) of every pixel's ray, from the camera's
    side to the far side, 2 extent / samples apart, across the ball of radius ``extent`` about
    the origin. Orthographic (``fov`` None): the image plane spans [-extent, extent]^2. Pinhole:
    the camera stands extent / sin(fov / 2) from the origin, and the ray through the pixel at
    (u, v) in [-1, 1]^2 runs along forward + tan(fov / 2) (u right - v up), normalised."""
    right, up, forward = camera_axes(azimuth, elevation)
    side = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(side, side, indexing="ij")                 # rows top to bottom, columns left to right
    across = u.reshape(1, -1, 1, 1) * right[:, None, None] - v.reshape(1, -1, 1, 1) * up[:, None, None]
    depth = ((torch.arange(samples, dtype=torch.float64) + 0.5) / samples * 2 - 1).view(1, 1, -1, 1) * extent
    if fov is None:
        return extent * across + depth * forward[:, None, None]
    distance = extent / math.sin(math.radians(fov) / 2)
    rays = F.normalize(forward[:, None, None] + math.tan(math.radians(fov) / 2) * across, dim=-1)
    return -distance * forward[:, None, None] + (distance + depth) * rays


def render_volume(density: Tensor, colour: Tensor, azimuth: Tensor, elevation: Tensor, size: int,
                  samples: int = 64, extent: float = math.sqrt(3), background: float = 1.0,
                  fov: float | None = None) -> Tensor:
    """Images (B, C, size, size) in [0, 1] of the grid ``density`` (R, R, R; >= 0, indexed z, y, x)
    with ``colour`` (C, R, R, R; in [0, 1]) from cameras at ``azimuth``, ``elevation`` (B,), in
    degrees, orthographic or with a field of view of ``fov`` degrees, on a ``background`` grey
    level. The default extent sees the whole cube from every side."""
    points = ray_points(azimuth, elevation, size, samples, extent, fov).to(density)
    grid = points.reshape(1, len(azimuth), size * size, samples, 3)
    sigma = F.grid_sample(density[None, None], grid, align_corners=True, padding_mode="zeros")[0, 0]
    rgb = F.grid_sample(colour[None], grid, align_corners=True)[0]        # (C, B, pixels, samples)
    delta = 2 * extent / samples
    optical_depth = sigma * delta
    before = torch.cumsum(optical_depth, dim=-1) - optical_depth           # sum_{j<k}
    weights = torch.exp(-before) * (1 - torch.exp(-optical_depth))
    image = (weights * rgb).sum(-1) + background * torch.exp(-optical_depth.sum(-1))
    return image.reshape(-1, len(azimuth), size, size).transpose(0, 1)


class VoxelField(nn.Module):
    """A grid of ``resolution``^3 voxels, each with a density (softplus of a free parameter, so
    never negative) and a colour (sigmoid, in [0, 1]); it starts as a faint grey haze."""

    def __init__(self, resolution: int = 32, channels: int = 3, initial_density: float = 0.1):
        super().__init__()
        self.raw_density = nn.Parameter(torch.full((resolution,) * 3, math.log(math.expm1(initial_density))))
        self.raw_colour = nn.Parameter(torch.zeros(channels, *(resolution,) * 3))

    @property
    def density(self) -> Tensor:
        return F.softplus(self.raw_density)

    @property
    def colour(self) -> Tensor:
        return torch.sigmoid(self.raw_colour)

    def render(self, azimuth: Tensor, elevation: Tensor, size: int, samples: int = 64,
               background: float = 1.0, fov: float | None = None) -> Tensor:
        """Images in [-1, 1], the project's convention (``render_volume``)."""
        return 2 * render_volume(self.density, self.colour, azimuth, elevation, size, samples,
                                 background=background, fov=fov) - 1

    def occupancy(self, threshold: float = OCCUPIED) -> Tensor:
        """Voxels that stop more than ``threshold`` of a ray crossing them:
        1 - exp(-density * voxel side) > threshold."""
        return occupied(self.density.detach(), threshold)


def occupied(density: Tensor, threshold: float = OCCUPIED) -> Tensor:
    """Voxels of a grid over [-1, 1]^3 that stop more than ``threshold`` of a ray crossing them.
    Score distillation grows soft surfaces (several voxels of moderate density stop a ray as
    well as one dense voxel does, and look the same), so the default counts a voxel that stops a
    tenth: a ray crossing seven of them is more than half stopped."""
    side = 2 / (density.shape[0] - 1)
    return 1 - torch.exp(-density * side) > threshold
