"""Sampler accuracy against NFE on a 2D Gaussian mixture, whose ideal denoiser is closed form.

For x0 ~ sum_k pi_k N(mu_k, s_k^2 I) and x = x0 + sigma eps,

    D(x, sigma) = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
    r_k(x) proportional to pi_k N(x; mu_k, (s_k^2 + sigma^2) I),

so every error below is the sampler's own: no network is involved. Starting points are drawn
from the exact marginal at sigma_max (a data point plus sigma_max noise).

Two errors per sampler and budget of network evaluations (NFE):
  * SW2: sliced Wasserstein-2 distance between 20,000 samples and 20,000 fresh data points
    (the floor, two independent data sets, is printed first);
  * ODE error (deterministic samplers): RMS distance to the probability-flow ODE solution from
    the same starting points (Heun with 2,000 steps).

Run: python benchmarks/samplers.py [--out benchmarks]   (CPU, about a minute)
"""
import argparse
import math
from functools import partial
from pathlib import Path

import torch

from _baked import import_baked_package

import_baked_package()
from diffusion_lab.diffusion.samplers import ddim, dpmpp_2m, generalized, heun  # noqa: E402
from diffusion_lab.diffusion.schedules import karras_sigmas  # noqa: E402

WEIGHTS = torch.tensor([0.3, 0.2, 0.2, 0.15, 0.15], dtype=torch.float64)
MEANS = torch.tensor([[0.0, 0.0], [2.0, 2.0], [-2.0, 1.5], [1.5, -2.0], [-1.5, -1.5]], dtype=torch.float64)
STDS = torch.tensor([0.5, 0.2, 0.3, 0.1, 0.4], dtype=torch.float64)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def mixture_denoiser(x, sigma):
    var = STDS**2 + sigma.double()[:, None] ** 2                          # (B, K)
    diff = x.double()[:, None, :] - MEANS                                 # (B, K, 2)
    log_r = WEIGHTS.log() - diff.square().sum(-1) / (2 * var) - var.log()  # 2D: log det = 2 log(std)
    r = torch.softmax(log_r, dim=1)
    posterior = MEANS + (STDS**2 / var)[..., None] * diff
    return (r[..., None] * posterior).sum(1)


def sample_data(n, generator):
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    return MEANS[k] + STDS[k, None] * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def sliced_w2(a, b, projections=256, seed=0):
    directions = torch.randn(projections, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    pa, pb = (a @ directions.T).sort(0).values, (b @ directions.T).sort(0).values
    return (pa - pb).square().mean().sqrt().item()


SAMPLERS = {                     # name: (function, evaluations per step, last step saves one, deterministic)
    "euler (= ddim eta 0)": (ddim, 1, False, True),
    "ddpm (= ddim eta 1)": (partial(ddim, eta=1.0), 1, False, False),
    "heun": (heun, 2, True, True),
    "heun churn 30": (partial(heun, churn=30.0), 2, True, False),
    "dpm-solver++(2m)": (dpmpp_2m, 1, False, True),
    "course gamma=2 (accelerated)": (partial(generalized, gamma=2.0), 1, False, True),
    "course gamma=1+h/(2h') (2nd order)": (partial(generalized, second_order=True), 1, False, True),
}
BUDGETS = [5, 9, 15, 25, 49, 99]


def steps_for(budget, per_step, saves_one):
    return (budget + 1) // 2 if saves_one else budget // per_step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x_start = sample_data(args.n, g) + SIGMA_MAX * torch.randn(args.n, 2, generator=g, dtype=torch.float64)
    data = sample_data(args.n, torch.Generator().manual_seed(1))
    floor = sliced_w2(sample_data(args.n, torch.Generator().manual_seed(2)), data)
    reference = heun(mixture_denoiser, karras_sigmas(2000, SIGMA_MIN, SIGMA_MAX), x_start).x

    rows, curves = [], {}
    for name, (sampler, per_step, saves_one, deterministic) in SAMPLERS.items():
        for budget in BUDGETS:
            steps = steps_for(budget, per_step, saves_one)
            result = sampler(mixture_denoiser, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), x_start,
                             generator=torch.Generator().manual_seed(3))
            sw = sliced_w2(result.x, data)
            ode = (result.x - reference).square().sum(1).mean().sqrt().item() if deterministic else float("nan")
            rows.append((name, steps, result.nfe, sw, ode))
            curves.setdefault(name, []).append((result.nfe, sw))

    lines = [f"SW2 floor (two independent data sets of {args.n}): {floor:.4f}", "",
             "| sampler | steps | NFE | SW2 to data | ODE error |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {s} | {nfe} | {sw:.4f} | {'-' if math.isnan(o) else f'{o:.2e}'} |" for n, s, nfe, sw, o in rows]
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    (out / "samplers.md").write_text(table + "\n")
    plot(curves, floor, out / "samplers.png")
    print(f"\nwritten: {out / 'samplers.md'}, {out / 'samplers.png'}")


def plot(curves, floor, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        ax.plot(*zip(*points), marker="o", label=name)
    ax.axhline(floor, color="0.5", ls="--", label="sampling floor")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="sliced W2 to data",
           title="Samplers on a 2D Gaussian mixture (ideal denoiser, Karras rho=7)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
