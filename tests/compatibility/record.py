"""Record what checkpoints of one format draw, so that later code can be held to it.

    python tests/compatibility/record.py record format-1

bakes the template in this checkout, trains the tiny runs of ``RUNS`` (30 steps each, fixed
seed), exports one, runs every command of ``DRAWS`` on them and saves, under
``tests/compatibility/<format>/``: the runs' checkpoints, the export, and in ``expected/`` what
each command wrote (sample tensors, and the pictures of the commands that save no tensor).
``tests/test_compatibility.py`` bakes the template as it is now, draws the same from the saved
checkpoints and trains the same runs, and compares. Format 1 was recorded with the code of
commit fa19490, before the model-seam restructuring (issue 26).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

TINY = ["experiment=digits", "model.unet.channels=8", "data.batch_size=32", "trainer.max_steps=30",
        "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000", "trainer.first_grid_minutes=0",
        "logger=csv"]
# name -> the train command's key=value pairs (in the default bake: digits, conditioning=clusters)
RUNS = {
    "clusters": [*TINY, "name=clusters"],
    "class": [*TINY, "name=class", "data.clusters=0"],
    "uncond": [*TINY, "name=uncond", "data.clusters=0", "model.conditional=false"],
    "toy": ["experiment=toy2d", "name=toy", "model.mlp.width=32", "data.clusters=0", "model.conditional=false",
            "trainer.max_steps=30", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000",
            "trainer.first_grid_minutes=0", "logger=csv", "data.toy_samples=500"],
}
EXPORT = ["export", "run=runs/class", "out=exports/class"]
# id -> (command line, the files it writes that are compared)
DRAWS = {
    "clusters": (["sample", "run=runs/clusters", "n=8", "steps=5"], ["runs/clusters/generated/samples.pt"]),
    "class-labels": (["sample", "run=runs/class", "n=8", "steps=5", "labels=[3,5]", "out=out/class-labels"],
                     ["out/class-labels/samples.pt"]),
    "class-conditions": (["sample", "run=runs/class", "n=4", "steps=5", "conditions=[[3,1.5],[8,1.0]]",
                          "out=out/class-conditions"], ["out/class-conditions/samples.pt"]),
    "uncond-heun-churn": (["sample", "run=runs/uncond", "n=8", "steps=4", "sampler=heun", "churn=10",
                           "out=out/uncond-heun"], ["out/uncond-heun/samples.pt"]),
    "uncond-ddpm": (["sample", "run=runs/uncond", "n=8", "steps=6", "sampler=ddpm", "seed=3",
                     "out=out/uncond-ddpm"], ["out/uncond-ddpm/samples.pt"]),
    "export": (["sample", "run=exports/class", "n=8", "steps=5"], ["exports/class/generated/samples.pt"]),
    "toy-generalized": (["sample", "run=runs/toy", "n=64", "steps=5", "sampler=generalized", "gamma=2", "mu=0.5",
                         "out=out/toy"], ["out/toy/samples.pt"]),
    "illusion": (["illusion", "run=runs/class", "labels=[6,9]", "n=2", "steps=5", "out=out/illusion"],
                 ["out/illusion/anagram.pt"]),
    "hybrid": (["illusion", "run=runs/class", "kind=hybrid", "labels=[0,1]", "n=2", "steps=5", "out=out/hybrid"],
               ["out/hybrid/hybrid.pt"]),
    "interpolate-images": (["interpolate", "run=runs/class", "between=images", "frames=3", "steps=5",
                            "out=out/interpolate"], ["out/interpolate/images.png"]),
    "interpolate-labels": (["interpolate", "run=runs/clusters", "between=labels", "labels=[0,1]", "frames=3",
                            "steps=5", "out=out/interpolate"], ["out/interpolate/labels.png"]),
    "guidance-grid": (["guidance-grid", "run=runs/class", "labels=[1,2]", "weights=[0,2]", "steps=5",
                       "out=out/guidance/grid.png"], ["out/guidance/grid.png"]),
    "repaint": (["restore", "run=runs/class", "method=repaint", "images=[0,1]", "steps=5", "resample=2",
                 "out=out/restore"], ["out/restore/repaint.png"]),
    "superres": (["restore", "run=runs/uncond", "method=superres", "images=[0,1]", "steps=5", "out=out/restore"],
                 ["out/restore/superres.png"]),
    "dps": (["restore", "run=runs/class", "method=dps", "images=[0,1]", "steps=5", "labels=[0]",
             "out=out/restore"], ["out/restore/dps.png"]),
    "sdedit": (["restore", "run=runs/clusters", "method=sdedit", "images=[0,1]", "steps=5", "out=out/restore"],
               ["out/restore/sdedit.png"]),
    "visualize": (["visualize", "run=runs/class", "n=2", "steps=5", "columns=3", "out=out/visualize"],
                  ["out/visualize/denoising.png"]),
}


def read_output(path: Path) -> torch.Tensor:
    """A sample tensor as saved, or a picture's pixels."""
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())


def draw_all() -> list[str]:
    """Run every command of ``DRAWS`` in this process, in the baked project it stands in; the
    files they wrote, relative to it."""
    from diffusion_lab.cli import main

    written = []
    for key, (args, files) in DRAWS.items():
        assert main(args) == 0, key
        written += files
    return written


def machine() -> dict:
    """What bit-for-bit equality depends on: the same torch and the same CPU kernels."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def train_all() -> None:
    """Train every run of ``RUNS`` in this process, in the baked project it stands in."""
    from diffusion_lab.cli import main

    for name, args in RUNS.items():
        assert main(["train", *args]) == 0, name


def record(store: Path) -> None:
    from cookiecutter.main import cookiecutter

    with tempfile.TemporaryDirectory() as scratch:
        project = Path(cookiecutter(str(REPO), no_input=True, output_dir=scratch))
        sys.path.insert(0, str(project / "src"))
        os.chdir(project)
        from diffusion_lab.cli import main

        train_all()
        assert main(EXPORT) == 0
        written = draw_all()
        if store.exists():
            shutil.rmtree(store)
        for file in written:
            (store / "expected" / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(project / file, store / "expected" / file)
        for name in RUNS:
            (store / "runs" / name / "checkpoints").mkdir(parents=True)
            shutil.copy(project / "runs" / name / "checkpoints" / "last.ckpt", store / "runs" / name / "checkpoints")
        shutil.copytree(project / "exports" / "class", store / "exports" / "class",
                        ignore=shutil.ignore_patterns("generated"))
        (store / "machine.json").write_text(json.dumps(machine(), indent=1) + "\n")
    print(f"recorded {len(written)} outputs of {len(RUNS)} runs in {store}")


if __name__ == "__main__":
    {"record": lambda: record(HERE / sys.argv[2]), "draw": draw_all, "train": train_all}[sys.argv[1]]()
