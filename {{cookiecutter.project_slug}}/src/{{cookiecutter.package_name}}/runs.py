"""A run directory: everything one training run keeps, laid out in one place, and the models it
holds.

    runs/<name>/
        config.yaml            the resolved configuration it was trained with
        classes.json           class names, for data with labels
        checkpoints/last.ckpt  model, EMA, optimiser, step, data position and random state
        samples/step_*.png     fixed-seed sample grids written during training
        generated/             what ``sample`` writes
        fid/                   FID and KID: history.jsonl during training, what ``evaluate`` writes
        inspect/               what ``inspect-data`` writes
        pairs/                 a reflow student's (noise, teacher sample) pairs (``pairs.py``)
        class_images/          DreamBooth's class images, drawn by the base (``pairs.py``), and preview.png
        <task>/                what each course task writes: visualize/, interpolate/, guidance/,
                               illusion/, restore/ (``Run.task``), each with a made_by.yaml
        tensorboard/ or csv/   the logs

An export (``export_run``) is the small folder a trained model is shared as:

    exports/<name>/
        model.safetensors      the EMA weights of the denoiser, tensors only
        model.json             data shape, class names (and cluster sizes), training step and where it came from,
                               and a latent model's normalisation
        autoencoder.*          a latent model's own autoencoder (codec.source), when it was trained here
        config.yaml            the resolved configuration it was trained with
        README.md              what it is and how to sample it
        preview.png            the run's latest sample grid, when there is one

A run trained from a pretrained diffusers UNet (model.name=pretrained) is exported as a
diffusers pipeline folder instead, which diffusers' ``from_pretrained`` loads as well as we do.
A run that trained adapters on a network (lora.base) keeps only the adapters in its checkpoints;
it is exported with them folded into the network's weights, or, on a diffusers pipeline, as the
adapters alone (pytorch_lora_weights.safetensors, which diffusers' ``load_lora_weights`` reads).

``new_model`` is the one place that builds networks, our own and pretrained ones. ``load_run``
turns a run directory, a checkpoint file, an export folder, or a pretrained diffusers pipeline
(a folder with model_index.json, or ``hf:<hub id>``; its outputs go to runs/pretrained/<name>/)
back into a ``Model`` ready to sample, with its run directory: no Lightning is involved. Nothing
it reads can run code: checkpoints are loaded weights-only, exports are safetensors, JSON and YAML.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .adapters.lora import (
    DIFFUSERS_ADAPTERS,
    add_adapters,
    is_adapter_weight,
    merged_weights,
    save_diffusers_adapters,
)
from .codecs import DiffusersAutoencoder, FeatureRange, Identity, TrainedAutoencoder, is_trained_autoencoder
from .config import dotted_keys, load_config, parse_command, run_config, with_later_keys
from .diffusion.parameterizations import NetworkDenoiser, build_parameterization
from .diffusion.schedules import DiscreteNoise, training_noise
from .errors import ConfigError, describe
from .kinds import data_kind
from .model import Model
from .models import IdealDenoiser, build_model
from .models.conditioning import ClassLabels, Vectors
from .storage import UnreadableFile, read_tensors

RUNS = Path("runs")
SAMPLE_OUTPUTS = ("samples.pt", "samples.png", "trajectory.png", "made_by.yaml")
IMAGE_NAME = re.compile(r"\d{6}\.png")


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
        self.pairs = self.root / "pairs"
        self.class_images = self.root / "class_images"

    @classmethod
    def named(cls, name: str) -> Run:
        return cls(RUNS / name)

    def task(self, name: str, out: str | None = None) -> Path:
        """Where a task writes its pictures: ``out`` when given, else runs/<name>/<task>/."""
        return Path(out) if out else self.root / name

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
                              f"{saved['class_names'] or 'none'}; it would now train on {list(data_shape)} with "
                              f"{class_names or 'none'}. Resume with the same data, or start a new run with "
                              "name=<new name>")
        return self.last_checkpoint, checkpoint["global_step"]

    def save_config(self, cfg: DictConfig, class_names: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, self.config)
        if class_names:
            self.classes.write_text(json.dumps(class_names, indent=1))


def record_made_by(out: Path, command_name: str, settings, model: Model, sampling=None) -> Path:
    """made_by.yaml beside a command's pictures: the command line, the model (checkpoint or
    export, and its training step), the sampling settings and the command's own settings."""
    origin = {"command": f"{__package__} {command_name}",                 # the program is named as the package
              "made": datetime.now().astimezone().isoformat(timespec="seconds"),
              "model": dict(model.origin),
              "sampling": OmegaConf.to_container(sampling) if sampling is not None else None,
              "settings": OmegaConf.to_container(settings)}
    path = Path(out) / "made_by.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(origin), path)
    return path


def fresh_output(out: Path) -> Path:
    """A folder of samples, writable and holding nothing from an earlier ``sample`` (mixed with
    these, old images would poison an FID folder). Files that sample did not write are never
    deleted: a folder of other images is refused instead."""
    images = out / "images"
    try:
        out.mkdir(parents=True, exist_ok=True)
        stale = sorted(images.iterdir()) if images.is_dir() else []
        foreign = [path.name for path in stale if not IMAGE_NAME.fullmatch(path.name)]
        if foreign:
            raise ConfigError(f"out={out}: {images} holds files that sample did not write ({foreign[0]}, ...); "
                              "choose another out=")
        for path in stale + [out / name for name in SAMPLE_OUTPUTS if (out / name).exists()]:
            path.unlink()
        (out / ".writable").touch()
        (out / ".writable").unlink()
    except OSError as error:
        raise ConfigError(f"cannot write samples to out={out}: {error.strerror or error}") from None
    return out


def check_resumable(saved: DictConfig, cfg: DictConfig, root: Path) -> None:
    """Refuse changes a resumed run cannot take (the network's shape, and what its output means);
    say which other changed settings now apply."""
    fixed = ("model.name", "model.conditional", f"model.{cfg.model.name}.", "data.image_size", "data.channels",
             "diffusion.objective", "diffusion.sigma_data", "distill.teacher", "distill.method", "lora.base", "codec.",
             "lora.rank", "lora.alpha", "lora.targets")
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
        checkpoint = read_tensors(path)
    except UnreadableFile as why:
        if "Python object" in str(why):
            raise ConfigError(f"refusing to load {path}: {why}. This project's checkpoints hold only tensors and "
                              "plain values; load files from sources you trust") from None
        raise ConfigError(f"{path} is not a readable checkpoint ({why})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    complete = isinstance(hparams, dict) and {"config", "data_shape"} <= hparams.keys() and "state_dict" in checkpoint
    if not complete:
        raise ConfigError(f"{path} is a torch file, but not a checkpoint of this project "
                          "(no state_dict and hyper_parameters with config and data_shape)")
    return checkpoint


# -- building models ---------------------------------------------------------------------------
def new_model(config, data_shape, class_names: list[str] = (), cluster_sizes: list[int] | None = None,
              codec=None, conditions: dict | None = None) -> Model:
    """A Model with new weights for ``config`` (the resolved configuration, a dict or DictConfig)
    and data of ``data_shape`` with ``class_names`` (and ``cluster_sizes`` when the classes are
    the data's clusters) or vector ``conditions`` (``Vectors.table``): the network that
    model.name names for the shape of the data (with codec.source, for the shape of its latents;
    ``codec``: that codec, already loaded; a tensor file's other data are scaled to [-1, 1] by
    ``FeatureRange``, data.normalise), or with
    model.name=pretrained the pipeline at model.pretrained.source (its network, prediction type
    and noise levels, and, unless the data gives one, its shape)."""
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(config), resolve=True))
    if cfg.lora.base:
        return adapted_model(cfg, data_shape, class_names, cluster_sizes)
    if cfg.model.name == "pretrained":
        return pretrained_model(cfg, data_shape)
    condition = None
    if cfg.model.conditional:
        condition = Vectors(**conditions) if conditions else ClassLabels(len(class_names)) if class_names else None
    if cfg.model.conditional and condition is None:
        raise ConfigError(f"model.conditional=true needs class labels or conditions, but data.name={cfg.data.name} "
                          "provides none (for an image folder set data.labels_from_subfolders=true; for toy2d use "
                          "moons or gaussians; a tensor file's dict holds them as 'labels' or 'conditions')")
    noise = training_noise(cfg.diffusion)
    codec = codec if codec is not None else load_codec(cfg.codec.source)
    kind = data_kind(tuple(data_shape), cfg.data.kind)
    if isinstance(codec, Identity) and cfg.data.name == "tensor_file" and kind != "image":
        codec = FeatureRange(kind, cfg.data.normalise)
    try:
        shape = codec.latent_shape(tuple(data_shape))
    except ValueError as error:
        raise ConfigError(f"codec.source={cfg.codec.source} cannot take the data (data.name={cfg.data.name}): "
                          f"{error}") from None
    try:
        net = build_model(cfg, shape, condition)
    except ValueError as error:          # the networks explain sizes they cannot take
        raise ConfigError(f"model.name={cfg.model.name} cannot be built for {'latents' if codec.latent else 'data'} "
                          f"of shape {list(shape)}: {error}") from None
    if isinstance(net, IdealDenoiser):      # already a denoiser: it has nothing to parameterize
        return Model(net, noise, shape, cfg, condition, list(class_names), cluster_sizes)
    parameterization = build_parameterization(cfg.diffusion.objective, cfg.diffusion.sigma_data)
    denoiser = NetworkDenoiser(net, parameterization, noise.sigma_min, noise.sigma_max)
    return Model(denoiser, noise, shape, cfg, condition, list(class_names), cluster_sizes, codec)


def model_for_data(cfg, data, codec=None) -> Model:
    """A new Model (``new_model``) for the data of a data module that is set up: its shape, its
    classes or vector conditions (their ranges measured on the training examples) and, for a
    tensor file's data, its scaling (``FeatureRange``), measured there too and served by it."""
    conditions = Vectors.measured(data.train_set.labels).table() if data.conditioned else None
    model = new_model(cfg, data.data_shape, data.class_names, data.cluster_sizes, codec, conditions)
    serve_scaled(data, model.codec)
    return model


def serve_scaled(data, codec) -> None:
    """A tensor file's data served as its model sees them: scaled by the model's ``FeatureRange``,
    measured on the training examples unless it already is (a student's: its teacher's)."""
    if isinstance(codec, FeatureRange):
        data.scale_with(codec)


def load_codec(source: str | None):
    """The codec that codec.source names (``codecs.py``): pixels, this project's autoencoder (a
    folder that the ``autoencoder`` command wrote, or an export that holds its copy), or a
    diffusers AutoencoderKL."""
    if not source:
        return Identity()
    if is_trained_autoencoder(Path(source).expanduser()):
        return TrainedAutoencoder.load(Path(source).expanduser())
    from .adapters.pretrained import load_autoencoder

    return DiffusersAutoencoder(load_autoencoder(source))


def new_student(cfg, teacher: Model) -> Model:
    """A few-step student of ``teacher`` (distill.teacher), configured by ``cfg``
    (``config.student_config``): a new Model of the teacher's network, which starts from the
    teacher's (EMA) weights and works in the teacher's space: its codec (a latent model's
    autoencoder and normalisation, a tensor file's scaling) and its condition table (classes,
    clusters or vector conditions). The teacher is a run or an export of this project's
    networks, or a pixel diffusers pipeline (a UNet2DModel: DDPM's google/ddpm-cifar10-32, or a
    run that fine-tuned one), whose student trains at the recipe's noise levels, not at the
    pipeline's own discrete ones."""
    if teacher.config.model.name == "ideal":
        raise ConfigError(f"distill.teacher={cfg.distill.teacher} is the ideal denoiser (model.name=ideal): students "
                          "start from the teacher's network, and it has none")
    pipeline = teacher.pretrained
    if pipeline is not None and (pipeline.takes_prompts or pipeline.vae is not None):
        raise ConfigError(f"distill.teacher={cfg.distill.teacher} is a text-to-image or latent pipeline: students "
                          "start from a run of this project's networks or from a pixel UNet2DModel pipeline "
                          "(e.g. google/ddpm-cifar10-32)")
    student = new_model(cfg, teacher.codec.data_shape(teacher.data_shape), teacher.class_names,
                        teacher.cluster_sizes, teacher.codec, teacher.condition_table)
    student.denoiser.load_state_dict(teacher.denoiser.state_dict())
    if student.pretrained is not None:
        student = dataclasses.replace(student, noise=training_noise(cfg.diffusion))
    return student


def classes(names: list[str]) -> str:
    """"3 classes (0, 1, 2)", in a line whatever their number."""
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} classes ({shown})" if names else "no classes"


def adapted_model(cfg: DictConfig, data_shape, class_names: list[str], cluster_sizes: list[int] | None) -> Model:
    """lora.base with low-rank adapters (``adapters/lora.py``): the base network, frozen, with new
    adapters that start at zero, so that the model starts out as the base. Its data must fit the
    base: the base's shape (a latent pipeline's images must fit its autoencoder) and, for a
    class-conditional base, its classes; a text-to-image pipeline is conditioned on the data's
    captions (data.captions or data.prompt), each a class of its own, followed by DreamBooth's class
    prompt (lora.class_prompt) and the prompts that the sample grids draw (trainer.sample_labels)."""
    base, _ = load_run(cfg.lora.base)
    where = f"lora.base={cfg.lora.base}"
    if base.config.get("lora", {}).get("base"):
        raise ConfigError(f"{where} has adapters of its own: export it (`export run={cfg.lora.base}` folds them into "
                          "its weights) and adapt the export")
    if data_shape is not None:
        try:
            shape = base.codec.latent_shape(tuple(data_shape))
        except ValueError as error:
            raise ConfigError(f"{where} cannot take the data (data.name={cfg.data.name}): {error}") from None
        if not base.codec.latent and shape != base.data_shape:
            raise ConfigError(f"{where} draws examples of shape {list(base.data_shape)}, but data.name={cfg.data.name} "
                              f"gives {list(shape)}: set data.image_size and data.channels to the base's")
        base.data_shape = shape
    prior = [cfg.lora.class_prompt] if cfg.lora.class_prompt else []
    if prior and not base.takes_prompts:
        raise ConfigError(f"lora.class_prompt={prior[0]} keeps a class as the base draws it (DreamBooth's prior "
                          f"preservation) and needs a text-to-image base; {where} is not one")
    if base.takes_prompts:
        if not class_names:
            raise ConfigError(f"{where} is a text-to-image model: its images need captions (data.captions=true, a "
                              "text file beside each image, or one for all: data.prompt='a photo of sks dog')")
        base.use_prompts(list(dict.fromkeys([*class_names, *prior, *map(str, cfg.trainer.sample_labels)])))
    elif base.condition is not None and list(class_names) != base.class_names:
        raise ConfigError(f"{where} is conditioned on {classes(base.class_names)}; the data has "
                          f"{classes(class_names)}: adapt it on data labelled alike (for a base guided by clusters, "
                          f"data.clusters={len(base.class_names)})")
    base.cluster_sizes = cluster_sizes or base.cluster_sizes
    add_adapters(base.denoiser.net, cfg.lora.rank, cfg.lora.alpha, list(cfg.lora.targets))
    base.config, base.origin = cfg, {}
    return base


def pretrained_model(cfg: DictConfig, data_shape) -> Model:
    """model.name=pretrained: a pixel UNet is fine-tuned like ours; a text-to-image pipeline is
    only sampled, with prompts as classes (``Model.use_prompts``), and its VAE decodes the samples."""
    from .adapters.pretrained import load_pretrained

    source = cfg.model.pretrained.source
    if cfg.model.conditional:
        raise ConfigError("model.name=pretrained: the model brings its own conditioning (prompts for a "
                          "text-to-image pipeline, none for a UNet2DModel); set model.conditional=false")
    pretrained = load_pretrained(source)
    shape = pretrained.data_shape
    if data_shape is not None and pretrained.takes_prompts:
        raise ConfigError(f"model.pretrained.source={source} is a text-to-image pipeline: those are sampled only "
                          "here; fine-tuning takes an unconditional UNet2DModel pipeline (DDPM)")
    if data_shape is not None and len(data_shape) != len(shape):
        raise ConfigError(f"model.pretrained.source={source} draws images of shape {list(shape)}, but "
                          f"data.name={cfg.data.name} gives examples of shape {list(data_shape)}")
    if data_shape is not None and data_shape[0] != shape[0]:
        raise ConfigError(f"model.pretrained.source={source} takes {shape[0]} channels, the data has "
                          f"{data_shape[0]}: set data.channels={shape[0]}")
    codec = DiffusersAutoencoder(pretrained.vae) if pretrained.vae is not None else Identity()
    return Model(pretrained.denoiser, DiscreteNoise(pretrained.sigmas), tuple(data_shape or shape), cfg,
                 codec=codec, pretrained=pretrained)


# -- loading models --------------------------------------------------------------------------------
PRETRAINED_PREFIX = "hf:"
PRETRAINED_SAMPLING = ["sampling.sampler=dpmpp_2m", "sampling.steps=25", "sampling.schedule=trailing",
                       "sampling.guidance=7.5"]    # guidance: Stable Diffusion's usual scale, for text models


def load_run(path: str | Path) -> tuple[Model, Run]:
    """The model saved in a run directory's last.ckpt (or in the given .ckpt, or in an export
    folder, or a diffusers pipeline), in eval mode on the CPU, and its run directory (for an
    export, the folder itself takes the outputs). The caller's random state is left as it was
    (building the network draws initial weights that the checkpoint then replaces)."""
    if str(path).startswith(PRETRAINED_PREFIX):
        return load_pretrained_run(str(path).removeprefix(PRETRAINED_PREFIX))
    path = Path(path).expanduser()
    if (path / "model_index.json").is_file():
        return load_pretrained_run(str(path))
    if (path / EXPORT_WEIGHTS).is_file():
        return load_export(path)
    if (path / DIFFUSERS_ADAPTERS).is_file():
        return load_adapter_export(path)
    checkpoint = path if path.suffix == ".ckpt" else Run(path).last_checkpoint
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {checkpoint}; pass run=runs/<name> of a trained run, a .ckpt file, "
                          f"an export folder, or a diffusers pipeline (a folder, or {PRETRAINED_PREFIX}<hub id>)")
    saved = read_checkpoint(checkpoint)
    hparams = saved["hyper_parameters"]
    ema = {key.removeprefix("ema."): value for key, value in saved["state_dict"].items() if key.startswith("ema.")}
    model = model_with_weights(hparams["config"], hparams["data_shape"], hparams.get("class_names") or [],
                               hparams.get("cluster_sizes"), ema,
                               f"{checkpoint} does not fit the model its own configuration describes",
                               hparams.get("latents"), hparams.get("conditions"))
    model.origin = {"checkpoint": str(checkpoint), "step": saved.get("global_step")}
    return model, Run(checkpoint.parent.parent)


def model_with_weights(config, data_shape, class_names, cluster_sizes, weights: dict, misfit: str,
                       latents: dict | None = None, conditions: dict | None = None) -> Model:
    """A model with ``weights`` (and its codec's normalisation, ``latents``: a latent model's
    ``LatentCodec.statistics``, a tensor file's ``FeatureRange.statistics``; and its vector
    ``conditions``, ``Vectors.table``), in eval mode on the CPU, the caller's random state untouched;
    ``misfit`` says what is wrong when the weights do not fit. Keys that ``config`` predates
    take this project's defaults. An adapted model's weights are its adapters alone: the rest
    are its base's (lora.base)."""
    with torch.random.fork_rng(devices=[]):
        model = new_model(with_later_keys(config), data_shape, class_names, cluster_sizes, conditions=conditions)
    if latents is not None:
        model.codec.normalise(latents)
    try:
        if model.config.lora.base:
            load_adapters(model.denoiser, weights)
        else:
            model.denoiser.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"{misfit}: {str(error).splitlines()[0]}") from None
    model.denoiser.requires_grad_(False).eval()
    return model


def load_adapters(denoiser: torch.nn.Module, weights: dict) -> None:
    """Load the adapter weights of an adapted ``denoiser``: every one of them, and nothing else."""
    missing, unexpected = denoiser.load_state_dict(weights, strict=False)
    missing = [key for key in missing if is_adapter_weight(key)]
    if missing or unexpected:
        raise RuntimeError(f"missing adapter weights {missing[:3]}, unexpected weights {unexpected[:3]}")


def load_export(folder: Path) -> tuple[Model, Run]:
    """The model of an export folder, in eval mode on the CPU; the folder itself takes the outputs."""
    from safetensors.torch import load_file

    try:
        info = json.loads((folder / EXPORT_INFO).read_text())
        config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=True)
        weights = load_file(folder / EXPORT_WEIGHTS)
    except Exception as error:         # a missing file, bad JSON or YAML, a damaged safetensors file
        raise ConfigError(f"{folder} is not a readable export folder ({EXPORT_WEIGHTS}, {EXPORT_INFO} and "
                          f"config.yaml; {describe(error)})") from None
    if is_trained_autoencoder(folder):          # the export's own copy of its autoencoder
        config["codec"]["source"] = str(folder)
    model = model_with_weights(config, info["data_shape"], info["class_names"] or [], info.get("cluster_sizes"),
                               weights, f"{folder / EXPORT_WEIGHTS} does not fit the model its config.yaml describes",
                               info.get("latents"), info.get("conditions"))
    model.origin = {"export": str(folder), "step": info["step"], "trained_in": info["trained_in"]}
    return model, Run(folder)


def load_pretrained_run(source: str) -> tuple[Model, Run]:
    """A diffusers pipeline, sampled as it was trained (DPM-Solver++(2M) over its own discrete
    noise levels), with this project's other defaults; a pipeline that this project exported
    (``export_pipeline``, its config.yaml beside it) samples as its run did, a few-step student
    with its own sampler. Outputs go to runs/pretrained/<name>."""
    cfg = pretrained_config(source)
    with torch.random.fork_rng(devices=[]):
        model = new_model(cfg, None)
    model.denoiser.requires_grad_(False).eval()
    model.codec.eval()
    model.origin = {"pretrained": source, "step": None}
    return model, Run(RUNS / "pretrained" / Path(source).name)


def pretrained_config(source: str) -> DictConfig:
    """The configuration of a diffusers pipeline: this project's defaults, its network and the way
    such pipelines are sampled, or the way its run sampled it when this project exported it."""
    cfg = load_config(["model.name=pretrained", f"model.pretrained.source={source}", "model.conditional=false",
                       "data.clusters=0", *PRETRAINED_SAMPLING])
    exported = Path(source) / "config.yaml"
    if exported.is_file():
        cfg.sampling = OmegaConf.merge(cfg.sampling, OmegaConf.load(exported).sampling)
    return cfg


def with_base(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg``, loaded from ``overrides``, as training takes it: with lora.base, loaded again on
    its base's network, noise levels and sampling (``config.load_config``)."""
    return load_config(overrides, base=saved_config(cfg.lora.base)) if cfg.lora.base else cfg


def saved_config(path: str) -> DictConfig:
    """The configuration that ``load_run(path)`` gives its model, read without its weights."""
    if path.startswith(PRETRAINED_PREFIX):
        return pretrained_config(path.removeprefix(PRETRAINED_PREFIX))
    where = Path(path).expanduser()
    if (where / "model_index.json").is_file():
        return pretrained_config(path)
    folder = where.parent.parent if where.suffix == ".ckpt" else where
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in {folder}: name a run directory, a .ckpt file in one, an export folder, "
                          f"or a diffusers pipeline (a folder, or {PRETRAINED_PREFIX}<hub id>)")
    return with_later_keys(OmegaConf.load(folder / "config.yaml"))


def open_run(overrides: list[str], schema, name: str, counts: tuple[str, ...] = ()) -> tuple:
    """How every command that draws from a trained run starts: its ``key=value`` pairs read
    (sampling keys apart, ``config.parse_command``), the run loaded, its sampling section updated
    with the sampling keys given, a text model given its prompts (the labels asked for), and the
    labels and conditions asked for turned into class numbers. Returns (command, model, run
    directory, sampling)."""
    command, sampling_overrides = parse_command(overrides, schema, name, "sampling", counts)
    model, run = load_run(command.run)
    sampling = run_config(model.config, "sampling", sampling_overrides).sampling
    if model.takes_prompts:
        model.use_prompts(prompts_asked(command, name))
    resolve_labels(command, model)
    return command, model, run, sampling


def prompts_asked(command, name: str) -> list[str]:
    """A text-to-image model's classes: the prompts given as labels (and in conditions), each once."""
    given = [*(command.get("labels") or []), *(pair[0] for pair in command.get("conditions") or [])]
    if not given:
        how = "give prompts as labels, e.g. 'labels=[a photo of a cat]'" if "labels" in command else "it needs prompts"
        raise ConfigError(f"{command.run} is a text-to-image model: {how} ({name})")
    return list(dict.fromkeys(str(prompt) for prompt in given))


def resolve_labels(command, model: Model) -> None:
    """Labels given by class name (``labels=[rose]``) or by number (``labels=[3]``) become class
    numbers, in the command itself; conditions (where the command has them) are [label, weight]
    pairs with a finite weight. A model conditioned on vectors takes each label as a list of its
    numbers, in the data's own units (``labels=[[0.5,1,2,3]]``)."""
    conditions = command.get("conditions") or []
    if model.condition_table is not None:
        size = model.condition.features
        given = command.get("labels") or []
        labels = [list(label) if isinstance(label, (list, ListConfig)) else [label] for label in given]
        if conditions or any(len(label) != size or not all(map(is_finite_number, label)) for label in labels):
            raise ConfigError(f"{command.run} is conditioned on vectors of {size} numbers: give each as a list in "
                              f"labels, e.g. labels=[[{', '.join(['0.5'] * size)}]] (weighted conditions are for "
                              "class labels)")
        if labels:
            command.labels = [[float(value) for value in label] for label in labels]
        return
    if (command.get("labels") or conditions) and not model.num_classes:
        raise ConfigError(f"labels and conditions need a class-conditional model; {command.run} was trained "
                          "with model.conditional=false")
    if any(len(pair) != 2 or not is_finite_number(pair[1]) for pair in conditions):
        raise ConfigError(f"conditions={list(conditions)}: each condition is a [label, weight] pair with a "
                          "finite weight, e.g. conditions=[[3,1.5],[8,1.0]]")
    if command.get("labels"):
        command.labels = [model.class_number(label) for label in command.labels]
    if conditions:
        command.conditions = [[model.class_number(label), float(weight)] for label, weight in conditions]


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- exports -----------------------------------------------------------------------------------
EXPORT_WEIGHTS, EXPORT_INFO = "model.safetensors", "model.json"


def export_run(model: Model, out: Path, preview: Path | None = None, merge: bool = False) -> Path:
    """Write the export folder ``out`` (see above) for ``model``, loaded from a checkpoint (its
    ``origin`` says which, and the step). An adapted model (lora.base) is exported with its
    adapters folded into its weights (``merge``, always for this project's networks), or, on a
    diffusers pipeline, as its adapters alone in diffusers' LoRA format."""
    if model.config.lora.base and (merge or model.pretrained is None):
        model = merged_model(model)
    out.mkdir(parents=True, exist_ok=True)
    if model.config.lora.base:
        export_adapters(model, out)
    elif model.pretrained is not None:
        export_pipeline(model, out)
    else:
        export_network(model, out)
    if preview is not None:
        shutil.copyfile(preview, out / "preview.png")
    return out


def export_network(model: Model, out: Path) -> None:
    """This project's own network: its EMA weights as safetensors, model.json, config.yaml, a README,
    and a latent model's own autoencoder."""
    from safetensors.torch import save_file

    source, step, cfg = model.origin["checkpoint"], model.origin["step"], model.config
    weights = {key: value.detach().cpu().contiguous() for key, value in model.denoiser.state_dict().items()}
    save_file(weights, out / EXPORT_WEIGHTS)
    info = {"format": "diffusion-lab export 1", "data_shape": list(model.codec.data_shape(model.data_shape)),
            "class_names": list(model.class_names), "step": step, "trained_in": source,
            "cluster_sizes": model.cluster_sizes, "latents": model.codec.statistics,
            "conditions": model.condition_table}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=1))
    if isinstance(model.codec, TrainedAutoencoder):          # an export carries its own autoencoder
        model.codec.save(out)
    OmegaConf.save(cfg, out / "config.yaml")
    classes = f" of {len(info['class_names'])} classes" if info["class_names"] else ""
    (out / "README.md").write_text(
        f"# {cfg.name}: a {cfg.model.name} diffusion model ({cfg.diffusion.objective} objective)\n\n"
        f"Trained {step} steps on {cfg.data.name} data of shape {info['data_shape']}{classes}. "
        f"Draw samples with the project that made it:\n\n    {__package__} sample run=<this folder>\n\n"
        f"{EXPORT_WEIGHTS}: the EMA weights; {EXPORT_INFO}: data shape, class names, step; config.yaml: the "
        "configuration it was trained with.\n")


def merged_model(model: Model) -> Model:
    """An adapted model as the plain model that computes the same: its base's network with
    W + (alpha / r) B A in place of each adapted W, and no lora.base."""
    cfg = model.config.copy()
    cfg.lora.base = None
    data_shape = None if model.pretrained is not None else model.codec.data_shape(model.data_shape)
    merged = model_with_weights(cfg, data_shape, model.class_names, model.cluster_sizes,
                                merged_weights(model.denoiser), "the merged weights do not fit the base",
                                model.codec.statistics, model.condition_table)
    merged.origin = model.origin
    return merged


def export_adapters(model: Model, out: Path) -> None:
    """An adapted diffusers pipeline as its adapters alone: the file that diffusers'
    ``load_lora_weights`` reads (``adapters/lora.py``), with model.json, config.yaml and a README."""
    cfg, step = model.config, model.origin["step"]
    save_diffusers_adapters(model.pretrained.pipeline, model.denoiser.net.unet, out, cfg.lora.rank, cfg.lora.alpha)
    info = {"format": "diffusion-lab adapters 1", "data_shape": list(model.data_shape), "step": step,
            "trained_in": model.origin["checkpoint"], "base": cfg.lora.base}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=1))
    OmegaConf.save(cfg, out / "config.yaml")
    base = cfg.model.pretrained.source
    (out / "README.md").write_text(
        f"# {cfg.name}: LoRA adapters (rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}) for {base}\n\n"
        f"Trained {step} steps on {cfg.data.name} data. {DIFFUSERS_ADAPTERS} holds the adapters alone, in "
        "diffusers' format:\n\n    from diffusers import DiffusionPipeline\n"
        f"    pipeline = DiffusionPipeline.from_pretrained('{base}')\n"
        "    pipeline.load_lora_weights('<this folder>')\n\n"
        f"or, with the project that made it: `{__package__} sample run=<this folder> 'labels=[your prompt]'`.\n")


def load_adapter_export(folder: Path) -> tuple[Model, Run]:
    """Adapters exported by ``export_adapters``, loaded by diffusers onto their base pipeline."""
    try:
        info = json.loads((folder / EXPORT_INFO).read_text())
        cfg = with_later_keys(OmegaConf.load(folder / "config.yaml"))
    except Exception as error:
        raise ConfigError(f"{folder} is not a readable adapter export ({EXPORT_INFO} and config.yaml; "
                          f"{describe(error)})") from None
    model, _ = load_run(cfg.lora.base)
    model.pretrained.pipeline.load_lora_weights(str(folder), weight_name=DIFFUSERS_ADAPTERS)
    model.denoiser.requires_grad_(False).eval()
    model.config = cfg
    model.origin = {"export": str(folder), "step": info["step"], "trained_in": info["trained_in"]}
    return model, Run(folder)


def export_pipeline(model: Model, out: Path) -> None:
    """A fine-tuned pretrained model as the pipeline it came from, with the EMA network in place
    of the original: a diffusers folder (``DiffusionPipeline.from_pretrained(out)``)."""
    cfg = model.config
    model.pretrained.save(out, model.denoiser.net.unet)
    sampling = cfg.sampling
    student = (f", a {cfg.distill.method} student of {cfg.distill.teacher}. The project samples it with its own "
               f"sampler (sampler={sampling.sampler} schedule={sampling.schedule} steps={sampling.steps} "
               f"sigma_min={sampling.sigma_min:g}, from config.yaml); the pipeline's scheduler is the teacher's"
               if cfg.distill.teacher else "")
    (out / "README.md").write_text(
        f"# {cfg.name}: {cfg.model.pretrained.source} fine-tuned for {model.origin['step']} steps\n\n"
        f"A diffusers pipeline (EMA weights) fine-tuned on {cfg.data.name} data of shape "
        f"{list(model.data_shape)}{student}.\n\n    from diffusers import DiffusionPipeline\n"
        "    pipeline = DiffusionPipeline.from_pretrained('<this folder>')\n\n"
        f"or, with the project that made it: `{__package__} sample run=<this folder>`.\n")
    OmegaConf.save(cfg, out / "config.yaml")
