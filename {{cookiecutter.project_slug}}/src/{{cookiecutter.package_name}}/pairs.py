"""Samples that a frozen model draws once for another run to train on, kept on disk: reflow's
pairs and DreamBooth's class images.

Reflow's pairs are noise, and the sample that a frozen teacher's deterministic sampler draws from
it (``diffusion/distillation.py`` says why):

    runs/<student>/pairs/
        about.json        the teacher, the sampling section, the seed, the count and the shard size
        000000.pt ...     shard k: pairs k * shard_size onwards (x0, the paired noise, the labels)

Pair i starts from the noise of seed + i (``indexed_noise``) and, for a conditional teacher,
takes the label ``default_labels`` gives number i, drawn with the teacher's guidance: the
student learns the guided map (the guidance is distilled in, and the student samples without
it). So the pairs depend on nothing but the teacher, the sampling section and the seed; a shard
is written whole or not at all, and an interrupted generation resumes at the first shard missing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .diffusion.distillation import reflow_noise
from .diffusion.generate import indexed_noise
from .diffusion.samplers import SAMPLERS
from .errors import ConfigError
from .model import Model
from .storage import UnreadableFile, read_tensors, save_atomically

ABOUT = "about.json"


@dataclass
class Pairs:
    """Reflow's data: the teacher's samples ``x0``, the noise each is paired with, their labels
    (None for an unconditional teacher) and the teacher's condition table."""

    x0: Tensor
    noise: Tensor
    labels: Tensor | None
    class_names: list[str]
    cluster_sizes: list[int] | None
    fingerprint: dict         # everything the pairs depend on (``about.json``)


def reflow_pairs(teacher: Model, sampling, folder: Path, count: int, shard_size: int, batch_size: int,
                 seed: int) -> Pairs:
    """The ``count`` pairs of ``teacher`` sampled as ``sampling`` (a sampling section) says, in
    ``folder``: read where they are, drawn where they are not, with a progress bar."""
    if not SAMPLERS[sampling.sampler].deterministic(sampling):
        raise ConfigError(f"reflow pairs each noise with the one sample it leads to, and the teacher's sampler "
                          f"{sampling.sampler} draws fresh noise on the way: give it a deterministic one, e.g. "
                          "distill.teacher_sampling.sampler=dpmpp_2m (or euler, or heun with churn=0)")
    about = {"teacher": teacher.origin, "sampling": dict(sampling), "seed": seed, "count": count,
             "shard_size": shard_size}
    draw = lambda indices: draw_pairs(teacher, sampling, indices, seed, batch_size)     # noqa: E731
    parts = drawn_in_shards(folder, about, count, shard_size, "reflow pairs", draw)
    labels = None if teacher.condition is None else torch.cat([part["labels"] for part in parts])
    return Pairs(torch.cat([part["x0"] for part in parts]), torch.cat([part["noise"] for part in parts]), labels,
                 list(teacher.class_names), teacher.cluster_sizes, about)


def class_images(base: Model, sampling, prompt: str, folder: Path, count: int, seed: int,
                 batch_size: int = 8) -> Tensor:
    """DreamBooth's ``count`` class images: ``base``'s samples of ``prompt`` (one of its classes)
    as ``sampling`` says, image i from the noise of seed + i, in ``folder``: read where they are,
    drawn where they are not, ``batch_size`` at a time (a shard each; 8 at 512 pixels fit a T4),
    with a progress bar. Returns them undecoded (latents)."""
    label = base.class_number(prompt)
    about = {"base": base.config.lora.base, "prompt": prompt, "sampling": dict(sampling), "seed": seed,
             "count": count, "shard_size": batch_size}

    @torch.no_grad()
    def draw(indices: Tensor) -> dict:
        noise = indexed_noise(indices, base.data_shape, seed).to(base.device)
        guided = base.guided(len(indices), sampling.guidance, torch.full((len(indices),), label))
        return {"x0": base.generate(guided, sampling, noise=noise, decode=False).x.cpu()}

    parts = drawn_in_shards(folder, about, count, batch_size, f"class images of '{prompt}'", draw)
    return torch.cat([part["x0"] for part in parts])


def drawn_in_shards(folder: Path, about: dict, count: int, shard_size: int, what: str, draw) -> list[dict]:
    """``draw(indices)`` (a dict of tensors) of indices 0..count-1, a shard of ``shard_size`` at a
    time, each kept in ``folder``, whose about.json says what they were drawn with (``about``)."""
    check_same_pairs(folder, about)
    parts = []
    with tqdm(total=count, desc=what, unit="sample") as bar:
        for start in range(0, count, shard_size):
            path = folder / f"{start // shard_size:06d}.pt"
            stop = min(start + shard_size, count)
            if path.is_file():
                parts.append(read_shard(path))
            else:
                parts.append(draw(torch.arange(start, stop)))
                save_atomically(parts[-1], path)
            bar.update(stop - start)
    return parts


def check_same_pairs(folder: Path, about: dict) -> None:
    """Write ``about.json`` in a new folder; in one that has it, the pairs must be these."""
    path = folder / ABOUT
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [key for key in about if saved.get(key) != about[key]]
        if changed:
            raise ConfigError(f"{folder} holds samples drawn with other settings ({', '.join(changed)} differ): start "
                              "a new run with name=<new name>, or delete the folder to draw them again")
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(about, indent=1))


@torch.no_grad()
def draw_pairs(teacher: Model, sampling, indices: Tensor, seed: int, batch_size: int) -> dict:
    """Pairs number ``indices``: the teacher's sample x0 from the noise z of seed + i, with the
    noise of the straight line from sigma_max z to x0 (``reflow_noise``), in batches."""
    sigma_max = teacher.sigmas(sampling)[0].item()
    parts = {"x0": [], "noise": [], "labels": []}
    for batch in indices.split(batch_size):
        z = indexed_noise(batch, teacher.data_shape, seed).to(teacher.device)
        labels = teacher.default_labels(batch)
        guided = teacher.guided(len(batch), sampling.guidance, labels)
        x0 = teacher.generate(guided, sampling, noise=z, decode=False).x
        parts["x0"].append(x0.cpu())
        parts["noise"].append(reflow_noise(z, x0, sigma_max).cpu())
        parts["labels"].append(labels if labels is not None else torch.zeros(0))
    return {key: torch.cat(value) for key, value in parts.items()}


def read_shard(path: Path) -> dict:
    try:
        return read_tensors(path)
    except UnreadableFile as why:
        raise ConfigError(f"{path} is not a readable shard of samples ({why}): delete it, and the same command "
                          "draws it again") from None
