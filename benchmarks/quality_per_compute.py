"""Sample quality per unit of compute on MNIST: a recipe of ours against the course library's,
each trained for the same wall-clock budget in the same run on the same machine.

Protocol (issue 14):
- Data: the MNIST 10k test set (../shared/data/mnist, idx files), padded from 28 to 32 pixels.
- Scorer: a small CNN trained here on images 0-8999 and on made-up non-digits (two digits
  averaged, smooth blobs) as an eleventh class (held out: 9000-9999, where its accuracy and the
  share of real digits it recognises with confidence > 0.9 are reported). Its
  penultimate features (128) give FID and KID through the project's own evaluation code (a
  custom extractor); its softmax gives the share of samples recognised with confidence > 0.9,
  and, for class-conditional samples, the share recognised as the class asked for.
- Recipes, each trained for ``--budget`` seconds of wall clock on all 10k images:
  ``ours`` (the default project baked for MNIST, its cpu preset, stopped by the trainer's own
  max_time: no labels, guided by the data's own 50 k-means clusters), ``ours-plain`` (a plain
  unconditional model, conditioning=none), ``ours-class`` (class-conditional on the labels),
  variants of these (``OURS`` below, or any recipe with changes as ``ours+key=value+...``: one
  change each, for the ablation table), and ``course`` (smalldiffusion 0.5.0: its U-Net at the
  size of our CPU U-Net before the width ablation (1.12M parameters; ours is now 0.31M, and
  1.20M at width 32), eps objective, log-linear schedule (0.02 to 20, 800 levels), batch 32,
  AdamW 1e-3, EMA 0.995).
- Samples: 1000 per recipe at 10 and 20 NFE (ours: DPM-Solver++(2M) on its Karras sigmas;
  the course: its DDIM, gamma 1, mu 0, on its own sigma sequence); conditional samples cycle
  through the classes (clusters: each as often as the data holds it), at guidance 1 and at
  the recipe's own (2 in the default bake; ``--guidance`` to choose). Samples of a
  cluster-guided recipe are scored as unconditional ones: a cluster is no digit class.
- ``--device cuda`` trains and samples our recipes on a GPU, float32 as on the CPU: for a
  fixed number of images seen (``--images``) the same recipe, only sooner, which is how
  ``quality_sweep_gpu.sh`` runs many ablations in one GPU lease. ``--scorer FILE`` keeps the
  scorer, so that every process and machine scores with the same network.

Run on an idle machine (2 threads):
    .venv/bin/python -m pip install smalldiffusion==0.5.0 accelerate     # the peer, for this only
    .venv/bin/python benchmarks/quality_per_compute.py --budget 600
    .venv/bin/python benchmarks/quality_per_compute.py --images 48000       # a fixed number of images seen
    .venv/bin/python benchmarks/quality_per_compute.py --recipes ours --samplers heun+churn=40:10,dpmpp_2m:20 \
        --project <the project folder a run printed> --resume     # other samplers on runs trained before
Each (recipe, sampler, NFE, guidance) is one JSON line in benchmarks/results/quality_per_compute.jsonl,
and each recipe's first 100 samples at its most steps (and highest guidance) a grid in
benchmarks/results/quality_<recipe>.png. All the samples of a row are kept for scoring by another
network, in the baked project: runs/<recipe>/benchmark_samples/<sampler>-<steps>[-guidance<w>].pt
(``torch.load``: uint8 "images" (n, 1, 32, 32), the classes "asked" for or None, and the "row").
With --resume, rows already in the file for the same budget are skipped: an interrupted run resumes.
"""
import argparse
import gzip
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
RESULTS = Path(__file__).parent / "results"
CONFIDENT = 0.9


def load_mnist(folder: Path = MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (10000, 1, 32, 32), the 28x28 digits centred on a black border, and labels."""
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return F.pad(torch.from_numpy(images.copy()), (2, 2, 2, 2)), torch.from_numpy(labels.astype(np.int64))


class Scorer(nn.Module):
    """A small digit classifier on images in [-1, 1], with an eleventh class for "not a digit"
    (see ``junk``), so that a blob or two digits on top of each other are not called a digit
    with confidence. ``features`` is its 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]  # noqa: E731
        self.body = nn.Sequential(*block(1, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                                  *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, 11)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def junk(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images that are not one clear digit, a quarter of each kind: two digits averaged, smooth
    random blobs, pixel noise, and flat grey."""
    n = len(x)
    level = lambda: torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1  # noqa: E731
    kinds = torch.stack([
        (x + x[torch.randperm(n, generator=generator)]) / 2,
        F.interpolate(torch.randn(n, 1, 6, 6, generator=generator), size=32, mode="bilinear").mul(2).tanh(),
        (level() + torch.rand(n, 1, 1, 1, generator=generator) * torch.randn(n, 1, 32, 32, generator=generator)).clamp(-1, 1),
        level().expand(n, 1, 32, 32)])
    return kinds[torch.randint(4, (n,), generator=generator), torch.arange(n)]


class ScorerFeatures(nn.Module):
    """The scorer's features as the project's evaluation code takes an extractor: uint8 in."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, images):
        return self.scorer.features(images.float() / 127.5 - 1)


def train_scorer(images, labels, epochs: int = 10, seed: int = 0) -> tuple[Scorer, dict]:
    """Trained on images 0-8999 with shifts of up to 2 pixels and a quarter of "not a digit"
    examples; reports accuracy and confident recognition on the held-out 1000."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    scorer = Scorer()
    x, y = images[:9000].float() / 127.5 - 1, labels[:9000]
    steps = epochs * (len(x) // 96)
    optimizer = torch.optim.AdamW(scorer.parameters(), 3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    for step in range(steps):
        batch = torch.randint(len(x), (96,), generator=generator)
        shifted = torch.roll(x[batch], tuple(torch.randint(-2, 3, (2,), generator=generator).tolist()), (2, 3))
        inputs = torch.cat([shifted, junk(shifted[:32], generator)])
        targets = torch.cat([y[batch], torch.full((32,), 10)])
        loss = F.cross_entropy(scorer(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    scorer.eval().requires_grad_(False)
    held_out_x, held_out_y = images[9000:].float() / 127.5 - 1, labels[9000:]
    with torch.no_grad():
        accuracy = (scorer(held_out_x).argmax(1) == held_out_y).float().mean().item()
        junk_called_digits = judge(scorer, junk(held_out_x, generator))["confident"]
    return scorer, {"accuracy": accuracy, "confident": judge(scorer, held_out_x, held_out_y)["class_match"],
                    "junk_confident": junk_called_digits}


def trained_scorer(images, labels, path: Path | None) -> tuple[Scorer, dict]:
    """``train_scorer``'s result, kept at ``path``: every process and machine then scores with
    the very same network (trained on the CPU, where training is deterministic)."""
    if path and path.is_file():
        saved = torch.load(path, weights_only=True)
        scorer = Scorer()
        scorer.load_state_dict(saved["weights"])
        return scorer.eval().requires_grad_(False), saved["real"]
    scorer, real = train_scorer(images, labels)
    if path:
        torch.save({"weights": scorer.state_dict(), "real": real}, path)
    return scorer, real


def scored(x: torch.Tensor, reference, extractor) -> tuple[dict, torch.Tensor]:
    """FID and KID of samples ``x`` (in [-1, 1]) against ``reference`` in ``extractor``'s
    features, through the project's own evaluation code, and the samples as uint8 images."""
    from diffusion_lab.evaluation.quality import fid_kid
    from diffusion_lab.pixels import to_uint8

    images = to_uint8(x)
    return fid_kid(reference, torch.cat([extractor(part) for part in images.split(500)]), 1000, seed=0), images


@torch.no_grad()
def judge(scorer: Scorer, x: torch.Tensor, asked: torch.Tensor | None = None) -> dict:
    """Share of images in [-1, 1] the scorer recognises with confidence > 0.9, and (given the
    classes asked for) the share recognised with that confidence as the class asked for."""
    probabilities = torch.cat([scorer(part).softmax(1) for part in x.clamp(-1, 1).split(500)])
    confidence, guess = probabilities[:, :10].max(1)             # class 10: not a digit
    result = {"confident": (confidence > CONFIDENT).float().mean().item()}
    if asked is not None:
        result["class_match"] = ((confidence > CONFIDENT) & (guess == asked)).float().mean().item()
    return result


def machine(device: torch.device) -> str:
    where = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{platform.machine()}, {os.cpu_count()} cores{where}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


# -- our recipes: the baked project, trained by its own train command --------------------------
# Each is the default bake's configuration (cpu preset) with these command-line changes. The
# default bake guides by 50 k-means clusters at guidance 2 (conditioning=clusters); runs before
# n baked a plain unconditional model by default, which is "ours-plain" here.
PLAIN = ["model.conditional=false", "data.clusters=0"]        # conditioning=none
CLASS = ["model.conditional=true", "data.clusters=0"]         # conditioning=class: the digits' labels
W32 = "model.unet.channels=32"     # the CPU U-Net's width before the width ablation (today's: 16)
EDM = ["diffusion.noise_mean=-1.2", "diffusion.noise_std=1.2"]   # EDM's training noise levels
EDM2 = "diffusion.noise_mean=-0.4"   # EDM2's: the default until the cpu preset's 0.4 (rows before run j)
# Latent flow matching (issue 30), as the course's lab: a home-trained autoencoder (32x32 digits to
# 4x8x8 latents) for AUTOENCODER_SHARE of the budget, then a U-Net on its latents for the rest.
AUTOENCODER = "codec.source=AUTOENCODER"        # replaced by the autoencoder this recipe trains first
AUTOENCODER_SHARE = 0.2
LATENT = [AUTOENCODER, "diffusion.objective=flow", "model.unet.channels=32", "model.unet.channel_mult=[1,2]",
          "model.unet.attention_levels=[1]", "data.batch_size=64"]
OURS = {
    "ours": [],
    "ours-plain": PLAIN,
    "ours-edm2-noise": [*PLAIN, EDM2],
    "ours-width8": [*PLAIN, EDM2, "model.unet.channels=8"],                   # 0.08M parameters
    "ours-width24": [*PLAIN, EDM2, "model.unet.channels=24"],                 # 0.7M, half the img/s of 16
    "ours-width32": [*PLAIN, W32, EDM2],                                      # 1.2M, a third of the img/s
    "ours-class": CLASS,
    "ours-class-edm2-noise": [*CLASS, EDM2],
    "ours-class-width32": [*CLASS, W32, EDM2],
    "ours-clusters": ["model.conditional=true", "data.clusters=30"],          # the 30 clusters of runs j and k
    "ours-noise-sd3": [*PLAIN, W32, "diffusion.noise_mean=0.0"],              # SD3's logit-normal t
    "ours-edm-noise": [*PLAIN, W32, *EDM],
    "ours-class-edm-noise": [*CLASS, W32, *EDM],
    "ours-edm-noise-ema0.995": [*PLAIN, W32, *EDM, "optim.ema_decay=0.995"],
    "ours-edm-noise-ema0.995-lr2e-3": [*PLAIN, W32, *EDM, "optim.ema_decay=0.995", "optim.lr=2e-3"],
    "ours-edm-noise-ema0.995-batch32": [*PLAIN, W32, *EDM, "optim.ema_decay=0.995", "data.batch_size=32"],
    "ours-latent": LATENT,
}


def changes_of(recipe: str) -> list[str]:
    """A recipe's command-line changes: ``OURS[name]``, or for ``name+key=value+...`` those of
    ``name`` and then each ``key=value`` (an ablation that needs no entry of its own)."""
    name, *extra = recipe.split("+")
    return [*OURS[name], *extra]


def run_name(recipe: str) -> str:
    return re.sub(r"[^\w.-]+", "_", recipe)


def train_ours(name: str, data_file: Path, budget: int, images: int | None, extra: list[str],
               device: torch.device) -> dict:
    """Train with the baked project's own command, for ``budget`` seconds, or for ``images``
    images seen. On a GPU (``device``) the same float32 recipe trains, only faster: a way to run
    many ablations at a CPU's fixed number of images seen. A latent recipe first trains its
    autoencoder with the project's ``autoencoder`` command, within the same budget."""
    from diffusion_lab.cli import main

    start = time.perf_counter()
    data = ["data.name=tensor_file", f"data.root={data_file}", "data.image_size=32", "data.channels=1",
            "data.hflip=false"]
    autoencoder = {}
    if AUTOENCODER in extra:
        if images:
            raise SystemExit("a latent recipe trains its autoencoder for a share of --budget; --images is for pixel ones")
        share = round(AUTOENCODER_SHARE * budget)
        assert main(["autoencoder", f"name={name}-autoencoder", "preset=cpu", *data, "data.val_fraction=0.05",
                     "autoencoder.channels=[16,32,64]", "autoencoder.batch_size=8",
                     f"trainer.max_time=00:00:{share // 60:02d}:{share % 60:02d}",
                     "autoencoder.max_steps=1000000"]) == 0
        autoencoder = {"autoencoder": json.loads((Path("runs") / f"{name}-autoencoder" / "metrics.json").read_text())}
        extra = [f"codec.source=runs/{name}-autoencoder" if change == AUTOENCODER else change for change in extra]
        budget -= round(time.perf_counter() - start)
    minutes, seconds = divmod(budget, 60)
    batch = int(next((change.split("=")[1] for change in extra if change.startswith("data.batch_size=")),
                     64))                                                      # the cpu preset's batch
    stop = ([f"trainer.max_steps={images // batch}"] if images else
            [f"trainer.max_time=00:00:{minutes:02d}:{seconds:02d}", "trainer.max_steps=10000000"])
    args = ["train", f"name={name}", "preset=cpu", "logger=csv", *data, "data.val_fraction=0", *stop,
            "trainer.sample_every_n_steps=10000000", "trainer.first_grid_minutes=0",
            "trainer.checkpoint_every_n_steps=10000000", "evaluation.every_n_steps=0",
            *(["trainer.accelerator=gpu"] if device.type == "cuda" else []), *extra]
    assert main(args) == 0
    from diffusion_lab.runs import load_run

    model, _ = load_run(f"runs/{name}")
    model.to(device)
    steps = model.origin["step"]
    return {"train_seconds": time.perf_counter() - start, "steps": steps,
            "images_seen": steps * model.config.data.batch_size, "batch_size": model.config.data.batch_size,
            "params": sum(p.numel() for p in model.denoiser.parameters()), **autoencoder, "module": model}


def sample_ours(model, n: int, sampler: str, steps: int, guidance: float,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    from omegaconf import OmegaConf

    sampling = OmegaConf.merge(model.config.sampling, {**sampler_changes(sampler), "steps": steps, "guidance": guidance})
    generator = torch.Generator().manual_seed(seed)
    asked = model.default_labels(torch.arange(n))             # classes in turn, clusters in proportion
    parts = [model.sample(len(batch), generator, sampling, labels=None if asked is None else asked[batch]).x
             for batch in torch.arange(n).split(250)]
    return torch.cat(parts).cpu(), asked


def sampler_changes(sampler: str) -> dict:
    """``heun+churn=40``: the sampler's name and its options (keys of the sampling section)."""
    name, *options = sampler.split("+")
    return {"sampler": name, **{key: float(value) for key, value in (option.split("=") for option in options)}}


def network_evaluations(sampler: str, steps: int) -> int:
    """Denoiser calls of a sample, the ``nfe`` of a row, by the project's own count. A guided
    call evaluates the network twice (the row's guidance says when), so "10 steps (20 NFE)" in
    RESULTS.md for guidance 2."""
    from diffusion_lab.diffusion.samplers import SAMPLERS

    return SAMPLERS[sampler_changes(sampler)["sampler"]].calls(steps)


# -- the course library's recipe ----------------------------------------------------------------
def train_course(images: torch.Tensor, budget: int, seen: int | None, seed: int = 0) -> dict:
    from smalldiffusion import ScheduleLogLinear, Unet, training_loop
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(seed)
    data = images.float() / 127.5 - 1
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, drop_last=True)
    schedule = ScheduleLogLinear(N=800, sigma_min=0.02, sigma_max=20)
    model = Unet(32, 1, 1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.995))
    start, steps = time.perf_counter(), 0
    for _ in training_loop(loader, model, schedule, epochs=10**6, lr=1e-3):
        steps += 1
        if steps > 1:
            ema.update_parameters(model)        # after the previous step's update
        if (steps * 32 >= seen) if seen else (time.perf_counter() - start > budget):
            break
    return {"train_seconds": time.perf_counter() - start, "steps": steps, "images_seen": steps * 32, "batch_size": 32,
            "params": sum(p.numel() for p in model.parameters()), "module": (ema.module, schedule)}


def sample_course(trained, n: int, nfe: int, seed: int = 0) -> torch.Tensor:
    from smalldiffusion import samples

    model, schedule = trained
    torch.manual_seed(seed)
    parts = []
    for batch in torch.arange(n).split(250):
        *_, x = samples(model, schedule.sample_sigmas(nfe), gam=1, mu=0, batchsize=len(batch))
        parts.append(x)
    return torch.cat(parts), None


# -- the run ------------------------------------------------------------------------------------
def measured(path: Path, budget: int | None, images: int | None) -> dict[tuple, dict]:
    """The rows already in ``path`` for this budget, by (recipe, sampler, NFE, guidance)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {(row["recipe"], row["sampler"], row["nfe"], row["guidance"]): row
            for row in rows if (row["budget_s"], row["budget_images"]) == (budget, images)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=600, help="training wall clock per recipe, seconds")
    parser.add_argument("--images", type=int, default=None,
                        help="train for this many images seen instead of for --budget seconds")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--recipes", default="course,ours,ours-class",
                        help=f"course and any of {', '.join(OURS)}, each with changes as name+key=value+...")
    parser.add_argument("--samplers", default="dpmpp_2m:10,dpmpp_2m:20",
                        help="our recipes' samplers, sampler:steps or sampler+option=value:steps "
                             "(heun+churn=40:10; the course's: its DDIM at 10 and 20)")
    parser.add_argument("--guidance", default=None,
                        help="the guidance weights of conditional recipes (default: 1 and the recipe's own)")
    parser.add_argument("--project", default=None,
                        help="the baked project of an earlier run: its trained runs are sampled again, not retrained")
    parser.add_argument("--out", default=str(RESULTS / "quality_per_compute.jsonl"))
    parser.add_argument("--resume", action="store_true", help="skip the rows --out already has for this budget")
    parser.add_argument("--device", default="cpu", help="where our recipes train and sample (cuda: float32 all the same)")
    parser.add_argument("--scorer", default=None, help="the scorer's weights: loaded if the file exists, else saved there")
    parser.add_argument("--data", default=str(MNIST), help="folder of the MNIST 10k idx files")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out).resolve()             # the run works in the project folder
    out.parent.mkdir(parents=True, exist_ok=True)
    images, labels = load_mnist(Path(args.data))
    scorer, real = trained_scorer(images, labels, Path(args.scorer) if args.scorer else None)
    print(f"scorer: held-out accuracy {real['accuracy']:.3f}, real digits recognised with confidence > 0.9: "
          f"{real['confident']:.3f}, non-digits called digits: {real['junk_confident']:.3f}", flush=True)
    if args.project:
        project = Path(args.project).resolve()
        sys.path.insert(0, str(project / "src"))
    else:
        from _baked import import_baked_package

        project = import_baked_package(dataset="mnist")  # 32x32 grayscale
    print(f"project: {project} (its runs/ can be sampled again with --project)", flush=True)
    os.chdir(project)
    from diffusion_lab.config import load_config
    from diffusion_lab.evaluation.quality import reference_statistics
    from diffusion_lab.runs import load_run
    from diffusion_lab.storage import save_atomically

    data_file = save_atomically({"data": images, "labels": labels}, project / "mnist10k.pt")
    extractor = ScorerFeatures(scorer)
    reference = reference_statistics(images, extractor, project / "reference.pt", 500, 10000, torch.device("cpu"))
    budget = None if args.images else args.budget
    earlier = measured(out, budget, args.images)
    done = earlier if args.resume else {}
    ours = [(sampler, int(steps)) for sampler, steps in (plan.split(":") for plan in args.samplers.split(","))]
    asked_guidance = [float(weight) for weight in args.guidance.split(",")] if args.guidance else None
    device = torch.device(args.device)
    for recipe in re.split(r",(?![^\[]*\])", args.recipes):                # commas inside [...] belong to a value
        if recipe == "course":
            plans, cfg = [("ddim", nfe, None) for nfe in (10, 20)], None
        else:
            cfg = load_config(["preset=cpu", *changes_of(recipe)])
            guidances = asked_guidance or sorted({1.0, cfg.sampling.guidance})
            plans = [(sampler, steps, guidance) for sampler, steps in ours
                     for guidance in (guidances if cfg.model.conditional else (None,))]
        plans = [plan for plan in plans if (recipe, plan[0], network_evaluations(*plan[:2]), plan[2]) not in done]
        if not plans:
            print(f"{recipe}: measured already with this budget ({out})")
            continue
        run = run_name(recipe) + (f"-{args.images}img" if args.images else "")   # one folder per recipe and length
        if recipe == "course":
            trained = train_course(images, args.budget, args.images)
        elif (project / "runs" / run / "checkpoints").is_dir():           # trained by an earlier run: sample it again
            row = next(row for key, row in earlier.items() if key[0] == recipe)
            trained = {key: row[key] for key in ("train_seconds", "steps", "images_seen", "batch_size", "params")}
            trained["module"] = load_run(f"runs/{run}")[0].to(device)
        else:
            trained = train_ours(run, data_file, args.budget, args.images, changes_of(recipe), device)
        model = trained.pop("module")
        for sampler, steps, guidance in plans:
            start = time.perf_counter()
            if recipe == "course":
                x, asked = sample_course(model, args.samples, steps)
            else:
                x, asked = sample_ours(model, args.samples, sampler, steps, guidance or 1.0)
                if cfg.data.clusters:
                    asked = None                                         # a cluster is no digit class
            seconds = time.perf_counter() - start
            quality, drawn = scored(x, reference, extractor)
            nfe = network_evaluations(sampler, steps)
            row = {"recipe": recipe, "changes": "smalldiffusion" if recipe == "course" else changes_of(recipe),
                   **({} if cfg is None else {"conditional": cfg.model.conditional, "clusters": cfg.data.clusters}),
                   "budget_s": budget,
                   "budget_images": args.images, **trained, "sampler": sampler, "nfe": nfe, "guidance": guidance,
                   "sample_seconds": round(seconds, 1), **quality, **judge(scorer, x, asked),
                   "scorer": real, "machine": machine(device)}
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            name = f"{sampler}-{steps}" + (f"-guidance{guidance:g}" if guidance is not None else "")
            keep = project / "runs" / run / "benchmark_samples" / f"{name}.pt"
            keep.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"images": drawn, "asked": asked, "row": row}, keep)   # for any other scorer
            if (sampler, steps, guidance) == plans[-1]:                  # the most steps and guidance
                save_grid(drawn[:100], out.parent / f"quality_{run}.png")


def save_grid(images: torch.Tensor, path: Path) -> None:
    from PIL import Image

    n = int(len(images) ** 0.5)
    grid = images[:n * n, 0].reshape(n, n, 32, 32).permute(0, 2, 1, 3).reshape(n * 32, n * 32)
    Image.fromarray(grid.numpy()).resize((n * 64, n * 64), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
