"""LoRA adapters (adapters/lora.py) on this project's networks and on diffusers pipelines, offline:
the pipelines are the tiny ones of test_pretrained.py. Known answers: the update's formula
computed by hand, the base network's own outputs, and diffusers' own LoRA loader and VAE."""
import logging
import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.pretrained
peft = pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

from {{ cookiecutter.package_name }}.adapters.lora import add_adapters, is_adapter_weight, merged_weights  # noqa: E402
from {{ cookiecutter.package_name }}.cli import main  # noqa: E402
from {{ cookiecutter.package_name }}.errors import ConfigError, MissingPackage  # noqa: E402
from {{ cookiecutter.package_name }}.runs import load_run  # noqa: E402

from test_data import captioned_folder, planted_clusters  # noqa: E402
from test_pretrained import text_pipeline  # noqa: E402 (after the skips: it imports diffusers)

# A tiny class-conditional U-Net with attention on the digits, and its adapted runs.
BASE = ["experiment=digits", "name=base", "logger=csv", "model.conditional=true", "data.clusters=0", "sampling.steps=7",
        "model.unet.channels=8", "model.unet.attention_levels=[1]", "trainer.max_steps=10",
        "trainer.sample_every_n_steps=1000", "trainer.val_every_n_steps=1000", "data.batch_size=32"]
ADAPT = ["experiment=lora", "lora.base=runs/base", "data.name=digits", "data.image_size=8", "data.channels=1",
         "data.clusters=0", "data.hflip=false", "logger=csv", "data.batch_size=16", "lora.rank=2", "lora.alpha=6",
         "optim.ema_decay=0.5", "trainer.sample_every_n_steps=1000"]


@pytest.fixture
def base_run(project_dir):
    assert main(["train", *BASE]) == 0
    return "runs/base"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return text_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")


def sd_args(sd_folder, images, *more):
    return ["train", "experiment=lora", "name=sd", f"lora.base={sd_folder}", "data.name=image_folder",
            f"data.root={images}", "data.captions=true", "data.labels_from_subfolders=false", "data.image_size=16",
            "data.channels=3", "data.hflip=false", "logger=csv", "data.batch_size=3", "lora.rank=2", "lora.alpha=6",
            "trainer.sample_every_n_steps=1000", "trainer.sample_count=4", *more]


def unet_call(unet, seed=0):
    """The UNet's output on fixed latents, timesteps and text embeddings."""
    generator = torch.Generator().manual_seed(seed)
    x, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 16, 16, generator=generator)
    with torch.no_grad():
        return unet(x, torch.tensor([3, 70]), encoder_hidden_states=context).sample


# -- the adapter itself --------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [torch.nn.Linear(6, 5), torch.nn.Conv2d(6, 5, 1)], ids=["linear", "conv1x1"])
def test_an_adapted_layer_computes_w_x_plus_alpha_over_r_b_a_x(layer):
    """Hu et al.'s update, by hand: W x + b + (alpha / r) B A x, with A and B random."""
    net = torch.nn.Sequential(layer)
    add_adapters(net, rank=2, alpha=6.0, targets=["0"])
    adapted = net[0]
    a, b = adapted.lora_A["default"].weight, adapted.lora_B["default"].weight
    assert torch.equal(b, torch.zeros_like(b))                  # B starts at zero
    torch.nn.init.normal_(b)
    x = torch.randn(4, 6, 3, 3) if isinstance(layer, torch.nn.Conv2d) else torch.randn(4, 6)
    flat = lambda m: m.reshape(m.shape[0], -1)                   # noqa: E731 (a 1x1 kernel as a matrix)
    w, bias = flat(adapted.base_layer.weight), adapted.base_layer.bias
    update = w + 3.0 * flat(b) @ flat(a)
    expected = torch.einsum("oi,ni...->no...", update, x) + bias.reshape(1, -1, *[1] * (x.ndim - 2))
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    assert [name for name, p in net.named_parameters() if p.requires_grad] == \
        ["0.lora_A.default.weight", "0.lora_B.default.weight"]          # the layer's own weights frozen
    plain = torch.nn.Sequential(type(layer)(6, 5, *([1] if isinstance(layer, torch.nn.Conv2d) else [])))
    plain.load_state_dict(merged_weights(net))                   # W + (alpha / r) B A folded in
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)


def test_an_adapted_networks_saved_weights_load_only_with_every_adapter_and_nothing_else():
    """An adapted run saves its adapters alone (its base's weights are its base's): loading needs each of them."""
    from {{ cookiecutter.package_name }}.runs import load_adapters

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.SiLU(), torch.nn.Linear(4, 4))
    add_adapters(net, rank=2, alpha=2.0, targets=["0", "2"])
    adapters = {key: value for key, value in net.state_dict().items() if is_adapter_weight(key)}
    load_adapters(net, adapters)
    first, *others = adapters
    said = rf"^missing adapter weights \['{re.escape(first)}'\], unexpected weights \[\]$"
    with pytest.raises(RuntimeError, match=said):
        load_adapters(net, {key: adapters[key] for key in others})
    with pytest.raises(RuntimeError, match=r"^missing adapter weights \[\], unexpected weights \['stray'\]$"):
        load_adapters(net, {**adapters, "stray": torch.zeros(1)})


@pytest.mark.parametrize("name, network", [("unet", {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1,
                                                     "attention_levels": [1], "dropout": 0.0}),
                                           ("dit", {"patch_size": 2, "width": 16, "depth": 2, "heads": 2})])
def test_this_projects_networks_take_adapters_on_their_attention_and_fold_them_back(name, network):
    """Zero adapters change nothing; trained ones (B drawn at random) fold into a plain network of
    the same kind that computes the same."""
    from {{ cookiecutter.package_name }}.models import MODELS
    from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels

    def build():
        torch.manual_seed(0)
        net = MODELS[name]["image"]((1, 8, 8), condition=ClassLabels(3), **network)
        with torch.no_grad():
            for p in net.parameters():              # DiT's gates start at zero: make every layer count
                p.add_(torch.randn_like(p) * 0.1)
        return net

    net, plain = build(), build()
    x, t, labels = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])
    before = plain(x, t, labels)
    assert add_adapters(net, 2, 4.0) == ["qkv", "proj"]
    torch.testing.assert_close(net(x, t, labels), before, rtol=0, atol=0)
    for layer_name, p in net.named_parameters():
        if "lora_B" in layer_name:
            torch.nn.init.normal_(p, std=0.3)
    adapted = net(x, t, labels)
    assert not torch.allclose(adapted, before, atol=1e-3)
    plain.load_state_dict(merged_weights(net))
    torch.testing.assert_close(plain(x, t, labels), adapted, rtol=1e-5, atol=1e-5)


def test_targets_that_name_no_layer_and_a_missing_peft_say_what_to_do(monkeypatch):
    with pytest.raises(ConfigError, match=r"lora.targets=\['nothing'\]"):
        add_adapters(torch.nn.Sequential(torch.nn.Linear(2, 2)), 2, 2.0, ["nothing"])
    with pytest.raises(ConfigError, match="lora.targets=.to_q,to_v"):     # no attention to find: name the layers
        add_adapters(torch.nn.Sequential(torch.nn.Linear(2, 2)), 2, 2.0)
    # peft's rule: a target names a module, or the end of its name after a dot. A family counts only when all its
    # projections are there: a lone qkv layer, or MultiheadAttention's out_proj, is no "proj".
    from {{ cookiecutter.package_name }}.adapters.lora import attention_projections

    for names in (["qkv"], ["qkv", "out_proj"]):
        with pytest.raises(ConfigError, match="no attention projections"):
            attention_projections(torch.nn.ModuleDict({name: torch.nn.Linear(2, 2) for name in names}))
    assert attention_projections(torch.nn.ModuleDict({"qkv": torch.nn.Linear(2, 6), "proj": torch.nn.Linear(2, 2)})) \
        == ["qkv", "proj"]
    monkeypatch.setitem(__import__("sys").modules, "peft", None)
    with pytest.raises(MissingPackage, match=r"pip install -e '.\[lora\]'"):
        add_adapters(torch.nn.Sequential(torch.nn.Linear(2, 2)), 2, 2.0, ["0"])


# -- this project's networks ---------------------------------------------------------------------
def test_adapters_on_a_run_start_as_the_run_and_train_only_themselves(base_run, project_dir):
    """The adapted model before training is the base, exactly; after training only the adapters
    moved (every frozen weight bit-identical to the base's EMA weights), the checkpoint holds
    the adapters and their EMA alone, and the export folds them in: a plain model that computes
    what the adapted one does."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.runs import new_model, with_base

    base, _ = load_run(base_run)
    cfg = with_base(load_config(ADAPT), ADAPT)
    assert cfg.model == base.config.model and cfg.sampling.steps == 7          # the base's, not config.yaml's
    assert with_base(load_config([*ADAPT, "sampling.steps=3"]), [*ADAPT, "sampling.steps=3"]).sampling.steps == 3
    fresh = new_model(cfg, base.data_shape, base.class_names)
    x, sigma, labels = torch.randn(6, 1, 8, 8), torch.full((6,), 1.3), torch.arange(6)
    with torch.no_grad():
        assert torch.equal(fresh.denoiser(x, sigma, labels), base.denoiser(x, sigma, labels))
    trained = [name for name, p in fresh.denoiser.named_parameters() if p.requires_grad]
    assert trained and all(is_adapter_weight(name) for name in trained)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trained} == {"qkv", "proj"}    # attention only

    assert main(["train", *ADAPT, "trainer.max_steps=6"]) == 0
    checkpoint = torch.load(project_dir / "runs/lora/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all(is_adapter_weight(key) for key in checkpoint["state_dict"])
    assert {key.split(".", 1)[0] for key in checkpoint["state_dict"]} == {"denoiser", "ema"}
    adapted, _ = load_run("runs/lora")
    base_weights = base.denoiser.state_dict()
    for key, value in adapted.denoiser.state_dict().items():
        if is_adapter_weight(key):
            continue
        assert torch.equal(value, base_weights[key.replace(".base_layer.", ".")]), key
    with torch.no_grad():
        moved = adapted.denoiser(x, sigma, labels)
        assert not torch.allclose(moved, base.denoiser(x, sigma, labels))
        assert main(["export", "run=runs/lora"]) == 0
        merged, _ = load_run("exports/lora")
        assert not merged.config.lora.base
        torch.testing.assert_close(merged.denoiser(x, sigma, labels), moved, rtol=1e-5, atol=1e-5)


def test_an_adapted_run_resumes_exactly_as_one_never_interrupted(base_run):
    """Adapters, their EMA and the optimiser of 3 + 3 steps equal those of 6 straight steps."""
    from conftest import straight_and_resumed

    straight, cut = straight_and_resumed(ADAPT)
    assert straight["global_step"] == cut["global_step"] == 6
    assert straight["state_dict"].keys() == cut["state_dict"].keys()
    assert all(torch.equal(straight["state_dict"][k], cut["state_dict"][k]) for k in straight["state_dict"])


def test_adapters_on_a_latent_run_keep_its_autoencoder_and_normalisation_through_export(project_dir):
    """lora.base on a latent run (codec.source), adapted on images twice the base's size (as Stable
    Diffusion is fine-tuned at new sizes: its autoencoder and network are convolutional): the
    adapted run, and its export with the adapters folded in, sample at the new size through the
    base's autoencoder with the base's measured normalisation."""
    from {{ cookiecutter.package_name }}.codecs import TrainedAutoencoder
    from {{ cookiecutter.package_name }}.models.autoencoder import Autoencoder

    torch.manual_seed(0)
    TrainedAutoencoder(Autoencoder(1, 2, (8, 16))).save(Path("ae"))
    assert main(["train", *BASE, "codec.source=ae", "name=latent-base"]) == 0
    assert main(["train", *ADAPT, "lora.base=runs/latent-base", "name=latent-lora", "trainer.max_steps=3",
                 "data.image_size=16"]) == 0
    assert main(["export", "run=runs/latent-lora", "out=exports/latent-lora"]) == 0
    base, adapted, exported = (load_run(path)[0] for path in ("runs/latent-base", "runs/latent-lora",
                                                               "exports/latent-lora"))
    assert base.codec.statistics is not None
    assert adapted.codec.statistics == exported.codec.statistics == base.codec.statistics
    assert tuple(base.data_shape) == (2, 4, 4) and tuple(adapted.data_shape) == tuple(exported.data_shape) == (2, 8, 8)
    noise = torch.randn(2, *adapted.data_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2])
    drawn = [model.sample(2, torch.Generator(), labels=labels, noise=noise).x for model in (adapted, exported)]
    assert drawn[0].shape == (2, 1, 16, 16)
    torch.testing.assert_close(drawn[0], drawn[1], rtol=1e-4, atol=1e-4)


def test_adapters_on_a_cluster_guided_run_draw_the_clusters_as_often_as_the_new_data_holds_them(project_dir,
                                                                                              tmp_path):
    """A base guided by the 3 clusters of its data, adapted on data of 3 clusters of other sizes:
    the adapted run, and its export, draw each cluster as often as the new data holds it."""
    for name, sizes in (("base", [40, 25, 15]), ("new", [30, 20, 10])):
        torch.save({"data": planted_clusters(sizes)[0]}, tmp_path / f"{name}.pt")
    common = ["data.name=tensor_file", "data.val_fraction=0", "data.clusters=3", "model.conditional=true",
              "logger=csv", "trainer.sample_every_n_steps=1000", "trainer.max_steps=1"]
    assert main(["train", "experiment=digits", "name=clusters", f"data.root={tmp_path / 'base.pt'}",
                 "model.unet.channels=8", "model.unet.attention_levels=[1]", *common]) == 0
    assert main(["train", "experiment=lora", "lora.base=runs/clusters", "name=clusters-lora",
                 f"data.root={tmp_path / 'new.pt'}", *common]) == 0
    assert main(["export", "run=runs/clusters-lora", "out=exported"]) == 0
    for saved in ("runs/clusters", "runs/clusters-lora", "exported"):
        model, _ = load_run(saved)
        assert model.draws_clusters and model.cluster_sizes == ([40, 25, 15] if saved == "runs/clusters"
                                                                else [30, 20, 10]), saved


def test_a_mixed_precision_run_of_this_projects_network_keeps_its_float32_parts(base_run, project_dir):
    """bf16-mixed on the CPU: this project's networks keep their frozen weights in float32 (their
    noise embedding runs in float32 on purpose), train, and draw their grids."""
    assert main(["train", *ADAPT, "name=mixed", "trainer.precision=bf16-mixed", "trainer.max_steps=2",
                 "trainer.sample_every_n_steps=1", "trainer.sample_count=4"]) == 0
    assert (project_dir / "runs/mixed/samples/step_0000001.png").is_file()


def test_a_base_that_does_not_fit_the_data_is_refused_by_name(base_run, capsys):
    assert main(["train", *ADAPT, "data.clusters=3", "model.conditional=true"]) == 2
    assert "lora.base=runs/base is conditioned on 10 classes (0, 1, 2, 3, ...); the data has 3 classes" in \
        capsys.readouterr().err
    assert main(["train", *ADAPT, "data.image_size=16"]) == 2
    assert "draws examples of shape [1, 8, 8], but data.name=digits gives [1, 16, 16]" in capsys.readouterr().err
    assert main(["train", *ADAPT, "name=first", "trainer.max_steps=1"]) == 0
    assert main(["train", *ADAPT, "lora.base=runs/first", "name=second"]) == 2
    assert "lora.base=runs/first has adapters of its own: export it" in capsys.readouterr().err
    assert main(["train", *ADAPT, "name=first", "lora.rank=3"]) == 2
    assert "cannot resume with lora.rank=3 (trained with 2)" in capsys.readouterr().err


# -- a Stable Diffusion-style pipeline -----------------------------------------------------------
def test_latents_are_diffusers_own_encodings_cached_once_per_data_and_codec(project_dir, tmp_path, sd_folder):
    """The cached latents are the VAE's posterior mean and standard deviation times its scaling
    factor, as diffusers computes them; a second run reads them from the cache, a changed VAE
    encodes again; training batches draw mean + std * noise, validation takes the mean."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.pixels import to_unit_range

    model, _ = load_run(sd_folder)
    cfg = load_config(["data.name=image_folder", f"data.root={captioned_folder(tmp_path / 'images')}",
                       "data.captions=true", "data.labels_from_subfolders=false", "data.image_size=16",
                       "data.channels=3", "data.val_fraction=0", "data.clusters=0", "data.hflip=true"])
    data = DiffusionDataModule.of_run(cfg)
    images = to_unit_range(data.reference_images())
    data.encode(model.codec)
    vae = model.codec.network
    with torch.no_grad():
        posterior = vae.encode(torch.cat([images, images.flip(-1)])).latent_dist
    scale = vae.config.scaling_factor
    mean, std = data.train_set.data.chunk(2, 1)
    torch.testing.assert_close(mean, posterior.mean * scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std, posterior.std * scale, rtol=1e-5, atol=1e-6)
    assert data.train_set.labels.tolist() == [1, 0, 1, 0, 1, 0] * 2          # the flips keep their captions
    assert data.data_shape == (4, 8, 8) and data.image_shape == (3, 16, 16)

    class Trainer:
        training = True

    data.trainer = Trainer()
    torch.manual_seed(0)
    many = data.train_set.data[:1].expand(4000, -1, -1, -1)
    drawn, _ = data.on_after_batch_transfer((many, None))
    torch.testing.assert_close(drawn.mean(0), mean[0], rtol=0, atol=4 * std.max().item() / 4000 ** 0.5 * 2)
    torch.testing.assert_close(drawn.std(0), std[0], rtol=0.1, atol=1e-6)
    Trainer.training = False
    assert torch.equal(data.on_after_batch_transfer((many[:2], None))[0], mean[:1].expand(2, -1, -1, -1))

    calls = []
    encode = type(model.codec).encode
    model.codec.encode = lambda x: calls.append(len(x)) or encode(model.codec, x)
    DiffusionDataModule.of_run(cfg).encode(model.codec)
    assert calls == []                                                     # nothing changed: the cache
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(1)                                   # the decoder is part of the codec
    DiffusionDataModule.of_run(cfg).encode(model.codec)
    assert sum(calls) == 12                                                # six images and their flips


def test_lora_on_a_text_pipeline_trains_exports_for_diffusers_and_merges(project_dir, tmp_path, sd_folder, caplog):
    """Zero-initialised adapters leave the pipeline as it was; training changes the adapters only
    (every UNet, VAE and text-encoder weight bit-identical to the pipeline's); the exported file
    loads in diffusers with no missing or unexpected keys and gives the network the project
    trained (alpha 6 with rank 2: a loader that took alpha = rank would not); the project samples
    the export as it samples the run; the merged export computes the same."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.runs import new_model, with_base

    images = captioned_folder(tmp_path / "images")
    original = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder)
    args = sd_args(sd_folder, images)[1:]
    cfg = with_base(load_config(args), args)
    fresh = new_model(cfg, (3, 16, 16), ["a blue circle", "a red square"])
    assert fresh.data_shape == (4, 8, 8)
    assert torch.equal(unet_call(fresh.denoiser.net.unet), unet_call(original.unet))

    assert main(sd_args(sd_folder, images, "trainer.max_steps=4")) == 0
    model, _ = load_run("runs/sd")
    trained = unet_call(model.denoiser.net.unet)
    assert not torch.allclose(trained, unet_call(original.unet))
    theirs = dict(original.unet.state_dict())
    for key, value in model.denoiser.net.unet.state_dict().items():
        if not is_adapter_weight(key):
            assert torch.equal(value, theirs[key.replace(".base_layer.", ".")]), key
    for part in ("vae", "text_encoder"):
        ours, before = getattr(model.pretrained.pipeline, part).state_dict(), getattr(original, part).state_dict()
        assert all(torch.equal(ours[key], before[key]) for key in before), part

    assert main(["export", "run=runs/sd"]) == 0
    export = project_dir / "exports/sd"
    loaded = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder)
    with caplog.at_level(logging.WARNING):
        loaded.load_lora_weights(str(export))
    assert not [record for record in caplog.records if "key" in record.getMessage().lower()]
    from safetensors.torch import load_file

    loaded_keys = [key for key in loaded.unet.state_dict() if is_adapter_weight(key)]
    file_keys = load_file(export / "pytorch_lora_weights.safetensors")
    assert len(loaded_keys) == len(file_keys) == sum(map(is_adapter_weight, model.denoiser.net.unet.state_dict()))
    torch.testing.assert_close(unet_call(loaded.unet), trained, rtol=1e-5, atol=1e-6)

    assert main(["illusion", f"run={export}", "labels=[a red square, a blue circle]", "views=[identity,rot180]",
                 "n=1", "steps=3"]) == 0                             # the tasks load the adapters on the base
    assert (export / "illusion" / "anagram.png").is_file()
    prompt = "labels=[a red square]"
    assert main(["sample", "run=runs/sd", "n=2", "steps=3", prompt]) == 0
    assert main(["sample", f"run={export}", "n=2", "steps=3", prompt]) == 0
    from_run = torch.load("runs/sd/generated/samples.pt")
    torch.testing.assert_close(torch.load(export / "generated/samples.pt"), from_run, rtol=1e-5, atol=1e-5)

    assert main(["export", "run=runs/sd", "merge=true", "out=exports/merged"]) == 0
    merged = diffusers.StableDiffusionPipeline.from_pretrained(project_dir / "exports/merged")
    torch.testing.assert_close(unet_call(merged.unet), trained, rtol=1e-5, atol=1e-5)


def test_under_fp16_autocast_with_a_scaler_the_adapters_stay_float32_and_finite(sd_folder, tmp_path, project_dir):
    """The frozen UNet in float16, the adapters float32: a gradient scaler unscales their
    gradients (it refuses float16 ones) and they are finite."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.module import DiffusionModule
    from {{ cookiecutter.package_name }}.runs import new_model, with_base

    args = sd_args(sd_folder, tmp_path)[1:]
    cfg = with_base(load_config(args), args)
    module = DiffusionModule(new_model(cfg, (3, 16, 16), ["a blue circle"]))
    from {{ cookiecutter.package_name }}.speed import training_memory

    estimate = lambda: training_memory(module.denoiser, (4, 8, 8), 3, "16-mixed", module.model.condition,  # noqa: E731
                                       None, True)
    before = estimate()
    module.frozen_in_half("16-mixed")
    assert estimate() == before             # the estimate does not depend on what the weights are kept in yet
    weights = dict(module.denoiser.named_parameters())
    assert {weights[name].dtype for name in module.trained} == {torch.float32}
    assert {p.dtype for name, p in weights.items() if name not in module.trained} == {torch.float16}
    optimizer = module.adamw("16-mixed")
    scaler = torch.amp.GradScaler("cpu")
    batch = (torch.randn(3, 4, 8, 8), torch.zeros(3, dtype=torch.int64))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = module.batch_loss(batch)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    gradients = [weights[name].grad for name in module.trained]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)
    scaler.step(optimizer)
    assert {weights[name].dtype for name in module.trained} == {torch.float32}
    ema = dict(module.ema.named_parameters())                  # the EMA copy shares the frozen weights
    assert all(ema[name] is p for name, p in weights.items() if name not in module.trained)

    memory = estimate()
    trained = sum(weights[name].numel() for name in module.trained)
    frozen = sum(p.numel() for p in weights.values()) - trained
    assert memory.weights == 4 * trained + 2 * frozen and memory.state == 16 * trained


DREAMBOOTH = ["experiment=dreambooth", "data.prompt=a photo of sks dog", "lora.class_prompt=a photo of a dog",
              "lora.class_images=6", "data.image_size=16", "data.channels=3", "data.batch_size=2", "logger=csv",
              "sampling.steps=3", "trainer.sample_every_n_steps=1000", "trainer.sample_count=2"]


def test_dreambooth_draws_the_bases_class_images_once_and_resumes_exactly(project_dir, tmp_path, sd_folder):
    """The class images are the base pipeline's own samples of the class prompt, image i from
    the noise of seed + i (drawn again from the plain pipeline here); a resumed run draws none
    and ends where an uninterrupted one does, batches of class images included; a lost shard is
    drawn again as it was."""
    from {{ cookiecutter.package_name }}.diffusion.generate import indexed_noise

    images = captioned_folder(tmp_path / "dog")
    args = ["train", *DREAMBOOTH, f"lora.base={sd_folder}", f"data.root={images}"]
    assert main([*args, "name=straight", "trainer.max_steps=6"]) == 0
    assert main([*args, "name=cut", "trainer.max_steps=3"]) == 0
    shards = sorted((project_dir / "runs/cut/class_images").glob("*.pt"))
    assert len(shards) == 1 and (project_dir / "runs/cut/class_images/preview.png").is_file()
    written = [shard.stat().st_mtime_ns for shard in shards]
    assert main([*args, "name=cut", "trainer.max_steps=6"]) == 0
    assert [shard.stat().st_mtime_ns for shard in shards] == written        # reused, not drawn again
    straight, cut = (torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=True)
                     for name in ("straight", "cut"))
    assert straight["global_step"] == cut["global_step"] == 6
    assert all(torch.equal(straight["state_dict"][k], cut["state_dict"][k]) for k in straight["state_dict"])

    drawn = torch.load(shards[0], weights_only=True)["x0"]
    base, _ = load_run(sd_folder)
    base.use_prompts(["a photo of a dog"])
    sampling = base.config.sampling.copy()
    sampling.steps = 3
    expected = base.sample(6, None, sampling, labels=torch.zeros(6, dtype=torch.int64),
                           noise=indexed_noise(torch.arange(6), base.data_shape, 0)).x
    torch.testing.assert_close(base.codec.decode(drawn), expected, rtol=1e-4, atol=1e-4)
    shards[0].unlink()
    assert main([*args, "name=cut", "trainer.max_steps=7"]) == 0
    assert torch.equal(torch.load(shards[0], weights_only=True)["x0"], drawn)


def test_each_batch_holds_the_subjects_images_then_as_many_class_images_weighted_by_prior_weight():
    from {{ cookiecutter.package_name }}.data.loaders import DeviceBatches, PriorBatches

    ours = DeviceBatches(torch.arange(4.0)[:, None], torch.zeros(4, dtype=torch.int64), 2)
    theirs = DeviceBatches(torch.arange(10.0, 13.0)[:, None], torch.ones(3, dtype=torch.int64), 2, seed=1)
    batches = PriorBatches(ours, theirs)
    served = [batch for _ in range(3) for batch in batches]
    assert [batch[1].tolist() for batch in served] == [[0, 0, 1, 1]] * 6
    assert sorted(torch.cat([batch[0][:2, 0] for batch in served[:2]]).tolist()) == [0, 1, 2, 3]  # an epoch of ours
    class_rows = [row for batch in served for row in batch[0][2:, 0].tolist()]
    assert set(class_rows) == {10, 11, 12}         # theirs, round and round (3 images: one batch an epoch)

    from {{ cookiecutter.package_name }}.module import DiffusionModule

    module = DiffusionModule.__new__(DiffusionModule)
    torch.nn.Module.__init__(module)
    module.prior_label, module.cfg = 1, type("cfg", (), {"lora": type("lora", (), {"prior_weight": 0.3})})
    assert module.example_weights(torch.tensor([0, 0, 1, 1])).tolist() == pytest.approx([1, 1, 0.3, 0.3])


def test_a_mixed_precision_pipeline_run_draws_its_grids_on_its_half_precision_weights(project_dir, tmp_path,
                                                                                     sd_folder, monkeypatch):
    """bf16-mixed on the CPU, as fp16 on a T4: the pipeline's frozen weights are kept in bfloat16,
    its sample grids are drawn on them, and the adapters are saved in float32."""
    from {{ cookiecutter.package_name }}.module import DiffusionModule

    kept = []
    monkeypatch.setattr(DiffusionModule, "on_train_start", lambda module: kept.append(
        {p.dtype for p in module.denoiser.parameters() if not p.requires_grad}))
    images = captioned_folder(tmp_path / "images")
    assert main(sd_args(sd_folder, images, "trainer.precision=bf16-mixed", "trainer.max_steps=2",
                        "trainer.sample_every_n_steps=1")) == 0
    assert kept == [{torch.bfloat16}]
    assert (project_dir / "runs/sd/samples/step_0000001.png").is_file()
    checkpoint = torch.load(project_dir / "runs/sd/checkpoints/last.ckpt", weights_only=True)
    assert {value.dtype for value in checkpoint["state_dict"].values()} == {torch.float32}


@pytest.mark.parametrize("p_uncond", [0, 1])
def test_dreambooths_loss_is_the_subjects_plus_prior_weight_times_the_class_images(project_dir, tmp_path, sd_folder,
                                                                                  p_uncond):
    """Ruiz et al. 2023, eq. 2, for a batch of two subject images and two class images: the mean
    loss of the subject's plus lora.prior_weight times the mean loss of the class images' (halved:
    the batch's mean over its four examples), each example's loss drawn as training draws it. A
    class image keeps its weight when its prompt is dropped for classifier-free guidance."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.module import DiffusionModule
    from {{ cookiecutter.package_name }}.runs import new_model, with_base

    args = [*sd_args(sd_folder, tmp_path)[1:], "lora.class_prompt=a photo of a dog", "lora.prior_weight=0.3",
            f"diffusion.p_uncond={p_uncond}"]
    module = DiffusionModule(new_model(with_base(load_config(args), args), (3, 16, 16), ["a photo of sks dog"]))
    prior = module.model.class_number("a photo of a dog")
    x0, labels = torch.randn(4, 4, 8, 8), torch.tensor([0, 0, prior, prior])
    torch.manual_seed(0)
    loss = module.batch_loss((x0, labels))
    torch.manual_seed(0)
    sigma = module.model.noise(4, module.device)
    seen = module.model.condition.null(4) if p_uncond else labels      # p_uncond=1 drops every prompt
    each = module.denoiser.loss(x0, sigma, torch.randn_like(x0), seen, module.loss_weight(sigma))
    torch.testing.assert_close(loss, (each[:2].mean() + 0.3 * each[2:].mean()) / 2)


def test_a_text_base_without_captions_is_refused_with_what_to_set(project_dir, tmp_path, sd_folder, capsys):
    images = captioned_folder(tmp_path / "images")
    args = [arg for arg in sd_args(sd_folder, images) if arg != "data.captions=true"]
    assert main(args) == 2
    assert "is a text-to-image model: its images need captions (data.captions=true" in capsys.readouterr().err
    assert main([*sd_args(sd_folder, images), "data.image_size=15"]) == 2
    assert "sides divide by 2, not 3x15x15" in capsys.readouterr().err
    assert main([*sd_args(sd_folder, images), "data.random_crop=true"]) == 2
    assert "encoded once, centre-cropped: set data.random_crop=false" in capsys.readouterr().err
