"""The diffusion core against known answers: Gaussian data has a closed-form ideal denoiser
and a closed-form probability-flow ODE solution, and the parameterizations have their
papers' definitions."""
import math
from functools import partial

import pytest
import torch

from {{ cookiecutter.package_name }}.diffusion.generate import generate
from {{ cookiecutter.package_name }}.diffusion.guidance import GuidedDenoiser
from {{ cookiecutter.package_name }}.diffusion.parameterizations import (
    NetworkDenoiser,
    build_parameterization,
    x0_loss_weight,
)
from {{ cookiecutter.package_name }}.diffusion.samplers import (
    Trajectory,
    consistency,
    ddim,
    dpmpp_2m,
    generalized,
    heun,
    standard_normal,
)
from {{ cookiecutter.package_name }}.diffusion.schedules import (
    LogNormalNoise,
    UniformTNoise,
    cosine_sigmas,
    ddpm_linear_sigmas,
    karras_sigmas,
    loglinear_sigmas,
    trailing_sigmas,
    uniform_t_sigmas,
)

pytestmark = pytest.mark.once      # known answers that no answer to the template's questions changes

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64)


def gaussian_denoiser(x, sigma):
    """E[x0 | x] for x0 ~ N(MU, STD^2) and x = x0 + sigma eps: MU + STD^2/(STD^2+sigma^2) (x - MU)."""
    s2 = sigma.double()[:, None] ** 2
    return (MU + STD**2 / (STD**2 + s2) * (x.double() - MU)).to(x.dtype)


def exact_ode_solution(x_start, sigma_start, sigma_end):
    """The probability-flow ODE dx/dsigma = (x - D)/sigma for Gaussian data keeps
    (x - MU) / sqrt(STD^2 + sigma^2) constant."""
    return MU + (x_start - MU) * torch.sqrt((STD**2 + sigma_end**2) / (STD**2 + sigma_start**2))


@pytest.mark.parametrize("sampler, options, steps", [
    (ddim, {"eta": 0.0}, 500), (ddim, {"eta": 1.0}, 500), (heun, {}, 100), (heun, {"churn": 10.0}, 100),
    (generalized, {"gamma": 2.0}, 200), (generalized, {"second_order": True}, 100),
    (generalized, {"mu": 0.5}, 500), (dpmpp_2m, {}, 100), (dpmpp_2m, {"eta": 1.0}, 100),
    (dpmpp_2m, {"eta": 0.5}, 100)])
def test_samplers_reproduce_gaussian_data(sampler, options, steps):
    """First-order samplers need more steps: at 40 Karras steps Euler's std is 6% low and
    ancestral sampling's 13% low (its posterior ignores the uncertainty of x0_hat)."""
    n = 40_000
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    generator = torch.Generator().manual_seed(0)
    # start from the exact marginal at sigma_max, N(MU, STD^2 + sigma_max^2), so that only the
    # sampler (not the usual x_T ~ N(0, sigma_max^2) approximation) is tested
    x = MU + (STD**2 + sigmas[0] ** 2).sqrt() * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    result = sampler(gaussian_denoiser, sigmas, x, generator=generator, **options)
    tolerance = 4 * STD / math.sqrt(n)                    # 4 standard errors of the mean
    assert torch.all((result.x.mean(0) - MU).abs() < tolerance)
    assert torch.allclose(result.x.std(0), STD, rtol=0.02)


def alternating_sigmas(steps: int) -> torch.Tensor:
    """From 10 down to 0.1 (no final 0) in steps whose lengths in log(sigma) alternate 1 and 2:
    the ratio of consecutive steps stays 2 or 1/2 however many there are. (A multistep weight
    with its step ratio turned over is still second order even so: its first-order error
    telescopes, the sum of h_(i-1)^2 - h_i^2. The comparisons with diffusers below catch it.)"""
    gaps = torch.tensor([1.0, 2.0], dtype=torch.float64).repeat(steps // 2)
    log_sigmas = torch.cat([torch.zeros(1, dtype=torch.float64), gaps.cumsum(0)]) / gaps.sum()
    return 10 ** (1 - 2 * log_sigmas)


def deterministic_error(sampler, steps):
    sigmas = alternating_sigmas(steps)
    x = sigmas[0] * torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = sampler(gaussian_denoiser, sigmas, x)
    return (result.x - exact_ode_solution(x, sigmas[0], sigmas[-1])).abs().max().item()


@pytest.mark.parametrize("sampler, order", [
    (ddim, 1), (heun, 2), (dpmpp_2m, 2), (partial(generalized, gamma=2.0), 1),
    (partial(generalized, second_order=True), 2)], ids=["euler", "heun", "dpmpp_2m", "gamma2", "gamma_ab2"])
def test_deterministic_samplers_converge_at_their_order(sampler, order):
    """Measured against the exact solution on steps of alternating length; the course's
    gamma = 2 is first order, its variable-step weight 1 + h_i / (2 h_(i-1)) second order."""
    errors = [deterministic_error(sampler, steps) for steps in (64, 128, 256, 512)]
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(slope - order) < 0.1 for slope in slopes), slopes


@pytest.mark.parametrize("sampler, nfe", [(heun, 2 * 10 - 1), (ddim, 10), (dpmpp_2m, 10), (generalized, 10)])
def test_evaluations_are_counted(sampler, nfe):
    sigmas = karras_sigmas(10, 0.002, 80.0)
    assert sampler(gaussian_denoiser, sigmas, torch.zeros(4, 2, dtype=torch.float64)).nfe == nfe


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_denoiser_gets_sigma_in_the_precision_of_x(dtype):
    seen = set()

    def recording_denoiser(x, sigma):
        seen.add(sigma.dtype)
        return gaussian_denoiser(x, sigma)

    heun(recording_denoiser, karras_sigmas(3, 0.002, 80.0), torch.zeros(2, 2, dtype=dtype))
    assert seen == {dtype}


def test_ddim_with_eta_one_is_ddpm_algorithm_2():
    """One step of Ho et al. 2020, Algorithm 2 with sigma_t^2 = beta_tilde, written in their
    VP variables, against our step in the sigma form."""
    sigmas = ddpm_linear_sigmas()
    t = 500
    alpha_bar, alpha_bar_prev = 1 / (1 + sigmas[t] ** 2), 1 / (1 + sigmas[t - 1] ** 2)
    beta = 1 - alpha_bar / alpha_bar_prev
    x = 3 * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = ddim(gaussian_denoiser, sigmas[[t, t - 1]], x, eta=1.0, generator=torch.Generator().manual_seed(9)).x

    x_t = alpha_bar.sqrt() * x                                # the VP state
    x0 = gaussian_denoiser(x, sigmas[t].expand(1000))
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0 \
        + ((1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t   # eq. 7
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    theirs = (mean + variance.sqrt() * z) / alpha_bar_prev.sqrt()          # back to the sigma form
    assert torch.allclose(ours, theirs, atol=1e-9)


def test_ddim_noise_is_capped_at_the_next_noise_level():
    """eta > 1 asks for more noise than sigma_(i+1): the step becomes x0_hat + sigma_(i+1) z."""
    sigmas = torch.tensor([2.0, 1.0], dtype=torch.float64)
    x = torch.zeros(5, 2, dtype=torch.float64)
    out = ddim(gaussian_denoiser, sigmas, x, eta=3.0, generator=torch.Generator().manual_seed(0)).x
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(out, gaussian_denoiser(x, sigmas[:1].expand(5)) + z)


def test_generalized_sampler_special_cases_are_ddim_and_ddpm():
    sigmas = karras_sigmas(12, 0.002, 80.0)
    x = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(generalized(gaussian_denoiser, sigmas, x).x, ddim(gaussian_denoiser, sigmas, x).x, atol=1e-10)
    ancestral = generalized(gaussian_denoiser, sigmas, x, mu=0.5, generator=torch.Generator().manual_seed(4)).x
    ddpm = ddim(gaussian_denoiser, sigmas, x, eta=1.0, generator=torch.Generator().manual_seed(4)).x
    assert torch.allclose(ancestral, ddpm, atol=1e-10)


def test_dpm_solver_first_step_and_last_step_are_first_order():
    """With two steps (the first, and the one to 0) DPM-Solver++(2M) is DDIM, and its SDE form
    (eta = 1) is DDPM's ancestral sampling with the same noise."""
    sigmas = torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64)
    x = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(dpmpp_2m(gaussian_denoiser, sigmas, x).x, ddim(gaussian_denoiser, sigmas, x).x, atol=1e-10)
    sde = dpmpp_2m(gaussian_denoiser, sigmas, x, eta=1.0, generator=torch.Generator().manual_seed(4)).x
    ddpm = ddim(gaussian_denoiser, sigmas, x, eta=1.0, generator=torch.Generator().manual_seed(4)).x
    torch.testing.assert_close(sde, ddpm, rtol=0, atol=1e-10)


@pytest.mark.parametrize("sampler", [ddim, heun, generalized, dpmpp_2m, consistency])
def test_hooks_see_every_step_and_can_change_the_estimate(sampler):
    sigmas = karras_sigmas(6, 0.002, 80.0)
    seen = []

    def pin_first_coordinate(step):
        seen.append((step.i, step.sigma))
        step.x0_hat[:, 0] = 3.0

    x = sigmas[0] * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    trajectory = Trajectory()
    result = sampler(gaussian_denoiser, sigmas, x, hooks=[pin_first_coordinate, trajectory])
    assert seen == list(enumerate(sigmas[:-1].tolist()))
    assert [(step.i, step.sigma) for step in trajectory.steps] == seen            # what the trajectory keeps
    assert torch.allclose(result.x[:, 0], torch.full((8,), 3.0, dtype=torch.float64))


@pytest.mark.parametrize("mu", [1.0, 1.5, -0.1])
def test_the_generalized_sampler_refuses_mu_outside_0_to_1(mu):
    """mu = 1 would divide by zero in sigma' = (sigma_(i+1) / sigma_i^mu)^(1 / (1 - mu))."""
    with pytest.raises(ValueError, match=r"mu must be in \[0, 1\), got"):
        generalized(gaussian_denoiser, karras_sigmas(4, 0.002, 80.0), torch.zeros(2, 2), mu=mu)


def test_discrete_training_levels_come_from_the_table_and_follow_the_generator():
    """Validation fixes its noise with a generator: the same generator state gives the same
    levels, whatever the global random state, and every level is one of the table's."""
    from {{ cookiecutter.package_name }}.diffusion.schedules import DiscreteNoise

    table = ddpm_linear_sigmas()
    noise = DiscreteNoise(table)
    torch.manual_seed(1)
    first = noise(500, torch.device("cpu"), torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    assert torch.equal(noise(500, torch.device("cpu"), torch.Generator().manual_seed(3)), first)
    assert torch.isin(first, table.float()).all() and len(first.unique()) > 300


def test_same_generator_seed_gives_the_same_stochastic_sample():
    sigmas = karras_sigmas(8, 0.002, 80.0)
    x = torch.ones(4, 2, dtype=torch.float64)
    a = ddim(gaussian_denoiser, sigmas, x, eta=1.0, generator=torch.Generator().manual_seed(5)).x
    b = ddim(gaussian_denoiser, sigmas, x, eta=1.0, generator=torch.Generator().manual_seed(5)).x
    c = ddim(gaussian_denoiser, sigmas, x, eta=1.0, generator=torch.Generator().manual_seed(6)).x
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_euler_on_a_flow_model_is_the_euler_step_in_t():
    """Integrate dx_t/dt = v with v = (x_t - x0_hat) / t in the flow's own variables and compare."""
    sigmas = uniform_t_sigmas(20, 1000.0)
    t = sigmas / (1 + sigmas)
    x = sigmas[0] * torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = ddim(gaussian_denoiser, sigmas, x).x
    x_t = x / (1 + sigmas[0])
    for i in range(20):
        x0_hat = gaussian_denoiser(x_t / (1 - t[i]), sigmas[i].expand(16))
        x_t = x_t + (t[i + 1] - t[i]) * (x_t - x0_hat) / t[i]
    assert torch.allclose(ours, x_t, atol=1e-10)


# -- parameterizations, checked against their papers' definitions ----------------------------
def network_input_and_target(objective, x0, eps, sigma, sigma_data=0.5):
    """What the NetworkDenoiser feeds its network and trains it towards."""
    captured = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, c_noise, labels=None):
            captured["input"] = x
            return torch.zeros_like(x)

    denoiser = NetworkDenoiser(Recorder(), build_parameterization(objective, sigma_data), 0.0, math.inf)
    x = x0 + sigma[:, None] * eps
    c_skip, c_out, _ = denoiser.parameterization.scalings(sigma[:, None])
    denoiser(x, sigma)
    return captured["input"], (x0 - c_skip * x) / c_out


@pytest.fixture
def example():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g), torch.rand(64, generator=g) * 10 + 0.01


@pytest.mark.parametrize("objective", ["eps", "x0"])
def test_eps_and_x0_prediction_see_the_ddpm_input_and_predict_the_noise_or_the_data(example, objective):
    """Ho et al. 2020: the network sees sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, with
    alpha_bar = 1 / (1 + sigma^2), and predicts eps, or x0 itself."""
    x0, eps, sigma = example
    alpha_bar = (1 / (1 + sigma**2))[:, None]
    inp, target = network_input_and_target(objective, x0, eps, sigma)
    assert torch.allclose(inp, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps, atol=1e-5)
    assert torch.allclose(target, eps if objective == "eps" else x0, atol=1e-4)


def test_v_prediction_matches_salimans_and_ho(example):
    x0, eps, sigma = example
    alpha = (1 / (1 + sigma**2)).sqrt()[:, None]
    s = (1 - alpha**2).sqrt()
    inp, target = network_input_and_target("v", x0, eps, sigma)
    assert torch.allclose(inp, alpha * x0 + s * eps, atol=1e-5)
    assert torch.allclose(target, alpha * eps - s * x0, atol=1e-4)


def test_flow_velocity_matches_rectified_flow(example):
    x0, eps, sigma = example
    t = (sigma / (1 + sigma))[:, None]
    inp, target = network_input_and_target("flow", x0, eps, sigma)
    assert torch.allclose(inp, (1 - t) * x0 + t * eps, atol=1e-5)
    assert torch.allclose(target, eps - x0, atol=1e-4)


def test_edm_matches_karras_table_1(example):
    x0, eps, sigma = example
    sd = 0.5
    inp, target = network_input_and_target("edm", x0, eps, sigma, sd)
    s = sigma[:, None]
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    assert torch.allclose(inp, (x0 + s * eps) / (s**2 + sd**2).sqrt(), atol=1e-5)
    assert torch.allclose(target, (x0 - c_skip * (x0 + s * eps)) / c_out, atol=1e-4)


def test_edm_with_unit_sigma_data_is_v_prediction_with_opposite_sign(example):
    x0, eps, sigma = example
    edm_input, edm_target = network_input_and_target("edm", x0, eps, sigma, sigma_data=1.0)
    v_input, v_target = network_input_and_target("v", x0, eps, sigma)
    assert torch.allclose(edm_input, v_input, atol=1e-6)
    assert torch.allclose(edm_target, -v_target, atol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "x0", "v", "edm", "flow"])
def test_a_network_that_outputs_its_target_denoises_exactly(objective, example):
    x0, eps, sigma = example
    parameterization = build_parameterization(objective, 0.5)

    class Oracle(torch.nn.Module):
        def forward(self, x, c_noise, labels=None):
            c_skip, c_out, _ = parameterization.scalings(sigma[:, None])
            return (x0 - c_skip * (x0 + sigma[:, None] * eps)) / c_out

    denoiser = NetworkDenoiser(Oracle(), parameterization, 0.0, math.inf)
    assert torch.allclose(denoiser(x0 + sigma[:, None] * eps, sigma), x0, atol=1e-4)
    assert denoiser.loss(x0, sigma, eps).max() < 1e-8


@pytest.mark.parametrize("objective", ["eps", "x0", "v", "edm", "flow"])
def test_each_examples_loss_is_its_weighted_denoising_error(objective):
    """EDM eq. 8, example by example: lambda(sigma) c_out^2 ||F - F_target||^2 = lambda(sigma)
    ||D(x, sigma) - x0||^2, for a network that is no good, at a different sigma per example."""
    generator = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(5, 3, 4, generator=generator), torch.randn(5, 3, 4, generator=generator)
    sigma = torch.tensor([0.01, 0.3, 1.0, 4.0, 40.0])
    mixing = torch.randn(4, 4, generator=generator)

    class Mixer(torch.nn.Module):
        def forward(self, x, c_noise, labels=None):
            return x @ mixing + c_noise[:, None, None]

    parameterization = build_parameterization(objective, 0.5)
    denoiser = NetworkDenoiser(Mixer(), parameterization, 0.0, math.inf)
    error = (denoiser(x0 + sigma[:, None, None] * noise, sigma) - x0).square().flatten(1).mean(1)
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(denoiser.loss(x0, sigma, noise, x0_weight=weight), weight * error, rtol=1e-4, atol=0)
    natural = error / parameterization.scalings(sigma)[1] ** 2
    torch.testing.assert_close(denoiser.loss(x0, sigma, noise), natural, rtol=1e-4, atol=0)


@pytest.mark.parametrize("objective", ["eps", "x0", "v", "edm", "flow"])
@pytest.mark.parametrize("weighting", ["natural", "min_snr", "soft_min_snr"])
def test_ideal_denoiser_reaches_the_closed_form_minimum_loss(objective, weighting):
    """With x0 ~ N(MU, STD^2) the best possible error E||D*(x) - x0||^2 per dimension is
    STD^2 sigma^2 / (STD^2 + sigma^2); the loss is lambda(sigma) times that, where the
    natural lambda is 1 / c_out^2."""
    parameterization = build_parameterization(objective, 0.5)

    class IdealNetwork(torch.nn.Module):
        """Outputs the F that makes D the Gaussian posterior mean."""

        def forward(self, scaled_x, c_noise, labels=None):
            sigma = (4 * c_noise).exp()[:, None]
            c_skip, c_out, c_in = parameterization.scalings(sigma)
            x = scaled_x / c_in
            return (gaussian_denoiser(x, sigma[:, 0]) - c_skip * x) / c_out

    n, sigma_value = 200_000, 0.7
    g = torch.Generator().manual_seed(0)
    x0 = MU + STD * torch.randn(n, 2, generator=g, dtype=torch.float64)
    sigma = torch.full((n,), sigma_value, dtype=torch.float64)
    weight = x0_loss_weight(weighting, sigma, sigma_data=0.5, gamma=5.0)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    loss = NetworkDenoiser(IdealNetwork(), parameterization, 0.0, math.inf).loss(x0, sigma, noise, x0_weight=weight)
    _, c_out, _ = parameterization.scalings(torch.tensor(sigma_value, dtype=torch.float64))
    lam = 1 / c_out**2 if weight is None else weight[0]
    expected = lam * (STD**2 * sigma_value**2 / (STD**2 + sigma_value**2)).mean()
    assert loss.mean().item() == pytest.approx(expected.item(), rel=0.01)


def test_loss_weightings_follow_their_papers():
    sigma = torch.tensor([0.1, 0.5, 2.0])
    assert torch.allclose(x0_loss_weight("min_snr", sigma, 0.5, gamma=5.0), torch.tensor([5.0, 4.0, 0.25]))
    assert torch.allclose(x0_loss_weight("min_snr", sigma, 0.5, gamma=2.0), torch.tensor([2.0, 2.0, 0.25]))
    assert torch.allclose(x0_loss_weight("soft_min_snr", sigma, sigma_data=0.5, gamma=5.0), 1 / (sigma**2 + 0.25))
    edm = build_parameterization("edm", 0.5)
    assert torch.allclose(x0_loss_weight("edm", sigma, sigma_data=0.5, gamma=5.0), edm.scalings(sigma)[1] ** -2)


# -- schedules and guidance ------------------------------------------------------------------
def test_ddpm_linear_schedule_matches_ho_et_al():
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    alpha_bar_T = math.prod(1 - b for b in betas)
    assert 4.0e-5 < alpha_bar_T < 4.1e-5                         # the published ~4.04e-5
    assert ddpm_linear_sigmas()[-1].item() == pytest.approx(math.sqrt(1 / alpha_bar_T - 1), rel=1e-9)


def test_karras_sequence_endpoints():
    sigmas = karras_sigmas(18, 0.002, 80.0)
    assert sigmas.dtype == torch.float64 and len(sigmas) == 19
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002)
    assert sigmas[-1] == 0 and torch.all(sigmas[:-1] > sigmas[1:])


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_levels_follow_edm_equation_5_inside_the_range_too(rho):
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < N."""
    n, low, high = 11, 0.002, 80.0
    sigmas = karras_sigmas(n, low, high, rho)
    for i in range(n):
        root = high ** (1 / rho) + i / (n - 1) * (low ** (1 / rho) - high ** (1 / rho))
        assert sigmas[i].item() == pytest.approx(root**rho, rel=1e-12)


def test_cosine_schedule_matches_nichol_and_dhariwal_equation_17():
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) pi/2), s = 0.008, with the
    betas 1 - alpha_bar_t / alpha_bar_(t-1) clipped at 0.999 (their section 3.2)."""
    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    alpha_bar, expected = 1.0, []
    for t in range(1, 1001):
        alpha_bar *= 1 - min(1 - f(t) / f(t - 1), 0.999)
        expected.append(math.sqrt((1 - alpha_bar) / alpha_bar))
    torch.testing.assert_close(cosine_sigmas(), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0)


def test_loglinear_levels_divide_evenly_in_log_sigma():
    sigmas = loglinear_sigmas(9, 0.01, 100.0)
    assert sigmas[-1] == 0 and len(sigmas) == 10
    expected = [100.0 * (0.01 / 100.0) ** (i / 8) for i in range(9)]
    torch.testing.assert_close(sigmas[:-1], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_uniform_t_levels_are_equal_steps_in_t_from_the_largest_level():
    """Flows: t = sigma / (1 + sigma) from t(sigma_max) down to 0 in equal steps, in float64."""
    sigmas = uniform_t_sigmas(8, 1000.0)
    t = torch.tensor([(1000 / 1001) * (1 - i / 8) for i in range(9)], dtype=torch.float64)
    assert sigmas.dtype == torch.float64
    torch.testing.assert_close(sigmas, t / (1 - t), rtol=1e-13, atol=0)


def test_numbered_noise_is_each_numbers_own_whatever_the_batch():
    from {{ cookiecutter.package_name }}.diffusion.generate import indexed_noise

    expected = torch.stack([torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(7 + i)) for i in range(5)])
    torch.manual_seed(123)                                        # the global state plays no part
    assert torch.equal(indexed_noise(torch.arange(5), (1, 4, 4), 7), expected)
    assert torch.equal(indexed_noise(torch.tensor([3, 4]), (1, 4, 4), 7), expected[3:])
    generators = [torch.Generator().manual_seed(7 + i) for i in range(5)]
    double = torch.stack([torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(7 + i), dtype=torch.float64)
                          for i in range(5)])
    assert torch.equal(standard_normal((5, 1, 4, 4), generators, torch.float64), double)   # in the type asked for


def test_trailing_spacing_starts_at_the_last_training_step():
    table = torch.arange(1, 1001, dtype=torch.float64)            # sigma of step i is i + 1
    sigmas = trailing_sigmas(10, table)
    assert sigmas[:-1].tolist() == [1000.0 - 100 * i for i in range(10)]  # timesteps 999, 899, ..., 99


def test_logit_normal_t_is_lognormal_sigma():
    sigma = LogNormalNoise(0.0, 1.0)(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    logit_t = torch.logit(sigma / (1 + sigma))
    assert abs(logit_t.mean().item()) < 0.01 and abs(logit_t.std().item() - 1) < 0.01


def test_uniform_t_training_levels_are_uniform_in_t_up_to_that_of_sigma_max():
    """Rectified flow's t ~ U(0, 1) (Liu et al. 2023), capped at t(sigma_max) = 80 / 81: the
    quartiles of t = sigma / (1 + sigma) at a quarter, half and three quarters of the cap, no
    level beyond it and none at 0; the same generator gives the same levels."""
    draw = UniformTNoise(80.0)
    sigma = draw(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    t, cap = sigma / (1 + sigma), 80.0 / 81.0
    quartiles = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(quartiles, cap * torch.tensor([0.25, 0.5, 0.75]), atol=0.005)
    assert 0 < sigma.min() and sigma.max() <= 80.0 * (1 + 1e-5) and sigma.max() > 70.0
    assert torch.equal(draw(5, torch.device("cpu"), torch.Generator().manual_seed(1)),
                       draw(5, torch.device("cpu"), torch.Generator().manual_seed(1)))


def labelled_denoiser(x, sigma, labels):
    return x * 0 + labels[:, None].to(x.dtype)        # "x0_hat" equals the label: easy to read off


def test_guidance_weights_zero_and_one_give_the_unconditional_and_conditional_models():
    x, sigma, labels = torch.zeros(4, 2), torch.ones(4), torch.tensor([0, 1, 2, 3])
    null = 10
    nulls = torch.full_like(labels, null)                  # the null condition of each example
    assert torch.all(GuidedDenoiser(labelled_denoiser, [(labels, 0.0)], nulls)(x, sigma) == null)
    assert torch.equal(GuidedDenoiser(labelled_denoiser, [(labels, 1.0)], nulls)(x, sigma)[:, 0], labels.float())
    guided = GuidedDenoiser(labelled_denoiser, [(labels, 3.0)], nulls)(x, sigma)[:, 0]
    assert torch.allclose(guided, null + 3.0 * (labels.float() - null))
    mixed = GuidedDenoiser(labelled_denoiser, [(labels, 0.5), (labels + 1, 0.5)], nulls)(x, sigma)[:, 0]
    assert torch.allclose(mixed, labels.float() + 0.5)


# -- generate: the one way to draw samples ---------------------------------------------------
def test_sdedit_from_an_image_follows_the_exact_ode_from_the_noised_image():
    """generate(image=...) starts at image + sigma_0 eps; a deterministic sampler then solves
    the probability-flow ODE, whose solution for Gaussian data is closed form."""
    image = torch.tensor([[3.0, -1.0], [0.0, 0.0], [-2.0, 4.0]], dtype=torch.float64)
    sigmas = torch.logspace(math.log10(2.0), -1, 401, dtype=torch.float64)   # from sigma 2 (not 80): SDEdit
    result = generate(gaussian_denoiser, sigmas, heun, image=image, generator=torch.Generator().manual_seed(4))
    eps = torch.randn(image.shape, generator=torch.Generator().manual_seed(4))
    expected = exact_ode_solution(image + 2.0 * eps.double(), sigmas[0], sigmas[-1])
    assert result.nfe == 800
    assert torch.allclose(result.x, expected, atol=1e-5)


def test_generate_from_noise_starts_at_the_largest_sigma_with_the_generators_noise():
    first = {}

    def remember_start(step):
        first.setdefault("x", step.x.clone())

    sigmas = karras_sigmas(4, 0.002, 80.0)
    result = generate(gaussian_denoiser, sigmas, ddim, shape=(5, 2), generator=torch.Generator().manual_seed(1),
                      hooks=[remember_start])
    eps = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    assert first["x"].dtype == result.x.dtype == torch.float32
    assert torch.allclose(first["x"], 80.0 * eps) and result.nfe == 4


def test_generate_needs_exactly_one_start():
    sigmas = karras_sigmas(4, 0.002, 80.0)
    with pytest.raises(ValueError, match="exactly one"):
        generate(gaussian_denoiser, sigmas, ddim)
    with pytest.raises(ValueError, match="exactly one"):
        generate(gaussian_denoiser, sigmas, ddim, shape=(2, 2), image=torch.zeros(2, 2))


def test_a_user_written_denoiser_wrapper_draws_its_closed_form_distribution():
    """The pattern of guidance.py as a user would write it: a wrapper that holds at every
    evaluation, here averaging D with the estimate of a mirrored view, as visual anagrams do.
    For Gaussian data D(x) = MU + A (x - MU) with A diagonal, and the average with R D(R x)
    (R flips the first coordinate) is MU' + A (x - MU'), MU' = (MU + R MU) / 2: the ideal
    denoiser of N(MU', STD^2). So the first coordinate must come out as N(0, STD_0^2)."""
    mirror = torch.tensor([-1.0, 1.0], dtype=torch.float64)

    class MirrorAveraged:
        def __init__(self, denoiser):
            self.denoiser = denoiser

        def __call__(self, x, sigma):
            return (self.denoiser(x, sigma) + mirror * self.denoiser(mirror * x, sigma)) / 2

    n = 20_000
    x = generate(MirrorAveraged(gaussian_denoiser), karras_sigmas(40, 0.002, 80.0), heun, shape=(n, 2),
                 generator=torch.Generator().manual_seed(0)).x
    assert abs(x[:, 0].mean().item()) < 4 * STD[0] / math.sqrt(n)
    assert x[:, 0].std().item() == pytest.approx(STD[0].item(), rel=0.03)


def test_networks_carry_the_noise_range_they_were_trained_on():
    from {{ cookiecutter.package_name }}.diffusion.schedules import DiscreteNoise

    table = ddpm_linear_sigmas()
    noise = DiscreteNoise(table)
    eps = build_parameterization("eps", 0.5)
    denoiser = NetworkDenoiser(torch.nn.Identity(), eps, noise.sigma_min, noise.sigma_max)
    assert (denoiser.sigma_min, denoiser.sigma_max) == (table[0].item(), table[-1].item())
    assert noise(1000, torch.device("cpu")).min() >= denoiser.sigma_min
    assert (LogNormalNoise().sigma_min, LogNormalNoise().sigma_max) == (0.0, math.inf)


@pytest.mark.parametrize("name", ["euler", "ddim", "ddpm", "heun", "generalized", "dpmpp_2m", "dpmpp_2m_sde"])
def test_the_nfe_formula_matches_the_counted_evaluations(name):
    from types import SimpleNamespace

    from {{ cookiecutter.package_name }}.diffusion.samplers import SAMPLERS, configured_sampler

    sampling = SimpleNamespace(sampler=name, steps=7, eta=0.5, churn=0.0, gamma=1.0, mu=0.0, second_order=False)
    result = configured_sampler(sampling)(gaussian_denoiser, karras_sigmas(7, 0.002, 80.0),
                                          torch.zeros(2, 2, dtype=torch.float64), generator=torch.Generator())
    assert result.nfe == {"heun": 2 * 7 - 1}.get(name, 7)          # EDM's last step to 0 is a plain Euler step
    assert SAMPLERS[name].calls(sampling.steps) == result.nfe


@pytest.mark.parametrize("guidance, evaluations", [(0.0, 1), (1.0, 1), (2.0, 2), (-1.0, 2)])
def test_nfe_counts_every_network_evaluation_of_guidance(guidance, evaluations):
    """A guided step evaluates the network once per term of nonzero weight (w = 0: only the
    unconditional term; w = 1: only the conditional one): counted from the rows the network is
    given, 5 steps of 3 samples."""
    from types import SimpleNamespace

    from {{ cookiecutter.package_name }}.diffusion.samplers import SAMPLERS, configured_sampler

    rows = []

    def network(x, sigma, labels):
        rows.append(len(x))
        return x * 0

    sampling = SimpleNamespace(sampler="dpmpp_2m", steps=5, guidance=guidance)
    guided = GuidedDenoiser(network, [(torch.zeros(3, dtype=torch.long), guidance)], torch.full((3,), 10))
    result = configured_sampler(sampling)(guided, karras_sigmas(5, 0.002, 80.0), torch.zeros(3, 2, dtype=torch.float64))
    assert sum(rows) == 3 * 5 * evaluations
    assert result.nfe == SAMPLERS["dpmpp_2m"].calls(sampling.steps) * guided.evaluations == 5 * evaluations
    # a wrapper of a denoiser that states its own cost multiplies it (guidance of guidance)
    assert GuidedDenoiser(guided, [(torch.zeros(3, dtype=torch.long), 2.0)], torch.full((3,), 10)).evaluations \
        == 2 * evaluations


# -- the table of sampler facts, held against the samplers themselves ----------------------------
NOISY = [("euler", {}), ("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.5}), ("ddpm", {}), ("heun", {"churn": 0.0}),
         ("heun", {"churn": 10.0}), ("generalized", {"mu": 0.0}), ("generalized", {"mu": 0.5}), ("dpmpp_2m", {}),
         ("dpmpp_2m_sde", {}), ("consistency", {}), ("consistency", {"steps": 1})]


@pytest.mark.parametrize("name, options", NOISY, ids=[f"{name}{options}" for name, options in NOISY])
def test_the_table_says_which_samplers_draw_noise(name, options):
    """A sampler the table calls deterministic gives the same sample whatever its generator; one
    that draws noise does not."""
    from types import SimpleNamespace

    from {{ cookiecutter.package_name }}.diffusion.samplers import SAMPLERS

    sampling = SimpleNamespace(**{"sampler": name, "steps": 6, "eta": 0.0, "churn": 0.0, "gamma": 1.0, "mu": 0.0,
                                  "second_order": False, **options})
    facts, x = SAMPLERS[name], torch.ones(4, 2, dtype=torch.float64) * 80
    samples = [facts.configured(sampling)(gaussian_denoiser, karras_sigmas(sampling.steps, 0.002, 80.0), x,
                                          generator=torch.Generator().manual_seed(seed)).x for seed in (0, 1)]
    assert torch.equal(samples[0], samples[1]) == facts.deterministic(sampling)


def test_the_table_names_every_sampling_option_each_sampler_reads():
    """The options a sampler function takes from the sampling section are exactly those its row
    reads or fixes: none left at the function's default, none read that it does not take."""
    import dataclasses
    import inspect

    from {{ cookiecutter.package_name }}.config import SamplingConfig
    from {{ cookiecutter.package_name }}.diffusion.samplers import SAMPLERS

    section = {field.name for field in dataclasses.fields(SamplingConfig)}
    for name, facts in SAMPLERS.items():
        taken = set(inspect.signature(facts.function).parameters) & section
        assert taken == set(facts.options) | set(facts.fixes), name


# -- the samplers against independent implementations, step for step ----------------------------
# diffusers' schedulers run in the variance-preserving variables x_vp = x / sqrt(1 + sigma^2) of a
# table of alpha_bar = 1 / (1 + sigma^2); given our Karras noise levels as that table (or, for the
# multistep solver, as its sigmas), and x0_hat as the model's output, they take the same steps
# (Karras et al. 2022, Appendix C). Heun and the course's sampler have no diffusers twin: they are
# written out below from their papers' algorithms, with the papers' names.
class Float64(torch.Tensor):
    """A sample that stays float64: diffusers' multistep solver casts its sample to float32."""

    def to(self, *args, **kwargs):
        return self


def on_the_grid(scheduler, sigmas: torch.Tensor, x: torch.Tensor, noise=None, **step_options) -> torch.Tensor:
    """Run a diffusers scheduler down ``sigmas`` from x (sigma form), the model's output being
    our closed-form denoiser's x0_hat; the result in the sigma form (the last sigma is 0).
    ``noise``, a generator, draws each step's ``variance_noise`` as our samplers draw theirs."""
    x_vp = (x / (1 + sigmas[0] ** 2).sqrt()).as_subclass(Float64)
    for sigma, t in zip(sigmas, scheduler.timesteps):
        x0_hat = gaussian_denoiser(x_vp * (1 + sigma**2).sqrt(), sigma.expand(len(x)))
        if noise is not None:
            step_options["variance_noise"] = standard_normal(x.shape, noise, x.dtype).as_subclass(Float64)
        x_vp = scheduler.step(x0_hat, t, x_vp, **step_options).prev_sample
    return x_vp.as_subclass(torch.Tensor)


def discrete_scheduler(name: str, sigmas: torch.Tensor):
    """A DDIM or DDPM scheduler whose training table is our grid: its step t has noise level
    sigmas[-2 - t] (increasing with t), and its last step goes to alpha_bar = 1 (sigma = 0)."""
    diffusers = pytest.importorskip("diffusers")
    steps = len(sigmas) - 1
    options = {"set_alpha_to_one": True} if name == "DDIMScheduler" else {}
    scheduler = getattr(diffusers, name)(num_train_timesteps=steps, prediction_type="sample", clip_sample=False,
                                         **options)
    scheduler.alphas_cumprod = 1 / (1 + sigmas[:-1].flip(0) ** 2)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("name, algorithm", [("dpmpp_2m", "dpmsolver++"), ("dpmpp_2m_sde", "sde-dpmsolver++")])
@pytest.mark.parametrize("steps", [10, 17, 25])
def test_dpm_solver_2m_equals_diffusers_step_for_step(steps, name, algorithm):
    """The SDE form draws the same noise in the same order from the same generator in both."""
    from types import SimpleNamespace

    from {{ cookiecutter.package_name }}.diffusion.samplers import configured_sampler

    diffusers = pytest.importorskip("diffusers")
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    x = sigmas[0] * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type=algorithm, solver_order=2,
                                                      prediction_type="sample", final_sigmas_type="zero",
                                                      lower_order_final=False)
    scheduler.set_timesteps(steps)
    scheduler.sigmas = sigmas.clone()
    theirs = on_the_grid(scheduler, sigmas, x, noise=torch.Generator().manual_seed(3))
    ours = configured_sampler(SimpleNamespace(sampler=name))(gaussian_denoiser, sigmas, x,
                                                             generator=torch.Generator().manual_seed(3)).x
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_equals_diffusers_step_for_step(steps, eta):
    """eta > 0 draws the same noise in the same order from the same generator in both."""
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    x = sigmas[0] * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = on_the_grid(discrete_scheduler("DDIMScheduler", sigmas), sigmas, x, eta=eta,
                         generator=torch.Generator().manual_seed(3))
    ours = ddim(gaussian_denoiser, sigmas, x, eta=eta, generator=torch.Generator().manual_seed(3)).x
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("steps", [10, 25])
def test_ddpm_equals_diffusers_ancestral_sampling_step_for_step(steps):
    from types import SimpleNamespace

    from {{ cookiecutter.package_name }}.diffusion.samplers import configured_sampler

    sigmas = karras_sigmas(steps, 0.002, 80.0)
    x = sigmas[0] * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = on_the_grid(discrete_scheduler("DDPMScheduler", sigmas), sigmas, x,
                         generator=torch.Generator().manual_seed(3))
    sampler = configured_sampler(SimpleNamespace(sampler="ddpm"))
    ours = sampler(gaussian_denoiser, sigmas, x, generator=torch.Generator().manual_seed(3)).x
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def edm_algorithm_2(D, t, x, S_churn=0.0, S_tmin=0.0, S_tmax=float("inf"), S_noise=1.0, generator=None):
    """Karras et al. 2022, Algorithm 2, line by line (sigma(t) = t, s(t) = 1)."""
    N = len(t) - 1
    for i in range(N):
        eps_i = S_noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        gamma_i = min(S_churn / N, math.sqrt(2) - 1) if S_tmin <= t[i] <= S_tmax else 0.0
        t_hat = t[i] + gamma_i * t[i]
        x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps_i
        d_i = (x_hat - D(x_hat, t_hat.expand(len(x)))) / t_hat
        x_next = x_hat + (t[i + 1] - t_hat) * d_i
        if t[i + 1] != 0:
            d_prime = (x_next - D(x_next, t[i + 1].expand(len(x)))) / t[i + 1]
            x_next = x_hat + (t[i + 1] - t_hat) * (0.5 * d_i + 0.5 * d_prime)
        x = x_next
    return x


@pytest.mark.parametrize("churn", [0.0, 10.0])
@pytest.mark.parametrize("steps", [10, 25])
def test_heun_equals_edm_algorithm_2(steps, churn):
    """With churn every step draws its noise (Algorithm 2, line 3) and both draw the same."""
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    x = sigmas[0] * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = edm_algorithm_2(gaussian_denoiser, sigmas, x, S_churn=churn, generator=torch.Generator().manual_seed(3))
    ours = heun(gaussian_denoiser, sigmas, x, churn=churn, generator=torch.Generator().manual_seed(3)).x
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def permenter_yuan_algorithm_2(D, sigmas, x, gam=1.0, mu=0.0, second_order=False, generator=None):
    """Permenter & Yuan 2024, Algorithm 2 as the course library (smalldiffusion) writes it, with
    eps = (x - D) / sigma; ``second_order`` replaces gam by 1 + h_i / (2 h_(i-1)),
    h_i = sigma_i - sigma_(i+1) (the variable-step two-step Adams-Bashforth weight)."""
    eps = None
    for i in range(len(sigmas) - 1):
        sig, sig_prev = sigmas[i], sigmas[i + 1]
        eps_prev, eps = eps, (x - D(x, sig.expand(len(x)))) / sig
        if second_order and i > 0:
            gam = 1 + (sig - sig_prev) / (2 * (sigmas[i - 1] - sig))
        eps_av = eps * gam + eps_prev * (1 - gam) if i > 0 else eps
        sig_p = (sig_prev / sig**mu) ** (1 / (1 - mu))          # sig_prev = sig^mu sig_p^(1 - mu)
        eta = (sig_prev**2 - sig_p**2).sqrt()
        x = x - (sig - sig_p) * eps_av
        if eta > 0:
            x = x + eta * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


@pytest.mark.parametrize("options", [{"gam": 2.0}, {"gam": 1.5, "mu": 0.5}, {"mu": 0.3}, {"second_order": True}],
                         ids=["accelerated", "gamma-mu", "mu", "second-order"])
@pytest.mark.parametrize("steps", [10, 25])
def test_the_generalized_sampler_equals_permenter_and_yuan_algorithm_2(steps, options):
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    x = sigmas[0] * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = permenter_yuan_algorithm_2(gaussian_denoiser, sigmas, x, **options,
                                        generator=torch.Generator().manual_seed(3))
    ours = generalized(gaussian_denoiser, sigmas, x, gamma=options.get("gam", 1.0), mu=options.get("mu", 0.0),
                       second_order=options.get("second_order", False),
                       generator=torch.Generator().manual_seed(3)).x
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
