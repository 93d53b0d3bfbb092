"""Few-step students on MNIST (issue 31): a teacher at 20 network evaluations against its reflow,
consistency-distillation and consistency-tuning students at 1, 2 and 4, all trained in one run.

Protocol:
- Data and scorer: those of ``quality_per_compute.py`` (the MNIST 10k test set padded to 32x32;
  a small CNN trained here gives FID and KID through the project's own evaluation code, and the
  share of samples it recognises as a digit with confidence > 0.9).
- Teacher: a recipe of ``quality_per_compute.py`` (``--teacher``; by default ``ours-plain``, the
  cpu preset's unconditional U-Net of width 16, no guidance; ``ours`` is the default bake, guided
  at 2 by the data's 50 k-means clusters) trained for ``--budget`` seconds of wall clock by the
  project's own ``train``. A guided teacher's guidance is distilled in: its students take the
  clusters and sample at guidance 1, one evaluation a step.
- Students, each the project's own command, ``train experiment=NAME distill.teacher=runs/teacher``
  with the cpu preset for ``--student-steps`` steps: ``reflow`` (``--pairs`` pairs drawn with the
  teacher's DPM-Solver++(2M) at 20 steps; Euler on the uniform_t levels), ``cd`` (18 Karras levels,
  one Heun step of the teacher per example and step) and ``ect`` (the gap halving 8 times over
  the run). Each student's command is timed whole: reflow's includes drawing its pairs.
- The distillation's own compute in teacher evaluations: reflow, pairs x 20; cd, 2 per example
  and step; ect, none (the teacher's weights are its start); a guided teacher's count twice.
- Samples: 1000 per (model, steps) from the same noise (seed 0), the teacher with its own
  sampler (DPM-Solver++(2M)) at 20, 1, 2 and 4 steps, each student with its own sampler.
- The consistency sampler's lowest re-noising level (``sampling.sigma_min``; the recipes' 0.8
  is Song et al.'s 0.821 for CIFAR-10, found there by a search on FID) is searched again here,
  as the paper did, per student and step count among ``--levels``, on other noise (seed 1, 500
  samples); where it chose another level than the recipe's, that level's row (``"searched":
  true``) is drawn from the seed-0 noise beside the recipe's.

Run on an idle machine (2 threads):
    .venv/bin/python benchmarks/distill_mnist.py [--budget 600] [--student-steps 1500] [--teacher ours] [--seed 1]
    .venv/bin/python benchmarks/distill_mnist.py --project <the folder a run printed>   # resume there
One JSON line per (model, steps) in benchmarks/results/distill_mnist.jsonl, and the first 64
samples of every row, side by side, in benchmarks/results/distill_mnist.png.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_per_compute import (  # noqa: E402
    MNIST,
    OURS,
    RESULTS,
    ScorerFeatures,
    judge,
    load_mnist,
    machine,
    scored,
    train_ours,
    trained_scorer,
)

STUDENTS = ("reflow", "cd", "ect")
STEPS = (1, 2, 4)


def train_student(method: str, steps: int, pairs: int, seed: int) -> dict:
    """``train experiment=<method> distill.teacher=runs/teacher`` for ``steps`` steps, timed whole."""
    from diffusion_lab.cli import main

    args = ["train", f"experiment={method}", "distill.teacher=runs/teacher", f"name={method}", "preset=cpu",
            f"seed={seed}", "logger=csv", f"trainer.max_steps={steps}", f"distill.stage_steps={max(1, steps // 8)}",
            f"distill.pairs={pairs}",
            "trainer.sample_every_n_steps=10000000", "trainer.first_grid_minutes=0", "trainer.val_every_n_steps=10000000",
            "trainer.checkpoint_every_n_steps=10000000", "evaluation.every_n_steps=0"]
    start = time.perf_counter()
    assert main(args) == 0
    return {"train_seconds": round(time.perf_counter() - start, 1)}


def teacher_evaluations(method: str, cfg, per_call: int) -> int:
    """Teacher network evaluations the student's training made (see the protocol above), with
    ``per_call`` evaluations in one call of the teacher's (guided) denoiser."""
    return per_call * {"reflow": cfg.distill.pairs * 20, "cd": 2 * cfg.trainer.max_steps * cfg.data.batch_size,
                       "ect": 0}[method]


def draw(model, noise: torch.Tensor, steps: int, **settings) -> tuple[torch.Tensor, int]:
    """Samples of ``model`` from ``noise`` with its own sampling section at ``steps`` steps (and
    any other ``settings`` of that section), and their network evaluations each."""
    from diffusion_lab.config import run_config

    sampling = run_config(model.config, "sampling", {"steps": steps, **settings}).sampling
    parts = [model.sample(len(part), None, sampling, noise=part) for part in noise.split(250)]
    return torch.cat([part.x for part in parts]), parts[0].nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=600, help="the teacher's training wall clock, seconds")
    parser.add_argument("--student-steps", type=int, default=1500)
    parser.add_argument("--pairs", type=int, default=10000, help="reflow's pairs")
    parser.add_argument("--students", default=",".join(STUDENTS), help="which students, comma separated")
    parser.add_argument("--levels", default="0.2,0.4,0.8,1.6,3.2",
                        help="the consistency sampler's lowest levels to search, comma separated")
    parser.add_argument("--teacher", default="ours-plain", choices=OURS, help="the teacher's recipe")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the teacher's and the students' training seed")
    parser.add_argument("--project", default=None, help="the baked project of an earlier run: trained runs are kept")
    parser.add_argument("--out", default=str(RESULTS / "distill_mnist.jsonl"))
    args = parser.parse_args()
    students = tuple(args.students.split(","))
    assert set(students) <= set(STUDENTS), f"--students: choose among {STUDENTS}"
    levels = [float(level) for level in args.levels.split(",")]
    torch.set_num_threads(2)
    out = Path(args.out).resolve()
    images, labels = load_mnist(MNIST)
    scorer, real = trained_scorer(images, labels, None)
    print(f"scorer: held-out accuracy {real['accuracy']:.3f}, real digits recognised: {real['confident']:.3f}",
          flush=True)
    if args.project:
        project = Path(args.project).resolve()
        sys.path.insert(0, str(project / "src"))
    else:
        from _baked import import_baked_package

        project = import_baked_package(dataset="mnist")
    print(f"project: {project} (resume with --project)", flush=True)
    os.chdir(project)
    from diffusion_lab.diffusion.guidance import evaluations
    from diffusion_lab.evaluation.quality import reference_statistics
    from diffusion_lab.runs import load_run
    from diffusion_lab.storage import save_atomically

    data_file = save_atomically({"data": images, "labels": labels}, project / "mnist10k.pt")
    extractor = ScorerFeatures(scorer)
    reference = reference_statistics(images, extractor, project / "reference.pt", 500, 10000, torch.device("cpu"))
    trained = {}
    if not (project / "runs" / "teacher" / "checkpoints").is_dir():
        teacher = train_ours("teacher", data_file, args.budget, None, [*OURS[args.teacher], f"seed={args.seed}"],
                             torch.device("cpu"))
        trained["teacher"] = {"train_seconds": teacher["train_seconds"]}     # its steps: trained_steps below
    for method in students:
        if not (project / "runs" / method / "checkpoints").is_dir():
            trained[method] = train_student(method, args.student_steps, args.pairs, args.seed)
    noise = torch.randn((args.samples, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    search_noise = torch.randn((500, 1, 32, 32), generator=torch.Generator().manual_seed(1))
    rows, grids = [], []
    teacher_model = load_run("runs/teacher")[0]
    per_call = evaluations(teacher_model.guided(1, teacher_model.config.sampling.guidance))
    for name in ("teacher", *students):
        model, _ = load_run(f"runs/{name}")
        runs = [(steps, {}) for steps in ((20, *STEPS) if name == "teacher" else STEPS)]
        if model.config.sampling.sampler == "consistency":
            for steps in STEPS[1:]:
                fids = {level: scored(draw(model, search_noise, steps, sigma_min=level)[0], reference,
                                      extractor)[0]["fid"] for level in levels}
                print(f"{name} at {steps} steps, FID on the search noise by lowest level: {fids}", flush=True)
                best = min(fids, key=fids.get)
                if best != model.config.sampling.sigma_min:
                    runs.append((steps, {"sigma_min": best}))
        for steps, searched in runs:
            x, nfe = draw(model, noise, steps, **searched)
            quality, drawn = scored(x, reference, extractor)
            row = {"model": name, "seed": model.config.seed, "sampler": model.config.sampling.sampler, "steps": steps,
                   "nfe": nfe, "sigma_min": searched.get("sigma_min", model.config.sampling.sigma_min),
                   "searched": bool(searched),
                   **trained.get(name, {}), "trained_steps": model.origin["step"],
                   "teacher_evaluations": 0 if name == "teacher" else teacher_evaluations(name, model.config, per_call),
                   **quality, **judge(scorer, x), "machine": machine(torch.device("cpu"))}
            print(json.dumps(row), flush=True)
            rows.append(row)
            level = f" to {searched['sigma_min']:g}" if searched else ""
            grids.append((f"{name}, {steps} step{'s' * (steps > 1)}{level}: FID {quality['fid']:.1f}", drawn[:64]))
    with out.open("a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    save_grids(grids, out.with_suffix(".png"))
    print(f"results: {out} and {out.with_suffix('.png')}")


def save_grids(grids: list, path: Path) -> None:
    """The 8x8 grids of every row, four to a line, each titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(grids) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, images) in zip(axes.flat, grids):
        side = math.isqrt(min(64, len(images)))           # 8 but in a smoke run of fewer samples
        grid = images[:side**2, 0].reshape(side, side, 32, 32).permute(0, 2, 1, 3).reshape(32 * side, 32 * side)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
