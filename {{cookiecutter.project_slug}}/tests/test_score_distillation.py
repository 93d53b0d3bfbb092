"""Score distillation and the volume renderer against known answers: SDS on Gaussian data follows
the analytic gradient of DreamFusion's objective and settles at the data's mean; its gradient
holds no Jacobian of the denoiser; SDI's inverted noise takes DDIM back to where it started, and
its inversion follows the exact ODE; a uniform cube renders to its closed-form image, and the
renderer's gradients match finite differences."""
import math
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.diffusion.samplers import ddim
from {{ cookiecutter.package_name }}.tasks.interpolate import invert
from {{ cookiecutter.package_name }}.tasks.render import VoxelField, camera_axes, occupied, render_volume
from {{ cookiecutter.package_name }}.tasks.score_distillation import (
    WEIGHTS,
    Gaussians,
    Pixels,
    ddpm_sigma,
    distillation_loss,
    inversion_levels,
    noise_time,
    sdi_noise,
)

from test_diffusion import MU, STD, exact_ode_solution, gaussian_denoiser

pytestmark = pytest.mark.once


# -- SDS ------------------------------------------------------------------------------------------
def sds_gradient(x, sigma, eps, weighting="uniform", denoiser=gaussian_denoiser):
    x = x.clone().requires_grad_(True)
    distillation_loss(denoiser, x, sigma, eps, weighting).backward()
    return x.grad


@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
def test_sds_follows_the_gradient_of_dreamfusions_kl_objective_on_gaussian_data(sigma):
    """For x0 ~ N(MU, STD^2) the noised generator output x + sigma eps is N(x, sigma^2), the model's
    noised data N(MU, STD^2 + sigma^2), and DreamFusion's objective (its eq. 4, alpha = 1 in the
    sigma form) is sigma KL(N(x, sigma^2) || N(MU, STD^2 + sigma^2)), whose gradient is
    sigma (x - MU) / (STD^2 + sigma^2). The mean SDS step over many eps must match it within
    five standard errors, per coordinate."""
    x = torch.tensor([[3.0, 1.0]], dtype=torch.float64).expand(20_000, 2)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = sds_gradient(x, sigma, eps)
    analytic = sigma * (x[0] - MU) / (STD**2 + sigma**2)
    error = steps.std(0) / math.sqrt(len(steps))
    assert ((steps.mean(0) - analytic).abs() < 5 * error).all(), (steps.mean(0), analytic)
    assert (analytic.abs() > 20 * error).all()          # a gradient the test can tell from zero


def test_each_weighting_scales_the_noise_residual_as_its_paper_says():
    """w(sigma) (eps_hat - eps) with eps_hat = (x_sigma - D) / sigma, written out here."""
    sigma = 1.5
    x, eps = torch.tensor([[2.0, -1.0]], dtype=torch.float64), torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    x_sigma = x + sigma * eps
    residual = (x_sigma - gaussian_denoiser(x_sigma, torch.tensor([sigma]))) / sigma - eps
    expected = {"dreamfusion": sigma**2 / (1 + sigma**2), "uniform": 1.0, "x0": sigma}
    assert set(expected) == set(WEIGHTS)
    for name, weight in expected.items():
        torch.testing.assert_close(sds_gradient(x, sigma, eps, name), weight * residual, rtol=1e-12, atol=0)


def test_the_sds_gradient_holds_no_jacobian_of_the_denoiser():
    """A denoiser whose output depends on x (through autograd, too) and the same denoiser with its
    output detached must give the very same update: the Jacobian is left out."""
    x, eps = torch.tensor([[2.0, -1.0], [0.5, 0.5]]), torch.tensor([[0.3, -0.7], [1.0, 0.2]])

    def detached(x, sigma):
        return gaussian_denoiser(x, sigma).detach()

    with torch.enable_grad():
        torch.testing.assert_close(sds_gradient(x, 0.8, eps, "x0"), sds_gradient(x, 0.8, eps, "x0", detached),
                                   rtol=0, atol=0)


def test_sds_on_pixels_settles_at_the_data_mean_mode_seeking():
    """Plain gradient descent on a batch of points with SDS and fresh noise (a step size falling to
    0): they all gather at MU (the mode), within a small fraction of the data's spread STD, instead
    of spreading like the data (the mode-seeking behaviour the papers describe)."""
    torch.manual_seed(0)
    g = Pixels(64, (2,))
    with torch.no_grad():
        g.x.copy_(4 * torch.randn(64, 2))
    steps = 300
    optimiser = torch.optim.SGD(g.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 1 - k / steps)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = g().double()
        sigma = ddpm_sigma(noise_time(step / (steps - 1), (0.02, 0.98), 0.98, "random", generator))
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        optimiser.zero_grad()
        distillation_loss(gaussian_denoiser, x, sigma, eps).backward()
        optimiser.step()
        schedule.step()
    final = g.x.detach().double()
    assert (final.mean(0) - MU).abs().max() < 0.05 * STD.min(), final.mean(0)
    assert (final.std(0) < 0.15 * STD).all(), final.std(0)


def test_noise_levels_are_ddpm_steps_in_range_annealed_or_descending():
    from {{ cookiecutter.package_name }}.diffusion.schedules import ddpm_linear_sigmas

    table, generator = ddpm_linear_sigmas(), torch.Generator().manual_seed(0)

    def drawn(progress):
        return torch.tensor([noise_time(progress, (0.02, 0.98), 0.5, "random", generator) for _ in range(400)],
                            dtype=torch.float64)

    start, end = drawn(0.0), drawn(1.0)
    assert start.min() >= 0.02 and start.max() <= 0.98 and start.max() > 0.9 and end.max() <= 0.5
    assert [noise_time(k / 10, (0.1, 0.9), 0.5, "descending") for k in range(11)] == pytest.approx(
        [0.9 - 0.08 * k for k in range(11)])
    assert [ddpm_sigma(t) for t in (0.0, 0.5, 1.0, 1.2, -0.1)] == table[[0, 500, 999, 999, 0]].tolist()
    torch.manual_seed(1)
    first = noise_time(0.3, (0.02, 0.98), 0.5, "random", torch.Generator().manual_seed(5))
    torch.manual_seed(2)                                # the generator, not torch's global state, draws t
    assert noise_time(0.3, (0.02, 0.98), 0.5, "random", torch.Generator().manual_seed(5)) == first


# -- SDI ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.5, 5.0])
def test_sdis_inversion_follows_the_exact_ode_and_ddim_takes_it_back(sigma):
    """SDI's inverted state x + sigma kappa approaches the exact probability-flow solution from
    level 0 (first order: the error falls about tenfold with tenfold the steps), and DDIM down
    the same levels takes it back to x to the same accuracy."""
    x = torch.tensor([[3.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    exact = exact_ode_solution(x, 0.0, sigma)
    errors = []
    for steps in (10, 100):
        inverted = x + sigma * sdi_noise(gaussian_denoiser, x, sigma, steps)
        torch.testing.assert_close(inverted, invert(gaussian_denoiser, inversion_levels(sigma, steps), x, ddim))
        errors.append((inverted - exact).abs().max().item())
        assert (ddim(gaussian_denoiser, inversion_levels(sigma, steps), inverted).x - x).abs().max() < 3 * errors[-1]
    assert errors[1] < errors[0] / 5, errors


def test_an_sdi_step_moves_x_to_the_denoised_inverted_state():
    """With SDI's noise the whole step (weighting x0) is x - D(x_sigma, sigma) for the inverted
    state x_sigma: x moves to the model's estimate of the clean image there."""
    x, sigma = torch.tensor([[3.0, 1.0]], dtype=torch.float64), 2.0
    kappa = sdi_noise(gaussian_denoiser, x, sigma, 20)
    assert torch.equal(kappa, sdi_noise(gaussian_denoiser, x, sigma, 20))          # deterministic
    inverted = invert(gaussian_denoiser, inversion_levels(sigma, 20), x, ddim)
    torch.testing.assert_close(x - sds_gradient(x, sigma, kappa, "x0"),
                               gaussian_denoiser(inverted, torch.tensor([sigma])), rtol=1e-12, atol=1e-12)


def test_inversion_levels_climb_evenly_in_t_from_zero():
    levels = inversion_levels(3.0, 6)
    t = levels / (1 + levels)
    assert levels[0] == 3.0 and levels[-1] == 0 and len(levels) == 7
    torch.testing.assert_close(t.diff(), torch.full((6,), -0.75 / 6, dtype=torch.float64))


# -- generators and the renderer --------------------------------------------------------------------
def test_gaussian_splats_composite_front_to_back():
    """One splat of opacity a and colour c over the background 0 paints a G c; a second one under
    it is seen through the first: (1 - a1 G1) a2 G2 c2 added."""
    g = Gaussians(1, (1, 5, 5), splats=2)
    with torch.no_grad():
        g.position.copy_(torch.tensor([[[0.0, 0.0], [0.5, -0.5]]]))
        g.log_size.copy_(torch.log(torch.tensor([[0.4, 0.7]])))
        g.raw_colour.copy_(torch.atanh(torch.tensor([[[0.8], [-0.6]]])))
        g.raw_opacity.copy_(torch.logit(torch.tensor([[0.9, 0.5]])))
    side = torch.linspace(-1, 1, 5)
    y, x = torch.meshgrid(side, side, indexing="ij")
    a1 = 0.9 * torch.exp(-0.5 * (x**2 + y**2) / 0.4**2)
    a2 = 0.5 * torch.exp(-0.5 * ((x - 0.5) ** 2 + (y + 0.5) ** 2) / 0.7**2)
    torch.testing.assert_close(g()[0, 0], a1 * 0.8 + (1 - a1) * a2 * -0.6)


def test_gaussian_splats_start_spread_over_the_image_from_their_seed():
    """2,000 splats: positions uniform over [-1, 1]^2 (reaching its corners), widths
    2 / sqrt(2000), opacity 1/2, colours tanh(0.1 z); the same seed draws the same splats whatever
    torch's global state."""
    torch.manual_seed(1)
    g = Gaussians(2, (3, 4, 4), splats=2000, generator=torch.Generator().manual_seed(0))
    position = g.position.detach()
    assert position.abs().max() <= 1 and (position.amin((0, 1)) < -0.99).all() and (position.amax((0, 1)) > 0.99).all()
    assert position.mean().abs() < 0.03 and position.var().item() == pytest.approx(1 / 3, rel=0.05)  # U(-1, 1)
    torch.testing.assert_close(g.log_size.exp(), torch.full((2, 2000), 2 / math.sqrt(2000)))
    assert torch.equal(torch.sigmoid(g.raw_opacity), torch.full((2, 2000), 0.5))
    assert g.raw_colour.std().item() == pytest.approx(0.1, rel=0.05) and g.raw_colour.mean().abs() < 0.005
    torch.manual_seed(2)
    again = Gaussians(2, (3, 4, 4), splats=2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(), g())


def test_a_voxel_field_renders_and_counts_with_the_settings_it_is_given():
    """VoxelField.render is render_volume mapped to [-1, 1] with every setting passed on (the
    samples, the background, the field of view: each pair of settings below renders differently),
    and occupancy counts at the threshold it is given: voxels of density 2 on a side of 2/5 stop
    1 - e^-0.8 = 55% of a ray."""
    field = VoxelField(resolution=6, channels=1, initial_density=2.0)
    with torch.no_grad():
        field.raw_colour.normal_(generator=torch.Generator().manual_seed(0))
    azimuth, elevation = torch.tensor([30.0]), torch.tensor([20.0])
    images = []
    for samples, background, fov in [(5, 0.0, None), (40, 1.0, 50.0)]:
        image = field.render(azimuth, elevation, 8, samples, background=background, fov=fov)
        expected = render_volume(field.density, field.colour, azimuth, elevation, 8, samples, background=background,
                                 fov=fov)
        torch.testing.assert_close(image, 2 * expected - 1)
        images.append(image)
    assert (images[0] - images[1]).abs().max() > 0.1
    assert field.occupancy(0.5).all() and not field.occupancy(0.6).any()


def test_a_uniform_cube_renders_to_its_closed_form_image():
    """Density s on the voxels of a cube n voxels wide (trilinear in between, so a ray crossing it
    integrates s n h, h the voxel spacing), colour c everywhere: seen along an axis, every pixel
    inside the cube's outline is c (1 - T) + background T with T = exp(-s n h), every pixel well
    outside it is the background; the same from every side."""
    R, s, c, background = 9, 1.5, 0.3, 0.8
    h = 2 / (R - 1)
    density = torch.zeros(R, R, R, dtype=torch.float64)
    density[2:7, 2:7, 2:7] = s                               # voxels 2..6: from -0.5 to 0.5
    colour = torch.full((3, R, R, R), c, dtype=torch.float64)
    T = math.exp(-s * 5 * h)
    for azimuth, elevation in [(0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]:
        image = render_volume(density, colour, torch.tensor([azimuth]), torch.tensor([elevation]), 16,
                              samples=4 * (R - 1), extent=1.0, background=background)[0]
        centre = (torch.arange(16) + 0.5) / 16 * 2 - 1
        inside = centre.abs() < 0.5 - 1e-9
        outside = centre.abs() > 0.75
        torch.testing.assert_close(image[:, inside][:, :, inside], torch.full_like(image[:, inside][:, :, inside],
                                   c * (1 - T) + background * T), rtol=0, atol=1e-6)
        far = outside[:, None] | outside[None, :]
        assert torch.allclose(image[:, far], torch.tensor(background, dtype=torch.float64))


def test_density_and_colour_varying_along_the_ray_composite_front_to_back():
    """Density 2 everywhere, colour (z + 1) / 2 (1 at the front, z = 1, 0 at the back): seen from
    azimuth 0 the ray meets colour 1 - s / 2 at depth s, and the emission-absorption integral is
    (1 - e^-4) - (1/2 - e^-4 (2 + 1/2)) / 2 + b e^-4 in closed form. A linear density a (z + 1)
    lets through exp(-2a), exactly at the midpoints."""
    R, b = 17, 0.5
    z = torch.linspace(-1, 1, R, dtype=torch.float64).view(R, 1, 1).expand(R, R, R)
    colour = ((z + 1) / 2)[None]
    image = render_volume(torch.full((R, R, R), 2.0, dtype=torch.float64), colour, torch.tensor([0.0]),
                          torch.tensor([0.0]), 4, samples=512, extent=1.0, background=b)
    e = math.exp(-4)
    expected = (1 - e) - (0.5 - e * 2.5) / 2 + b * e
    torch.testing.assert_close(image, torch.full_like(image, expected), rtol=0, atol=1e-4)
    ramp = 0.7 * (z + 1)
    dark = render_volume(ramp, torch.zeros(1, R, R, R, dtype=torch.float64), torch.tensor([0.0]),
                         torch.tensor([0.0]), 4, samples=4 * (R - 1), extent=1.0, background=1.0)
    torch.testing.assert_close(dark, torch.full_like(dark, math.exp(-1.4)), rtol=0, atol=1e-12)


def test_cameras_see_the_right_side_on_the_right():
    """From azimuth 0 (on +z) the +x half of the grid is on the image's right; from azimuth 90 (on
    +x) the -z half is; from above (elevation 90) the image's top is -z. Axes are orthonormal."""
    R = 9
    colour = torch.ones(1, R, R, R)
    for azimuth, elevation, filled, dark in [(0, 0, (slice(None), slice(None), slice(6, None)), "right"),
                                             (90, 0, (slice(0, 3), slice(None), slice(None)), "right"),
                                             (0, 89.9, (slice(0, 3), slice(None), slice(None)), "top")]:
        density = torch.zeros(R, R, R)
        density[filled] = 5.0
        image = render_volume(density, colour * 0, torch.tensor([float(azimuth)]), torch.tensor([float(elevation)]),
                              8, samples=32, extent=1.0)[0, 0]
        half = image[:, 4:] if dark == "right" else image[:4]
        other = image[:, :4] if dark == "right" else image[4:]
        assert half.mean() < 0.3 < 0.9 < other.mean(), (azimuth, elevation, image)
    right, up, forward = camera_axes(torch.tensor([30.0, 200.0]), torch.tensor([10.0, -40.0]))
    frame = torch.stack([right, up, forward], dim=1)
    torch.testing.assert_close(frame @ frame.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


def test_a_pinhole_camera_projects_points_as_a_pinhole_does_and_tends_to_the_orthographic_one():
    """A small dense blob at p, seen from azimuth 0 (eye on +z at distance d = extent / sin(fov/2)):
    the centre of its shadow lies at the pinhole projection u = p_x / (tan(fov/2) (d - p_z)),
    v = -p_y / (tan(fov/2) (d - p_z)) in [-1, 1] (columns right, rows down); the same blob nearer
    the camera lands further from the centre, where an orthographic camera puts both at p_x /
    extent. Along each ray the samples are 2 extent / samples apart: a density linear in depth
    integrates to its closed form. A field of view of almost 0 seen from almost infinitely far is
    orthographic."""
    R, size, fov, extent = 41, 64, 60.0, math.sqrt(3)
    axis = torch.linspace(-1, 1, R, dtype=torch.float64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    dark = torch.zeros(1, R, R, R, dtype=torch.float64)
    distance, tan = extent / math.sin(math.radians(fov / 2)), math.tan(math.radians(fov / 2))

    def shadow_centre(p, fov):
        density = 40 * torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 0.06**2))
        shade = 1 - render_volume(density, dark, torch.tensor([0.0]), torch.tensor([0.0]), size, samples=256,
                                  fov=fov)[0, 0]
        pixels = torch.arange(size, dtype=torch.float64)
        return [((shade.sum(axis) * pixels).sum() / shade.sum()).item() for axis in (0, 1)]   # column, row

    pixel = lambda u: (u + 1) / 2 * size - 0.5                                  # noqa: E731
    for p in [(0.5, 0.0, 0.7), (0.5, 0.0, -0.7), (-0.3, 0.4, 0.2)]:
        depth = distance - p[2]
        expected = [pixel(p[0] / (tan * depth)), pixel(-p[1] / (tan * depth))]
        assert shadow_centre(p, fov) == pytest.approx(expected, abs=0.1)
        assert shadow_centre(p, None) == pytest.approx([pixel(p[0] / extent), pixel(-p[1] / extent)], abs=0.1)
    assert shadow_centre((0.5, 0.0, 0.7), fov)[0] - shadow_centre((0.5, 0.0, -0.7), fov)[0] > 3
    # Density 2 + z (exact under trilinear interpolation), every sample inside the cube: a ray at
    # angle theta to the axis meets z = d - t cos(theta) at t in [d - e, d + e], so its optical depth
    # is 2 e (2 + d (1 - cos(theta))), with tan(theta)^2 = tan(fov/2)^2 (u^2 + v^2).
    e = 0.5
    shade = render_volume(2 + z, dark, torch.tensor([0.0]), torch.tensor([0.0]), 8, samples=64, extent=e,
                          fov=fov)[0, 0]
    side = (torch.arange(8, dtype=torch.float64) + 0.5) / 8 * 2 - 1
    cos = (1 + tan**2 * (side[:, None] ** 2 + side[None, :] ** 2)).rsqrt()
    d = e / math.sin(math.radians(fov / 2))
    torch.testing.assert_close(shade, torch.exp(-2 * e * (2 + d * (1 - cos))), rtol=0, atol=1e-9)
    density = torch.rand(9, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    colour = torch.rand(3, 9, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    views = [torch.tensor([30.0]), torch.tensor([20.0]), 12]
    torch.testing.assert_close(render_volume(density, colour, *views, fov=1e-4), render_volume(density, colour, *views),
                               rtol=0, atol=1e-5)


def test_the_renderers_gradients_match_finite_differences():
    torch.manual_seed(0)
    density = (torch.rand(4, 4, 4, dtype=torch.float64) * 2).requires_grad_(True)
    colour = torch.rand(2, 4, 4, 4, dtype=torch.float64).requires_grad_(True)

    for fov in (None, 50.0):
        def image(density, colour, fov=fov):
            return render_volume(density, colour, torch.tensor([30.0]), torch.tensor([20.0]), 3, samples=7,
                                 extent=1.2, fov=fov)

        assert torch.autograd.gradcheck(image, (density, colour), eps=1e-6, atol=1e-6)


def test_a_voxel_field_starts_as_a_faint_haze_and_reports_what_it_occupies():
    field = VoxelField(8, 3, initial_density=0.1)
    torch.testing.assert_close(field.density, torch.full((8, 8, 8), 0.1))
    assert not field.occupancy().any()
    with torch.no_grad():
        field.raw_density[2:4, 2:4, 2:4] = 20.0
    assert field.occupancy().sum() == 8
    side = 2 / 7                                        # a voxel's side: 8 voxel centres span [-1, 1]
    edge = -math.log(1 - 0.1) / side                    # the density that stops exactly a tenth of a ray
    assert occupied(torch.full((8, 8, 8), edge * 1.001)).all()
    assert not occupied(torch.full((8, 8, 8), edge * 0.999)).any()
    image = field.render(torch.tensor([0.0]), torch.tensor([0.0]), 8)
    assert image.shape == (1, 3, 8, 8) and image.min() >= -1 and image.max() <= 1


# -- the command ------------------------------------------------------------------------------------
def test_score_distill_writes_images_progress_and_a_field_a_viewer_opens(digits_run):
    """Every generator for a few steps on a tiny digits run: the pictures, the curves, the tensors,
    and for voxels a turntable and a PLY point cloud that plyfile reads back with the field's
    occupied voxels and their colours."""
    import plyfile

    from {{ cookiecutter.package_name }}.cli import main

    for generator, method in (("pixels", "sds"), ("gaussians", "sdi"), ("voxels", "sdi")):
        assert main(["score-distill", f"run={digits_run}", f"generator={generator}", f"method={method}", "steps=3",
                     "n=2", "labels=[3,7]", "splats=10", "resolution=8", "samples=16", "inversion_steps=2",
                     "fov=40"]) == 0
        out = Path(digits_run) / "score_distill" / f"{method}-{generator}"
        for name in ("result.png", "progress.png", "result.pt", "made_by.yaml"):
            assert (out / name).is_file(), (generator, name)
    images = torch.load(Path(digits_run) / "score_distill" / "sds-pixels" / "result.pt")
    assert images.shape == (2, 1, 8, 8) and type(images) is torch.Tensor and not images.requires_grad
    out = Path(digits_run) / "score_distill" / "sdi-voxels"
    assert (out / "turntable.gif").is_file()
    field = torch.load(out / "result.pt")
    occupied = 1 - torch.exp(-field["density"] * 2 / 7) > 0.5
    vertices = plyfile.PlyData.read(out / "field.ply")["vertex"]
    assert len(vertices) == occupied.sum()
    assert main(["score-distill", f"run={digits_run}", "generator=voxels", "method=sdi", "steps=3", "labels=[3,7]",
                 "n=2", "resolution=8", "samples=16", "inversion_steps=2", "out=orthographic"]) == 0
    assert not torch.equal(torch.load("orthographic/result.pt")["density"], field["density"])    # the cameras differ


def test_every_setting_of_score_distill_reaches_its_step(digits_run, monkeypatch):
    """lr, guidance, weighting, t_range, t_max_end, schedule, inversion_steps and splats reach
    the optimiser, the guided denoiser, the loss, the noise levels, SDI's inversion and the
    splats; samples, background, fov and elevation reach the renderer (elevations drawn across
    the range given)."""
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.commands import score_distill as command
    from {{ cookiecutter.package_name }}.model import Model
    from {{ cookiecutter.package_name }}.tasks.render import VoxelField

    seen = {}

    def spy(name, real, *keys):
        def call(*args, **kwargs):
            seen.setdefault(name, []).append(tuple(kwargs[key] if isinstance(key, str) else args[key] for key in keys))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(torch.optim, "Adam", spy("lr", torch.optim.Adam, "lr"))
    monkeypatch.setattr(Model, "guided", spy("guidance", Model.guided, 2))
    monkeypatch.setattr(command, "distillation_loss", spy("weighting", command.distillation_loss, 4))
    monkeypatch.setattr(command, "noise_time", spy("levels", command.noise_time, 1, 2, 3))
    monkeypatch.setattr(command, "sdi_noise", spy("inversion", command.sdi_noise, 3))
    monkeypatch.setattr(command, "Gaussians", spy("splats", command.Gaussians, 2))
    monkeypatch.setattr(VoxelField, "render", spy("render", VoxelField.render, 2, 4, 5, 6))
    common = [f"run={digits_run}", "steps=2", "labels=[3]", "lr=0.2", "guidance=1.5", "weighting=uniform",
              "t_range=[0.1,0.9]", "t_max_end=0.5", "schedule=random"]
    assert main(["score-distill", *common, "generator=gaussians", "method=sdi", "inversion_steps=3", "splats=7",
                 "n=2"]) == 0
    assert main(["score-distill", *common, "generator=voxels", "resolution=8", "samples=12", "background=0.3",
                 "fov=50", "elevation=[10,20]", "n=64"]) == 0
    assert seen["lr"] == [(0.2,)] * 2 and seen["guidance"] == [(1.5,)] * 4 and seen["weighting"] == [("uniform",)] * 4
    assert seen["levels"] == [((0.1, 0.9), 0.5, "random")] * 4 and seen["inversion"] == [(3,)] * 2
    assert seen["splats"] == [(7,)]
    assert {entry[1:] for entry in seen["render"][:2]} == {(12, 0.3, 50)}        # the two steps' views
    elevations = torch.cat([entry[0] for entry in seen["render"][:2]])
    assert 10 <= elevations.min() < 11 and 19 < elevations.max() <= 20
    for method, schedule in (("sds", "random"), ("sdi", "descending")):        # each paper's own, by default
        assert main(["score-distill", f"run={digits_run}", "steps=1", "labels=[3]", f"method={method}", "n=1"]) == 0
        assert seen["levels"][-1][2] == schedule


def test_a_dense_field_is_written_as_the_points_and_colours_of_its_voxels(tmp_path):
    import plyfile

    from {{ cookiecutter.package_name }}.visualize import save_point_cloud

    occupied = torch.zeros(5, 5, 5, dtype=torch.bool)
    occupied[4, 2, 0] = occupied[0, 0, 4] = True                # (z, y, x): (1, 0, -1) and (-1, -1, 1)
    colour = torch.zeros(3, 5, 5, 5)
    colour[:, 4, 2, 0] = torch.tensor([1.0, 0.5, 0.0])
    vertices = plyfile.PlyData.read(save_point_cloud(occupied, colour, tmp_path / "f.ply"))["vertex"]
    points = sorted(zip(vertices["x"].tolist(), vertices["y"].tolist(), vertices["z"].tolist(),
                        vertices["red"].tolist(), vertices["green"].tolist(), vertices["blue"].tolist()))
    assert points == [(-1.0, 0.0, 1.0, 255, 128, 0), (1.0, -1.0, -1.0, 0, 0, 0)]


def test_cameras_take_the_view_label_nearest_them_around_the_circle():
    from {{ cookiecutter.package_name }}.commands.score_distill import nearest_views

    views = torch.tensor([0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0])
    assert nearest_views(torch.tensor([359.0, 10.0, 30.0, 200.0, 337.0, 338.0]), views).tolist() == [0, 0, 1, 4, 7, 0]


def test_bad_settings_are_one_line_errors(digits_run, capsys):
    from {{ cookiecutter.package_name }}.cli import main

    for setting, says in (("t_range=[0.5,0.2]", "t_range"), ("weighting=snr", "weighting=snr: one of"),
                          ("elevation=[10]", "elevation"), ("generator=nerf", "generator"),
                          ("resolution=1", "resolution >= 2"), ("splats=0", "'splats'"), ("fov=180", "fov=180")):
        assert main(["score-distill", f"run={digits_run}", setting, "steps=1"]) == 2
        assert says in capsys.readouterr().err


@pytest.mark.pretrained
def test_a_tiny_stable_diffusion_pipeline_distils_latents_and_a_field(tmp_path, project_dir, capsys):
    """Offline, on the tiny text-to-image pipeline of test_pretrained.py: SDS on its latents with a
    prompt, and SDI on a voxel field whose renders are encoded by its VAE (gradients through the
    encoder) with the front, side and back views added to the prompt."""
    pytest.importorskip("diffusers")
    from {{ cookiecutter.package_name }}.cli import main

    from test_pretrained import text_pipeline

    folder = text_pipeline(tmp_path / "tiny-sd")
    assert main(["score-distill", f"run={folder}", "steps=1"]) == 2
    assert "give prompts as labels" in capsys.readouterr().err
    assert main(["score-distill", f"run={folder}", "labels=[a red car]", "steps=2", "n=1", "out=latents"]) == 0
    assert torch.load("latents/result.pt").shape == (1, 3, 16, 16)
    assert main(["score-distill", f"run={folder}", "labels=[a red car]", "generator=voxels", "method=sdi", "steps=2",
                 "n=2", "resolution=8", "samples=8", "inversion_steps=2", "out=field"]) == 0
    field = torch.load("field/result.pt")
    assert field["density"].shape == (8, 8, 8) and not torch.equal(field["density"], torch.full((8, 8, 8), 0.1))
