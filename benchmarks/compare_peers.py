"""Our samplers against independent implementations of the same algorithms, on the same
denoiser (the closed-form one of the Gaussian mixture in samplers.py), the same starting
points, the same noise levels and, for ancestral sampling, the same noise draws.

Peers (installed for this comparison only, never by the template):
    pip install --no-deps k-diffusion==0.1.1.post1 torchdiffeq torchsde trampoline
    pip install diffusers==0.42.1
k-diffusion's package __init__ needs many more packages (wandb, clean-fid, ...); only its
sampling.py and utils.py are loaded here, from the installed package.

Run: python benchmarks/compare_peers.py
"""
import importlib.util
import sys
import types
from pathlib import Path

import torch

from samplers import SIGMA_MAX, SIGMA_MIN, mixture_denoiser, sample_data  # bakes the project
from diffusion_lab.diffusion.samplers import ddim, dpmpp_2m, heun  # noqa: E402
from diffusion_lab.diffusion.schedules import karras_sigmas  # noqa: E402


def k_diffusion_sampling():
    """k_diffusion.sampling without running k_diffusion/__init__.py."""
    spec = importlib.util.find_spec("k_diffusion")
    folder = Path(spec.submodule_search_locations[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(folder)]
    sys.modules["k_diffusion"] = package
    for name in ("utils", "sampling"):
        sub = importlib.util.spec_from_file_location(f"k_diffusion.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(sub)
        sys.modules[f"k_diffusion.{name}"] = module
        sub.loader.exec_module(module)
    return sys.modules["k_diffusion.sampling"]


def largest_difference(a, b):
    return (a - b).abs().max().item()


def noise_sampler(x, seed):
    """k-diffusion's noise_sampler(sigma, sigma_next) drawing what our samplers draw, in the same
    order, from a generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, dtype=x.dtype)


def compare_k_diffusion(x, steps=25):
    kd = k_diffusion_sampling()
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    model = lambda x, sigma: mixture_denoiser(x, sigma)  # noqa: E731  (k-diffusion calls model(x, sigma))
    rows = [
        ("euler (ddim eta=0)", ddim(mixture_denoiser, sigmas, x).x, kd.sample_euler(model, x, sigmas, disable=True)),
        ("heun", heun(mixture_denoiser, sigmas, x).x, kd.sample_heun(model, x, sigmas, disable=True)),
        ("dpm-solver++(2m)", dpmpp_2m(mixture_denoiser, sigmas, x).x, kd.sample_dpmpp_2m(model, x, sigmas, disable=True)),
    ]
    ours = ddim(mixture_denoiser, sigmas, x, eta=1.0, generator=torch.Generator().manual_seed(7)).x
    theirs = kd.sample_euler_ancestral(model, x, sigmas, disable=True, eta=1.0, noise_sampler=noise_sampler(x, 7))
    rows.append(("ancestral (ddim eta=1 / euler_ancestral)", ours, theirs))
    for eta, name in ((1.0, "dpmpp_2m_sde"), (0.5, "dpmpp_2m with eta=0.5")):
        ours = dpmpp_2m(mixture_denoiser, sigmas, x, eta=eta, generator=torch.Generator().manual_seed(7)).x
        theirs = kd.sample_dpmpp_2m_sde(model, x, sigmas, disable=True, eta=eta, solver_type="midpoint",
                                        noise_sampler=noise_sampler(x, 7))
        rows.append((f"dpm-solver++(2m) sde, eta={eta:g} ({name})", ours, theirs))
    return [(f"k-diffusion {name}", largest_difference(a, b), a.abs().max().item()) for name, a, b in rows]


def run_diffusers(scheduler, x_start, steps):
    """Drive a diffusers scheduler in its own VP variables with the eps of our denoiser.
    Its alphas_cumprod are float32; they are made float64 like everything else here."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.set_timesteps(steps)
    alphas = scheduler.alphas_cumprod.double()
    sigma_of = lambda t: ((1 - alphas[t]) / alphas[t]).sqrt()  # noqa: E731
    sigmas = torch.cat([torch.stack([sigma_of(t) for t in scheduler.timesteps]), torch.zeros(1, dtype=torch.float64)])
    x_vp = x_start / torch.sqrt(1 + sigmas[0] ** 2)
    for t in scheduler.timesteps:
        sigma = sigma_of(t)
        x = x_vp / alphas[t].sqrt()
        eps = (x - mixture_denoiser(x, sigma.expand(len(x)))) / sigma
        x_vp = scheduler.step(eps, t, x_vp).prev_sample
    return x_vp, sigmas


def compare_diffusers(x_unit, steps=20):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  timestep_spacing="trailing")
    rows = []
    ddim_scheduler = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    theirs, sigmas = run_diffusers(ddim_scheduler, x_unit * 157.4, steps)
    x_start = x_unit * 157.4
    rows.append(("diffusers DDIMScheduler (trailing, eta=0)", ddim(mixture_denoiser, sigmas, x_start).x, theirs))
    dpm_scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                final_sigmas_type="zero")
    theirs, sigmas = run_diffusers(dpm_scheduler, x_start, steps)
    rows.append(("diffusers DPMSolverMultistepScheduler (2M, trailing)", dpmpp_2m(mixture_denoiser, sigmas, x_start).x, theirs))
    return [(name, largest_difference(a, b), a.abs().max().item()) for name, a, b in rows]


def main():
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = sample_data(4096, g) + SIGMA_MAX * torch.randn(4096, 2, generator=g, dtype=torch.float64)
    unit = torch.randn(4096, 2, generator=g, dtype=torch.float64)
    rows = compare_k_diffusion(x) + compare_diffusers(unit)
    print("| peer sampler | largest difference | largest value |\n|---|---|---|")
    for name, difference, scale in rows:
        print(f"| {name} | {difference:.1e} | {scale:.2f} |")


if __name__ == "__main__":
    main()
