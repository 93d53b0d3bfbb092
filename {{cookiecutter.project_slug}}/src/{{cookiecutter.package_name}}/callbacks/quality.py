"""FID and KID during training, every N steps, from the EMA weights.

Kept outside the LightningModule, so the feature extractor never enters a checkpoint or the
EMA copy. Each process draws its own share of the samples (``evaluation.quality.shares``), the
features are gathered, and every process computes the same numbers. Results are logged as
``val/fid@5k`` and ``val/kid@5k`` and appended to ``runs/<name>/fid/history.jsonl`` with the
step, sampler, NFE, extractor and the time they took."""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn

from ..evaluation.quality import count_name, fid_kid, reference_file, reference_statistics, sample_features
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
        evaluation = self.evaluation
        self.extractor.to(module.device)
        reference = self.reference_statistics(trainer, module.device)
        draw = partial(module.model.sample_numbered, seed=evaluation.seed, sampling=self.sampling)
        features = sample_features(draw, self.extractor, evaluation.samples, evaluation.batch_size,
                                   trainer.global_rank, trainer.world_size)
        result = fid_kid(reference, gather(trainer, features), evaluation.kid_subset_size, seed=evaluation.seed)
        seconds = time.perf_counter() - started
        share = seconds / max(1e-9, time.perf_counter() - self.last_time)
        self.last_step, self.last_time = trainer.global_step, time.perf_counter()
        if trainer.is_global_zero:
            self.record(trainer, result, seconds, share)
        return result

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
                 "extractor": self.extractor.name, "seconds": round(seconds, 1),
                 "share_of_training_time": round(share, 3)}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "history.jsonl", "a") as file:
            file.write(json.dumps(entry) + "\n")
        if trainer.logger:
            trainer.logger.log_metrics({f"val/fid@{count}": result["fid"], f"val/kid@{count}": result["kid"]},
                                       step=trainer.global_step)
        say(f"step {trainer.global_step}: fid@{count} {result['fid']:.2f}, kid@{count} {result['kid']:.4f} "
              f"± {result['kid_std']:.4f} ({sampler}, {self.extractor.name}) in {seconds:.0f} s, "
              f"{100 * share:.0f}% of the time since the last evaluation")


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
