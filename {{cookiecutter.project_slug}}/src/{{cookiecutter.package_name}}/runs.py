"""A run directory: everything one training run keeps, laid out in one place.

    runs/<name>/
        config.yaml            the resolved configuration it was trained with
        classes.json           class names, for data with labels
        checkpoints/last.ckpt  model, EMA, optimiser, step, data position and random state
        samples/step_*.png     fixed-seed sample grids written during training
        generated/             what ``sample`` writes
        fid/                   FID and KID: history.jsonl during training, what ``evaluate`` writes
        inspect/               what ``inspect-data`` writes
        tensorboard/ or csv/   the logs

``load_run`` turns a run directory (or a checkpoint file) back into a model ready to sample.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config import dotted_keys
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
        self.fid = self.root / "fid"
        self.inspect = self.root / "inspect"

    @classmethod
    def named(cls, name: str) -> Run:
        return cls(RUNS / name)

    def checkpoint_to_resume(self, cfg: DictConfig, data_shape, class_names: list[str]) -> Path | None:
        """last.ckpt when the run exists and trainer.resume is set, after checking that it can be
        resumed with ``cfg`` (a finished or interrupted run is never overwritten)."""
        if not self.last_checkpoint.is_file():
            return None
        if not cfg.trainer.resume:
            raise ConfigError(f"{self.root} already holds a run; resume it with trainer.resume=true "
                              f"or start another with name=<new name>")
        saved = read_checkpoint(self.last_checkpoint)["hyper_parameters"]
        check_resumable(OmegaConf.create(saved["config"]), cfg, self.root)
        if list(saved["data_shape"]) != list(data_shape) or list(saved["class_names"] or []) != list(class_names):
            raise ConfigError(f"{self.root} was trained on data of shape {saved['data_shape']} with classes "
                              f"{saved['class_names'] or 'none'}; the data now gives {list(data_shape)} and "
                              f"{class_names or 'none'}. Resume with the same data, or start a new run with name=<new name>")
        return self.last_checkpoint

    def save_config(self, cfg: DictConfig, class_names: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, self.config)
        if class_names:
            self.classes.write_text(json.dumps(class_names, indent=1))


def check_resumable(saved: DictConfig, cfg: DictConfig, root: Path) -> None:
    """Refuse changes a resumed run cannot take (the network's shape, and what its output means);
    say which other changed settings now apply."""
    fixed = ("model.name", "model.conditional", f"model.{cfg.model.name}.", "data.image_size", "data.channels",
             "diffusion.objective", "diffusion.sigma_data")
    changes = {key: (OmegaConf.select(saved, key, default=None), OmegaConf.select(cfg, key))
               for key in dotted_keys(cfg) if key not in ("preset", "experiment")}
    changes = {key: (old, new) for key, (old, new) in changes.items() if old != new}
    refused = [f"{key}={new} (trained with {old})" for key, (old, new) in changes.items() if key.startswith(fixed)]
    if refused:
        raise ConfigError(f"{root} cannot resume with {', '.join(refused)}: drop the change, or start a new run "
                          "with name=<new name>")
    if changes:
        print(f"resuming {root} with changed settings: "
              + ", ".join(f"{key}={new} (was {old})" for key, (old, new) in changes.items()))


def read_checkpoint(path: Path) -> dict:
    """A checkpoint of this project, read without running any code it might contain: a weights-
    only load accepts tensors, numbers, strings, lists and dicts, and refuses anything else (a
    pickled object can run any code when loaded, so a shared file is never trusted with that)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:              # a file that is not a checkpoint can fail in many ways
        python_object = re.search(r"GLOBAL (\S+)", str(error))
        if python_object:
            raise ConfigError(f"refusing to load {path}: it holds a Python object ({python_object[1]}), and loading "
                              "one can run any code. This project's checkpoints hold only tensors and plain values; "
                              "load files from sources you trust") from None
        detail = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}" if str(error) else type(error).__name__
        raise ConfigError(f"{path} is not a readable checkpoint (empty, truncated or not a torch file; {detail})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not {"config", "data_shape"} <= hparams.keys() or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is a torch file, but not a checkpoint of this project "
                          "(no state_dict and hyper_parameters with config and data_shape)")
    return checkpoint


def load_run(path: str | Path) -> tuple[DiffusionModule, Run]:
    """The model saved in a run directory's last.ckpt (or in the given .ckpt), in eval mode on
    the CPU, and its run. The caller's random state is left as it was (building the network
    draws initial weights that the checkpoint then replaces)."""
    path = Path(path).expanduser()
    checkpoint = path if path.suffix == ".ckpt" else Run(path).last_checkpoint
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {checkpoint}; pass run=runs/<name> of a trained run or a .ckpt file")
    saved = read_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):
        module = DiffusionModule(**saved["hyper_parameters"])
    try:
        module.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"{checkpoint} does not fit the model its own configuration describes: "
                          f"{str(error).splitlines()[0]}") from None
    return module.eval(), Run(checkpoint.parent.parent)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else the CPU; a device asked for by name must exist here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device; use auto, cpu, cuda, cuda:1 or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False) or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device={name} is not available on this machine; use device=auto or device=cpu")
    return device
