"""Latent diffusion (codecs.py, models/autoencoder.py, the autoencoder command). Known answers:
diffusers' own AutoencoderKL calls with its scaling factor, sample moments of drawn latents, a
decoder whose output is known, and runs that were never interrupted."""
import math
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.codecs import TrainedAutoencoder
from {{ cookiecutter.package_name }}.models.autoencoder import Autoencoder
from {{ cookiecutter.package_name }}.runs import load_codec, load_run, new_model

from test_modalities import randomised

pytestmark = pytest.mark.once

DIGITS = ["experiment=digits", "logger=csv", "data.clusters=0", "model.unet.channels=8", "data.batch_size=16",
          "sampling.steps=4", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000",
          "trainer.sample_count=4"]
AUTOENCODER = ["autoencoder", "experiment=digits", "data.clusters=0", "autoencoder.batch_size=16",
               "autoencoder.channels=[8,16]", "autoencoder.latent_channels=2", "trainer.checkpoint_every_n_steps=3"]


def saved_autoencoder(folder: Path, seed: int = 0, decoded: float | None = None) -> Path:
    """A random autoencoder of 1-channel 8x8 images to 2x4x4 latents, saved as the autoencoder
    command saves one; with ``decoded``, one whose decoder gives that value at every pixel."""
    torch.manual_seed(seed)
    network = Autoencoder(1, 2, (8, 16))
    if decoded is not None:
        last = network.decoder[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.constant_(last.bias, decoded)
    TrainedAutoencoder(network).save(folder)
    return folder


# -- the codec -----------------------------------------------------------------------------------
def test_the_autoencoders_loss_is_the_error_of_a_drawn_latent_plus_the_weighted_kl():
    """Against torch.distributions' KL(N(mean, std^2) || N(0, 1)) and the reconstruction error of
    z = mean + std * eps with the loss's own eps (Kingma & Welling 2014)."""
    from torch.distributions import Normal, kl_divergence

    torch.manual_seed(0)
    network = Autoencoder(1, 2, (8, 16))
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(3)
    loss, reconstruction, kl = network.loss(images, 0.01)
    with torch.no_grad():
        mean, std = network.encode(images)
        torch.manual_seed(3)
        eps = torch.randn_like(std)
        expected = (network.decode(mean + std * eps) - images).square().mean()
    torch.testing.assert_close(kl, kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).mean())
    torch.testing.assert_close(reconstruction, expected)
    torch.testing.assert_close(loss, expected + 0.01 * kl)


def test_the_encoders_second_half_is_the_log_variance_of_the_latent():
    """An encoder whose last layer outputs a constant 0.3 for the means and ln 0.25 for the first log-variance
    gives latents of mean 0.3 and standard deviation exp(ln 0.25 / 2) = 0.5, as the VAE's log-variance
    parameterisation (Kingma & Welling 2014; Stable Diffusion's) says; log-variances are clamped to [-30, 20], as
    latent diffusion's are, so that 100 and -100 give standard deviations e^10 and e^-15."""
    network = Autoencoder(1, 3, (8, 16))
    last = network.encoder[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.3, 0.3, 0.3, math.log(0.25), 100.0, -100.0]))
        mean, std = network.encode(torch.rand(2, 1, 8, 8))
    torch.testing.assert_close(mean, torch.full((2, 3, 4, 4), 0.3))
    log_std = torch.tensor([math.log(0.5), 10.0, -15.0])[:, None, None].expand(2, 3, 4, 4)
    torch.testing.assert_close(std.log(), log_std)


def test_the_autoencoders_block_is_two_norm_silu_convolutions_around_a_residual():
    """Block(x) = skip(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))))), the skip a 1x1 convolution where the widths
    differ: latent diffusion's ResnetBlock without its time embedding."""
    from {{ cookiecutter.package_name }}.models.autoencoder import Block

    functional = torch.nn.functional

    def norm_silu_conv(norm, conv, h):
        h = functional.silu(functional.group_norm(h, norm.num_groups, norm.weight, norm.bias))
        return functional.conv2d(h, conv.weight, conv.bias, padding=1)

    for cin in (8, 16):
        block = randomised(Block(cin, 16))
        norm1, _, conv1, norm2, _, conv2 = block.layers
        x = torch.randn(2, cin, 4, 4)
        h = norm_silu_conv(norm2, conv2, norm_silu_conv(norm1, conv1, x))
        skip = x if cin == 16 else functional.conv2d(x, block.skip.weight, block.skip.bias)
        assert isinstance(block.skip, torch.nn.Identity) == (cin == 16)
        torch.testing.assert_close(block(x), skip + h)


def test_the_autoencoder_is_laid_out_as_its_docstring_says():
    """Encoder: a 3x3 convolution to the first width, a block per level (the first changing the width), a strided
    convolution between levels, then norm, SiLU and a convolution to a mean and a log-variance per latent
    channel; decoder: the mirror image, doubling the side with nearest neighbours and a convolution; the latents
    f = 2^(levels - 1) times smaller than the image."""
    def layout(layers):
        return [f"block {layer.layers[2].in_channels}>{layer.layers[2].out_channels}" if type(layer).__name__ == "Block"
                else f"conv{layer.kernel_size[0]} {layer.in_channels}>{layer.out_channels}/{layer.stride[0]}"
                if isinstance(layer, torch.nn.Conv2d) else type(layer).__name__ for layer in layers]

    network = Autoencoder(1, 2, (8, 16, 32))
    assert layout(network.encoder) == ["conv3 1>8/1", "block 8>8", "conv3 8>8/2", "block 8>16", "conv3 16>16/2",
                                       "block 16>32", "GroupNorm", "SiLU", "conv3 32>4/1"]
    assert layout(network.decoder) == ["conv3 2>32/1", "block 32>32", "Upsample", "conv3 32>32/1", "block 32>16",
                                       "Upsample", "conv3 16>16/1", "block 16>8", "GroupNorm", "SiLU", "conv3 8>1/1"]
    assert {(up.scale_factor, up.mode) for up in network.decoder if isinstance(up, torch.nn.Upsample)} == {
        (2, "nearest")}
    assert network.factor == 4 and network.shape == {"in_channels": 1, "latent_channels": 2, "channels": [8, 16, 32]}
    assert network.encode(torch.zeros(3, 1, 8, 8))[0].shape == (3, 2, 2, 2)
    assert network.decode(torch.zeros(3, 2, 2, 2)).shape == (3, 1, 8, 8)


def test_normalised_latents_have_mean_0_and_latent_std_per_channel_and_decode_undoes_it(tmp_path):
    """Latents drawn from the normalised Gaussians have, per channel, mean 0 and standard
    deviation codec.latent_std (within 5 standard errors of 200 draws per latent); decoding a
    normalised latent equals decoding the raw one; an image's latents are its normalised mean."""
    codec = load_codec(str(saved_autoencoder(tmp_path / "ae")))
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    raw = codec.encode(images)
    assert torch.equal(codec.normalised(raw), raw)                # unmeasured: shift 0, scale 1
    assert not any(weight.requires_grad for weight in codec.parameters())       # the autoencoder stays frozen
    codec.measure(raw, 0.7)
    moments = codec.normalised(raw)
    mean, std = moments.chunk(2, dim=1)
    drawn = mean + std * torch.randn(200, *mean.shape, generator=torch.Generator().manual_seed(2))
    per_channel = drawn.transpose(0, 2).reshape(2, -1)
    count = per_channel.shape[1]
    assert (per_channel.mean(1).abs() < 5 * 0.7 / count ** 0.5).all()
    assert ((per_channel.std(1) - 0.7).abs() < 5 * 0.7 / (2 * count) ** 0.5).all()
    assert codec.shift.abs().max() > 0.01 and (codec.scale - 1).abs().max() > 0.01      # a change was needed
    raw_mean = raw.chunk(2, dim=1)[0]
    torch.testing.assert_close(codec.decode(mean), codec.network.decode(raw_mean), rtol=1e-5, atol=1e-5)
    pictures = images.clone().requires_grad_(True)              # what a task starts from: the normalised means
    started = codec.latents(pictures)
    torch.testing.assert_close(started, mean)
    started.square().sum().backward()
    assert pictures.grad is not None and pictures.grad.abs().sum() > 0
    latents = mean.clone().requires_grad_(True)                 # what DPS through the decoder differentiates
    images = codec.images(latents)
    torch.testing.assert_close(images, codec.network.decode(raw_mean), rtol=1e-5, atol=1e-5)
    images.square().sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_latent_statistics_are_the_moments_of_the_mixture_of_the_latent_gaussians():
    """Per channel, a latent drawn from one of N Gaussians N(m_i, s_i^2) at random has mean
    mean(m_i) and variance var(m_i) + mean(s_i^2) (the law of total variance, var over the N
    means, not N - 1); three channels, each with its own spread, worked out in numpy."""
    import numpy as np

    from {{ cookiecutter.package_name }}.codecs import latent_statistics

    rng = np.random.default_rng(0)
    spread, centre = np.array([1.0, 3.0, 0.2])[:, None, None], np.array([0.0, 2.0, -1.0])[:, None, None]
    means = rng.normal(size=(5, 3, 2, 2)) * spread + centre
    stds = rng.uniform(0.1, 1.0, size=(5, 3, 2, 2))
    statistics = latent_statistics(torch.from_numpy(np.concatenate([means, stds], 1)).float())
    per_channel = lambda a: a.transpose(1, 0, 2, 3).reshape(3, -1)     # noqa: E731
    np.testing.assert_allclose(statistics["mean"], per_channel(means).mean(1), rtol=1e-6)
    expected_std = np.sqrt(per_channel(means).var(1) + (per_channel(stds) ** 2).mean(1))
    np.testing.assert_allclose(statistics["std"], expected_std, rtol=1e-6)


@pytest.mark.parametrize("statistics", [{"mean": [0.0], "std": [1.0, 1.0]}, {"mean": [0.0, 0.0], "std": [1.0]},
                                        {"mean": [0.0, 0.0], "std": [1.0, 0.0]}])
def test_latent_statistics_that_do_not_fit_the_autoencoder_are_refused_by_name(tmp_path, statistics):
    """A run's saved statistics (edited, or of another autoencoder) must give a mean and a
    positive standard deviation for each of the 2 latent channels; small ones are fine."""
    from {{ cookiecutter.package_name }}.errors import ConfigError

    codec = load_codec(str(saved_autoencoder(tmp_path / "runs" / "ae")))        # folders made as needed
    with pytest.raises(ConfigError, match=r"latent statistics .* do not fit an autoencoder of 2 latent channels"):
        codec.normalise({**statistics, "latent_std": 0.5})
    codec.normalise({"mean": [0.0, 1.0], "std": [0.5, 0.25], "latent_std": 0.5})
    assert codec.scale.tolist() == [1.0, 2.0] and codec.shift.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("shape", [(2, 8, 8), (1, 8, 5), (1, 5, 8)])
def test_images_the_autoencoder_cannot_take_are_refused_by_their_shape(tmp_path, shape):
    codec = load_codec(str(saved_autoencoder(tmp_path / "ae")))          # 1 channel, sides halved
    assert codec.latent_shape((1, 8, 12)) == (2, 4, 6)
    size = "x".join(map(str, shape))
    with pytest.raises(ValueError, match=f"images of 1 channels whose sides divide by 2, not {size}"):
        codec.latent_shape(shape)


def test_the_latents_are_encoded_once_and_again_when_an_image_or_the_autoencoder_changes(project_dir):
    """A second encoding of the same folder with the same autoencoder reads the cache; a changed
    image, or changed weights, encode the whole data again (and the flips with data.hflip)."""
    import numpy as np
    from PIL import Image

    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule

    folder = project_dir / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{k}.png")
    cfg = load_config(["data.name=image_folder", f"data.root={folder}", "data.image_size=8", "data.channels=1",
                       "data.labels_from_subfolders=false", "data.clusters=0", "data.val_fraction=0",
                       "data.hflip=true"])
    codec = load_codec(str(saved_autoencoder(project_dir / "ae")))
    encoded = []
    encode = type(codec).encode
    codec.encode = lambda images: encoded.append(len(images)) or encode(codec, images)

    def encodings() -> int:
        encoded.clear()
        DiffusionDataModule.of_run(cfg).encode(codec)
        return sum(encoded)

    assert encodings() == 12                      # six images and their mirror images
    assert encodings() == 0                       # nothing changed: the cache
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / "3.png")
    assert encodings() == 12
    assert encodings() == 0
    with torch.no_grad():
        codec.network.decoder[-1].bias.add_(0.1)  # the decoder is part of the codec's identity
    assert encodings() == 12
    cfg.data.hflip = False                        # so are the flips
    assert encodings() == 6


def test_latent_training_examples_are_the_images_then_their_mirror_images_with_their_labels(project_dir):
    """With data.hflip the training latents are the encodings of the training images, then of their mirror images
    (a flip of a latent is not the latent of the flip), the labels repeated in that order; the held-out images are
    not mirrored. The normalisation is measured on the training latents: their mixture has, per channel, mean 0 and
    variance latent_std^2 (mean of m^2 + s^2)."""
    import numpy as np
    from PIL import Image

    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.pixels import to_unit_range

    rng = np.random.default_rng(0)
    for k in range(10):                                   # classes a and b, in turn
        folder = project_dir / "pictures" / "ab"[k % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{k}.png")
    cfg = load_config(["data.name=image_folder", f"data.root={project_dir / 'pictures'}", "data.image_size=8",
                       "data.channels=1", "data.clusters=0", "data.val_fraction=0.2", "data.hflip=true",
                       "data.labels_from_subfolders=true"])
    data = DiffusionDataModule.of_run(cfg)
    images, labels, held_out = data.reference_images(), data.train_set.labels, data.reference_images(held_out=True)
    codec = load_codec(str(saved_autoencoder(project_dir / "ae")))
    data.encode(codec, latent_std=0.5)
    assert (len(images), len(held_out)) == (8, 2) and torch.equal(data.train_set.labels, torch.cat([labels, labels]))
    with torch.no_grad():
        train = codec.encode(to_unit_range(torch.cat([images, images.flip(-1)])))
        torch.testing.assert_close(data.train_set.data, codec.normalised(train))
        torch.testing.assert_close(data.val_set.data, codec.normalised(codec.encode(to_unit_range(held_out))))
    mean, std = data.train_set.data.chunk(2, dim=1)
    torch.testing.assert_close(mean.mean((0, 2, 3)), torch.zeros(2), rtol=0, atol=1e-5)
    torch.testing.assert_close((mean.square() + std.square()).mean((0, 2, 3)), torch.full((2,), 0.25), rtol=1e-4,
                               atol=0)
    measured = dict(codec.statistics)             # a loaded run's codec keeps the normalisation it was trained with
    DiffusionDataModule.of_run(cfg).encode(codec, latent_std=0.9)
    assert codec.statistics == measured


def test_a_codec_source_that_is_no_autoencoder_is_one_error_line(project_dir, capsys):
    Path("empty").mkdir()
    assert main(["train", *DIGITS, "codec.source=empty"]) == 2
    assert "codec.source=empty: empty holds neither this project's autoencoder" in capsys.readouterr().err
    saved_autoencoder(Path("ae"))
    assert main(["train", "experiment=toy2d", "codec.source=ae"]) == 2
    assert "codec.source=ae cannot take the data (data.name=toy2d): its autoencoder takes images" in \
        capsys.readouterr().err
    (Path("ae") / "autoencoder.safetensors").write_bytes(b"damaged")
    assert main(["train", *DIGITS, "codec.source=ae"]) == 2
    assert ("ae holds no readable autoencoder (autoencoder.safetensors and autoencoder.json: SafetensorError: "
            "Error while deserializing header") in capsys.readouterr().err


# -- the autoencoder command and latent runs ----------------------------------------------------------
def test_the_autoencoder_trains_resumes_exactly_and_reports_its_reconstructions(project_dir, capsys):
    """3 steps, then 3 more, give the weights of 6 straight; the folder holds what a latent run
    names (codec.source), the pictures and the held-out numbers."""
    assert main([*AUTOENCODER, "name=straight", "autoencoder.max_steps=6"]) == 0
    assert main([*AUTOENCODER, "name=cut", "autoencoder.max_steps=3"]) == 0
    assert main([*AUTOENCODER, "name=cut", "autoencoder.max_steps=6"]) == 0
    assert "resuming at step 3" in capsys.readouterr().out
    straight, cut = (load_codec(f"runs/{name}").network.state_dict() for name in ("straight", "cut"))
    assert all(torch.equal(straight[key], cut[key]) for key in straight)
    for name in ("reconstructions.png", "metrics.json", "config.yaml"):
        assert (Path("runs/cut") / name).is_file()
    assert main([*AUTOENCODER, "name=cut", "autoencoder.max_steps=6", "autoencoder.latent_channels=3"]) == 2
    assert "keep autoencoder.channels and latent_channels" in capsys.readouterr().err


def test_the_autoencoders_settings_reach_its_training(project_dir, monkeypatch):
    """autoencoder.lr is Adam's: its first step is lr g / (|g| + eps), lr itself for a clear
    gradient, so first steps at lr and 2 lr from one start end lr apart at most; batch_size and
    kl_weight reach the loss; a checkpoint is written every trainer.checkpoint_every_n_steps
    steps and at the end."""
    from {{ cookiecutter.package_name }}.commands import autoencoder as command

    losses, checkpoints = [], []
    loss, save = Autoencoder.loss, command.save_checkpoint
    monkeypatch.setattr(Autoencoder, "loss", lambda self, x, kl_weight: losses.append((len(x), kl_weight)) or
                        loss(self, x, kl_weight))
    monkeypatch.setattr(command, "save_checkpoint", lambda path, network, optimiser, generator, step:
                        checkpoints.append(step) or save(path, network, optimiser, generator, step))
    assert main([*AUTOENCODER, "name=stepped", "autoencoder.max_steps=7", "autoencoder.batch_size=5",
                 "autoencoder.kl_weight=0.25"]) == 0
    assert losses == [(5, 0.25)] * 7 and checkpoints == [3, 6, 7]
    for lr in (0.003, 0.006):                        # the same start and batch: steps of lr and 2 lr
        assert main([*AUTOENCODER, f"name=lr{lr}", "autoencoder.max_steps=1", f"autoencoder.lr={lr}"]) == 0
    small, large = (load_codec(f"runs/lr{lr}").network.state_dict() for lr in (0.003, 0.006))
    moved = torch.cat([(large[key] - small[key]).abs().flatten() for key in small])
    assert 0.003 * (1 - 1e-4) < moved.max() < 0.003 * (1 + 1e-4)


def test_a_latent_run_resumes_exactly_as_one_never_interrupted(project_dir):
    saved_autoencoder(Path("ae"))
    from conftest import straight_and_resumed

    latent = [*DIGITS, "codec.source=ae"]
    straight, cut = straight_and_resumed(latent)
    assert straight["global_step"] == cut["global_step"] == 6
    assert all(torch.equal(straight["state_dict"][k], cut["state_dict"][k]) for k in straight["state_dict"])
    assert straight["hyper_parameters"]["latents"] == cut["hyper_parameters"]["latents"]
    assert main(["train", *latent, "name=cut", "trainer.max_steps=7", "codec.source=other"]) == 2


RECORDING_EXTRACTOR = '''
import torch

SEEN = []

class Features(torch.nn.Module):
    """Records every batch of images it is given; features: their mean and the first pixels."""

    def forward(self, images):
        SEEN.append(images.detach().cpu().clone())
        return torch.cat([images.mean((1, 2, 3))[:, None], images.flatten(1)[:, :3]], 1)
'''


@pytest.fixture
def recording(project_dir, monkeypatch):
    """The module of RECORDING_EXTRACTOR (evaluation.extractor_module=recording:Features), with
    nothing seen yet."""
    (project_dir / "recording.py").write_text(RECORDING_EXTRACTOR)
    monkeypatch.syspath_prepend(str(project_dir))
    import recording

    recording.SEEN.clear()
    return recording


def test_fid_of_a_latent_run_sees_the_decoded_samples_and_the_data_as_pixels(project_dir, recording):
    """A decoder that paints every pixel 0.25: the extractor is shown 1x8x8 images, the samples
    all 0.25 (as 8-bit images), the reference the training images themselves, during training and in evaluate."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.pixels import to_uint8, to_unit_range

    painted = to_unit_range(to_uint8(torch.tensor(0.25)))          # the samples pass through 8-bit images
    saved_autoencoder(Path("ae"), decoded=0.25)
    quality = ["evaluation.extractor=custom", "evaluation.extractor_module=recording:Features", "evaluation.samples=20",
               "evaluation.batch_size=10", "evaluation.steps=2", "evaluation.kid_subset_size=10",
               "evaluation.kid_reference=200"]
    assert main(["train", *DIGITS, *quality, "codec.source=ae", "name=latent", "trainer.max_steps=2",
                 "evaluation.every_n_steps=2"]) == 0
    reference = to_unit_range(DiffusionDataModule.of_run(load_config([*DIGITS])).reference_images())
    seen = torch.cat(recording.SEEN)
    assert seen.shape[1:] == (1, 8, 8) and len(seen) == len(reference) + 20
    assert torch.equal(seen[:len(reference)], reference)
    assert (seen[len(reference):] == painted).all()
    recording.SEEN.clear()
    evaluate = [key.removeprefix("evaluation.") for key in quality]       # evaluate's own keys
    assert main(["evaluate", "run=runs/latent", *evaluate, "seeds=1", "steps=2"]) == 0
    seen = torch.cat(recording.SEEN)                     # the reference statistics are cached: samples only
    assert len(seen) >= 20 and (seen == painted).all() and seen.shape[1:] == (1, 8, 8)   # (one more batch times it)


def test_a_latent_run_samples_exports_with_its_autoencoder_and_refuses_tasks_on_pixels(project_dir, capsys):
    saved_autoencoder(Path("ae"))
    assert main(["train", *DIGITS, "codec.source=ae", "name=latent", "trainer.max_steps=2"]) == 0
    model, _ = load_run("runs/latent")
    assert model.data_shape == (2, 4, 4) and model.codec.statistics is not None
    assert main(["export", "run=runs/latent", "out=exports/latent"]) == 0
    Path("ae/autoencoder.safetensors").unlink()                 # the export carries its own copy
    exported, _ = load_run("exports/latent")
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ours, theirs = (m.sample(3, torch.Generator(), noise=noise).x for m in (model, exported))
    assert ours.shape == (3, 1, 8, 8) and torch.equal(ours, theirs)
    assert main(["restore", "run=exports/latent", "method=inpaint", "images=[0]"]) == 2
    assert "method=inpaint keeps known pixels at every step (a latent model takes method=dps, through its decoder, " \
           "or sdedit), but this model samples latents" in capsys.readouterr().err
    assert main(["interpolate", "run=exports/latent", "between=images", "images=[0,1]", "frames=3"]) == 0
    assert "image 0: inverted and regenerated" in capsys.readouterr().out
    assert Path("exports/latent/interpolate/images.png").is_file()


def test_few_step_students_of_a_latent_run_learn_its_latents_and_decode_with_its_autoencoder(project_dir,
                                                                                             recording):
    """Reflow and consistency students of a latent teacher: its network, autoencoder and
    normalisation. A decoder that paints every pixel 0.25 shows what is decoded where: the
    reflow student's FID during training compares its decoded samples with its teacher's decoded
    samples (its pairs, latents on disk), and both students' samples come out painted."""
    from {{ cookiecutter.package_name }}.pixels import to_uint8, to_unit_range

    painted = to_unit_range(to_uint8(torch.tensor(0.25)))
    saved_autoencoder(Path("ae"), decoded=0.25)
    assert main(["train", *DIGITS, "codec.source=ae", "name=teacher", "trainer.max_steps=2"]) == 0
    quality = ["evaluation.extractor=custom", "evaluation.extractor_module=recording:Features", "evaluation.samples=10",
               "evaluation.batch_size=10", "evaluation.steps=2", "evaluation.kid_subset_size=5",
               "evaluation.kid_reference=20", "evaluation.every_n_steps=2"]
    student = ["distill.teacher=runs/teacher", "logger=csv", "data.batch_size=16", "trainer.max_steps=2",
               "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000"]
    assert main(["train", "experiment=reflow", *student, *quality, "name=reflow", "distill.pairs=24",
                 "distill.shard_size=24", "distill.teacher_sampling.steps=2"]) == 0
    pairs = torch.load("runs/reflow/pairs/000000.pt")["x0"]
    assert pairs.shape == (24, 2, 4, 4)
    seen = torch.cat(recording.SEEN)
    assert seen.shape[1:] == (1, 8, 8) and (seen == painted).all()          # the reference, then the samples
    assert main(["train", "experiment=ect", *student, "name=ect"]) == 0
    teacher, _ = load_run("runs/teacher")
    for name in ("reflow", "ect"):
        model, _ = load_run(f"runs/{name}")
        assert model.config.codec.source == "ae" and model.data_shape == (2, 4, 4)
        assert model.codec.statistics == teacher.codec.statistics
        assert main(["sample", f"run=runs/{name}", "n=3", "steps=1", f"out={name}"]) == 0
        samples = torch.load(f"{name}/samples.pt")
        assert samples.shape == (3, 1, 8, 8) and (samples == 0.25).all()
    assert main(["export", "run=runs/reflow", "out=exports/reflow"]) == 0         # it carries the autoencoder
    Path("ae/autoencoder.safetensors").unlink()
    assert main(["sample", "run=exports/reflow", "n=3", "steps=1", "out=exported"]) == 0
    assert torch.equal(torch.load("exported/samples.pt"), torch.load("reflow/samples.pt"))
    recording.SEEN.clear()
    evaluate = [key.removeprefix("evaluation.") for key in quality[:-1]]
    assert main(["evaluate", "run=exports/reflow", *evaluate, "seeds=1"]) == 0     # against the teacher's data
    seen = torch.cat(recording.SEEN)
    assert seen.shape[1:] == (1, 8, 8) and (seen != painted).any() and (seen[-10:] == painted).all()


def test_a_latent_runs_trajectories_and_edits_are_drawn_decoded(project_dir, monkeypatch):
    """sample trajectory=true, visualize and restore method=sdedit or dps on a latent model:
    every state drawn (x_t and x0_hat) and each restoration are decoded images. Under a decoder
    that paints every pixel 0.25 they are all that grey, of the images' shape. DPS pulls with the
    latent default of ZETA."""
    from {{ cookiecutter.package_name }} import visualize
    from {{ cookiecutter.package_name }}.commands import restore
    from {{ cookiecutter.package_name }}.pixels import to_uint8

    grey = to_uint8(torch.tensor(0.25))
    saved_autoencoder(Path("ae"), decoded=0.25)
    assert main(["train", *DIGITS, "codec.source=ae", "name=latent", "trainer.max_steps=2"]) == 0
    drawn, draw = [], visualize.save_labelled_grid

    def kept(tiles, *args, **kwargs):
        drawn.append(tiles)
        return draw(tiles, *args, **kwargs)

    monkeypatch.setattr(visualize, "save_labelled_grid", kept)
    assert main(["sample", "run=runs/latent", "n=2", "trajectory=true"]) == 0
    assert main(["visualize", "run=runs/latent", "n=2", "columns=3"]) == 0
    assert [tuple(tiles.shape) for tiles in drawn] == [(2, 1, 8, 8), (16, 1, 8, 8), (12, 1, 8, 8)]   # samples, steps
    assert all((tiles == grey).all() for tiles in drawn)
    assert Path("runs/latent/generated/trajectory.png").is_file()
    assert Path("runs/latent/visualize/denoising.gif").is_file()
    pulls, posterior = [], restore.PosteriorSampling
    monkeypatch.setattr(restore, "PosteriorSampling",
                        lambda denoiser, degrade, y, zeta: pulls.append(zeta) or posterior(denoiser, degrade, y, zeta))
    for method in ("sdedit", "dps"):
        assert main(["restore", "run=runs/latent", f"method={method}", "images=[0,1]", "mask=left"]) == 0
        edited = torch.load(f"runs/latent/restore/{method}.pt")
        assert edited.shape == (2, 1, 8, 8) and (edited == 0.25).all()
    assert pulls == [restore.ZETA["latents"]]            # latent DPS's own default pull


# -- a diffusers AutoencoderKL ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), latent_channels=4,
                                  norm_num_groups=4, layers_per_block=1, scaling_factor=0.3, shift_factor=0.1,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2)
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(folder)
    return folder


@pytest.mark.pretrained
def test_a_diffusers_autoencoder_encodes_and_decodes_as_its_pipelines_do(vae_folder):
    """Unnormalised, the codec's latents are (mean - shift_factor) * scaling_factor of diffusers'
    posterior and its decode is vae.decode(z / scaling_factor + shift_factor); ``latents`` (a
    task's starting point) is that mean, with gradients back to the images."""
    import diffusers

    vae = diffusers.AutoencoderKL.from_pretrained(vae_folder)
    codec = load_codec(str(vae_folder))
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        mean, std = codec.normalised(codec.encode(images)).chunk(2, dim=1)
        torch.testing.assert_close(mean, (posterior.mean - 0.1) * 0.3)
        torch.testing.assert_close(std, posterior.std * 0.3)
        torch.testing.assert_close(codec.decode(mean), vae.decode(mean / 0.3 + 0.1).sample)
    pictures = images.clone().requires_grad_(True)        # what score distillation optimises, seen as latents
    latents = codec.latents(pictures)
    torch.testing.assert_close(latents, (vae.encode(images).latent_dist.mean - 0.1) * 0.3)
    latents.sum().backward()
    assert pictures.grad is not None and pictures.grad.abs().sum() > 0


@pytest.mark.pretrained
def test_a_latent_run_on_a_diffusers_autoencoder_trains_and_samples_images(project_dir, vae_folder, capsys):
    assert main(["train", *DIGITS, f"codec.source={vae_folder}", "name=latent", "trainer.max_steps=2"]) == 0
    assert "1x8x8 images as latents of 4x4x4" in capsys.readouterr().out
    model, _ = load_run("runs/latent")
    assert model.sample(2, torch.Generator().manual_seed(0)).x.shape == (2, 1, 8, 8)


def test_bench_times_a_latent_model_and_its_autoencoder(project_dir, capsys):
    saved_autoencoder(Path("ae"))
    assert main(["bench", *DIGITS, "codec.source=ae", "evaluation.batch_size=16", "sampling.steps=2"]) == 0
    out = capsys.readouterr().out
    assert "training, full loop:" in out and "the network sees latents of 2x4x4" in out
    encodes, decodes = (float(out.split(f"{what} ")[1].split(" ")[0].replace(",", ""))
                        for what in ("encodes", "decodes"))
    assert encodes > 0 and decodes > 0


def test_a_256_pixel_latent_batch_costs_what_a_32_pixel_image_batch_costs(project_dir):
    """What the GPU presets say of latent batch sizes: by train's estimate, the width-128 U-Net
    at batch 128 on Stable Diffusion's 4x32x32 latents of 256-pixel images needs within 1% of
    what it needs on 32-pixel RGB images, and under a third of what 64-pixel images need."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.speed import training_memory

    def estimate(shape, mult):
        cfg = load_config(["preset=gpu", "model.conditional=false", "data.clusters=0", "model.unet.channels=128",
                           f"model.unet.channel_mult={mult}", "model.unet.attention_levels=[2]",
                           "model.unet.blocks_per_level=2"])
        model = new_model(cfg, shape)
        return training_memory(model.denoiser, shape, cfg.data.batch_size, "bf16-mixed", None).total

    latent, pixels, larger = estimate((4, 32, 32), "[1,2,2]"), estimate((3, 32, 32), "[1,2,2]"), \
        estimate((3, 64, 64), "[1,2,2,2]")
    assert abs(latent - pixels) < 0.01 * pixels and latent < larger / 3
