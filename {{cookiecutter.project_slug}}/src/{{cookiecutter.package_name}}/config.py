"""The configuration: its schema, how its layers merge, and the errors a typo gets.

The dataclasses below say which keys exist and what type each has; the values and what
they mean live in configs/config.yaml. Layers, each overriding the one before:

    configs/config.yaml < configs/presets/<preset>.yaml < configs/experiments/<experiment>.yaml
    < command-line ``key=value`` pairs

A misspelt key or a value of the wrong type fails here, before any work, with the key path
and the valid keys or choices.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


@dataclass
class DataConfig:
    name: Literal["toy2d", "digits", "image_folder", "tensor_file", "mnist", "fashion_mnist", "cifar10",
                  "celeba", "flowers102"] = MISSING
    root: str = MISSING
    image_size: int = MISSING
    channels: int = MISSING
    labels_from_subfolders: bool = MISSING
    toy_shape: Literal["swiss_roll", "moons", "checkerboard", "gaussians"] = MISSING
    toy_samples: int = MISSING
    val_fraction: float = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    hflip: bool = MISSING
    random_crop: bool = MISSING
    on_bad_file: Literal["skip", "fail"] = MISSING
    cache_dir: str = MISSING
    gpu_cache_gb: float = MISSING


@dataclass
class UNetConfig:
    channels: int = MISSING
    channel_mult: list[int] = MISSING
    blocks_per_level: int = MISSING
    attention_levels: list[int] = MISSING
    dropout: float = MISSING


@dataclass
class DiTConfig:
    patch_size: int = MISSING
    width: int = MISSING
    depth: int = MISSING
    heads: int = MISSING


@dataclass
class MLPConfig:
    width: int = MISSING
    depth: int = MISSING


@dataclass
class ModelConfig:
    name: Literal["unet", "dit", "mlp"] = MISSING
    conditional: bool = MISSING
    unet: UNetConfig = field(default_factory=UNetConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)


@dataclass
class DiffusionConfig:
    objective: Literal["eps", "x0", "v", "edm", "flow"] = MISSING
    sigma_data: float = MISSING
    train_noise: Literal["ddpm", "cosine", "lognormal"] = MISSING
    noise_mean: float = MISSING
    noise_std: float = MISSING
    loss_weight: Literal["natural", "uniform", "min_snr", "soft_min_snr", "edm"] = MISSING
    min_snr_gamma: float = MISSING
    p_uncond: float = MISSING


@dataclass
class SamplingConfig:
    sampler: Literal["euler", "ddim", "ddpm", "heun", "generalized", "dpmpp_2m"] = MISSING
    steps: int = MISSING
    schedule: Literal["karras", "loglinear", "uniform_t", "trailing"] = MISSING
    sigma_min: float = MISSING
    sigma_max: float = MISSING
    rho: float = MISSING
    eta: float = MISSING
    churn: float = MISSING
    gamma: float = MISSING
    mu: float = MISSING
    second_order: bool = MISSING
    guidance: float = MISSING


@dataclass
class OptimConfig:
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    warmup_steps: int = MISSING
    cosine_decay: bool = MISSING
    grad_clip: float = MISSING
    ema_decay: float = MISSING


@dataclass
class TrainerConfig:
    accelerator: str = MISSING
    devices: Any = MISSING
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed", "bf16-true"] = MISSING
    max_steps: int = MISSING
    log_every_n_steps: int = MISSING
    val_every_n_steps: int = MISSING
    checkpoint_every_n_steps: int = MISSING
    sample_every_n_steps: int = MISSING
    sample_count: int = MISSING
    resume: bool = MISSING
    max_nonfinite_steps: int = MISSING


@dataclass
class Config:
    name: str = MISSING
    seed: int = MISSING
    preset: str = MISSING
    experiment: Optional[str] = None
    logger: Literal["tensorboard", "csv", "wandb"] = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def default_config_dir() -> Path:
    """``./configs`` when run from the project folder, else the project's own ``configs/``."""
    here = Path.cwd() / "configs"
    return here if (here / "config.yaml").is_file() else Path(__file__).resolve().parents[2] / "configs"


def load_config(overrides: list[str] = (), config_dir: Path | None = None) -> DictConfig:
    """Merge config.yaml, the preset, the experiment and ``key=value`` overrides; validate."""
    config_dir = Path(config_dir or default_config_dir())
    base_file = config_dir / "config.yaml"
    if not base_file.is_file():
        raise ConfigError(f"no config.yaml in {config_dir}; run from the project folder")
    cli = parse_overrides(overrides)
    cfg = merge(OmegaConf.structured(Config), OmegaConf.load(base_file), str(base_file))
    preset = cli.get("preset", cfg.preset)
    cfg = merge(cfg, load_layer(config_dir / "presets", preset, "preset"), f"preset {preset}")
    experiment = cli.get("experiment", cfg.experiment)
    if experiment:
        layer = load_layer(config_dir / "experiments", experiment, "experiment")
        cfg = merge(cfg, layer, f"experiment {experiment}")
    cfg = merge(cfg, cli, "the command line")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"no value for {', '.join(missing)}; set it in {base_file} or as key=value")
    check_consistency(cfg)
    return cfg


def parse_overrides(overrides: list[str]) -> DictConfig:
    """Read ``a.b=value`` pairs; values are parsed as YAML (numbers, lists, null)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"'{item}' is not key=value (e.g. trainer.max_steps=1000)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot parse the command line: {error}") from None


def load_layer(folder: Path, name: str, kind: str) -> DictConfig:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise ConfigError(f"unknown {kind} '{name}': no {path}. Available: {available}")
    return OmegaConf.load(path)


def merge(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    """Merge ``layer`` into ``cfg``, turning OmegaConf's errors into one clear message."""
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as error:
        raise ConfigError(explain(error, cfg, source)) from None


def explain(error: OmegaConfBaseException, cfg: DictConfig, source: str) -> str:
    key = getattr(error, "full_key", None) or "?"
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig) and leaf not in node:
        valid = list(node.keys())
        where = f"'{parent}'" if parent else "the top level"
        return f"unknown key '{key}' in {source}.{did_you_mean(leaf, valid, parent)} Valid keys in {where}: {', '.join(valid)}"
    message = str(getattr(error, "msg", error)).strip().splitlines()[0]    # OmegaConf appends key details
    return f"bad value for '{key}' in {source}: {message}"


def check_consistency(cfg: DictConfig) -> None:
    """Catch combinations that are each valid but do not work together."""
    if cfg.data.name == "toy2d" and cfg.model.name != "mlp":
        raise ConfigError(f"model.name={cfg.model.name} needs images, but data.name=toy2d is 2D points: use model.name=mlp")
    if cfg.sampling.schedule == "trailing" and cfg.diffusion.train_noise not in ("ddpm", "cosine"):
        raise ConfigError("sampling.schedule=trailing needs a discrete training schedule "
                          "(diffusion.train_noise=ddpm or cosine); use karras or loglinear")
    if cfg.sampling.steps < 1:
        raise ConfigError(f"sampling.steps must be at least 1, got {cfg.sampling.steps}")
    if cfg.sampling.eta < 0 or cfg.sampling.churn < 0:
        raise ConfigError("sampling.eta and sampling.churn must be >= 0")
    if not 0 <= cfg.sampling.mu < 1:
        raise ConfigError(f"sampling.mu must be in [0, 1), got {cfg.sampling.mu}")
    if not 0 < cfg.sampling.sigma_min < cfg.sampling.sigma_max:
        raise ConfigError("need 0 < sampling.sigma_min < sampling.sigma_max, got "
                          f"{cfg.sampling.sigma_min} and {cfg.sampling.sigma_max}")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")


def did_you_mean(key: str, valid: list[str], parent: str = "") -> str:
    """" Did you mean 'data.name'?" for the closest valid key, or nothing."""
    close = difflib.get_close_matches(key, valid, n=1)
    return f" Did you mean '{(parent + '.' if parent else '') + close[0]}'?" if close else ""


def refuse_unknown_keys(keys, valid: list[str], source: str) -> None:
    """One message for a misspelt key, with the closest valid one."""
    for key in keys:
        if key not in valid:
            raise ConfigError(f"unknown key '{key}' in {source}.{did_you_mean(key, valid)} Valid keys: {', '.join(valid)}")


def run_sampling_config(cfg: DictConfig, overrides: DictConfig) -> DictConfig:
    """A trained run's configuration for sampling: its sampling section typed by the schema,
    then overridden by ``overrides`` (the sampling keys of a ``sample`` command line) and checked."""
    cfg = cfg.copy()
    cfg.sampling = merge(OmegaConf.structured(SamplingConfig), cfg.sampling, "the run's config")
    cfg.sampling = merge(cfg.sampling, overrides, "the command line")
    check_consistency(cfg)
    return cfg


def sampling_keys() -> list[str]:
    """Keys of the ``sampling`` section, which ``sample`` also accepts unprefixed."""
    return [f.name for f in fields(SamplingConfig)]
