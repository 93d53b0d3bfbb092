"""Render the example's data: a small coloured 3D shape (a red body, a blue head on its right, a
green tail fin on its left) as a voxel grid, seen from random azimuths by the project's own volume
renderer, saved as a folder of images with one subfolder per view (0, 45, ..., 315 degrees: the
nearest to each camera), and the true grid as truth.pt for compare.py.

    python make_views.py            (from the project's root; writes data/views/ and truth.pt)
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, "src")
PACKAGE = next(Path("src").glob("*/tasks/render.py")).parts[1]
render = importlib.import_module(f"{PACKAGE}.tasks.render")

PARTS = [   # (colour, inside(x, y, z)), in the renderer's frame: x right, y up, z towards azimuth 0
    ((0.85, 0.2, 0.2), lambda x, y, z: (x.abs() < 0.45) & ((y + 0.25).abs() < 0.25) & (z.abs() < 0.3)),
    ((0.2, 0.3, 0.9), lambda x, y, z: (x - 0.5) ** 2 + (y - 0.1) ** 2 + z**2 < 0.3**2),
    ((0.2, 0.75, 0.3), lambda x, y, z: (x > -0.55) & (x < -0.3) & (y > -0.05) & (y < 0.55) & (z.abs() < 0.1)),
]


def shape(resolution: int, density: float = 30.0, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The shape, ``scale`` times the size PARTS give it: its density (R, R, R) and colour (3, R, R,
    R), indexed z, y, x over [-1, 1]^3; every voxel takes the colour of the nearest part, so that
    interpolation at the edges stays true."""
    side = torch.linspace(-1, 1, resolution) / scale
    z, y, x = torch.meshgrid(side, side, side, indexing="ij")
    inside = torch.stack([part(x, y, z) for _, part in PARTS])
    colours = torch.tensor([colour for colour, _ in PARTS])
    centres = torch.stack([torch.stack([x[m].mean(), y[m].mean(), z[m].mean()]) for m in inside])
    points = torch.stack([x, y, z], -1)
    nearest = torch.where(inside.any(0), inside.float().argmax(0),
                          torch.cdist(points.view(-1, 3), centres).argmin(1).view(x.shape))
    return density * inside.any(0).float(), colours[nearest].permute(3, 0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/views")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--elevation", type=float, default=15.0)
    args = parser.parse_args()
    density, colour = shape(args.resolution)
    torch.save({"density": density, "colour": colour}, "truth.pt")
    generator = torch.Generator().manual_seed(0)
    azimuths = 360 * torch.rand(args.images, generator=generator)
    for start in range(0, args.images, 100):
        batch = azimuths[start:start + 100]
        images = render.render_volume(density, colour, batch, torch.full_like(batch, args.elevation), args.size)
        for k, (azimuth, image) in enumerate(zip(batch.tolist(), images), start):
            view = round(azimuth / 45) % 8 * 45
            folder = Path(args.out) / str(view)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / f"{k:05d}.png")
    print(f"{args.images} views in {args.out}/ (one folder per 45 degrees), the true shape in truth.pt")


if __name__ == "__main__":
    main()
