"""Judge samples of a model trained on make_rings.py's rings (examples/point-sets): are they
rings, and do they have the pucker they were asked for?

A sample is a valid ring when every atom has exactly two neighbours at a bond's length
(within 15%), no two atoms are closer than that, and the bonds join all atoms in one cycle.
Reported for the samples and for held-out rings (the data scores 100%): the share of valid
rings, the bond lengths (mean and spread of every pair within 15% of a bond), the sizes drawn,
and, for a conditional model, how the measured pucker (the root mean square distance of the
atoms from their best plane) follows the pucker asked for. Writes check.json and check.png
(samples beside held-out rings, bonds drawn) into the run's folder.

    python check_rings.py runs/rings
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import make_rings
import torch
from matplotlib.figure import Figure

sys.path.insert(0, "src")
PACKAGE = next(Path("src").glob("*/sets.py")).parts[1]
runs = importlib.import_module(f"{PACKAGE}.runs")
sets = importlib.import_module(f"{PACKAGE}.sets")
data_module = importlib.import_module(f"{PACKAGE}.data")

TOLERANCE = 0.15


def bonds(points: torch.Tensor) -> torch.Tensor:
    distances = torch.cdist(points, points)
    near = (distances - make_rings.BOND).abs() <= TOLERANCE * make_rings.BOND
    return near & ~torch.eye(len(points), dtype=torch.bool)


def valid(points: torch.Tensor) -> bool:
    distances = torch.cdist(points, points) + torch.eye(len(points)) * 1e9
    linked = bonds(points)
    if distances.min() < (1 - TOLERANCE) * make_rings.BOND or (linked.sum(1) != 2).any():
        return False
    seen, frontier = {0}, [0]                       # one cycle: every atom reached from the first
    while frontier:
        for j in linked[frontier.pop()].nonzero().flatten().tolist():
            if j not in seen:
                seen.add(j)
                frontier.append(j)
    return len(seen) == len(points)


def pucker(points: torch.Tensor) -> float:
    """The root mean square distance of the atoms from their best plane (the smallest singular
    direction of the centred atoms); a ring made with pucker p has exactly p."""
    centred = points - points.mean(0)
    return (torch.linalg.svdvals(centred)[-1] / len(points) ** 0.5).item()


def report(shapes: list[torch.Tensor], asked: torch.Tensor | None) -> dict:
    lengths = torch.cat([torch.cdist(s, s)[bonds(s)] for s in shapes])
    result = {"valid": sum(map(valid, shapes)) / len(shapes), "bond_mean": lengths.mean().item(),
              "bond_std": lengths.std().item(), "sizes": {str(n): sum(len(s) == n for s in shapes)
                                                          for n in make_rings.SIZES}}
    if asked is not None:
        measured = torch.tensor([pucker(s) for s in shapes])
        result["pucker_error"] = (measured - asked).abs().mean().item()
        result["pucker_correlation"] = torch.corrcoef(torch.stack([measured, asked]))[0, 1].item()
    return result


def draw(ax, points: torch.Tensor, title: str) -> None:
    linked = bonds(points)
    for i, j in linked.triu().nonzero().tolist():
        ax.plot(*points[[i, j], :2].T, c="0.4", lw=1)
    ax.scatter(points[:, 0], points[:, 1], c=points[:, 2], cmap="coolwarm", vmin=-0.3, vmax=0.3, s=30, zorder=3)
    ax.set(aspect="equal", xlim=(-1.6, 1.6), ylim=(-1.6, 1.6))
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the trained run, e.g. runs/rings")
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    model, run = runs.load_run(args.run)
    data = data_module.DiffusionDataModule.of_run(model.config)
    held_out, held_out_conditions = data.reference_images(held_out=True), data.val_set.labels
    indices = torch.arange(args.samples)
    asked = None
    if model.condition is not None:          # the held-out rings' puckers, in turn
        asked = held_out_conditions[indices % len(held_out_conditions)]
    drawn = model.sample_numbered(indices, seed=0, labels=None if asked is None else held_out_conditions)
    shapes = [sets.real_points(points) for points in drawn]
    result = {"samples": report(shapes, None if asked is None else asked[:, 0]),
              "held_out": report([sets.real_points(points) for points in held_out],
                                 None if asked is None else held_out_conditions[:, 0])}
    out = Path(run.root)
    (out / "check.json").write_text(json.dumps(result, indent=1))
    shown = min(8, len(shapes), len(held_out))
    fig = Figure(figsize=(1.5 * shown, 3.8))
    axes = fig.subplots(2, shown, squeeze=False)
    for k in range(shown):
        wanted = f", asked {asked[k, 0]:.2f}" if asked is not None else ""
        draw(axes[0, k], shapes[k], f"sample{wanted}\n{'valid' if valid(shapes[k]) else 'not a ring'}")
        draw(axes[1, k], sets.real_points(held_out[k]), f"held out, {pucker(sets.real_points(held_out[k])):.2f}")
    fig.suptitle(f"{out.name}: samples (top) and held-out rings (bottom), seen from above; colour: height",
                 fontsize=9, y=1.02)
    fig.savefig(out / "check.png", dpi=110, bbox_inches="tight")
    for name, part in result.items():
        extra = (f", pucker error {part['pucker_error']:.3f} (correlation {part['pucker_correlation']:.2f})"
                 if "pucker_error" in part else "")
        print(f"{name:9s} valid rings {100 * part['valid']:.1f}%, bonds {part['bond_mean']:.3f} ± "
              f"{part['bond_std']:.3f}, sizes {part['sizes']}{extra}")
    print(f"{out / 'check.json'}\n{out / 'check.png'}")


if __name__ == "__main__":
    main()
