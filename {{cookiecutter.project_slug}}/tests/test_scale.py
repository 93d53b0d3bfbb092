"""Training at scale, proven on the CPU: several processes (DDP over gloo, as on a multi-GPU
node), a SLURM requeue simulated with srun's environment, the wall-clock budget, the guard
against non-finite gradients, and the fast paths that the GPU presets switch on."""
import json
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from {{ cookiecutter.package_name }}.callbacks.progress import StepProgress
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.module import DiffusionModule
from {{ cookiecutter.package_name }}.runs import new_model

from test_train import TOY, adamw_updates, checkpoint_of, package_command, subprocess_env, wait_for_steps

PRESETS = sorted(path.stem for path in (Path(__file__).parents[1] / "configs" / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_loads_and_says_what_it_sets(project_dir, preset):
    text = (project_dir / "configs/presets" / f"{preset}.yaml").read_text()
    assert text.startswith("# ") and len([line for line in text.splitlines() if line.startswith("#")]) >= 2
    cfg = load_config([f"preset={preset}"])
    assert cfg.preset == preset


def test_the_debug_preset_keeps_an_experiment_short(project_dir):
    cfg = load_config(["experiment=toy2d", "preset=debug"])
    assert (cfg.trainer.max_steps, cfg.data.batch_size, cfg.trainer.detect_anomaly) == (20, 16, True)
    assert cfg.data.toy_shape == load_config(["experiment=toy2d"]).data.toy_shape        # the rest is the experiment's
    assert load_config(["experiment=toy2d", "preset=debug", "trainer.max_steps=7"]).trainer.max_steps == 7
    assert load_config(["experiment=toy2d", "preset=cpu"]).data.batch_size == 256          # other presets yield to it


def test_a_debug_run_goes_end_to_end(project_dir, capsys):
    assert main(["train", "experiment=toy2d", "preset=debug", "logger=csv", "name=check"]) == 0
    assert checkpoint_of("check")["global_step"] == 20
    assert sorted(p.name for p in (project_dir / "runs/check/samples").iterdir()) == [
        "step_0000010.png", "step_0000020.png"]


# -- several processes ----------------------------------------------------------------------------
# Records, in each process, what it trained on and what it drew, then its EMA weights at the end.
DDP_RECORDER = """
import json, os, sys, torch
from {package}.cli import main
from {package}.diffusion import schedules
from {package}.model import Model
from {package}.module import DiffusionModule

rank = os.environ.get("LOCAL_RANK", "0")
seen = dict(sigmas=[], rows=[], val_examples=0, grids=0)
draw, batch_loss, validation_step, sample = (schedules.LogNormalNoise.__call__, DiffusionModule.batch_loss,
                                              DiffusionModule.validation_step, Model.sample)

def record_draw(self, n, device, generator=None):
    sigma = draw(self, n, device, generator)
    if generator is None:
        seen["sigmas"] += sigma.tolist()
    return sigma

def record_batch(self, batch):
    if self.global_step < 2:                       # one epoch: two batches per process
        seen["rows"] += batch[0].tolist()
    return batch_loss(self, batch)

def record_validation(self, batch, batch_idx):
    seen["val_examples"] += len(batch[0])
    return validation_step(self, batch, batch_idx)

def record_grid(self, *args, **kwargs):
    seen["grids"] += 1
    return sample(self, *args, **kwargs)

def save_record(self):
    torch.save(self.ema.state_dict(), "ema_rank%s.pt" % rank)
    with open("seen_rank%s.json" % rank, "w") as file:
        json.dump(seen, file)

schedules.LogNormalNoise.__call__ = record_draw
DiffusionModule.batch_loss, DiffusionModule.validation_step = record_batch, record_validation
Model.sample, DiffusionModule.on_train_end = record_grid, save_record
sys.exit(main(sys.argv[1:]))
"""
TWO_PROCESSES = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_processes_draw_their_own_noise_and_data_keep_one_ema_and_resume_exactly(project_dir):
    """DDP over gloo with two CPU processes: each draws its own noise and its own half of every
    epoch; validation is shared out, not repeated; one process draws the grids; the gradients
    are summed, so the EMA weights come out identical in both. Stopped after 4 steps and
    resumed to 8, the run ends with the weights and EMA of the 8 straight steps, because the
    checkpoint holds each process's own random state (its noise levels and noise) and the
    shared position in the data, with grids and validation on."""
    args = [*TOY, *TWO_PROCESSES, "trainer.val_every_n_steps=3", "trainer.sample_every_n_steps=3"]

    def train(*command):
        result = subprocess.run([*command, *args], env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    script = project_dir / "ddp_record.py"
    script.write_text(DDP_RECORDER.format(package="{{ cookiecutter.package_name }}"))
    train(sys.executable, str(script), "train", "name=ddp", "trainer.max_steps=8")
    seen = [json.loads((project_dir / f"seen_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0]["sigmas"] and not set(seen[0]["sigmas"]) & set(seen[1]["sigmas"])
    rows = [{tuple(row) for row in s["rows"]} for s in seen]
    assert len(rows[0]) == len(rows[1]) == 2 * 64 and not rows[0] & rows[1]
    assert seen[0]["val_examples"] + seen[1]["val_examples"] == 2 * 20      # 2 checks of the 20 held out
    assert seen[0]["grids"] > 0 and seen[1]["grids"] == 0
    ema = [torch.load(project_dir / f"ema_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert all(torch.equal(ema[0][key], ema[1][key]) for key in ema[0])
    straight = checkpoint_of("ddp")
    assert all(torch.equal(straight["state_dict"][f"ema.{key}"], ema[0][key]) for key in ema[0])

    train(*package_command("train", "name=resumed", "trainer.max_steps=4"))
    assert "random stream restarts" not in train(*package_command("train", "name=resumed", "trainer.max_steps=8"))
    resumed = checkpoint_of("resumed")
    assert straight["global_step"] == resumed["global_step"] == 8
    assert len(resumed["rng"]["ranks"]["torch"]) == 2
    assert all(torch.equal(straight["state_dict"][key], resumed["state_dict"][key]) for key in straight["state_dict"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def srun(project_dir: Path, args: list[str], port: int) -> list[subprocess.Popen]:
    """Two tasks on one node, started as ``srun`` starts them: SLURM's environment tells each
    its rank; ``scontrol`` is a stand-in that records how it was called."""
    fake = project_dir / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {project_dir / 'scontrol-calls'}\n")
    (fake / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1", "MASTER_PORT": str(port),
             "PATH": f"{fake}:{os.environ['PATH']}"}
    return [subprocess.Popen(package_command("train", *args), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**subprocess_env(), **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
            for rank in (0, 1)]


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_slurm_warning_saves_requeues_and_the_requeued_job_resumes(project_dir):
    """SIGUSR1 (sbatch --signal=SIGUSR1@90) to both tasks: they stop at the same step, save,
    the first requeues the job once, and the same command then resumes from that step."""
    args = [*TOY, *TWO_PROCESSES, "name=slurm", "trainer.max_steps=100000"]
    tasks = srun(project_dir, args, free_port())
    wait_for_steps(tasks[0], project_dir / "runs/slurm/csv")
    for task in tasks:
        task.send_signal(signal.SIGUSR1)
    errors = [task.communicate(timeout=120)[1] for task in tasks]
    assert [task.returncode for task in tasks] == [128 + signal.SIGUSR1] * 2, errors[0][-3000:]
    step = checkpoint_of("slurm")["global_step"]
    assert step > 0 and f"SIGUSR1 at step {step}; " in errors[0]
    assert "requeued SLURM job 4242, which resumes here" in errors[0]
    assert "STOPPED" not in errors[1]                       # one line in the job's log, not one per task
    assert (project_dir / "scontrol-calls").read_text() == "requeue 4242\n"

    tasks = srun(project_dir, [*args[:-1], f"trainer.max_steps={step + 5}"], free_port())
    outputs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][1][-3000:]
    assert f"runs/slurm (resuming from step {step})" in outputs[0][0]
    assert checkpoint_of("slurm")["global_step"] == step + 5


def test_an_mps_random_state_is_saved_and_restored(monkeypatch):
    """Apple GPUs keep their own random state: it travels in last.ckpt like the CPU's (tested on
    the CPU by standing in for torch.mps)."""
    from {{ cookiecutter.package_name }}.callbacks import LastCheckpoint

    saved, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: saved)
    monkeypatch.setattr(torch.mps, "set_rng_state", restored.append)
    callback, trainer, checkpoint = LastCheckpoint("last.ckpt", 1), SimpleNamespace(world_size=1), {}
    callback.on_save_checkpoint(trainer, None, checkpoint)
    callback.on_load_checkpoint(trainer, None, checkpoint)
    assert torch.equal(checkpoint["rng"]["mps"], saved) and restored == [saved]


def test_data_too_large_for_the_gpu_says_that_a_resumed_epoch_is_reshuffled(project_dir, capsys):
    """Above data.gpu_cache_gb a DataLoader serves the batches; it does not keep its place in
    the epoch, and a resumed run says so (on a GPU; stood in for here)."""
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule

    cfg = load_config(["experiment=toy2d", "data.toy_samples=200", "data.gpu_cache_gb=0"])
    data = DiffusionDataModule(cfg.data)
    data.setup()
    for ckpt_path, said in ((None, False), ("runs/x/checkpoints/last.ckpt", True)):
        data.trainer = SimpleNamespace(global_rank=0, world_size=1, ckpt_path=ckpt_path,
                                       strategy=SimpleNamespace(root_device=torch.device("cuda")))
        assert isinstance(data.train_dataloader(), torch.utils.data.DataLoader)
        assert ("reshuffles this epoch" in capsys.readouterr().out) == said


def test_precision_auto_and_the_fused_optimiser_follow_the_gpu(project_dir, monkeypatch):
    """bf16 autocast from Ampere (compute 8.0) on, fp16 before it, float32 on a CPU; AdamW's
    fused kernel everywhere it was asked for except under fp16 (it would unscale the gradients
    itself, after clipping had seen them scaled)."""
    from {{ cookiecutter.package_name }}.devices import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, precision in (((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", "auto") == precision
        assert resolve_precision("auto", "cpu") == "32-true" and resolve_precision("32-true", "auto") == "32-true"
    module = image_module("optim.fused=true")
    assert [module.adamw(p).defaults["fused"] for p in ("32-true", "bf16-mixed", "16-mixed")] == [True, True, False]
    assert image_module("optim.fused=false").adamw("bf16-mixed").defaults["fused"] is False


# -- ending cleanly -------------------------------------------------------------------------------
def test_the_time_budget_ends_with_a_checkpoint_and_a_grid(project_dir, capsys):
    assert main(["train", *TOY, "name=budget", "trainer.max_steps=100000", "trainer.max_time=00:00:00:02"]) == 0
    step = checkpoint_of("budget")["global_step"]
    assert 0 < step < 100000
    assert (project_dir / f"runs/budget/samples/step_{step:07d}.png").is_file()
    assert f"trainer.max_time=00:00:00:02 spent at step {step} of 100000" in capsys.readouterr().out


@pytest.mark.parametrize("world_size, decided", [(2, [10, 20]), (1, list(range(1, 25)))])
def test_several_processes_share_the_decision_to_stop_every_ten_steps(world_size, decided):
    """A shared decision (an all-reduce read on the host) makes the CPU wait for the GPU: with two
    processes it is taken at every tenth step only; one process decides alone, at every step."""
    from {{ cookiecutter.package_name }}.callbacks.graceful_stop import GracefulStop

    asked = []
    trainer = SimpleNamespace(world_size=world_size, global_step=0, strategy=SimpleNamespace(
        reduce_boolean_decision=lambda decision, all: asked.append(trainer.global_step)))
    for trainer.global_step in range(1, 25):
        GracefulStop(budget=None).on_train_batch_end(trainer, None, None, None, 0)
    assert asked == decided


@pytest.mark.parametrize("budget, shown", [(None, "(0%)  loss nan  10 img/s  elapsed 00:40  left 27:46:00"),
                                           (100, "(40%)  loss nan  10 img/s  elapsed 00:40  left 01:00")])
def test_the_progress_line_counts_down_to_whichever_end_comes_first(budget, shown, monkeypatch, capsys):
    """400 steps of one image in 40 s: 999,600 steps left take 27 h 46 min, a 100 s budget 60 s."""
    clock = iter([0.0, 40.0])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    progress = StepProgress(batch_size=1, bar=False, budget_seconds=budget)
    trainer = SimpleNamespace(is_global_zero=True, max_steps=1_000_000, global_step=0, world_size=1)
    progress.on_train_start(trainer, SimpleNamespace(device="cpu"))
    progress.show(400)
    assert capsys.readouterr().out == f"step 400/1,000,000 {shown}\n"


def test_the_progress_line_shows_the_mean_loss_of_the_steps_not_skipped(monkeypatch, capsys):
    """Losses 1, NaN, 3 and Inf since the last line: the two skipped steps are left out (mean 2),
    and the mean starts afresh after each line (none since: nan)."""
    monkeypatch.setattr("time.monotonic", lambda: 0.0)
    progress = StepProgress(batch_size=1, bar=False)
    trainer = SimpleNamespace(is_global_zero=True, max_steps=10, global_step=0, world_size=1)
    progress.on_train_start(trainer, SimpleNamespace(device="cpu"))
    for loss in (1.0, float("nan"), 3.0, float("inf")):
        progress.on_train_batch_end(trainer, None, torch.tensor(loss), None, 0)
    progress.show(4)
    progress.show(4)
    first, second = capsys.readouterr().out.splitlines()
    assert "loss 2.0000" in first and "loss nan" in second


def test_nonfinite_gradients_from_a_finite_loss_never_reach_the_weights(project_dir, monkeypatch):
    """An overflow in the backward pass only (the loss is finite, its gradient is not), on two
    steps of six: the optimiser applies four updates, and every saved tensor stays finite."""
    batch_loss, calls = DiffusionModule.batch_loss, []

    def overflowing(self, batch):
        loss = batch_loss(self, batch).clone()
        calls.append(1)
        if len(calls) in (3, 4):
            loss.register_hook(lambda grad: grad * float("inf"))
        return loss

    monkeypatch.setattr(DiffusionModule, "batch_loss", overflowing)
    assert main(["train", *TOY, "name=overflow", "trainer.max_steps=6"]) == 0
    saved = checkpoint_of("overflow")
    assert saved["global_step"] == 6 and saved["lr_schedulers"][0]["last_epoch"] == 6
    assert adamw_updates(saved) == {4.0}
    optimizer_state = [t for s in saved["optimizer_states"][0]["state"].values() for t in s.values()]
    assert all(torch.isfinite(t).all() for t in [*saved["state_dict"].values(), *optimizer_state])


# -- fast paths -----------------------------------------------------------------------------------
def image_module(*overrides: str) -> DiffusionModule:
    cfg = load_config(["experiment=digits", "model.conditional=false", "model.unet.channels=8", *overrides])
    return DiffusionModule(new_model(cfg, [1, 8, 8]))


def test_noising_the_loss_and_the_noise_embedding_stay_float32_under_autocast(project_dir):
    module = image_module()
    x0, sigma = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0.01, 0.1, 1.0, 10.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding = module.denoiser.net.embed(module.denoiser.c_noise(sigma), None)
        loss = module.denoiser.loss(x0, sigma, torch.randn_like(x0))
        network = module.denoiser.net.inp(x0)
    assert embedding.dtype == loss.dtype == torch.float32 and network.dtype == torch.bfloat16


def test_channels_last_changes_the_layout_not_the_loss(project_dir):
    batch = (torch.rand(4, 1, 8, 8) * 2 - 1, None)
    losses = []
    for layout in ("false", "true"):
        module = image_module(f"trainer.channels_last={layout}")
        module.configure_model()
        torch.manual_seed(0)
        losses.append(module.batch_loss(batch))
    convolution = module.denoiser.net.down[0][0].conv1.weight
    assert convolution.is_contiguous(memory_format=torch.channels_last) and not convolution.is_contiguous()
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)


def test_compiling_keeps_the_checkpoint_keys(project_dir):
    module = image_module("trainer.compile=max-autotune")
    keys = list(module.state_dict())
    module.configure_model()
    assert module.denoiser.net._compiled_call_impl is not None and module.ema.net._compiled_call_impl is None
    assert list(module.state_dict()) == keys          # unlike torch.compile(net), which renames every weight


@pytest.mark.slow
def test_a_compiled_run_trains_and_resumes(project_dir):
    """Minutes on a CPU: torch.compile builds C++ kernels for the network first."""
    assert main(["train", *TOY, "name=compiled", "trainer.max_steps=5", "trainer.compile=default"]) == 0
    assert main(["train", *TOY, "name=compiled", "trainer.max_steps=10", "trainer.compile=default"]) == 0
    saved = checkpoint_of("compiled")
    assert saved["global_step"] == 10 and all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_the_sbatch_script_starts_one_train_per_task_with_the_nodes_and_gpus_it_got(project_dir):
    from conftest import PROJECT

    fake = project_dir / "bin"
    fake.mkdir()
    (fake / "srun").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {project_dir / 'srun-args'}\n")
    (fake / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(project_dir),
           "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4"}
    subprocess.run(["bash", str(PROJECT / "scripts/slurm.sbatch"), "name=flowers", "data.batch_size=32"],
                   env=env, check=True, capture_output=True)
    args = (project_dir / "srun-args").read_text().splitlines()
    assert args[:3] == ["--kill-on-bad-exit=1", "{{ cookiecutter.package_name }}", "train"]
    cfg = load_config(args[3:])
    assert (cfg.preset, cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.devices) == ("slurm", "ddp", 2, 4)
    assert (cfg.name, cfg.data.batch_size) == ("flowers", 32)
    sbatch = (PROJECT / "scripts/slurm.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in sbatch and "#SBATCH --requeue" in sbatch


# -- knowing what a step costs --------------------------------------------------------------------
def test_flops_are_counted_as_the_textbook_counts_them():
    """A linear layer: 2 n d_in d_out forward (a multiply and an add per weight and example),
    twice that backward (gradients of the input and of the weights). A convolution: 2 per
    multiply-add of every output pixel."""
    from {{ cookiecutter.package_name }}.speed import flops_of

    layer, x = torch.nn.Linear(64, 32), torch.randn(8, 64, requires_grad=True)
    assert flops_of(lambda: layer(x)) == 2 * 8 * 64 * 32
    assert flops_of(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 64 * 32
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    assert flops_of(lambda: conv(torch.randn(2, 3, 10, 10))) == 2 * 2 * 10 * 10 * 16 * 3 * 3 * 3


def test_bench_reports_speed_flops_mfu_and_time(project_dir, capsys):
    assert main(["bench", "experiment=digits", "model.conditional=false", "model.unet.channels=8",
                 "data.batch_size=32", "evaluation.batch_size=16", "sampling.steps=2", "logger=csv"]) == 0
    out = capsys.readouterr().out
    for figure in ("GFLOP per training step", "device peak:", "training, bare step:", "training, full loop:",
                   "sampling:", "an epoch (1,707 images)"):
        assert figure in out, out
    shares = [int(word[:-1]) for line in out.splitlines() for word in line.split() if word.endswith("%")]
    assert len(shares) == 4 and all(0 <= share <= 150 for share in shares), out     # 3 MFUs, loop / bare step


def test_bench_figures_follow_from_its_counts_and_timings(project_dir, capsys, monkeypatch):
    """With the FLOPs, the device's peak and every timed call fixed, each figure has a known
    value: 32 images in 2 s are 16 images/s, and 16 x 1 GFLOP a second of a 32 GFLOP/s peak is 50%."""
    from {{ cookiecutter.package_name }}.commands import bench
    from {{ cookiecutter.package_name }}.trainer import duration

    monkeypatch.setattr(bench, "flops_per_image", lambda *args: (1e9, 2e8))    # a training step, an evaluation
    monkeypatch.setattr(bench, "matmul_peak", lambda *args: 3.2e10)
    monkeypatch.setattr(bench, "seconds_per_call", lambda *args, **kwargs: 2.0)  # every timed call takes 2 s
    monkeypatch.setattr(bench, "full_loop_speed", lambda *args: 8.0)            # images/s
    assert main(["bench", "experiment=digits", "model.conditional=false", "model.unet.channels=8",
                 "data.batch_size=32", "evaluation.batch_size=16", "sampling.steps=3", "trainer.max_steps=100"]) == 0
    out = capsys.readouterr().out
    for figure in ("training, bare step: 16 images/s, MFU 50%",            # 32 / 2 s; 16 x 1e9 / 3.2e10
                   "training, full loop: 8 images/s, 50% of the bare step", "MFU 25%",
                   "sampling: 8.0 images/s (dpmpp_2m, 3 steps, 3 NFE, batch 16), MFU 15%",  # 8 x 3 x 2e8 / 3.2e10
                   f"an epoch (1,707 images) {duration(1707 / 8)}",
                   f"trainer.max_steps=100 about {duration(100 * 32 / 8)}"):
        assert figure in out, (figure, out)


def test_sampling_in_bf16_stays_close_to_float32_and_fp16_needs_a_gpu(project_dir, capsys):
    """Autocast runs the network in bf16; the sampler's own arithmetic stays float32, so the
    samples move by about bf16's rounding, not more."""
    assert main(["train", *TOY, "name=precise", "trainer.max_steps=30"]) == 0
    samples = {}
    for precision in ("32-true", "bf16-mixed"):
        assert main(["sample", "run=runs/precise", "n=200", "steps=10", f"precision={precision}",
                     f"out=out-{precision}"]) == 0
        samples[precision] = torch.load(f"out-{precision}/samples.pt")
    difference = (samples["bf16-mixed"] - samples["32-true"]).abs()
    assert samples["32-true"].dtype == torch.float32 and 0 < difference.max() < 0.1
    capsys.readouterr()
    assert main(["sample", "run=runs/precise", "precision=16-mixed", "device=cpu"]) == 2
    assert "precision=16-mixed needs a CUDA GPU" in capsys.readouterr().err


# -- memory, estimated before training ----------------------------------------------------------
@pytest.mark.once
def test_the_activations_counted_are_those_autograd_keeps_for_the_backward_pass():
    """By hand, for batch 5 through Linear(8, 16), ReLU, Linear(16, 4): the first layer keeps its
    input (5 x 8 floats), ReLU its output (5 x 16), which the second layer keeps as its input:
    the same tensor, counted once; the weights are not activations."""
    from {{ cookiecutter.package_name }}.speed import meta_copy, saved_activation_bytes

    net = meta_copy(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)))
    x = torch.ones(5, 8, device="meta")
    assert saved_activation_bytes(lambda: net(x).sum(), list(net.parameters())) == (5 * 8 + 5 * 16) * 4
    assert all(p.device.type == "meta" for p in net.parameters())


@pytest.mark.once
def test_attention_is_counted_as_fused_kernels_keep_it_not_as_an_n_by_n_matrix():
    """Queries, keys, values and output (B x H x N x D each, float16) and a float32 log-sum-exp per
    query and head: linear in the sequence length N."""
    from {{ cookiecutter.package_name }}.speed import fused_attention, saved_activation_bytes

    for n in (64, 4096):
        qkv = [torch.ones(2, 3, n, 8, device="meta", dtype=torch.float16, requires_grad=True) for _ in range(3)]
        assert saved_activation_bytes(partial(fused_attention, *qkv), []) == 4 * 2 * 3 * n * 8 * 2 + 2 * 3 * n * 4


def test_a_run_that_will_not_fit_the_gpu_is_refused_before_it_starts(project_dir, monkeypatch):
    """The estimate against a GPU's memory: a 1 GiB GPU cannot take it (the estimate leaves 1 GiB
    for the CUDA context), and the error names the setting to change."""
    from {{ cookiecutter.package_name }}.commands import train
    from {{ cookiecutter.package_name }}.errors import ConfigError

    module = image_module()
    data = SimpleNamespace(prior=None)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), precision="16-mixed")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=2**30))
    monkeypatch.setattr(train, "device_name", lambda device: "a small GPU")
    with pytest.raises(ConfigError, match=r"training needs about .* at batch \d+\), and a small GPU has 1.00 GiB: "
                                          r"lower data.batch_size$"):
        train.memory_needed(module.cfg, module, data, trainer)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=8 * 2**30))
    memory = train.memory_needed(module.cfg, module, data, trainer)
    weights = sum(p.numel() for p in module.denoiser.parameters())
    assert memory.weights == 4 * weights and memory.state == 16 * weights
    assert memory.batch == module.cfg.data.batch_size and memory.activations > 0
