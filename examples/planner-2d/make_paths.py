"""Paths of a point robot through a 2D map with round obstacles, from a simple planner, for
a diffusion planner to learn (examples/planner-2d).

The map is the square [0, 10]^2 with a few discs in it (``OBSTACLES``). For each example a start
and a goal are drawn in free space; the planner finds the shortest 8-connected path on a grid
whose cells keep a margin from the discs (A*, Hart, Nilsson & Raphael 1968), shortens it by
cutting every corner it can see past (line of sight), and resamples it to ``--steps`` points
evenly spaced along its length. Writes

    data/paths.pt   {"data": (N, 2, steps) paths, "conditions": (N, 4) start and goal}

the file the project trains on (data.name=tensor_file), and ``map.json``, the obstacles, for
judge.py.

    python make_paths.py              # 4,000 paths of 32 steps, about half a minute
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
from pathlib import Path

import torch

SIZE = 10.0
OBSTACLES = [(3.0, 3.0, 1.2), (7.0, 3.5, 1.4), (5.0, 6.5, 1.3), (2.0, 7.5, 0.9), (8.0, 8.0, 0.8)]   # x, y, radius
MARGIN = 0.25           # the planner keeps this far from every disc
CELLS = 60              # grid cells per side


def free(x: float, y: float, margin: float = MARGIN) -> bool:
    return 0 <= x <= SIZE and 0 <= y <= SIZE and all(math.hypot(x - a, y - b) > r + margin for a, b, r in OBSTACLES)


def sees(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """Whether the segment from p to q stays in free space (checked every 0.05)."""
    steps = max(2, int(math.dist(p, q) / 0.05))
    return all(free(p[0] + (q[0] - p[0]) * k / steps, p[1] + (q[1] - p[1]) * k / steps) for k in range(steps + 1))


def cell_centre(i: int, j: int) -> tuple[float, float]:
    return ((i + 0.5) * SIZE / CELLS, (j + 0.5) * SIZE / CELLS)


def nearest_cell(p: tuple[float, float]) -> tuple[int, int]:
    return min(CELLS - 1, int(p[0] / SIZE * CELLS)), min(CELLS - 1, int(p[1] / SIZE * CELLS))


def a_star(start: tuple[float, float], goal: tuple[float, float]) -> list[tuple[float, float]] | None:
    """The shortest 8-connected path of free cells from start's cell to goal's, as points."""
    source, target = nearest_cell(start), nearest_cell(goal)
    best, came = {source: 0.0}, {}
    queue = [(math.dist(cell_centre(*source), goal), source)]
    while queue:
        _, cell = heapq.heappop(queue)
        if cell == target:
            path = [cell]
            while path[-1] in came:
                path.append(came[path[-1]])
            return [start] + [cell_centre(*c) for c in reversed(path[1:-1])] + [goal]
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                step = (cell[0] + di, cell[1] + dj)
                if step == cell or not (0 <= step[0] < CELLS and 0 <= step[1] < CELLS) or not free(*cell_centre(*step)):
                    continue
                cost = best[cell] + math.hypot(di, dj) * SIZE / CELLS
                if cost < best.get(step, math.inf):
                    best[step], came[step] = cost, cell
                    heapq.heappush(queue, (cost + math.dist(cell_centre(*step), goal), step))
    return None


def shortcut(path: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """From each kept point, jump to the furthest point it can see."""
    kept, i = [path[0]], 0
    while i < len(path) - 1:
        j = next(j for j in range(len(path) - 1, i, -1) if j == i + 1 or sees(path[i], path[j]))
        kept.append(path[j])
        i = j
    return kept


def resample(path: list[tuple[float, float]], steps: int) -> torch.Tensor:
    """``steps`` points evenly spaced along the polyline, (2, steps)."""
    points = torch.tensor(path, dtype=torch.float64)
    lengths = torch.cat([torch.zeros(1), (points[1:] - points[:-1]).norm(dim=1).cumsum(0)])
    at = torch.linspace(0, lengths[-1].item(), steps, dtype=torch.float64)
    segment = torch.searchsorted(lengths, at, right=True).clamp(1, len(points) - 1)
    share = ((at - lengths[segment - 1]) / (lengths[segment] - lengths[segment - 1]).clamp_min(1e-12))[:, None]
    return (points[segment - 1] + share * (points[segment] - points[segment - 1])).T.float()


def random_free_point(generator: torch.Generator) -> tuple[float, float]:
    while True:
        x, y = (torch.rand(2, generator=generator) * SIZE).tolist()
        if free(x, y, margin=MARGIN + 0.1):
            return x, y


def plan(start: tuple[float, float], goal: tuple[float, float], steps: int) -> torch.Tensor | None:
    found = a_star(start, goal)
    return None if found is None else resample(shortcut(found), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="data/paths.pt")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    paths, conditions = [], []
    while len(paths) < args.paths:
        start, goal = random_free_point(generator), random_free_point(generator)
        if math.dist(start, goal) < 2:
            continue
        path = plan(start, goal, args.steps)
        if path is not None:
            paths.append(path)
            conditions.append(torch.tensor([*start, *goal]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"data": torch.stack(paths), "conditions": torch.stack(conditions)}, out)
    Path("map.json").write_text(json.dumps({"size": SIZE, "obstacles": OBSTACLES, "margin": MARGIN}))
    print(f"{len(paths)} paths of {args.steps} steps: {out}; the map: map.json")


if __name__ == "__main__":
    main()
