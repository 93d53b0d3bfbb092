"""Judge a diffusion planner trained on make_paths.py's paths (examples/planner-2d): for start
and goal pairs it has never seen, how close its paths come to the goal, how often they cross an
obstacle, and how long they are, against the planner's own paths for the same pairs and
against the straight line from start to goal (what ignoring the map gives).

Each path is drawn conditioned on its start and goal, with the run's sampler and guidance (or
``--guidance``), and also with its first and last step held at the start and goal (replacement
inpainting, tasks/restore.py: the condition and the known steps together). Writes judge.json and
judge.png (the map, 16 drawn paths, the planner's beside them) into the run's folder.

    python judge.py runs/planner
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

import make_paths
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle

sys.path.insert(0, "src")
PACKAGE = next(Path("src").glob("*/tasks/restore.py")).parts[1]
runs = importlib.import_module(f"{PACKAGE}.runs")
restore = importlib.import_module(f"{PACKAGE}.tasks.restore")


def collides(path: torch.Tensor) -> bool:
    """Whether a path (2, L) enters a disc anywhere along its segments (no margin)."""
    dense = torch.nn.functional.interpolate(path[None], scale_factor=10, mode="linear", align_corners=True)[0]
    return any(((dense[0] - a) ** 2 + (dense[1] - b) ** 2 < r**2).any().item() for a, b, r in make_paths.OBSTACLES)


def length(path: torch.Tensor) -> float:
    return (path[:, 1:] - path[:, :-1]).norm(dim=0).sum().item()


def scores(paths: torch.Tensor, conditions: torch.Tensor) -> dict:
    start, goal = conditions[:, :2], conditions[:, 2:]
    goal_error = (paths[:, :, -1] - goal).norm(dim=1)
    return {"goal_error": goal_error.mean().item(), "start_error": (paths[:, :, 0] - start).norm(dim=1).mean().item(),
            "reach_goal": (goal_error < 0.3).float().mean().item(),
            "collision_rate": sum(collides(p) for p in paths) / len(paths),
            "length": sum(length(p) for p in paths) / len(paths)}


def draw(model, conditions: torch.Tensor, seed: int, inpaint: bool) -> torch.Tensor:
    """Paths for each start and goal: sampled with guidance towards them, and (``inpaint``) with
    the first and last steps replaced by them at every step."""
    sampling = model.config.sampling
    generator = torch.Generator().manual_seed(seed)
    if not inpaint:
        return model.sample(len(conditions), generator, labels=conditions).x
    steps = model.data_shape[-1]
    known = torch.zeros(1, 1, steps)
    known[..., [0, -1]] = 1
    ends = torch.zeros(len(conditions), 2, steps)
    ends[:, :, 0], ends[:, :, -1] = conditions[:, :2], conditions[:, 2:]
    y = model.codec.latents(ends) * known
    denoiser = model.guided(len(conditions), sampling.guidance, conditions)
    with torch.no_grad():
        x = restore.repaint(denoiser, model.sigmas(sampling), y, known, generator=generator).x
    return model.codec.decode(x)


def picture(drawn: torch.Tensor, planned: torch.Tensor, conditions: torch.Tensor, path: Path, title: str) -> None:
    fig = Figure(figsize=(10, 5.3))
    for ax, paths, name in zip(fig.subplots(1, 2), (drawn, planned), ("diffusion planner", "A* planner")):
        for a, b, r in make_paths.OBSTACLES:
            ax.add_patch(Circle((a, b), r, color="0.75"))
        for k, (p, c) in enumerate(zip(paths[:16], conditions[:16])):
            colour = "tab:red" if collides(p) else f"C{k % 10}"
            ax.plot(*p, lw=1.3, c=colour)
            ax.scatter(*c[:2], s=25, marker="o", c="k", zorder=3)
            ax.scatter(*c[2:], s=60, marker="*", c="k", zorder=3)
        ax.set(xlim=(0, make_paths.SIZE), ylim=(0, make_paths.SIZE), aspect="equal", title=name)
    fig.suptitle(title + " (circle: start, star: goal; red: crosses an obstacle)", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the trained run, e.g. runs/planner")
    parser.add_argument("--pairs", type=int, default=200, help="start and goal pairs, unseen in training")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--guidance", type=float, help="the guidance weight (default: the run's sampling.guidance)")
    parser.add_argument("--steps", type=int, help="the sampler's steps (default: the run's sampling.steps)")
    args = parser.parse_args()
    model, run = runs.load_run(args.run)
    for key in ("guidance", "steps"):
        if getattr(args, key) is not None:
            model.config.sampling[key] = getattr(args, key)
    steps = model.data_shape[-1]
    generator = torch.Generator().manual_seed(10_000 + args.seed)
    conditions, planned = [], []
    while len(planned) < args.pairs:
        start, goal = make_paths.random_free_point(generator), make_paths.random_free_point(generator)
        path = make_paths.plan(start, goal, steps) if math.dist(start, goal) >= 2 else None
        if path is not None:
            conditions.append(torch.tensor([*start, *goal]))
            planned.append(path)
    conditions, planned = torch.stack(conditions), torch.stack(planned)
    straight = conditions[:, :2, None] + (conditions[:, 2:] - conditions[:, :2])[:, :, None] * torch.linspace(0, 1,
                                                                                                             steps)
    drawn = draw(model, conditions, args.seed, inpaint=False)
    report = {"pairs": args.pairs, "guidance": model.config.sampling.guidance, "steps": model.config.sampling.steps,
              "diffusion": scores(drawn, conditions),
              "diffusion_with_ends_inpainted": scores(draw(model, conditions, args.seed, inpaint=True), conditions),
              "planner": scores(planned, conditions), "straight_line": scores(straight, conditions)}
    out = Path(run.root)
    (out / "judge.json").write_text(json.dumps(report, indent=1))
    picture(drawn, planned, conditions, out / "judge.png", f"{out.name}: {args.pairs} unseen start and goal pairs")
    for name, result in report.items():
        if isinstance(result, dict):
            print(f"{name:30s} goal error {result['goal_error']:.3f}, reach the goal "
                  f"{100 * result['reach_goal']:.1f}%, collisions {100 * result['collision_rate']:.1f}%, "
                  f"length {result['length']:.2f}")
    print(f"{out / 'judge.json'}\n{out / 'judge.png'}")


if __name__ == "__main__":
    main()
