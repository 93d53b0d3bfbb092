"""``autoencoder``: train the small KL autoencoder of a latent model (``models/autoencoder.py``)
on the configured data, into runs/<name>/:

    autoencoder.safetensors, autoencoder.json   the autoencoder: give codec.source=runs/<name> to train on its latents
    checkpoints/autoencoder.ckpt                weights, optimiser, step and random state: rerun the command to resume
    reconstructions.png                         held-out images above their reconstructions
    metrics.json                                held-out reconstruction error (MSE, PSNR), KL, latent shape
    config.yaml                                 the configuration it was trained with
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..codecs import TrainedAutoencoder
from ..config import duration_seconds, load_config
from ..data import DiffusionDataModule
from ..devices import device_name, training_device
from ..errors import ConfigError, DataError, Interrupted
from ..models.autoencoder import Autoencoder, kl_from_standard_normal
from ..pixels import to_uint8, to_unit_range
from ..runs import Run
from ..storage import read_tensors
from ..visualize import save_labelled_grid

USAGE = """\
autoencoder [key=value ...] train the autoencoder of a latent model on the data; e.g. autoencoder experiment=mnist
                          name=mnist-ae, then train codec.source=runs/mnist-ae (keys: autoencoder.*, data.*,
                          trainer.accelerator, trainer.max_time, trainer.checkpoint_every_n_steps)"""

SHOWN = 8          # held-out images in reconstructions.png


def run(overrides: list[str]) -> Path:
    cfg = load_config(overrides)
    settings, run_dir = cfg.autoencoder, Run.named(cfg.name)
    checkpoint = run_dir.root / "checkpoints" / "autoencoder.ckpt"
    if run_dir.last_checkpoint.is_file():
        raise ConfigError(f"{run_dir.root} holds a diffusion run: give the autoencoder a name of its own (name=...)")
    if checkpoint.is_file() and not cfg.trainer.resume:
        raise ConfigError(f"{run_dir.root} already holds an autoencoder; resume it with trainer.resume=true or "
                          "start another with name=<new name>")
    data = DiffusionDataModule(cfg.data, cfg.seed)
    data.setup()
    if not data.is_image:
        raise DataError(f"data.name={cfg.data.name} is not images: an autoencoder of latents takes images")
    torch.manual_seed(cfg.seed)
    network = Autoencoder(data.data_shape[0], settings.latent_channels, tuple(settings.channels))
    codec = TrainedAutoencoder(network)
    try:
        latent_shape = codec.latent_shape(data.data_shape)
    except ValueError as error:
        raise ConfigError(f"autoencoder.channels={list(settings.channels)}: {error}") from None
    device = training_device(cfg.trainer.accelerator)
    network.to(device).requires_grad_(True).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.lr)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    step = 0
    if checkpoint.is_file():
        step = resume(checkpoint, cfg, network, optimiser, generator)
    else:
        run_dir.save_config(cfg, [])
    images = data.reference_images().to(device)
    held_out = to_unit_range(data.reference_images(held_out=True)[:256] if len(data.val_set) else images[:256].cpu())
    c, h, w = latent_shape
    print(f"autoencoder {run_dir.root}: {len(images):,} images of {'x'.join(map(str, data.data_shape))} to latents "
          f"of {c}x{h}x{w} ({math.prod(data.data_shape) / (c * h * w):.1f}x fewer values), "
          f"{sum(p.numel() for p in network.parameters()) / 1e6:.2f}M parameters, on {device_name(device)}"
          + (f", resuming at step {step}" if step else ""))
    started = time.monotonic()
    budget = duration_seconds(cfg.trainer.max_time)
    try:
        with tqdm(total=settings.max_steps, initial=step, desc="autoencoder", unit="step") as bar:
            while step < settings.max_steps and (budget is None or time.monotonic() - started < budget):
                batch = images[torch.randint(len(images), (settings.batch_size,), generator=generator, device=device)]
                loss, reconstruction, kl = network.loss(to_unit_range(data.augment(batch)), settings.kl_weight)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step += 1
                bar.update()
                bar.set_postfix(mse=f"{reconstruction.item():.4f}", kl=f"{kl.item():.3g}", refresh=False)
                if step % cfg.trainer.checkpoint_every_n_steps == 0:
                    save_checkpoint(checkpoint, network, optimiser, generator, step)
    except KeyboardInterrupt:
        save_checkpoint(checkpoint, network, optimiser, generator, step)
        raise Interrupted(f"SIGINT at step {step}; {checkpoint} is saved. Resume with the same command",
                          signal.SIGINT) from None
    save_checkpoint(checkpoint, network, optimiser, generator, step)
    if step < settings.max_steps:
        print(f"time budget trainer.max_time={cfg.trainer.max_time} spent at step {step}; the same command continues")
    network.eval().requires_grad_(False)
    codec.to("cpu").save(run_dir.root)
    decoded, metrics = judge(codec, held_out, settings.kl_weight, latent_shape)
    (run_dir.root / "metrics.json").write_text(json.dumps(metrics, indent=1))
    picture = save_reconstructions(held_out[:SHOWN], decoded[:SHOWN], run_dir.root / "reconstructions.png", metrics)
    print("\n".join([
        f"finished   step {step:,} of {settings.max_steps:,} in {time.monotonic() - started:,.0f} s: held-out "
        f"PSNR {metrics['psnr']:.1f} dB (MSE {metrics['mse']:.2g} in [-1, 1]), KL {metrics['kl']:.3g} per value",
        f"  autoencoder {run_dir.root}",
        f"  pictures   {picture}",
        f"  next       {__package__.split('.')[0]} train codec.source={run_dir.root} name=<a new name>",
    ]))
    return run_dir.root


def resume(checkpoint: Path, cfg, network: Autoencoder, optimiser, generator: torch.Generator) -> int:
    """Load what ``save_checkpoint`` saved, if the network's shape is the one configured."""
    saved = read_tensors(checkpoint)
    if saved.get("shape") != network.shape:
        raise ConfigError(f"{checkpoint} is an autoencoder of {saved.get('shape')}, and the configuration asks for "
                          f"{network.shape}: keep autoencoder.channels and latent_channels, or name=<new name>")
    network.load_state_dict(saved["network"])
    optimiser.load_state_dict(saved["optimiser"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["rng"])
    return int(saved["step"])


def save_checkpoint(path: Path, network: Autoencoder, optimiser, generator: torch.Generator, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"network": network.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
             "generator": generator.get_state(), "rng": torch.get_rng_state(), "shape": network.shape}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)          # a kill mid-write leaves the previous checkpoint whole


@torch.no_grad()
def judge(codec: TrainedAutoencoder, images: torch.Tensor, kl_weight: float, latent_shape) -> tuple[torch.Tensor, dict]:
    """Held-out ``images`` decoded from their latents' means, and how well: MSE and PSNR (peak to
    peak 2 in [-1, 1]), and the KL per latent value."""
    mean, std = codec.encode(images).chunk(2, dim=1)
    decoded = codec.reconstruct(mean)
    mse = (decoded - images).square().mean().item()
    kl = kl_from_standard_normal(mean, std).item()
    return decoded, {"mse": mse, "psnr": 10 * math.log10(4 / max(mse, 1e-12)), "kl": kl, "kl_weight": kl_weight,
                     "latent_shape": list(latent_shape), "images": len(images)}


def save_reconstructions(images: torch.Tensor, decoded: torch.Tensor, path: Path, metrics: dict) -> Path:
    tiles = to_uint8(torch.cat([images, decoded]))
    return save_labelled_grid(tiles, ["held out", "decoded"], [""] * len(images), path,
                              f"autoencoder: PSNR {metrics['psnr']:.1f} dB, latents "
                              f"{'x'.join(map(str, metrics['latent_shape']))}")
