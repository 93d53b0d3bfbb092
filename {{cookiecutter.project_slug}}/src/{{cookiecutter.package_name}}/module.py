"""``DiffusionModule``: the training step, EMA, the optimiser, and sampling with EMA weights.

Batches arrive ready: the data module has already augmented them and scaled images to [-1, 1]
(``data/datamodule.py``). Sampling is ``generate`` (``diffusion/generate.py``) on the EMA
denoiser, guided when the model is class-conditional.
"""
from __future__ import annotations

import copy
import math

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from .diffusion.generate import generate, indexed_noise
from .diffusion.guidance import GuidedDenoiser
from .diffusion.parameterizations import NetworkDenoiser, build_parameterization, x0_loss_weight
from .diffusion.samplers import Denoiser, Hook, SampleResult, configured_sampler
from .diffusion.schedules import DiscreteNoise, sampling_sigmas, training_noise
from .errors import ConfigError, TrainingDiverged
from .models import build_model


AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}     # Lightning's mixed precisions
GOLDEN = (math.sqrt(5) - 1) / 2      # frac(i * GOLDEN), i = 0, 1, 2, ...: the most even spread over [0, 1)


def compile_in_place(net: torch.nn.Module, mode: str) -> None:
    """``torch.compile`` a network in place (trainer.compile; "none" leaves it as it is). Unlike
    ``torch.compile(net)``, its weights keep their names, so checkpoints do not change."""
    if mode != "none":
        net.compile(mode=None if mode == "default" else mode)


class DiffusionModule(L.LightningModule):
    """Owns the denoiser (network + parameterization), its EMA copy and the optimiser.

    ``config`` is the resolved configuration as a dict; ``data_shape`` and ``class_names``
    come from the data, and so do ``cluster_sizes`` (how many examples each cluster holds) when
    the labels are the data's own clusters (data.clusters). All are saved in every checkpoint,
    so ``runs.load_run(path)`` rebuilds the model with nothing else. With model.name=pretrained
    the network, its noise levels and its prediction type come from a diffusers pipeline
    (``adapters/pretrained.py``), and so does the shape when no data gives one. The
    optimisation is written out in ``training_step`` (Lightning's manual optimisation), so that
    a step with a non-finite loss is skipped entirely: no update, no step counted, on every
    process alike.
    """

    def __init__(self, config: dict, data_shape: list[int] | None, class_names: list[str] | None = None,
                 cluster_sizes: list[int] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = OmegaConf.create(config)
        self.origin: dict = {}            # where the weights came from (runs.load_run says)
        self.pretrained = None
        if self.cfg.model.name == "pretrained":
            self.adopt_pretrained(data_shape)
            return
        self.data_shape = tuple(data_shape)
        self.num_classes = len(class_names) if self.cfg.model.conditional and class_names else None
        if self.cfg.model.conditional and not self.num_classes:
            raise ConfigError(f"model.conditional=true needs class labels, but data.name="
                              f"{self.cfg.data.name} provides none (for an image folder set "
                              "data.labels_from_subfolders=true; for toy2d use moons or gaussians)")
        diffusion = self.cfg.diffusion
        self.training_noise = training_noise(diffusion)
        try:
            net = build_model(self.cfg.model, self.data_shape, self.num_classes)
        except ValueError as error:          # the networks explain sizes they cannot take
            raise ConfigError(f"model.name={self.cfg.model.name} cannot be built for data of shape "
                              f"{list(self.data_shape)}: {error}") from None
        parameterization = build_parameterization(diffusion.objective, diffusion.sigma_data)
        self.denoiser = NetworkDenoiser(net, parameterization, self.training_noise.sigma_min,
                                        self.training_noise.sigma_max)
        self.setup_training()

    def setup_training(self) -> None:
        self.ema = copy.deepcopy(self.denoiser).requires_grad_(False)
        self.nonfinite_steps = 0
        self.gradients_finite = True
        self.sampling_dtype: torch.dtype | None = None      # see speed_up_sampling
        self.automatic_optimization = False          # training_step takes (or skips) the step itself

    def adopt_pretrained(self, data_shape: list[int] | None) -> None:
        """model.name=pretrained: the pipeline at model.pretrained.source gives the denoiser (its
        network, prediction type and noise levels) and, unless the data does, the shape. A pixel
        UNet is fine-tuned like ours; a text-to-image pipeline is only sampled, with prompts as
        classes (``use_prompts``), and its VAE decodes the samples."""
        from .adapters.pretrained import load_pretrained

        if self.cfg.model.conditional:
            raise ConfigError("model.name=pretrained: the model brings its own conditioning (prompts for a "
                              "text-to-image pipeline, none for a UNet2DModel); set model.conditional=false")
        self.pretrained = load_pretrained(self.cfg.model.pretrained.source)
        shape = self.pretrained.data_shape
        if data_shape is not None and self.pretrained.takes_prompts:
            raise ConfigError(f"model.pretrained.source={self.cfg.model.pretrained.source} is a text-to-image pipeline: "
                              "those are sampled only here; fine-tuning takes an unconditional UNet2DModel pipeline (DDPM)")
        if data_shape is not None and len(data_shape) != len(shape):
            raise ConfigError(f"model.pretrained.source={self.cfg.model.pretrained.source} draws images of shape "
                              f"{list(shape)}, but data.name={self.cfg.data.name} gives examples of shape {list(data_shape)}")
        if data_shape is not None and data_shape[0] != shape[0]:
            raise ConfigError(f"model.pretrained.source={self.cfg.model.pretrained.source} takes {shape[0]} channels, "
                              f"the data has {data_shape[0]}: set data.channels={shape[0]}")
        self.data_shape = tuple(data_shape or shape)
        self.num_classes = None
        self.training_noise = DiscreteNoise(self.pretrained.sigmas)
        self.denoiser = self.pretrained.denoiser.train()      # diffusers loads networks in eval mode
        self.vae = self.pretrained.vae            # a submodule, so that it moves with the model
        self.setup_training()
        if self.pretrained.takes_prompts:         # sampled only: no second copy of a large network
            self.ema = self.denoiser.requires_grad_(False)

    @property
    def takes_prompts(self) -> bool:
        return self.pretrained is not None and self.pretrained.takes_prompts

    @property
    def latent(self) -> bool:
        """Whether samples are latents, decoded to images only at the end."""
        return self.pretrained is not None and self.pretrained.vae is not None

    def use_prompts(self, prompts: list[str]) -> None:
        """A text-to-image model: these prompts become its classes (label k is prompts[k])."""
        self.pretrained.use_prompts(prompts)
        self.num_classes = len(prompts)
        self.hparams.class_names = list(prompts)

    def decode(self, x: Tensor) -> Tensor:
        """Samples as data: a latent model's latents decoded by its VAE, anything else as it is."""
        return x if self.pretrained is None else self.pretrained.decode(x)

    def loss_weight(self, sigma: Tensor) -> Tensor | None:
        diffusion = self.cfg.diffusion
        return x0_loss_weight(diffusion.loss_weight, sigma, diffusion.sigma_data, diffusion.min_snr_gamma)

    def drop_labels(self, labels: Tensor | None) -> Tensor | None:
        """Classifier-free guidance training: replace a share p_uncond of labels by the null label."""
        if labels is None:
            return None
        drop = torch.rand(len(labels), device=labels.device) < self.cfg.diffusion.p_uncond
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    # -- training ---------------------------------------------------------------------------
    def batch_loss(self, batch) -> Tensor:
        """The training loss of a batch: a noise level and noise drawn per example, labels
        dropped at random for classifier-free guidance."""
        x0, labels = batch
        sigma = self.training_noise(len(x0), self.device)
        noise = torch.randn_like(x0)
        labels = self.drop_labels(labels if self.num_classes else None)
        return self.denoiser.loss(x0, sigma, noise, labels, self.loss_weight(sigma)).mean()

    def training_step(self, batch, batch_idx):
        loss = self.batch_loss(batch)
        if not self.finite_everywhere(loss):
            return self.skip_nonfinite(f"the loss was {loss.item()}")
        if self.take_step(loss):
            self.nonfinite_steps = 0
        else:
            self.skip_nonfinite("the gradients were not finite (an overflow in the backward pass)")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def take_step(self, loss: Tensor) -> bool:
        """Back-propagate, step the optimiser and the learning-rate schedule, update the EMA.
        Returns False when the gradients were not finite: the optimiser then had none to apply
        (``on_before_optimizer_step``), and the schedule and the EMA wait too."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        if not self.gradients_finite:
            return False
        self.lr_schedulers().step()
        self.update_ema()
        return True

    def on_before_optimizer_step(self, optimizer) -> None:
        """Called inside ``optimizer.step()`` with the gradients of every process summed (and,
        under fp16, unscaled): they are clipped to norm optim.grad_clip, or, if not finite,
        dropped, so that no NaN or Inf ever reaches the weights, the EMA or a checkpoint. The
        summed gradients are the same in every process, so all of them decide alike."""
        clip = self.cfg.optim.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), clip)
        self.gradients_finite = bool(torch.isfinite(norm))
        if not self.gradients_finite:
            optimizer.zero_grad(set_to_none=True)      # AdamW skips weights that have no gradient

    def finite_everywhere(self, loss: Tensor) -> bool:
        """Whether the loss is finite in every process. Under DDP all must agree to skip a step:
        a process that skipped its backward pass would leave the others waiting forever in the
        gradient all-reduce."""
        finite = torch.isfinite(loss.detach()).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite > 0)

    def skip_nonfinite(self, what: str) -> None:
        """Count a step whose loss or gradients were NaN or Inf, and skipped: the weights, the
        EMA and the learning-rate schedule stay as they were (a skipped loss does not count as a
        step at all). Stop if it keeps happening."""
        self.nonfinite_steps += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        if self.nonfinite_steps >= self.cfg.trainer.max_nonfinite_steps:
            raise TrainingDiverged(
                f"{what} for {self.nonfinite_steps} steps in a row at step {self.global_step}. "
                "Likely causes: the data (NaN or Inf values: run inspect-data), diffusion.sigma_data far from the "
                "data's standard deviation, or a learning rate too high (lower optim.lr, keep optim.grad_clip on); "
                "trainer.precision=32-true rules out fp16 overflow; trainer.detect_anomaly=true names the operation")
        return None

    def validation_step(self, batch, batch_idx):
        """Loss of the EMA weights with noise fixed by the batch index, so runs compare."""
        x0, labels = batch
        generator = torch.Generator().manual_seed(batch_idx)
        sigma = self.training_noise(len(x0), self.device, generator)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        loss = self.ema.loss(x0, sigma, noise, labels if self.num_classes else None, self.loss_weight(sigma)).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=len(x0), sync_dist=True)   # mean over processes

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, with the decay warming up as
        (1 + step) / (10 + step) so early averages are not dominated by the random init.
        Called right after each optimiser step, so a checkpoint always holds the EMA of the
        same step as the weights."""
        step = self.global_step
        decay = min(self.cfg.optim.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.denoiser.parameters()), 1 - decay)
        for ema, live in zip(self.ema.buffers(), self.denoiser.buffers()):
            ema.copy_(live)

    def configure_model(self) -> None:
        """Training's fast paths, applied once before the optimiser is made: the NHWC layout
        (trainer.channels_last) for the network and its EMA, and ``torch.compile`` of the network
        being trained (trainer.compile). The EMA only draws the occasional grid: not compiled."""
        trainer_cfg = self.cfg.trainer
        if trainer_cfg.channels_last:
            self.to(memory_format=torch.channels_last)
        compile_in_place(self.denoiser.net, trainer_cfg.compile)

    def adamw(self, precision: str) -> torch.optim.AdamW:
        """AdamW over the denoiser's weights as optim says, fused (optim.fused) except under
        16-mixed: the fused kernel unscales fp16 gradients itself, after clipping would have
        seen them scaled."""
        optim = self.cfg.optim
        return torch.optim.AdamW(self.denoiser.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                 weight_decay=optim.weight_decay, fused=optim.fused and precision != "16-mixed")

    def configure_optimizers(self):
        optim = self.cfg.optim
        optimizer = self.adamw(self.trainer.precision)
        total = self.cfg.trainer.max_steps

        def factor(step: int) -> float:
            warmup = min(1.0, (step + 1) / max(1, optim.warmup_steps))
            if not optim.cosine_decay:
                return warmup
            progress = min(1.0, step / max(1, total))
            return warmup * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run trains with the optimiser settings of the command that resumes it:
        Lightning would otherwise restore the saved learning rate, betas and weight decay over
        them. The current learning rate keeps its place in the schedule (warm-up, decay)."""
        optim = self.cfg.optim
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                group["lr"] *= optim.lr / group["initial_lr"]
                group.update(initial_lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
        for scheduler in checkpoint.get("lr_schedulers", []):
            scheduler["base_lrs"] = [optim.lr] * len(scheduler["base_lrs"])

    # -- sampling ---------------------------------------------------------------------------
    def speed_up_sampling(self, precision: str, compile_mode: str = "none") -> None:
        """Sample with the EMA network under autocast in ``precision`` (bf16-mixed or 16-mixed;
        the samplers' own arithmetic stays float32) and compiled with ``compile_mode``
        (reduce-overhead replays CUDA graphs: it pays for small batches and many steps)."""
        self.sampling_dtype = AUTOCAST.get(precision)
        compile_in_place(self.ema.net, compile_mode)

    @property
    def draws_clusters(self) -> bool:
        """Whether the labels are the data's own clusters (data.clusters), drawn in proportion."""
        return bool(self.num_classes and self.hparams.get("cluster_sizes"))

    def column_names(self, n: int, labels: list[int] | None = None) -> list[str] | None:
        """The class names of the columns of a grid of ``n`` samples when their labels cycle
        (``labels`` in turn, or else all classes in turn; not clusters drawn in proportion) with
        a period of at most 16: the cycle repeated to about the square root of ``n``, so that
        every column holds one class; else None."""
        if not self.num_classes or (self.draws_clusters and not labels):
            return None
        cycle = labels or list(range(self.num_classes))
        repeats = max(1, round(math.sqrt(n) / len(cycle)))
        return [self.hparams.class_names[label] for label in cycle] * repeats if len(cycle) <= 16 else None

    def default_labels(self, indices: Tensor) -> Tensor | None:
        """The labels of samples number ``indices`` when none are asked for. Classes come in
        turn: 0, 1, 2, ... Clusters come as often as the data holds them, so that the samples
        follow the data as an unconditional model's should: sample i takes the cluster into whose
        share of [0, 1) the number frac(i * golden ratio) falls, a sequence that spreads any run of
        consecutive samples over the clusters in proportion to their shares (Weyl 1916)."""
        if not self.num_classes:
            return None
        if not self.draws_clusters:
            return indices % self.num_classes
        sizes = torch.tensor(self.hparams.cluster_sizes, dtype=torch.float64)
        return torch.searchsorted(sizes.cumsum(0) / sizes.sum(), indices.double() * GOLDEN % 1, right=True)

    def guided(self, n: int, guidance: float, labels: Tensor | None = None,
               conditions: list[tuple[Tensor, float]] | None = None) -> Denoiser:
        """The EMA denoiser, guided when the model is class-conditional: towards ``labels``
        (``default_labels`` unless given) with weight ``guidance``, or towards several weighted
        ``conditions``, a list of (labels, weight) pairs, all evaluated in one batched call."""
        if not self.num_classes:
            return self.ema
        if conditions is None:
            labels = self.default_labels(torch.arange(n)) if labels is None else labels
            conditions = [(labels, guidance)]
        return GuidedDenoiser(self.ema, [(label.to(self.device), weight) for label, weight in conditions],
                              self.num_classes)

    def sample(self, n: int, generator: torch.Generator, sampling: DictConfig | None = None,
               labels: Tensor | None = None, conditions: list[tuple[Tensor, float]] | None = None,
               hooks: list[Hook] = (), noise: Tensor | None = None) -> SampleResult:
        """Draw ``n`` samples with the EMA weights, as ``sampling`` (default: the run's own
        sampling section) says, from ``noise`` if given (else drawn from ``generator``); see
        ``guided`` for ``labels`` and ``conditions``."""
        sampling = sampling or self.cfg.sampling
        self.ema.eval()
        with torch.autocast(self.device.type, self.sampling_dtype, enabled=self.sampling_dtype is not None):
            denoiser = self.guided(n, sampling.guidance, labels, conditions)
            result = generate(denoiser, sampling_sigmas(sampling, self.training_noise.table),
                              configured_sampler(sampling), shape=(n, *self.data_shape) if noise is None else None,
                              noise=noise, generator=generator, hooks=hooks, device=self.device)
            per_call = denoiser.evaluations if isinstance(denoiser, GuidedDenoiser) else 1
            return SampleResult(self.decode(result.x), result.nfe * per_call)     # network evaluations

    def sample_numbered(self, indices: Tensor, seed: int, sampling: DictConfig | None = None) -> Tensor:
        """Samples number ``indices`` of a fixed, numbered set: sample i starts from the noise of
        seed + i and, for a conditional model, the label ``default_labels`` gives number i, whatever
        batch it is drawn in. Stochastic samplers draw their step noise from seed + indices[0]."""
        generator = torch.Generator().manual_seed(seed + int(indices[0]))
        return self.sample(len(indices), generator, sampling, labels=self.default_labels(indices),
                           noise=indexed_noise(indices, self.data_shape, seed)).x
