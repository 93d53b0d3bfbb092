"""The command line: ``train``, ``inspect-data`` and ``sample``. Every option is a ``key=value`` pair."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from .config import (ConfigError, SamplingConfig, check_consistency, load_config, merge, parse_overrides,
                     refuse_unknown_keys, sampling_keys)
from .data import DataError

USAGE = f"""\
train   [key=value ...]   train; e.g. train experiment=digits trainer.max_steps=2000
                          (keys: configs/config.yaml; preset=NAME, experiment=NAME pick layers)
inspect-data [key=value ...]
                          report on the configured data (counts, sizes, modes, unreadable files,
                          duplicates, classes) with warnings, and a preview grid in runs/<name>/inspect/
sample  run=DIR [key=value ...]
                          draw samples from runs/<name> or a .ckpt file; keys: n, batch_size,
                          seed, labels, conditions, out, device, trajectory, and any sampling key:
                          {", ".join(sampling_keys())}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and sample diffusion models.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=USAGE)
    parser.add_argument("command", choices=["train", "sample", "inspect-data"])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        {"train": train, "sample": sample, "inspect-data": inspect_data}[args.command](args.overrides)
    except (ConfigError, DataError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    return 0


# -- train ------------------------------------------------------------------------------------
def train(overrides: list[str]) -> Path:
    """Train from the merged configuration into runs/<name>/, resuming from its last.ckpt."""
    import lightning as L

    from .data import DiffusionDataModule
    from .module import DiffusionModule, process_rank
    from .training import build_trainer, checkpoint_to_resume

    cfg = load_config(overrides)
    run_dir = Path("runs") / cfg.name
    L.seed_everything(cfg.seed + process_rank(), verbose=False)
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup("fit")
    module = DiffusionModule(OmegaConf.to_container(cfg, resolve=True), list(data.data_shape), data.class_names)
    resume_from = checkpoint_to_resume(cfg, run_dir)
    trainer = build_trainer(cfg, run_dir)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml")
        if data.class_names:
            (run_dir / "classes.json").write_text(json.dumps(data.class_names, indent=1))
        print(f"run directory: {run_dir}" + (f" (resuming from {resume_from})" if resume_from else ""))
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=False)
    if trainer.is_global_zero:
        print(f"done: checkpoints in {run_dir / 'checkpoints'}, sample grids in {run_dir / 'samples'}")
    return run_dir


# -- inspect-data -----------------------------------------------------------------------------
def inspect_data(overrides: list[str]) -> Path:
    """Print and save the data report for the configuration ``train`` would use."""
    from .data.inspect import data_report

    cfg = load_config(overrides)
    out = Path("runs") / cfg.name / "inspect"
    print(data_report(cfg.data, out))
    return out


# -- sample -----------------------------------------------------------------------------------
@dataclass
class SampleCommand:
    run: str = MISSING                   # a run directory (runs/<name>) or a .ckpt file
    n: int = 64                          # number of samples
    batch_size: int = 256
    seed: int = 0
    labels: Optional[list[int]] = None   # conditional models: labels to draw, used in turn
    conditions: Optional[list[list[float]]] = None   # or several weighted labels for every sample: [[3, 1.5], [8, 1.0]]
    out: Optional[str] = None            # output folder; default <run>/generated
    device: str = "auto"                 # auto | cpu | cuda | mps
    trajectory: bool = False             # also plot how samples travel from noise to data


def sample(overrides: list[str]) -> Path:
    """Sample from a trained run; the sampling section of its config gives the defaults."""
    command, sampling_overrides = split_sample_overrides(overrides)
    module, run_dir = load_run(command.run)
    cfg = module.cfg.copy()
    cfg.sampling = merge(OmegaConf.structured(SamplingConfig), cfg.sampling, "the run's config")
    cfg.sampling = merge(cfg.sampling, sampling_overrides, "the command line")
    check_consistency(cfg)
    if (command.labels or command.conditions) and not module.num_classes:
        raise ConfigError(f"labels and conditions need a class-conditional model; {command.run} was trained "
                          "with model.conditional=false")
    module.to(pick_device(command.device))
    x, nfe, trajectory = draw(module, command, cfg.sampling)
    out = Path(command.out) if command.out else run_dir / "generated"
    save_samples(x, trajectory, out, f"{cfg.sampling.sampler}, {cfg.sampling.steps} steps, {nfe} NFE")
    return out


def draw(module, command, sampling: DictConfig):
    """All samples in batches, with one progress bar over every step; the NFE per sample and
    the first batch's trajectory when asked for."""
    from tqdm import tqdm

    labels = torch.tensor(command.labels) if command.labels else None
    weighted = [(int(label), weight) for label, weight in command.conditions or []]
    generator = torch.Generator().manual_seed(command.seed)
    starts = range(0, command.n, command.batch_size)
    samples, trajectory = [], []
    with tqdm(total=len(starts) * sampling.steps, desc="sampling", unit="step") as bar:
        for start in starts:
            size = min(command.batch_size, command.n - start)
            batch_labels = None if labels is None else labels[torch.arange(start, start + size) % len(labels)]
            conditions = [(torch.full((size,), label), weight) for label, weight in weighted] or None
            result = module.sample(size, generator, sampling, batch_labels, conditions, hooks=[lambda step: bar.update()],
                                   keep_trajectory=command.trajectory and start == 0)
            samples.append(result.x.cpu())
            trajectory = trajectory or result.trajectory
    return torch.cat(samples), result.nfe, trajectory


def save_samples(x: torch.Tensor, trajectory: list, out: Path, title: str) -> None:
    """samples.pt, samples.png (a grid, or a scatter plot for 2D points), images/NNNNNN.png,
    and trajectory.png when a trajectory was kept."""
    from .data.images import to_uint8
    from .visualize import save_image, save_image_grid, save_scatter, save_trajectory_plot

    out.mkdir(parents=True, exist_ok=True)
    torch.save(x, out / "samples.pt")
    if x.ndim == 2:
        picture = save_scatter(x, out / "samples.png", title)
    else:
        images = to_uint8(x)
        picture = save_image_grid(images, out / "samples.png")
        for i, image in enumerate(images):
            save_image(image, out / "images" / f"{i:06d}.png")
    print(f"{len(x)} samples ({title}): {picture}")
    if trajectory:
        print(f"trajectory: {save_trajectory_plot(trajectory, x[:len(trajectory[0].x)], out / 'trajectory.png')}")


def split_sample_overrides(overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """Sampling keys (steps=20) go to the run's sampling section; the rest describe the command."""
    parsed = parse_overrides(overrides)
    refuse_unknown_keys(parsed.keys(), [f.name for f in fields(SampleCommand)] + sampling_keys(), "the command line")
    sampling = OmegaConf.create({k: v for k, v in parsed.items() if k in sampling_keys()})
    rest = OmegaConf.create({k: v for k, v in parsed.items() if k not in sampling_keys()})
    command = merge(OmegaConf.structured(SampleCommand), rest, "the command line")
    if OmegaConf.is_missing(command, "run"):
        raise ConfigError("sample needs run=<run directory or .ckpt file>, e.g. run=runs/digits")
    return command, sampling


def load_run(path: str):
    """The module saved in a run directory's last.ckpt (or in the given .ckpt), and its run
    directory. The caller's random state is left as it was (building the network draws
    initial weights that the checkpoint then replaces)."""
    from .module import DiffusionModule
    from .training import last_checkpoint

    path = Path(path).expanduser()
    checkpoint = path if path.suffix == ".ckpt" else last_checkpoint(path)
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {checkpoint}; pass run=runs/<name> of a trained run or a .ckpt file")
    with torch.random.fork_rng(devices=[]):
        module = DiffusionModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    return module.eval(), checkpoint.parent.parent


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


if __name__ == "__main__":
    sys.exit(main())
