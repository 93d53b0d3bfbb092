"""A pretrained diffusers pipeline as one of our denoisers (k-diffusion's ``external.py`` is the
model: scalings plus a map from sigma to the network's timestep).

A diffusers network was trained on T discrete timesteps t = 0..T-1 of a variance-preserving
schedule, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps. In the sigma form that is
x = x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps with

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),

a table of T noise levels (computed in float64 from the scheduler's betas). The
network sees x_t = x / sqrt(1 + sigma^2), which is the c_in of our eps, v and x0
parameterizations, so its prediction type picks one of them:

    epsilon -> EpsPrediction,   v_prediction -> VPrediction,   sample -> X0Prediction,

and its timestep is found by interpolating t linearly in log(sigma) between the table's entries
(exact at the training steps; Karras et al. 2022, Appendix C.3.1, do the same for DDPM models).

Text-to-image pipelines (Stable Diffusion, DeepFloyd IF's first stage) take a prompt's text
embeddings as the condition. Here prompts are classes: ``use_prompts`` encodes a list of them
into a table, a label is a row of it, and the last row is the empty prompt, the null label of
classifier-free guidance. Guidance, prompt interpolation and anagrams are then the same code as
for class labels. A latent model (one with a VAE) is sampled in latent space, and its VAE
(``codecs.PretrainedAutoencoder``) decodes the samples at the end (Rombach et al. 2022).

Only diffusers and transformers are needed, imported when a pipeline is loaded: without them
the package still imports, and loading says how to install them.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..diffusion.parameterizations import EpsPrediction, NetworkDenoiser, VPrediction, X0Prediction
from ..errors import ConfigError, MissingPackage, OfflineWeights, describe

PREDICTION_TYPES = {"epsilon": EpsPrediction, "v_prediction": VPrediction, "sample": X0Prediction}
INSTALL = "pip install -e '.[pretrained]' (diffusers and transformers)"


def sigmas_from_betas(betas: Tensor) -> Tensor:
    """The scheduler's noise levels in the sigma form, increasing with t, in float64: alpha_bar
    is the product of 1 - beta taken in float64 (diffusers' float32 ``alphas_cumprod`` loses the
    small sigmas: 1 - 0.9999 in float32 is off by 1e-4 of itself). A zero-terminal-SNR schedule's
    last alpha_bar of 0 is taken as 2^-24, as diffusers does."""
    alpha_bar = torch.cumprod(1 - betas.double(), 0).clamp(min=2**-24)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_timestep(sigma: Tensor, sigmas: Tensor) -> Tensor:
    """The (fractional) timestep of noise level ``sigma``: t interpolated linearly in log(sigma)
    between the training steps, whose noise levels ``sigmas`` increase with t. Exact at the
    training steps; levels outside the table's range are clamped to its ends."""
    log_table = sigmas.to(sigma.device, torch.promote_types(sigma.dtype, torch.float32)).log()
    log_sigma = sigma.to(log_table.dtype).log().clamp(log_table[0], log_table[-1])
    upper = torch.searchsorted(log_table, log_sigma).clamp(1, len(log_table) - 1)
    lower = upper - 1
    fraction = (log_sigma - log_table[lower]) / (log_table[upper] - log_table[lower])
    return lower + fraction


class DiscreteTimeDenoiser(NetworkDenoiser):
    """A network trained on discrete timesteps, told the timestep of each noise level."""

    def __init__(self, net: nn.Module, prediction_type: str, sigmas: Tensor):
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction type {prediction_type} is not one of {', '.join(PREDICTION_TYPES)}")
        super().__init__(net, PREDICTION_TYPES[prediction_type](), sigmas[0].item(), sigmas[-1].item())
        self.prediction_type = prediction_type
        self.register_buffer("sigmas", sigmas.float(), persistent=False)   # float32 on the device
        self.sigmas64 = sigmas                                             # and float64 on the CPU

    def c_noise(self, sigma: Tensor) -> Tensor:
        table = self.sigmas64 if sigma.dtype == torch.float64 else self.sigmas
        return sigma_to_timestep(sigma, table)


class UNet(nn.Module):
    """A diffusers UNet2DModel called as our networks are, ``net(x, t, labels)``. A network that
    also predicts its variance (twice the channels out) is read for its mean only."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.unet(x.to(self.unet.dtype), t).sample[:, :x.shape[1]]

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()


class PromptUNet(UNet):
    """A text-conditioned UNet (UNet2DConditionModel) whose labels index a table of prompt
    embeddings (see ``use_prompts`` of ``Pretrained``)."""

    def __init__(self, unet: nn.Module):
        super().__init__(unet)
        self.register_buffer("embeddings", None, persistent=False)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embeddings is None or labels is None:
            raise ValueError("a text-conditioned network needs prompts: call use_prompts first")
        context = self.embeddings[labels].to(self.unet.dtype)
        return self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=context).sample[:, :x.shape[1]]


@dataclass
class Pretrained:
    """A loaded pipeline: its denoiser, the noise levels it was trained on, the shape it samples
    (latents for a latent model), and for text models the text encoder and the VAE."""

    source: str
    pipeline: object
    denoiser: DiscreteTimeDenoiser
    sigmas: Tensor
    data_shape: tuple[int, ...]

    @property
    def takes_prompts(self) -> bool:
        return isinstance(self.denoiser.net, PromptUNet)

    @property
    def vae(self) -> nn.Module | None:
        return getattr(self.pipeline, "vae", None)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Each prompt encoded as the pipeline itself encodes it (its ``encode_prompt``): Stable
        Diffusion's CLIP states at its tokenizer's length; IF's T5 states of the prompt in lower
        case, at 77 tokens, with their padding mask."""
        device = next(self.pipeline.text_encoder.parameters()).device
        embeddings = self.pipeline.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=False)[0]
        return embeddings.float()

    def use_prompts(self, prompts: list[str]) -> None:
        """Make ``prompts`` the classes: label k is prompts[k], label len(prompts) the empty prompt."""
        embeddings = self.encode_prompts([*prompts, ""])
        self.denoiser.net.embeddings = embeddings.to(self.denoiser.sigmas.device)

    def save(self, folder: Path, unet: nn.Module) -> Path:
        """This pipeline with ``unet`` in its place, saved as a diffusers folder (``from_pretrained``)."""
        pipeline = type(self.pipeline)(**{**self.pipeline.components, "unet": unet})
        pipeline.save_pretrained(folder)
        return folder


def load_pretrained(source: str) -> Pretrained:
    """A diffusers pipeline from a local folder (with model_index.json) or a hub id, in float32 on
    the CPU, as a ``Pretrained``. Offline, a hub id loads only from the local cache."""
    diffusers = import_diffusers()
    folder = Path(source).expanduser()
    if folder.exists() and not (folder / "model_index.json").is_file():
        raise ConfigError(f"{folder} is not a diffusers pipeline folder (no model_index.json); save one with "
                          "pipeline.save_pretrained(folder), or give a hub id such as google/ddpm-cifar10-32")
    if not folder.exists() and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise ConfigError(f"no folder {folder}, and {source} is not a hub id (owner/name)")
    try:
        pipeline = diffusers.DiffusionPipeline.from_pretrained(str(folder) if folder.exists() else source)
    except (OSError, ValueError) as error:
        if folder.exists():
            raise ConfigError(f"{folder} could not be loaded as a diffusers pipeline: {describe(error, 160)}") from None
        raise not_fetched(source, "DiffusionPipeline", error) from None
    pipeline.set_progress_bar_config(disable=True)
    return adapt(source, pipeline)


def load_autoencoder(source: str) -> nn.Module:
    """A diffusers ``AutoencoderKL`` (codec.source), in float32 on the CPU: a folder that holds one
    (its config.json) or a pipeline's (its vae/), or ``hf:<hub id>`` of either; offline, a hub id
    loads only from the local cache."""
    diffusers = import_diffusers()
    folder = Path(source).expanduser()
    hub_id = source.removeprefix("hf:")
    if not source.startswith("hf:"):
        where = next((sub for sub in ("", "vae") if (folder / sub / "config.json").is_file()), None)
        if where is None:
            raise ConfigError(f"codec.source={source}: {folder} holds neither this project's autoencoder (train one "
                              "with the autoencoder command) nor a diffusers AutoencoderKL (config.json, or a pipeline "
                              "folder with vae/); a hub id is written hf:<owner/name>")
        try:
            return diffusers.AutoencoderKL.from_pretrained(str(folder), subfolder=where or None).eval()
        except (OSError, ValueError) as error:
            raise ConfigError(f"codec.source={source} could not be loaded as an AutoencoderKL: "
                              f"{describe(error, 160)}") from None
    for subfolder in (None, "vae"):          # an autoencoder's own repository, or a pipeline's
        try:
            with warnings.catch_warnings():       # huggingface_hub's deprecation notes, of no use here
                warnings.simplefilter("ignore", UserWarning)
                return diffusers.AutoencoderKL.from_pretrained(hub_id, subfolder=subfolder).eval()
        except (OSError, ValueError) as error:
            failure = error
    raise not_fetched(hub_id, "AutoencoderKL", failure)


def not_fetched(hub_id: str, kind: str, error: Exception) -> OfflineWeights:
    """The error for a hub id that could not be loaded: where there is internet, save it as a
    folder (the command that does) and give the folder."""
    return OfflineWeights(
        f"could not load {hub_id} from the hub or its local cache ({describe(error, 160)}). Where there is internet, "
        "save it as a folder and give that folder instead: "
        f"python -c \"from diffusers import {kind} as P; "
        f"P.from_pretrained('{hub_id}').save_pretrained('models/{hub_id.split('/')[-1]}')\""
        f"{' (HF_HUB_OFFLINE is set here)' if offline() else ''}")


def adapt(source: str, pipeline) -> Pretrained:
    """Our denoiser for a loaded pipeline: its UNet, its scheduler's noise levels and prediction type."""
    unet, scheduler = getattr(pipeline, "unet", None), getattr(pipeline, "scheduler", None)
    if unet is None or not hasattr(scheduler, "betas"):
        raise ConfigError(f"{source} ({type(pipeline).__name__}) is not a UNet with a discrete-time (DDPM-family) "
                          "scheduler; supported: UNet2DModel pipelines (DDPM), Stable Diffusion 1.x/2.x, "
                          "DeepFloyd IF stage I")
    text = hasattr(pipeline, "text_encoder") and hasattr(unet.config, "cross_attention_dim")
    if text and getattr(unet.config, "addition_embed_type", None) not in (None, "text"):   # IF's is made from the text
        raise ConfigError(f"{source}: UNets that need added conditions besides the text (SDXL) are not supported")
    if hasattr(pipeline, "vqvae"):
        raise ConfigError(f"{source}: latent pipelines with a VQ autoencoder (LDM) are not supported")
    if not text and getattr(unet.config, "num_class_embeds", None):
        raise ConfigError(f"{source}: class-conditional UNet2DModels have no null class for guidance; not supported")
    net = PromptUNet(unet) if text else UNet(unet)
    sigmas = sigmas_from_betas(scheduler.betas)
    denoiser = DiscreteTimeDenoiser(net, scheduler.config.prediction_type, sigmas)
    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return Pretrained(source, pipeline, denoiser, sigmas, (unet.config.in_channels, *size))


def import_diffusers():
    """diffusers, quiet, or a ``MissingPackage`` error that says how to install it."""
    try:
        import diffusers
        import transformers
    except ImportError:
        raise MissingPackage(f"pretrained models need diffusers and transformers: {INSTALL}") from None
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    return diffusers


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
