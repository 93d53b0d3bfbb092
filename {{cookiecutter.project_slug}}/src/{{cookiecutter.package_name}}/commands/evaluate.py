"""``evaluate``: FID and KID of a trained run, the full protocol: many samples, several seeds,
and on request FID against NFE for several samplers; and the memorisation check: how many
samples copy a training image, and how alike a twin run's samples from the same noise are.
Data other than images (points, sequences, sets) is judged by the sliced Wasserstein distance
and MMD against the held-out data instead."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from omegaconf import MISSING, OmegaConf
from torch import Tensor
from tqdm import tqdm

from ..config import RUN_SECTIONS, CompileMode, Precision, parse_command, run_config
from ..data import DiffusionDataModule
from ..devices import device_name, memory_errors, pick_device, sampling_precision
from ..diffusion.samplers import SAMPLERS
from ..errors import ConfigError
from ..evaluation.distances import distances
from ..evaluation.features import build_extractor
from ..evaluation.memorisation import memorisation, same_noise_similarity
from ..evaluation.quality import (
    count_name,
    fid_kid,
    reference_file,
    reference_statistics,
    sample_features,
    shares,
)
from ..pixels import to_uint8, to_unit_range
from ..runs import fresh_output, load_run
from ..visualize import save_histograms, save_image, save_labelled_grid, save_nfe_plot

USAGE = f"""\
evaluate run=DIR [key=value ...]
                          FID and KID of a run against its training data, into runs/<name>/fid/; keys:
                          seeds, sweep (FID against NFE for sweep_samplers x sweep_steps; a student's teacher
                          beside it at teacher_steps), keep_images,
                          memorisation (N samples checked for copies of training images; fid=false: only that;
                          features=false: in pixels only; twin=DIR: a run trained on other examples, its
                          samples from the same noise compared),
                          device, precision, compile, and the evaluation keys {", ".join(RUN_SECTIONS["evaluation"])}
                          (samples defaults to 50000, the published protocol)"""


@dataclass
class EvaluateCommand:
    run: str = MISSING                   # a run directory (runs/<name>) or a .ckpt file
    seeds: int = 1                       # repeat with this many seeds (seed, seed + n, ...) and report the spread
    sweep: bool = False                  # also FID against NFE for every sampler and step count below
    sweep_samplers: list[str] = field(default_factory=lambda: ["euler", "heun", "dpmpp_2m"])
    sweep_steps: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    teacher_steps: list[int] = field(default_factory=list)   # a student's sweep: its teacher too, its sampler at these
    keep_images: bool = False            # save the first seed's samples as PNGs in runs/<name>/fid/images/
    device: str = "auto"                 # auto | cpu | cuda | mps
    precision: Precision = "auto"        # of the network while sampling
    compile: CompileMode = "none"        # torch.compile the network (pays for 50,000 samples on a GPU)
    fid: bool = True                     # FID and KID (false: only the memorisation check)
    memorisation: int = 0                # > 0: judge this many samples for copies of training images (0: off)
    features: bool = True                # memorisation: also in the extractor's features (false: pixels only)
    twin: Optional[str] = None           # memorisation: a run trained on other examples, sampled from the same noise


def run(overrides: list[str]) -> Path:
    command, evaluation_overrides = parse_command(overrides, EvaluateCommand, "evaluate", "evaluation")
    check_request(command)
    model, run_dir = load_run(command.run)
    teacher = load_teacher(model, command.run) if command.teacher_steps else None
    if model.takes_prompts:
        raise ConfigError(f"{command.run} is a text-to-image model: FID here compares unconditional or class-labelled "
                          "samples with a data set, and a prompt per sample is not supported")
    evaluation = run_config(model.config, "evaluation", {"samples": 50_000, **evaluation_overrides}).evaluation
    cfg = run_config(model.config, "sampling", {"sampler": evaluation.sampler, "steps": evaluation.steps})
    device = pick_device(command.device)
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup()
    model.check_data(data.data_shape)
    precision = sampling_precision(command.precision, device)
    for drawn in (model, teacher) if teacher is not None else (model,):
        drawn.to(device)
        drawn.speed_up(precision, command.compile)
    if model.kind != "image":
        return measure_distances(model, data, evaluation, cfg.sampling, command.seeds, run_dir.fid)
    extractor = None
    if command.fid or command.features:
        extractor = build_extractor(evaluation, __package__.split(".")[0]).to(device)
    if command.memorisation:
        twin = load_twin(command.twin, model, device, precision, command.compile) if command.twin else None
        judge_memorisation(model, data, extractor, command.memorisation, evaluation, cfg.sampling,
                           run_dir.task("memorisation"), twin)
    if not command.fid:
        return run_dir.task("memorisation")
    path = reference_file(evaluation.cache_dir, data.fingerprint, cfg.data.image_size, cfg.data.channels, extractor)
    images = data.reference_images()
    with tqdm(total=len(images), desc="reference features", unit="img", disable=path.is_file()) as bar:
        reference = reference_statistics(images, extractor, path, evaluation.batch_size, evaluation.kid_reference,
                                         device, bar.update)
    plans = [(model, cfg.sampling, evaluation.seed + k * evaluation.samples) for k in range(command.seeds)]  # disjoint
    if command.sweep:
        plans += [(model, OmegaConf.merge(cfg.sampling, {"sampler": name, "steps": steps}), evaluation.seed)
                  for name in command.sweep_samplers for steps in command.sweep_steps]
    if teacher is not None:
        plans += [(teacher, run_config(teacher.config, "sampling", {"steps": steps}).sampling, evaluation.seed)
                  for steps in command.teacher_steps]
    keep = None
    if command.keep_images:
        keep = image_keeper(fresh_output(run_dir.fid) / "images")         # no old images mixed in
    results = []
    with memory_errors(f"batch_size={evaluation.batch_size} does not fit in memory on {device_name(device)}: lower "
                       "batch_size (the results do not depend on it)"):
        announce(model, extractor, evaluation, plans, device)
        for k, (drawn, sampling, seed) in enumerate(plans):
            with tqdm(total=evaluation.samples, desc=f"{drawn.config.name}: {sampling.sampler} {sampling.steps} steps, "
                      f"seed {seed}", unit="sample") as bar:
                draw = partial(drawn.sample_numbered, seed=seed, sampling=sampling)
                features = sample_features(draw, extractor, evaluation.samples, evaluation.batch_size,
                                           keep=keep if k == 0 else None, progress=bar.update)
            results.append({"model": drawn.config.name, "sampler": sampling.sampler, "steps": sampling.steps,
                            "nfe": drawn.nfe(sampling), "seed": seed, "precision": precision,
                            **fid_kid(reference, features, evaluation.kid_subset_size, seed=evaluation.seed)})
    return report(results[:command.seeds], results[command.seeds:], extractor.name, run_dir.fid)


def judge_memorisation(model, data, extractor, n: int, evaluation, sampling, folder: Path, twin=None) -> dict:
    """``n`` samples (drawn with ``sampling``) and the held-out images against the training images, in pixels and (with
    an ``extractor``) in its features (evaluation/memorisation.py): memorisation.json,
    nearest.png (samples beside their nearest training images, closest first) and
    distances.png. With a ``twin`` model (trained on other examples of the same data), also how
    alike its samples from the same noise are, and twins.png."""
    training, held_out = data.reference_images(), data.reference_images(held_out=True)
    if not len(held_out):
        raise ConfigError("memorisation is calibrated on held-out images, and data.val_fraction=0 holds none out")
    samples = to_uint8(draw_numbered(model, n, evaluation.seed, evaluation.batch_size, sampling,
                                     "memorisation: samples"))
    found = {"pixels": memorisation(*(to_unit_range(images) for images in (samples, held_out, training)))}
    if extractor is not None:
        with tqdm(total=n + len(held_out) + len(training), desc="memorisation: features", unit="img") as bar:
            features = [sample_features(lambda indices, images=images: to_unit_range(images[indices]), extractor,
                                        len(images), evaluation.batch_size, progress=bar.update)
                        for images in (samples, held_out, training)]
        found[f"features ({extractor.name})"] = memorisation(*features)
    summary = {"samples": n, "held_out": len(held_out), "training": len(training), "copy": "d1 < d2 / 3",
               **{space: {key: value for key, value in result.items() if isinstance(value, float)}
                  for space, result in found.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    if twin is not None:
        summary["twin"] = compare_twins(model, samples, twin, evaluation, sampling, folder)
    (folder / "memorisation.json").write_text(json.dumps(summary, indent=1))
    pixels = found["pixels"]
    closest = pixels["nearest"].argsort()[:12]
    distances = [f"{d:.2f}" for d in pixels["nearest"][closest].tolist()]
    save_labelled_grid(torch.cat([samples[closest], training[pixels["nearest_index"][closest]]]),
                       ["sample", "nearest\ntraining"], distances, folder / "nearest.png",
                       "samples closest to a training image (distance in pixels, [-1, 1])")
    save_histograms({"samples": pixels["nearest"], "held-out images": pixels["held_out_nearest"]},
                    folder / "distances.png", "distance to the nearest training image (pixels)")
    shares = [f"{100 * result['copy_share']:.0f}% in {space}" for space, result in found.items()]
    print(f"memorisation: copies of a training image (nearest < 1/3 of the second nearest) among {n} samples: "
          f"{', '.join(shares)}; among {len(held_out)} held-out real images: "
          f"{100 * pixels['held_out_copy_share']:.0f}% in pixels")
    if twin is not None:
        print(f"  from the same noise as {twin.config.name}'s: cosine similarity {summary['twin']['same_noise']:.2f} "
              f"(different noise: {summary['twin']['different_noise']:.2f})")
    print(f"  {folder}/memorisation.json, nearest.png, distances.png" + (", twins.png" if twin is not None else ""))
    return summary


def draw_numbered(model, n: int, seed: int, batch_size: int, sampling, description: str,
                  labels: Tensor | None = None) -> Tensor:
    """Samples 0 to n - 1 of ``model``'s numbered set for ``seed`` (``Model.sample_numbered``:
    sample i starts from the same noise in any model of the same shape; with ``labels``, it is
    drawn for labels[i], in turn), a batch at a time with a progress bar, on the CPU."""
    samples = []
    with tqdm(total=n, desc=description, unit="sample") as bar:
        for indices in shares(n, batch_size, 0, 1):
            samples.append(model.sample_numbered(indices, seed, sampling, labels).cpu())
            bar.update(len(indices))
    return torch.cat(samples)


def compare_twins(model, samples: Tensor, twin, evaluation, sampling, folder: Path) -> dict:
    """The ``twin`` model's samples from the same noise as ``model``'s ``samples`` (and with the
    same sampler): their similarity (``same_noise_similarity``) and twins.png, the first twelve
    pairs."""
    twin_samples = to_uint8(draw_numbered(twin, len(samples), evaluation.seed, evaluation.batch_size, sampling,
                                          "memorisation: twin"))
    similarity = same_noise_similarity(to_unit_range(samples), to_unit_range(twin_samples))
    pairs = similarity.pop("pairs")[:12]
    save_labelled_grid(torch.cat([samples[:12], twin_samples[:12]]), [model.config.name, twin.config.name],
                       [f"{c:.2f}" for c in pairs.tolist()], folder / "twins.png",
                       "the same noise through both models (cosine similarity)")
    return {"twin": dict(twin.origin), **similarity}


def announce(model, extractor, evaluation, plans, device) -> None:
    """Time one batch, then say what the whole evaluation will take."""
    started = time.perf_counter()
    indices = torch.arange(min(evaluation.batch_size, evaluation.samples))
    sampling = plans[0][1]
    extractor(to_uint8(model.sample_numbered(indices, 0, sampling)).to(device))
    per_sample = (time.perf_counter() - started) / len(indices)
    costs = [drawn.nfe(s) + 1 for drawn, s, _ in plans]    # +1: the features
    work = sum(costs) / costs[0]
    minutes = per_sample * evaluation.samples * work / 60
    print(f"evaluating {len(plans)} x {evaluation.samples} samples with {extractor.name}: about {minutes:.0f} min "
          f"(timed on one batch)")


def image_keeper(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)

    def keep(indices, images):
        for i, image in zip(indices.tolist(), images):
            save_image(image, folder / f"{i:06d}.png")

    return keep


def measure_distances(model, data: DiffusionDataModule, evaluation, sampling, seeds: int, folder: Path) -> Path:
    """Data that FID cannot judge: the sliced Wasserstein distance and MMD (``evaluation/distances.py``)
    of evaluation.samples samples against the held-out data, for each seed (a conditional model's
    sample i drawn for held-out example i's condition, in turn), and of as many training
    examples against the held-out data: for an unconditional model the floor, what a model that
    drew the data itself would get (a conditional model's samples share the held-out conditions,
    which the training examples do not, and may come closer). Written to distances.json."""
    held_out = data.reference_images(held_out=True)
    labels = data.val_set.labels if model.condition is not None else None
    runs = []
    for k in range(seeds):
        seed = evaluation.seed + k * evaluation.samples
        drawn = draw_numbered(model, evaluation.samples, seed, evaluation.batch_size, sampling,
                              f"{model.config.name}: {sampling.sampler} {sampling.steps} steps, seed {seed}", labels)
        runs.append({"seed": seed, **distances(drawn, held_out, model.kind, evaluation.seed)})
    floor = distances(data.reference_images()[:evaluation.samples], held_out, model.kind, evaluation.seed)
    count = count_name(evaluation.samples)
    summary = {"kind": model.kind, "against": f"{len(held_out)} held-out examples", "sampler": sampling.sampler,
               "steps": sampling.steps, "nfe": model.nfe(sampling),
               **{f"{key}@{count}": statistics.mean(run[key] for run in runs) for key in ("swd", "mmd")},
               "training_data": floor, "runs": runs}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "distances.json").write_text(json.dumps(summary, indent=1))
    floor_said = ("samples drawn for their conditions" if labels is not None else
                  f"training data itself: swd {floor['swd']:.4g}, mmd {floor['mmd']:.4g}")
    print(f"swd@{count} {summary[f'swd@{count}']:.4g}, mmd@{count} {summary[f'mmd@{count}']:.4g} against "
          f"{summary['against']} ({sampling.sampler}, {summary['nfe']} NFE); {floor_said}: {folder / 'distances.json'}")
    return folder


def report(runs: list[dict], sweep: list[dict], extractor_name: str, folder: Path) -> Path:
    """evaluation.json (each seed, and the mean and spread), sweep.json and sweep.png."""
    count = count_name(runs[0]["samples"])
    fids, kids = [r["fid"] for r in runs], [r["kid"] for r in runs]
    summary = {"extractor": extractor_name, "samples": runs[0]["samples"], "sampler": runs[0]["sampler"],
               "steps": runs[0]["steps"], "nfe": runs[0]["nfe"], "precision": runs[0]["precision"],
               f"fid@{count}": statistics.mean(fids),
               f"fid@{count}_std": statistics.stdev(fids) if len(fids) > 1 else 0.0,
               f"kid@{count}": statistics.mean(kids), "runs": runs}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluation.json").write_text(json.dumps(summary, indent=1))
    spread = f" ± {summary[f'fid@{count}_std']:.2f} over {len(runs)} seeds" if len(runs) > 1 else ""
    print(f"fid@{count} {summary[f'fid@{count}']:.2f}{spread}, kid@{count} {summary[f'kid@{count}']:.4f} "
          f"({runs[0]['sampler']}, {runs[0]['nfe']} NFE, {extractor_name}): {folder / 'evaluation.json'}")
    if sweep:
        (folder / "sweep.json").write_text(json.dumps({"extractor": extractor_name, "results": sweep}, indent=1))
        print(f"FID against NFE: {save_nfe_plot(sweep, folder / 'sweep.png', f'fid@{count} ({extractor_name})')}")
    return folder


def load_teacher(model, path: str):
    """The teacher of the student ``model`` (its distill.teacher), for the sweep."""
    if not model.config.distill.teacher:
        raise ConfigError(f"teacher_steps compares a student with its teacher, and {path} is no student (it has no "
                          "distill.teacher): leave teacher_steps out")
    return load_run(model.config.distill.teacher)[0]


def load_twin(path: str, model, device, precision: str, compile_mode: str):
    """The run at ``path``, ready to sample like ``model``: same data shape and conditioning."""
    twin, _ = load_run(path)
    if twin.data_shape != model.data_shape or twin.num_classes != model.num_classes:
        raise ConfigError(f"twin={path} makes samples of shape {list(twin.data_shape)} with {twin.num_classes} "
                          f"classes, and {model.config.name} of shape {list(model.data_shape)} with "
                          f"{model.num_classes}: the twin must be trained the same way on other examples of the "
                          "same data")
    twin.to(device)
    twin.speed_up(precision, compile_mode)
    return twin


def check_request(command: EvaluateCommand) -> None:
    if command.twin and not command.memorisation:
        raise ConfigError(f"twin={command.twin} compares the samples of the memorisation check: add memorisation=N")
    if command.teacher_steps and not command.sweep:
        raise ConfigError("teacher_steps draws the teacher's line in the sweep's plot: add sweep=true")
    unknown = [name for name in command.sweep_samplers if name not in SAMPLERS]
    if unknown or command.seeds < 1 or min([*command.sweep_steps, *command.teacher_steps], default=1) < 1:
        raise ConfigError(f"bad sweep or seeds: seeds >= 1, sweep_steps >= 1, sweep_samplers from {', '.join(SAMPLERS)}"
                          + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
