import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }}.diffusion.samplers import heun
from {{ cookiecutter.package_name }}.diffusion.schedules import karras_sigmas
from {{ cookiecutter.package_name }}.models import MLP, DiT, IdealDenoiser, SetTransformer, UNet
from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels, Vectors, sinusoidal_features
from {{ cookiecutter.package_name }}.models.unet import group_norm

from test_modalities import randomised

pytestmark = pytest.mark.once      # known answers that no answer to the template's questions changes

CASES = [
    (UNet, (1, 8, 8), dict(channels=16, channel_mult=(1, 2), blocks_per_level=1, attention_levels=(1,))),
    (UNet, (3, 16, 16), dict(channels=16, channel_mult=(1, 2, 2), blocks_per_level=2, attention_levels=(2,))),
    (DiT, (3, 16, 16), dict(patch_size=4, width=64, depth=2, heads=4)),
    (MLP, (2,), dict(width=64, depth=2)),
    (MLP, (1, 8, 8), dict(width=64, depth=2)),
]


@pytest.mark.parametrize("cls, shape, kwargs", CASES)
@pytest.mark.parametrize("num_classes", [None, 10])
def test_output_has_the_input_shape_and_every_weight_gets_a_gradient(cls, shape, kwargs, num_classes):
    torch.manual_seed(0)
    net = cls(shape, condition=ClassLabels(num_classes) if num_classes else None, **kwargs)
    for p in net.parameters():                 # undo zero inits so gradients reach every layer
        torch.nn.init.normal_(p, std=0.05)
    x, c_noise = torch.randn(4, *shape), torch.randn(4)
    labels = torch.tensor([0, 3, 9, 10]) if num_classes else None   # 10 is the null label
    out = net(x, c_noise, labels)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_the_output_depends_on_noise_level_and_label():
    torch.manual_seed(0)
    net = UNet((1, 8, 8), channels=16, channel_mult=(1, 2), blocks_per_level=1, condition=ClassLabels(10))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 8, 8)
    base = net(x, torch.tensor([0.0]), torch.tensor([1]))
    assert not torch.allclose(base, net(x, torch.tensor([0.5]), torch.tensor([1])))
    assert not torch.allclose(base, net(x, torch.tensor([0.0]), torch.tensor([2])))


def attention(q, k, v, seen=None):
    """softmax(q k^T / sqrt(d) + mask) v (Vaswani et al. 2017, eq. 1), for (..., tokens, d) queries, keys, values."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if seen is not None:
        scores = scores.masked_fill(~seen, -torch.inf)
    return scores.softmax(-1) @ v


def test_the_unet_attention_is_multi_head_attention_over_the_pixels():
    """Written out: group norm, then 1x1 projections to queries, keys and values (the first, second and third
    block of channels, each cut into heads of 32 channels), attention among the h w pixels in each head, the heads
    put back side by side, a 1x1 output projection, and the input added."""
    from {{ cookiecutter.package_name }}.models.unet import SelfAttention

    block = randomised(SelfAttention(64)).double()
    x = torch.randn(2, 64, 3, 5, dtype=torch.float64)
    pixels = block.norm(x).flatten(2).transpose(1, 2)                       # (B, hw, C)
    weight, bias = block.qkv.weight[:, :, 0, 0], block.qkv.bias
    q, k, v = (pixels @ weight.T + bias).chunk(3, dim=-1)
    heads = [attention(q[..., i:i + 32], k[..., i:i + 32], v[..., i:i + 32]) for i in (0, 32)]
    out = torch.cat(heads, -1) @ block.proj.weight[:, :, 0, 0].T + block.proj.bias
    assert block.heads == 2
    torch.testing.assert_close(block(x), x + out.transpose(1, 2).reshape(x.shape), rtol=1e-12, atol=1e-12)
    assert [SelfAttention(c).heads for c in (48, 80, 96, 100)] == [1, 2, 3, 2]       # heads of 32 channels or more


def test_the_unet_residual_block_is_adms_scale_and_shift_block():
    """Dhariwal & Nichol's residual block written out: h = conv1(SiLU(norm1(x))); (s, b) = Linear(SiLU(emb));
    h = norm2(h) (1 + s) + b; out = skip(x) + conv2(SiLU(h)), skip a 1x1 convolution where the widths differ."""
    from {{ cookiecutter.package_name }}.models.unet import ResBlock

    silu = torch.nn.functional.silu
    for cin in (8, 16):
        block = randomised(ResBlock(cin, 16, emb_dim=12)).double()
        x, emb = torch.randn(3, cin, 4, 4, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
        h = block.conv1(silu(block.norm1(x)))
        scale_shift = silu(emb) @ block.modulation.weight.T + block.modulation.bias
        scale, shift = scale_shift[:, :16, None, None], scale_shift[:, 16:, None, None]
        h = block.conv2(silu(block.norm2(h) * (1 + scale) + shift))
        skip = x if cin == 16 else block.skip(x)
        assert isinstance(block.skip, torch.nn.Identity) == (cin == 16)
        torch.testing.assert_close(block(x, emb), skip + h, rtol=1e-12, atol=1e-12)


def condition_embedding(net, c_noise, labels):
    """The network's condition vector, written out: the noise level's features through its MLP, plus the label's
    learned vector."""
    return net.embed.noise(sinusoidal_features(c_noise, 128)) + net.embed.label(labels)


def test_the_unet_is_laid_out_as_adms():
    """ADM's layout (Dhariwal & Nichol 2021), as the docstring says: widths channels x channel_mult[l];
    ``blocks_per_level`` residual blocks per level on the way down, each followed by attention at the attention
    levels, and a strided convolution after every level but the last; a block, attention and a block in the
    middle; on the way up one block more per level, each taking the skip of its mirror (the input of each
    down-sampled level, the outputs of its blocks), then nearest-neighbour upsampling and a convolution; the output
    a norm, SiLU and a convolution; every block's dropout the one asked for, and its condition 4 x channels wide."""
    from {{ cookiecutter.package_name }}.models.unet import ResBlock, SelfAttention

    def layout(layers):
        return [f"block {layer.conv1.in_channels}>{layer.conv1.out_channels}" if isinstance(layer, ResBlock)
                else f"attention {layer.norm.num_channels}" if isinstance(layer, SelfAttention)
                else f"conv{layer.kernel_size[0]} {layer.in_channels}/{layer.stride[0]}"
                if isinstance(layer, torch.nn.Conv2d)
                else type(layer).__name__ for layer in layers]

    net = UNet((1, 16, 16), channels=8, channel_mult=(1, 2, 4), blocks_per_level=2, attention_levels=(1,),
               dropout=0.25)
    assert [layout(stage) for stage in net.down] == [
        ["block 8>8"], ["block 8>8"], ["conv3 8/2"],
        ["block 8>16", "attention 16"], ["block 16>16", "attention 16"], ["conv3 16/2"],
        ["block 16>32"], ["block 32>32"]]
    assert layout(net.middle) == ["block 32>32", "attention 32", "block 32>32"]
    assert [layout(stage) for stage in net.up] == [
        ["block 64>32"], ["block 64>32"], ["block 48>32"], ["Upsample", "conv3 32/1"],
        ["block 48>16", "attention 16"], ["block 32>16", "attention 16"], ["block 24>16", "attention 16"],
        ["Upsample", "conv3 16/1"],
        ["block 24>8"], ["block 16>8"], ["block 16>8"]]
    assert layout(net.out) == ["GroupNorm", "SiLU", "conv3 8/1"] and net.out[-1].out_channels == 1
    assert {(up.scale_factor, up.mode) for up in net.modules() if isinstance(up, torch.nn.Upsample)} == {(2, "nearest")}
    assert {block.dropout.p for block in net.modules() if isinstance(block, ResBlock)} == {0.25}
    assert {block.modulation.in_features for block in net.modules() if isinstance(block, ResBlock)} == {4 * 8}


def test_the_unet_goes_down_through_the_middle_and_up_taking_each_skip_of_its_mirror():
    """Written out for two levels of one block (attention at level 1): h0 = inp(x); down, h1 = block(h0),
    h2 = downsample(h1), h3 = attention(block(h2)); the middle; up at level 1, a block and attention on
    [h, h3], then on [h, h2] (the skip joined after h, as ADM joins it); upsampled; at level 0 a block on [h, h1],
    then on [h, h0]; the output layers. Every block is given the condition vector."""
    net = randomised(UNet((1, 8, 8), channels=8, channel_mult=(1, 2), blocks_per_level=1, attention_levels=(1,),
                          condition=ClassLabels(3)))
    x, c_noise, labels = torch.randn(2, 1, 8, 8), torch.randn(2), torch.tensor([0, 3])
    emb = condition_embedding(net, c_noise, labels)
    (block0,), (downsample,), (block1, attention1) = net.down
    h0 = net.inp(x)
    h1 = block0(h0, emb)
    h2 = downsample(h1)
    h3 = attention1(block1(h2, emb))
    first, attention, second = net.middle
    h = second(attention(first(h3, emb)), emb)
    (up1, attention_up1), (up2, attention_up2), (upsample, convolution), (up3,), (up4,) = net.up
    h = attention_up1(up1(torch.cat([h, h3], 1), emb))
    h = attention_up2(up2(torch.cat([h, h2], 1), emb))
    h = convolution(upsample(h))
    h = up3(torch.cat([h, h1], 1), emb)
    h = up4(torch.cat([h, h0], 1), emb)
    torch.testing.assert_close(net(x, c_noise, labels), net.out(h))


def test_the_dit_block_is_adaln_zero_as_peebles_and_xie_write_it():
    """DiT's block (Peebles & Xie 2023, Fig. 3): (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c));
    x += gate1 Attention(LN(x) (1 + scale1) + shift1); x += gate2 MLP(LN(x) (1 + scale2) + shift2), with the
    attention's heads side by side, tokens that are not seen masked out, and the MLP ViT's: width 4d, tanh GELU."""
    from {{ cookiecutter.package_name }}.models.dit import DiTBlock

    block = randomised(DiTBlock(16, heads=2)).double()
    x, emb = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    seen = torch.tensor([[True] * 5, [True, True, False, True, False]])
    layer_norm = lambda h: torch.nn.functional.layer_norm(h, (16,))       # noqa: E731
    parts = (torch.nn.functional.silu(emb) @ block.modulation.weight.T + block.modulation.bias)[:, None]
    shift1, scale1, gate1, shift2, scale2, gate2 = (parts[..., 16 * i:16 * (i + 1)] for i in range(6))
    q, k, v = (block.qkv(layer_norm(x) * (1 + scale1) + shift1)).chunk(3, dim=-1)
    mask = seen[:, None, :]
    heads = [attention(q[..., i:i + 8], k[..., i:i + 8], v[..., i:i + 8], mask) for i in (0, 8)]
    x_mid = x + gate1 * block.proj(torch.cat(heads, -1))
    first, _, second = block.mlp                                           # an MLP of ratio 4, tanh GELU
    mlp = lambda h: second(torch.nn.functional.gelu(first(h), approximate="tanh"))      # noqa: E731
    expected = x_mid + gate2 * mlp(layer_norm(x_mid) * (1 + scale2) + shift2)
    assert first.out_features == 4 * 16
    torch.testing.assert_close(block(x, emb, seen), expected, rtol=1e-12, atol=1e-12)


def test_dit_positions_are_the_2d_sine_cosine_embedding_and_tokens_return_to_their_patches():
    """The position of grid cell (r, c): sin(r w), cos(r w), sin(c w), cos(c w), w_i = 10000^(-i / (d/4)) (the
    MAE/DiT 2D sine-cosine embedding). A token's p x p x C numbers fill its patch, row by row, channels last."""
    from {{ cookiecutter.package_name }}.models.dit import sincos_positions

    grid, dim = 3, 16
    positions = sincos_positions(grid, dim).double()
    for token in range(grid * grid):
        r, c = divmod(token, grid)
        w = 10_000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
        expected = torch.cat([torch.sin(r * w), torch.cos(r * w), torch.sin(c * w), torch.cos(c * w)])
        torch.testing.assert_close(positions[token], expected, rtol=1e-6, atol=1e-6)
    net = DiT((3, 6, 6), patch_size=2, width=16, depth=1, heads=2)
    image = torch.randn(2, 3, 6, 6)
    tokens = torch.stack([image[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].permute(0, 2, 3, 1).flatten(1)
                          for r in range(3) for c in range(3)], dim=1)      # (B, 9 patches, 2 x 2 x 3)
    assert torch.equal(net.unpatchify(tokens, 3), image)


def adaln_final_layer(net, h, emb):
    """DiT's final layer: LN(h) (1 + scale) + shift, (shift, scale) = Linear(SiLU(c)), then a linear map per token."""
    width = h.shape[-1]
    shift_scale = torch.nn.functional.silu(emb) @ net.final_modulation.weight.T + net.final_modulation.bias
    shift, scale = shift_scale[:, None, :width], shift_scale[:, None, width:]
    return net.head(torch.nn.functional.layer_norm(h, (width,)) * (1 + scale) + shift)


def test_the_dit_is_patch_tokens_with_positions_through_its_blocks_then_the_final_adaln_layer():
    """DiT (Peebles & Xie 2023, Sec. 3.1) written out: each p x p patch embedded linearly as a token, plus its 2D
    sine-cosine position; the blocks in turn, each given the condition; the final adaLN layer; each token back to
    its patch. The positions are computed, never saved, so a checkpoint does not depend on them."""
    from {{ cookiecutter.package_name }}.models.dit import sincos_positions

    net = randomised(DiT((3, 8, 8), patch_size=2, width=16, depth=3, heads=2, condition=ClassLabels(10)))
    x, c_noise, labels = torch.randn(2, 3, 8, 8), torch.randn(2), torch.tensor([3, 10])
    emb = condition_embedding(net, c_noise, labels)
    patches = torch.stack([x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].flatten(1) for r in range(4) for c in range(4)],
                          dim=1)                                              # (B, 16 patches, C p p)
    h = patches @ net.patchify.weight.flatten(1).T + net.patchify.bias + sincos_positions(4, 16)
    assert len(net.blocks) == 3
    for block in net.blocks:
        h = block(h, emb)
    expected = net.unpatchify(adaln_final_layer(net, h, emb), 3)
    torch.testing.assert_close(net(x, c_noise, labels), expected, rtol=1e-5, atol=1e-5)
    assert "positions" not in net.state_dict()


def test_the_set_transformer_is_dits_blocks_over_its_real_points_then_the_final_adaln_layer():
    """Each point a token (a linear map of its D numbers), no positions; DiT's blocks, attending to the real
    points only; DiT's final layer; 0 at the missing points (Lee et al. 2019, with Peebles & Xie's blocks)."""
    net = randomised(SetTransformer((5, 3), width=16, depth=2, heads=2, condition=ClassLabels(4)))
    x, c_noise, labels = torch.randn(2, 5, 3), torch.randn(2), torch.tensor([1, 4])
    x[1, 3:] = torch.nan
    seen = torch.tensor([[True] * 5, [True, True, True, False, False]])
    emb = condition_embedding(net, c_noise, labels)
    h = torch.nan_to_num(x) @ net.inp.weight.T + net.inp.bias
    assert len(net.blocks) == 2
    for block in net.blocks:
        h = block(h, emb, seen)
    expected = torch.where(seen[..., None], adaln_final_layer(net, h, emb), 0.0)
    torch.testing.assert_close(net(x, c_noise, labels), expected, rtol=1e-5, atol=1e-5)


def test_the_mlp_is_residual_blocks_that_add_the_condition_after_their_norm():
    """Written out: h = Linear(x flattened); each block h + Linear(SiLU(Linear(LN(h) + c))); the output
    Linear(SiLU(LN(h))) shaped like x. With zero inits undone, so that every layer acts."""
    functional = torch.nn.functional
    net = randomised(MLP((1, 4, 4), width=32, depth=3, condition=ClassLabels(5)))
    x, c_noise, labels = torch.randn(2, 1, 4, 4), torch.randn(2), torch.tensor([0, 5])
    emb = condition_embedding(net, c_noise, labels)
    h = x.flatten(1) @ net.inp.weight.T + net.inp.bias
    assert len(net.blocks) == 3
    for block in net.blocks:
        first, _, second = block.layers
        inner = functional.layer_norm(h, (32,), block.norm.weight, block.norm.bias) + emb
        h = h + second(functional.silu(first(inner)))
    norm, _, last = net.out
    expected = last(functional.silu(functional.layer_norm(h, (32,), norm.weight, norm.bias))).view(x.shape)
    torch.testing.assert_close(net(x, c_noise, labels), expected)


def test_conditional_network_refuses_missing_labels():
    net = MLP((2,), width=32, depth=1, condition=ClassLabels(3))
    with pytest.raises(ValueError, match="conditional: pass its condition"):
        net(torch.randn(2, 2), torch.randn(2))


@pytest.mark.parametrize("channels", [24, 40, 48, 96])
def test_any_width_builds(channels):
    """Decoder blocks normalise the concatenation of two widths (48 + 96 = 144 channels), which
    32 groups do not divide."""
    net = UNet((1, 16, 16), channels=channels, channel_mult=(1, 2, 2), blocks_per_level=1)
    assert net(torch.randn(2, 1, 16, 16), torch.randn(2)).shape == (2, 1, 16, 16)


def test_group_counts():
    """Up to 32 groups of at least 4 channels: 144 = 24 x 6 is the most that divide 144, 12 = 3 x 4 (not 4 x 3),
    132 = 22 x 6 (not 33 x 4); fewer than 8 channels are one group."""
    assert [group_norm(c).num_groups for c in (3, 4, 6, 12, 16, 64, 132, 144, 256)] == [1, 1, 1, 3, 4, 16, 22, 24, 32]


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError) as error:
        UNet((1, 12, 12), channels=16, channel_mult=(1, 2, 2, 2))
    assert str(error.value) == "image size 12 must be divisible by 2^3 for channel_mult [1, 2, 2, 2]"
    UNet((1, 8, 8), channels=16, channel_mult=(1, 2, 2, 2))                  # 3 halvings: 8, 4, 2, 1
    with pytest.raises(ValueError) as error:
        UNet((1, 8, 8), channels=16, channel_mult=(1, 2, 2), attention_levels=(1, 3))
    assert str(error.value) == ("attention_levels [1, 3] name levels beyond the 3 of channel_mult [1, 2, 2] (levels "
                                "count from 0)")
    UNet((1, 8, 8), channels=16, channel_mult=(1, 2, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="patch_size"):
        DiT((3, 30, 30), patch_size=4, width=64, depth=1, heads=4)
    with pytest.raises(ValueError, match=r"width \(66\) divisible by heads \(3\) and by 4"):
        DiT((3, 8, 8), patch_size=2, width=66, depth=1, heads=3)       # the positions take a quarter each
    with pytest.raises(ValueError, match=r"width \(30\) must be divisible by heads \(4\)"):
        SetTransformer((5, 3), width=30, heads=4)


def test_class_labels_drop_a_share_to_the_null_label_and_keep_the_rest():
    """Condition dropout for classifier-free guidance: label `count` is the null label; a share p
    of the labels becomes it, the others stay as they were."""
    condition = ClassLabels(10)
    labels = torch.arange(10).repeat(1000)
    assert torch.equal(condition.null(3), torch.tensor([10, 10, 10]))
    assert torch.equal(condition.drop(labels, 0.0), labels)
    assert torch.equal(condition.drop(labels, 1.0), torch.full_like(labels, 10))
    torch.manual_seed(0)
    dropped = condition.drop(labels, 0.2)
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept]) and abs((~kept).float().mean().item() - 0.2) < 0.02
    assert condition.embedding(8).num_embeddings == 11                 # every class and the null label


# -- the ideal denoiser: known answers -----------------------------------------------------------
def test_the_noise_level_features_are_the_transformers_sinusoids_of_1000_c_noise():
    """Vaswani et al. 2017's frequencies 10000^(-i / half), i = 0 .. half - 1, cosines then sines,
    of 1000 c_noise, worked out in float64."""
    c_noise = torch.tensor([-0.3, 0.0, 0.05, 0.7])
    angles = 1000 * c_noise.double().numpy()[:, None] * 10_000.0 ** (-np.arange(4) / 4)
    expected = np.concatenate([np.cos(angles), np.sin(angles)], 1)
    np.testing.assert_allclose(sinusoidal_features(c_noise, 8).double().numpy(), expected, atol=2e-4)


def point_mass_posterior_mean(x: np.ndarray, sigma: float, examples: np.ndarray) -> np.ndarray:
    """E[x0 | x] for x0 drawn uniformly from ``examples`` and x = x0 + sigma * eps, written out
    in float64 with whole squared distances (the model drops ||x||^2 and works in chunks)."""
    distances = ((x[:, None, :] - examples[None]) ** 2).sum(-1)
    logits = -distances / (2 * sigma**2)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    return weights @ examples / weights.sum(1, keepdims=True)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 5.0])
def test_ideal_denoiser_is_the_posterior_mean_of_its_examples(sigma):
    generator = torch.Generator().manual_seed(0)
    examples = torch.randn(103, 3, 2, generator=generator)           # 103: the chunks of 10 do not divide it
    x = torch.randn(6, 3, 2, generator=generator) * 1.5
    ideal = IdealDenoiser((3, 2), chunk=10).memorise(examples)
    expected = point_mass_posterior_mean(x.flatten(1).double().numpy(), sigma, examples.flatten(1).double().numpy())
    got = ideal(x, torch.full((6,), sigma))
    assert got.shape == x.shape
    np.testing.assert_allclose(got.flatten(1).double().numpy(), expected, atol=2e-5)


def test_conditional_ideal_denoiser_averages_the_examples_of_its_label_and_all_for_the_null_label():
    generator = torch.Generator().manual_seed(1)
    examples, labels = torch.randn(60, 4, generator=generator), torch.arange(60) % 3
    x, sigma = torch.randn(4, 4, generator=generator), 0.8
    ideal = IdealDenoiser((4,), condition=ClassLabels(3), chunk=7).memorise(examples, labels)
    asked = torch.tensor([0, 2, 3, 1])                                  # 3 is the null label
    got = ideal(x, torch.full((4,), sigma), asked).double().numpy()
    for row, label in enumerate(asked.tolist()):
        own = examples if label == 3 else examples[labels == label]
        expected = point_mass_posterior_mean(x[row:row + 1].double().numpy(), sigma, own.double().numpy())
        np.testing.assert_allclose(got[row:row + 1], expected, atol=2e-5)
    unlabelled = ideal(x, torch.full((4,), sigma))                      # no labels: as the null label
    torch.testing.assert_close(unlabelled, ideal(x, torch.full((4,), sigma), torch.full((4,), 3)))


def test_ideal_denoiser_of_many_gaussian_samples_approaches_the_gaussian_posterior_mean():
    """For x0 ~ N(mu, S), E[x0 | x] = mu + S (S + sigma^2 I)^-1 (x - mu): 40,000 examples of it
    come within sampling error of that line."""
    generator = torch.Generator().manual_seed(2)
    mu, root = torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.0], [0.6, 0.5]])
    covariance = root @ root.T
    ideal = IdealDenoiser((2,)).memorise(mu + torch.randn(40_000, 2, generator=generator) @ root.T)
    x = mu + torch.randn(8, 2, generator=generator) @ root.T             # where the examples are dense
    for sigma in (0.5, 1.0, 2.0):
        expected = mu + (x - mu) @ torch.linalg.solve(covariance + sigma**2 * torch.eye(2), covariance)
        assert (ideal(x, torch.full((8,), sigma)) - expected).abs().max() < 0.04


def test_a_deterministic_sampler_driven_by_the_ideal_denoiser_ends_on_training_examples():
    generator = torch.Generator().manual_seed(3)
    examples = torch.randn(50, 1, 4, 4, generator=generator)
    ideal = IdealDenoiser((1, 4, 4)).memorise(examples)
    final = heun(ideal, karras_sigmas(30, 0.002, 80.0), torch.randn(16, 1, 4, 4, generator=generator) * 80).x
    distances = torch.cdist(final.flatten(1), examples.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    assert distances.min(1).values.max() < 1e-4
    assert len(set(distances.argmin(1).tolist())) > 8                 # many examples, not one average
    at_zero = ideal(final + 0.01, torch.zeros(16))                     # sigma = 0: the limit, the nearest example
    assert torch.equal(at_zero, examples[distances.argmin(1)])


def test_smoothed_ideal_denoiser_is_the_average_over_perturbed_inputs():
    """Two examples at -1 and +1: D(x, sigma) = tanh(x / sigma^2), and the smoothed denoiser
    E_z tanh((x + s z) / sigma^2), z ~ N(0, 1), integrated by Gauss-Hermite quadrature; the
    model's fixed draws estimate it within four standard errors."""
    smoothing, sigma, draws = 0.4, 0.7, 20_000
    ideal = IdealDenoiser((1,), smoothing=smoothing, draws=draws).memorise(torch.tensor([[-1.0], [1.0]]))
    x = np.array([-1.2, -0.3, 0.0, 0.25, 0.9])
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    values = np.tanh((x[:, None] + smoothing * nodes) / sigma**2)
    expected = values @ weights / weights.sum()
    spread = np.sqrt((values**2) @ weights / weights.sum() - expected**2)
    got = ideal(torch.tensor(x, dtype=torch.float32)[:, None], torch.full((5,), sigma))[:, 0].double().numpy()
    assert np.all(np.abs(got - expected) < 4 * spread / np.sqrt(draws) + 1e-6)
    assert np.abs(expected - np.tanh(x / sigma**2)).max() > 0.1        # smoothing changed the answer


def test_a_smoothed_conditional_ideal_denoiser_averages_its_class_posterior_over_its_fixed_draws():
    """D_s(x, sigma, y) = (1/K) sum_k D(x + s z_k, sigma, y) over the model's K fixed draws z_k,
    with D the posterior mean of the examples of class y (of all examples for the null label),
    written out in float64 (Scarvelis et al. 2023, conditioned as the unsmoothed model is)."""
    generator = torch.Generator().manual_seed(4)
    examples, labels = torch.randn(30, 2, generator=generator), torch.arange(30) % 3
    x, sigma, smoothing = torch.randn(4, 2, generator=generator), 0.6, 0.5
    ideal = IdealDenoiser((2,), condition=ClassLabels(3), smoothing=smoothing, draws=5).memorise(examples, labels)
    asked = torch.tensor([0, 2, 3, 1])                                  # 3 is the null label
    got = ideal(x, torch.full((4,), sigma), asked).double().numpy()
    draws = ideal.perturbations.double().numpy()
    for row, label in enumerate(asked.tolist()):
        own = (examples if label == 3 else examples[labels == label]).double().numpy()
        moved = x[row].double().numpy() + smoothing * draws
        expected = point_mass_posterior_mean(moved, sigma, own).mean(0)
        np.testing.assert_allclose(got[row], expected, atol=2e-5)


def test_the_smoothing_draws_are_fixed_whatever_the_global_seed_and_only_the_examples_are_saved():
    """The K draws come from their own seed: a model built again (as a checkpoint is loaded)
    denoises exactly as the first did, and its state is the examples and labels alone."""
    examples, x, sigma = torch.randn(20, 3), torch.randn(5, 3), torch.full((5,), 0.4)
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        ideal = IdealDenoiser((3,), smoothing=0.3, draws=4).memorise(examples)
        outputs.append(ideal(x, sigma))
    assert torch.equal(*outputs)
    assert set(ideal.state_dict()) == {"examples", "labels"}


def test_ideal_denoiser_loads_examples_of_any_number():
    examples = torch.randn(37, 3)
    saved = IdealDenoiser((3,)).memorise(examples).state_dict()
    loaded = IdealDenoiser((3,))
    loaded.load_state_dict(saved)
    assert torch.equal(loaded.examples, examples)
    x, sigma = torch.randn(5, 3), torch.full((5,), 0.5)
    assert torch.equal(loaded(x, sigma), IdealDenoiser((3,)).memorise(examples)(x, sigma))


def test_conditional_ideal_denoiser_refuses_a_class_without_examples_examples_without_labels_and_vectors():
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        IdealDenoiser((2,), condition=ClassLabels(3)).memorise(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="needs the examples' labels"):
        IdealDenoiser((2,), condition=ClassLabels(3)).memorise(torch.randn(4, 2))
    with pytest.raises(ValueError, match="class labels only, not on vector conditions"):
        IdealDenoiser((2,), condition=Vectors([0.0], [1.0], [[0.5]]))
