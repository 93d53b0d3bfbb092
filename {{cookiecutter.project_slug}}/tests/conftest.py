import shutil
from pathlib import Path

import pytest
import torch

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def few_threads():
    torch.set_num_threads(2)


@pytest.fixture
def project_dir(tmp_path, monkeypatch):
    """A scratch working directory with the project's configs, so runs/ lands in tmp_path."""
    shutil.copytree(PROJECT / "configs", tmp_path / "configs")
{%- if cookiecutter.conditioning == "clusters" %}
    # This project labels its data by k-means clusters (conditioning=clusters); the tests ask for
    # clusters where they test them, and elsewhere keep the labels their data has, if any.
    (tmp_path / "configs" / "local.yaml").write_text("data:\n  clusters: 0\n")
{%- endif %}
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def digits_run(project_dir):
    """A tiny class-conditional run on the scikit-learn digits, trained 10 steps."""
    from {{ cookiecutter.package_name }}.cli import main

    assert main(["train", "experiment=digits", "logger=csv", "name=digits", "model.conditional=true",
                 "model.unet.channels=8", "data.batch_size=32", "trainer.max_steps=10",
                 "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000"]) == 0
    return "runs/digits"


def straight_and_resumed(args: list[str], steps: int = 6) -> tuple[dict, dict]:
    """The last checkpoints of ``train args`` run ``steps`` steps straight (runs/straight) and run
    half of them, then resumed to the end (runs/cut): a resumed run must end as the straight one."""
    from {{ cookiecutter.package_name }}.cli import main

    assert main(["train", *args, "name=straight", f"trainer.max_steps={steps}"]) == 0
    assert main(["train", *args, "name=cut", f"trainer.max_steps={steps // 2}"]) == 0
    assert main(["train", *args, "name=cut", f"trainer.max_steps={steps}"]) == 0
    return tuple(torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=True) for name in ("straight", "cut"))
