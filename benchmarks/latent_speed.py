"""Training speed of pixel against latent diffusion at the same image size (issue 30), measured
side by side in one run on this machine with the baked default project's own code.

For each image size (64 and 128 px on a CPU; add 256 on a GPU), RGB:
- pixel: the bake's U-Net for that size (the cpu preset's width 16, or the GPU presets' 128 with
  --width 128; channel_mult and attention as configs/config.yaml chooses them for the size);
- latent f=4: the home-trained autoencoder's default shape (``autoencoder.channels=[16,32,64]``, 4 latent
  channels), and latent f=8: Stable Diffusion's (4 channels at an eighth of the side, the
  stand-in autoencoder of test_pretrained's size), each with the U-Net the same table chooses
  for the latents' side.
Reported per row: the bare training step's images per second (``bench``'s own step: forward,
backward, clipping, AdamW), its ratio to the pixel model's, and the autoencoder's encoding speed
(paid once per data set, then cached) and decoding speed (paid per sample). Weights are random:
speed does not depend on them.

    .venv/bin/python benchmarks/latent_speed.py                 # CPU: 64 and 128 px
    .venv/bin/python benchmarks/latent_speed.py --device cuda --sizes 64,128,256 --width 128
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "latent_speed.jsonl"


def unet_for(side: int) -> list[str]:
    """configs/config.yaml's choice of levels and attention for a side of ``side`` pixels."""
    mult = "[1,2]" if side <= 16 else "[1,2,2]" if side <= 32 else "[1,2,2,2]" if side <= 64 else "[1,1,2,2,4]"
    attention = "[1]" if side <= 16 else "[2]"
    return [f"model.unet.channel_mult={mult}", f"model.unet.attention_levels={attention}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="the U-Net's model.unet.channels (cpu preset: 16)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    from _baked import import_baked_package

    import_baked_package()
    from diffusion_lab.codecs import TrainedAutoencoder
    from diffusion_lab.commands.bench import Bench
    from diffusion_lab.config import load_config
    from diffusion_lab.models.autoencoder import Autoencoder
    from diffusion_lab.module import DiffusionModule
    from diffusion_lab.runs import new_model
    from diffusion_lab.speed import seconds_per_call

    device = torch.device(args.device)
    precision = "32-true" if device.type == "cpu" else "bf16-mixed"
    autoencoders = {"pixel": None, "latent f=4": (16, 32, 64), "latent f=8": (16, 32, 64, 64)}
    rows = []
    for size in map(int, args.sizes.split(",")):
        pixel_speed = None
        for kind, widths in autoencoders.items():
            torch.manual_seed(0)
            codec = TrainedAutoencoder(Autoencoder(3, 4, widths)) if widths else None
            side = size // (codec.factor if codec else 1)
            cfg = load_config(["preset=cpu", "model.conditional=false", "data.clusters=0", f"data.image_size={size}",
                               "data.channels=3", f"model.unet.channels={args.width}", *unet_for(side)])
            model = new_model(cfg, (3, size, size), codec=codec)
            bench = Bench(DiffusionModule(model).to(device), device, precision)
            speed = bench.training_speed(args.batch)
            pixel_speed = pixel_speed or speed
            row = {"size": size, "kind": kind, "network_sees": list(model.data_shape), "batch": args.batch,
                   "params": sum(p.numel() for p in model.denoiser.parameters()), "train_images_per_s": round(speed, 1),
                   "vs_pixel": round(speed / pixel_speed, 2), "device": str(device), "threads": torch.get_num_threads()}
            if codec is not None:
                codec.to(device)
                images = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
                latents = torch.randn(args.batch, *model.data_shape, device=device)
                for what, call in (("encode", lambda c=codec, x=images: c.encode(x)),
                                   ("decode", lambda c=codec, z=latents: c.decode(z))):
                    row[f"{what}_images_per_s"] = round(args.batch / seconds_per_call(call, device, 1, 3), 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
