"""Pretrained diffusers pipelines as our denoisers (adapters/pretrained.py), offline: tiny randomly
initialised models are saved with ``save_pretrained`` and loaded back from a folder. Known
answers come from diffusers itself: its schedulers' own sampling loops and targets."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PROJECT

pytestmark = pytest.mark.pretrained
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from {{ cookiecutter.package_name }}.adapters.pretrained import (
    import_diffusers,
    load_pretrained,
    sigma_to_timestep,
    sigmas_from_betas,
)
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.diffusion.guidance import GuidedDenoiser
from {{ cookiecutter.package_name }}.diffusion.samplers import ddim
from {{ cookiecutter.package_name }}.diffusion.schedules import ddpm_linear_sigmas, trailing_sigmas
from {{ cookiecutter.package_name }}.errors import ConfigError, MissingPackage

import_diffusers()          # quiet loading
STEPS = 100                 # training timesteps of the tiny schedulers


def tiny_unet(channels: int = 1, size: int = 8, **options):
    """A two-level UNet2DModel of about 30k weights."""
    return diffusers.UNet2DModel(**{"out_channels": channels, **options}, sample_size=size, in_channels=channels,
                                 layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def ddim_scheduler(prediction_type: str = "epsilon"):
    return diffusers.DDIMScheduler(num_train_timesteps=STEPS, prediction_type=prediction_type, clip_sample=False,
                                   timestep_spacing="trailing", steps_offset=1)


def pixel_pipeline(folder, prediction_type="epsilon", channels=1, size=8) -> str:
    torch.manual_seed(0)
    pipeline = diffusers.DDPMPipeline(unet=tiny_unet(channels, size), scheduler=ddim_scheduler(prediction_type))
    pipeline.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    return pixel_pipeline(tmp_path_factory.mktemp("pixel") / "tiny-ddpm")


def text_pipeline(folder, vae_levels: int = 2, attention_level: int = 0) -> str:
    """A Stable Diffusion pipeline in miniature: 8x8x4 latents, a VAE of ``vae_levels`` levels
    (2: images of 16 pixels; Stable Diffusion's 4: 8x, 64), a two-level UNet with attention at
    ``attention_level`` (1: the coarser, cheap at large sizes), a one-layer CLIP text encoder and
    a character-level tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = diffusers.AutoencoderKL(block_out_channels=(8,) + (16,) * (vae_levels - 1), latent_channels=4,
                                  norm_num_groups=4, layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D",) * vae_levels,
                                  up_block_types=("UpDecoderBlock2D",) * vae_levels)
    down, up = ["DownBlock2D", "DownBlock2D"], ["UpBlock2D", "UpBlock2D"]
    down[attention_level], up[1 - attention_level] = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                          attention_head_dim=2,
                                          down_block_types=tuple(down), up_block_types=tuple(up))
    pipeline = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                                 scheduler=ddim_scheduler(), safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    return text_pipeline(tmp_path_factory.mktemp("text") / "tiny-sd")


def if_pipeline(folder) -> str:
    """DeepFloyd IF's first stage in miniature: 8x8 pixels, a case-sensitive word-level tokenizer
    of a few words (IF's T5 tokenizer also tells "Fox" from "fox"), a one-layer T5 text encoder
    (IF's is T5-XXL), a UNet that predicts the noise and its variance (6 channels out) from the
    text's states and their pooled summary, and IF's DDPM scheduler with learned variance."""
    import tokenizers

    words = {word: i for i, word in enumerate(["<pad>", "</s>", "<unk>", "a", "red", "fox", "on", "snow"])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>", model_max_length=16)
    torch.manual_seed(0)
    encoder = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0,
        eos_token_id=1))
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=6, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                          attention_head_dim=2, encoder_hid_dim=16, addition_embed_type="text",
                                          addition_embed_type_num_heads=2,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=STEPS, variance_type="learned_range", clip_sample=False)
    pipeline = diffusers.IFPipeline(tokenizer=tokenizer, text_encoder=encoder, unet=unet, scheduler=scheduler,
                                    safety_checker=None, feature_extractor=None, watermarker=None,
                                    requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def if_folder(tmp_path_factory):
    return if_pipeline(tmp_path_factory.mktemp("if") / "tiny-if")


def test_the_noise_levels_are_the_schedule_in_sigma_form_and_timesteps_exact_at_training_steps():
    """DDPM's linear betas of diffusers' scheduler give the sigmas of Ho et al.'s schedule (our
    schedules.py, computed independently); each training step's sigma maps back
    to its own timestep exactly, and half-way in log(sigma) to half-way between steps."""
    scheduler = diffusers.DDPMScheduler()             # 1000 steps, betas 1e-4 to 0.02
    sigmas = sigmas_from_betas(scheduler.betas)
    assert sigmas.dtype == torch.float64
    torch.testing.assert_close(sigmas, ddpm_linear_sigmas(), rtol=1e-6, atol=0)     # float32 betas
    steps = torch.arange(len(sigmas), dtype=torch.float64)
    assert torch.equal(sigma_to_timestep(sigmas, sigmas), steps)
    middle = (sigmas[:-1].log() + sigmas[1:].log()).div(2).exp()
    torch.testing.assert_close(sigma_to_timestep(middle, sigmas), steps[:-1] + 0.5, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_gives_back_the_clean_image(tmp_path, prediction_type):
    """A network that returns diffusers' own training target for its input (the noise, the
    velocity of ``get_velocity``, or the image) makes our denoiser return the clean image."""
    pretrained = load_pretrained(pixel_pipeline(tmp_path / "p", prediction_type))
    scheduler = pretrained.pipeline.scheduler
    x0, eps = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 40, 99])
    targets = {"epsilon": eps, "v_prediction": scheduler.get_velocity(x0, eps, t), "sample": x0}
    noisy = scheduler.add_noise(x0, eps, t)

    class Oracle(torch.nn.Module):
        def forward(self, x, timestep, labels=None):
            assert torch.allclose(x, noisy, atol=1e-5) and torch.allclose(timestep, t.float(), atol=1e-3)
            return targets[prediction_type]

    denoiser = pretrained.denoiser
    denoiser.net = Oracle()
    sigma = pretrained.sigmas[t].float()
    x = noisy * (1 + sigma[:, None, None, None] ** 2).sqrt()          # x_t / sqrt(alpha_bar_t)
    torch.testing.assert_close(denoiser(x, sigma), x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_through_the_adapter_matches_the_diffusers_ddim_loop(tmp_path, prediction_type):
    """The same network and starting noise in float64: diffusers' DDIMScheduler loop (trailing
    timesteps, eta 0) and our DDIM on the adapter agree within 1e-4, and our trailing sigmas are
    the scheduler's timesteps."""
    pretrained = load_pretrained(pixel_pipeline(tmp_path / "p", prediction_type))
    unet, scheduler = pretrained.pipeline.unet.double(), pretrained.pipeline.scheduler
    scheduler.set_timesteps(10)
    sigmas = trailing_sigmas(10, pretrained.sigmas)
    torch.testing.assert_close(sigmas[:-1], pretrained.sigmas[scheduler.timesteps])
    start = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = start.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            theirs = scheduler.step(unet(theirs, t).sample, t, theirs).prev_sample
        ours = ddim(pretrained.denoiser, sigmas, start * (1 + sigmas[0] ** 2).sqrt()).x   # x_T / sqrt(alpha_bar_T)
    assert (ours - theirs).abs().max() < 1e-4


def test_a_pipeline_folder_samples_through_the_commands(project_dir, pixel_folder):
    assert main(["sample", f"run={pixel_folder}", "n=4", "steps=3"]) == 0
    out = project_dir / "runs" / "pretrained" / "tiny-ddpm" / "generated"
    assert torch.load(out / "samples.pt").shape == (4, 1, 8, 8) and (out / "samples.png").is_file()


def test_fine_tuned_pipeline_exports_a_folder_that_diffusers_loads_with_identical_outputs(project_dir, pixel_folder):
    args = ["train", "experiment=finetune", f"model.pretrained.source={pixel_folder}", "data.name=digits",
            "data.channels=1", "logger=csv", "data.batch_size=16"]
    assert main([*args, "trainer.max_steps=2"]) == 0
    assert main([*args, "trainer.max_steps=3"]) == 0        # resumes (labelled data, a model without classes)
    assert main(["export", "run=runs/finetune"]) == 0
    export = project_dir / "exports" / "finetune"
    from {{ cookiecutter.package_name }}.runs import load_run

    model, _ = load_run("runs/finetune")
    original = diffusers.UNet2DModel.from_pretrained(pixel_folder, subfolder="unet")
    reloaded = diffusers.DiffusionPipeline.from_pretrained(export)
    assert isinstance(reloaded, diffusers.DDPMPipeline)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 80])
    with torch.no_grad():
        ours, theirs = model.denoiser.net.unet(x, t).sample, reloaded.unet(x, t).sample
        assert not torch.equal(ours, original(x, t).sample)          # it was trained
    assert torch.equal(ours, theirs)
    assert main(["sample", f"run={export}", "n=2", "steps=2"]) == 0   # and the project loads it back


def test_a_pipeline_is_fine_tuned_only_on_images_of_its_shape_and_channels(project_dir, pixel_folder, capsys):
    args = ["train", "experiment=finetune", f"model.pretrained.source={pixel_folder}", "logger=csv"]
    assert main([*args, "data.name=toy2d"]) == 2
    assert (f"model.pretrained.source={pixel_folder} draws images of shape [1, 8, 8], but data.name=toy2d gives "
            "examples of shape [2]") in capsys.readouterr().err
    assert main([*args, "data.name=digits", "data.channels=3"]) == 2
    assert f"model.pretrained.source={pixel_folder} takes 1 channels, the data has 3: set data.channels=1" in \
        capsys.readouterr().err


def test_a_text_pipeline_matches_diffusers_with_guidance(text_folder):
    """Prompts as classes: our DDIM on the guided denoiser (label 0 = the prompt, the null label
    the empty prompt) equals StableDiffusionPipeline's own loop on the same latents."""
    pretrained = load_pretrained(text_folder)
    pretrained.use_prompts(["a red fox"])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    theirs = pretrained.pipeline("a red fox", latents=latents, num_inference_steps=5, guidance_scale=4.0,
                                 height=16, width=16, output_type="latent").images
    sigmas = trailing_sigmas(5, pretrained.sigmas)
    guided = GuidedDenoiser(pretrained.denoiser, [(torch.tensor([0]), 4.0)], torch.tensor([1]))
    with torch.no_grad():
        ours = ddim(guided, sigmas, latents * (1 + sigmas[0] ** 2).sqrt()).x
    assert (ours - theirs).abs().max() < 1e-4


def test_a_text_model_samples_and_decodes_its_latents_as_diffusers_does(project_dir, text_folder):
    """The project's whole path for a latent text model (load_run, prompts as classes, guidance,
    the run's DDIM over the scheduler's trailing levels, the VAE's decode with its scaling
    factor, about 0.18) against StableDiffusionPipeline's images from the same latents."""
    from {{ cookiecutter.package_name }}.config import run_config
    from {{ cookiecutter.package_name }}.runs import load_run

    model, _ = load_run(text_folder)
    model.use_prompts(["a red fox"])
    assert model.codec.latent and model.codec.network.config.scaling_factor != 1
    sampling = run_config(model.config, "sampling", {"sampler": "ddim", "steps": 5, "guidance": 4.0}).sampling
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma_max = model.sigmas(sampling)[0].item()
    ours = model.generate(model.guided(1, 4.0, torch.tensor([0])), sampling,
                          noise=latents * math.sqrt(1 + sigma_max**2) / sigma_max).x     # the pipeline's x_T
    theirs = model.pretrained.pipeline("a red fox", latents=latents, num_inference_steps=5, guidance_scale=4.0,
                                       height=16, width=16, output_type="pt").images
    assert ours.shape == (1, 3, 16, 16)
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), theirs, rtol=0, atol=1e-4)


def test_deepfloyd_ifs_first_stage_samples_in_pixels_as_diffusers_does(project_dir, if_folder):
    """IF's first stage as a run: its prompts encoded as IF encodes them (in lower case, by T5 at
    77 tokens with the padding masked), guidance on the noise half of its 6 channels, and the
    default DPM-Solver++(2M) down the trailing levels, against IFPipeline's own loop with
    diffusers' multistep solver, from the same noise (and without IF's optional caption cleaning,
    which needs bs4 and ftfy)."""
    from {{ cookiecutter.package_name }}.config import run_config
    from {{ cookiecutter.package_name }}.runs import load_run

    model, _ = load_run(if_folder)
    model.use_prompts(["A red Fox"])
    assert model.takes_prompts and not model.codec.latent and model.data_shape == (3, 8, 8)
    sampling = run_config(model.config, "sampling", {"steps": 5, "guidance": 4.0}).sampling
    start = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma_max = model.sigmas(sampling)[0].item()
    ours = model.generate(model.guided(1, 4.0, torch.tensor([0])), sampling,
                          noise=start * math.sqrt(1 + sigma_max**2) / sigma_max).x
    pipeline = model.pretrained.pipeline
    pipeline.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
        final_sigmas_type="zero")
    theirs = pipeline("A red Fox", num_inference_steps=5, guidance_scale=4.0, output_type="pt",
                      generator=torch.Generator().manual_seed(0), clean_caption=False).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_a_text_model_edits_and_restores_images_through_its_vae(project_dir, text_folder):
    """restore on Stable Diffusion (img2img, and DPS through the VAE's decoder), guided by a
    prompt. At strength 0 SDEdit changes nothing but the VAE's round trip: the images are
    diffusers' vae.decode of their posterior means."""
    import numpy as np
    from PIL import Image

    from {{ cookiecutter.package_name }}.cli import main

    (project_dir / "pics").mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(project_dir / "pics" / f"{k}.png")
    (project_dir / "configs" / "local.yaml").write_text(
        "data:\n  name: image_folder\n  root: pics\n  image_size: 16\n  channels: 3\n  clusters: 0\n")
    run = Path("runs/pretrained") / Path(text_folder).name / "restore"
    edit = ["restore", f"run={text_folder}", "images=[0,1]", "labels=['a red fox']", "steps=3"]
    assert main([*edit, "method=sdedit", "strength=0"]) == 0
    images = torch.stack([torch.from_numpy(np.array(Image.open(f"pics/{k}.png"))).permute(2, 0, 1) for k in (0, 1)])
    vae = diffusers.AutoencoderKL.from_pretrained(text_folder, subfolder="vae")
    with torch.no_grad():
        round_trip = vae.decode(vae.encode(images.float() / 127.5 - 1).latent_dist.mean).sample
    torch.testing.assert_close(torch.load(run / "sdedit.pt"), round_trip, rtol=0, atol=1e-4)
    assert main([*edit, "method=dps"]) == 0
    assert torch.load(run / "dps.pt").shape == (2, 3, 16, 16)


def test_a_pixel_pipeline_samples_by_default_as_diffusers_dpm_solver_does(pixel_folder):
    """A pipeline loaded as a run is sampled by DPM-Solver++(2M), 25 steps down the trailing
    levels of its own schedule (diffusers' multistep solver with that spacing, from the same noise)."""
    from {{ cookiecutter.package_name }}.runs import load_run

    model, _ = load_run(pixel_folder)
    sampling = model.config.sampling
    assert (sampling.sampler, sampling.steps, sampling.schedule) == ("dpmpp_2m", 25, "trailing")
    start = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma_max = model.sigmas(sampling)[0].item()
    ours = model.generate(model.denoiser, sampling, noise=start * math.sqrt(1 + sigma_max**2) / sigma_max).x
    unet = model.pretrained.pipeline.unet
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        model.pretrained.pipeline.scheduler.config, algorithm_type="dpmsolver++", solver_order=2,
        timestep_spacing="trailing", final_sigmas_type="zero")
    scheduler.set_timesteps(25)
    theirs = start.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            theirs = scheduler.step(unet(theirs, t).sample, t, theirs).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_a_network_that_also_predicts_its_variance_is_sampled_by_its_mean(tmp_path):
    """A UNet2DModel with twice the channels out (DDPM's learned variance, Nichol & Dhariwal
    2021): its first half is the noise, as diffusers' own pipelines split it for DDIM."""
    torch.manual_seed(0)
    pipeline = diffusers.DDPMPipeline(unet=tiny_unet(out_channels=2), scheduler=ddim_scheduler())
    pipeline.save_pretrained(tmp_path / "learned")
    pretrained = load_pretrained(str(tmp_path / "learned"))
    scheduler = pretrained.pipeline.scheduler
    scheduler.set_timesteps(10)                 # a whole number of training steps apart, as DDIM's step needs
    start = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    theirs = start.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            noise, _ = pretrained.pipeline.unet(theirs, t).sample.split(1, dim=1)
            theirs = scheduler.step(noise, t, theirs).prev_sample
        sigmas = trailing_sigmas(10, pretrained.sigmas)
        ours = ddim(pretrained.denoiser, sigmas, start * (1 + sigmas[0] ** 2).sqrt()).x
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def sdxl_like_unet():
    return diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                          attention_head_dim=2, addition_embed_type="text_time",
                                          addition_time_embed_dim=8, projection_class_embeddings_input_dim=64,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


@pytest.mark.parametrize("kind, message", [
    ("sdxl", "added conditions besides the text (SDXL)"), ("vq", "VQ autoencoder (LDM)"),
    ("class", "class-conditional UNet2DModels have no null class"), ("no-ddpm", "not a UNet with a discrete-time")])
def test_pipelines_that_cannot_be_sampled_here_are_refused_by_name(text_folder, kind, message):
    """Built from diffusers' own classes in miniature: a text UNet that also wants SDXL's added
    time ids, a VQ latent pipeline, a class-conditional UNet2DModel (no null class to guide
    against) and a score-SDE pipeline (no discrete-time schedule of betas)."""
    from {{ cookiecutter.package_name }}.adapters.pretrained import adapt

    torch.manual_seed(0)
    text = load_pretrained(text_folder).pipeline
    pipelines = {
        "sdxl": lambda: diffusers.StableDiffusionPipeline(**{**text.components, "unet": sdxl_like_unet()}),
        "vq": lambda: diffusers.LDMPipeline(vqvae=diffusers.VQModel(block_out_channels=(8,), norm_num_groups=4),
                                            unet=tiny_unet(), scheduler=ddim_scheduler()),
        "class": lambda: diffusers.DDPMPipeline(unet=tiny_unet(num_class_embeds=10), scheduler=ddim_scheduler()),
        "no-ddpm": lambda: diffusers.ScoreSdeVePipeline(unet=tiny_unet(), scheduler=diffusers.ScoreSdeVeScheduler()),
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        adapt(f"tiny-{kind}", pipelines[kind]())


def test_an_anagram_and_a_prompt_interpolation_run_on_a_text_pipeline(project_dir, text_folder):
    out = project_dir / "out"
    assert main(["illusion", f"run={text_folder}", "labels=[a cat, a dog]", "views=[identity,rot180]", "n=2",
                 "steps=3", f"out={out / 'anagram'}"]) == 0
    assert torch.load(out / "anagram" / "anagram.pt").shape == (2, 3, 16, 16)     # decoded from 8x8 latents
    assert main(["interpolate", f"run={text_folder}", "between=labels", "labels=[a cat, a dog]", "frames=3",
                 "steps=3", f"out={out / 'interpolate'}"]) == 0
    assert (out / "interpolate" / "labels.gif").is_file()
    from {{ cookiecutter.package_name }}.commands import sample, train

    with pytest.raises(ConfigError) as error:
        sample.run([f"run={text_folder}", "n=1"])
    assert str(error.value) == (f"{text_folder} is a text-to-image model: give prompts as labels, e.g. "
                                "'labels=[a photo of a cat]' (sample)")
    with pytest.raises(ConfigError, match="text-to-image pipeline: those are sampled only"):
        train.run(["experiment=finetune", f"model.pretrained.source={text_folder}", "data.name=digits"])


def test_a_pixel_pipeline_teaches_few_step_students_of_its_own_network(project_dir, pixel_folder, text_folder,
                                                                       if_folder, tmp_path, capsys):
    """A DDPM pipeline as distill.teacher: the student is the pipeline's network and starts from
    its weights; it trains on the command line's data (the pipeline was trained on none of
    ours) at the recipe's noise levels, not at the pipeline's discrete ones; it samples in one
    step and exports as a pipeline whose README says how. Data of another shape, a pipeline
    that predicts x0 (for consistency) and a text-to-image pipeline, latent (Stable Diffusion)
    or in pixels (IF), are one ERROR line each."""
    from {{ cookiecutter.package_name }}.config import load_config, student_config
    from {{ cookiecutter.package_name }}.diffusion.schedules import UniformTNoise
    from {{ cookiecutter.package_name }}.runs import load_run, new_student

    torch.save(torch.randint(0, 256, (48, 1, 8, 8), dtype=torch.uint8), project_dir / "eights.pt")
    data = ["data.name=tensor_file", "data.root=eights.pt", "data.image_size=8", "data.channels=1", "data.clusters=0"]
    quick = ["logger=csv", "data.batch_size=16", "trainer.max_steps=3", "trainer.val_every_n_steps=1000",
             "trainer.sample_every_n_steps=1000", "evaluation.every_n_steps=0"]
    teacher, _ = load_run(pixel_folder)
    reflow = ["experiment=reflow", f"distill.teacher={pixel_folder}"]
    student = new_student(student_config(load_config(reflow), teacher.config, teacher_data=False), teacher)
    assert isinstance(student.noise, UniformTNoise) and student.pretrained is not None
    weights = teacher.denoiser.state_dict()
    assert all(torch.equal(value, weights[key]) for key, value in student.denoiser.state_dict().items())

    assert main(["train", "experiment=cd", f"distill.teacher={pixel_folder}", "name=cd", *data, *quick]) == 0
    assert f"a cd student of {pixel_folder}" in capsys.readouterr().out
    model, _ = load_run("runs/cd")
    assert model.config.data.root == "eights.pt" and model.config.model.pretrained.source == pixel_folder
    assert not all(torch.equal(value, weights[key]) for key, value in model.denoiser.state_dict().items())
    assert main(["sample", "run=runs/cd", "n=4", "steps=1", "out=one"]) == 0
    assert torch.load("one/samples.pt").shape == (4, 1, 8, 8)
    assert main(["export", "run=runs/cd"]) == 0
    readme = (project_dir / "exports" / "cd" / "README.md").read_text()
    assert "a cd student of" in readme and "sampler=consistency schedule=karras steps=2 sigma_min=0.8" in readme
    exported, _ = load_run("exports/cd")         # samples with the student's sampler, not the pipeline's
    assert exported.config.sampling == model.config.sampling
    assert main(["train", *reflow, "name=reflow", "distill.pairs=16", "distill.shard_size=16",
                 "distill.teacher_sampling.steps=3", *quick]) == 0

    x0_pipeline = pixel_pipeline(tmp_path / "x0", prediction_type="sample")
    capsys.readouterr()
    for args, message in ((["experiment=ect", f"distill.teacher={pixel_folder}", *data, "data.image_size=4"],
                           "draws examples of shape [1, 8, 8], but data.name=tensor_file gives [1, 4, 4]"),
                          (["experiment=cd", f"distill.teacher={x0_pipeline}", *data], "predicts x0"),
                          (["experiment=reflow", f"distill.teacher={text_folder}"], "text-to-image or latent"),
                          (["experiment=reflow", f"distill.teacher={if_folder}"], "text-to-image or latent")):
        assert main(["train", *args, *quick, "name=refused"]) == 2, args
        assert message in capsys.readouterr().err, args


@pytest.mark.subprocess
def test_a_hub_id_offline_fails_with_one_line_that_says_what_to_run(project_dir):
    """In a fresh process: the command line loads without diffusers, then a hub id that is not
    in the (empty) cache fails offline with the id and the command that fetches it, as a
    pipeline and as an autoencoder (codec.source), before any work."""
    code = ("import sys; from {{ cookiecutter.package_name }}.cli import main; assert 'diffusers' not in sys.modules; "
            "sys.exit(main(['sample', 'run=hf:nobody/nothing']) + "
            "main(['train', 'experiment=digits', 'codec.source=hf:nobody/no-vae']))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(project_dir / "hf"), "PYTHONPATH": str(PROJECT / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 4, result.stderr
    pipeline, autoencoder = result.stderr.splitlines()
    assert pipeline.startswith("ERROR: could not load nobody/nothing")
    assert "DiffusionPipeline as P; P.from_pretrained('nobody/nothing').save_pretrained('models/nothing')" in pipeline
    assert autoencoder.startswith("ERROR: could not load nobody/no-vae")
    assert "AutoencoderKL as P; P.from_pretrained('nobody/no-vae').save_pretrained('models/no-vae')" in autoencoder


def test_without_diffusers_loading_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)           # import diffusers now raises ImportError
    with pytest.raises(MissingPackage, match=r"pip install -e '\.\[pretrained\]'"):
        load_pretrained("some/model")
