"""Few-step students beside their teacher at a few network evaluations: samples from the same
noise, and how far each lands from the teacher's own sample at full cost (its sampling section).

    python few_steps.py teacher=runs/digits student=runs/digits-reflow[,runs/digits-cd,...] [steps=1,2,4] [n=256]

Writes <teacher>/few_steps/: few_steps.json, with for each model and number of steps the sampler,
the network evaluations per sample and the RMS distance (per value, images in [-1, 1]) from the
teacher's full-cost sample of the same noise, and few_steps.png, 16 samples of each. Every model
samples as its own sampling section says but for the steps: the teacher with its sampler and
guidance, a student (which learnt the guided teacher) with its own sampler, without guidance.
"""
import importlib
import json
import sys
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def project_package() -> str:
    """The package of the project in the current folder."""
    found = sorted(Path("src").glob("*/cli.py"))
    if not found:
        sys.exit("run few_steps.py in your project's folder (the one holding src/ and configs/)")
    return found[0].parent.name


PACKAGE = project_package()
runs = importlib.import_module(f"{PACKAGE}.runs")
config = importlib.import_module(f"{PACKAGE}.config")


def draw(model, noise: torch.Tensor, steps: int | None = None):
    """Samples of ``model`` from ``noise`` with its own sampling section (or that many steps)."""
    sampling = config.run_config(model.config, "sampling", {"steps": steps} if steps else {}).sampling
    return model.sample(len(noise), None, sampling, noise=noise), sampling


def main(argv: list[str]) -> None:
    args = dict(argument.split("=", 1) for argument in argv)
    if not {"teacher", "student"} <= args.keys():
        sys.exit(__doc__)
    teacher, teacher_run = runs.load_run(args["teacher"])
    students = [(path, runs.load_run(path)[0]) for path in args["student"].split(",")]
    n, steps = int(args.get("n", 256)), [int(k) for k in args.get("steps", "1,2,4").split(",")]
    noise = torch.randn((n, *teacher.data_shape), generator=torch.Generator().manual_seed(0))
    reference, sampling = draw(teacher, noise)
    rows, pictures = [], []
    models = [("teacher", args["teacher"], teacher, [None, *steps])]
    models += [(f"{model.config.distill.method} student", path, model, steps) for path, model in students]
    for name, path, model, counts in models:
        for count in counts:
            result, sampling = draw(model, noise, count)
            rms = (result.x - reference.x).square().mean().sqrt().item()
            rows.append({"model": name, "run": path, "sampler": sampling.sampler, "steps": sampling.steps,
                         "nfe": result.nfe, "rms_from_teacher": round(rms, 4)})
            plural = "s" if sampling.steps > 1 else ""
            title = (f"{name}: {sampling.sampler}, {sampling.steps} step{plural}, {result.nfe} NFE "
                     f"(RMS from the teacher's {reference.nfe}-NFE sample {rms:.3f})")
            pictures.append((title, result.x[:16]))
    out = teacher_run.root / "few_steps"
    out.mkdir(parents=True, exist_ok=True)
    (out / "few_steps.json").write_text(json.dumps(rows, indent=1))
    save_rows(pictures, out / "few_steps.png")
    for row in rows:
        print(f"{row['model']:16} {row['sampler']:11} {row['steps']:3} steps {row['nfe']:3} NFE   "
              f"RMS from the teacher {row['rms_from_teacher']:.3f}")
    print(f"wrote {out}/few_steps.json and few_steps.png")


def save_rows(pictures: list, path: Path) -> None:
    """One titled row of images per entry."""
    fig, axes = plt.subplots(len(pictures), 1, figsize=(10, 1.25 * len(pictures)), squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], pictures):
        framed = torch.nn.functional.pad(images.float().clamp(-1, 1), (1, 1, 1, 1), value=-1)
        row = torch.cat(list(framed), 2)                         # C x H x (16 W), side by side
        ax.imshow(((row.permute(1, 2, 0) + 1) / 2).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1:])
