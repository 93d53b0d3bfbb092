"""Score distillation on a class-conditional MNIST model: SDS against SDI (issue 29's check),
judged by a digit classifier, with the model's own samples as the reference.

Protocol:
- Model: the default project baked for MNIST and trained with its ``experiment=mnist`` recipe
  (2,000 steps of 64, about ten minutes on a 2-core CPU) on the MNIST 10k test set
  (../shared/data/mnist), unless ``--project`` names a project holding runs/mnist already.
- Each method optimises 10 images from zeros, one per class, for ``--steps`` steps with the
  ``score-distill`` command's defaults (pixels, guidance 3), for three seeds: 30 images.
  The reference: 30 samples of the model (dpmpp_2m, 20 steps, guidance 3).
- Scores, by quality_per_compute.py's scorer (a digit classifier with an eleventh class, "not a
  digit", trained on smooth blobs and averaged digits): the share read as the class asked for
  (its most likely digit, the eleventh class aside), the share it calls not a digit (blurred,
  over-smoothed or broken images), and its strict verdict (read as the class asked for with
  confidence > 0.9); and sharpness, the mean absolute difference between neighbouring pixels
  divided by real digits'. A method's images are kept: a second run scores them again.

    .venv/bin/python benchmarks/score_distillation_mnist.py --scorer /tmp/scorer.pt

Writes one JSON line per method to benchmarks/results/score_distillation_mnist.jsonl and the
images, one row per method and seed, to benchmarks/results/score_distillation_mnist.png.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _baked import import_baked_package  # noqa: E402
from quality_per_compute import judge, load_mnist, machine, trained_scorer  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SEEDS = (0, 1, 2)


def sharpness(x: torch.Tensor) -> float:
    """Mean absolute difference between horizontal and vertical neighbours, images in [-1, 1]."""
    x = x.clamp(-1, 1)
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()).item() / 2


@torch.no_grad()
def read(scorer, x: torch.Tensor, asked: torch.Tensor) -> dict:
    """The share of images whose most likely digit is the one asked for, and the share the scorer
    calls not a digit (its eleventh class most likely)."""
    probabilities = scorer(x.clamp(-1, 1)).softmax(1)
    return {"read_as_asked": round((probabilities[:, :10].argmax(1) == asked).float().mean().item(), 3),
            "not_a_digit": round((probabilities.argmax(1) == 10).float().mean().item(), 3)}


def cli(project: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "diffusion_lab", *args], cwd=project, check=True,
                   env={"PYTHONPATH": str(project / "src"), "PATH": "/usr/bin:/bin"})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=None, help="a baked project whose runs/mnist is trained")
    parser.add_argument("--scorer", default=None, help="the scorer's weights: loaded if the file exists, else saved")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    images, labels = load_mnist()
    scorer, real = trained_scorer(images, labels, Path(args.scorer) if args.scorer else None)
    project = Path(args.project) if args.project else import_baked_package(dataset="mnist")
    sys.path.insert(0, str(project / "src"))
    if not (project / "runs/mnist/checkpoints/last.ckpt").is_file():
        from diffusion_lab.storage import save_atomically

        data = save_atomically({"data": images, "labels": labels}, project / "mnist10k.pt")
        cli(project, "train", "experiment=mnist", "data.name=tensor_file", f"data.root={data}", "logger=csv")
    from diffusion_lab.runs import load_run

    real_sharpness = sharpness(images[:1000].float() / 127.5 - 1)
    asked = torch.arange(10).repeat(len(SEEDS))
    rows, pictures = [], []
    for method in ("sds", "sdi"):
        drawn = []
        for seed in SEEDS:
            out = f"runs/mnist/score_distill/bench-{method}-{seed}"
            if not (project / out / "result.pt").is_file():
                cli(project, "score-distill", "run=runs/mnist", f"method={method}", "labels=[0,1,2,3,4,5,6,7,8,9]",
                    "n=10", f"steps={args.steps}", f"seed={seed}", f"out={out}")
            drawn.append(torch.load(project / out / "result.pt").detach())
        rows.append((method, torch.cat(drawn)))
    model, _ = load_run(project / "runs/mnist")
    samples = [model.sample(10, torch.Generator().manual_seed(seed), labels=torch.arange(10)).x for seed in SEEDS]
    rows.append(("samples (dpmpp_2m, 20 steps)", torch.cat(samples)))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "score_distillation_mnist.jsonl", "a") as log:
        for name, x in rows:
            row = {"method": name, "steps": args.steps, "guidance": 3.0, **read(scorer, x, asked),
                   "strict": judge(scorer, x, asked)["class_match"],
                   "sharpness_vs_real": round(sharpness(x) / real_sharpness, 3), "scorer": real,
                   "machine": machine(torch.device("cpu"))}
            print(json.dumps(row))
            log.write(json.dumps(row) + "\n")
            pictures.append(x)
    from diffusion_lab.pixels import to_uint8
    from diffusion_lab.visualize import save_labelled_grid

    tiles = to_uint8(torch.cat(pictures).clamp(-1, 1))
    names = [f"{name} seed {seed}" for name, _ in rows for seed in SEEDS]
    save_labelled_grid(tiles, names, [str(k) for k in range(10)], RESULTS / "score_distillation_mnist.png",
                       f"score distillation on runs/mnist, {args.steps} steps, guidance 3")


if __name__ == "__main__":
    main()
