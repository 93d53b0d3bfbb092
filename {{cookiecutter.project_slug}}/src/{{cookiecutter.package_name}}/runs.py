"""A run directory: everything one training run keeps, laid out in one place.

    runs/<name>/
        config.yaml            the resolved configuration it was trained with
        classes.json           class names, for data with labels
        checkpoints/last.ckpt  model, EMA, optimiser, step, data position and random state
        samples/step_*.png     fixed-seed sample grids written during training
        generated/             what ``sample`` writes
        inspect/               what ``inspect-data`` writes
        tensorboard/ or csv/   the logs

``load_run`` turns a run directory (or a checkpoint file) back into a model ready to sample.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .module import DiffusionModule

RUNS = Path("runs")


class Run:
    """The paths of one run directory (see above)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.classes = self.root / "classes.json"
        self.last_checkpoint = self.root / "checkpoints" / "last.ckpt"
        self.samples = self.root / "samples"
        self.generated = self.root / "generated"
        self.inspect = self.root / "inspect"

    @classmethod
    def named(cls, name: str) -> Run:
        return cls(RUNS / name)

    def checkpoint_to_resume(self, resume: bool) -> Path | None:
        """last.ckpt when the run exists and ``resume`` is set; a finished or interrupted run is
        never overwritten."""
        if not self.last_checkpoint.is_file():
            return None
        if not resume:
            raise ConfigError(f"{self.root} already holds a run; resume it with trainer.resume=true "
                              f"or start another with name=<new name>")
        return self.last_checkpoint

    def save_config(self, cfg: DictConfig, class_names: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, self.config)
        if class_names:
            self.classes.write_text(json.dumps(class_names, indent=1))


def load_run(path: str | Path) -> tuple[DiffusionModule, Run]:
    """The model saved in a run directory's last.ckpt (or in the given .ckpt), in eval mode on
    the CPU, and its run. The caller's random state is left as it was (building the network
    draws initial weights that the checkpoint then replaces)."""
    path = Path(path).expanduser()
    checkpoint = path if path.suffix == ".ckpt" else Run(path).last_checkpoint
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {checkpoint}; pass run=runs/<name> of a trained run or a .ckpt file")
    with torch.random.fork_rng(devices=[]):
        module = DiffusionModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    return module.eval(), Run(checkpoint.parent.parent)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
