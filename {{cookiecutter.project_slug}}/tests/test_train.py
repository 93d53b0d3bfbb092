"""End to end: train a few steps, resume, sample, from the command-line functions."""
import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }}.cli import load_run, main, train
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.data.images import to_uint8

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
