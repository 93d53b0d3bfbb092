"""Training and sampling throughput on one GPU: our default U-Net in the h100 preset against
diffusers' UNet2DModel (its DDPM CIFAR-10 configuration) and smalldiffusion's
Unet(128, (1, 2, 2, 2)), in one run on one device (DESIGN.md section 9).

1. Train step (bf16 autocast, fused AdamW, data already on the GPU), the same bare step for
   every network (DDPM noising, epsilon MSE): images/s, GFLOP per image (counted by torch),
   MFU against the measured bf16 matmul peak, peak memory; eager and compiled, and the peers
   also compiled with channels_last; 32x32 and 64x64, batch 128 and 512.
2. Where our compiled step spends its time (issue 34): torch's profiler over ten steps, the
   operator table kept as OUT/profile_ours_<size>_<batch>.txt, the time per kind of kernel
   (convolution, normalisation, attention, optimizer, ...) and the device's idle share.
3. Our full Lightning loop (data, EMA, logging, checks) against our bare step, both as the
   `bench` command measures them, on random 32x32 images.
4. DDIM, 50 NFE, batch 512, on the same diffusers network: diffusers' own DDIMScheduler loop
   (float32, and with the network in bf16) against our `ddim` sampler through a sigma-form
   wrapper (bf16 autocast; eager and compiled), with the largest difference between the two
   loops' samples from the same noise in float32 as a check that they compute the same thing.

Each figure is appended to OUT/gpu_train.jsonl as soon as it is measured (a run cut short
keeps what it had) and the tables are printed at the end, ready for RESULTS.md.

    python benchmarks/gpu_train.py --out DIR [--sizes 32 64] [--batches 128 512] [--parts train profile loop sampling]
    python benchmarks/gpu_train.py --smoke        # every code path on the CPU, tiny sizes

Needs a baked project importable as diffusion_lab (benchmarks/_baked.py bakes one when
cookiecutter is installed; benchmarks/gpu_train.sh prepares everything for a machine without
network), diffusers==0.42.1 and smalldiffusion==0.5.0 (for the benchmark only).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def import_project(smoke: bool) -> Path:
    """The baked project's folder, its package importable. ``gpu/diffusion-lab`` beside the
    repository (prepared by gpu_train.sh) when there, else a fresh bake."""
    prepared = HERE.parent / "gpu" / "diffusion-lab"
    if prepared.is_dir():
        sys.path.insert(0, str(prepared / "src"))
        return prepared
    sys.path.insert(0, str(HERE))
    from _baked import import_baked_package
    return import_baked_package(dataset="cifar10", hardware="h100")


# -- the networks ---------------------------------------------------------------------------------
def our_unet(size: int, smoke: bool):
    """Our default U-Net for this image size in the h100 preset, as config.yaml gives it."""
    from diffusion_lab.config import load_config
    from diffusion_lab.models import build_model

    overrides = ["preset=h100", f"data.image_size={size}", "data.channels=3"]
    if size > 32:          # config.yaml's rule for larger images (the bake for 64 px writes these)
        overrides += ["model.unet.channel_mult=[1,2,2,2]", "model.unet.attention_levels=[2]"]
    if smoke:
        overrides += ["model.unet.channels=32"]
    cfg = load_config(overrides, PROJECT / "configs")
    net = build_model(cfg, (3, size, size), None)
    return net, lambda x, t: net(x, (t.float() + 1).log() / 4)


def diffusers_unet(size: int, smoke: bool):
    from diffusers import UNet2DModel

    widths = (32, 64, 64, 64) if smoke else (128, 256, 256, 256)     # google/ddpm-cifar10-32
    net = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=widths, layers_per_block=2,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                      downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_num_groups=32 if not smoke else 16)
    return net, lambda x, t: net(x, t).sample


def smalldiffusion_unet(size: int, smoke: bool):
    from smalldiffusion import Unet

    net = Unet(size, 3, 3, ch=32 if smoke else 128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,))
    return net, lambda x, t: net(x, t.float())


NETWORKS = {"ours": our_unet, "diffusers": diffusers_unet, "smalldiffusion": smalldiffusion_unet}


# -- measuring ------------------------------------------------------------------------------------
def record(out: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    with open(out / "gpu_train.jsonl", "a") as file:
        file.write(json.dumps(row) + "\n")


def bare_train_step(forward, optimizer, x0: torch.Tensor, alpha_bar: torch.Tensor, device) -> None:
    """DDPM noising and the epsilon MSE, bf16 autocast, one fused AdamW step: the same for all."""
    t = torch.randint(0, len(alpha_bar), (len(x0),), device=device)
    noise = torch.randn_like(x0)
    a = alpha_bar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.autocast(device.type, dtype=torch.bfloat16):
        prediction = forward(x_t, t)
    F.mse_loss(prediction.float(), noise).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def prepared_step(name: str, size: int, batch: int, mode: str, device, smoke: bool):
    """The bare training step of network ``name`` on random images, set up as ``mode`` says
    (eager or compiled, channels_last for ours as the h100 preset sets it, or when asked): the
    step, the network, whether it is channels_last, and torch's FLOP count of one image's step."""
    from diffusion_lab.speed import flops_of

    net, forward = NETWORKS[name](size, smoke)
    net = net.to(device)
    x0 = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, device=device), 0)
    x, t = x0[:2], torch.randint(0, 1000, (2,), device=device)
    step_flops = flops_of(lambda: forward(x, t).float().square().mean().backward()) / 2
    net.zero_grad(set_to_none=True)
    channels_last = mode.endswith("channels_last") or name == "ours"        # ours: as the h100 preset sets
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)
    if mode.startswith("compiled"):
        net.compile()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    return (lambda: bare_train_step(forward, optimizer, x0, alpha_bar, device)), net, channels_last, step_flops


def train_throughput(name: str, size: int, batch: int, mode: str, device, peak: float, smoke: bool) -> dict:
    from diffusion_lab.speed import seconds_per_call

    step, net, channels_last, step_flops = prepared_step(name, size, batch, mode, device, smoke)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    seconds = seconds_per_call(step, device, warmup=2 if smoke else (15 if mode.startswith("compiled") else 5),
                               repeats=2 if smoke else 30)
    images_per_second = batch / seconds
    return {"part": "train", "net": name, "size": size, "batch": batch, "mode": mode, "channels_last": channels_last,
            "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
            "gflop_per_image": round(step_flops / 1e9, 2), "images_per_s": round(images_per_second, 1),
            "mfu": round(images_per_second * step_flops / peak, 4),
            "peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
            "seconds_with_warmup": round(time.perf_counter() - start, 1)}


# Kernels (or, on the CPU, operators) by what they do, matched on their names, first match wins.
CATEGORIES = (("attention", ("flash", "attention", "sdpa", "fmha")),
              ("convolution", ("conv", "cudnn", "implicit", "xmma", "winograd", "dgrad", "wgrad")),
              ("normalisation", ("group_norm", "layer_norm", "batch_norm", "_norm")),
              ("optimizer", ("adam", "multi_tensor", "foreach")),
              ("matmul", ("gemm", "cutlass", "matmul", "addmm", "aten::mm", "aten::bmm")),
              ("copies", ("memcpy", "memset", "copy", "contiguous")),
              ("other", ("",)))


def category(name: str) -> str:
    name = name.lower()
    return next(kind for kind, parts in CATEGORIES if any(part in name for part in parts))


def profile_step(size: int, batch: int, device, out: Path, smoke: bool) -> dict:
    """Where our compiled training step (h100 preset) spends its time: torch's profiler over a
    few steps after warm-up. The operator table, by each one's own device time (CPU time on the
    CPU), is kept as OUT/profile_ours_<size>_<batch>.txt; returned: the time per step by kind of
    kernel (``CATEGORIES``), and the share of the step in which the device does nothing (host
    gaps: launches, Python, synchronisation), from the step's wall time without the profiler."""
    from diffusion_lab.devices import synchronize
    from diffusion_lab.speed import seconds_per_call
    from torch.profiler import ProfilerActivity, profile

    step, *_ = prepared_step("ours", size, batch, "compiled", device, smoke)
    steps = 2 if smoke else 10
    wall = seconds_per_call(step, device, warmup=2 if smoke else 15, repeats=steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    events = profiler.key_averages()
    own = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=own, row_limit=60, max_name_column_width=90)
    name = f"profile_ours_{size}_{batch}.txt"
    (out / name).write_text(f"{device}, {steps} compiled training steps of batch {batch} at {size}x{size}\n{table}\n")
    by_kind: dict[str, float] = {}
    for event in events:
        by_kind[category(event.key)] = by_kind.get(category(event.key), 0.0) + getattr(event, own) / 1e3 / steps
    busy = sum(by_kind.values())
    return {"part": "profile", "net": "ours", "size": size, "batch": batch, "table": name,
            "step_ms": round(1e3 * wall, 2), "busy_ms": round(busy, 2),
            "idle_share": round(max(0.0, 1 - busy / (1e3 * wall)), 3) if device.type == "cuda" else None,
            "ms_by_kind": {kind: round(ms, 2) for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1])}}


def loop_against_bare(batch: int, device, smoke: bool) -> dict:
    """Our `bench` command's two training figures, on a file of random 32x32 images."""
    from diffusion_lab.commands.bench import Bench, full_loop_speed
    from diffusion_lab.config import load_config
    from diffusion_lab.module import DiffusionModule
    from diffusion_lab.runs import new_model

    data = Path(tempfile.mkdtemp()) / "images.pt"
    torch.save(torch.randint(0, 256, (256 if smoke else 20_000, 3, 32, 32), dtype=torch.uint8), data)
    overrides = [f"data.root={data}", "data.name=tensor_file", "data.image_size=32", "data.channels=3",
                 "data.val_fraction=0", "model.conditional=false", "data.clusters=0", "logger=csv",
                 f"data.batch_size={batch}"]
    overrides += ["preset=cpu", "model.unet.channels=32"] if smoke else ["preset=h100"]
    cfg = load_config(overrides, PROJECT / "configs")
    module = DiffusionModule(new_model(cfg, [3, 32, 32])).to(device)
    bench = Bench(module, device, "32-true" if smoke else "bf16-mixed")
    module.configure_model()
    bare = bench.training_speed(batch)
    loop = full_loop_speed(cfg, overrides)
    return {"part": "loop", "net": "ours", "size": 32, "batch": batch, "bare_images_per_s": round(bare, 1),
            "loop_images_per_s": round(loop, 1), "loop_share_of_bare": round(loop / bare, 3)}


class SigmaFormDDPM:
    """A DDPM epsilon network as a denoiser D(x, sigma) of the sigma form (x = x0 + sigma eps):
    alpha_bar = 1 / (1 + sigma^2), the network sees x sqrt(alpha_bar) at the training step whose
    sigma is nearest in log sigma (exact at the training steps), and D = x - sigma eps."""

    def __init__(self, forward, alpha_bar: torch.Tensor):
        self.forward = forward
        self.log_sigmas = (((1 - alpha_bar) / alpha_bar).sqrt()).log().float()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = (self.log_sigmas[None] - sigma.float().log()[:, None]).abs().argmin(1)
        scale = (1 + sigma.float() ** 2).rsqrt().view(-1, 1, 1, 1)
        eps = self.forward(x * scale, t).float()
        return x - sigma.float().view(-1, 1, 1, 1) * eps


def sampling_throughput(batch: int, device, peak_bf16: float, peak_fp32: float, smoke: bool, out: Path) -> None:
    from diffusers import DDIMScheduler
    from diffusion_lab.diffusion.samplers import ddim
    from diffusion_lab.speed import flops_of, seconds_per_call

    steps = 5 if smoke else 50
    net, forward = diffusers_unet(32, smoke)
    net = net.to(device).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False)
    scheduler.set_timesteps(steps)
    alpha_bar = scheduler.alphas_cumprod.to(torch.float64)
    sigmas = torch.cat([((1 - alpha_bar) / alpha_bar).sqrt()[scheduler.timesteps], torch.zeros(1, dtype=torch.float64)])
    noise = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        evaluation_flops = flops_of(lambda: forward(noise[:2], scheduler.timesteps[:2].to(device))) / 2

    def diffusers_loop(dtype):
        x = noise.to(dtype)
        for t in scheduler.timesteps:
            x = scheduler.step(forward(x, t.to(device)), t, x).prev_sample
        return x.float()

    def our_loop(autocast: bool):
        denoiser = SigmaFormDDPM(forward, scheduler.alphas_cumprod.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return ddim(denoiser, sigmas, noise * math.sqrt(1 + sigmas[0].item() ** 2)).x   # x_T = noise, as diffusers

    def report(loop: str, precision: str, fn, peak):
        seconds = seconds_per_call(fn, device, warmup=1, repeats=1 if smoke else 3)
        images_per_second = batch / seconds
        record(out, {"part": "sampling", "loop": loop, "precision": precision, "batch": batch, "nfe": steps,
                     "images_per_s": round(images_per_second, 1),
                     "mfu": round(images_per_second * steps * evaluation_flops / peak, 4)})

    with torch.no_grad():
        difference = (diffusers_loop(torch.float32) - our_loop(False)).abs().max().item()
        record(out, {"part": "sampling-check", "max_abs_difference_fp32": difference, "nfe": steps})
        report("diffusers DDIMScheduler", "float32", lambda: diffusers_loop(torch.float32), peak_fp32)
        net.to(torch.bfloat16)
        report("diffusers DDIMScheduler", "bf16 weights", lambda: diffusers_loop(torch.bfloat16), peak_bf16)
        net.to(torch.float32).to(memory_format=torch.channels_last)
        report("ours ddim", "bf16 autocast, eager", lambda: our_loop(True), peak_bf16)
        net.compile()
        report("ours ddim", "bf16 autocast, compiled", lambda: our_loop(True), peak_bf16)


def tables(out: Path) -> str:
    rows = [json.loads(line) for line in open(out / "gpu_train.jsonl")]
    lines = ["| net | size | batch | mode | params | GFLOP/img | img/s | MFU | peak GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("part") == "train":
            lines.append(f"| {r['net']} | {r['size']} | {r['batch']} | {r['mode']} | {r['params_M']}M | {r['gflop_per_image']} "
                         f"| {r['images_per_s']:,.0f} | {100 * r['mfu']:.0f}% | {r['peak_memory_GiB']} |")
        elif r.get("part") == "loop":
            lines.append(f"\nfull loop at batch {r['batch']}: {r['loop_images_per_s']:,.0f} img/s = "
                         f"{100 * r['loop_share_of_bare']:.0f}% of the bare step ({r['bare_images_per_s']:,.0f})")
        elif r.get("part") == "sampling":
            lines.append(f"\nsampling, {r['loop']} ({r['precision']}), {r['nfe']} NFE, batch {r['batch']}: "
                         f"{r['images_per_s']:,.1f} img/s, MFU {100 * r['mfu']:.0f}%")
        elif r.get("part") == "profile":
            kinds = ", ".join(f"{kind} {ms:.2f}" for kind, ms in r["ms_by_kind"].items())
            idle = f", device idle {100 * r['idle_share']:.0f}% of it" if r["idle_share"] is not None else ""
            lines.append(f"\nprofile, ours compiled, {r['size']} px, batch {r['batch']}: step {r['step_ms']} ms{idle}; "
                         f"ms per step by kind: {kinds} ({r['table']})")
        elif r.get("part") == "sampling-check":
            lines.append(f"\nour DDIM vs diffusers' DDIM, same noise, float32: max |difference| {r['max_abs_difference_fp32']:.2e}")
        elif r.get("part") == "error":
            lines.append(f"\nFAILED: {r['what']}: {r['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-train-results"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--nets", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled", "compiled+channels_last"])
    parser.add_argument("--parts", nargs="+", default=["train", "profile", "loop", "sampling"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks that every path runs")
    args = parser.parse_args()
    global PROJECT
    PROJECT = import_project(args.smoke)
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        args.sizes, args.batches, args.modes = [16], [4], ["eager"]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    from diffusion_lab.speed import matmul_peak

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_bf16, peak_fp32 = matmul_peak(device, torch.bfloat16), matmul_peak(device, torch.float32)
    record(args.out, {"part": "device", "device": name, "torch": torch.__version__,
                      "bf16_matmul_TFLOPs": round(peak_bf16 / 1e12, 1), "tf32_matmul_TFLOPs": round(peak_fp32 / 1e12, 1)})

    def attempt(what: str, fn) -> None:
        try:
            fn()
        except Exception as error:        # one failure (an OOM, a compile error) must not stop the rest
            traceback.print_exc()
            record(args.out, {"part": "error", "what": what, "error": f"{type(error).__name__}: {str(error)[:300]}"})
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if "train" in args.parts:
        for size in args.sizes:
            for batch in args.batches:
                for net in args.nets:
                    modes = [m for m in args.modes if not (net == "ours" and m == "compiled+channels_last")]
                    for mode in modes:
                        attempt(f"train {net} {size} {batch} {mode}", lambda: record(
                            args.out, train_throughput(net, size, batch, mode, device, peak_bf16, args.smoke)))
    if "profile" in args.parts:
        for size in args.sizes:
            attempt(f"profile {size}", lambda: record(args.out, profile_step(size, args.batches[0], device, args.out,
                                                                             args.smoke)))
    if "loop" in args.parts:
        for batch in args.batches:
            attempt(f"loop {batch}", lambda: record(args.out, loop_against_bare(batch, device, args.smoke)))
    if "sampling" in args.parts:
        attempt("sampling", lambda: sampling_throughput(8 if args.smoke else 512, device, peak_bf16, peak_fp32,
                                                        args.smoke, args.out))
    print("\n" + tables(args.out))


if __name__ == "__main__":
    main()
