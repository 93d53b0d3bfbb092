"""End to end: train a few steps, resume, sample, from the command-line functions."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.commands.train import run as train
from {{ cookiecutter.package_name }}.errors import ConfigError
from {{ cookiecutter.package_name }}.pixels import to_uint8
from {{ cookiecutter.package_name }}.runs import load_run

FAST = ["trainer.log_every_n_steps=5", "trainer.val_every_n_steps=10", "trainer.sample_count=16"]


def step_of(checkpoint):
    return torch.load(checkpoint, weights_only=False)["global_step"]


def test_toy_run_trains_resumes_and_samples(project_dir, monkeypatch, capsys):
    args = ["experiment=toy2d", "name=toy", "logger=csv", "trainer.max_steps=20",
            "trainer.checkpoint_every_n_steps=10", "trainer.sample_every_n_steps=10", *FAST]
    assert main(["train", *args]) == 0
    run = project_dir / "runs" / "toy"
    assert step_of(run / "checkpoints" / "last.ckpt") == 20
    assert (run / "config.yaml").is_file() and (run / "samples" / "step_0000020.png").is_file()

    saved_rng = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["rng"]["torch"]
    restored, set_rng_state = [], torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda state: (restored.append(state), set_rng_state(state)))
    assert main(["train", *args, "trainer.max_steps=30"]) == 0      # resumes, does not restart
    assert step_of(run / "checkpoints" / "last.ckpt") == 30
    # the random stream continues (Lightning's isolate_rng later puts the same state back once more)
    assert restored and all(torch.equal(state, saved_rng) for state in restored)

    state = torch.get_rng_state()
    load_run("runs/toy")                                         # loading to sample: caller's RNG untouched
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ConfigError, match="already holds a run"):
        train([*args, "trainer.resume=false"])

    assert main(["sample", "run=runs/toy", "n=50", "steps=4", "sampler=ddim", "trajectory=true", "out=out1"]) == 0
    assert main(["sample", "run=runs/toy", "n=50", "steps=4", "sampler=ddim", "out=out2"]) == 0
    assert main(["sample", "run=runs/toy", "labels=[1]"]) == 2                   # the model is unconditional
    capsys.readouterr()
    assert main(["sample", "run=runs/toy", "stpes=4"]) == 2
    assert "Did you mean 'steps'?" in capsys.readouterr().err
    first, second = torch.load("out1/samples.pt"), torch.load("out2/samples.pt")
    assert first.shape == (50, 2) and torch.equal(first, second)   # same seed, same samples
    assert (project_dir / "out1" / "trajectory.png").is_file()


@pytest.mark.parametrize("network, objective", [("unet", "eps"), ("dit", "flow"), ("mlp", "v")])
def test_conditional_image_run_with_each_network(project_dir, network, objective):
    args = [f"name={network}", "data.name=digits", "data.image_size=8", "data.channels=1",
            f"model.name={network}", "model.conditional=true", f"diffusion.objective={objective}",
            "model.unet.channels=16", "model.unet.channel_mult=[1,2]", "model.unet.blocks_per_level=1",
            "model.dit.patch_size=2", "model.dit.width=32", "model.dit.depth=1", "model.dit.heads=2",
            "model.mlp.width=32", "model.mlp.depth=1", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=3",
            "trainer.sample_every_n_steps=3", "data.batch_size=16", "logger=tensorboard", *FAST]
    if objective == "flow":
        args += ["sampling.schedule=uniform_t", "sampling.sigma_max=1000"]
    assert main(["train", *args]) == 0
    assert main(["sample", f"run=runs/{network}", "n=6", "steps=3", "labels=[7]", "guidance=2.0",
                 "trajectory=true"]) == 0
    assert main(["sample", f"run=runs/{network}", "n=2", "steps=3", "sampler=dpmpp_2m",
                 "conditions=[[3,1.5],[8,1.0]]", "out=mixed"]) == 0
    assert torch.load("mixed/samples.pt").shape == (2, 1, 8, 8)
    out = project_dir / "runs" / network / "generated"
    assert torch.load(out / "samples.pt").shape == (6, 1, 8, 8)
    assert sorted(p.name for p in (out / "images").iterdir())[:2] == ["000000.png", "000001.png"]
    exact = torch.from_numpy(np.array(Image.open(out / "images" / "000001.png")))
    assert torch.equal(exact, to_uint8(torch.load(out / "samples.pt")[1, 0]))    # the pixels, not a grid tile
    assert (out / "samples.png").is_file() and (out / "trajectory.png").is_file()


def test_sample_without_a_run_is_a_clear_error(project_dir, capsys):
    assert main(["sample", "run=runs/nothing"]) == 2
    assert "no checkpoint at runs/nothing" in capsys.readouterr().err


def test_nonfinite_losses_are_skipped_then_stop_the_run(project_dir):
    from omegaconf import OmegaConf

    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.module import DiffusionModule

    cfg = load_config(["experiment=toy2d", "trainer.max_nonfinite_steps=3"])
    module = DiffusionModule(OmegaConf.to_container(cfg), [2])
    module.log = lambda *args, **kwargs: None                  # no Trainer attached
    module.denoiser.loss = lambda *args: torch.full((4,), float("nan"))
    batch = (torch.randn(4, 2), None)
    assert module.training_step(batch, 0) is None             # skipped, not back-propagated
    assert module.training_step(batch, 1) is None
    with pytest.raises(RuntimeError, match="3 steps in a row"):
        module.training_step(batch, 2)


def test_sample_grids_reach_tensorboard(project_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", "experiment=digits", "name=tb", "logger=tensorboard", "trainer.max_steps=4",
                 "trainer.sample_every_n_steps=2", "trainer.checkpoint_every_n_steps=4", "sampling.steps=2",
                 "model.unet.channels=8", "data.batch_size=8", *FAST, "trainer.log_every_n_steps=1"]) == 0
    events = EventAccumulator(str(project_dir / "runs" / "tb" / "tensorboard")).Reload()
    assert [event.step for event in events.Images("samples")] == [2, 4]
    assert "train/loss" in events.Tags()["scalars"]
    assert main(["train", "experiment=toy2d", "name=tb2d", "logger=tensorboard", "trainer.max_steps=2", "trainer.sample_every_n_steps=2",
                 "sampling.steps=2", *FAST]) == 0
    events = EventAccumulator(str(project_dir / "runs" / "tb2d" / "tensorboard")).Reload()
    assert [event.step for event in events.Images("samples")] == [2]       # 2D scatter plots too


def test_a_diverging_run_ends_in_one_error_line(project_dir, capsys):
    """An absurd learning rate blows the weights up; the NaN guard skips, then stops the run
    with a UserError, which the command line prints as one line (exit code 2, no traceback)."""
    assert main(["train", "experiment=toy2d", "name=nan", "logger=csv", "optim.lr=1e20", "optim.warmup_steps=1",
                 "trainer.max_nonfinite_steps=3", "trainer.max_steps=50", *FAST]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "for 3 steps in a row" in errors[0] and "optim.lr" in errors[0]


def test_a_missing_optional_package_is_one_error_line(project_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)                  # as if not installed
    assert main(["train", "experiment=toy2d", "logger=wandb", "trainer.max_steps=1"]) == 2
    assert capsys.readouterr().err.startswith("ERROR: logger=wandb needs the wandb package: pip install wandb")


def test_sample_is_generate_on_the_ema_denoiser(project_dir):
    """The whole sampling path pinned: `sample` with a seed draws exactly what ``generate`` draws
    from the run's EMA weights (guided towards labels 0, 1, 2, ... when conditional), its
    configured sigmas and sampler, and that seed's noise."""
    from {{ cookiecutter.package_name }}.diffusion.generate import generate
    from {{ cookiecutter.package_name }}.diffusion.samplers import configured_sampler
    from {{ cookiecutter.package_name }}.diffusion.schedules import sampling_sigmas

    assert main(["train", "experiment=digits", "name=pin", "logger=csv", "model.unet.channels=8", "trainer.max_steps=4",
                 "data.batch_size=8", *FAST]) == 0
    assert main(["sample", "run=runs/pin", "n=5", "seed=3", "steps=4", "sampler=dpmpp_2m", "out=pinned"]) == 0
    module, _ = load_run("runs/pin")
    sampling = module.cfg.sampling
    sampling.sampler, sampling.steps = "dpmpp_2m", 4
    sigmas = sampling_sigmas(sampling, module.training_noise.table)
    expected = generate(module.guided(5, sampling.guidance), sigmas, configured_sampler(sampling), shape=(5, *module.data_shape),
                        generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(torch.load("pinned/samples.pt"), expected)


def test_the_readme_python_example_runs(project_dir):
    import re

    from conftest import PROJECT

    assert main(["train", "experiment=digits", "logger=csv", "model.unet.channels=8", "trainer.max_steps=2",
                 "data.batch_size=8", *FAST]) == 0
    code = re.search(r"```python\n(.*?)```", (PROJECT / "README.md").read_text(), re.S).group(1)
    scope = {}
    exec(code, scope)
    assert scope["result"].x.shape == (16, *scope["module"].data_shape) and len(scope["path"].steps) == 20
