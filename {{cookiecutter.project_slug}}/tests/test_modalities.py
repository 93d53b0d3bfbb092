"""New kinds of data: sequences (a temporal U-Net), sets of points (a transformer without
positions, missing points as NaN rows, zero centre of mass) and vector conditions. Known
answers: the closed-form conditional denoiser of linear-Gaussian data, exact permutations, the
subspace of zero centre of mass, and losses that missing points cannot touch."""
import functools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from {{ cookiecutter.package_name }}.codecs import FeatureRange
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.data import sources
from {{ cookiecutter.package_name }}.diffusion.distillation import consistency_loss, heun_step
from {{ cookiecutter.package_name }}.diffusion.generate import generate
from {{ cookiecutter.package_name }}.diffusion.guidance import GuidedDenoiser
from {{ cookiecutter.package_name }}.diffusion.parameterizations import NetworkDenoiser, build_parameterization
from {{ cookiecutter.package_name }}.diffusion.samplers import ddim, heun
from {{ cookiecutter.package_name }}.diffusion.schedules import karras_sigmas
from {{ cookiecutter.package_name }}.errors import DataError
from {{ cookiecutter.package_name }}.kinds import data_kind
from {{ cookiecutter.package_name }}.models import MODELS, SetTransformer, TemporalUNet
from {{ cookiecutter.package_name }}.models.conditioning import Vectors
from {{ cookiecutter.package_name }}.sets import missing_points, random_rotations, rotated, without_centre

pytestmark = pytest.mark.once      # known answers that no answer to the template's questions changes


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Undo the zero initialisations, so that every layer acts."""
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net


# -- vector conditions: linear-Gaussian data, x = A c + noise ------------------------------------
A = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]], dtype=torch.float64)       # x in R^3, c in R^2
S = torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, -0.1], [0.0, -0.1, 0.4]], dtype=torch.float64)


def gaussian_denoiser(mean: torch.Tensor, cov: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(mean, cov): mean + cov (cov + sigma^2 I)^-1 (x - mean)."""
    eye = torch.eye(len(cov), dtype=cov.dtype)
    gain = cov @ torch.linalg.inv(cov[None] + sigma.double()[:, None, None] ** 2 * eye)
    return mean + ((x.double() - mean)[:, None, :] @ gain.transpose(1, 2))[:, 0]


def linear_gaussian(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The ideal denoiser of x = A c + N(0, S) given c, and for a null row (NaN) the denoiser of
    the marginal with c ~ N(0, I): x ~ N(0, A A^T + S)."""
    null = torch.isnan(c).any(1)
    conditional = gaussian_denoiser(c.nan_to_num().double() @ A.T, S, x, sigma)
    marginal = gaussian_denoiser(torch.zeros(3, dtype=torch.float64), A @ A.T + S, x, sigma)
    return torch.where(null[:, None], marginal, conditional).to(x.dtype)


@pytest.mark.parametrize("c", [[0.0, 0.0], [1.5, -1.0], [-2.0, 0.5]])
def test_guided_sampling_of_vector_conditions_reproduces_the_conditional_gaussian(c):
    """Guidance weight 1 with the null row of ``Vectors`` against the closed-form denoiser: the
    samples' mean and covariance are A c and S within their standard errors."""
    n = 4000
    kind = Vectors([-3.0, -3.0], [3.0, 3.0], [c])
    conditions = torch.tensor([c]).expand(n, 2)
    guided = GuidedDenoiser(linear_gaussian, [(conditions, 1.0)], kind.null(n))
    x = generate(guided, karras_sigmas(40, 0.002, 80.0).double(), heun, shape=(n, 3),
                 generator=torch.Generator().manual_seed(0)).x.double()
    mean, cov = x.mean(0), x.T.cov()
    truth = A @ torch.tensor(c, dtype=torch.float64)
    assert ((mean - truth).abs() <= 4 * (S.diagonal() / n).sqrt()).all()
    cov_error = (S.diagonal()[:, None] * S.diagonal()[None] + S**2) / n          # Var of a sample covariance
    assert ((cov - S).abs() <= 4 * cov_error.sqrt()).all()


def test_guidance_zero_samples_the_marginal_through_the_null_row():
    n = 4000
    kind = Vectors([-3.0, -3.0], [3.0, 3.0], [[1.0, 1.0]])
    guided = GuidedDenoiser(linear_gaussian, [(torch.ones(n, 2), 0.0)], kind.null(n))
    x = generate(guided, karras_sigmas(40, 0.002, 80.0).double(), heun, shape=(n, 3),
                 generator=torch.Generator().manual_seed(1)).x.double()
    marginal = A @ A.T + S
    assert ((x.T.cov() - marginal).abs() <= 4 * ((marginal.diagonal()[:, None] * marginal.diagonal() +
                                                  marginal**2) / n).sqrt()).all()


def test_a_vector_conditioned_model_samples_its_kept_training_conditions_in_turn():
    from {{ cookiecutter.package_name }}.model import Model

    model = Model(None, None, (2,), None, Vectors([0.0], [1.0], [[0.1], [0.2], [0.3]]))
    drawn_for = model.default_labels(torch.tensor([0, 1, 2, 3, 7]))
    assert torch.equal(drawn_for, torch.tensor([[0.1], [0.2], [0.3], [0.1], [0.2]]))


def test_vector_conditions_drop_to_null_rows_and_the_embedding_scales_them_to_the_data_range():
    kind = Vectors([0.0, 10.0], [0.5, 30.0], [[0.25, 20.0]])           # a narrow range is widened too
    conditions = torch.tensor([[0.0, 10.0], [0.5, 30.0], [0.25, 20.0]]).repeat(400, 1)
    dropped = kind.drop(conditions, 0.25)
    null = torch.isnan(dropped).all(1)
    assert torch.isnan(dropped).any(1).eq(null).all()                # a row is dropped whole or kept whole
    assert abs(null.float().mean().item() - 0.25) < 0.05
    assert torch.equal(dropped[~null], conditions[~null])
    embedding = kind.embedding(8)
    first = embedding.mlp[0]
    seen = []
    first.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    out = embedding(torch.tensor([[0.0, 10.0], [0.5, 30.0], [0.25, 20.0], [math.nan, math.nan]]))
    assert torch.allclose(seen[0][:3], torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert torch.equal(out[3], embedding.null)
    assert torch.isfinite(out).all()
    assert not {"centre", "half_range"} & set(embedding.state_dict())      # the run's table keeps the ranges


# -- sets of points ----------------------------------------------------------------------------
def set_transformer(zero_com: bool = False, condition=None) -> SetTransformer:
    return randomised(SetTransformer((7, 3), width=32, depth=2, heads=4, zero_com=zero_com, condition=condition))


@pytest.mark.parametrize("zero_com", [False, True])
def test_permuting_a_sets_points_permutes_the_output(zero_com):
    net = set_transformer(zero_com)
    x, c_noise = torch.randn(4, 7, 3), torch.randn(4)
    x[1, 5:] = math.nan                                             # a smaller set
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    out = net(x, c_noise)
    assert torch.allclose(net(x[:, order], c_noise), out[:, order], atol=1e-5)
    assert not torch.allclose(out[0], out[0, order], atol=1e-3)     # and it is not the identity of a constant


def test_missing_points_change_no_real_point_and_come_out_zero():
    net = set_transformer(zero_com=True)
    x, c_noise, emb = torch.randn(3, 7, 3), torch.randn(3), None
    missing = torch.zeros(3, 7, dtype=torch.bool)
    missing[0, 4:], missing[2, 1:] = True, True
    emb = net.embed(c_noise, None)
    a = net.masked(torch.where(missing[..., None], 0.0, x), missing, emb)
    b = net.masked(torch.where(missing[..., None], 100 * torch.randn_like(x), x), missing, emb)
    assert torch.allclose(a[~missing], b[~missing], atol=1e-5)
    with_nan = net(torch.where(missing[..., None], math.nan, x), c_noise)
    assert torch.equal(with_nan[missing], torch.zeros_like(with_nan[missing]))
    assert torch.allclose(with_nan[~missing], a[~missing], atol=1e-5)


def test_zero_centre_of_mass_outputs_stay_in_the_subspace_whatever_the_input():
    net = set_transformer(zero_com=True)
    x = torch.randn(5, 7, 3) + 10                                   # far from centred
    x[2, 3:] = math.nan
    out = net(x, torch.randn(5))
    real = ~missing_points(x)
    centres = torch.stack([out[i][real[i]].mean(0) for i in range(5)])
    assert centres.abs().max() < 1e-5
    shifted = x + torch.tensor([3.0, -2.0, 1.0])                    # translation: no effect at all
    assert torch.allclose(net(shifted, torch.zeros(5) + 0.3)[real], net(x, torch.zeros(5) + 0.3)[real], atol=1e-4)


@pytest.mark.parametrize("zero_com", [True, False])
def test_data_zero_com_makes_the_built_network_centre_its_output(zero_com):
    """data.zero_com reaches the set transformer that runs.new_model builds: its output is
    centred whatever the input (a sampler's hook alone would hide a network that is not)."""
    from {{ cookiecutter.package_name }}.runs import new_model

    cfg = load_config(["data.name=tensor_file", "data.kind=set", f"data.zero_com={str(zero_com).lower()}",
                       "data.clusters=0", "model.name=set_transformer", "model.conditional=false",
                       "model.set_transformer.width=16", "model.set_transformer.depth=1"])
    net = randomised(new_model(cfg, (5, 3)).denoiser.net)
    centres = net(torch.randn(4, 5, 3) + 10, torch.randn(4)).mean(1)
    assert (centres.abs().max() < 1e-5) == zero_com


def test_data_zero_com_centres_each_training_set_on_its_real_points_and_clusters_of_sets_are_refused(tmp_path):
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.errors import DataError

    data, mask = torch.randn(20, 4, 3) + 5, torch.arange(4)[None].expand(20, 4) < torch.arange(20)[:, None] % 3 + 2
    torch.save({"data": data, "mask": mask}, tmp_path / "sets.pt")
    keys = ["data.name=tensor_file", f"data.root={tmp_path / 'sets.pt'}", "data.kind=set", "data.clusters=0",
            "model.name=set_transformer", "data.val_fraction=0"]
    for zero_com in (True, False):
        served = DiffusionDataModule.of_run(load_config([*keys, f"data.zero_com={str(zero_com).lower()}"])).train_set
        centres = torch.stack([points[~missing_points(points[None])[0]].mean(0) for points in served.data])
        assert (centres.abs().max() < 1e-5) == zero_com
    with pytest.raises(DataError, match="data.clusters=3 labels examples by k-means .* set data.clusters=0"):
        DiffusionDataModule.of_run(load_config([*keys, "data.clusters=3"]))


@pytest.mark.parametrize("zero_com", [True, False])
def test_a_sets_starting_noise_has_the_datas_sizes_in_proportion_and_is_centred_as_data_zero_com_says(zero_com):
    """Training sets of 3 points and three times as many of 5 (the counts the codec keeps):
    sample i starts from the generator's standard normal noise with 3 points where frac(i * g)
    < 1/4, g the golden ratio's fractional part (Weyl's sequence), else 5; its centre of mass
    taken out with data.zero_com, and only then."""
    from {{ cookiecutter.package_name }}.runs import new_model

    cfg = load_config(["data.name=tensor_file", "data.kind=set", f"data.zero_com={str(zero_com).lower()}",
                       "data.clusters=0", "model.name=set_transformer", "model.conditional=false"])
    model = new_model(cfg, (5, 3))
    model.codec.normalise({"low": [-1.0] * 3, "high": [1.0] * 3, "points": [0, 0, 0, 1, 0, 3]})
    noise = model.set_noise(torch.arange(12), torch.Generator().manual_seed(4))
    expected = torch.randn(12, 5, 3, generator=torch.Generator().manual_seed(4))
    golden = (math.sqrt(5) - 1) / 2
    for i in range(12):
        size = 3 if (i * golden) % 1 < 0.25 else 5
        expected[i, size:] = math.nan
        if zero_com:
            expected[i, :size] -= expected[i, :size].mean(0)
    assert 2 <= (~missing_points(noise)).sum(1).eq(3).sum() <= 4          # about a quarter have 3 points
    torch.testing.assert_close(noise, expected, equal_nan=True)


def test_centring_and_rotations():
    x = torch.randn(6, 5, 3)
    x[0, 2:] = math.nan
    centred = without_centre(x)
    real = ~missing_points(x)
    assert torch.isnan(centred[~real]).all()
    assert all(centred[i][real[i]].mean(0).abs().max() < 1e-6 for i in range(6))
    rotations = random_rotations(500, 3, generator=torch.Generator().manual_seed(0))
    eye = torch.eye(3).expand(500, 3, 3)
    assert torch.allclose(rotations @ rotations.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(500), atol=1e-5)
    assert rotations.mean(0).abs().max() < 0.1                      # Haar: no preferred direction, E[R] = 0
    turned = rotated(centred, torch.Generator().manual_seed(1))
    distances = lambda s: torch.cdist(s[real[1]][None], s[real[1]][None])   # noqa: E731
    assert torch.allclose(distances(turned[1]), distances(centred[1]), atol=1e-5)


def set_denoisers() -> tuple[NetworkDenoiser, NetworkDenoiser]:
    """The denoiser of a set transformer of 7-point sets, and its weights on 4-point sets."""
    denoiser = NetworkDenoiser(set_transformer(), build_parameterization("edm", 0.5), 0.002, 80.0)
    small = NetworkDenoiser(randomised(SetTransformer((4, 3), width=32, depth=2, heads=4)),
                            build_parameterization("edm", 0.5), 0.002, 80.0)
    small.load_state_dict(denoiser.state_dict())
    return denoiser, small


def padded(x: torch.Tensor) -> torch.Tensor:
    """4-point sets as 7-point sets with 3 missing points."""
    return torch.cat([x, torch.full((len(x), 3, 3), math.nan)], 1)


def test_the_loss_of_a_padded_set_is_the_loss_of_its_real_points():
    """Padding a 4-point set with 3 missing points changes nothing: the loss is the mean over
    the real numbers, and the network ignores the missing points."""
    denoiser, small = set_denoisers()
    x0, noise, sigma = torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.tensor([0.3, 2.0])
    padded_noise = torch.cat([noise, torch.randn(2, 3, 3)], 1)
    loss = denoiser.loss(padded(x0), sigma, padded_noise)
    assert torch.allclose(loss, small.loss(x0, sigma, noise), atol=1e-5)
    loss.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in denoiser.parameters() if p.grad is not None)


def test_a_consistency_students_loss_of_a_padded_set_is_the_loss_of_its_real_points():
    """The same for the few-step students' loss (``diffusion/distillation.py``): the teacher's
    Heun step carries missing points along, and iCT's distance runs over the real numbers, its
    constant c = 0.00054 sqrt(dim) counting them alone."""
    denoiser, small = set_denoisers()
    x0, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    t, r = torch.tensor([0.3, 2.0]), torch.tensor([0.1, 1.0])
    x_t = x0 + t[:, None, None] * noise
    with torch.no_grad():
        x_r = heun_step(denoiser, padded(x_t), t, r)
        torch.testing.assert_close(x_r, padded(heun_step(small, x_t, t, r)), equal_nan=True, atol=1e-5, rtol=0)
    loss = consistency_loss(denoiser, padded(x0), padded(x_t), t, x_r, r, None)
    assert torch.allclose(loss, consistency_loss(small, x0, x_t, t, x_r[:, :4], r, None), atol=1e-5)
    loss.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in denoiser.parameters() if p.grad is not None)


def test_samplers_carry_missing_points_along_untouched():
    denoiser = NetworkDenoiser(set_transformer(zero_com=True), build_parameterization("edm", 0.5), 0.002, 80.0)
    noise = without_centre(torch.randn(6, 7, 3))
    noise[0, 3:] = math.nan
    with torch.no_grad():
        x = generate(denoiser, karras_sigmas(6, 0.002, 80.0).double(), functools.partial(ddim, eta=1.0), noise=noise,
                     generator=torch.Generator().manual_seed(0)).x
    assert torch.equal(torch.isnan(x), torch.isnan(noise))


# -- sequences ---------------------------------------------------------------------------------
def test_sequences_get_the_temporal_unet_and_sets_say_so():
    assert data_kind((2, 16)) == "sequence" and data_kind((7, 3), "set") == "set"
    assert data_kind((2, 8, 8), "set") == "image"                    # only (P, D) examples can be sets
    assert MODELS["unet"]["sequence"] is TemporalUNet and MODELS["set_transformer"]["set"] is SetTransformer


def test_build_model_gives_the_network_its_settings_and_condition_or_names_the_networks_that_fit(project_dir):
    from {{ cookiecutter.package_name }}.models import build_model
    from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels

    for zero_com in (True, False):
        cfg = load_config(["model.name=set_transformer", "model.set_transformer.width=16", "data.kind=set",
                           f"data.zero_com={zero_com}"])
        net = build_model(cfg, (5, 3), ClassLabels(4))
        assert isinstance(net, SetTransformer) and net.inp.out_features == 16 and net.embed.label.num_embeddings == 5
        assert net.zero_com is zero_com
    cfg = load_config(["model.name=dit", "data.kind=set"])
    with pytest.raises(ValueError, match="^it has no network for set data; networks for set data: "
                                         "set_transformer, mlp$"):
        build_model(cfg, (5, 3))
    with pytest.raises(ValueError, match="^it has no network for 4-dimensional array data; networks for "
                                         "4-dimensional array data: none$"):
        build_model(cfg, (2, 3, 4, 5))


def test_the_temporal_block_is_film_modulated_as_chi_et_al_write_it():
    """Chi et al. 2023's residual block written out: conv1 and conv2 are each a convolution of kernel 5 over time,
    group norm and Mish (their Conv1dBlock); the condition's projection Linear(Mish(emb)) gives (gamma, beta) per
    channel (FiLM, Perez et al. 2018), and the block is skip(x) + conv2(conv1(x) (1 + gamma) + beta), the skip a
    1x1 convolution where the widths differ."""
    from {{ cookiecutter.package_name }}.models.temporal_unet import TemporalBlock

    mish = torch.nn.functional.mish

    def conv_norm_mish(conv, norm, h):
        h = torch.nn.functional.conv1d(h, conv.weight, conv.bias, padding=2)
        return mish(torch.nn.functional.group_norm(h, norm.num_groups, norm.weight, norm.bias))

    block = randomised(TemporalBlock(8, 16, emb_dim=6)).eval()
    x, emb = torch.randn(2, 8, 12), torch.randn(2, 6)
    gamma_beta = mish(emb) @ block.film.weight.T + block.film.bias
    gamma, beta = gamma_beta[:, :16, None], gamma_beta[:, 16:, None]
    h = conv_norm_mish(block.conv1[0], block.conv1[1], x) * (1 + gamma) + beta
    skip = torch.nn.functional.conv1d(x, block.skip.weight, block.skip.bias)
    assert block.conv1[0].kernel_size == block.conv2[1].kernel_size == (5,) and block.conv1[1].num_groups == 4
    torch.testing.assert_close(block(x, emb), skip + conv_norm_mish(block.conv2[1], block.conv2[2], h))


def test_the_temporal_unet_keeps_the_shape_follows_its_condition_and_trains_every_weight():
    kind = Vectors([0.0] * 4, [1.0] * 4, [[0.5] * 4])
    net = randomised(TemporalUNet((2, 16), channels=8, channel_mult=(1, 2, 2), blocks_per_level=1,
                                  attention_levels=(1,), condition=kind))
    x, c_noise = torch.randn(3, 2, 16), torch.randn(3)
    conditions = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.5, 0.5], [math.nan] * 4])
    out = net(x, c_noise, conditions)
    assert out.shape == x.shape
    other = net(x, c_noise, conditions.flip(0).nan_to_num(0.5))
    assert not torch.allclose(out, other)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert TemporalUNet((2, 12), channels=8, channel_mult=(1, 2, 2))(x[..., :12], c_noise).shape == (3, 2, 12)
    with pytest.raises(ValueError, match=r"length 10 must be divisible by 2\^2 .*shorten channel_mult\)$"):
        TemporalUNet((2, 10), channels=8, channel_mult=(1, 2, 2))
    doubted = r"channel_mult\); the sequences are read as 12 channels over 6 steps .* save data.transpose\(1, 2\)$"
    with pytest.raises(ValueError, match=doubted):
        TemporalUNet((12, 6), channels=8, channel_mult=(1, 2, 2))       # more channels than steps: doubted


def test_the_temporal_unet_is_laid_out_as_its_docstring_says():
    """Widths channels x channel_mult[l]; ``blocks_per_level`` blocks per level down and up, the first changing the
    width (on the way up from the level below, or the middle, plus the level's own skip), self-attention after
    each block at the attention levels; a block, attention and a block in the middle; the length halved after
    every level but the last and doubled back; the output a norm, Mish and a 1x1 convolution; every block's
    dropout the one asked for."""
    from {{ cookiecutter.package_name }}.models.temporal_unet import TemporalAttention, TemporalBlock

    def layout(layers):
        return [f"block {layer.conv1[0].in_channels}>{layer.conv1[0].out_channels}" if isinstance(layer, TemporalBlock)
                else f"attention {layer.norm.num_channels}" if isinstance(layer, TemporalAttention)
                else type(layer).__name__ for layer in layers]

    net = TemporalUNet((2, 16), channels=8, channel_mult=(1, 2, 4), blocks_per_level=2, attention_levels=(1,),
                       dropout=0.25)
    assert [layout(stage) for stage in net.down] == [
        ["block 8>8", "block 8>8"], ["block 8>16", "attention 16", "block 16>16", "attention 16"],
        ["block 16>32", "block 32>32"]]
    assert layout(net.middle) == ["block 32>32", "attention 32", "block 32>32"]
    assert [layout(stage) for stage in net.up] == [
        ["block 64>32", "block 32>32"], ["block 48>16", "attention 16", "block 16>16", "attention 16"],
        ["block 24>8", "block 8>8"]]
    assert [(conv.in_channels, conv.stride) for conv in net.shorten] == [(8, (2,)), (16, (2,))]
    assert [(conv.in_channels, conv.stride) for conv in net.lengthen] == [(32, (2,)), (16, (2,))]
    assert layout(net.out) == ["GroupNorm", "Mish", "Conv1d"] and net.out[-1].out_channels == 2
    assert {block.conv2[0].p for block in net.modules() if isinstance(block, TemporalBlock)} == {0.25}


def test_the_temporal_unet_goes_down_through_the_middle_and_up_taking_each_levels_skip():
    """Written out for two levels of one block (attention at level 1): h = inp(x); s0 = block(h); halved;
    s1 = attention(block(.)); the middle; a block and attention on [h, s1]; doubled; a block on [h, s0] (each
    skip joined after h); the output layers."""
    net = randomised(TemporalUNet((2, 8), channels=8, channel_mult=(1, 2), blocks_per_level=1, attention_levels=(1,)))
    x, c_noise = torch.randn(3, 2, 8), torch.randn(3)
    emb = net.embed(c_noise, None)
    ((block0,), (block1, attention1)), (first, attention, second) = net.down, net.middle
    s0 = block0(net.inp(x), emb)
    s1 = attention1(block1(net.shorten[0](s0), emb))
    h = second(attention(first(s1, emb)), emb)
    (up1, attention_up1), (up0,) = net.up
    h = net.lengthen[0](attention_up1(up1(torch.cat([h, s1], 1), emb)))
    h = up0(torch.cat([h, s0], 1), emb)
    torch.testing.assert_close(net(x, c_noise), net.out(h))


def test_the_temporal_unet_sees_far_along_the_sequence():
    """Changing the first step changes the output at the last: the levels reach across all 32
    steps (a network that saw only its neighbours could not plan a path to a goal)."""
    net = randomised(TemporalUNet((2, 32), channels=8, channel_mult=(1, 2, 2), blocks_per_level=1))
    x = torch.randn(1, 2, 32)
    moved = x.clone()
    moved[..., 0] += 1
    assert (net(x, torch.zeros(1)) - net(moved, torch.zeros(1)))[..., -1].abs().max() > 1e-4


# -- tensor files: conditions, masks, scaling --------------------------------------------------
def test_a_mask_makes_missing_points_and_conditions_come_as_rows(tmp_path):
    data, mask = torch.randn(4, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0], [1, 1, 0, 1, 1]])
    data[0, 4] = math.inf                                            # at a missing point: ignored
    torch.save({"data": data, "mask": mask.bool(), "conditions": torch.arange(4.0)}, tmp_path / "sets.pt")
    decoded = sources.load_tensor_file(tmp_path / "sets.pt")
    assert torch.equal(missing_points(decoded.data), ~mask.bool())
    assert torch.equal(decoded.data[mask.bool()], data[mask.bool()])
    assert decoded.conditions.shape == (4, 1)
    for ones_and_zeros in (mask, mask.float()):                     # a mask of 1/0 numbers reads as True/False
        torch.save({"data": data, "mask": ones_and_zeros}, tmp_path / "numbers.pt")
        assert torch.equal(missing_points(sources.load_tensor_file(tmp_path / "numbers.pt").data), ~mask.bool())


def test_steps_first_sequences_are_doubted_aloud(tmp_path):
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule

    torch.save({"data": torch.randn(40, 48, 2)}, tmp_path / "steps_first.pt")
    cfg = load_config(["data.name=tensor_file", f"data.root={tmp_path / 'steps_first.pt'}", "data.clusters=0"]).data
    with pytest.warns(UserWarning, match="48 channels over 2 steps.*transpose"):
        DiffusionDataModule(cfg).setup()
    from {{ cookiecutter.package_name }}.data.datamodule import layout_doubt

    assert layout_doubt(torch.randn(40, 3, 3), "auto") is None                 # as many channels as steps: no doubt


def test_a_numpy_archive_holds_the_same_keys(tmp_path):
    import numpy as np

    data, conditions = np.random.default_rng(0).normal(size=(6, 2, 8)), np.arange(12.0).reshape(6, 2)
    np.savez(tmp_path / "paths.npz", data=data, conditions=conditions)
    decoded = sources.load_tensor_file(tmp_path / "paths.npz")
    assert torch.equal(decoded.data, torch.from_numpy(data).float())
    assert torch.equal(decoded.conditions, torch.from_numpy(conditions).float())


@pytest.mark.parametrize("content, message", [
    ({"data": torch.randn(4, 5, 3), "conditions": torch.randn(3, 2)}, r"conditions must be \(4, K\).*\(3, 2\)"),
    ({"data": torch.randn(4, 5, 3), "conditions": torch.tensor([[0.0], [math.nan], [1], [2]])},
     "1 condition row.*NaN or Inf.*index 1"),
    ({"data": torch.randn(4, 5, 3), "conditions": torch.ones(4, 2, dtype=torch.bool)},
     r"conditions must be \(4, K\) real numbers.*torch.bool"),
    ({"data": torch.randn(4, 5, 3), "mask": torch.ones(4, 4, dtype=torch.bool)}, r"mask must be \(4, 5\)"),
    ({"data": torch.randn(4, 5, 3), "mask": torch.zeros(4, 5, dtype=torch.bool)}, "no real point"),
    ({"data": torch.randn(4, 5, 3), "mask": torch.tensor([[1, 1, 2, 0, 1]] * 4)}, "of True/False or 1/0"),
    ({"data": torch.randn(4, 5, 3), "mask": torch.arange(4)[:, None].expand(4, 5) != 2},
     r"1 set\(s\) have no real point in the mask \(the first: index 2\)"),
    ({"data": torch.randn(4, 5, 3).index_put((torch.tensor(3), torch.tensor(1)), torch.tensor(math.inf)),
      "mask": torch.ones(4, 5, dtype=torch.bool)}, r"1 set\(s\) hold NaN or Inf at real points \(the first: index 3\)"),
    ({"data": torch.randn(4, 5), "mask": torch.ones(4, 5, dtype=torch.bool)}, r"needs float data of shape \(N, P, D\)"),
    ({"data": torch.full((4, 5, 3), math.nan), "mask": torch.ones(4, 5, dtype=torch.bool)}, "NaN or Inf at real"),
    ({"data": torch.randn(4, 5, 3), "condition": torch.randn(4, 2)}, r"holds keys \['condition'\]"),
    ({"data": torch.zeros(4, 28, 28, dtype=torch.uint8)}, r"images of shape \(N, C, H, W\) \(grayscale images: "
                                                          r"data\[:, None\], of shape \(4, 1, 28, 28\)\)"),
])
def test_bad_conditions_and_masks_are_one_line_errors(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=message) as error:
        sources.load_tensor_file(tmp_path / "bad.pt")
    assert "\n" not in str(error.value)


def test_feature_ranges_map_each_feature_to_plus_minus_one_and_back():
    sequences = torch.stack([torch.linspace(2, 6, 40), torch.linspace(-100, 0, 40), torch.linspace(0, 0.1, 40)])
    sequences = sequences.reshape(3, 4, 10).transpose(0, 1)           # narrow ranges are widened too
    scaling = FeatureRange("sequence")
    scaling.measure(sequences)
    scaled = scaling.latents(sequences)
    assert torch.allclose(scaled.amin((0, 2)), -torch.ones(3)) and torch.allclose(scaled.amax((0, 2)), torch.ones(3))
    assert torch.allclose(scaling.decode(scaled), sequences, atol=1e-5)
    sets = torch.tensor([[[1.0, 4.0], [-2.0, 0.0], [math.nan, math.nan]],
                         [[0.5, 3.0], [math.nan, math.nan], [math.nan, math.nan]]])
    scaling = FeatureRange("set")
    scaling.measure(sets)
    assert torch.allclose(scaling.latents(sets)[0, :2], sets[0, :2] / 4)     # one scale for all coordinates, no shift
    assert scaling.statistics["points"] == [0, 1, 1, 0]              # sets of 0 to 3 points: one of 1, one of 2
    vectors = torch.randn(5, 3) * 7
    unmeasured = FeatureRange("vector")                             # changes nothing until measured
    assert torch.equal(unmeasured.latents(vectors), vectors) and torch.equal(unmeasured.decode(vectors), vectors)
    unscaled = FeatureRange("vector", scale=False)                  # data.normalise=false
    unscaled.measure(vectors)
    assert torch.equal(unscaled.latents(vectors), vectors)


def test_a_tensor_files_vectors_sequences_and_sets_are_scaled_and_its_images_are_not(project_dir):
    """data.normalise scales each feature of a tensor file's other data to [-1, 1]; its images are already in
    [-1, 1] (or uint8, mapped there), and an image folder's, the digits' or the toy points' come scaled."""
    from {{ cookiecutter.package_name }}.codecs import Identity
    from {{ cookiecutter.package_name }}.runs import new_model

    def codec(shape, *overrides):
        cfg = load_config(["data.name=tensor_file", "data.root=x.pt", "model.unet.channels=8", "model.dit.width=32",
                           "model.conditional=false", *overrides])
        return type(new_model(cfg, shape).codec)

    assert codec((1, 8, 8)) is Identity
    scaled = [codec((2, 16)), codec((5, 3), "data.kind=set", "model.name=mlp"), codec((6,), "model.name=mlp")]
    assert scaled == [FeatureRange] * 3
    assert type(new_model(load_config(["experiment=toy2d"]), (2,)).codec) is Identity


def test_nan_rows_are_refused_unless_the_data_are_sets(tmp_path):
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule

    data = torch.randn(40, 6, 2)
    torch.save({"data": data, "mask": torch.arange(6)[None].expand(40, 6) < 4}, tmp_path / "sets.pt")
    cfg = load_config(["data.name=tensor_file", f"data.root={tmp_path / 'sets.pt'}", "data.clusters=0"]).data
    with pytest.raises(DataError, match="NaN or Inf.*set data.kind=set"):
        DiffusionDataModule(cfg).setup()
    cfg.kind, cfg.clusters = "set", 5
    with pytest.raises(DataError, match="means nothing for sets.*data.clusters=0"):
        DiffusionDataModule(cfg).setup()
    cfg.clusters = 0
    module = DiffusionDataModule(cfg)
    module.setup()
    assert missing_points(module.train_set.data)[:, 4:].all()


# -- the commands, end to end ------------------------------------------------------------------
def path_file(folder, offset: float = 1000.0):
    """Paths (N, 2, 16) from a start to a goal in a square far from the origin, conditioned on
    (start, goal): data that only the saved scaling brings back to its units."""
    generator = torch.Generator().manual_seed(0)
    start, goal = (torch.rand(96, 2, generator=generator) * 4 + offset for _ in range(2))
    t = torch.linspace(0, 1, 16)
    paths = start[:, :, None] + (goal - start)[:, :, None] * t + 0.05 * torch.randn(96, 2, 16, generator=generator)
    torch.save({"data": paths, "conditions": torch.cat([start, goal], 1)}, folder / "paths.pt")
    return paths


def train_args(name: str, root, *more: str) -> list[str]:
    return ["train", f"name={name}", "data.name=tensor_file", f"data.root={root}", "data.clusters=0", "logger=csv",
            "data.batch_size=32", "trainer.max_steps=4", "trainer.val_every_n_steps=1000",
            "trainer.sample_every_n_steps=1000", "sampling.steps=4", *more]


def test_sequences_with_conditions_train_sample_restore_interpolate_and_export(project_dir, capsys):
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.data import DiffusionDataModule
    from {{ cookiecutter.package_name }}.runs import load_export, load_run

    paths = path_file(project_dir)
    assert main(train_args("paths", project_dir / "paths.pt", "model.name=unet", "model.conditional=true",
                           "model.unet.channels=8", "model.unet.channel_mult=[1,2]")) == 0
    model, _ = load_run("runs/paths")
    assert type(model.denoiser.net).__name__ == "TemporalUNet" and model.kind == "sequence"
    assert model.codec.statistics["low"] == pytest.approx(paths.transpose(0, 1).flatten(1).min(1).values.tolist(),
                                                          abs=0.2)             # the training split's range
    assert torch.allclose(model.condition.low, torch.full((4,), 1000.0), atol=0.5)
    assert main(["sample", "run=runs/paths", "n=3", "labels=[[1001,1001,1003,1003]]", "trajectory=true"]) == 0
    samples = torch.load("runs/paths/generated/samples.pt")
    assert samples.shape == (3, 2, 16) and (samples - 1002).abs().max() < 50      # in the data's units
    assert (project_dir / "runs/paths/generated/trajectory.gif").is_file()
    made_by = OmegaConf.load("runs/paths/generated/made_by.yaml")
    assert made_by.settings.labels == [[1001.0, 1001.0, 1003.0, 1003.0]]           # the condition asked for
    for wrong in ("labels=[[1,2]]", "labels=[[1,2,3,nan]]", "labels=[1001]", "conditions=[[[1,2,3,4],1.0]]"):
        assert main(["sample", "run=runs/paths", "n=1", wrong]) == 2                # weights are for class labels
        assert "conditioned on vectors of 4 numbers: give each as a list in labels" in capsys.readouterr().err
    assert main(["restore", "run=runs/paths", "method=repaint", "resample=2", "images=[0,5]",
                 "known_steps=[0,-1]"]) == 0
    restored = torch.load("runs/paths/restore/repaint.pt")
    truth = DiffusionDataModule.of_run(model.config).training_examples([0, 5])
    assert torch.equal(restored[..., [0, -1]], truth[..., [0, -1]])                # the start and goal exactly
    assert not torch.equal(restored[..., 1:-1], truth[..., 1:-1])
    assert main(["interpolate", "run=runs/paths", "between=conditions", "frames=3"]) == 0
    assert torch.load("runs/paths/interpolate/conditions.pt").shape == (3, 2, 16)
    assert main(["export", "run=runs/paths", "out=exported"]) == 0
    exported, _ = load_export(project_dir / "exported")
    generator = lambda: torch.Generator().manual_seed(0)                          # noqa: E731
    assert torch.equal(exported.sample(2, generator()).x, model.sample(2, generator()).x)


def test_few_step_students_of_scaled_conditioned_sequences_learn_and_sample_in_the_teachers_units(project_dir):
    """Students of a teacher that scales its data (``FeatureRange``) and takes vector conditions:
    each takes the teacher's scaling and condition table, the consistency student trains on the
    data scaled as the teacher saw it (its first losses are the teacher's size, not the size of
    numbers near 1000), and both sample, asked in the data's units, in the data's units."""
    import csv

    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.runs import load_run

    path_file(project_dir)
    assert main(train_args("teacher", project_dir / "paths.pt", "model.conditional=true", "model.unet.channels=8",
                           "model.unet.channel_mult=[1,2]")) == 0
    student = ["distill.teacher=runs/teacher", "logger=csv", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
               "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000", "data.batch_size=32"]
    assert main(["train", "experiment=reflow", *student, "name=reflow", "distill.pairs=32", "distill.shard_size=32",
                 "distill.teacher_sampling.steps=2"]) == 0
    assert main(["train", "experiment=ect", *student, "name=ect"]) == 0
    teacher, _ = load_run("runs/teacher")
    for name in ("reflow", "ect"):
        model, _ = load_run(f"runs/{name}")
        assert model.codec.statistics == teacher.codec.statistics
        assert model.condition_table == teacher.condition_table
        assert main(["sample", f"run=runs/{name}", "n=3", "labels=[[1001,1001,1003,1003]]", f"out={name}"]) == 0
        samples = torch.load(f"{name}/samples.pt")
        assert samples.shape == (3, 2, 16) and (samples - 1002).abs().max() < 50
    with open(next(Path("runs/ect").rglob("metrics.csv"))) as file:
        losses = [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]
    assert losses and max(losses) < 10


def test_sets_of_different_sizes_train_and_sample_centred_with_the_datas_sizes_as_do_their_students(project_dir):
    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.runs import load_run

    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([3, 5] * 40)
    points = torch.randn(80, 5, 3, generator=generator) + 7
    torch.save({"data": points, "mask": torch.arange(5)[None] < sizes[:, None]}, project_dir / "sets.pt")
    assert main(train_args("sets", project_dir / "sets.pt", "data.kind=set", "model.name=set_transformer",
                           "model.conditional=false", "data.zero_com=true", "data.rotate=true",
                           "model.set_transformer.width=16", "model.set_transformer.depth=1",
                           "sampling.sampler=ddim", "sampling.eta=1.0")) == 0
    model, _ = load_run("runs/sets")
    x = model.sample_numbered(torch.arange(40), seed=0)
    real = ~missing_points(x)
    assert sorted(set(real.sum(1).tolist())) == [3, 5] and abs(real.sum(1).float().mean().item() - 4) < 0.2
    centres = torch.stack([x[i][real[i]].mean(0) for i in range(40)])
    assert centres.abs().max() < 1e-3                                      # a stochastic sampler, still centred
    alone = model.sample_numbered(torch.tensor([7]), 0)                   # sample 7 whatever the batch
    assert torch.allclose(alone, x[7:8], atol=1e-5, equal_nan=True)
    assert main(["train", "experiment=ect", "distill.teacher=runs/sets", "name=ect", "logger=csv",
                 "trainer.max_steps=2", "trainer.val_every_n_steps=1000", "trainer.sample_every_n_steps=1000"]) == 0
    student, _ = load_run("runs/ect")                                     # a few-step student of sets
    x = student.sample_numbered(torch.arange(40), seed=0, sampling=student.config.sampling)
    assert sorted(set((~missing_points(x)).sum(1).tolist())) == [3, 5]


def test_inspect_data_describes_sequences_and_sets(project_dir, capsys):
    from {{ cookiecutter.package_name }}.cli import main

    path_file(project_dir)
    torch.save({"data": torch.randn(10, 4, 2), "mask": torch.arange(4)[None].expand(10, 4) < 3}, project_dir / "s.pt")
    assert main(["inspect-data", "data.name=tensor_file", f"data.root={project_dir / 'paths.pt'}", "name=a"]) == 0
    report = capsys.readouterr().out
    assert "sequences of 2 channel(s) over 16 steps" in report and "conditions: 4 per example" in report
    assert main(["inspect-data", "data.name=tensor_file", f"data.root={project_dir / 's.pt'}", "data.kind=set",
                 "name=b"]) == 0
    report = capsys.readouterr().out
    assert "sets of up to 4 points of 2 numbers" in report and "points per set: 3 to 3" in report
    assert (project_dir / "runs/b/inspect/preview.png").is_file()
