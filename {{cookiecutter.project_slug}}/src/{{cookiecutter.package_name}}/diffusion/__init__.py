"""The diffusion method in pure torch: read these files as the course notes.

One convention everywhere, the sigma form of Karras et al. 2022 ("EDM"):

    x = x0 + sigma * eps,    eps ~ N(0, I),    sigma from 0 (data) to sigma_max (noise).

A variance-preserving schedule is the same process scaled, alpha_bar = 1 / (1 + sigma^2); a
flow x_t = (1 - t) x0 + t eps is x / (1 + sigma) with t = sigma / (1 + sigma). Everything a
sampler needs from a model is a denoiser ``D(x, sigma) -> x0_hat``, an estimate of the clean data.

    schedules.py          noise levels: training distributions and sampling sequences
    parameterizations.py  eps, x0, v, EDM and flow targets; NetworkDenoiser makes a network a denoiser
    samplers.py           DDIM/Euler/DDPM, Heun (EDM), the course's generalised sampler, DPM-Solver++(2M),
                          multistep consistency sampling; SAMPLERS, the one table of their facts
    guidance.py           classifier-free guidance: the pattern of every denoiser wrapper
    generate.py           generate(): the one way to draw samples
    distillation.py       few-step students: reflow's paired noise, consistency distillation and tuning

Nothing here imports Lightning, the configuration or the rest of the package.
"""
