"""Sample quality during training, every N steps, from the EMA weights: FID and KID for images,
the sliced Wasserstein distance and MMD against the held-out data for everything else.

Kept outside the LightningModule, so the feature extractor never enters a checkpoint or the
EMA copy. Each process draws its own share of the samples (``evaluation.quality.shares``), the
features (or samples) are gathered, and every process computes the same numbers. Results are
logged as ``val/fid@5k`` and ``val/kid@5k`` (``val/swd@5k``, ``val/mmd@5k``) and appended to
``runs/<name>/fid/history.jsonl`` with the step, sampler, NFE, what was compared and the time
they took."""
from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn

from ..evaluation.distances import distances
from ..evaluation.quality import count_name, fid_kid, reference_file, reference_statistics, sample_features, shares
from .progress import say


class QualityMetrics(L.Callback):
    def __init__(self, extractor: nn.Module, evaluation, sampling, folder: str | Path):
        self.extractor, self.evaluation, self.sampling, self.folder = extractor, evaluation, sampling, Path(folder)
        self.reference = None
        self.last_step, self.last_time = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.evaluation.every_n_steps == 0 and step != self.last_step:
            self.evaluate(trainer, module)

    def on_train_start(self, trainer, module) -> None:
        self.last_step, self.last_time = trainer.global_step, time.perf_counter()

    @torch.no_grad()
    def evaluate(self, trainer, module) -> dict:
        started = time.perf_counter()
        result = self.measure(trainer, module)
        seconds = time.perf_counter() - started
        share = seconds / max(1e-9, time.perf_counter() - self.last_time)
        self.last_step, self.last_time = trainer.global_step, time.perf_counter()
        if trainer.is_global_zero:
            self.record(trainer, result, seconds, share)
        return result

    def measure(self, trainer, module) -> dict:
        evaluation = self.evaluation
        self.extractor.to(module.device)
        reference = self.reference_statistics(trainer, module.device)
        draw = partial(module.model.sample_numbered, seed=evaluation.seed, sampling=self.sampling)
        features = sample_features(draw, self.extractor, evaluation.samples, evaluation.batch_size,
                                   trainer.global_rank, trainer.world_size)
        return fid_kid(reference, gather(trainer, features), evaluation.kid_subset_size, seed=evaluation.seed)

    @property
    def compared(self) -> str:
        return self.extractor.name

    def reference_statistics(self, trainer, device) -> dict:
        """Computed by the first process only, then read by all (the others wait)."""
        if self.reference is None:
            data, evaluation = trainer.datamodule, self.evaluation
            path = reference_file(evaluation.cache_dir, data.fingerprint, data.cfg.image_size, data.cfg.channels,
                                  self.extractor)
            if trainer.is_global_zero:
                self.reference = reference_statistics(data.reference_images(), self.extractor, path,
                                                      evaluation.batch_size, evaluation.kid_reference, device)
            trainer.strategy.barrier()
            if self.reference is None:
                self.reference = torch.load(path, map_location="cpu", weights_only=True)
        return self.reference

    def record(self, trainer, result: dict, seconds: float, share: float) -> None:
        count = count_name(result["samples"])
        sampler = f"{self.sampling.sampler}, {self.sampling.steps} steps"
        nfe = trainer.lightning_module.model.nfe(self.sampling)
        entry = {"step": trainer.global_step, **result, "sampler": sampler, "nfe": nfe,
                 "extractor": self.compared, "seconds": round(seconds, 1),
                 "share_of_training_time": round(share, 3)}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "history.jsonl", "a") as file:
            file.write(json.dumps(entry) + "\n")
        metrics = [key for key in ("fid", "kid", "swd", "mmd") if key in result]
        if trainer.logger:
            trainer.logger.log_metrics({f"val/{key}@{count}": result[key] for key in metrics}, step=trainer.global_step)
        values = ", ".join(f"{key}@{count} {result[key]:.4g}" + (f" ± {result[key + '_std']:.2g}"
                                                                  if key + "_std" in result else "") for key in metrics)
        say(f"step {trainer.global_step}: {values} ({sampler}, {self.compared}) in {seconds:.0f} s, "
            f"{100 * share:.0f}% of the time since the last evaluation")


class DataDistances(QualityMetrics):
    """The sliced Wasserstein distance and MMD (``evaluation/distances.py``) of samples against
    the held-out data, for data that FID cannot judge (points, sequences, sets)."""

    def __init__(self, evaluation, sampling, folder: str | Path):
        super().__init__(None, evaluation, sampling, folder)

    def measure(self, trainer, module) -> dict:
        """A conditional model's sample i is drawn for held-out example i's label or condition
        (in turn), so that samples and held-out data follow the same conditions."""
        evaluation, model, data = self.evaluation, module.model, trainer.datamodule
        labels = data.val_set.labels if model.condition is not None else None
        mine = [model.sample_numbered(indices, evaluation.seed, self.sampling, labels).flatten(1)
                for indices in shares(evaluation.samples, evaluation.batch_size, trainer.global_rank,
                                      trainer.world_size)]
        samples = gather(trainer, torch.cat(mine) if mine else torch.zeros(0, math.prod(model.data_shape)))
        reference = data.reference_images(held_out=True)
        return distances(samples.reshape(-1, *reference.shape[1:]).cpu(), reference, model.kind, evaluation.seed)

    @property
    def compared(self) -> str:
        return "held-out data"


def gather(trainer, features: torch.Tensor) -> torch.Tensor:
    """Every process's features, on every process (shares may differ by a batch: padded to
    the largest, then cut back)."""
    if trainer.world_size == 1:
        return features
    device = trainer.strategy.root_device
    counts = trainer.strategy.all_gather(torch.tensor(len(features), device=device)).tolist()
    padded = features.new_zeros(max(counts), features.shape[1])
    padded[:len(features)] = features
    everyone = trainer.strategy.all_gather(padded.to(device)).cpu()
    return torch.cat([everyone[rank, :count] for rank, count in enumerate(counts)])
