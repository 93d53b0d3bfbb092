"""The newcomer path, tried as a new user would: both notebooks executed by a real kernel, and
every command of the generated README run as written, in the order written."""
import os
import re
import shlex
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, run_commands

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TINY_FEATURES = """
import torch

class Features(torch.nn.Module):
    '''A fixed random projection of the images: a stand-in for Inception, which is not here offline.'''
    def __init__(self):
        super().__init__()
        self.project = torch.nn.Linear(64, 16)
        torch.nn.init.normal_(self.project.weight, std=0.1, generator=torch.Generator().manual_seed(0))

    def forward(self, images):
        return self.project(torch.nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), 8).flatten(1))
"""


def execute(path, parameters: str, cwd):
    """Run a notebook top to bottom in a fresh Python kernel, its parameters cell replaced."""
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = parameters
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def outputs(notebook, kind: str) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if kind in o.get("data", {})]


def test_the_projects_colab_notebook_runs_top_to_bottom(bake):
    project = bake()
    (project / "tiny_features.py").write_text(TINY_FEATURES)
    subprocess.run([sys.executable, "-c", STAND_INS], cwd=project, check=True,
                   env={**os.environ, "PYTHONPATH": str(project / "src")})
    notebook = execute(project / "notebooks" / "colab.ipynb", f"""
PROJECT = {str(project)!r}
DATA = "digits"
NAME = "nb"
BUDGET = "00:00:10:00"
MAX_STEPS = 30
EXTRA = ["model.unet.channels=8", "data.batch_size=16", "logger=csv", "trainer.sample_every_n_steps=10",
         "trainer.val_every_n_steps=1000", "model.conditional=true"]
FID_SAMPLES = 20
FID_SETTINGS = ["extractor=custom", "extractor_module=tiny_features:Features", "batch_size=10",
                "kid_subset_size=10", "steps=2"]
""", project)
    assert len(outputs(notebook, "image/png")) == 4        # data preview, training grid, samples, denoising
    run = project / "runs" / "nb"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "fid" / "evaluation.json").is_file()
    assert (project / "exports" / "nb" / "model.safetensors").is_file()
    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "precision   trainer.precision=" in text and "finished   step 30 of 30" in text


def test_the_template_notebook_bakes_a_project(tmp_path):
    execute(REPO / "notebooks" / "colab.ipynb", f"""
TEMPLATE = {str(REPO)!r}
WHERE = {str(tmp_path)!r}
ANSWERS = {{"project_name": "Flowers on Colab", "dataset": "image_folder", "hardware": "colab-t4"}}
""", tmp_path)
    project = tmp_path / "flowers-on-colab"
    assert (project / "notebooks" / "colab.ipynb").is_file()
    assert "preset: colab-t4" in (project / "configs" / "config.yaml").read_text()


def readme_commands(readme: str, program: str) -> list[str]:
    """The command lines of the README's bash blocks that call the project, in order, without
    their comments."""
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(program + " ")]


# Lines not run: FID's protocol needs tens of thousands of samples (tests/test_evaluation.py runs
# it small, with a stand-in extractor).
NOT_RUN = ("evaluate ",)

# What the README's commands download or take from the user, as tiny stand-ins of the same kinds
# and shapes: the pretrained pipelines it saves from the hub (the project's own test helpers make
# them), 32 random "digits" in MNIST's files where torchvision looks for them, and tensor files
# of paths with their start and goal and of sets of 3 to 6 atoms.
STAND_INS = """
import sys
from pathlib import Path
import numpy as np
import torch
paths = torch.randn(64, 2, 16).cumsum(-1)
torch.save({"data": paths, "conditions": torch.cat([paths[..., 0], paths[..., -1]], 1)}, "paths.pt")
torch.save({"data": torch.randn(64, 6, 3), "mask": torch.arange(6) < torch.randint(3, 7, (64, 1))}, "atoms.pt")
sys.path.insert(0, "tests")
from test_pretrained import pixel_pipeline, text_pipeline
pixel_pipeline("models/ddpm-cifar10-32", channels=3, size=32)
text_pipeline("models/stable-diffusion", vae_levels=4, attention_level=1)   # 8x as Stable Diffusion's: 512 pixels, 64x64 latents
raw = Path("data/MNIST/raw")
raw.mkdir(parents=True)
digits = (np.random.default_rng(0).random((32, 28, 28)) * 255).astype(np.uint8)
labels = (np.arange(32) % 10).astype(np.uint8)
for split in ("train", "t10k"):
    (raw / f"{split}-images-idx3-ubyte").write_bytes(np.array([2051, 32, 28, 28], ">i4").tobytes() + digits.tobytes())
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(np.array([2049, 32], ">i4").tobytes() + labels.tobytes())
"""


def test_the_generated_readme_commands_run_as_written_in_order(bake, tmp_path):
    """Each command line of the README, quoting and all, in order, on a scratch home folder with
    a folder of pictures; configs/local.yaml makes every run the debug preset's 20 steps, sampled
    in 4 unless a command asks for more, without the preset's anomaly detection (which doubles the
    time of a training step; tests/test_scale.py checks that the preset turns it on)."""
    project = bake()
    readme = (project / "README.md").read_text()
    commands = readme_commands(readme, "diffusion_lab")
    assert len(commands) >= 20
    for line in commands:                    # zsh reads unquoted brackets as a file pattern
        for word in re.findall(r"(?:'[^']*'|\S)+", line):
            assert "[" not in word or word.startswith("'"), f"unquoted brackets in: {line}"
    home = tmp_path / "home"
    pictures = home / "pictures"
    pictures.mkdir(parents=True)
    for i in range(40):
        Image.new("RGB", (300, 260), (6 * i, 255 - 6 * i, 128)).save(pictures / f"{i:02d}.png")
    (project / "tiny_features.py").write_text(TINY_FEATURES)
    subprocess.run([sys.executable, "-c", STAND_INS], cwd=project, check=True,
                   env={**os.environ, "PYTHONPATH": str(project / "src")})
    (project / "configs" / "local.yaml").write_text(
        "preset: debug\nlogger: csv\ntrainer:\n  detect_anomaly: false\nsampling:\n  steps: 4\n"
        "evaluation:\n  extractor: custom\n"
        "  extractor_module: tiny_features:Features\n")
    runnable = [line for line in commands if not line.split(" ", 1)[1].startswith(NOT_RUN)]
    run_commands(project, [shlex.split(line)[1:] for line in runnable],
                 env={"HOME": str(home), "PYTHONPATH": os.pathsep.join([str(project / "src"), str(project)])})
    for path in ("runs/toy2d/generated/trajectory.png", "runs/mine/inspect/preview.png", "runs/mine/generated/samples.png",
                 "exports/digits/model.safetensors", "runs/mnist/generated/samples.png",
                 "runs/digits-by-class/illusion/anagram.png",
                 "runs/pretrained/stable-diffusion/illusion/anagram.png", "exports/finetune/model_index.json",
                 "exports/pictures-cd/model_index.json", "runs/digits-lora/checkpoints/last.ckpt",
                 "runs/dreambooth/class_images/preview.png", "exports/dreambooth/generated/samples.png",
                 "exports/dreambooth-pipeline/model_index.json", "runs/pictures-ae/reconstructions.png",
                 "runs/pictures-latent/generated/samples.png", "runs/pictures-sd/checkpoints/last.ckpt",
                 "runs/paths/generated/trajectory.gif", "runs/atoms/checkpoints/last.ckpt"):
        assert (project / path).is_file(), path
    diffusers = pytest.importorskip("diffusers")          # the adapters as a diffusers user loads them
    pipeline = diffusers.StableDiffusionPipeline.from_pretrained(project / "models/stable-diffusion")
    pipeline.load_lora_weights(project / "exports/dreambooth")
    assert any("lora" in name for name, _ in pipeline.unet.named_parameters())


def test_the_template_readme_commands_run_in_order(tmp_path):
    """The template README's "Make your own project" block in bash, line by line in one shell,
    in a copy of this repository sharing its .venv. Three lines are stood in for, since they
    would install or train for minutes: `pip install -e` is PYTHONPATH=src (what the editable
    install gives), `pytest` runs one test file, and training takes the debug preset's 20 steps
    (through configs/local.yaml, as a user would set a machine's own settings)."""
    import shutil

    if not (REPO / ".venv" / "installed").is_file():
        pytest.skip("no .venv made by `make .venv/installed` to share")
    block = re.search(r"## Make your own project\n\n```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)[1]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    stand_ins = {'pip install -e ".[dev]"': "export PYTHONPATH=$PWD/src && echo 'preset: debug' > configs/local.yaml",
                 "pytest": "pytest -q -p no:cacheprovider tests/test_config.py",
                 "cookiecutter .": "printf '\\n%.0s' $(seq 20) | cookiecutter ."}
    copy = tmp_path / "template"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", "demo", "gpu", ".whl", "__pycache__"))
    (copy / ".venv").symlink_to(REPO / ".venv")
    script = "set -euo pipefail\ndiffusion_lab() { python -m diffusion_lab \"$@\"; }\n" + "\n".join(
        f"echo '+ {line}'\n{stand_ins.get(line, line)}" for line in lines)
    result = subprocess.run(["bash", "-c", script], cwd=copy, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (copy / "my-projects" / "diffusion-lab" / "configs" / "config.yaml").is_file()
    assert (copy / "diffusion-lab" / "runs" / "digits" / "checkpoints" / "last.ckpt").is_file()
