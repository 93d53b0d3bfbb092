"""``evaluate``: FID and KID of a trained run, the full protocol: many samples, several seeds,
and on request FID against NFE for several samplers."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from omegaconf import MISSING, OmegaConf
from tqdm import tqdm

from ..config import RUN_SECTIONS, CompileMode, Precision, parse_command, run_config
from ..data import DiffusionDataModule
from ..devices import device_name, memory_errors, pick_device, sampling_precision
from ..diffusion.samplers import SAMPLERS
from ..errors import ConfigError
from ..evaluation.features import build_extractor
from ..evaluation.memorisation import memorisation
from ..evaluation.quality import (
    check_images,
    count_name,
    fid_kid,
    reference_file,
    reference_statistics,
    sample_features,
)
from ..pixels import to_uint8, to_unit_range
from ..runs import fresh_output, load_run
from ..visualize import save_histograms, save_image, save_labelled_grid, save_nfe_plot

USAGE = f"""\
evaluate run=DIR [key=value ...]
                          FID and KID of a run against its training data, into runs/<name>/fid/; keys:
                          seeds, sweep (FID against NFE for sweep_samplers x sweep_steps), keep_images,
                          memorisation (N samples checked for copies of training images; fid=false: only that),
                          device, precision, compile, and the evaluation keys {", ".join(RUN_SECTIONS["evaluation"])}
                          (samples defaults to 50000, the published protocol)"""


@dataclass
class EvaluateCommand:
    run: str = MISSING                   # a run directory (runs/<name>) or a .ckpt file
    seeds: int = 1                       # repeat with this many seeds (seed, seed + n, ...) and report the spread
    sweep: bool = False                  # also FID against NFE for every sampler and step count below
    sweep_samplers: list[str] = field(default_factory=lambda: ["euler", "heun", "dpmpp_2m"])
    sweep_steps: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    keep_images: bool = False            # save the first seed's samples as PNGs in runs/<name>/fid/images/
    device: str = "auto"                 # auto | cpu | cuda | mps
    precision: Precision = "auto"        # of the network while sampling
    compile: CompileMode = "none"        # torch.compile the network (pays for 50,000 samples on a GPU)
    fid: bool = True                     # FID and KID (false: only the memorisation check)
    memorisation: int = 0                # > 0: judge this many samples for copies of training images (0: off)


def run(overrides: list[str]) -> Path:
    command, evaluation_overrides = parse_command(overrides, EvaluateCommand, "evaluate", "evaluation")
    check_request(command)
    model, run_dir = load_run(command.run)
    if model.takes_prompts:
        raise ConfigError(f"{command.run} is a text-to-image model: FID here compares unconditional or class-labelled "
                          "samples with a data set, and a prompt per sample is not supported")
    evaluation = run_config(model.config, "evaluation", {"samples": 50_000, **evaluation_overrides}).evaluation
    cfg = run_config(model.config, "sampling", {"sampler": evaluation.sampler, "steps": evaluation.steps})
    device = pick_device(command.device)
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup()
    check_images(data.data_shape, cfg.data.name)
    model.check_data(data.data_shape)
    extractor = build_extractor(evaluation, __package__.split(".")[0]).to(device)
    model.to(device)
    precision = sampling_precision(command.precision, device)
    model.speed_up(precision, command.compile)
    if command.memorisation:
        judge_memorisation(model, data, extractor, command.memorisation, evaluation, run_dir.task("memorisation"))
    if not command.fid:
        return run_dir.task("memorisation")
    path = reference_file(evaluation.cache_dir, data.fingerprint, cfg.data.image_size, cfg.data.channels, extractor)
    images = data.reference_images()
    with tqdm(total=len(images), desc="reference features", unit="img", disable=path.is_file()) as bar:
        reference = reference_statistics(images, extractor, path, evaluation.batch_size, evaluation.kid_reference,
                                         device, bar.update)
    plans = [(cfg.sampling, evaluation.seed + k * evaluation.samples) for k in range(command.seeds)]   # disjoint noise
    if command.sweep:
        plans += [(OmegaConf.merge(cfg.sampling, {"sampler": name, "steps": steps}), evaluation.seed)
                  for name in command.sweep_samplers for steps in command.sweep_steps]
    keep = None
    if command.keep_images:
        keep = image_keeper(fresh_output(run_dir.fid) / "images")         # no old images mixed in
    results = []
    with memory_errors(f"batch_size={evaluation.batch_size} does not fit in memory on {device_name(device)}: lower "
                       "batch_size (the results do not depend on it)"):
        announce(model, extractor, evaluation, plans, device)
        for k, (sampling, seed) in enumerate(plans):
            with tqdm(total=evaluation.samples, desc=f"{sampling.sampler} {sampling.steps} steps, seed {seed}",
                      unit="sample") as bar:
                draw = partial(model.sample_numbered, seed=seed, sampling=sampling)
                features = sample_features(draw, extractor, evaluation.samples, evaluation.batch_size,
                                           keep=keep if k == 0 else None, progress=bar.update)
            results.append({"sampler": sampling.sampler, "steps": sampling.steps, "nfe": model.nfe(sampling),
                            "seed": seed, "precision": precision,
                            **fid_kid(reference, features, evaluation.kid_subset_size, seed=evaluation.seed)})
    return report(results[:command.seeds], results[command.seeds:], extractor.name, run_dir.fid)


def judge_memorisation(model, data, extractor, n: int, evaluation, folder: Path) -> dict:
    """``n`` samples and the held-out images against the training images, in pixels and in the
    extractor's features (evaluation/memorisation.py): memorisation.json, nearest.png (samples
    beside their nearest training images, closest first) and distances.png."""
    training, held_out = data.reference_images(), data.reference_images(held_out=True)
    if not len(held_out):
        raise ConfigError("memorisation is calibrated on held-out images, and data.val_fraction=0 holds none out")
    drawn = {}
    with tqdm(total=n, desc="memorisation: samples", unit="sample") as bar:
        sample_features(partial(model.sample_numbered, seed=evaluation.seed), extractor, n, evaluation.batch_size,
                        keep=lambda indices, images: drawn.update(zip(indices.tolist(), images)), progress=bar.update)
    samples = torch.stack([drawn[i] for i in range(n)])
    with tqdm(total=n + len(held_out) + len(training), desc="memorisation: features", unit="img") as bar:
        features = [sample_features(lambda indices, images=images: to_unit_range(images[indices]), extractor,
                                    len(images), evaluation.batch_size, progress=bar.update)
                    for images in (samples, held_out, training)]
    found = {"pixels": memorisation(*(to_unit_range(images) for images in (samples, held_out, training))),
             f"features ({extractor.name})": memorisation(*features)}
    summary = {"samples": n, "held_out": len(held_out), "training": len(training), "copy": "d1 < d2 / 3",
               **{space: {key: value for key, value in result.items() if isinstance(value, float)}
                  for space, result in found.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memorisation.json").write_text(json.dumps(summary, indent=1))
    pixels = found["pixels"]
    closest = pixels["nearest"].argsort()[:12]
    distances = [f"{d:.2f}" for d in pixels["nearest"][closest].tolist()]
    save_labelled_grid(torch.cat([samples[closest], training[pixels["nearest_index"][closest]]]),
                       ["sample", "nearest\ntraining"], distances, folder / "nearest.png",
                       "samples closest to a training image (distance in pixels, [-1, 1])")
    save_histograms({"samples": pixels["nearest"], "held-out images": pixels["held_out_nearest"]},
                    folder / "distances.png", "distance to the nearest training image (pixels)")
    print(f"memorisation: {100 * pixels['copy_share']:.0f}% of {n} samples copy a training image (nearest < 1/3 of "
          f"the second nearest; held-out real images: {100 * pixels['held_out_copy_share']:.0f}%); in features: "
          f"{100 * found[f'features ({extractor.name})']['copy_share']:.0f}%. {folder}/memorisation.json, "
          "nearest.png, distances.png")
    return summary


def announce(model, extractor, evaluation, plans, device) -> None:
    """Time one batch, then say what the whole evaluation will take."""
    started = time.perf_counter()
    indices = torch.arange(min(evaluation.batch_size, evaluation.samples))
    sampling = plans[0][0]
    extractor(to_uint8(model.sample_numbered(indices, 0, sampling)).to(device))
    per_sample = (time.perf_counter() - started) / len(indices)
    costs = [model.nfe(s) + 1 for s, _ in plans]    # +1: the features
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


def check_request(command: EvaluateCommand) -> None:
    unknown = [name for name in command.sweep_samplers if name not in SAMPLERS]
    if unknown or command.seeds < 1 or min(command.sweep_steps, default=1) < 1:
        raise ConfigError(f"bad sweep or seeds: seeds >= 1, sweep_steps >= 1, sweep_samplers from {', '.join(SAMPLERS)}"
                          + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
