import pytest
import torch

from {{ cookiecutter.package_name }}.models import MLP, DiT, UNet
from {{ cookiecutter.package_name }}.models.conditioning import ClassLabels
from {{ cookiecutter.package_name }}.models.unet import group_norm

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


def test_conditional_network_refuses_missing_labels():
    net = MLP((2,), width=32, depth=1, condition=ClassLabels(3))
    with pytest.raises(ValueError, match="labels"):
        net(torch.randn(2, 2), torch.randn(2))


@pytest.mark.parametrize("channels", [24, 40, 48, 96])
def test_any_width_builds(channels):
    """Decoder blocks normalise the concatenation of two widths (48 + 96 = 144 channels), which
    32 groups do not divide."""
    net = UNet((1, 16, 16), channels=channels, channel_mult=(1, 2, 2), blocks_per_level=1)
    assert net(torch.randn(2, 1, 16, 16), torch.randn(2)).shape == (2, 1, 16, 16)


def test_group_counts():
    """Up to 32 groups of at least 4 channels: 144 = 24 x 6 is the most that divide 144."""
    assert [group_norm(c).num_groups for c in (3, 16, 64, 144, 256)] == [1, 4, 16, 24, 32]


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError, match="divisible"):
        UNet((1, 12, 12), channels=16, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="patch_size"):
        DiT((3, 30, 30), patch_size=4, width=64, depth=1, heads=4)


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
