"""The configuration: its schema, how its layers merge, the errors a typo gets, and the
``key=value`` pairs of every command.

The dataclasses below say which keys exist, what type each has and, beside each number, the
rule its value must pass (``valid``); the values and what they mean live in
configs/config.yaml. Layers, each overriding the one before:

    configs/config.yaml < configs/presets/<preset>.yaml < configs/experiments/<experiment>.yaml
    < configs/local.yaml < command-line ``key=value`` pairs

except that the ``debug`` preset, a short check of a setup, also wins over the experiment.
``configs/local.yaml`` is optional and git-ignored: this machine's paths (data.root,
data.cache_dir) and its preset, kept out of the files a project shares.

Some keys follow others: a layer that changes ``diffusion.objective`` brings that objective's
noise and sampling defaults (``OBJECTIVE_DEFAULTS``) for the keys it does not set itself, and
sampler options that the chosen sampler does not read (by the table of samplers) are reported
(``unused_sampler_options``).

A misspelt key, a value of the wrong type or out of its range fails here, before any work, with
the key path and the valid keys, choices or range. A command that works on a trained run reads
its own keys and the run's sampling (or evaluation) keys with ``parse_command``.
"""
from __future__ import annotations

import difflib
import math
import re
import sys
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .diffusion.samplers import SAMPLERS
from .errors import ConfigError
from .models import MODELS


# -- value rules: (test, what passes), kept on their schema fields -------------------------------
def finite_above(low: float, inclusive: bool = False) -> tuple:
    text = f"a finite number {'>=' if inclusive else '>'} {low:g}"
    return (lambda v: math.isfinite(v) and (v >= low if inclusive else v > low)), text


def at_least(low: int) -> tuple:
    return (lambda v: v >= low), f"at least {low}"


UNIT_INTERVAL = (lambda v: 0 <= v < 1), "in [0, 1)"
SEED = (lambda v: 0 <= v < 2**32), "an integer in [0, 2^32)"
FINITE = math.isfinite, "a finite number"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DURATION = re.compile(r"\d{1,2}:\d{2}:\d{2}:\d{2}")


def duration_seconds(duration: str | None) -> int | None:
    """A ``DURATION`` (trainer.max_time), DD:HH:MM:SS, in seconds; None (no budget) stays None."""
    if duration is None:
        return None
    days, hours, minutes, secs = map(int, duration.split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def valid(rule: tuple, default: Any = MISSING) -> Any:
    """A schema field whose value must pass ``rule``, (test, what passes): checked where it
    enters (``check_values``), so that a bad value stops the run at once, naming its key."""
    return field(default=default, metadata={"rule": rule})


def devices_rule(v) -> bool:
    if isinstance(v, ListConfig):
        return len(v) > 0 and all(isinstance(d, int) and d >= 0 for d in v)
    return v == "auto" or (isinstance(v, int) and v >= 1)


# -- the schema: every key and its type; the values and what they mean are in configs/config.yaml ---
@dataclass
class DataConfig:
    name: Literal["toy2d", "digits", "image_folder", "tensor_file", "mnist", "fashion_mnist", "cifar10",
                  "celeba", "flowers102"] = MISSING
    root: str = MISSING
    image_size: int = valid(at_least(1))
    channels: int = valid(((lambda v: v in (1, 3)), "1 (grayscale) or 3 (RGB)"))
    labels_from_subfolders: bool = MISSING
    captions: bool = MISSING
    prompt: Optional[str] = None
    clusters: int = valid(at_least(0))
    toy_shape: Literal["swiss_roll", "moons", "checkerboard", "gaussians"] = MISSING
    toy_samples: int = valid(at_least(2))
    kind: Literal["auto", "set"] = MISSING
    normalise: bool = MISSING
    zero_com: bool = MISSING
    rotate: bool = MISSING
    val_fraction: float = valid(UNIT_INTERVAL)
    train_size: int = valid(at_least(0))
    train_part: int = valid(at_least(0))
    batch_size: int = valid(at_least(1))
    num_workers: int = valid(at_least(0))
    hflip: bool = MISSING
    random_crop: bool = MISSING
    on_bad_file: Literal["skip", "fail"] = MISSING
    cache_dir: str = MISSING
    gpu_cache_gb: float = valid(finite_above(0, inclusive=True))


@dataclass
class UNetConfig:
    channels: int = valid(at_least(1))
    channel_mult: list[int] = valid(((lambda v: len(v) > 0 and min(v) >= 1), "a non-empty list of integers >= 1"))
    blocks_per_level: int = valid(at_least(1))
    attention_levels: list[int] = valid(((lambda v: all(level >= 0 for level in v)), "a list of levels >= 0"))
    dropout: float = valid(UNIT_INTERVAL)


@dataclass
class DiTConfig:
    patch_size: int = valid(at_least(1))
    width: int = valid(at_least(1))
    depth: int = valid(at_least(1))
    heads: int = valid(at_least(1))


@dataclass
class SetTransformerConfig:
    width: int = valid(at_least(1))
    depth: int = valid(at_least(1))
    heads: int = valid(at_least(1))


@dataclass
class MLPConfig:
    width: int = valid(at_least(1))
    depth: int = valid(at_least(1))


@dataclass
class IdealConfig:
    smoothing: float = valid(finite_above(0, inclusive=True))
    draws: int = valid(at_least(1))
    chunk: int = valid(at_least(1))


@dataclass
class PretrainedConfig:
    source: Optional[str] = None


@dataclass
class ModelConfig:
    name: Literal["unet", "dit", "set_transformer", "mlp", "ideal", "pretrained"] = MISSING
    conditional: bool = MISSING
    unet: UNetConfig = field(default_factory=UNetConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    set_transformer: SetTransformerConfig = field(default_factory=SetTransformerConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    ideal: IdealConfig = field(default_factory=IdealConfig)
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)


@dataclass
class DiffusionConfig:
    objective: Literal["eps", "x0", "v", "edm", "flow"] = MISSING
    sigma_data: float = valid(finite_above(0))
    train_noise: Literal["ddpm", "cosine", "lognormal", "uniform_t", "start"] = MISSING
    noise_mean: float = valid(FINITE)
    noise_std: float = valid(finite_above(0))
    noise_max: float = valid(finite_above(0))
    loss_weight: Literal["natural", "uniform", "min_snr", "soft_min_snr", "edm"] = MISSING
    min_snr_gamma: float = valid(finite_above(0))
    p_uncond: float = valid(((lambda v: 0 <= v <= 1), "in [0, 1]"))


SamplerName = Literal["euler", "ddim", "ddpm", "heun", "generalized", "dpmpp_2m", "dpmpp_2m_sde", "consistency"]


@dataclass
class SamplingConfig:
    sampler: SamplerName = MISSING
    steps: int = valid(at_least(1))
    schedule: Literal["karras", "loglinear", "uniform_t", "trailing"] = MISSING
    sigma_min: float = valid(finite_above(0))
    sigma_max: float = valid(finite_above(0))
    rho: float = valid(finite_above(0))
    eta: float = valid(finite_above(0, inclusive=True))
    churn: float = valid(finite_above(0, inclusive=True))
    gamma: float = valid(FINITE)
    mu: float = valid(UNIT_INTERVAL)
    second_order: bool = MISSING
    guidance: float = valid(FINITE)


@dataclass
class EvaluationConfig:
    every_n_steps: int = valid(at_least(0))
    samples: int = valid(at_least(2))
    batch_size: int = valid(at_least(1))
    sampler: SamplerName = MISSING
    steps: int = valid(at_least(1))
    extractor: Literal["inception", "custom"] = MISSING
    extractor_module: Optional[str] = None
    extractor_weights: Optional[str] = None
    kid_subset_size: int = valid(at_least(2))
    kid_reference: int = valid(at_least(2))
    seed: int = valid(SEED)
    cache_dir: str = MISSING


@dataclass
class OptimConfig:
    lr: float = valid(finite_above(0))
    weight_decay: float = valid(finite_above(0, inclusive=True))
    betas: list[float] = valid(((lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)), "two numbers in [0, 1)"))
    warmup_steps: int = valid(at_least(0))
    cosine_decay: bool = MISSING
    grad_clip: float = valid(finite_above(0, inclusive=True))
    ema_decay: float = valid(UNIT_INTERVAL)
    fused: bool = MISSING


@dataclass
class DistillConfig:
    method: Literal["reflow", "cd", "ect"] = MISSING
    teacher: Optional[str] = None
    teacher_sampling: dict[str, Any] = field(default_factory=dict)
    pairs: int = valid(at_least(2))
    shard_size: int = valid(at_least(1))
    batch_size: int = valid(at_least(1))
    levels: int = valid(at_least(2))
    stage_steps: int = valid(at_least(1))


@dataclass
class LoraConfig:
    base: Optional[str] = None
    rank: int = valid(at_least(1))
    alpha: float = valid(finite_above(0))
    targets: list[str] = valid(((lambda v: all(name.strip() for name in v)), "a list of layer names, [] for the "
                                "attention projections"))
    class_prompt: Optional[str] = None
    class_images: int = valid(at_least(1))
    prior_weight: float = valid(finite_above(0, inclusive=True))


@dataclass
class CodecConfig:
    source: Optional[str] = None
    latent_std: float = valid(finite_above(0))


@dataclass
class AutoencoderConfig:
    channels: list[int] = valid(((lambda v: len(v) >= 1 and all(c >= 4 for c in v)),
                                 "a list of at least one width, each at least 4, e.g. [32, 64]"))
    latent_channels: int = valid(at_least(1))
    kl_weight: float = valid(finite_above(0, inclusive=True))
    lr: float = valid(finite_above(0))
    batch_size: int = valid(at_least(1))
    max_steps: int = valid(at_least(1))


CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]
Precision = Literal["auto", "32-true", "16-mixed", "bf16-mixed"]         # mixed: noising and loss stay float32


@dataclass
class TrainerConfig:
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = MISSING
    devices: Any = valid((devices_rule, "auto, a number of devices >= 1, or a list of device indices like [0, 1]"))
    strategy: Literal["auto", "ddp"] = MISSING
    num_nodes: int = valid(at_least(1))
    precision: Precision = MISSING
    compile: CompileMode = MISSING
    channels_last: bool = MISSING
    gradient_checkpointing: bool = MISSING
    tf32: bool = MISSING
    max_steps: int = valid(at_least(1))
    max_time: Optional[str] = valid(((lambda v: v is None or bool(DURATION.fullmatch(v))),
                                     "null or a duration DD:HH:MM:SS, e.g. 00:02:00:00 for two hours"), default=None)
    log_every_n_steps: int = valid(at_least(1))
    val_every_n_steps: int = valid(at_least(1))
    val_batches: Optional[int] = valid(((lambda v: v is None or v >= 1), "null (all) or at least 1"), default=None)
    checkpoint_every_n_steps: int = valid(at_least(1))
    sample_every_n_steps: int = valid(at_least(1))
    first_grid_minutes: float = valid(finite_above(0, inclusive=True))
    sample_count: int = valid(at_least(1))
    sample_labels: list[str] = valid(((lambda v: all(str(label).strip() for label in v)), "a list of class names or "
                                      "prompts, [] for every class"))
    resume: bool = MISSING
    max_nonfinite_steps: int = valid(at_least(1))
    detect_anomaly: bool = MISSING


@dataclass
class Config:
    name: str = valid(((lambda v: bool(RUN_NAME.fullmatch(v))),
                       "letters, digits, '.', '_' and '-' (the folder runs/<name>)"))
    seed: int = valid(SEED)
    preset: str = MISSING
    experiment: Optional[str] = None
    logger: Literal["tensorboard", "csv", "wandb"] = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)


def field_rules(schema, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> rule, for every field of ``schema`` (and its sections) that has one."""
    hints = typing.get_type_hints(schema)
    rules = {}
    for item in fields(schema):
        if is_dataclass(hints[item.name]):
            rules.update(field_rules(hints[item.name], f"{prefix}{item.name}."))
        elif "rule" in item.metadata:
            rules[f"{prefix}{item.name}"] = item.metadata["rule"]
    return rules


VALUE_RULES = field_rules(Config)


CHECK_PRESET = "debug"       # the preset that checks a setup in a few steps, whatever the experiment
LOCAL_LAYER = "local.yaml"   # this machine's settings, git-ignored

# Each objective's noise levels in training and in sampling. config.yaml is baked with its
# objective's row (a test keeps the two in step); a layer that switches the objective gets the
# new row for every key of it that the layer does not set itself.
# The lognormal training levels are EDM2's (Karras et al. 2024), not EDM's N(-1.2, 1.2^2): on a
# short budget they learn the coarse shapes much sooner (benchmarks/RESULTS.md, issue 14).
_EDM_NOISE = {"diffusion.noise_mean": -0.4, "diffusion.noise_std": 1.0, "diffusion.noise_max": 80.0,
              "sampling.schedule": "karras", "sampling.sigma_max": 80.0}
OBJECTIVE_DEFAULTS = {
    "eps": {"diffusion.train_noise": "ddpm", **_EDM_NOISE},
    "v": {"diffusion.train_noise": "cosine", **_EDM_NOISE},
    "x0": {"diffusion.train_noise": "lognormal", **_EDM_NOISE},
    "edm": {"diffusion.train_noise": "lognormal", **_EDM_NOISE},
    "flow": {"diffusion.train_noise": "lognormal", "diffusion.noise_mean": 0.0, "diffusion.noise_std": 1.0,
             "diffusion.noise_max": 1000.0, "sampling.schedule": "uniform_t", "sampling.sigma_max": 1000.0},
}     # the flow's lognormal is the logit-normal t of SD3


def default_config_dir() -> Path:
    """``./configs`` when run from the project folder, else the project's own ``configs/``."""
    here = Path.cwd() / "configs"
    return here if (here / "config.yaml").is_file() else Path(__file__).resolve().parents[2] / "configs"


def load_config(overrides: list[str] = (), config_dir: Path | None = None, base=None) -> DictConfig:
    """Merge config.yaml, the preset, the experiment and ``key=value`` overrides; validate. A run
    that adapts a trained network (lora.base) gives its configuration as ``base``: its
    ``BASE_KEYS`` replace config.yaml's values, and the layers above change them as they would
    config.yaml's."""
    config_dir = Path(config_dir or default_config_dir())
    base_file = config_dir / "config.yaml"
    if not base_file.is_file():
        raise ConfigError(f"no config.yaml in {config_dir}; run from the project folder")
    cli = parse_overrides(overrides)
    local_file = config_dir / LOCAL_LAYER
    local = OmegaConf.load(local_file) if local_file.is_file() else OmegaConf.create()
    cfg = merge(OmegaConf.structured(Config), OmegaConf.load(base_file), str(base_file))
    if base is not None:
        base_layer = OmegaConf.create()
        for key in BASE_KEYS:
            OmegaConf.update(base_layer, key, OmegaConf.select(OmegaConf.create(base), key))
        cfg = merge(cfg, base_layer, "the configuration of lora.base")
    baked_objective = cfg.diffusion.objective
    preset = cli.get("preset", local.get("preset", cfg.preset))
    preset_layer = load_layer(config_dir / "presets", preset, "preset")
    layers = [(preset_layer, f"preset {preset}")]
    experiment = cli.get("experiment", local.get("experiment", cfg.experiment))
    if experiment:
        layers.append((load_layer(config_dir / "experiments", experiment, "experiment"), f"experiment {experiment}"))
        if preset == CHECK_PRESET:      # a short check of the experiment: its run length wins over the experiment's
            layers.append(layers[0])
    layers += [(local, str(local_file)), (cli, "the command line")]
    given = set()
    for layer, source in layers:
        cfg = merge(cfg, layer, source)
        keys = dotted_keys(layer)
        given.update(keys)
        for key in keys:
            # A layer's ``???`` asks a later layer for a value (experiments/reflow.yaml: distill.teacher);
            # OmegaConf's merge keeps the value below it, so the key is made missing.
            if OmegaConf.select(layer, key, default=MISSING) == MISSING:
                OmegaConf.update(cfg, key, MISSING)
    if cfg.diffusion.objective != baked_objective:
        follow_objective(cfg, given)
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"no value for {', '.join(sorted(missing))}; set it in {base_file} or as key=value")
    check_values(cfg)
    if "data.root" in given and cfg.data.name in ("toy2d", "digits"):
        raise ConfigError(f"data.root={cfg.data.root} is given, but data.name={cfg.data.name} does not read files; "
                          "for your own images add data.name=image_folder (or tensor_file for a .pt/.npy/.npz file)")
    for note in unused_sampler_options(cfg.sampling, {k.partition(".")[2] for k in given if k.startswith("sampling.")}):
        print(f"note: {note}", file=sys.stderr)
    return cfg


def dotted_keys(layer: DictConfig, prefix: str = "") -> list[str]:
    """The keys a configuration (or a layer of it) sets, as dotted paths (``trainer.max_steps``);
    a value the layer asks for (``???``, as experiments/reflow.yaml asks for distill.teacher) too."""
    keys = []
    for key, value in OmegaConf.to_container(layer).items():
        nested = isinstance(value, dict)
        keys += dotted_keys(OmegaConf.create(value), f"{prefix}{key}.") if nested else [f"{prefix}{key}"]
    return keys


def follow_objective(cfg: DictConfig, given: set[str]) -> None:
    """Give the keys of ``OBJECTIVE_DEFAULTS`` that no layer set the current objective's values."""
    for key, value in OBJECTIVE_DEFAULTS[cfg.diffusion.objective].items():
        if key not in given:
            OmegaConf.update(cfg, key, value)


def unused_sampler_options(sampling: DictConfig, given: set[str]) -> list[str]:
    """One line for each option in ``given`` that ``sampling.sampler`` (or its schedule) does not
    read, by the table of samplers."""
    readers = {}
    for name, sampler in SAMPLERS.items():
        for option in sampler.options:
            readers.setdefault(option, []).append(name)
    notes = [f"sampling.{key}={sampling[key]} is not used by sampler {sampling.sampler} "
             f"(only by {' and '.join(users)})" for key, users in readers.items()
             if key in given and sampling.sampler not in users]
    if "rho" in given and sampling.schedule != "karras":
        notes.append(f"sampling.rho={sampling.rho} is not used by schedule {sampling.schedule} (only by karras)")
    return notes


def parse_overrides(overrides: list[str]) -> DictConfig:
    """Read ``a.b=value`` pairs in order, as ``OmegaConf.from_dotlist`` does, one at a time so that
    an error names its pair; values are parsed as YAML (numbers, lists, null)."""
    parsed = OmegaConf.create()
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"'{item}' is not key=value (e.g. trainer.max_steps=1000)")
        try:
            parsed.merge_with_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError) as error:      # [1,2 unclosed
            why = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
            raise ConfigError(f"cannot read '{item}': {why}; values are YAML (close their brackets, and quote "
                              "text that holds ': ' or ' #')") from None
    return parsed


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
    key = error.full_key or "?"
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent)                 # the whole configuration for a top-level key
    # ``in`` would say no for a key whose value is still missing (???); labels[0] is a bad list item
    if isinstance(node, DictConfig) and leaf not in node.keys() and "[" not in leaf:
        valid = list(node.keys())
        where = f"'{parent}'" if parent else "the top level"
        return (f"unknown key '{key}' in {source}.{did_you_mean(leaf, valid, parent)} "
                f"Valid keys in {where}: {', '.join(valid)}")
    message = str(error).strip().splitlines()[0]       # OmegaConf appends the key's details on later lines
    return f"bad value for '{key}' in {source}: {message}"


def check_values(cfg: DictConfig, keys=VALUE_RULES) -> None:
    """Every value in its valid range (``VALUE_RULES``), then combinations that are each valid
    but do not work together."""
    for key in keys:
        test, what = VALUE_RULES[key]
        value = OmegaConf.select(cfg, key)
        if not test(value):
            raise ConfigError(f"bad value for '{key}': {value} (must be {what})")
    if cfg.model.name == "pretrained" and not cfg.model.pretrained.source:
        raise ConfigError("model.name=pretrained needs model.pretrained.source=<a diffusers pipeline folder or "
                          "hub id>, e.g. google/ddpm-cifar10-32")
    if cfg.data.name == "toy2d" and cfg.model.name != "pretrained" and "vector" not in MODELS[cfg.model.name]:
        fitting = " or ".join(name for name, networks in MODELS.items() if "vector" in networks)
        raise ConfigError(f"model.name={cfg.model.name} has no network for vectors, but data.name=toy2d is 2D points: "
                          f"use model.name={fitting}")
    if cfg.sampling.schedule == "trailing" and cfg.diffusion.train_noise not in ("ddpm", "cosine") \
            and cfg.model.name != "pretrained":
        raise ConfigError("sampling.schedule=trailing needs a discrete training schedule "
                          "(diffusion.train_noise=ddpm or cosine); use karras or loglinear")
    if cfg.data.clusters and not cfg.model.conditional:
        raise ConfigError(f"data.clusters={cfg.data.clusters} labels the data by its clusters for a conditional model "
                          "to be guided by: add model.conditional=true (or set data.clusters=0)")
    if cfg.data.clusters and cfg.data.name == "image_folder" and cfg.data.labels_from_subfolders:
        raise ConfigError(f"data.labels_from_subfolders=true gives class labels, but data.clusters={cfg.data.clusters} "
                          "would replace them by cluster numbers: set data.clusters=0 to train on the classes")
    data = cfg.data
    if (data.captions or data.prompt) and (data.name != "image_folder" or data.labels_from_subfolders
                                           or (data.captions and data.prompt)):
        raise ConfigError("data.captions and data.prompt label the images of a folder (data.name=image_folder) "
                          "in place of data.labels_from_subfolders: set data.name=image_folder and only one of the "
                          "three")
    if cfg.lora.class_prompt and not cfg.lora.base:
        raise ConfigError("lora.class_prompt (DreamBooth's prior preservation) needs lora.base: the text-to-image "
                          "pipeline whose own images of the class are kept")
    if cfg.lora.base and cfg.distill.teacher:
        raise ConfigError("lora.base and distill.teacher are both set: a run either adapts a network or distils one")
    if cfg.codec.source and cfg.model.name in ("pretrained", "ideal"):
        why = "brings its own autoencoder, if any" if cfg.model.name == "pretrained" else "memorises images"
        raise ConfigError(f"codec.source={cfg.codec.source} makes a latent model of this project's networks, and "
                          f"model.name={cfg.model.name} {why}: set codec.source=null")
    if cfg.evaluation.extractor == "custom" and not cfg.evaluation.extractor_module:
        raise ConfigError("evaluation.extractor=custom needs evaluation.extractor_module=package.module:factory")
    if not cfg.sampling.sigma_min < cfg.sampling.sigma_max:
        raise ConfigError("need sampling.sigma_min < sampling.sigma_max, got "
                          f"{cfg.sampling.sigma_min} and {cfg.sampling.sigma_max}")


def did_you_mean(key: str, choices: list[str], parent: str = "") -> str:
    """" Did you mean 'data.name'?" for the closest valid key, or nothing."""
    close = difflib.get_close_matches(key, choices, n=1)
    if not close:
        return ""
    return f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?"


def refuse_unknown_keys(keys, choices: list[str], source: str) -> None:
    """One message for a misspelt key, with the closest valid one."""
    for key in keys:
        if key not in choices:
            raise ConfigError(f"unknown key '{key}' in {source}.{did_you_mean(key, choices)} "
                              f"Valid keys: {', '.join(choices)}")


def with_later_keys(saved) -> DictConfig:
    """A saved run's configuration (a dict or DictConfig) with the keys it predates added from
    this project's config.yaml, whose default for a new key keeps what the code did before it
    (data.train_size: 0, all the examples). The saved values win everywhere else."""
    base_file = default_config_dir() / "config.yaml"
    defaults = OmegaConf.load(base_file) if base_file.is_file() else OmegaConf.create()
    return OmegaConf.merge(defaults, OmegaConf.create(saved))


# What a student (distill.teacher) takes from its teacher: the network and the meaning of its
# output, the space it works in (its codec), and the data it learnt (which ``evaluate`` compares
# the student with).
TEACHER_KEYS = ("model", "codec", "data", "diffusion.objective", "diffusion.sigma_data")
MACHINE_KEYS = ("data.batch_size", "data.num_workers", "data.gpu_cache_gb")     # the student's own


def student_config(cfg: DictConfig, teacher_config, teacher_data: bool = True) -> DictConfig:
    """The configuration of a student of the teacher whose configuration is ``teacher_config``:
    ``cfg`` with the teacher's ``TEACHER_KEYS`` but this machine's ``MACHINE_KEYS``. Its
    training examples are all the pairs or all the data (data.train_size 0). A diffusers
    pipeline was trained on no data of ours (``teacher_data`` False): its student's data is
    ``cfg``'s."""
    student, teacher = cfg.copy(), OmegaConf.create(teacher_config)
    for key in TEACHER_KEYS:
        if key != "data" or teacher_data:
            OmegaConf.update(student, key, OmegaConf.select(teacher, key))
    for key in MACHINE_KEYS:
        OmegaConf.update(student, key, OmegaConf.select(cfg, key))
    student.data.train_size = student.data.train_part = 0
    return student


# What an adapted run (lora.base) takes from its base: the network, what its output means and how
# it was trained (noise levels, loss weight, condition dropout) and is sampled, the space it works
# in (its codec), and whether its labels are the data's clusters (a base guided by 50 clusters is
# adapted on 50 clusters).
BASE_KEYS = ("model", "diffusion", "sampling", "codec", "data.clusters")


def run_config(cfg: DictConfig, section: str, overrides) -> DictConfig:
    """A trained run's configuration, ready to sample or evaluate: its ``section`` ("sampling" or
    "evaluation") typed by the schema, then overridden by ``overrides`` (a command line's keys of
    that section) and checked. Keys the run predates were filled in when it was loaded
    (``with_later_keys``)."""
    run = cfg.copy()
    merged = OmegaConf.structured(typing.get_type_hints(Config)[section])
    for layer, source in ((cfg.get(section), "the run's config"), (overrides, "the command line")):
        merged = merge(merged, layer or {}, source)
    OmegaConf.update(run, section, merged, force_add=True)
    check_values(run, [key for key in VALUE_RULES if key.startswith(section + ".")])
    if section == "sampling" and overrides:
        for note in unused_sampler_options(run.sampling, set(overrides.keys())):
            print(f"note: {note}", file=sys.stderr)
    return run


# The sections of a trained run's configuration that a command line may change, unprefixed
# (``sample steps=20``, ``evaluate samples=10000``): evaluation during training is no command's.
RUN_SECTIONS = {"sampling": [f.name for f in fields(SamplingConfig)],
                "evaluation": [f.name for f in fields(EvaluationConfig) if f.name != "every_n_steps"]}


def parse_command(overrides: list[str], schema, name: str, section: str | None = None,
                  counts: tuple[str, ...] = ()) -> tuple[DictConfig, DictConfig]:
    """A command's ``key=value`` pairs: the keys of the run's ``section`` (see ``RUN_SECTIONS``)
    apart, for ``run_config``; the rest into the command's own dataclass ``schema``, whose
    ``run`` (if it has one) must be given and whose ``counts`` must be at least 1."""
    parsed = parse_overrides(overrides)
    section_keys = RUN_SECTIONS.get(section, [])
    own_keys = [item.name for item in fields(schema)]
    refuse_unknown_keys(parsed.keys(), own_keys + section_keys, "the command line")
    given = OmegaConf.create({key: value for key, value in parsed.items() if key in section_keys})
    rest = OmegaConf.create({key: value for key, value in parsed.items() if key not in section_keys})
    command = merge(OmegaConf.structured(schema), rest, "the command line")
    if "run" in own_keys and OmegaConf.is_missing(command, "run"):
        raise ConfigError(f"{name} needs run=<run directory or .ckpt file>, e.g. run=runs/digits")
    test, what = at_least(1)
    for key in counts:
        if command[key] is not None and not test(command[key]):
            raise ConfigError(f"bad value for '{key}': {command[key]} (must be {what})")
    return command, given
