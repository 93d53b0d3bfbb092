"""End to end: train a few steps, resume, sample, from the command-line functions."""
import json
import math
import operator
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from {{ cookiecutter.package_name }} import runs
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.commands.train import run as train
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.errors import ConfigError, describe
from {{ cookiecutter.package_name }}.pixels import to_uint8
from {{ cookiecutter.package_name }}.runs import (
    Run,
    check_resumable,
    load_run,
    open_run,
    read_checkpoint,
    saved_config,
)

FAST = ["trainer.log_every_n_steps=5", "trainer.val_every_n_steps=10", "trainer.sample_count=16"]


@pytest.mark.subprocess
def test_a_run_in_a_log_file_reads_plainly(project_dir):
    """What `train > log` shows: the start-up summary, plain progress lines over the steps (no
    per-epoch bar, no third-party tips or deprecation warnings) and the closing summary."""
    done = subprocess.run(package_command("train", "experiment=toy2d", "name=quiet", "logger=tensorboard",
                                          "trainer.max_steps=40", "trainer.val_every_n_steps=20"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    assert err == "", err
    for noise in ("Tip", "litlogger", "LeafSpec", "Epoch", "GPU available", "it/s", "Warning"):
        assert noise not in out, noise
    assert "run        runs/quiet (new)" in out and "  data     toy2d: " in out and "precision 32-true" in out
    assert "step 40/40 (100%)  loss " in out
    assert "finished   step 40 of 40" in out and "runs/quiet/checkpoints/last.ckpt" in out
    assert "tensorboard --logdir runs/quiet/tensorboard" in out


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


def test_the_training_grid_draws_sample_count_samples_of_the_sample_labels_from_the_runs_seed(project_dir,
                                                                                                 monkeypatch):
    """trainer.sample_count=4 trainer.sample_labels=[3,7] seed=5: every grid is 4 samples labelled
    3, 7, 3, 7, drawn from a generator seeded 5 (the same noise at every grid)."""
    from {{ cookiecutter.package_name }}.model import Model

    asked, sample = [], Model.sample
    monkeypatch.setattr(Model, "sample", lambda self, n, generator, sampling=None, labels=None, **rest: asked.append(
        (n, generator.initial_seed(), labels.tolist())) or sample(self, n, generator, sampling, labels, **rest))
    assert main(["train", "experiment=digits", "name=grids", "model.conditional=true", "model.unet.channels=8",
                 "logger=csv", "seed=5", "trainer.max_steps=4", "trainer.sample_every_n_steps=2",
                 "trainer.sample_count=4", "trainer.sample_labels=[3,7]", "trainer.val_every_n_steps=1000"]) == 0
    assert asked == [(4, 5, [3, 7, 3, 7])] * 2


def test_sample_draws_in_batches_of_batch_size_with_the_labels_in_turn_across_batches(digits_run, monkeypatch):
    """n=5 batch_size=2 labels=[0,1,2]: three batches of 2, 2 and 1 samples, labelled 0 1 | 2 0 |
    1 (the labels run on across batches); weighted conditions reach every batch with their
    weights."""
    from {{ cookiecutter.package_name }}.model import Model

    asked = []

    def guided(self, n, guidance, labels=None, conditions=None):
        asked.append((n, None if labels is None else labels.tolist(),
                      conditions and [(condition.tolist(), weight) for condition, weight in conditions]))
        return lambda x, sigma: torch.zeros_like(x)

    monkeypatch.setattr(Model, "guided", guided)
    assert main(["sample", f"run={digits_run}", "n=5", "batch_size=2", "labels=[0,1,2]", "steps=2"]) == 0
    assert asked == [(2, [0, 1], None), (2, [2, 0], None), (1, [1], None)]
    asked.clear()
    assert main(["sample", f"run={digits_run}", "n=3", "batch_size=2", "conditions=[[3,1.5],[8,1.0]]", "steps=2",
                 "out=mixed"]) == 0
    assert [conditions for _, _, conditions in asked] == [[([3, 3], 1.5), ([8, 8], 1.0)], [([3], 1.5), ([8], 1.0)]]


@pytest.mark.parametrize("network, objective", [("unet", "eps"), ("dit", "flow"), ("mlp", "v")])
def test_conditional_image_run_with_each_network(project_dir, network, objective):
    args = [f"name={network}", "data.name=digits", "data.image_size=8", "data.channels=1",
            f"model.name={network}", "model.conditional=true", f"diffusion.objective={objective}",
            "model.unet.channels=16", "model.unet.channel_mult=[1,2]", "model.unet.attention_levels=[1]",
            "model.unet.blocks_per_level=1",
            "model.dit.patch_size=2", "model.dit.width=32", "model.dit.depth=1", "model.dit.heads=2",
            "model.mlp.width=32", "model.mlp.depth=1", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=3",
            "trainer.sample_every_n_steps=3", "data.batch_size=16", "logger=tensorboard", *FAST]
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


def module_without_trainer(*overrides: str):
    """A toy2d model's DiffusionModule that trains with no Trainer attached: its AdamW calls
    on_before_optimizer_step inside step, as Lightning's does, its schedule keeps the rate, and
    what it logs is kept in ``module.logged``. Returns the module and its schedule."""
    from {{ cookiecutter.package_name }}.module import DiffusionModule
    from {{ cookiecutter.package_name }}.runs import new_model

    module = DiffusionModule(new_model(load_config(["experiment=toy2d", "model.conditional=false", *overrides]), [2]))
    optimizer = module.adamw("32-true")
    optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: module.on_before_optimizer_step(optimizer))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    module.optimizers, module.lr_schedulers = (lambda: optimizer), (lambda: scheduler)
    module.manual_backward = lambda loss: loss.backward()
    module.logged = []
    module.log = lambda name, value, **options: module.logged.append((name, torch.as_tensor(value).item(), options))
    return module, scheduler


def nan_gradient(module) -> torch.Tensor:
    """0, whose gradient for the first weight is 0 * inf = NaN: a finite loss, gradients that are not."""
    weight = next(module.denoiser.parameters())
    return (weight - weight.detach()).abs().sqrt().sum()


TOY_BATCH = (torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), None)


def test_nonfinite_steps_are_skipped_and_only_those_in_a_row_stop_the_run(project_dir):
    """A step with a NaN loss or with NaN gradients is skipped; a finite step resets the count,
    and trainer.max_nonfinite_steps in a row stop the run with what was not finite. Each step is
    judged while the next one runs, so the run stops one step after the last bad one. Every step
    logs its loss, shown in the progress bar."""
    from {{ cookiecutter.package_name }}.errors import TrainingDiverged

    module, _ = module_without_trainer("trainer.max_nonfinite_steps=2")
    finite = module.batch_loss

    def nan_loss(batch):
        return finite(batch) * float("nan")

    def bad_gradients(batch):
        return finite(batch) + nan_gradient(module)

    def steps(*losses):
        for loss in losses:
            module.batch_loss = loss
            module.training_step(TOY_BATCH, 0)

    steps(nan_loss, finite, bad_gradients, finite, nan_loss, finite)          # never two in a row
    steps(nan_loss, nan_loss)
    with pytest.raises(TrainingDiverged, match="^the loss was not finite for 2 steps in a row at step 0"):
        steps(finite)
    steps(bad_gradients, bad_gradients)
    with pytest.raises(TrainingDiverged, match=r"^the gradients were not finite \(an overflow .* for 2 steps in a row"):
        steps(finite)
    counted = [value for name, value, _ in module.logged if name == "train/nonfinite_steps"]
    assert counted == [1, 1, 1, 1, 2, 1, 2]
    assert [options for name, _, options in module.logged if name == "train/loss"] == [{"prog_bar": True}] * 12


def test_a_training_step_never_waits_for_the_device(project_dir, monkeypatch):
    """With the fused AdamW (optim.fused, the default), nothing in a training step reads a
    tensor's value back to the host but ``judge``, once a step, for the step before (a value
    read mid-step makes the CPU wait for the GPU, which then idles while the CPU queues the rest).
    Every read the package's code makes during three steps is recorded, by the function making it."""
    package = Path(sys.modules["{{ cookiecutter.package_name }}"].__file__).parent
    module, _ = module_without_trainer("optim.fused=true")
    reads = []

    def recorded(read):
        def spy(tensor, *args):
            caller = sys._getframe(1).f_code
            if Path(caller.co_filename).is_relative_to(package):
                reads.append(caller.co_name)
            return read(tensor, *args)
        return spy

    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, recorded(getattr(torch.Tensor, name)))
    for _ in range(3):
        module.training_step(TOY_BATCH, 0)
    monkeypatch.undo()
    assert len(reads) == 2 and all("judge" in name for name in reads)      # (mutmut renames the functions it mutates)


@pytest.mark.parametrize("fused", ["true", "false"])
def test_a_step_is_clipped_to_optim_grad_clip_and_one_with_gradients_not_finite_changes_no_weight(project_dir, fused):
    """on_before_optimizer_step (which Lightning calls inside optimizer.step) clips the gradients
    to norm optim.grad_clip, or, when one is NaN, has AdamW skip the update: the fused kernel on
    the device, the plain one by dropping the gradients (zeroed ones would still move the weights,
    by weight decay and momentum). The weights and AdamW's moments stay as they were; the step
    counts, so the schedule moves on and the EMA moves towards the weights that stood still."""
    module, scheduler = module_without_trainer("optim.grad_clip=0.5", "optim.weight_decay=0.1", f"optim.fused={fused}")
    weights = list(module.denoiser.parameters())
    optimizer = module.optimizers()

    def state():
        return [t.detach().clone() for t in [*weights, *(v for w in weights for v in optimizer.state[w].values())]]

    module.take_step(1e3 * module.batch_loss(TOY_BATCH))            # a large loss: its gradients are clipped
    assert torch.cat([w.grad.flatten() for w in weights]).norm().item() == pytest.approx(0.5, rel=1e-5)
    assert scheduler.last_epoch == 1
    before, ema = state(), [t.clone() for t in module.ema.parameters()]
    module.take_step(module.batch_loss(TOY_BATCH) + nan_gradient(module))
    assert all(torch.equal(a, b) for a, b in zip(before, state())) and scheduler.last_epoch == 2
    decay = 0.1                                          # min(optim.ema_decay, (1 + k) / (10 + k)) at step k = 0
    for average, old, weight in zip(module.ema.parameters(), ema, weights):
        torch.testing.assert_close(average, decay * old + (1 - decay) * weight)


def test_adamw_is_fused_except_under_fp16_and_its_rate_warms_up_then_follows_a_half_cosine(project_dir):
    """The fused kernel would unscale fp16 gradients after clipping saw them scaled, so 16-mixed
    runs the plain AdamW. The rate's factor: linear warm-up, (k + 1) / optim.warmup_steps, times
    the half cosine (1 + cos(pi k / trainer.max_steps)) / 2 (Loshchilov & Hutter 2017), 0 after."""
    from types import SimpleNamespace

    from {{ cookiecutter.package_name }}.module import DiffusionModule
    from {{ cookiecutter.package_name }}.runs import new_model

    cfg = load_config(["experiment=toy2d", "model.conditional=false", "optim.fused=true", "optim.cosine_decay=true",
                       "optim.warmup_steps=4", "trainer.max_steps=20", "optim.lr=0.003", "optim.betas=[0.8,0.95]",
                       "optim.weight_decay=0.02"])
    module = DiffusionModule(new_model(cfg, [2]))
    for precision, fused in [("16-mixed", False), ("32-true", True), ("bf16-mixed", True)]:
        module._trainer = SimpleNamespace(precision=precision)               # what configure_optimizers reads
        configured = module.configure_optimizers()
        settings = configured["optimizer"].defaults
        assert settings["fused"] is fused
    assert (settings["lr"], settings["betas"], settings["weight_decay"]) == (0.003, (0.8, 0.95), 0.02)
    trained = configured["optimizer"].param_groups[0]["params"]
    assert [id(w) for w in trained] == [id(w) for w in module.denoiser.parameters()]      # never the EMA's
    factor = configured["lr_scheduler"].lr_lambdas[0]
    assert factor(0) == pytest.approx(1 / 4) and factor(3) == pytest.approx((1 + math.cos(math.pi * 3 / 20)) / 2)
    assert factor(10) == pytest.approx(0.5) and factor(20) == pytest.approx(0.0, abs=1e-12) == factor(30)
    plain = DiffusionModule(new_model(load_config(["experiment=toy2d", "model.conditional=false",
                                                   "optim.warmup_steps=0", "optim.cosine_decay=false"]), [2]))
    plain._trainer = SimpleNamespace(precision="32-true")
    factor = plain.configure_optimizers()["lr_scheduler"].lr_lambdas[0]
    assert [factor(step) for step in (0, 1, 1000)] == [1.0, 1.0, 1.0]          # no warm-up, no decay: the full rate


@pytest.mark.parametrize("conditional", [True, False])
def test_the_training_loss_is_the_batch_mean_of_the_weighted_error_with_labels_dropped_at_p_uncond(project_dir,
                                                                                                 conditional):
    """batch_loss draws, from the global generator and in this order, a noise level per example
    from the training distribution, the noise, and which labels to drop (each with probability
    diffusion.p_uncond: classifier-free guidance, Ho & Salimans 2022: the null label, one past
    the last class, in their place). The loss is the batch mean of lambda(sigma) ||D(x0 + sigma
    eps, sigma, labels) - x0||^2 of the network being trained. An unconditional model never sees
    the data's labels."""
    from {{ cookiecutter.package_name }}.module import DiffusionModule
    from {{ cookiecutter.package_name }}.runs import new_model

    cfg = load_config(["experiment=toy2d", f"model.conditional={str(conditional).lower()}", "diffusion.p_uncond=0.3",
                       "diffusion.loss_weight=min_snr", "diffusion.min_snr_gamma=2.0"])
    module = DiffusionModule(new_model(cfg, [2], ["a", "b", "c"]))
    with torch.no_grad():
        for average in module.ema.parameters():                       # the EMA differs from the live weights
            average.add_(1.0)
    generator = torch.Generator().manual_seed(0)
    x0, labels = torch.randn(400, 2, generator=generator), torch.randint(0, 3, (400,), generator=generator)
    torch.manual_seed(7)
    loss = module.batch_loss((x0, labels))
    torch.manual_seed(7)
    sigma = module.model.noise(400, "cpu")
    eps = torch.randn_like(x0)
    dropped = torch.rand(400) < 0.3
    seen = torch.where(dropped, 3, labels) if conditional else None
    assert 0.25 < dropped.float().mean() < 0.35
    with torch.no_grad():
        error = (module.denoiser(x0 + sigma[:, None] * eps, sigma, seen) - x0).square().mean(1)
    assert loss.item() == pytest.approx((sigma.pow(-2).clamp(max=2.0) * error).mean().item(), rel=1e-5)


@pytest.mark.parametrize("kind, weight", [("min_snr", lambda sigma: sigma.pow(-2).clamp(max=3.0)),
                                          ("soft_min_snr", lambda sigma: 1 / (sigma**2 + 0.7**2)),
                                          ("edm", lambda sigma: (sigma**2 + 0.7**2) / (0.7 * sigma) ** 2)])
def test_the_loss_weight_reads_sigma_data_and_gamma_from_the_diffusion_section(project_dir, kind, weight):
    """lambda(sigma) as diffusion.loss_weight names it, with this run's diffusion.sigma_data and
    min_snr_gamma (Hang et al. 2023; Crowson et al. 2024; EDM, Table 1)."""
    module, _ = module_without_trainer(f"diffusion.loss_weight={kind}", "diffusion.sigma_data=0.7",
                                       "diffusion.min_snr_gamma=3.0")
    sigma = torch.tensor([0.1, 0.7, 5.0])
    assert torch.allclose(module.loss_weight(sigma), weight(sigma))


def test_validation_is_the_ema_loss_with_noise_fixed_by_the_batch_index(project_dir):
    """val/loss is the weighted denoising error lambda(sigma) ||D(x0 + sigma eps, sigma, labels) -
    x0||^2 of the EMA network (not the one being trained), with the batch's labels, and sigma and
    eps drawn in that order from a generator seeded with the batch index: every validation sees
    the same noise, so the curve moves only with the weights. It is averaged over processes."""
    from {{ cookiecutter.package_name }}.module import DiffusionModule
    from {{ cookiecutter.package_name }}.runs import new_model

    cfg = load_config(["experiment=toy2d", "model.conditional=true", "diffusion.loss_weight=min_snr",
                       "diffusion.min_snr_gamma=2.0"])
    model = new_model(cfg, [2], ["a", "b", "c"])
    model.denoiser.eval()                                             # as a loaded network comes
    module = DiffusionModule(model)
    assert module.model.denoiser is module.ema and module.ema is not module.denoiser   # grids sample the EMA
    assert module.denoiser.training and not any(average.requires_grad for average in module.ema.parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for average in module.ema.parameters():                       # the EMA differs from the live weights
            average.add_(0.3 * torch.randn(average.shape, generator=generator))
    x0, labels = torch.randn(6, 2, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])
    logged = {}
    module.log = lambda name, value, **options: logged.update({name: (value.item(), options)})
    module.validation_step((x0, labels), 3)
    draws = torch.Generator().manual_seed(3)
    sigma = module.model.noise(6, "cpu", draws)
    eps = torch.randn(x0.shape, generator=draws)
    with torch.no_grad():
        error = (module.ema(x0 + sigma[:, None] * eps, sigma, labels) - x0).square().mean(1)
    value, options = logged["val/loss"]
    assert value == pytest.approx((sigma.pow(-2).clamp(max=2.0) * error).mean().item(), rel=1e-5)
    assert options == {"prog_bar": True, "batch_size": 6, "sync_dist": True}      # shown, and averaged over processes


def test_sample_grids_reach_tensorboard(project_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", "experiment=digits", "name=tb", "logger=tensorboard", "trainer.max_steps=4",
                 "trainer.sample_every_n_steps=2", "trainer.checkpoint_every_n_steps=4", "sampling.steps=2",
                 "model.unet.channels=8", "data.batch_size=8", *FAST, "trainer.log_every_n_steps=1"]) == 0
    events = EventAccumulator(str(project_dir / "runs" / "tb" / "tensorboard")).Reload()
    assert [event.step for event in events.Images("samples")] == [2, 4]
    assert "train/loss" in events.Tags()["scalars"]
    assert main(["train", "experiment=toy2d", "name=tb2d", "logger=tensorboard", "trainer.max_steps=2",
                 "trainer.sample_every_n_steps=2", "sampling.steps=2", *FAST]) == 0
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


def test_sample_is_the_ema_network_guided_and_solved_as_the_papers_say(project_dir):
    """The whole sampling path pinned against a loop written here from the papers: `sample` with
    a seed draws what the run's EMA network gives, guided towards labels 0, 1, 2, ... with the
    run's weight (Ho & Salimans 2022, eq. 6), down Karras levels between the run's sigma_max and
    sigma_min (EDM eq. 5) by DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), from that seed's
    noise."""
    assert main(["train", "experiment=digits", "name=pin", "logger=csv", "model.unet.channels=8", "trainer.max_steps=4",
                 "data.batch_size=8", "optim.lr=0.05", "optim.warmup_steps=0", "optim.ema_decay=0.5", *FAST]) == 0
    assert main(["sample", "run=runs/pin", "n=5", "seed=3", "steps=4", "sampler=dpmpp_2m", "schedule=karras",
                 "out=pinned"]) == 0
    model, _ = load_run("runs/pin")
    saved = checkpoint_of("pin")["state_dict"]
    ema = {key[4:]: value for key, value in saved.items() if key.startswith("ema.")}
    assert all(torch.equal(model.denoiser.state_dict()[key], value) for key, value in ema.items())
    assert not all(torch.equal(saved[f"denoiser.{key}"], value) for key, value in ema.items())   # not the weights
    s = model.config.sampling
    ramp = torch.linspace(0, 1, 4, dtype=torch.float64)
    sigmas = (s.sigma_max ** (1 / s.rho) + ramp * (s.sigma_min ** (1 / s.rho) - s.sigma_max ** (1 / s.rho))) ** s.rho
    sigmas = [*sigmas.tolist(), 0.0]
    labels, null = torch.arange(5), torch.full((5,), 10)

    def guided(x, sigma):
        level = torch.full((5,), sigma)
        unconditional = model.denoiser(x, level, null)
        return unconditional + s.guidance * (model.denoiser(x, level, labels) - unconditional)

    x = (sigmas[0] * torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3)).double()).float()
    with torch.no_grad():                          # the labels matter to this network: guidance is visible
        assert (model.denoiser(x, torch.ones(5), labels) - model.denoiser(x, torch.ones(5), null)).abs().max() > 0.01
    previous = None
    with torch.no_grad():
        for i in range(4):
            x0 = guided(x, sigmas[i])
            if sigmas[i + 1] == 0:
                x = x0
                break
            h = math.log(sigmas[i] / sigmas[i + 1])
            d = x0
            if previous is not None:
                r = previous[1] / h
                d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous[0]
            x = sigmas[i + 1] / sigmas[i] * x - math.expm1(-h) * d
            previous = (x0, h)
    torch.testing.assert_close(torch.load("pinned/samples.pt"), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler, steps", [("dpmpp_2m", 5), ("heun", 4)])
@pytest.mark.parametrize("guidance", [0.0, 1.0, 2.0])
def test_the_nfe_a_model_predicts_is_the_nfe_it_counts(project_dir, sampler, steps, guidance):
    """What evaluate, bench and the titles report before sampling (``Model.nfe``, from the table
    of samplers and the guided denoiser's cost) equals what sampling counts, call by call."""
    from {{ cookiecutter.package_name }}.config import run_config
    from {{ cookiecutter.package_name }}.runs import new_model

    cfg = load_config(["experiment=digits", "model.conditional=true", "model.unet.channels=8"])
    model = new_model(cfg, [1, 8, 8], [str(k) for k in range(10)])
    sampling = run_config(model.config, "sampling", {"sampler": sampler, "steps": steps, "guidance": guidance}).sampling
    assert model.nfe(sampling) == model.sample(2, torch.Generator().manual_seed(0), sampling).nfe


def test_the_ideal_model_is_trained_by_storing_its_examples_and_every_sampler_ends_on_one(project_dir, capsys):
    """model.name=ideal: ``train`` stores the training examples (no steps) in a run that every
    command loads. Whatever the sampler, each sample is a training example of the class asked for."""
    from {{ cookiecutter.package_name }}.config import run_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.diffusion.samplers import SAMPLERS

    assert main(["train", "experiment=digits", "model.name=ideal", "model.conditional=true", "name=ideal"]) == 0
    assert "memorised (no training)" in capsys.readouterr().out
    model, run = load_run("runs/ideal")
    assert model.origin["step"] == 0 and (run.samples / "step_0000000.png").is_file()
    data = DiffusionDataModule.of_run(model.config)
    examples, labels = data.training_examples(list(range(len(data.train_set)))), data.train_set.labels
    asked = torch.tensor([3, 3, 3, 7, 7, 7])
    for sampler in SAMPLERS:
        sampling = run_config(model.config, "sampling", {"sampler": sampler, "steps": 12, "guidance": 1.0}).sampling
        x = model.sample(6, torch.Generator().manual_seed(0), sampling, labels=asked).x
        distances = torch.cdist(x.flatten(1), examples.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
        assert distances.min(1).values.max() < 1e-4, sampler
        assert torch.equal(labels[distances.argmin(1)], asked), sampler
    assert main(["export", "run=runs/ideal", "out=exports/ideal"]) == 0           # the examples travel as weights
    assert main(["export", "run=runs/ideal", "out=exports/ideal"]) == 0           # and are written again in place
    exported, _ = load_run("exports/ideal")
    assert torch.equal(exported.denoiser.examples, model.denoiser.examples)
    assert main(["interpolate", "run=runs/ideal", "between=images", "images=[0,5]", "frames=3"]) == 0


def test_a_command_opens_its_run_with_its_sampling_keys_apart_and_its_labels_made_class_numbers(project_dir):
    from {{ cookiecutter.package_name }}.commands.sample import SampleCommand

    assert main(["train", "experiment=digits", "model.name=ideal", "model.conditional=true", "name=ideal",
                 "trainer.sample_count=2"]) == 0
    command, model, run, sampling = open_run(["run=runs/ideal", "n=3", "steps=7", "labels=['9',4]"], SampleCommand,
                                             "sample", ("n",))
    assert (run.root, command.n, command.labels, "steps" in command) == (Path("runs/ideal"), 3, [9, 4], False)
    assert model.config.sampling.steps != 7 and sampling.steps == 7       # the run's sampling, with the steps given
    assert sampling.sampler == model.config.sampling.sampler
    with pytest.raises(ConfigError, match=r"^bad value for 'n': 0 \(must be"):
        open_run(["run=runs/ideal", "n=0"], SampleCommand, "sample", ("n",))
    with pytest.raises(ConfigError, match=r"^sample needs run=<run directory or .ckpt file>, e.g. run=runs/digits$"):
        open_run(["n=3"], SampleCommand, "sample")


def test_the_readme_python_example_runs(project_dir):
    import re

    from conftest import PROJECT

    assert main(["train", "experiment=digits", "logger=csv", "model.unet.channels=8", "trainer.max_steps=2",
                 "data.batch_size=8", *FAST]) == 0
    code = re.search(r"```python\n(.*?)```", (PROJECT / "README.md").read_text(), re.S).group(1)
    scope = {}
    exec(code, scope)
    assert scope["result"].x.shape == (16, *scope["model"].data_shape) and len(scope["path"].steps) == 20
    assert scope["samples"].shape == scope["result"].x.shape


# -- nothing lost, nothing executed ------------------------------------------------------------
TOY = ["experiment=toy2d", "logger=csv", "data.toy_samples=400", "data.batch_size=64",
       "diffusion.train_noise=lognormal", "trainer.sample_every_n_steps=1000", "trainer.val_every_n_steps=1000"]


def package_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args]


def subprocess_env() -> dict:
    """The project importable from src/, and the same thread count in every process (float sums
    then happen in the same order, so weights compare bit for bit)."""
    from conftest import PROJECT

    return {**os.environ, "PYTHONPATH": str(PROJECT / "src"), "OMP_NUM_THREADS": "2"}


def checkpoint_of(name: str) -> dict:
    return torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=True)


def adamw_updates(saved: dict) -> set[float]:
    """The updates AdamW applied, as each weight's step count in a checkpoint (a skipped step adds none)."""
    return {state["step"].item() for state in saved["optimizer_states"][0]["state"].values()}


def test_a_planted_pickle_payload_never_runs(project_dir, capsys):
    """A shared checkpoint is read weights-only: a pickled object is refused, by name, whether
    it is sampled from (file or run directory) or resumed."""
    assert main(["train", *TOY, "name=shared", "trainer.max_steps=2"]) == 0
    planted = checkpoint_of("shared")
    planted["payload"] = Payload()
    torch.save(planted, "runs/shared/checkpoints/last.ckpt")
    for command in (["sample", "run=runs/shared/checkpoints/last.ckpt"], ["sample", "run=runs/shared"],
                    ["train", *TOY, "name=shared", "trainer.max_steps=4"]):
        capsys.readouterr()
        assert main(command) == 2
        assert "refusing to load runs/shared/checkpoints/last.ckpt" in capsys.readouterr().err
    assert not (project_dir / "payload-ran").exists()


class Payload:
    def __reduce__(self):
        return (open, ("payload-ran", "w"))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None], ids=["empty", "text", "truncated"])
def test_unreadable_checkpoints_are_one_error_line(project_dir, capsys, content):
    assert main(["train", *TOY, "name=ok", "trainer.max_steps=1"]) == 0
    whole = (project_dir / "runs/ok/checkpoints/last.ckpt").read_bytes()
    (project_dir / "bad.ckpt").write_bytes(whole[: len(whole) // 2] if content is None else content)
    capsys.readouterr()
    assert main(["sample", "run=bad.ckpt"]) == 2
    assert capsys.readouterr().err.startswith("ERROR: bad.ckpt is not a readable checkpoint")


def test_a_run_saved_before_a_key_existed_loads_with_config_yamls_default_for_it(project_dir):
    """Old checkpoints stay loadable: a key the saved configuration lacks (data.train_size, the lora section) takes
    config.yaml's value, chosen to keep what the code did before the key; the saved values win everywhere else."""
    assert main(["train", *TOY, "name=old", "trainer.max_steps=1", "optim.lr=0.005"]) == 0
    checkpoint = checkpoint_of("old")
    saved = checkpoint["hyper_parameters"]["config"]
    del saved["data"]["train_size"], saved["lora"]
    torch.save(checkpoint, project_dir / "runs/old/checkpoints/last.ckpt")
    model, _ = load_run("runs/old")
    defaults = load_config([])
    assert model.config.data.train_size == defaults.data.train_size and model.config.lora == defaults.lora
    assert model.config.optim.lr == 0.005 and model.config.data.name == "toy2d"


def test_a_checkpoint_whose_configuration_does_not_fit_its_weights_says_so(project_dir):
    assert main(["train", *TOY, "name=misfit", "trainer.max_steps=1"]) == 0
    checkpoint = checkpoint_of("misfit")
    checkpoint["hyper_parameters"]["config"]["model"]["mlp"]["width"] *= 2
    torch.save(checkpoint, project_dir / "runs/misfit/checkpoints/last.ckpt")
    with pytest.raises(ConfigError) as error:
        load_run("runs/misfit")
    assert str(error.value).startswith("runs/misfit/checkpoints/last.ckpt does not fit the model its own "
                                       "configuration describes: Error(s) in loading state_dict")


def test_loading_a_run_leaves_the_callers_random_state_and_its_config_reads_alike_from_folder_or_checkpoint(
        project_dir):
    """Building the network draws initial weights that the checkpoint then replaces: in a fork of the generator, so
    that a script's seeded draws do not depend on whether it loaded a model first. lora.base reads a run's
    configuration without its weights (``saved_config``), from its folder or its .ckpt, and a diffusers pipeline's,
    from its folder or its hub id (hf:owner/name), without loading the pipeline."""
    assert main(["train", *TOY, "name=seeded", "trainer.max_steps=1"]) == 0
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    model, _ = load_run("runs/seeded")
    assert torch.equal(torch.rand(3), expected)
    assert not model.denoiser.training and not any(p.requires_grad for p in model.denoiser.parameters())
    assert saved_config("runs/seeded/checkpoints/last.ckpt") == saved_config("runs/seeded") == model.config
    (project_dir / "pipeline").mkdir()
    (project_dir / "pipeline" / "model_index.json").write_text("{}")
    for base, source in (("pipeline", "pipeline"), ("hf:owner/name", "owner/name")):
        assert saved_config(base).model == load_config(["model.name=pretrained", "model.conditional=false",
                                                        f"model.pretrained.source={source}"]).model


@pytest.mark.parametrize("part", ["state_dict", "hyper_parameters", "config", "data_shape", None])
def test_a_checkpoint_needs_its_weights_config_and_data_shape(tmp_path, part):
    hparams = {"config": {}, "data_shape": [2]}
    checkpoint = {"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": hparams}
    checkpoint.pop(part, None)
    hparams.pop(part, None)                                              # the part left out, if any
    torch.save(checkpoint, tmp_path / "some.ckpt")
    if part is None:                                                     # nothing missing
        assert read_checkpoint(tmp_path / "some.ckpt").keys() == {"state_dict", "hyper_parameters"}
        return
    with pytest.raises(ConfigError, match="some.ckpt is a torch file, but not a checkpoint of this project"):
        read_checkpoint(tmp_path / "some.ckpt")


def test_a_run_directory_is_laid_out_as_the_runs_module_says():
    listed = re.findall(r"^ {8}(\S+)", runs.__doc__.split("An export")[0], re.M)     # config.yaml, samples/step_*.png
    run = Run.named("some")
    for path in (run.config, run.classes, run.last_checkpoint, run.samples, run.generated, run.fid, run.inspect,
                 run.pairs, run.class_images):
        name = path.relative_to("runs/some").as_posix()
        assert name in listed or any(entry.startswith(f"{name}/") for entry in listed), name


def test_an_unreadable_files_error_is_told_in_one_short_line():
    """``describe``, which unreadable exports and pipelines quote: the error's kind and its first line,
    cut at 100 characters unless told otherwise."""
    assert describe(ValueError("bad header\nat byte 8")) == "ValueError: bad header"
    assert describe(OSError("x" * 150)) == f"OSError: {'x' * 100}"
    assert describe(OSError("x" * 200), 160) == f"OSError: {'x' * 160}"
    assert describe(KeyError()) == "KeyError"


def test_a_run_resumes_from_its_last_checkpoint_only_when_asked_and_only_on_the_same_data(project_dir, capsys):
    """Run.checkpoint_to_resume on a run written by hand: none is a new run; one is refused unless
    trainer.resume is set, and resumed at its step only with its data's shape and class names."""
    cfg = load_config(["experiment=digits", "trainer.resume=true"])
    run = Run("runs/x")
    assert run.checkpoint_to_resume(cfg, [1, 8, 8], []) == (None, 0)
    run.save_config(cfg, [])
    assert OmegaConf.load("runs/x/config.yaml") == cfg and not Path("runs/x/classes.json").exists()
    run.save_config(cfg, ["a", "b"])
    assert json.loads(Path("runs/x/classes.json").read_text()) == ["a", "b"]

    run.last_checkpoint.parent.mkdir()
    hparams = {"config": OmegaConf.to_container(cfg), "data_shape": [1, 8, 8], "class_names": None}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "global_step": 12}, run.last_checkpoint)
    assert run.checkpoint_to_resume(cfg, (1, 8, 8), []) == (Path("runs/x/checkpoints/last.ckpt"), 12)
    assert capsys.readouterr().out == ""                                   # nothing changed, nothing reported
    changed = cfg.copy()
    changed.optim.lr = 0.5
    assert run.checkpoint_to_resume(changed, [1, 8, 8], [])[1] == 12
    assert capsys.readouterr().out == f"resuming runs/x with changed settings: optim.lr=0.5 (was {cfg.optim.lr})\n"
    for shape, classes, now in [([3, 8, 8], [], "[3, 8, 8] with none"), ([1, 8, 8], ["a"], "[1, 8, 8] with ['a']")]:
        with pytest.raises(ConfigError) as error:
            run.checkpoint_to_resume(cfg, shape, classes)
        assert str(error.value) == (f"runs/x was trained on data of shape [1, 8, 8] with classes none; it would "
                                    f"now train on {now}. Resume with the same data, or start a new run with "
                                    "name=<new name>")
    cfg.trainer.resume = False
    with pytest.raises(ConfigError) as error:
        run.checkpoint_to_resume(cfg, [1, 8, 8], [])
    assert str(error.value) == ("runs/x already holds a run; resume it with trainer.resume=true or start another "
                                "with name=<new name>")


def test_resuming_applies_new_optimiser_settings_and_refuses_a_new_network(project_dir, capsys):
    assert main(["train", *TOY, "name=change", "trainer.max_steps=3", "optim.warmup_steps=1"]) == 0
    assert main(["train", *TOY, "name=change", "trainer.max_steps=5", "optim.warmup_steps=1", "optim.lr=5e-4",
                 "optim.betas=[0.8,0.9]", "optim.weight_decay=0.05"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr=0.0005 (was 0.001)" in out and "runs/change (resuming from step 3)" in out
    saved = checkpoint_of("change")
    group = saved["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == pytest.approx(5e-4) and group["initial_lr"] == 5e-4     # not the saved 1e-3
    assert tuple(group["betas"]) == (0.8, 0.9) and group["weight_decay"] == 0.05
    assert saved["lr_schedulers"][0]["base_lrs"] == [5e-4]

    record = (project_dir / "runs/change/config.yaml").read_text()
    assert main(["train", *TOY, "name=change", "trainer.max_steps=7", "model.mlp.width=64"]) == 2
    assert "cannot resume with model.mlp.width=64 (trained with 256)" in capsys.readouterr().err
    assert (project_dir / "runs/change/config.yaml").read_text() == record          # a failed resume writes nothing


def test_resuming_on_data_of_the_same_shape_with_other_classes_is_refused(project_dir, capsys):
    """The moons' 2 classes, then the Gaussians' 8: points of the same shape, but the class embedding would be
    trained on labels that mean something else."""
    conditional = [*TOY, "name=classes", "model.conditional=true"]
    assert main(["train", *conditional, "data.toy_shape=moons", "trainer.max_steps=2"]) == 0
    capsys.readouterr()
    assert main(["train", *conditional, "data.toy_shape=gaussians", "trainer.max_steps=4"]) == 2
    said = (r"runs/classes was trained on data of shape \[2\] with classes \['0', '1'\]; it would now train on "
            r"\[2\] with \['0', '1', '2', '3', '4', '5', '6', '7'\]\. Resume with the same data")
    assert re.search(said, capsys.readouterr().err)


# What a resumed run cannot change: the network's shape and what its output means (and, for a student or
# adapters, whose network it is and the adapters' shape); each pair is a change to a run of the digits experiment
# in any bake (x0 is no bake's objective; a flag is flipped).
FIXED_ON_RESUME = [("model.name", "dit"), ("model.conditional", operator.not_), ("model.unet.channels", 8),
                   ("data.image_size", 16), ("data.channels", 3), ("diffusion.objective", "x0"),
                   ("diffusion.sigma_data", 0.7), ("distill.teacher", "runs/teacher"), ("distill.method", "ect"),
                   ("lora.base", "runs/base"), ("codec.source", "runs/ae"), ("codec.latent_std", 0.8),
                   ("lora.rank", 8), ("lora.alpha", 3.0), ("lora.targets", ["to_q"])]


@pytest.mark.parametrize("key, value", FIXED_ON_RESUME, ids=[key for key, _ in FIXED_ON_RESUME])
def test_resuming_refuses_each_change_to_the_network_and_names_it(project_dir, capsys, key, value):
    saved = load_config(["experiment=digits"])
    changed = saved.copy()
    value = value(OmegaConf.select(saved, key)) if callable(value) else value
    OmegaConf.update(changed, key, value)
    with pytest.raises(ConfigError, match=rf"^runs/x cannot resume with {key}=\S.* \(trained with "):
        check_resumable(saved, changed, Path("runs/x"))
    OmegaConf.update(saved, key, value)
    OmegaConf.update(changed, "optim.lr", 0.01)                    # the rest may change, and is reported
    check_resumable(saved, changed, Path("runs/x"))
    assert capsys.readouterr().out == f"resuming runs/x with changed settings: optim.lr=0.01 (was {saved.optim.lr})\n"


def test_a_resume_names_every_refused_change_and_reports_every_other_but_the_preset_and_experiment(project_dir,
                                                                                                  capsys):
    saved = load_config(["experiment=digits"])
    changed = saved.copy()
    for key, value in [("preset", "debug"), ("experiment", "mnist"), ("optim.lr", 0.01), ("trainer.max_steps", 7)]:
        OmegaConf.update(changed, key, value)
    check_resumable(saved, changed, Path("runs/x"))
    assert capsys.readouterr().out == ("resuming runs/x with changed settings: optim.lr=0.01 (was "
                                       f"{saved.optim.lr}), trainer.max_steps=7 (was {saved.trainer.max_steps})\n")
    OmegaConf.update(changed, "data.channels", 3)
    OmegaConf.update(changed, "diffusion.sigma_data", 0.7)
    with pytest.raises(ConfigError) as error:
        check_resumable(saved, changed, Path("runs/x"))
    assert str(error.value) == ("runs/x cannot resume with data.channels=3 (trained with 1), diffusion.sigma_data=0.7 "
                                f"(trained with {saved.diffusion.sigma_data}): drop the change, or start a new run "
                                "with name=<new name>")


def test_a_resumed_optimiser_keeps_its_place_in_the_schedule_at_the_new_rate():
    """Saved mid-warm-up at 2e-4 of 1e-3 and resumed with optim.lr=5e-4: the step it resumes at
    runs at 1e-4, the same fraction of the new rate; a checkpoint without optimiser states (an
    export's weights) loads as it is."""
    from types import SimpleNamespace

    from {{ cookiecutter.package_name }}.module import DiffusionModule

    module = SimpleNamespace(cfg=load_config(["optim.lr=5e-4", "optim.betas=[0.8,0.9]", "optim.weight_decay=0.05"]))
    group = {"lr": 2e-4, "initial_lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0}
    checkpoint = {"optimizer_states": [{"param_groups": [group]}], "lr_schedulers": [{"base_lrs": [1e-3]}]}
    DiffusionModule.on_load_checkpoint(module, checkpoint)
    assert group == {"lr": pytest.approx(1e-4), "initial_lr": 5e-4, "betas": (0.8, 0.9), "weight_decay": 0.05}
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == [5e-4]
    DiffusionModule.on_load_checkpoint(module, {})


def test_the_ema_is_its_closed_form_after_every_step(project_dir, monkeypatch):
    """EMA_0 = W_0 (the initial weights) and, after the optimiser's k-th step gives W_k,
    EMA_k = d_k EMA_(k-1) + (1 - d_k) W_k with d_k = min(optim.ema_decay, (1 + k) / (10 + k)):
    computed here from the weights seen after each step and compared with the EMA that the
    checkpoint holds, through the warm-up (d_k < 0.6 for k < 13) and after it."""
    from {{ cookiecutter.package_name }}.module import DiffusionModule

    weights = []
    configure, take_step = DiffusionModule.configure_optimizers, DiffusionModule.take_step

    def record_initial(self):
        weights.append([p.detach().clone() for p in self.denoiser.parameters()])
        return configure(self)

    def record_step(self, loss):
        taken = take_step(self, loss)
        weights.append([p.detach().clone() for p in self.denoiser.parameters()])
        return taken

    monkeypatch.setattr(DiffusionModule, "configure_optimizers", record_initial)
    monkeypatch.setattr(DiffusionModule, "take_step", record_step)
    assert main(["train", *TOY, "name=ema", "trainer.max_steps=20", "optim.ema_decay=0.6", "optim.lr=0.01"]) == 0
    assert len(weights) == 21
    ema = weights[0]
    for k in range(1, 21):
        decay = min(0.6, (1 + k) / (10 + k))
        ema = [decay * average + (1 - decay) * weight for average, weight in zip(ema, weights[k])]
    saved = checkpoint_of("ema")["state_dict"]
    names = [key for key in saved if key.startswith("ema.")]
    assert len(names) == len(ema)
    for name, expected in zip(names, ema):
        torch.testing.assert_close(saved[name], expected, rtol=1e-5, atol=1e-6)


def test_skipped_steps_count_as_steps_in_which_no_weight_moved(project_dir, monkeypatch):
    """Two non-finite losses in four steps: the step count and the learning-rate schedule move
    on every step, each step takes one batch, and AdamW counts only its two real updates."""
    from {{ cookiecutter.package_name }}.diffusion import schedules

    calls, draw = [], schedules.LogNormalNoise.__call__

    def nan_twice(self, n, device, generator=None):
        sigma = draw(self, n, device, generator)
        calls.append(generator)
        return sigma * float("nan") if generator is None and len([c for c in calls if c is None]) in (2, 3) else sigma

    monkeypatch.setattr(schedules.LogNormalNoise, "__call__", nan_twice)
    assert main(["train", *TOY, "name=skip", "trainer.max_steps=4", "data.batch_size=380"]) == 0
    saved = checkpoint_of("skip")
    assert saved["global_step"] == 4 and saved["lr_schedulers"][0]["last_epoch"] == 4
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 4, "position": 0}]  # 4 batches
    assert adamw_updates(saved) == {2.0}


@pytest.mark.subprocess
def test_sigterm_saves_and_exits_with_the_command_that_resumes(project_dir):
    process = subprocess.Popen(package_command("train", *TOY, "name=term", "trainer.max_steps=100000"),
                               env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(process, project_dir / "runs/term/csv")
    process.send_signal(signal.SIGTERM)                       # what SLURM and Colab send
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped = [line for line in err.splitlines() if line.startswith("STOPPED:")]
    step = checkpoint_of("term")["global_step"]
    assert len(stopped) == 1 and f"SIGTERM at step {step};" in stopped[0] and step > 0
    assert stopped[0].endswith("Resume with: {{ cookiecutter.package_name }} train " + " ".join(TOY) +
                               " name=term trainer.max_steps=100000")


def wait_for_steps(process, log_folder, timeout: float = 120) -> None:
    """Until training has started (its log folder exists), and a little more."""
    deadline = time.time() + timeout
    while not log_folder.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    assert process.poll() is None, process.communicate()


def saved_step(name: str) -> int:
    """The step of runs/<name>'s last.ckpt, 0 before there is one (the file is always whole)."""
    path = f"runs/{name}/checkpoints/last.ckpt"
    return torch.load(path, weights_only=True)["global_step"] if os.path.exists(path) else 0


@pytest.mark.subprocess
@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights_and_ema(project_dir):
    """Killed without warning twice, each time once the checkpoint shows 20 more steps (it is
    written every step, so kills can land in a write), and resumed: each kill lands mid-run,
    and the run ends with the same step, weights and EMA as one never interrupted, grids and
    validation included, because last.ckpt carries the data position and the random state."""
    end = 300
    args = [*TOY, f"trainer.max_steps={end}", "trainer.checkpoint_every_n_steps=1", "trainer.val_every_n_steps=15",
            "trainer.sample_every_n_steps=25", "trainer.sample_count=16", "model.mlp.width=32"]
    stops = []
    for _ in range(2):
        process = subprocess.Popen(package_command("train", *args, "name=killed"), env=subprocess_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target, deadline = saved_step("killed") + 20, time.time() + 120
        while saved_step("killed") < target and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        process.kill()
        process.wait()
        stops.append(saved_step("killed"))
    assert 20 <= stops[0] and stops[0] + 20 <= stops[1] < end, stops           # both kills landed mid-run
    subprocess.run(package_command("train", *args, "name=killed"), env=subprocess_env(), check=True,
                   capture_output=True, timeout=600)
    subprocess.run(package_command("train", *args, "name=straight"), env=subprocess_env(), check=True,
                   capture_output=True, timeout=600)
    straight, killed = checkpoint_of("straight"), checkpoint_of("killed")
    assert killed["global_step"] == straight["global_step"] == end
    assert straight["state_dict"].keys() == killed["state_dict"].keys()
    assert all(torch.equal(straight["state_dict"][k], killed["state_dict"][k]) for k in straight["state_dict"])
    assert not list((project_dir / "runs/killed/checkpoints").glob("*.partial"))


def test_a_checkpoint_write_cut_short_leaves_the_last_one_whole(tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.callbacks import AtomicCheckpointIO

    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, target)

    def dies_half_way(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1
    partial = f"last.ckpt.{os.getpid()}.partial"                       # removed at the next start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", partial]


DDP_WITH_NAN = """
import os, sys
from {package}.diffusion import schedules

draw, calls = schedules.LogNormalNoise.__call__, []

def nan_on_rank_1(self, n, device, generator=None):
    sigma = draw(self, n, device, generator)
    if generator is None:
        calls.append(1)
        if os.environ.get("LOCAL_RANK") == "1" and len(calls) in (3, 4):
            sigma[0] = float("nan")
    return sigma

schedules.LogNormalNoise.__call__ = nan_on_rank_1
from {package}.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.subprocess
def test_two_ddp_processes_skip_a_nonfinite_step_together(project_dir):
    """A NaN on one rank only: both ranks skip (or the other would wait forever in the gradient
    all-reduce), and the run finishes its steps. Two CPU processes, gloo."""
    script = project_dir / "ddp_nan.py"
    script.write_text(DDP_WITH_NAN.format(package="{{ cookiecutter.package_name }}"))
    result = subprocess.run([sys.executable, str(script), "train", *TOY, "name=ddp", "trainer.accelerator=cpu",
                             "trainer.devices=2", "trainer.max_steps=8", "data.batch_size=190"],
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = checkpoint_of("ddp")
    assert saved["global_step"] == 8
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 8, "position": 0}]
    assert adamw_updates(saved) == {6.0}  # 2 skipped


def test_sample_never_mixes_outputs_of_two_draws(project_dir, capsys):
    assert main(["train", "experiment=digits", "name=mix", "logger=csv", "model.unet.channels=8", "trainer.max_steps=1",
                 "data.batch_size=8", *FAST]) == 0
    assert main(["sample", "run=runs/mix", "n=12", "steps=2", "trajectory=true", "out=drawn"]) == 0
    assert main(["sample", "run=runs/mix", "n=3", "steps=2", "out=drawn"]) == 0
    drawn = sorted(p.name for p in (project_dir / "drawn/images").iterdir())
    assert drawn == ["000000.png", "000001.png", "000002.png"]
    assert not (project_dir / "drawn/trajectory.png").exists()
    (project_dir / "drawn/images/holiday.jpg").write_bytes(b"someone's photo")
    capsys.readouterr()
    assert main(["sample", "run=runs/mix", "n=3", "steps=2", "out=drawn"]) == 2
    assert "holiday.jpg" in capsys.readouterr().err and (project_dir / "drawn/images/holiday.jpg").exists()


@pytest.mark.parametrize("args, message", [
    (["n=0"], "'n'"), (["batch_size=0"], "'batch_size'"), (["device=banana"], "device=banana"),
    (["out=/proc/none"], "out=/proc/none"),
    (["labels=[9]"], "label 9 is not one of the model's classes: give a class number from 0 to 7"),
    (["conditions=[[1]]"], "[label, weight] pair"), (["labels=[1.5]"], "label 1.5 is not one of the model's classes"),
])
def test_bad_sample_requests_are_one_error_line(project_dir, capsys, args, message):
    assert main(["train", *TOY, "name=cond", "data.toy_shape=gaussians", "model.conditional=true",
                 "trainer.max_steps=1"]) == 0
    capsys.readouterr()
    assert main(["sample", "run=runs/cond", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and message in err and "\n" not in err
