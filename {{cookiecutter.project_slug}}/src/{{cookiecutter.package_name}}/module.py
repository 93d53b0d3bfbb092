"""``DiffusionModule``: trains a ``Model``'s network: the loss step, condition dropout, the guard
against non-finite steps, EMA, the optimiser and its schedule, resume.

The network is built elsewhere (``runs.new_model``) and handed in, inside the Model it belongs
to (lightning-hydra-template hands ``net`` to its module the same way). Only its weights that
require gradients are trained: all of them, or an adapted network's adapters (lora.base), whose
frozen weights the EMA copy shares and checkpoints leave out. Batches arrive ready:
the data module has already augmented them and scaled images to [-1, 1]
(``data/datamodule.py``). The module keeps an EMA copy of the network; its ``model`` samples
with that copy, for the sample-grid and FID callbacks.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import Tensor

from .devices import AUTOCAST, compile_in_place
from .diffusion.distillation import Objective
from .diffusion.parameterizations import x0_loss_weight
from .errors import TrainingDiverged
from .model import Model


class DiffusionModule(L.LightningModule):
    """Trains ``model.denoiser`` as the run's configuration (``model.config``) says.

    Every checkpoint holds the weights (``denoiser.*``), their EMA (``ema.*``) and, as its
    hyperparameters, what ``runs.load_run`` rebuilds the Model from: the configuration, the data
    shape, the class names and the cluster sizes. The optimisation is written out in
    ``training_step`` (Lightning's manual optimisation), so that a step whose gradients are not
    finite changes no weight, on every process alike, without the host waiting for the device.
    """

    def __init__(self, model: Model, objective: Objective | None = None):
        super().__init__()
        self.cfg = model.config
        self.save_hyperparameters({"config": OmegaConf.to_container(self.cfg, resolve=True),
                                   "data_shape": list(model.codec.data_shape(model.data_shape)),   # the data's
                                   "class_names": model.class_names, "cluster_sizes": model.cluster_sizes,
                                   "latents": model.codec.statistics,        # the codec's normalisation
                                   "conditions": model.condition_table})
        self.denoiser = model.denoiser.train()              # a pretrained network is loaded in eval mode
        self.adapted = bool(self.cfg.lora.base)
        self.frozen_half = self.adapted and model.pretrained is not None      # a pipeline's gigabytes: see setup
        frozen = {id(p): p for p in self.denoiser.parameters() if not p.requires_grad}
        self.ema = copy.deepcopy(self.denoiser, memo=frozen).requires_grad_(False)   # sharing the frozen weights
        self.trained = [name for name, p in self.denoiser.named_parameters() if p.requires_grad]
        prompt = self.cfg.lora.class_prompt        # DreamBooth: the class images' label, and their loss's weight
        self.prior_label = model.class_number(prompt) if prompt else None
        self.strict_loading = not self.adapted      # an adapted run's checkpoints hold its adapters only
        self.model = dataclasses.replace(model, denoiser=self.ema)     # samples with the EMA weights
        self.objective = objective           # a consistency student's loss (diffusion/distillation.py), else denoising
        self.nonfinite_steps = 0
        self.gradients_finite: Tensor | None = None    # set inside optimizer.step (on_before_optimizer_step)
        self.unjudged: tuple[int, Tensor] | None = None        # the last step and its verdict (judge)
        self.automatic_optimization = False          # training_step takes the step itself

    def loss_weight(self, sigma: Tensor) -> Tensor | None:
        diffusion = self.cfg.diffusion
        return x0_loss_weight(diffusion.loss_weight, sigma, diffusion.sigma_data, diffusion.min_snr_gamma)

    def batch_loss(self, batch) -> Tensor:
        """The training loss of a batch: a noise level and noise drawn per example (reflow's
        pairs bring their own noise; a consistency student's objective draws its own), and for a
        conditional model its conditions dropped at random (classifier-free guidance)."""
        x0, conditions, *paired_noise = batch
        if self.objective is not None:
            return self.objective(self.denoiser, x0, self.dropped(conditions), self.global_step).mean()
        sigma = self.model.noise(len(x0), self.device)
        noise = paired_noise[0] if paired_noise else torch.randn_like(x0)
        losses = self.denoiser.loss(x0, sigma, noise, self.dropped(conditions), self.loss_weight(sigma))
        return (losses * self.example_weights(conditions)).mean()

    def example_weights(self, conditions: Tensor | None) -> Tensor | float:
        """Each example's share of the loss: 1, but lora.prior_weight for DreamBooth's class
        images (Ruiz et al. 2023, eq. 2: the subject's loss plus the weighted prior loss)."""
        if self.prior_label is None:
            return 1.0
        prior = conditions == self.prior_label
        return torch.where(prior, self.cfg.lora.prior_weight, 1.0)

    def dropped(self, conditions: Tensor | None) -> Tensor | None:
        """A batch's conditions, each replaced by the null condition with probability
        diffusion.p_uncond; None for an unconditional model, which ignores any labels the data has."""
        if self.model.condition is None:
            return None
        return self.model.condition.drop(conditions, self.cfg.diffusion.p_uncond)

    def training_step(self, batch, batch_idx):
        step, loss = self.global_step, self.batch_loss(batch)
        self.take_step(loss)
        self.log("train/loss", loss, prog_bar=True)
        verdict = torch.stack([torch.isfinite(loss.detach()), self.gradients_finite])
        previous, self.unjudged = self.unjudged, (step, verdict)
        if previous is not None:
            self.judge(*previous)
        return loss

    def take_step(self, loss: Tensor) -> None:
        """Back-propagate, step the optimiser and the learning-rate schedule, update the EMA. A
        step whose gradients are not finite (a NaN or Inf loss makes them NaN) leaves the weights
        and the optimiser's moments as they were (``on_before_optimizer_step``): it still counts as
        a step, one in which the weights stood still, as PyTorch's gradient scaler counts those it
        skips."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.lr_schedulers().step()
        self.update_ema()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Called inside ``optimizer.step()`` with the gradients of every process summed (and,
        under fp16, unscaled): they are clipped to norm optim.grad_clip, or, if not finite,
        dropped, so that no NaN or Inf ever reaches the weights, the EMA or a checkpoint. The
        summed gradients are the same in every process, so all of them decide alike.

        The fused AdamW is told on the device (its ``found_inf``, as a gradient scaler tells it),
        so the host never waits for the device in the middle of a step; any other optimiser must be
        told on the host, which waits for the backward pass to finish."""
        clip = self.cfg.optim.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.trained_weights(self.denoiser), clip)
        self.gradients_finite = torch.isfinite(norm)
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = (~self.gradients_finite).float()      # the kernel then skips every weight
        elif not self.gradients_finite:
            optimizer.zero_grad(set_to_none=True)      # AdamW skips weights that have no gradient

    def judge(self, step: int, verdict: Tensor) -> None:
        """Count a step whose gradients were not finite, and skipped (a finite step resets the
        count); stop if it keeps happening. ``verdict`` holds whether the loss and the gradients
        were finite. Each step is judged after the next one is queued: the device has finished it
        by then, or is about to, with the next step's work waiting, so reading the verdict never
        leaves the device idle."""
        loss_finite, gradients_finite = verdict.tolist()
        if gradients_finite:
            self.nonfinite_steps = 0
            return
        self.nonfinite_steps += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        if self.nonfinite_steps >= self.cfg.trainer.max_nonfinite_steps:
            what = "the loss was not finite" if not loss_finite else \
                "the gradients were not finite (an overflow in the backward pass)"
            raise TrainingDiverged(
                f"{what} for {self.nonfinite_steps} steps in a row at step {step}. "
                "Likely causes: the data (NaN or Inf values: run inspect-data), diffusion.sigma_data far from the "
                "data's standard deviation, or a learning rate too high (lower optim.lr, keep optim.grad_clip on); "
                "trainer.precision=32-true rules out fp16 overflow; trainer.detect_anomaly=true names the operation")

    def validation_step(self, batch, batch_idx):
        """Loss of the EMA weights with noise fixed by the batch index (or paired), so runs compare;
        a consistency student's at the end of training (the smallest gap ECT reaches)."""
        x0, conditions, *paired_noise = batch
        generator = torch.Generator().manual_seed(batch_idx)
        conditions = conditions if self.model.condition is not None else None
        if self.objective is not None:
            loss = self.objective(self.ema, x0, conditions, self.cfg.trainer.max_steps - 1, generator).mean()
        else:
            sigma = self.model.noise(len(x0), self.device, generator)
            noise = paired_noise[0] if paired_noise else torch.randn(x0.shape, generator=generator).to(self.device)
            loss = self.ema.loss(x0, sigma, noise, conditions, self.loss_weight(sigma)).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=len(x0), sync_dist=True)   # mean over processes

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, with the decay warming up as
        (1 + step) / (10 + step) so early averages are not dominated by the random init.
        Called right after each optimiser step, so a checkpoint always holds the EMA of the
        same step as the weights."""
        step = self.global_step
        decay = min(self.cfg.optim.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.trained_weights(self.ema), self.trained_weights(self.denoiser), 1 - decay)
        for ema, live in zip(self.ema.buffers(), self.denoiser.buffers()):
            ema.copy_(live)

    def trained_weights(self, denoiser) -> list[Tensor]:
        """The weights that training changes, of the live network or of its EMA copy."""
        weights = dict(denoiser.named_parameters())
        return [weights[name] for name in self.trained]

    def configure_model(self) -> None:
        """Training's fast paths, applied once before the optimiser is made: the NHWC layout
        (trainer.channels_last) for the network and its EMA, and ``torch.compile`` of the network
        being trained (trainer.compile). The EMA only draws the occasional grid: not compiled."""
        trainer_cfg = self.cfg.trainer
        if trainer_cfg.gradient_checkpointing:           # diffusers networks (checked before training)
            self.denoiser.net.enable_gradient_checkpointing()
        if trainer_cfg.channels_last:
            self.to(memory_format=torch.channels_last)
        compile_in_place(self.denoiser.net, trainer_cfg.compile)

    def setup(self, stage: str) -> None:
        if self.frozen_half:
            self.frozen_in_half(str(self.trainer.precision))

    def frozen_in_half(self, precision: str) -> None:
        """The frozen weights of an adapted pipeline (gigabytes) in the half precision of a
        mixed-precision run, as diffusers' LoRA scripts keep them (autocast computes in it anyway;
        this project's networks are small and keep parts in float32 on purpose, so theirs stay
        float32). The adapters stay float32: a gradient scaler refuses to unscale float16
        gradients ("Attempting to unscale FP16 gradients"). The sample grids need no autocast:
        the pipeline's UNet takes its input in its own dtype (``adapters/pretrained.py``)."""
        half = AUTOCAST.get(precision)
        if half is not None:
            for weight in self.denoiser.parameters():
                if not weight.requires_grad:
                    weight.data = weight.data.to(half)

    def adamw(self, precision: str) -> torch.optim.AdamW:
        """AdamW over the denoiser's weights as optim says, fused (optim.fused) except under
        16-mixed: the fused kernel unscales fp16 gradients itself, after clipping would have
        seen them scaled."""
        optim = self.cfg.optim
        return torch.optim.AdamW(self.trained_weights(self.denoiser), lr=optim.lr, betas=tuple(optim.betas),
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

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)      # stepped by take_step, each real step
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """An adapted run saves its adapters (and their EMA) only: its base holds the rest."""
        if self.adapted:
            trained = {f"{copy}.{name}" for copy in ("denoiser", "ema") for name in self.trained}
            checkpoint["state_dict"] = {key: value for key, value in checkpoint["state_dict"].items() if key in trained}

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
