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

An export (``export_run``) is the small folder a trained model is shared as:

    exports/<name>/
        model.safetensors      the EMA weights of the denoiser, tensors only
        model.json             data shape, class names (and cluster sizes), training step and where it came from
        config.yaml            the resolved configuration it was trained with
        README.md              what it is and how to sample it
        preview.png            the run's latest sample grid, when there is one

A run trained from a pretrained diffusers UNet (model.name=pretrained) is exported as a
diffusers pipeline folder instead, which diffusers' ``from_pretrained`` loads as well as we do.

``load_run`` turns a run directory, a checkpoint file, an export folder, or a pretrained
diffusers pipeline (a folder with model_index.json, or ``hf:<hub id>``; its outputs go to
runs/pretrained/<name>/) back into a model ready to sample. Nothing it reads can run code:
checkpoints are loaded weights-only, exports are safetensors, JSON and YAML.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config import dotted_keys, load_config
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

    def checkpoint_to_resume(self, cfg: DictConfig, data_shape, class_names: list[str]) -> tuple[Path | None, int]:
        """last.ckpt and its step when the run exists and trainer.resume is set, after checking
        that it can be resumed with ``cfg`` (a finished or interrupted run is never overwritten);
        (None, 0) for a new run."""
        if not self.last_checkpoint.is_file():
            return None, 0
        if not cfg.trainer.resume:
            raise ConfigError(f"{self.root} already holds a run; resume it with trainer.resume=true "
                              f"or start another with name=<new name>")
        checkpoint = read_checkpoint(self.last_checkpoint)
        saved = checkpoint["hyper_parameters"]
        check_resumable(OmegaConf.create(saved["config"]), cfg, self.root)
        if list(saved["data_shape"]) != list(data_shape) or list(saved["class_names"] or []) != list(class_names):
            raise ConfigError(f"{self.root} was trained on data of shape {saved['data_shape']} with classes "
                              f"{saved['class_names'] or 'none'}; the data now gives {list(data_shape)} and "
                              f"{class_names or 'none'}. Resume with the same data, or start a new run with name=<new name>")
        return self.last_checkpoint, checkpoint["global_step"]

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


EXPORT_WEIGHTS, EXPORT_INFO = "model.safetensors", "model.json"


def export_run(module: DiffusionModule, out: Path, preview: Path | None = None) -> Path:
    """Write the export folder ``out`` (see above) for ``module``, loaded from a checkpoint
    (its ``origin`` says which, and the step)."""
    source, step = module.origin["checkpoint"], module.origin["step"]
    if module.pretrained is not None:
        return export_pipeline(module, out, preview)
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = {key: value.detach().cpu().contiguous() for key, value in module.ema.state_dict().items()}
    save_file(weights, out / EXPORT_WEIGHTS)
    info = {"format": "diffusion-lab export 1", "data_shape": list(module.data_shape),
            "class_names": list(module.hparams.class_names or []), "step": step, "trained_in": source,
            "cluster_sizes": module.hparams.get("cluster_sizes")}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=1))
    OmegaConf.save(module.cfg, out / "config.yaml")
    classes = f" of {len(info['class_names'])} classes" if info["class_names"] else ""
    (out / "README.md").write_text(
        f"# {module.cfg.name}: a {module.cfg.model.name} diffusion model ({module.cfg.diffusion.objective} objective)\n\n"
        f"Trained {step} steps on {module.cfg.data.name} data of shape {info['data_shape']}{classes}. "
        f"Draw samples with the project that made it:\n\n    {__package__} sample run=<this folder>\n\n"
        f"{EXPORT_WEIGHTS}: the EMA weights; {EXPORT_INFO}: data shape, class names, step; config.yaml: the "
        "configuration it was trained with.\n")
    if preview is not None:
        shutil.copyfile(preview, out / "preview.png")
    return out


def export_pipeline(module: DiffusionModule, out: Path, preview: Path | None = None) -> Path:
    """A fine-tuned pretrained model as the pipeline it came from, with the EMA network in place
    of the original: a diffusers folder (``DiffusionPipeline.from_pretrained(out)``)."""
    module.pretrained.save(out, module.ema.net.unet)
    (out / "README.md").write_text(
        f"# {module.cfg.name}: {module.cfg.model.pretrained.source} fine-tuned for {module.origin['step']} steps\n\n"
        f"A diffusers pipeline (EMA weights) fine-tuned on {module.cfg.data.name} data of shape "
        f"{list(module.data_shape)}.\n\n    from diffusers import DiffusionPipeline\n"
        f"    pipeline = DiffusionPipeline.from_pretrained('<this folder>')\n\n"
        f"or, with the project that made it: `{__package__} sample run=<this folder>`.\n")
    OmegaConf.save(module.cfg, out / "config.yaml")
    if preview is not None:
        shutil.copyfile(preview, out / "preview.png")
    return out


PRETRAINED_PREFIX = "hf:"
PRETRAINED_SAMPLING = ["sampling.sampler=dpmpp_2m", "sampling.steps=25", "sampling.schedule=trailing",
                       "sampling.guidance=7.5"]    # guidance: Stable Diffusion's usual scale, for text models


def load_pretrained_run(source: str) -> tuple[DiffusionModule, Run]:
    """A diffusers pipeline, sampled as it was trained (DPM-Solver++(2M) over its own discrete
    noise levels), with this project's other defaults. Outputs go to runs/pretrained/<name>."""
    cfg = load_config(["model.name=pretrained", f"model.pretrained.source={source}", "model.conditional=false",
                       "data.clusters=0", *PRETRAINED_SAMPLING])
    with torch.random.fork_rng(devices=[]):
        module = DiffusionModule(OmegaConf.to_container(cfg, resolve=True), None)
    module.origin = {"pretrained": source, "step": None}
    return module.eval(), Run(RUNS / "pretrained" / Path(source).name)


def load_export(folder: Path) -> DiffusionModule:
    """The model of an export folder, in eval mode on the CPU."""
    from safetensors.torch import load_file

    try:
        info = json.loads((folder / EXPORT_INFO).read_text())
        config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=True)
        weights = load_file(folder / EXPORT_WEIGHTS)
    except Exception as error:         # a missing file, bad JSON or YAML, a damaged safetensors file
        raise ConfigError(f"{folder} is not a readable export folder ({EXPORT_WEIGHTS}, {EXPORT_INFO} and "
                          f"config.yaml; {type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''})") from None
    with torch.random.fork_rng(devices=[]):
        module = DiffusionModule(config, info["data_shape"], info["class_names"] or None, info.get("cluster_sizes"))
    try:
        module.ema.load_state_dict(weights)
        module.denoiser.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"{folder / EXPORT_WEIGHTS} does not fit the model its config.yaml describes: "
                          f"{str(error).splitlines()[0]}") from None
    module.origin = {"export": str(folder), "step": info["step"], "trained_in": info["trained_in"]}
    return module.eval()


def load_run(path: str | Path) -> tuple[DiffusionModule, Run]:
    """The model saved in a run directory's last.ckpt (or in the given .ckpt, or in an export
    folder), in eval mode on the CPU, and its run directory (for an export, the folder itself
    takes the outputs). The caller's random state is left as it was (building the network
    draws initial weights that the checkpoint then replaces)."""
    if str(path).startswith(PRETRAINED_PREFIX):
        return load_pretrained_run(str(path).removeprefix(PRETRAINED_PREFIX))
    path = Path(path).expanduser()
    if (path / "model_index.json").is_file():
        return load_pretrained_run(str(path))
    if (path / EXPORT_WEIGHTS).is_file():
        return load_export(path), Run(path)
    checkpoint = path if path.suffix == ".ckpt" else Run(path).last_checkpoint
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {checkpoint}; pass run=runs/<name> of a trained run, a .ckpt file, "
                          f"an export folder, or a diffusers pipeline (a folder, or {PRETRAINED_PREFIX}<hub id>)")
    saved = read_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):
        module = DiffusionModule(**saved["hyper_parameters"])
    try:
        module.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"{checkpoint} does not fit the model its own configuration describes: "
                          f"{str(error).splitlines()[0]}") from None
    module.origin = {"checkpoint": str(checkpoint), "step": saved.get("global_step")}
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
