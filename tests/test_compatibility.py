"""Checkpoints keep drawing what they drew when they were made, and training from scratch keeps
giving the same weights: what ``tests/compatibility/record.py`` recorded with the code of an
earlier format (format 1: before the model-seam restructuring) is drawn again by the template
as it is now, from the same checkpoints, and compared. On the machine kind and torch that
recorded it the comparison is bit for bit; elsewhere CPU kernels round differently, and it is
to a tolerance."""
import json
import shutil

import numpy as np
import torch
from PIL import Image

from conftest import REPO, run_in

HERE = REPO / "tests" / "compatibility"
STORE = HERE / "format-1"
SAME_MACHINE = json.loads((STORE / "machine.json").read_text()) == {
    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def read(path):
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.int16))


def assert_same(new, old, what):
    if SAME_MACHINE:
        assert torch.equal(new, old), f"{what}: differs by up to {(new - old).abs().max().item()}"
    else:
        torch.testing.assert_close(new, old, rtol=0, atol=1e-3 if new.is_floating_point() else 1, msg=what)


def test_format_1_checkpoints_and_exports_draw_what_they_drew_then(bake):
    project = bake()
    for folder in ("runs", "exports"):
        shutil.copytree(STORE / folder, project / folder, dirs_exist_ok=True)
    run_in(project, str(HERE / "record.py"), "draw")
    expected = sorted(path for path in (STORE / "expected").rglob("*") if path.is_file())
    assert len(expected) == 17
    for path in expected:
        relative = path.relative_to(STORE / "expected")
        assert_same(read(project / relative), read(path), str(relative))


def test_training_from_scratch_gives_the_weights_and_ema_of_format_1(bake):
    project = bake()
    run_in(project, str(HERE / "record.py"), "train")
    for folder in (STORE / "runs").iterdir():
        new = torch.load(project / "runs" / folder.name / "checkpoints" / "last.ckpt", weights_only=True)
        old = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
        assert new["global_step"] == old["global_step"] == 30
        assert new["state_dict"].keys() == old["state_dict"].keys()
        assert any(key.startswith("ema.") for key in old["state_dict"])
        for key, value in old["state_dict"].items():
            assert_same(new["state_dict"][key], value, f"{folder.name}: {key}")
