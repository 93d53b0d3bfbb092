"""Molecule-like point sets for a diffusion model of shapes (examples/point-sets): rings of 4, 6
or 8 atoms, each bond 1 long, puckered out of their plane by a property ``pucker`` (0: flat, up
to 0.25: every other atom up and down by that much, as in a chair-like ring), turned at random
and centred.

Sets of different sizes share one tensor of 8 points, with a mask for the real ones; each
ring's pucker is its condition. Writes

    data/rings.pt   {"data": (N, 8, 3), "mask": (N, 8), "conditions": (N, 1) pucker}

    python make_rings.py              # 4,000 rings, a second
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

BOND = 1.0
SIZES = (4, 6, 8)
MOST = 8
PUCKER = 0.25


def ring(atoms: int, pucker: float) -> torch.Tensor:
    """A ring of an even number of ``atoms`` with bonds of length BOND: a regular polygon in the
    x-y plane whose atoms alternate +-pucker in z, its radius chosen so that neighbours stay BOND
    apart (the in-plane chord is sqrt(BOND^2 - (2 pucker)^2))."""
    heights = torch.tensor([pucker * (-1) ** k for k in range(atoms)])
    radius = math.sqrt(BOND**2 - (2 * pucker) ** 2) / (2 * math.sin(math.pi / atoms))
    angles = torch.arange(atoms) * 2 * math.pi / atoms
    return torch.stack([radius * angles.cos(), radius * angles.sin(), heights], 1)


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rings", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="data/rings.pt")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    data, mask = torch.zeros(args.rings, MOST, 3), torch.zeros(args.rings, MOST, dtype=torch.bool)
    puckers = torch.rand(args.rings, generator=generator) * PUCKER
    for i in range(args.rings):
        atoms = SIZES[torch.randint(len(SIZES), (1,), generator=generator).item()]
        points = ring(atoms, puckers[i].item()) @ random_rotation(generator).T
        data[i, :atoms], mask[i, :atoms] = points - points.mean(0), True
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"data": data, "mask": mask, "conditions": puckers[:, None]}, out)
    print(f"{args.rings} rings of {', '.join(map(str, SIZES))} atoms: {out}")


if __name__ == "__main__":
    main()
