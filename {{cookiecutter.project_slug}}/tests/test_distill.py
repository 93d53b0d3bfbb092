"""Few-step students: reflow against the known answer of Gaussian data (its probability-flow map
is linear and closed form), the pairs' cache, and the student as an ordinary run."""
import json

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.config import load_config, student_config
from {{ cookiecutter.package_name }}.diffusion.distillation import reflow_noise
from {{ cookiecutter.package_name }}.diffusion.samplers import ddim
from {{ cookiecutter.package_name }}.diffusion.schedules import LogNormalNoise, uniform_t_sigmas
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
    pairs = reflow_pairs(teacher, cfg.sampling, tmp_path, 6, 6, 4, seed=0)
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
    with pytest.raises(ConfigError, match="000000.pt is not a readable shard.*delete it"):
        reflow_pairs(teacher, sampling, tmp_path, 12, 4, 4, seed=0)


def test_a_student_trained_on_gaussian_pairs_lands_near_the_teachers_endpoint_in_one_step(tmp_path):
    """A small MLP student, trained on 2,000 pairs of the Gaussian teacher with the training
    levels uniform in t (diffusion.train_noise=uniform_t), maps fresh noise in one Euler step to
    within 0.15 (RMS) of where the teacher's exact ODE takes it; the teacher's own single step
    misses by about the data's spread."""
    teacher = gaussian_teacher()
    pairs = reflow_pairs(teacher, teacher.config.sampling, tmp_path, 2000, 1000, 1000, seed=0)
    torch.manual_seed(0)
    cfg = load_config(["experiment=toy2d", "model.conditional=false", "diffusion.objective=edm",
                       "diffusion.train_noise=uniform_t", "model.mlp.width=64", "model.mlp.depth=2",
                       "sampling.sampler=euler", "sampling.schedule=uniform_t", "sampling.steps=1",
                       f"sampling.sigma_max={SIGMA_MAX}"])
    student = new_model(cfg, [2])
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
    assert rms(student.sample(1000, None, noise=z).x) < 0.15
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
    assert "reflow pairs of runs/teacher" in capsys.readouterr().out
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
