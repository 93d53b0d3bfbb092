"""The README's "Extend it" recipes, followed as written: a copy of the package gets the README's
new files and its table entries, then trains and samples a network for sequences and runs a task
command of its own, in a fresh process."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PROJECT

PACKAGE = "{{ cookiecutter.package_name }}"


def readme_recipes() -> list[str]:
    """The README's code blocks that name a file of the package on their first line."""
    text = (PROJECT / "README.md").read_text()
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.S)
            if block.startswith(f"# src/{PACKAGE}/")]


def follow(block: str, package: Path) -> None:
    """A block headed by a file's path is that new file; one headed "path: ..." adds its imports
    to that file's own imports and its table lines to the table, replacing the line with the
    same key."""
    header, *lines = block.rstrip().splitlines()
    path = package / header.removeprefix(f"# src/{PACKAGE}/").split(":")[0]
    if ":" not in header:
        path.write_text("\n".join(lines) + "\n")
        return
    text = path.read_text().splitlines()
    for line in lines:
        key = line.split(":")[0]
        same = [i for i, old in enumerate(text) if old.startswith(key + ":")]
        if line.startswith("from "):
            text.insert(next(i for i, old in enumerate(text) if old.startswith("from .")), line)
        elif same:
            text[same[0]] = line
        else:
            text.insert(next(i for i, old in enumerate(text) if " = {" in old) + 1, line)
    path.write_text("\n".join(text) + "\n")


def run(project: Path, *lines: list[str]) -> str:
    """Each command line in turn through the copy's ``main``, in one fresh interpreter (each in its
    own would import torch and Lightning again); what they printed."""
    script = (f"import sys\nfrom {PACKAGE}.cli import main\n"
              "for line in sys.argv[1:]:\n    assert main(line.split()) == 0, line\n")
    result = subprocess.run([sys.executable, "-c", script, *map(" ".join, lines)], cwd=project, capture_output=True,
                            text=True, env={"PYTHONPATH": str(project / "src"), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.subprocess
def test_the_readme_adds_a_network_for_sequences_and_a_task_command(tmp_path):
    recipes = readme_recipes()
    assert len(recipes) == 4
    project = tmp_path / "project"
    shutil.copytree(PROJECT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / "configs", project / "configs")
    (project / "configs" / "local.yaml").write_text("data:\n  clusters: 0\n")
    for block in recipes:
        follow(block, project / "src" / PACKAGE)

    t = torch.linspace(0, 6.28, 32)
    waves = torch.stack([torch.stack([torch.sin(t + phase), torch.cos(2 * t + phase)]) for phase in torch.rand(64)])
    torch.save({"data": waves}, project / "sequences.pt")            # 64 sequences of 2 channels, 32 steps
    quick = ["logger=csv", "trainer.max_steps=3", "trainer.sample_every_n_steps=3", "trainer.val_every_n_steps=1000",
             "data.batch_size=16", "model.conditional=false"]
    printed = run(project, ["train", "name=waves", "model.name=mlp", "model.mlp.width=16", "data.name=tensor_file",
                            "data.root=sequences.pt", *quick],
                  ["sample", "run=runs/waves", "n=8", "steps=4"],
                  ["train", "experiment=digits", "name=digits", "model.unet.channels=8", *quick],
                  ["threshold", "run=runs/digits", "n=4", "steps=3", "percentile=0.9"],
                  ["--help"])
    weights = torch.load(project / "runs/waves/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert weights["ema.net.inp.weight"].shape == (16, 2, 3)          # a convolution over time: the new network
    assert (project / "runs/waves/generated/samples.png").is_file()
    assert torch.load(project / "runs/waves/generated/samples.pt").shape == (8, 2, 32)
    assert "threshold run=DIR" in printed
    assert (project / "runs/digits/threshold/samples.png").is_file()
    assert (project / "runs/digits/threshold/made_by.yaml").is_file()
