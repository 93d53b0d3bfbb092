"""The course tasks against known answers: views that are orthogonal pixel maps, anagrams that
reduce to plain sampling or to a closed-form Gaussian, spherical interpolation that keeps the
norm, and inversion that reconstructs its input to the solver's accuracy."""
import math
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.diffusion.generate import generate
from {{ cookiecutter.package_name }}.diffusion.guidance import GuidedDenoiser
from {{ cookiecutter.package_name }}.diffusion.samplers import Trajectory, ddim, dpmpp_2m, heun
from {{ cookiecutter.package_name }}.diffusion.schedules import karras_sigmas
from {{ cookiecutter.package_name }}.tasks.illusion import VIEWS, Anagram, Hybrid, jigsaw, low_pass, view
from {{ cookiecutter.package_name }}.tasks.interpolate import invert, slerp
from {{ cookiecutter.package_name }}.tasks.restore import (
    PosteriorSampling,
    Projected,
    downsample,
    grayscale,
    masked,
    measurement_error,
    repaint,
)

from test_diffusion import MU, STD, exact_ode_solution, gaussian_denoiser


# -- illusions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*VIEWS, "jigsaw"])
def test_every_view_is_an_orthogonal_pixel_map_with_its_inverse(name):
    """Applied to every basis image, a view gives the columns of its matrix: each must hold one
    entry +1 or -1 (a permutation with sign flips), so that M^T M = I and noise stays noise."""
    v = view(name, 8)
    basis = torch.eye(2 * 8 * 8, dtype=torch.float64).reshape(-1, 2, 8, 8)
    matrix = v.apply(basis).reshape(len(basis), -1).T
    assert torch.equal(matrix.abs().sum(0), torch.ones(len(basis), dtype=torch.float64))
    assert torch.equal(matrix.abs().sum(1), torch.ones(len(basis), dtype=torch.float64))
    assert torch.equal(matrix.T @ matrix, torch.eye(len(basis), dtype=torch.float64))
    x = torch.randn(3, 2, 8, 8)
    assert torch.equal(v.invert(v.apply(x)), x)


def test_the_jigsaw_moves_whole_tiles_and_refuses_sizes_it_cannot_cut():
    image = torch.arange(64.0).reshape(1, 1, 8, 8)
    moved = jigsaw(8, pieces=4).apply(image)
    tiles = {tuple(image[0, 0, i:i + 2, j:j + 2].flatten().tolist()) for i in range(0, 8, 2) for j in range(0, 8, 2)}
    corners = [(i, j) for i in range(0, 8, 2) for j in range(0, 8, 2)]
    assert {tuple(moved[0, 0, i:i + 2, j:j + 2].flatten().tolist()) for i, j in corners} == tiles
    assert not torch.equal(moved, image)
    with pytest.raises(ValueError, match="4x4 equal tiles"):
        jigsaw(10, pieces=4)


def labelled_denoiser(x, sigma, labels):
    """A stand-in conditional denoiser whose estimate depends on the label and on x."""
    return 0.5 * x + labels.float().view(-1, 1, 1, 1) - 0.1 * x.flip(-1)


def test_an_anagram_of_the_identity_view_is_plain_guided_sampling():
    guided = GuidedDenoiser(labelled_denoiser, [(torch.full((4,), 3), 2.0)], torch.full((4,), 10))
    sigmas = karras_sigmas(10, 0.002, 80.0)
    plain = generate(guided, sigmas, heun, shape=(4, 1, 8, 8), generator=torch.Generator().manual_seed(0)).x
    anagram = generate(Anagram([(VIEWS["identity"], guided)]), sigmas, heun, shape=(4, 1, 8, 8),
                       generator=torch.Generator().manual_seed(0)).x
    assert torch.equal(plain, anagram)


PIXEL_MU, PIXEL_STD = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]]), torch.tensor([[[0.5, 1.0], [2.0, 0.25]]])


def pixel_gaussian_denoiser(x, sigma):
    """The ideal denoiser of images whose pixels are independent N(PIXEL_MU, PIXEL_STD^2)."""
    shrink = PIXEL_STD**2 / (PIXEL_STD**2 + sigma.view(-1, 1, 1, 1) ** 2)
    return PIXEL_MU + shrink * (x - PIXEL_MU)


def test_an_anagram_with_the_negated_view_samples_the_symmetrised_gaussian():
    """D(x) and -D(-x) average to PIXEL_STD^2 / (PIXEL_STD^2 + sigma^2) x: the ideal denoiser of
    N(0, PIXEL_STD^2). Sampling the anagram must draw exactly that distribution."""
    anagram = Anagram([(VIEWS["identity"], pixel_gaussian_denoiser), (VIEWS["negate"], pixel_gaussian_denoiser)])
    n = 20_000
    x = generate(anagram, karras_sigmas(40, 0.002, 80.0), heun, shape=(n, 1, 2, 2),
                 generator=torch.Generator().manual_seed(0)).x
    assert (x.mean(0).abs() < 4 * PIXEL_STD / math.sqrt(n)).all()
    assert torch.allclose(x.std(0), PIXEL_STD, rtol=0.03)


def image_gaussian_denoiser(mu, std):
    """The ideal denoiser of images whose pixels are independent N(mu, std^2)."""
    def denoiser(x, sigma):
        return mu + std**2 / (std**2 + sigma.view(-1, 1, 1, 1) ** 2) * (x - mu)
    return denoiser


# Views that are not their own inverse, each inverse written out here (the jigsaw's order only
# the view knows).
INVERSES = {"rot90": lambda x: x.rot90(-1, (-2, -1)), "rot270": lambda x: x.rot90(1, (-2, -1)), "jigsaw": None}


@pytest.mark.parametrize("name", sorted(INVERSES))
def test_an_anagram_view_denoises_the_data_seen_through_its_inverse(name):
    """Images x0 ~ N(mu, std^2) with nothing symmetric about mu or std, seen through the inverse
    of a view v, are N(v^-1 mu, (v^-1 std)^2): their ideal denoiser is v^-1(D(v(x))), which is
    what the anagram of that one view must compute. For these views, mapping back by the view
    itself instead of its inverse would give something else."""
    generator = torch.Generator().manual_seed(0)
    mu, std = torch.randn(1, 1, 8, 8, generator=generator), torch.rand(1, 1, 8, 8, generator=generator) + 0.2
    v = view(name, 8)
    inverse = INVERSES[name] or v.invert
    x, sigma = torch.randn(3, 1, 8, 8, generator=generator), torch.tensor([0.1, 1.0, 10.0])
    expected = image_gaussian_denoiser(inverse(mu), inverse(std))(x, sigma)
    torch.testing.assert_close(Anagram([(v, image_gaussian_denoiser(mu, std))])(x, sigma), expected)
    assert not torch.allclose(v.apply(v.apply(mu)), mu)           # not its own inverse


def test_the_jigsaw_order_is_fixed_whatever_the_random_state():
    """An illusion drawn twice, or saved and read back, must see the same jigsaw."""
    x = torch.arange(64.0).view(1, 1, 8, 8)
    torch.manual_seed(1)
    first = view("jigsaw", 8).apply(x)
    torch.manual_seed(2)
    assert torch.equal(view("jigsaw", 8).apply(x), first) and view("jigsaw", 8).name == "jigsaw4"


def test_a_hybrid_takes_each_band_from_its_own_denoiser():
    """far = a constant image a (all low frequencies), near = a constant b plus a checkerboard c
    (the finest detail): the hybrid is low(a) + near - low(near) = a + c - low(c), and in the
    middle of the image low(c) is c times the square of a Gaussian kernel's response to the
    alternating signal (+1, -1, ...), computed here from the kernel's definition (std 1, taps to
    3 std). Neither band may come from the other denoiser."""
    checkerboard = (-1.0) ** (torch.arange(16)[:, None] + torch.arange(16)[None]).float().view(1, 1, 16, 16)
    checkerboard = checkerboard.double()
    far, near = (lambda x, sigma: torch.full_like(x, 0.25)), (lambda x, sigma: -0.5 + 0.3 * checkerboard.expand_as(x))
    hybrid = Hybrid(far, near, std=1.0)(torch.zeros(2, 1, 16, 16, dtype=torch.float64), torch.ones(2))
    taps = torch.arange(-3, 4, dtype=torch.float64)
    weights = torch.exp(-taps**2 / 2)
    response = ((-1.0) ** taps * weights).sum() / weights.sum()
    expected = 0.25 + 0.3 * checkerboard * (1 - response**2)
    torch.testing.assert_close(hybrid[..., 4:-4, 4:-4], expected.expand(2, 1, 16, 16)[..., 4:-4, 4:-4],
                               rtol=0, atol=1e-12)
    assert Hybrid(far, near, std=1.0).evaluations == 2


def test_a_hybrid_of_one_denoiser_is_that_denoiser_and_the_blur_splits_frequencies():
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 2.0])
    assert torch.allclose(Hybrid(pixel_gaussian_like, pixel_gaussian_like, std=2.0)(x, sigma),
                          pixel_gaussian_like(x, sigma), atol=1e-6)
    constant = torch.full((1, 1, 16, 16), 0.7)
    assert torch.allclose(low_pass(constant, 2.0), constant)                       # DC passes
    checkerboard = (-1.0) ** (torch.arange(16)[:, None] + torch.arange(16)[None]).float().view(1, 1, 16, 16)
    assert low_pass(checkerboard, 2.0)[..., 4:-4, 4:-4].abs().max() < 1e-3         # the finest detail does not


def pixel_gaussian_like(x, sigma):
    return 0.3 + x / (1 + sigma.view(-1, 1, 1, 1) ** 2)


# -- interpolation --------------------------------------------------------------------------------
def test_slerp_keeps_the_norm_where_a_straight_line_loses_it():
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(8, 4096, generator=generator) for _ in range(2))
    b = b * (a.norm(dim=1, keepdim=True) / b.norm(dim=1, keepdim=True))          # equal norms
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    for t in (0.25, 0.5, 0.8):
        assert torch.allclose(slerp(a, b, t).norm(dim=1), a.norm(dim=1), rtol=1e-5)
    assert ((a + b) / 2).norm(dim=1).div(a.norm(dim=1)).max() < 0.75                # about 1/sqrt(2)
    assert torch.allclose(slerp(a, a, 0.3), a)                                       # parallel: no 0/0


def test_slerp_turns_by_the_fraction_of_the_angle_and_survives_opposite_vectors():
    """In a plane, the point a fraction t of the way from a to b is a turned by t times the
    angle between them (here 60 degrees: 0.3 of the way is 18 degrees). Vectors pointing apart
    (cos = -1, which rounding can push below -1) still give finite points."""
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]], dtype=torch.float64)
    turned = torch.tensor([[math.cos(0.3 * math.pi / 3), math.sin(0.3 * math.pi / 3)]], dtype=torch.float64)
    torch.testing.assert_close(slerp(a, b, 0.3), turned, rtol=0, atol=1e-12)
    opposite = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.isfinite(slerp(opposite, -2 * opposite, 0.5)).all()


def test_inversion_starts_at_the_smallest_noise_level_and_climbs_every_level():
    """With a sequence that ends at 0 the image is taken as the state at the smallest nonzero
    level; without one, at the last level. Hooks see every level on the way up."""
    image = MU + STD * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = karras_sigmas(6, 0.002, 80.0)
    for levels in (sigmas, sigmas[:-1]):                       # ending at 0, and not
        trajectory = Trajectory()
        invert(gaussian_denoiser, levels, image, ddim, hooks=[trajectory])
        assert [step.sigma for step in trajectory.steps] == sigmas[1:-1].flip(0).tolist()   # from 0.002 up


@pytest.mark.parametrize("sampler, order", [(ddim, 1), (heun, 2), (dpmpp_2m, 2)])
def test_inversion_solves_the_ode_upwards_at_the_solvers_order_and_reconstructs(sampler, order):
    """The inverted noise of Gaussian data is the exact ODE solution from sigma_min to sigma_max
    (closed form) up to the solver's error, which halves (first order) or quarters (second)
    when the steps double; generating from it gives the image back."""
    image = MU + STD * torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors, reconstructions = [], []
    for steps in (50, 100, 200):
        sigmas = karras_sigmas(steps, 0.002, 80.0)
        noise = invert(gaussian_denoiser, sigmas, image, sampler)
        exact = exact_ode_solution(image, sigmas[-2], sigmas[0])
        errors.append(((noise - exact).abs().max() / exact.abs().max()).item())
        reconstructions.append((sampler(gaussian_denoiser, sigmas, noise).x - image).abs().max().item())
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(rate - order) < 0.15 for rate in rates), rates
    assert reconstructions[-1] < (0.2 if order == 1 else 1e-4) and reconstructions[-1] < reconstructions[0] / 3


# -- restoration ----------------------------------------------------------------------------------
RHO, PAIR_MU = 0.8, torch.tensor([0.5, -1.0], dtype=torch.float64)
PAIR_COV = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64)


def pair_denoiser(x, sigma):
    """The ideal denoiser of a correlated 2D Gaussian N(PAIR_MU, PAIR_COV), one 'image' of two
    pixels (N, 1, 1, 2): PAIR_MU + PAIR_COV (PAIR_COV + sigma^2 I)^-1 (x - PAIR_MU)."""
    flat = x.reshape(len(x), 2)
    gain = PAIR_COV @ torch.linalg.inv(PAIR_COV + sigma.view(-1, 1, 1) ** 2 * torch.eye(2, dtype=torch.float64))
    return (PAIR_MU + (gain @ (flat - PAIR_MU)[..., None])[..., 0]).reshape(x.shape)


@pytest.mark.once
def test_repaint_converges_to_the_conditional_where_replacement_alone_is_biased():
    """Pixel 0 observed at y = 1.5: pixel 1 given it is N(-1 + 0.8 (1.5 - 0.5), 1 - 0.8^2) =
    N(-0.2, 0.6^2) (the Gaussian conditional). Plain replacement misses the mean by most of the
    correlation; ten resamplings per step come within a few hundredths."""
    n, y = 20_000, torch.tensor([1.5, 0.0], dtype=torch.float64).view(1, 1, 1, 2).expand(20_000, 1, 1, 2)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    sigmas = karras_sigmas(100, 0.002, 80.0)
    replaced = repaint(pair_denoiser, sigmas, y, mask, generator=torch.Generator().manual_seed(0)).x[:, 0, 0, 1]
    resampled = repaint(pair_denoiser, sigmas, y, mask, resample=10, generator=torch.Generator().manual_seed(0))
    missing = resampled.x[:, 0, 0, 1]
    assert resampled.nfe == 100 * 10 and torch.equal(resampled.x[:, 0, 0, 0], y[:, 0, 0, 0])
    assert abs(replaced.mean().item() - (-0.2)) > 0.25                 # biased
    assert abs(missing.mean().item() - (-0.2)) < 0.05
    assert missing.std().item() == pytest.approx(0.6, rel=0.12)
    assert n == len(missing)


def test_repaint_starts_from_noise_at_the_first_level_and_draws_all_of_it_from_its_generator():
    """The first evaluation sees the unknown pixel at x = sigma_0 z (std sigma_0, mean 0), and the
    known one at y + sigma_0 z; a second try at a level starts from noise of that level again; the
    same generator gives the same inpainting whatever the global
    random state (a draw from the global generator would make it irreproducible)."""
    seen = []

    def recording(x, sigma):
        seen.append((x.clone(), sigma[0].item()))
        return pair_denoiser(x, sigma)

    y = torch.tensor([1.5, 0.0], dtype=torch.float64).view(1, 1, 1, 2).expand(4000, 1, 1, 2)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    sigmas = karras_sigmas(8, 0.002, 80.0)
    torch.manual_seed(1)
    first = repaint(recording, sigmas, y, mask, resample=2, generator=torch.Generator().manual_seed(0)).x
    x, sigma = seen[0]
    assert sigma == sigmas[0].item()
    for pixel, mean in ((1, 0.0), (0, 1.5)):
        assert x[:, 0, 0, pixel].mean().item() == pytest.approx(mean, abs=4 * 80 / 4000**0.5)
        assert x[:, 0, 0, pixel].std().item() == pytest.approx(80, rel=0.05)
    again, sigma = seen[1]                   # the second try: back up to sigma_0 from the step to sigma_1
    assert sigma == sigmas[0].item() and again[:, 0, 0, 1].std().item() == pytest.approx(80, rel=0.05)
    torch.manual_seed(2)
    assert torch.equal(repaint(pair_denoiser, sigmas, y, mask, resample=2,
                               generator=torch.Generator().manual_seed(0)).x, first)


@pytest.mark.parametrize("degradation", ["downsample", "grayscale", "masked"])
@pytest.mark.parametrize("sampler", [ddim, heun])
def test_projection_restoration_satisfies_the_measurement_exactly(degradation, sampler):
    """Whatever the denoiser (here a crude stand-in), the last projected estimate is the sample,
    and A A^+ = I makes it agree with the observation to rounding."""
    truth = torch.rand(3, 3, 8, 8) * 2 - 1
    degrade, pseudo_inverse = {"downsample": downsample(2), "grayscale": grayscale(),
                               "masked": masked((torch.rand(1, 1, 8, 8) > 0.5).float())}[degradation]
    y = degrade(truth)
    denoiser = Projected(lambda x, sigma: 0.3 * x / (1 + sigma.view(-1, 1, 1, 1)), degrade, pseudo_inverse, y)
    x = generate(denoiser, karras_sigmas(12, 0.002, 80.0), sampler, shape=truth.shape,
                 generator=torch.Generator().manual_seed(0)).x
    assert measurement_error(degrade, x, y) < 1e-6
    assert measurement_error(degrade, torch.zeros_like(truth), y) > 0.1


def test_ddnm_inpainting_samples_the_posterior_of_independent_pixels():
    """Pixels independent N(PIXEL_MU, PIXEL_STD^2), the first row observed: the posterior keeps
    the observed pixels and leaves the others at their prior. DDNM's projection must use the
    denoiser for what it cannot see, so the unseen pixels come out as the prior, mean and spread."""
    n = 20_000
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    y = torch.full((n, 1, 2, 2), 0.7) * mask
    degrade, pseudo_inverse = masked(mask)
    projected = Projected(pixel_gaussian_denoiser, degrade, pseudo_inverse, y)
    sigmas, generator = karras_sigmas(40, 0.002, 80.0), torch.Generator().manual_seed(0)
    start = PIXEL_MU + (PIXEL_STD**2 + sigmas[0] ** 2).sqrt() * torch.randn(n, 1, 2, 2, generator=generator)
    x = heun(projected, sigmas, start.float()).x             # from the exact marginal at sigma_max
    assert torch.allclose(x[:, :, 0], y[:, :, 0], atol=1e-6)
    unseen_mu, unseen_std = PIXEL_MU[:, 1], PIXEL_STD[:, 1]
    assert ((x[:, :, 1].mean(0) - unseen_mu).abs() < 4 * unseen_std / math.sqrt(n)).all()
    assert torch.allclose(x[:, :, 1].std(0), unseen_std, rtol=0.03)


def test_the_dps_estimate_is_the_denoiser_pulled_by_its_paper_step():
    """For a linear denoiser D(x) = a x + b and A = a mask m, the gradient of ||y - A(D(x))|| is
    -a m (y - m D(x)) / ||y - m D(x)||, so DPS's estimate is D(x) + zeta sigma^2 a m r / ||r||
    with r = y - m D(x), each example's norm over all its pixels (written out here)."""
    a, b, zeta = 0.6, 0.2, 3.0
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64).view(1, 1, 2, 2)
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 1, 2, 2, generator=generator, dtype=torch.float64) for _ in range(2))
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    estimate = PosteriorSampling(lambda x, sigma: a * x + b, lambda v: v * mask, y * mask, zeta)(x, sigma)
    residual = y * mask - mask * (a * x + b)
    norms = residual.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = a * x + b + zeta * sigma.view(-1, 1, 1, 1) ** 2 * a * mask * residual / norms
    torch.testing.assert_close(estimate, expected, rtol=0, atol=1e-12)


def test_every_task_wrapper_states_the_network_evaluations_it_makes():
    """Counted from the rows a network is given: each wrapper over a guided denoiser (two
    evaluations a call at weight 2) states what one call of it costs."""
    rows = []

    def network(x, sigma, labels):
        rows.append(len(x))
        return x * 0.5

    guided = GuidedDenoiser(network, [(torch.zeros(4, dtype=torch.long), 2.0)], torch.full((4,), 10))
    mask = torch.ones(1, 1, 8, 8)
    wrappers = [Anagram([(VIEWS["identity"], guided), (VIEWS["rot90"], guided)]), Hybrid(guided, guided),
                Projected(guided, *masked(mask), torch.zeros(4, 1, 8, 8)),
                PosteriorSampling(guided, lambda v: v * mask, torch.zeros(4, 1, 8, 8))]
    for wrapper in wrappers:
        rows.clear()
        wrapper(torch.randn(4, 1, 8, 8), torch.ones(4))
        assert wrapper.evaluations == sum(rows) // 4, type(wrapper).__name__


def test_posterior_sampling_pulls_samples_towards_the_observation():
    """DPS with the pair Gaussian and A = the first pixel: the samples' first pixel agrees with
    y far better than unguided samples, and the second follows it through the correlation."""
    y = torch.full((4000, 1, 1, 1), 1.5, dtype=torch.float64)
    first = lambda x: x[..., :1]  # noqa: E731
    sigmas = karras_sigmas(60, 0.002, 80.0)
    kwargs = dict(shape=(4000, 1, 1, 2), generator=torch.Generator().manual_seed(0))
    free = generate(pair_denoiser, sigmas, ddim, **kwargs).x.double()
    guided = generate(PosteriorSampling(pair_denoiser, first, y), sigmas, ddim, **kwargs).x.double()
    assert measurement_error(first, guided, y) < 0.05 * measurement_error(first, free, y)
    assert guided[:, 0, 0, 1].mean().item() > free[:, 0, 0, 1].mean().item() + 0.3


def test_sdedit_strength_runs_from_the_image_itself_to_a_fresh_sample():
    image = torch.rand(2, 1, 4, 4) * 2 - 1
    sigmas = karras_sigmas(10, 0.002, 80.0)
    assert torch.equal(generate(pixel_gaussian_like, sigmas, ddim, image=image, strength=0.0).x, image)
    generator = torch.Generator().manual_seed(0)
    half = generate(pixel_gaussian_like, sigmas, ddim, image=image, strength=0.5, generator=generator)
    assert half.nfe == 5
    with pytest.raises(ValueError, match="strength"):
        generate(pixel_gaussian_like, sigmas, ddim, image=image, strength=1.5)


# -- the commands, end to end on tiny runs ----------------------------------------------------------
@pytest.fixture
def toy_run(project_dir):
    from {{ cookiecutter.package_name }}.cli import main

    from test_train import TOY

    assert main(["train", *TOY, "name=toy", "trainer.max_steps=20"]) == 0
    return "runs/toy"


def gif_frames(path) -> int:
    from PIL import Image

    with Image.open(path) as gif:
        return gif.n_frames


def test_visualize_draws_the_vector_fields_and_the_particles_of_2d_data(toy_run, monkeypatch):
    """The fields at the levels asked for (sigmas=[2.0,0.1]); the n = 50 particles at every step."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.commands import visualize as command

    fields, draw = [], command.save_vector_fields
    monkeypatch.setattr(command, "save_vector_fields", lambda denoiser, sigmas, *rest: fields.append(list(sigmas)) or
                        draw(denoiser, sigmas, *rest))
    assert main(["visualize", f"run={toy_run}", "steps=7", "sampler=euler", "n=50", "sigmas=[2.0,0.1]"]) == 0
    assert fields == [[2.0, 0.1]] and (Path(toy_run) / "visualize/vector_fields.png").is_file()
    assert gif_frames(Path(toy_run) / "visualize/particles.gif") == 7 + 1           # each step, then the sample


def test_2d_points_of_a_tensor_file_are_drawn_in_one_space(project_dir, monkeypatch):
    """Points far from the origin, which a tensor file's scaling (``FeatureRange``) brings to
    [-1, 1]: the sampling paths of ``sample trajectory=true`` run in the data's units from the
    noise to the samples; ``visualize`` draws the field, the data and the particles in the
    network's units, where the data span [-1, 1]."""
    from {{ cookiecutter.package_name }} import visualize
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.commands import visualize as command

    points = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) * 0.5 + 1000
    torch.save({"data": points}, project_dir / "points.pt")
    assert main(["train", "name=points", "data.name=tensor_file", "data.root=points.pt", "data.clusters=0",
                 "model.conditional=false", "model.name=mlp",
                 "logger=csv", "trainer.max_steps=2", "trainer.val_every_n_steps=1000",
                 "trainer.sample_every_n_steps=1000", "sampling.steps=4"]) == 0
    seen, paths = {}, visualize.paths_2d
    monkeypatch.setattr(visualize, "paths_2d", lambda *args, **kwargs: seen.setdefault("paths", paths(*args, **kwargs)))
    assert main(["sample", "run=runs/points", "n=5", "trajectory=true"]) == 0
    samples = torch.load("runs/points/generated/samples.pt")
    assert seen["paths"].shape == (4 + 1, 5, 2) and torch.equal(seen["paths"][-1], samples)
    assert ((seen["paths"] - 1000).abs() < 20).all()              # noise scaled to the data's spread, then samples
    monkeypatch.setattr(command, "save_vector_fields", lambda denoiser, sigmas, data, path, *rest: seen.update(
        field=data) or path)
    monkeypatch.setattr(command, "save_particles_gif", lambda steps, final, data, path: seen.update(
        final=final, data=data) or path)
    assert main(["visualize", "run=runs/points", "n=20"]) == 0
    assert torch.equal(seen["field"], seen["data"]) and seen["data"].abs().max() < 1.001    # float32 at 1000
    assert seen["final"].abs().max() < 10


def test_visualize_draws_a_labelled_denoising_grid_and_gif_of_images(digits_run, capsys, monkeypatch):
    """n=3 seed=5 labels=[3,7] columns=4: three samples drawn from seed 5 with the labels 3, 7, 3
    in turn, followed at every step, the grid showing 4 of the steps."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.commands import visualize as command
    from {{ cookiecutter.package_name }}.model import Model

    asked, shown, sample, show = [], [], Model.sample, command.save_denoising
    monkeypatch.setattr(Model, "sample", lambda self, n, generator, sampling, labels, **rest: asked.append(
        (n, generator.initial_seed(), labels.tolist())) or sample(self, n, generator, sampling, labels, **rest))
    monkeypatch.setattr(command, "save_denoising", lambda trajectory, out, title, columns, decode: shown.append(
        (len(trajectory), len(trajectory[0].x), columns)) or show(trajectory, out, title, columns, decode))
    assert main(["visualize", f"run={digits_run}", "steps=5", "sampler=euler", "n=3", "seed=5", "labels=[3,7]",
                 "columns=4"]) == 0
    assert asked == [(3, 5, [3, 7, 3])] and shown == [(5, 3, 4)]
    assert main(["visualize", f"run={digits_run}", "steps=5", "sampler=euler", "labels=[3,7]", "n=2"]) == 0
    assert (Path(digits_run) / "visualize/denoising.png").is_file()
    assert gif_frames(Path(digits_run) / "visualize/denoising.gif") == 5
    assert main(["visualize", f"run={digits_run}", "labels=[12]"]) == 2
    assert "label 12 is not one of the model's classes" in capsys.readouterr().err


@pytest.mark.parametrize("between", ["noise", "images", "labels", "guidance"])
def test_interpolate_writes_a_labelled_strip_and_a_gif(digits_run, capsys, between):
    from {{ cookiecutter.package_name }}.cli import main

    extra = {"labels": ["labels=[1,7]"], "guidance": ["weights=[0,2,4]"], "images": ["images=[3,40]"]}.get(between, [])
    assert main(["interpolate", f"run={digits_run}", f"between={between}", "frames=4", "steps=4",
                 "sampler=dpmpp_2m", *extra]) == 0
    folder = Path(digits_run) / "interpolate"
    assert (folder / f"{between}.png").is_file()
    frames = gif_frames(folder / f"{between}.gif")        # there and back; identical neighbours merge in a GIF
    assert frames == 6 if between == "noise" else 1 <= frames <= (3 if between == "guidance" else 4) * 2 - 2
    if between == "images":
        assert capsys.readouterr().out.count("inverted and regenerated with") == 2


def test_interpolate_asks_the_model_for_what_each_sweep_names(digits_run, monkeypatch):
    """The draws each sweep asks for. between=noise: from the noise of seeds[0] to that of
    seeds[1] along the great circle (halfway, (a + b) / (2 cos(w / 2)), w the angle between them),
    towards the first label.
    between=labels: labels a and b weighted (1 - t) w and t w, w the guidance, on the noise of
    seed. between=guidance: the label at each of weights, on the noise of seed."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.diffusion.samplers import SampleResult
    from {{ cookiecutter.package_name }}.model import Model

    asked = []

    def sample(self, n, generator, sampling=None, labels=None, conditions=None, hooks=(), noise=None):
        asked.append({"noise": noise, "labels": labels, "guidance": sampling.guidance,
                      "conditions": conditions and [(condition.tolist(), weight) for condition, weight in conditions]})
        return SampleResult(torch.zeros(n, *self.data_shape), 1)

    monkeypatch.setattr(Model, "sample", sample)
    noise_of = lambda seed: torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed))   # noqa: E731
    common = [f"run={digits_run}", "frames=3", "steps=2", "sampler=euler"]
    assert main(["interpolate", *common, "between=noise", "seeds=[4,9]", "labels=[5]"]) == 0
    (drawn,) = asked
    a, b = noise_of(4), noise_of(9)
    torch.testing.assert_close(drawn["noise"][[0, 2]], torch.cat([a, b]))
    angle = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).acos()
    torch.testing.assert_close(drawn["noise"][1:2], (a + b) / (2 * (angle / 2).cos()))     # sin(w/2) / sin(w)
    assert drawn["labels"].tolist() == [5, 5, 5]
    asked.clear()
    assert main(["interpolate", *common, "between=labels", "labels=[1,7]", "seed=3", "guidance=2"]) == 0
    assert [drawn["conditions"] for drawn in asked] == [[([1], 2.0), ([7], 0.0)], [([1], 1.0), ([7], 1.0)],
                                                        [([1], 0.0), ([7], 2.0)]]
    assert all(torch.equal(drawn["noise"], noise_of(3)) for drawn in asked)
    asked.clear()
    assert main(["interpolate", *common, "between=guidance", "weights=[0,3]", "labels=[2]", "seed=6"]) == 0
    assert [drawn["conditions"] for drawn in asked] == [[([2], 0.0)], [([2], 3.0)]]
    assert all(torch.equal(drawn["noise"], noise_of(6)) for drawn in asked)


def test_interpolate_refuses_a_sampler_that_adds_noise(digits_run, capsys):
    from {{ cookiecutter.package_name }}.cli import main

    assert main(["interpolate", f"run={digits_run}", "sampler=ddpm"]) == 2
    assert "needs a deterministic sampler" in capsys.readouterr().err


def test_the_guidance_grid_is_a_row_per_label_and_a_column_per_weight_on_each_rows_own_noise(digits_run,
                                                                                               monkeypatch):
    """labels=[3,7] weights=[0,2,5] seed=4: tile (i, j) is label i drawn at weight j, from the
    noise of row i, which is the same in every column: the noise numbered i of seed 4, drawn
    from a generator seeded 4 + i. The default rows are the first 16 classes (the digits' 10)."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.commands import guidance_grid
    from {{ cookiecutter.package_name }}.diffusion.samplers import SampleResult
    from {{ cookiecutter.package_name }}.model import Model
    from {{ cookiecutter.package_name }}.pixels import to_uint8

    noises = []

    def sample(self, n, generator, sampling=None, labels=None, conditions=None, hooks=(), noise=None):
        (rows, weight), = conditions
        noises.append(noise)
        return SampleResult(((rows + 10 * weight) / 100).view(-1, 1, 1, 1).expand(n, *self.data_shape), 1)

    drawn = []
    monkeypatch.setattr(Model, "sample", sample)
    monkeypatch.setattr(guidance_grid, "save_labelled_grid", lambda tiles, rows, columns, *rest: drawn.append(
        (tiles, rows, columns)))
    assert main(["guidance-grid", f"run={digits_run}", "labels=[3,7]", "weights=[0,2,5]", "seed=4"]) == 0
    (tiles, rows, columns), = drawn
    codes = [(label + 10 * weight) / 100 for label in (3, 7) for weight in (0, 2, 5)]
    assert torch.equal(tiles[:, 0, 0, 0], to_uint8(torch.tensor(codes))) and rows == ["3", "7"]
    assert columns == ["w=0", "w=2", "w=5"]
    own = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(4 + i)) for i in range(2)])
    assert all(torch.equal(noise, own) for noise in noises) and len(noises) == 3
    assert main(["guidance-grid", f"run={digits_run}", "weights=[1]"]) == 0
    assert drawn[-1][1] == [str(digit) for digit in range(10)]


def test_guidance_grid_and_illusions_draw_their_pictures(digits_run, capsys):
    from {{ cookiecutter.package_name }}.cli import main

    common = [f"run={digits_run}", "steps=3", "sampler=euler"]
    assert main(["guidance-grid", *common, "labels=[0,5]", "weights=[0,3]"]) == 0
    assert main(["illusion", *common, "labels=[6,9]", "views=[identity,rot180]", "n=2"]) == 0
    assert main(["illusion", *common, "kind=hybrid", "labels=[0,1]", "n=2"]) == 0
    assert main(["illusion", *common, "labels=[6,9,1]", "views=[identity,jigsaw,negate]", "n=2"]) == 0
    for picture in ("guidance/grid.png", "illusion/anagram.png", "illusion/anagram.gif", "illusion/hybrid.png"):
        assert (Path(digits_run) / picture).is_file(), picture
    capsys.readouterr()
    assert main(["illusion", *common, "labels=[6]"]) == 2
    assert "kind=anagram needs 2 labels (one per view)" in capsys.readouterr().err
    assert main(["illusion", *common, "labels=[6,9]", "views=[identity,spin]"]) == 2
    assert "unknown view 'spin'" in capsys.readouterr().err


def test_the_illusion_command_pairs_each_label_with_its_view(digits_run, monkeypatch):
    """labels=[3,5] views=[identity,rot90]: label 3 is seen through the identity, label 5 through
    rot90. Stand-in guided denoisers that each return a fixed picture of their label (one bright
    pixel in column `label`) make the sample the average of the pictures, each mapped back
    through the inverse of its own view; each is guided at the sampling guidance. A hybrid with
    std=2 is low(far) + near - low(near), blurred by 2 pixels. The seed draws the start."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.model import Model

    common = [f"run={digits_run}", "n=2", "steps=3", "sampler=dpmpp_2m"]
    drawn = []
    for seed in (1, 1, 2):
        assert main(["illusion", *common, "labels=[3,5]", f"seed={seed}", "out=seeds"]) == 0
        drawn.append(torch.load("seeds/anagram.pt"))
    assert torch.equal(drawn[0], drawn[1]) and not torch.allclose(drawn[0], drawn[2])

    def picture(label):
        image = torch.zeros(1, 1, 8, 8)
        image[0, 0, 1, label] = 1.0
        return image

    weights = []
    monkeypatch.setattr(Model, "guided", lambda self, n, guidance, labels=None, conditions=None:
                        weights.append(guidance) or (lambda x, sigma: picture(int(labels[0])).expand_as(x).to(x)))
    assert main(["illusion", *common, "labels=[3,5]", "views=[identity,rot90]", "guidance=2.5", "out=pairs"]) == 0
    expected = (picture(3) + picture(5).rot90(-1, (-2, -1))) / 2
    torch.testing.assert_close(torch.load("pairs/anagram.pt"), expected.expand(2, 1, 8, 8))
    assert weights == [2.5, 2.5]
    assert main(["illusion", *common, "kind=hybrid", "labels=[3,5]", "std=2", "out=hybrid"]) == 0
    far, near = picture(3), picture(5)
    expected = low_pass(far, 2.0) + near - low_pass(near, 2.0)
    torch.testing.assert_close(torch.load("hybrid/hybrid.pt"), expected.expand(2, 1, 8, 8))


def test_illusions_and_guidance_need_a_conditional_image_model(toy_run, capsys):
    from {{ cookiecutter.package_name }}.cli import main

    assert main(["illusion", f"run={toy_run}", "labels=[0,1]"]) == 2
    assert "class-conditional" in capsys.readouterr().err           # 2D points, or no classes at all
    assert main(["guidance-grid", f"run={toy_run}"]) == 2
    assert "needs a class-conditional model" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["inpaint", "repaint", "superres", "dps", "sdedit"])
def test_restore_says_how_well_each_result_agrees_with_the_observation(digits_run, capsys, method):
    from {{ cookiecutter.package_name }}.cli import main

    assert main(["restore", f"run={digits_run}", f"method={method}", "images=[0,7]", "steps=4", "sampler=euler",
                 "resample=2", "mask=left"]) == 0
    out = capsys.readouterr().out
    assert (Path(digits_run) / f"restore/{method}.png").is_file()
    if method in ("inpaint", "repaint", "superres"):            # exact by construction (projection, replacement)
        consistency = float(out.split("|A(x) - y| = ")[1].split()[0])
        assert consistency < 1e-5, out
    else:
        assert ("measurement consistency" if method == "dps" else "RMS change from the input") in out


def test_inpainting_keeps_the_training_images_and_fills_the_masked_half_from_the_denoiser(digits_run, monkeypatch):
    """With a stand-in denoiser that always estimates the same picture c, inpainting training
    images 0 and 7 with mask=left must give those images on the right and c on the left: the
    command's images, mask and final replacement, each pinned."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.model import Model

    c = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)
    monkeypatch.setattr(Model, "guided", lambda self, n, guidance, labels=None, conditions=None:
                        lambda x, sigma: c.expand_as(x).to(x))
    assert main(["restore", f"run={digits_run}", "method=inpaint", "images=[0,7]", "steps=4", "mask=left"]) == 0
    data = DiffusionDataModule(load_config(["experiment=digits"]).data)
    data.setup()
    truth = data.reference_images()[[0, 7]].float() / 127.5 - 1
    restored = torch.load(Path(digits_run) / "restore" / "inpaint.pt")
    torch.testing.assert_close(restored[..., 4:], truth[..., 4:])
    torch.testing.assert_close(restored[..., :4], c.expand(2, 1, 8, 8)[..., :4])


def test_restores_seed_resample_factor_and_zeta_reach_the_method(digits_run, monkeypatch):
    """Each key of ``restore`` takes effect. seed: the same seed gives the same SDEdit, another
    seed another. Then, with a stand-in denoiser that always estimates the picture c:
    repaint's resample=3 makes three times inpaint's evaluations (three tries per step);
    superres with factor=4 gives DDNM's x = c + A^+(y - A c), A the 4x4 block mean and A^+ its
    repetition, i.e. c with each 4x4 block shifted to the original's block mean; dps pulls with
    the zeta given, else with ZETA's pixel default."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.commands import restore
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.model import Model

    common = [f"run={digits_run}", "images=[0,7]", "steps=4", "sampler=euler"]
    edits = []
    for seed in (1, 1, 2):
        assert main(["restore", *common, "method=sdedit", f"seed={seed}"]) == 0
        edits.append(torch.load(Path(digits_run) / "restore" / "sdedit.pt"))
    assert torch.equal(edits[0], edits[1]) and not torch.allclose(edits[0], edits[2])

    c = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)
    calls = []
    monkeypatch.setattr(Model, "guided", lambda self, n, guidance, labels=None, conditions=None:
                        lambda x, sigma: calls.append(1) or c.expand_as(x).to(x))
    counts = {}
    for method, resample in (("inpaint", 1), ("repaint", 3)):
        calls.clear()
        assert main(["restore", *common, f"method={method}", f"resample={resample}"]) == 0
        counts[method] = len(calls)
    assert counts["repaint"] == 3 * counts["inpaint"] > 0

    assert main(["restore", *common, "method=superres", "factor=4"]) == 0
    data = DiffusionDataModule(load_config(["experiment=digits"]).data)
    data.setup()
    truth = data.reference_images()[[0, 7]].float() / 127.5 - 1
    block_mean = lambda x: x.reshape(2, 1, 2, 4, 2, 4).mean((3, 5), keepdim=True)         # noqa: E731
    expected = (c.expand(2, 1, 8, 8).reshape(2, 1, 2, 4, 2, 4) - block_mean(c.expand(2, 1, 8, 8))
                + block_mean(truth)).reshape(2, 1, 8, 8)
    torch.testing.assert_close(torch.load(Path(digits_run) / "restore" / "superres.pt"), expected)

    pulls = []
    monkeypatch.setattr(restore, "PosteriorSampling",
                        lambda denoiser, degrade, y, zeta: pulls.append(zeta) or denoiser)
    assert main(["restore", *common, "method=dps", "zeta=2.5"]) == 0
    assert main(["restore", *common, "method=dps"]) == 0
    assert pulls == [2.5, restore.ZETA["data"]]


def test_restore_takes_a_degradation_of_your_own_and_refuses_what_cannot_work(digits_run, project_dir, capsys,
                                                                              monkeypatch):
    from {{ cookiecutter.package_name }}.cli import main

    (project_dir / "my_blur.py").write_text("import torch.nn.functional as F\n\n"
                                            "def blur(x):\n    return F.avg_pool2d(x, 3, stride=1, padding=1)\n")
    monkeypatch.syspath_prepend(str(project_dir))
    common = [f"run={digits_run}", "images=[1]", "steps=3", "sampler=euler"]
    assert main(["restore", *common, "method=dps", "degradation=my_blur:blur"]) == 0
    capsys.readouterr()
    for args, message in [(["method=colorize"], "colorize needs an RGB model"),
                          (["method=superres", "factor=3"], "factor=3 must divide the image size 8"),
                          (["method=dps", "degradation=nowhere:blur"], "does not name a function"),
                          (["method=inpaint", "images=[99999]"], "the training data has"),
                          (["method=sdedit", "strength=1.5"], "strength=1.5 must be in [0, 1]"),
                          ([], "restore needs method=")]:
        assert main(["restore", *common, *args]) == 2, args
        assert message in capsys.readouterr().err


def test_colorize_restores_colour_that_averages_to_the_observed_gray(project_dir, capsys):
    from {{ cookiecutter.package_name }}.cli import main

    torch.save(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), project_dir / "rgb.pt")
    assert main(["train", "data.name=tensor_file", "data.root=rgb.pt", "data.image_size=8", "data.channels=3",
                 "model.name=unet", "model.conditional=false", "model.unet.channels=8", "model.unet.channel_mult=[1,2]",
                 "model.unet.attention_levels=[]", "data.batch_size=8", "trainer.max_steps=3", "logger=csv",
                 "name=rgb", "evaluation.every_n_steps=0"]) == 0
    capsys.readouterr()
    assert main(["restore", "run=runs/rgb", "method=colorize", "images=[0,1]", "steps=4", "sampler=heun"]) == 0
    consistency = float(capsys.readouterr().out.split("|A(x) - y| = ")[1].split()[0])
    assert consistency < 1e-5
