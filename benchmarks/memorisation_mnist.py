"""The memorisation transition on MNIST: examples/memorisation at a real size.

Data: the MNIST 10k test set (../shared/data/mnist), 28x28, as a tensor file; 5% held out
(500 images) calibrates the copy criterion, and the other 9,500 give two disjoint halves of
4,750 at the largest size. The default project is baked, and the example's transition.py trains
its recipe (an unconditional U-Net of width 16, batch 64) on 10, 100, 1,000 and 4,750 images,
twice each on disjoint examples, for --steps steps, then judges 200 samples per size.

    python benchmarks/memorisation_mnist.py [--steps 2000] [--sizes 10,100,1000,4750]

The table, the figure and each size's pictures are copied into benchmarks/results/memorisation-mnist/.
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _baked import REPO, import_baked_package  # noqa: E402
from quality_per_compute import MNIST, RESULTS, load_mnist  # noqa: E402

EXPERIMENT = """\
name: mnist-memorisation
data:
  name: tensor_file
  root: mnist10k.pt
  clusters: 0
  image_size: 28
  channels: 1
  hflip: false
  val_fraction: 0.05
model:
  name: unet
  conditional: false
  unet:
    channels: 16
    channel_mult: [1, 2, 2]
    blocks_per_level: 1
    attention_levels: [2]
optim:
  lr: 1e-3
  warmup_steps: 200
trainer:
  max_steps: {steps}
  val_every_n_steps: {steps}
  sample_every_n_steps: {steps}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sizes", default="10,100,1000,4750")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--project", default=None, help="a project baked by an earlier run, to resume in")
    args = parser.parse_args()
    project = Path(args.project) if args.project else import_baked_package()
    print(f"project: {project} (resume with --project)", flush=True)
    images, labels = load_mnist(MNIST)
    torch.save({"data": images[:, :, 2:-2, 2:-2].contiguous(), "labels": labels}, project / "mnist10k.pt")
    (project / "configs" / "experiments" / "mnist-memorisation.yaml").write_text(EXPERIMENT.format(steps=args.steps))
    shutil.copy(REPO / "examples" / "memorisation" / "transition.py", project / "transition.py")
    subprocess.run([sys.executable, "transition.py", "experiment=mnist-memorisation", f"sizes={args.sizes}",
                    f"samples={args.samples}", "logger=csv"], cwd=project, check=True,
                   env={**os.environ, "PYTHONPATH": str(project / "src")})
    out = RESULTS / "memorisation-mnist"
    shutil.copytree(project / "runs" / "mnist-memorisation-transition", out, dirs_exist_ok=True)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
