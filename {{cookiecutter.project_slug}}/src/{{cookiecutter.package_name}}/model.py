"""``Model``: a trained diffusion model to hold, sample and steer, with no Lightning in sight.

    model, run = load_run("runs/digits")        # runs.py: a run, a checkpoint, an export or a pipeline
    samples = model.sample(16, torch.Generator().manual_seed(0)).x

A Model holds the sampling network (the EMA weights of training), the noise levels it was
trained on, the shape of one example, its condition table (the class names, the clusters'
sizes, a text model's prompts), its codec (latents to pixels; nothing to do for pixel models),
the run's configuration and where it came from. ``generate`` is the one way to draw from it:
given any denoiser made from ``model.denoiser`` (guided by ``guided``, or wrapped by a task), it
builds the noise levels and the sampler that a sampling section names, runs them in the
sampling precision, decodes, and counts network evaluations as the denoiser states them.
Training (``module.py``) hands its Model to the sample-grid and FID callbacks; every command
gets one from ``runs.load_run``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .codecs import Identity
from .devices import autocast, compile_in_place
from .diffusion.generate import generate, indexed_generators
from .diffusion.guidance import GuidedDenoiser, evaluations
from .diffusion.samplers import (
    SAMPLERS,
    Denoiser,
    Generators,
    Hook,
    SampleResult,
    Step,
    configured_sampler,
    standard_normal,
)
from .diffusion.schedules import sampling_sigmas
from .errors import ConfigError
from .kinds import data_kind
from .models.conditioning import ClassLabels, Condition, Vectors
from .sets import without_centre

GOLDEN = (math.sqrt(5) - 1) / 2      # frac(i * GOLDEN), i = 0, 1, 2, ...: the most even spread over [0, 1)


@dataclass(eq=False)
class Model:
    """What sampling needs of a trained model (see above); ``runs.new_model`` makes a new one,
    ``runs.load_run`` a saved one."""

    denoiser: nn.Module                  # D(x, sigma, condition) -> x0_hat, with the EMA weights
    noise: Any                           # the training noise levels (schedules.py); ``trailing`` walks their table
    data_shape: tuple[int, ...]          # one example (a latent model's: one latent)
    config: Any                          # the run's resolved configuration (its sampling section: the defaults)
    condition: Condition | None = None       # the kind of condition, None for an unconditional model
    class_names: list[str] = field(default_factory=list)     # the classes' names (or the prompts)
    cluster_sizes: list[int] | None = None   # examples per cluster, when the classes are the data's clusters
    codec: nn.Module = field(default_factory=Identity)       # decodes samples to data (codecs.py)
    origin: dict = field(default_factory=dict)               # where the weights came from (runs.py says)
    pretrained: Any = None               # the diffusers pipeline it came from (adapters/pretrained.py), if any
    precision: str = "32-true"           # of the network while sampling (``speed_up``)

    # -- where it lives ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.denoiser.parameters(), self.denoiser.buffers())).device

    def to(self, device: torch.device | str) -> Model:
        self.denoiser.to(device)
        self.codec.to(device)
        return self

    def speed_up(self, precision: str, compile_mode: str = "none") -> None:
        """Sample under autocast in ``precision`` (bf16-mixed or 16-mixed; the samplers' own
        arithmetic stays float32), with the network compiled by ``compile_mode``
        (reduce-overhead replays CUDA graphs: it pays for small batches and many steps)."""
        self.precision = precision
        compile_in_place(getattr(self.denoiser, "net", self.denoiser), compile_mode)

    def need_pixels(self, why: str) -> None:
        """Refuse, for a latent model, what needs its samples as pixels along the way."""
        if self.codec.latent:
            raise ConfigError(f"{why}, but this model samples latents, decoded to data only at the end")

    def check_data(self, data_shape: tuple[int, ...]) -> None:
        """Data to compare samples with (FID) or to start from (training images, to restore or to
        interpolate between) must have the shape of this model's decoded samples (a pretrained
        model takes this project's data keys to name its data)."""
        shape = self.codec.data_shape(self.data_shape)
        if tuple(data_shape) != shape:
            raise ConfigError(f"the data (data.name={self.config.data.name}, shape {list(data_shape)}) does not fit "
                              f"the model (shape {list(shape)}): set data.name, data.image_size and "
                              "data.channels to data of the model's kind (in configs/local.yaml for a pretrained "
                              "model)")

    @property
    def kind(self) -> str:
        """What one example is: vector, sequence, set or image (``kinds.data_kind``)."""
        return data_kind(self.data_shape, self.config.data.get("kind", "auto"))

    # -- the condition table -----------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        return self.condition.count if isinstance(self.condition, ClassLabels) else None

    @property
    def condition_table(self) -> dict | None:
        """A vector-conditioned model's ranges and example conditions (saved with the run)."""
        return self.condition.table() if isinstance(self.condition, Vectors) else None

    @property
    def draws_clusters(self) -> bool:
        """Whether the labels are the data's own clusters (data.clusters), drawn in proportion."""
        return bool(self.num_classes and self.cluster_sizes)

    @property
    def takes_prompts(self) -> bool:
        """Whether this is a text-to-image model, whose classes are the prompts it is given."""
        return self.pretrained is not None and self.pretrained.takes_prompts

    def use_prompts(self, prompts: list[str]) -> None:
        """A text-to-image model: these prompts become its classes (label k is prompts[k])."""
        self.pretrained.use_prompts(prompts)
        self.condition = ClassLabels(len(prompts))
        self.class_names = list(prompts)

    def class_number(self, label) -> int:
        """A class by its name, else by its number."""
        names = self.class_names
        if str(label) in names:
            return names.index(str(label))
        if str(label).isdigit() and int(label) < len(names):
            return int(label)
        named = [f"{i}={name}" for i, name in enumerate(names) if name != str(i)]
        shown = ""
        if named:
            shown = f" or a name ({', '.join(named[:12])}{', ...' if len(named) > 12 else ''})"
        raise ConfigError(f"label {label} is not one of the model's classes: give a class number from 0 to "
                          f"{len(names) - 1}{shown}")

    def default_labels(self, indices: Tensor) -> Tensor | None:
        """The labels of samples number ``indices`` when none are asked for. Classes come in
        turn: 0, 1, 2, ... Clusters come as often as the data holds them, so that the samples
        follow the data as an unconditional model's should (``in_proportion``). A
        vector-conditioned model takes the training conditions it keeps, in turn."""
        if isinstance(self.condition, Vectors):
            return self.condition.examples[indices % len(self.condition.examples)]
        if not self.num_classes:
            return None
        if not self.draws_clusters:
            return indices % self.num_classes
        return in_proportion(indices, self.cluster_sizes)

    def column_names(self, n: int, labels: list[int] | None = None) -> list[str] | None:
        """The class names of the columns of a grid of ``n`` samples when their labels cycle
        (``labels`` in turn, or else all classes in turn; not clusters drawn in proportion) with
        a period of at most 16: the cycle repeated to about the square root of ``n``, so that
        every column holds one class; else None."""
        if not self.num_classes or (self.draws_clusters and not labels):
            return None
        cycle = labels or list(range(self.num_classes))
        if len(cycle) > 16:
            return None
        repeats = max(1, round(math.sqrt(n) / len(cycle)))
        return [self.class_names[label] for label in cycle] * repeats

    # -- drawing -----------------------------------------------------------------------------
    def guided(self, n: int, guidance: float, labels: Tensor | None = None,
               conditions: list[tuple[Tensor, float]] | None = None) -> Denoiser:
        """The denoiser, guided when the model is conditional: towards ``labels`` (``default_labels``
        unless given) with weight ``guidance``, or towards several weighted ``conditions``, a list
        of (labels, weight) pairs, all evaluated in one batched call."""
        if self.condition is None:
            return self.denoiser
        if conditions is None:
            labels = self.default_labels(torch.arange(n)) if labels is None else labels
            conditions = [(labels, guidance)]
        device = self.device
        null = self.condition.null(len(conditions[0][0]), device)
        return GuidedDenoiser(self.denoiser, [(condition.to(device), weight) for condition, weight in conditions], null)

    def sigmas(self, sampling) -> Tensor:
        """The noise levels that the sampling section ``sampling`` names, for this model."""
        return sampling_sigmas(sampling, self.noise.table)

    def nfe(self, sampling) -> int:
        """Network evaluations per sample of ``sample`` with the sampling section ``sampling``."""
        return SAMPLERS[sampling.sampler].calls(sampling.steps) * evaluations(self.guided(1, sampling.guidance))

    def generate(self, denoiser: Denoiser, sampling=None, *, shape: tuple[int, ...] | None = None,
                 noise: Tensor | None = None, image: Tensor | None = None, strength: float = 1.0,
                 generator: Generators = None, hooks: Iterable[Hook] = (),
                 decode: bool = True) -> SampleResult:
        """``diffusion.generate`` with ``denoiser`` (this model's, guided or wrapped) down the
        noise levels of ``sampling`` (default: the run's own sampling section) with its sampler,
        from ``shape`` (noise), ``noise`` or ``image`` (SDEdit, at ``strength``), in the sampling
        precision; the samples decoded to data unless ``decode`` is False (a latent model's
        latents, for a task that acts on them)."""
        sampling = sampling or self.config.sampling
        self.denoiser.eval()
        with autocast(self.device, self.precision):
            result = generate(denoiser, self.sigmas(sampling), configured_sampler(sampling), shape=shape, noise=noise,
                              image=image, strength=strength, generator=generator, hooks=hooks, device=self.device)
            x = self.codec.decode(result.x) if decode else result.x
        return SampleResult(x, result.nfe)

    def sample(self, n: int, generator: Generators, sampling=None, labels: Tensor | None = None,
               conditions: list[tuple[Tensor, float]] | None = None, hooks: Iterable[Hook] = (),
               noise: Tensor | None = None) -> SampleResult:
        """``n`` samples as ``sampling`` says (default: the run's own sampling section), from
        ``noise`` if given (else drawn from ``generator``); see ``guided`` for ``labels`` and
        ``conditions``."""
        sampling = sampling or self.config.sampling
        if self.kind == "set":
            noise = self.set_noise(torch.arange(n), generator) if noise is None else noise
            hooks = [centre_each_step, *hooks] if self.config.data.zero_com else hooks
        shape = None if noise is not None else (n, *self.data_shape)
        return self.generate(self.guided(n, sampling.guidance, labels, conditions), sampling, shape=shape,
                             noise=noise, generator=generator, hooks=hooks)

    def set_noise(self, indices: Tensor, generator: Generators) -> Tensor:
        """The starting noise of sets number ``indices``: sample i has as many points as training
        sets have in proportion (``in_proportion``, over the counts the codec keeps; all P when
        they all have P), the rest missing (``sets.py``), and with data.zero_com its centre of
        mass at zero."""
        noise = standard_normal((len(indices), *self.data_shape), generator)
        counts = (self.codec.statistics or {}).get("points")
        if counts:
            sizes = in_proportion(indices, counts)
            noise[torch.arange(self.data_shape[0]) >= sizes[:, None]] = torch.nan
        return without_centre(noise) if self.config.data.zero_com else noise

    def sample_numbered(self, indices: Tensor, seed: int, sampling=None, labels: Tensor | None = None) -> Tensor:
        """Samples number ``indices`` of a fixed, numbered set: sample i draws all its noise (where
        it starts, and a stochastic sampler's steps) from a generator seeded with seed + i and,
        for a conditional model, takes the label ``default_labels`` gives number i (or
        ``labels[i]``, numbered alike), whatever batch it is drawn in."""
        generators = indexed_generators(indices, seed)
        noise = self.set_noise(indices, generators) if self.kind == "set" else None
        labels = self.default_labels(indices) if labels is None else labels[indices % len(labels)]
        return self.sample(len(indices), generators, sampling, labels=labels, noise=noise).x


def in_proportion(indices: Tensor, counts: list[int]) -> Tensor:
    """For samples number ``indices``, a value k drawn in proportion to ``counts[k]``: the value
    into whose share of [0, 1) the number frac(i * golden ratio) falls, a sequence that spreads
    any run of consecutive samples over the values in proportion to their shares (Weyl 1916)."""
    counts = torch.tensor(counts, dtype=torch.float64)
    return torch.searchsorted(counts.cumsum(0) / counts.sum(), indices.double() * GOLDEN % 1, right=True)


def centre_each_step(step: Step) -> None:
    """A hook that keeps sets in the zero centre-of-mass subspace: a stochastic sampler's fresh
    noise has a centre of mass of its own, taken out of the state at every step, and out of the
    estimate, which then is the denoiser's at the centred state (the network ignores the centre;
    the skip connection c_skip x does not)."""
    step.x.copy_(without_centre(step.x))
    step.x0_hat.copy_(without_centre(step.x0_hat))


def labels_in_turn(labels: list[int] | None, start: int, stop: int) -> Tensor | None:
    """The labels of samples start..stop-1 when ``labels`` are used in turn (None: no labels)."""
    return torch.tensor(labels)[torch.arange(start, stop) % len(labels)] if labels else None
