"""Few-step students: reflow and consistency models against the known answers of Gaussian data
(its probability-flow map is linear and closed form, and so is its consistency function), the
pairs' cache, and the student as an ordinary run."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.config import load_config, student_config
from {{ cookiecutter.package_name }}.diffusion.distillation import (
    ConsistencyDistillation,
    ConsistencyTuning,
    consistency_loss,
    heun_step,
    pseudo_huber,
    reflow_noise,
)
from {{ cookiecutter.package_name }}.diffusion.samplers import consistency, ddim
from {{ cookiecutter.package_name }}.diffusion.schedules import LogNormalNoise, karras_sigmas, uniform_t_sigmas
from {{ cookiecutter.package_name }}.errors import ConfigError
from {{ cookiecutter.package_name }}.model import Model
from {{ cookiecutter.package_name }}.pairs import reflow_pairs
from {{ cookiecutter.package_name }}.runs import load_run, new_model, new_student

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64)
SIGMA_MAX = 80.0
TEACHER_SAMPLING = ["sampling.sampler=dpmpp_2m", "sampling.steps=200", "sampling.schedule=karras",
                    f"sampling.sigma_max={SIGMA_MAX}"]


def ode_endpoint(z: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE of x0 ~ N(MU, STD^2) takes x = SIGMA_MAX z at sigma = 0: it
    keeps (x - MU) / sqrt(STD^2 + sigma^2) constant."""
    return MU + (SIGMA_MAX * z.double() - MU) * STD / torch.sqrt(STD**2 + SIGMA_MAX**2)


class GaussianDenoiser(nn.Module):
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(MU, STD^2), as a network that counts the rows it sees."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mu", MU.clone())
        self.rows = 0

    def forward(self, x, sigma, labels=None):
        self.rows += len(x)
        s2 = sigma.double()[:, None] ** 2
        return (self.mu + STD**2 / (STD**2 + s2) * (x.double() - self.mu)).to(x.dtype)


def consistency_function(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The end at sigma = 0 of the probability-flow ODE path of x0 ~ N(MU, STD^2) through x at
    level sigma (Song et al. 2023's f(x, sigma)), from the invariant above."""
    return MU + (x.double() - MU) * STD / torch.sqrt(STD**2 + sigma**2)


def gaussian_teacher(*overrides: str) -> Model:
    cfg = load_config(["experiment=toy2d", "model.conditional=false", *TEACHER_SAMPLING, *overrides])
    return Model(GaussianDenoiser(), LogNormalNoise(), (2,), cfg, origin={"checkpoint": "gaussian", "step": 0})


def test_euler_steps_of_the_ideal_reflow_of_gaussian_pairs_land_on_the_teachers_ode_endpoint():
    """Reflow's pairs join sigma_max z to the teacher's ODE endpoint x0(z) by the line x0 + sigma n,
    n = reflow_noise(z, x0, sigma_max). For Gaussian data x0(z) is linear in z, so the ideal
    student, E[x0 | x0 + sigma n = x], is linear in x at every sigma (least squares finds it
    exactly), its paths are straight, and Euler's method lands on x0(z) exactly with one step or
    with three, where the teacher's own single step lands near the mean (Liu et al. 2023, §2)."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 2, generator=generator, dtype=torch.float64)
    x0 = ode_endpoint(z)
    n = reflow_noise(z, x0, SIGMA_MAX)

    def ideal_student(x, sigma):
        """The least-squares (here exact) linear map from x0 + sigma n to x0 over the pairs."""
        affine = lambda points: torch.cat([points, torch.ones(len(points), 1, dtype=points.dtype)], 1)  # noqa: E731
        coefficients = torch.linalg.lstsq(affine(x0 + sigma[0].item() * n), x0).solution
        return affine(x) @ coefficients

    fresh = torch.randn(100, 2, generator=generator, dtype=torch.float64)
    for steps in (1, 3):
        sigmas = uniform_t_sigmas(steps, SIGMA_MAX)
        landed = ddim(ideal_student, sigmas, SIGMA_MAX * fresh, eta=0.0).x
        assert torch.allclose(landed, ode_endpoint(fresh), atol=1e-9), steps
    teacher_step = ddim(GaussianDenoiser(), uniform_t_sigmas(1, SIGMA_MAX), SIGMA_MAX * fresh, eta=0.0).x
    assert (teacher_step - ode_endpoint(fresh)).abs().max() > 1.0


def test_pairs_are_the_teachers_ode_map_of_numbered_noise_whatever_the_batch(tmp_path):
    """Pair i is the teacher's sample from the noise of seed + i, paired with the noise of the line
    through SIGMA_MAX z, in shards of distill.shard_size, the same whatever the batch size."""
    teacher = gaussian_teacher()
    pairs = reflow_pairs(teacher, teacher.config.sampling, tmp_path / "a", 10, 4, 3, seed=5)
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["000000.pt", "000001.pt", "000002.pt",
                                                                        "about.json"]
    z = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(5 + i)) for i in range(10)])
    assert pairs.x0.shape == pairs.noise.shape == (10, 2) and pairs.labels is None
    assert torch.allclose(pairs.x0.double(), ode_endpoint(z), atol=2e-3)        # 200 DPM-Solver++ steps
    assert torch.allclose(pairs.x0 + SIGMA_MAX * pairs.noise, SIGMA_MAX * z, atol=1e-4)
    again = reflow_pairs(teacher, teacher.config.sampling, tmp_path / "b", 10, 4, 7, seed=5)
    assert torch.equal(again.x0, pairs.x0) and torch.equal(again.noise, pairs.noise)
    assert again.fingerprint == pairs.fingerprint
    other = reflow_pairs(teacher, teacher.config.sampling, tmp_path / "c", 10, 4, 7, seed=6)
    assert not torch.equal(other.x0, pairs.x0) and other.fingerprint != pairs.fingerprint


class PointsByLabel(nn.Module):
    """The ideal denoiser of data that is one point per class, MEANS[label] (the null label's
    point is the unconditional mean): it returns that point whatever x and sigma."""

    def __init__(self):
        super().__init__()
        self.register_buffer("means", torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.5, 1.5]]))

    def forward(self, x, sigma, labels):
        return self.means[labels].to(x.dtype)


def test_a_conditional_teachers_pairs_take_the_labels_in_turn_and_its_guidance(tmp_path):
    """Pair i of a conditional teacher is drawn towards label i mod 2 (``default_labels``) with
    the guidance of its sampling section, w = 3: every sampler ends on the guided denoiser's last
    estimate, here w MEANS[label] + (1 - w) MEANS[null] exactly."""
    from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels

    cfg = load_config(["experiment=toy2d", "model.conditional=false", *TEACHER_SAMPLING, "sampling.steps=5",
                       "sampling.guidance=3.0"])
    teacher = Model(PointsByLabel(), LogNormalNoise(), (2,), cfg, ClassLabels(2), ["a", "b"],
                    origin={"checkpoint": "points", "step": 0})
    pairs = reflow_pairs(teacher, cfg.sampling, tmp_path, 6, 6, 3, seed=0)     # batches of 3: the turn goes on
    means = teacher.denoiser.means
    assert pairs.labels.tolist() == [0, 1, 0, 1, 0, 1] and pairs.class_names == ["a", "b"]
    assert torch.allclose(pairs.x0, 3 * means[pairs.labels] - 2 * means[2], atol=1e-6)


def test_pairs_resume_at_the_missing_shard_and_refuse_other_settings(tmp_path):
    """An interrupted generation leaves whole shards only; the same call draws just the missing
    ones. A folder made with other settings, a stochastic sampler and a damaged shard are each
    refused with what to do."""
    teacher = gaussian_teacher()
    sampling = teacher.config.sampling
    first = reflow_pairs(teacher, sampling, tmp_path, 12, 4, 4, seed=0)
    rows_for_all = teacher.denoiser.rows
    (tmp_path / "000001.pt").unlink()
    (tmp_path / "000002.pt.123.partial").write_bytes(b"cut short")
    teacher.denoiser.rows = 0
    resumed = reflow_pairs(teacher, sampling, tmp_path, 12, 4, 4, seed=0)
    assert teacher.denoiser.rows * 3 == rows_for_all                  # one shard of three drawn again
    assert torch.equal(resumed.x0, first.x0) and torch.equal(resumed.noise, first.noise)
    with pytest.raises(ConfigError, match="other settings \\(seed, count differ\\).*name=<new name>"):
        reflow_pairs(teacher, sampling, tmp_path, 16, 4, 4, seed=1)
    stochastic = load_config(["experiment=toy2d", "sampling.sampler=ddpm"]).sampling
    with pytest.raises(ConfigError, match="sampler ddpm draws fresh noise.*teacher_sampling.sampler=dpmpp_2m"):
        reflow_pairs(teacher, stochastic, tmp_path / "d", 12, 4, 4, seed=0)
    (tmp_path / "000000.pt").write_bytes(b"damaged")
    with pytest.raises(ConfigError, match="000000.pt is not a readable shard.*delete it.*draws it again"):
        reflow_pairs(teacher, sampling, tmp_path, 12, 4, 4, seed=0)


@pytest.mark.once
@pytest.mark.parametrize("train_noise, bound", [("uniform_t", 0.15), ("start", 0.1)])
def test_a_student_trained_on_gaussian_pairs_lands_near_the_teachers_endpoint_in_one_step(tmp_path, train_noise,
                                                                                           bound):
    """A small MLP student, trained on 2,000 pairs of the Gaussian teacher with the training
    levels uniform in t (diffusion.train_noise=uniform_t), maps fresh noise in one Euler step to
    within 0.15 (RMS) of where the teacher's exact ODE takes it; the teacher's own single step
    misses by about the data's spread. Trained at sigma_max alone (train_noise=start: Liu et al.'s
    one-step distillation), where that step is taken, it lands closer still."""
    teacher = gaussian_teacher()
    pairs = reflow_pairs(teacher, teacher.config.sampling, tmp_path, 2000, 1000, 1000, seed=0)
    torch.manual_seed(0)
    cfg = load_config(["experiment=toy2d", "model.conditional=false", "diffusion.objective=edm",
                       f"diffusion.train_noise={train_noise}", "model.mlp.width=64", "model.mlp.depth=2",
                       "sampling.sampler=euler", "sampling.schedule=uniform_t", "sampling.steps=1",
                       f"sampling.sigma_max={SIGMA_MAX}"])
    student = new_model(cfg, [2])
    if train_noise == "start":
        assert torch.equal(student.noise(5, "cpu"), torch.full((5,), SIGMA_MAX))
    optimizer = torch.optim.Adam(student.denoiser.parameters(), lr=3e-3)
    for _ in range(1500):
        index = torch.randint(len(pairs.x0), (256,))
        sigma = student.noise(256, "cpu")
        loss = student.denoiser.loss(pairs.x0[index], sigma, pairs.noise[index]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    rms = lambda x: (x.double() - ode_endpoint(z)).square().sum(1).mean().sqrt().item()  # noqa: E731
    assert rms(student.sample(1000, None, noise=z).x) < bound
    assert rms(teacher.sample(1000, None, cfg.sampling, noise=z).x) > 1.0


def test_paired_noise_replaces_the_drawn_noise_in_training_and_validation(project_dir):
    """With a batch (data, labels, noise) the training and validation losses noise each example
    with its own paired noise; the noise levels are drawn as before."""
    from {{ cookiecutter.package_name }}.module import DiffusionModule

    module = DiffusionModule(new_model(load_config(["experiment=toy2d", "model.conditional=false"]), [2]))
    generator = torch.Generator().manual_seed(0)
    x0, paired = torch.randn(64, 2, generator=generator), torch.randn(64, 2, generator=generator)
    torch.manual_seed(3)
    loss = module.batch_loss((x0, None, paired))
    torch.manual_seed(3)
    sigma = module.model.noise(64, "cpu")
    with torch.no_grad():
        expected = module.denoiser.loss(x0, sigma, paired).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    logged = {}
    module.log = lambda name, value, **options: logged.update({name: value.item()})
    module.validation_step((x0, None, paired), 2)
    sigma = module.model.noise(64, "cpu", torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert logged["val/loss"] == pytest.approx(module.ema.loss(x0, sigma, paired).mean().item(), rel=1e-6)


def test_a_reflow_student_starts_from_its_teacher_and_is_an_ordinary_run(project_dir, capsys):
    """train experiment=reflow distill.teacher=RUN: the student takes the teacher's network, data
    and weights, draws its pairs once into runs/<name>/pairs/, and is a run like any other: it
    resumes to the weights of one trained straight, samples in one step, exports. The recipe
    without a teacher is an error; a student cannot overwrite its teacher, nor be resumed as
    anything but its teacher's student."""
    teacher_args = ["experiment=toy2d", "name=teacher", "logger=csv", "model.mlp.width=32", "trainer.max_steps=30",
                    "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000"]
    assert main(["train", *teacher_args]) == 0
    student = ["experiment=reflow", "distill.teacher=runs/teacher", "logger=csv", "distill.pairs=96",
               "distill.shard_size=32", "distill.teacher_sampling.steps=8", "data.batch_size=32",
               "trainer.val_every_n_steps=5", "trainer.sample_every_n_steps=1000", "trainer.sample_count=16",
               "trainer.checkpoint_every_n_steps=5"]
    assert main(["train", *student, "name=straight", "trainer.max_steps=20"]) == 0
    assert "a reflow student of runs/teacher" in capsys.readouterr().out
    assert main(["train", *student, "name=resumed", "trainer.max_steps=10"]) == 0
    assert main(["train", *student, "name=resumed", "trainer.max_steps=20"]) == 0
    straight, resumed = (torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
                         for name in ("straight", "resumed"))
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    about = json.loads((project_dir / "runs/straight/pairs/about.json").read_text())
    assert about["count"] == 96 and about["sampling"]["steps"] == 8
    assert len(list((project_dir / "runs/straight/pairs").glob("0*.pt"))) == 3

    teacher, _ = load_run("runs/teacher")
    fresh = new_student(student_config(load_config(student), teacher.config), teacher)
    assert fresh.denoiser.state_dict().keys() == teacher.denoiser.state_dict().keys()
    weights = teacher.denoiser.state_dict()
    assert all(torch.equal(value, weights[key]) for key, value in fresh.denoiser.state_dict().items())
    model, _ = load_run("runs/straight")
    assert model.config.model == teacher.config.model and model.config.data.name == "toy2d"
    assert model.config.diffusion.train_noise == "uniform_t"
    assert main(["sample", "run=runs/straight", "n=8", "steps=1", "out=one"]) == 0
    assert torch.load("one/samples.pt").shape == (8, 2)
    assert main(["export", "run=runs/straight", "out=exported"]) == 0
    assert main(["sample", "run=exported", "n=8", "steps=1", "out=two"]) == 0
    assert torch.equal(torch.load("one/samples.pt"), torch.load("two/samples.pt"))

    capsys.readouterr()
    assert main(["train", "experiment=reflow"]) == 2
    assert "no value for distill.teacher" in capsys.readouterr().err
    assert main(["train", *student, "name=teacher"]) == 2
    assert "name=teacher is the teacher's own run" in capsys.readouterr().err
    assert main(["train", "experiment=toy2d", "name=straight", "logger=csv", "model.mlp.width=32"]) == 2
    assert "cannot resume with distill.teacher=None (trained with runs/teacher)" in capsys.readouterr().err


def test_the_consistency_sampler_draws_gaussian_data_exactly_with_its_consistency_function():
    """Song et al. 2023, Algorithm 1, with the exact consistency function of Gaussian data: one
    step lands on the ODE endpoint of its start; every further step re-noises an exact sample to
    the next level, which is then exactly that level's marginal, so three steps draw N(MU, STD^2)
    too. The sampler is DDIM with all of its noise fresh (eta large enough)."""
    f = lambda x, sigma: consistency_function(x, sigma[0].item())          # noqa: E731
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = consistency(f, torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64), SIGMA_MAX * z)
    assert one.nfe == 1 and torch.allclose(one.x, ode_endpoint(z), atol=1e-12)
    sigmas = torch.tensor([SIGMA_MAX, 5.0, 0.8, 0.0], dtype=torch.float64)
    three = consistency(f, sigmas, SIGMA_MAX * z, generator=torch.Generator().manual_seed(1)).x
    assert torch.allclose(three.mean(0), MU, atol=4 * STD.max() / 20000**0.5)
    assert torch.allclose(three.std(0), STD, rtol=0.03)
    as_ddim = ddim(f, sigmas, SIGMA_MAX * z, eta=1e9, generator=torch.Generator().manual_seed(1)).x
    assert torch.allclose(three, as_ddim, atol=1e-12)


def test_a_heun_step_of_the_gaussian_teacher_follows_its_ode_and_pseudo_huber_is_icts():
    """heun_step is second order: between two adjacent levels of the 18 of CD's ladder it lands
    near the exact ODE map of Gaussian data, and halving the step shrinks the error about 8-fold
    (a local error O(h^3); Euler's shrinks 4-fold). iCT's distance is sqrt(||d||^2 + c^2) - c with
    c = 0.00054 sqrt(dim)."""
    levels = karras_sigmas(18, 0.002, SIGMA_MAX)
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = MU + torch.sqrt(STD**2 + levels[8] ** 2) * z                 # the marginal at level levels[8]
    errors = []
    for t, r in ((levels[8], levels[9]), (levels[8], (levels[8] + levels[9]) / 2)):
        exact = MU + (x - MU) * torch.sqrt(STD**2 + r**2) / torch.sqrt(STD**2 + t**2)
        landed = heun_step(GaussianDenoiser(), x, torch.full((500,), t.item()), torch.full((500,), r.item()))
        errors.append((landed - exact).abs().max().item())
    assert errors[0] < 0.1 * (levels[8] - levels[9]).item() and 6 < errors[0] / errors[1] < 14
    difference = torch.tensor([[3.0, 4.0] + [0.0] * 98, [1e-3] + [0.0] * 99])
    c = 0.00054 * 10
    everywhere = torch.ones_like(difference, dtype=torch.bool)
    expected = torch.tensor([(25 + c**2) ** 0.5 - c, (1e-6 + c**2) ** 0.5 - c])
    assert torch.allclose(pseudo_huber(difference, everywhere), expected)


def test_cd_draws_every_adjacent_pair_of_its_ladder_from_the_generator_given():
    """CD's (t, r) are adjacent levels of its ladder, every pair drawn (the lowest too, whose r is
    the ladder's last level); the teacher's step starts from x_t = x0 + t n with n standard
    normal; the levels and the noise come from the generator given: the same generator gives the
    same loss whatever the global random state (validation relies on it)."""
    levels = karras_sigmas(6, 0.002, SIGMA_MAX)[:-1].float()          # 6 decreasing levels, no final 0
    asked = []

    def teacher(labels):
        def denoiser(x, sigma):
            asked.append((x, sigma))
            return GaussianDenoiser()(x, sigma)
        return denoiser

    distillation = ConsistencyDistillation(teacher, levels)
    x0 = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    losses = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        asked.clear()
        losses.append(distillation(GaussianDenoiser(), x0, None, 0, torch.Generator().manual_seed(3)))
    (x_t, t), (_, r) = asked                                           # Heun: the slope at t, then at r
    pairs = {(a.item(), b.item()) for a, b in zip(t, r)}
    n = (x_t - x0) / t[:, None]
    assert abs(n.mean()) < 0.1 and abs(n.std() - 1) < 0.1
    assert pairs == {(levels[i].item(), levels[i + 1].item()) for i in range(len(levels) - 1)}
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("change, w", [([], 3.0), (["distill.teacher_sampling={guidance: 0.5}"], 0.5)])
def test_cd_asks_its_teacher_guided_as_the_teacher_samples(change, w):
    """train's CD objective steps the teacher guided as its sampling section says (w = 3), or as
    distill.teacher_sampling changes it. With the ideal denoiser of one point per class, the guided
    teacher is the constant m = w MEANS[label] + (1 - w) MEANS[null] (``PointsByLabel``), and
    Heun's step from x_t at t to r is then exactly m + (x_t - m) r / t."""
    from {{ cookiecutter.package_name }}.commands.train import consistency_distillation
    from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels

    taught = load_config(["experiment=toy2d", "model.conditional=false", "sampling.guidance=3.0"])
    teacher = Model(PointsByLabel(), LogNormalNoise(), (2,), taught, ClassLabels(2), ["a", "b"],
                    origin={"checkpoint": "points", "step": 0})
    teacher.denoiser.parameterization = None           # not x0-prediction: CD's boundary check passes
    _, objective = consistency_distillation(load_config(["experiment=cd", "distill.teacher=points", *change]),
                                            teacher, None)
    asked = []
    student = lambda x, sigma, labels: asked.append((x, sigma)) or x        # noqa: E731
    labels = torch.tensor([0, 1, 1, 0])
    objective(student, torch.zeros(4, 2), labels, 0, torch.Generator().manual_seed(0))
    (x_t, t), (x_r, r) = asked
    means = teacher.denoiser.means
    m = w * means[labels] + (1 - w) * means[2]
    assert torch.allclose(x_r, m + (x_t - m) * (r / t)[:, None], atol=1e-5)


def test_train_builds_the_consistency_objectives_from_the_distill_section():
    """CD's ladder is distill.levels Karras levels (rho = 7) from diffusion.noise_max down to
    0.002, sigma_i = (max^(1/7) + i / (N - 1) (0.002^(1/7) - max^(1/7)))^7 (Song et al. 2023: N = 18
    up to 80); ECT's gap halves every distill.stage_steps steps."""
    from {{ cookiecutter.package_name }}.commands.train import consistency_distillation, consistency_tuning

    teacher = gaussian_teacher()
    teacher.denoiser.parameterization = None           # not x0-prediction: the boundary check passes
    chosen = ["distill.teacher=gaussian", "distill.levels=6", "diffusion.noise_max=40", "distill.stage_steps=7"]
    _, cd = consistency_distillation(load_config(["experiment=cd", *chosen]), teacher, None)
    i = torch.arange(6, dtype=torch.float64)
    ladder = (40 ** (1 / 7) + i / 5 * (0.002 ** (1 / 7) - 40 ** (1 / 7))) ** 7
    assert torch.allclose(cd.levels.double(), ladder, rtol=1e-5)
    _, ect = consistency_tuning(load_config(["experiment=ect", *chosen]), teacher, None)
    t = torch.tensor([5.0])
    gap = lambda step: t - ect.lower_level(t, step)                        # noqa: E731
    assert torch.allclose(gap(6), 2 * gap(7)) and torch.allclose(gap(7), 2 * gap(14))


def test_ects_gap_halves_every_stage_and_starts_as_the_diffusion_loss():
    """Geng et al. 2024, §3: r = t (1 - (1 + 8 sigmoid(-t)) / 2^(stage + 1)), at least 0, with the
    stage rising every stage_steps steps. At stage
    0, r = 0 wherever (1 + 8 sigmoid(-t)) >= 2, i.e. t <= ln 7, and the loss there is the
    denoising error d(D(x_t, t), x0) / t; for large t the gap t - r is t / 2^(stage + 1)."""
    tuning = ConsistencyTuning(LogNormalNoise(-1.1, 2.0), stage_steps=100)
    t = torch.tensor([0.1, 1.0, 1.9, 2.0, 50.0, 80.0])
    assert torch.equal(tuning.lower_level(t, 99)[:3], torch.zeros(3)) and (tuning.lower_level(t, 0)[3:] > 0).all()
    for stage in range(8):
        for step in (100 * stage, 100 * stage + 99):
            gap = t[-2:] - tuning.lower_level(t[-2:], step)
            assert torch.allclose(gap, t[-2:] / 2 ** (stage + 1), rtol=1e-6)
    student = GaussianDenoiser()
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    x_t = x0 + t[:, None] * torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    loss = consistency_loss(student, x0, x_t, t, x_t, torch.zeros(6), None)
    everywhere = torch.ones_like(x0, dtype=torch.bool)
    assert torch.allclose(loss, pseudo_huber(student(x_t, t) - x0, everywhere) / t)
    x_r, r = x_t / 2, t / 2                                                   # and above level 0, the student's own
    loss = consistency_loss(student, x0, x_t, t, x_r, r, None)
    assert torch.allclose(loss, pseudo_huber(student(x_t, t) - student(x_r, r), everywhere) / (t - r))


def test_the_consistency_target_reuses_the_predictions_dropout_masks():
    """ECT evaluates f(x_r, r) with the random state of f(x_t, t): for a student that is all
    dropout, the same input at both levels gives the same answer, so the loss is 0 (with masks
    drawn afresh it would not be)."""
    dropout = nn.Dropout(0.5).train()
    student = lambda x, sigma, labels: dropout(x)                          # noqa: E731
    x = torch.randn(8, 100)
    loss = consistency_loss(student, torch.zeros(8, 100), x, torch.full((8,), 2.0), x, torch.full((8,), 1.0), None)
    assert loss.abs().max() < 1e-6
    assert not torch.equal(dropout(x), dropout(x))                             # the masks do differ between calls


def train_on_gaussian_data(objective, steps: int) -> Model:
    """A small MLP student (EDM's parameterization) trained from scratch by ``objective`` on samples
    of N(MU, STD^2), with the learning rate decaying linearly to 0."""
    torch.manual_seed(0)
    cfg = load_config(["experiment=toy2d", "model.conditional=false", "diffusion.objective=edm",
                       "model.mlp.width=64", "model.mlp.depth=2", "sampling.sampler=consistency",
                       "sampling.schedule=karras", "sampling.steps=1", f"sampling.sigma_max={SIGMA_MAX}"])
    student = new_model(cfg, [2])
    optimizer = torch.optim.Adam(student.denoiser.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(steps):
        x0 = (MU + STD * torch.randn(256, 2, dtype=torch.float64)).float()
        loss = objective(student.denoiser, x0, None, step).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return student


@pytest.mark.once
@pytest.mark.parametrize("method, steps, bound", [("cd", 1500, 0.2), ("ect", 3000, 0.45)])
def test_a_consistency_student_of_gaussian_data_approaches_its_closed_form_consistency_function(method, steps,
                                                                                                 bound):
    """Consistency distillation of the closed-form teacher (its Heun steps), or consistency tuning
    on the data alone, brings a small student from scratch close to the consistency function:
    one evaluation at sigma_max lands within ``bound`` (RMS) of the ODE endpoint of its noise,
    where the teacher's own single step misses by more than the data's spread. Consistency
    training, with no teacher, converges more slowly: the larger bound and twice the steps."""
    objectives = {"cd": ConsistencyDistillation(lambda labels: GaussianDenoiser(), karras_sigmas(18, 0.002,
                                                                                                 SIGMA_MAX)[:-1]),
                  "ect": ConsistencyTuning(LogNormalNoise(-1.1, 2.0), stage_steps=steps // 8)}
    student = train_on_gaussian_data(objectives[method], steps)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    rms = lambda x: (x.double() - ode_endpoint(z)).square().sum(1).mean().sqrt().item()  # noqa: E731
    assert rms(student.sample(2000, None, noise=z).x) < bound
    teacher_step = ddim(GaussianDenoiser(), torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64), SIGMA_MAX * z)
    assert rms(teacher_step.x) > 1.0


def test_consistency_students_are_ordinary_runs_that_sample_with_the_consistency_sampler(project_dir, capsys):
    """train experiment=cd (or ect) distill.teacher=RUN: a student of the teacher's network and
    weights, trained on its data; the ECT student resumed mid-training (its gap schedule follows
    the step) equals one trained straight; both sample in one evaluation. A teacher that predicts
    x0 has no boundary condition D(x, 0) = x to build on, and the ideal denoiser has no network
    to start from: both refused."""
    assert main(["train", "experiment=toy2d", "name=teacher", "logger=csv", "model.mlp.width=32",
                 "trainer.max_steps=30", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000"]) == 0
    common = ["distill.teacher=runs/teacher", "distill.stage_steps=4", "logger=csv", "data.batch_size=32",
              "trainer.val_every_n_steps=5", "trainer.sample_every_n_steps=1000", "trainer.sample_count=16",
              "trainer.checkpoint_every_n_steps=5"]
    assert main(["train", "experiment=cd", *common, "trainer.max_steps=10"]) == 0
    assert "a cd student of runs/teacher" in capsys.readouterr().out
    assert main(["train", "experiment=ect", *common, "name=straight", "trainer.max_steps=16"]) == 0
    assert main(["train", "experiment=ect", *common, "name=resumed", "trainer.max_steps=8"]) == 0
    assert main(["train", "experiment=ect", *common, "name=resumed", "trainer.max_steps=16"]) == 0
    straight, resumed = (torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
                         for name in ("straight", "resumed"))
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    for name, method in (("cd", "cd"), ("straight", "ect")):
        model, _ = load_run(f"runs/{name}")
        assert model.config.distill.method == method and model.config.sampling.sampler == "consistency"
        assert main(["sample", f"run=runs/{name}", "n=8", "steps=1", f"out={name}-one"]) == 0
        assert torch.load(f"{name}-one/samples.pt").shape == (8, 2)
    assert main(["train", "experiment=toy2d", "name=x0", "diffusion.objective=x0", "logger=csv",
                 "model.mlp.width=32", "trainer.max_steps=2", "trainer.sample_every_n_steps=1000"]) == 0
    capsys.readouterr()
    assert main(["train", "experiment=ect", "distill.teacher=runs/x0"]) == 2
    assert "predicts x0 (diffusion.objective=x0" in capsys.readouterr().err
    assert main(["train", "experiment=toy2d", "name=ideal", "model.name=ideal", "logger=csv"]) == 0
    capsys.readouterr()
    assert main(["train", "experiment=ect", "distill.teacher=runs/ideal"]) == 2
    assert capsys.readouterr().err == ("ERROR: distill.teacher=runs/ideal is the ideal denoiser (model.name=ideal): "
                                       "students start from the teacher's network, and it has none\n")


def test_a_consistency_students_validation_loss_is_its_loss_at_the_last_steps_gap():
    """Validation measures the EMA weights with the objective at the last training step (ECT's
    smallest gap), on levels and noise fixed by the batch index, so that runs compare."""
    from {{ cookiecutter.package_name }}.module import DiffusionModule

    cfg = load_config(["experiment=toy2d", "model.conditional=false", "trainer.max_steps=800"])
    tuning = ConsistencyTuning(LogNormalNoise(-1.1, 2.0), stage_steps=100)
    module = DiffusionModule(new_model(cfg, [2]), tuning)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    logged = {}
    module.log = lambda name, value, **options: logged.update({name: value.item()})
    module.validation_step((x0, None), 3)
    with torch.no_grad():
        expected = tuning(module.ema, x0, None, 799, torch.Generator().manual_seed(3)).mean()
        at_the_start = tuning(module.ema, x0, None, 0, torch.Generator().manual_seed(3)).mean()
    assert logged["val/loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert logged["val/loss"] != pytest.approx(at_the_start.item(), rel=1e-3)


def test_every_course_task_runs_on_a_consistency_student(digits_run, capsys):
    """A student is an ordinary run for the course's tasks: each draws with the student's own
    sampler (consistency, 2 steps) and guidance applied at sampling on the distilled network.
    Interpolation needs a deterministic sampler: the consistency sampler is one in one step,
    and in two (fresh noise at the second) is refused."""
    assert main(["train", "experiment=cd", f"distill.teacher={digits_run}", "name=cd", "logger=csv",
                 "data.batch_size=16", "trainer.max_steps=3", "trainer.val_every_n_steps=1000",
                 "trainer.sample_every_n_steps=1000"]) == 0
    run = "run=runs/cd"
    tasks = {"visualize/denoising.png": ["visualize", run, "n=2", "labels=[3,7]"],
             "interpolate/noise.png": ["interpolate", run, "between=noise", "frames=3", "steps=1"],
             "interpolate/images.png": ["interpolate", run, "between=images", "images=[0,1]", "frames=3", "steps=1"],
             "guidance/grid.png": ["guidance-grid", run, "labels=[0,5]", "weights=[1,3]"],
             "illusion/anagram.png": ["illusion", run, "labels=[6,9]", "views=[identity,rot180]", "n=2"],
             "restore/repaint.png": ["restore", run, "method=repaint", "images=[0,1]", "mask=center"],
             "restore/sdedit.png": ["restore", run, "method=sdedit", "images=[0,1]"],
             "restore/dps.png": ["restore", run, "method=dps", "images=[0,1]"]}
    for picture, args in tasks.items():
        assert main(args) == 0, args
        assert (Path("runs/cd") / picture).is_file(), picture
    capsys.readouterr()
    assert main(["interpolate", run, "between=noise"]) == 2
    assert "needs a deterministic sampler" in capsys.readouterr().err
