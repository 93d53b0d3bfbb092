"""The memory of a LoRA training step on a Stable Diffusion 1.x-sized pipeline at 512 pixels:
the project's estimate before training (``speed.training_memory``, the ``memory`` line that
``train`` prints at start-up and checks against the GPU) against the peak that the step
allocates on a GPU, in fp16 with the frozen UNet in half precision as the colab-t4 preset
trains, for several batch sizes, with and without gradient checkpointing (issue 33).

The pipeline has Stable Diffusion 1.5's UNet and VAE configurations with random weights (memory
does not depend on the values, and nothing is downloaded) and a one-layer text encoder of SD's
width (the text encoder never reaches the GPU). It is saved to a scratch folder and adapted
through the project's own ``lora.base`` path; the step is ``bench``'s bare training step.

    python benchmarks/lora_memory.py                  # on a CUDA GPU: estimate and measured peak
    python benchmarks/lora_memory.py --estimate-only  # anywhere: the estimates alone, in seconds
    python benchmarks/lora_memory.py --smoke          # every code path on the CPU, tiny sizes

Needs a baked project importable as diffusion_lab (benchmarks/_baked.py bakes one), diffusers,
transformers and peft.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GIB = 2**30


def import_project() -> None:
    prepared = HERE.parent / "gpu" / "diffusion-lab"
    if prepared.is_dir():
        sys.path.insert(0, str(prepared / "src"))
        return
    sys.path.insert(0, str(HERE))
    from _baked import import_baked_package
    import_baked_package()


def sd_pipeline(folder: Path, smoke: bool) -> Path:
    """Stable Diffusion 1.5's UNet and VAE (their diffusers configurations), random weights, a
    one-layer CLIP text encoder of width 768 and a character-level tokenizer, saved to ``folder``."""
    import diffusers
    import transformers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    width = 32 if smoke else 768
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    if smoke:
        unet = diffusers.UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                              cross_attention_dim=width, norm_num_groups=8)
        vae = diffusers.AutoencoderKL(block_out_channels=(8, 16, 16, 16), latent_channels=4, norm_num_groups=4,
                                      layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4)
    else:                      # diffusers' defaults are Stable Diffusion 1.x's, but for the text width
        unet = diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=width)
        vae = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                                      layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipeline = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def adapted_module(base: Path, size: int, checkpointing: bool):
    """The project's module for LoRA (rank 4, the attention projections) on ``base`` at ``size``
    pixels, its frozen weights in fp16, as ``train experiment=lora`` builds it."""
    from diffusion_lab.config import load_config
    from diffusion_lab.module import DiffusionModule
    from diffusion_lab.runs import new_model, with_base

    args = ["experiment=lora", f"lora.base={base}", "data.name=image_folder", "data.prompt=a photo of sks dog",
            f"data.image_size={size}", "data.channels=3", "data.clusters=0", "data.labels_from_subfolders=false",
            f"trainer.gradient_checkpointing={str(checkpointing).lower()}"]
    cfg = with_base(load_config(args), args)
    module = DiffusionModule(new_model(cfg, (3, size, size), ["a photo of sks dog"]))
    module.frozen_in_half("16-mixed")
    module.configure_model()
    return module


def measure(base: Path, size: int, batches: list[int], estimate_only: bool, out: Path | None) -> list[dict]:
    from diffusion_lab.commands.bench import Bench
    from diffusion_lab.speed import training_memory

    device = torch.device("cuda" if torch.cuda.is_available() and not estimate_only else "cpu")
    rows = []
    for checkpointing in (False, True):
        module = adapted_module(base, size, checkpointing)
        model = module.model
        bench = Bench(module.to(device), device, "16-mixed" if device.type == "cuda" else "32-true")
        for batch in batches:
            estimate = training_memory(module.denoiser, model.data_shape, batch, "16-mixed", model.condition,
                                       frozen_in_half=True)
            row = {"size": size, "batch": batch, "gradient_checkpointing": checkpointing,
                   "estimate_gib": round(estimate.total / GIB, 3), "weights_gib": round(estimate.weights / GIB, 3),
                   "activations_gib": round(estimate.activations / GIB, 3), "measured_gib": None}
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                try:
                    for _ in range(2):                  # the optimiser's moments exist from the first step on
                        bench.one_step(batch)
                    torch.cuda.synchronize(device)
                    row["measured_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
                except torch.OutOfMemoryError:
                    row["measured_gib"] = "out of memory"
                row["device"] = torch.cuda.get_device_name(device)
            elif not estimate_only:
                bench.one_step(batch)                   # the code path, on the CPU
            rows.append(row)
            print(json.dumps(row), flush=True)
            if out is not None:
                with (out / "lora_memory.jsonl").open("a") as file:
                    file.write(json.dumps(row) + "\n")
        del bench, module
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--estimate-only", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    import_project()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        base = sd_pipeline(Path(scratch) / "sd15-shaped", args.smoke)
        measure(base, 64 if args.smoke else 512, [1, 2] if args.smoke else args.batches, args.estimate_only,
                args.out)


if __name__ == "__main__":
    main()
