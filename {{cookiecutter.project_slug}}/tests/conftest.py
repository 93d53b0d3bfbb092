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
    monkeypatch.chdir(tmp_path)
    return tmp_path
