"""The ideal denoiser of a training set: what a network of unlimited capacity, trained to the
end, would learn from these examples and no others.

If the data were exactly the N training examples x_1 .. x_N, each equally likely, then a noisy
x = x_i + sigma * eps would be drawn from a mixture of N Gaussians, and the best denoiser (the
posterior mean, Tweedie's formula) is a softmax-weighted average of the examples:

    D(x, sigma) = sum_i w_i x_i,    w = softmax_i( -||x - x_i||^2 / (2 sigma^2) ).

It needs no training, and every sampler driven by it ends on a training example: it only
memorises (Kadkhodaie et al. 2024, "Generalization in diffusion models arises from
geometry-adaptive harmonic representations"; Kamb and Ganguli 2024). A trained network differs
from it exactly where it generalises. A conditional one averages only over the examples of the
asked class (the null label: over all of them), so classifier-free guidance works on it too.

With ``smoothing`` s > 0 it is the smoothed closed-form model of Scarvelis et al. 2023
("Closed-form diffusion models"): the ideal score averaged over Gaussian perturbations of its
input, whose denoiser is D_s(x, sigma) = E_{z ~ N(0, s^2 I)} D(x + z, sigma), estimated here
with a fixed set of ``draws`` perturbations (the same at every call, so that deterministic
samplers stay deterministic). Its samples fall between nearby training examples and are new.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .conditioning import ClassLabels, Condition

SMALLEST = 1e-6      # sigma = 0 is taken as this: the limit, the nearest example (and no 0 / 0)


class IdealDenoiser(nn.Module):
    """``D(x, sigma, labels) -> x0_hat`` of the training examples it has memorised (see above).

    The examples are its only state (buffers, saved in checkpoints like weights); it has no
    parameters. The softmax runs over ``chunk`` examples at a time with a running maximum, so
    memory grows with the batch times ``chunk``, not with the number of examples.
    """

    def __init__(self, data_shape: tuple[int, ...], condition: Condition | None = None, smoothing: float = 0.0,
                 draws: int = 16, chunk: int = 4096):
        super().__init__()
        if condition is not None and not isinstance(condition, ClassLabels):
            raise ValueError("the ideal denoiser is conditioned on class labels only, not on vector conditions")
        self.condition, self.smoothing, self.chunk = condition, smoothing, chunk
        self.register_buffer("examples", torch.zeros(0, *data_shape))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        perturbations = torch.randn(draws, *data_shape, generator=torch.Generator().manual_seed(0))
        self.register_buffer("perturbations", perturbations, persistent=False)
        self.register_load_state_dict_pre_hook(self._take_sizes)

    def memorise(self, examples: Tensor, labels: Tensor | None = None) -> IdealDenoiser:
        """Hold ``examples`` (N, *data_shape) and, for a conditional model, their ``labels``."""
        if self.condition is not None:
            if labels is None:
                raise ValueError("a conditional ideal denoiser needs the examples' labels")
            missing = sorted(set(range(self.condition.count)) - set(labels.tolist()))
            if missing:
                raise ValueError(f"class(es) {missing} have no training examples to average over")
        self.examples = examples.float().to(self.examples.device)
        self.labels = (labels if labels is not None else torch.zeros(len(examples))).long().to(self.examples.device)
        return self

    def _take_sizes(self, module, state_dict, prefix, *args) -> None:
        """Loading a checkpoint: the buffers take the size of the saved examples."""
        for name in ("examples", "labels"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.examples.device))

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):       # distances need float32, whatever the caller
            flat, sigma = x.float().flatten(1), sigma.float().reshape(-1, 1).expand(len(x), 1).clamp_min(SMALLEST)
            if not self.smoothing:
                return self.posterior_mean(flat, sigma, labels).reshape(x.shape)
            draws = len(self.perturbations)
            moved = (flat + self.smoothing * self.perturbations.flatten(1)[:, None]).flatten(0, 1)
            labels = None if labels is None else labels.repeat(draws)
            mean = self.posterior_mean(moved, sigma.repeat(draws, 1), labels)
            return mean.reshape(draws, *x.shape).mean(0)

    def posterior_mean(self, x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        """sum_i softmax_i(-||x - x_i||^2 / 2 sigma^2) x_i for each row of x (B, D), over the
        examples of each row's label. ||x||^2 is the same for every i, so the logits keep only
        (x . x_i - ||x_i||^2 / 2) / sigma^2; the softmax is accumulated chunk by chunk."""
        lowest = torch.finfo(torch.float32).min
        best = torch.full((len(x), 1), lowest, device=x.device)
        total = torch.zeros(len(x), 1, device=x.device)
        mean = torch.zeros_like(x)
        for start in range(0, len(self.examples), self.chunk):
            examples = self.examples[start:start + self.chunk].flatten(1)
            logits = (x @ examples.T - examples.square().sum(1) / 2) / sigma.square()
            if labels is not None and self.condition is not None:
                own = self.labels[start:start + self.chunk]
                allowed = (own == labels[:, None]) | (labels[:, None] == self.condition.count)
                logits = logits.masked_fill(~allowed, float("-inf"))
            new_best = torch.maximum(best, logits.amax(1, keepdim=True))
            weights = (logits - new_best).exp()
            rescale = (best - new_best).exp()
            total = total * rescale + weights.sum(1, keepdim=True)
            mean = mean * rescale + weights @ examples
            best = new_best
        return mean / total
