"""Tests of the paper's residual UNet (common/networks/residual_unet.py)."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from torch import nn

from common.errors import RobustsegError
from common.networks import ResidualUNet, UNet2D, UNet3D


def _net(spatial_dims: int = 3, **kwargs) -> ResidualUNet:
    settings = {"base_filters": 2, "levels": 3, "segmentation_levels": 2} | kwargs
    torch.manual_seed(0)
    return ResidualUNet(spatial_dims=spatial_dims, **settings)


def _hand_count(spatial_dims, in_channels, out_channels, base_filters, levels, segmentation_levels) -> int:
    """Parameters of the architecture as described in the paper, counted layer by layer."""

    def conv(cin: int, cout: int, kernel: int) -> int:  # weights + bias
        return kernel**spatial_dims * cin * cout + cout

    def block(cin: int, cout: int, kernel: int = 3) -> int:  # conv + affine instance norm
        return conv(cin, cout, kernel) + 2 * cout

    f = [base_filters * 2**level for level in range(levels)]
    total = block(in_channels, f[0]) + 2 * block(f[0], f[0])
    for level in range(1, levels):
        total += block(f[level - 1], f[level]) + 2 * block(f[level], f[level])  # stride-2 conv + context module
    for level in range(levels - 1):
        total += block(f[level + 1], f[level]) + block(2 * f[level], f[level]) + block(f[level], f[level], 1)
    return total + sum(conv(f[level], out_channels, 1) for level in range(segmentation_levels))


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "spatial_dims, kwargs, shape",
    [
        (3, {}, (1, 4, 8, 16, 12)),
        (3, {"levels": 5, "segmentation_levels": 3}, (2, 4, 16, 16, 32)),
        (3, {"in_channels": 1, "out_channels": 3, "levels": 2, "segmentation_levels": 1}, (1, 1, 6, 4, 2)),
        (2, {}, (3, 4, 12, 20)),
        (2, {"levels": 5, "segmentation_levels": 3}, (2, 4, 32, 48)),
    ],
)
def test_output_shape(spatial_dims, kwargs, shape):
    net = _net(spatial_dims, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert out.shape == (shape[0], net.out_channels, *shape[2:])


def test_returns_logits_not_probabilities():
    net = _net().eval()
    with torch.no_grad():
        out = net(torch.rand(1, 4, 8, 8, 8))
    assert not any(isinstance(m, (nn.Softmax, nn.Sigmoid)) for m in net.modules())
    assert not torch.allclose(out.sum(dim=1), torch.ones(1))
    assert out.min() < 0 or out.max() > 1


def test_dropout_only_in_train_mode():
    x = torch.rand(1, 4, 8, 8, 8)
    net = _net()
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x))
        net.train()
        assert not torch.allclose(net(x), net(x))
        # without dropout, train and eval agree: instance norm keeps no running statistics
        no_dropout = _net(dropout=0.0)
        assert torch.allclose(no_dropout.train()(x), no_dropout.eval()(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_layers_follow_settings(spatial_dims):
    net = _net(spatial_dims, dropout=0.2, negative_slope=0.3, levels=4)
    dropout_type = nn.Dropout3d if spatial_dims == 3 else nn.Dropout2d
    dropouts = [m for m in net.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d))]
    assert len(dropouts) == 4 and all(type(m) is dropout_type and m.p == 0.2 for m in dropouts)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.3}
    norms = [m for m in net.modules() if isinstance(m, (nn.InstanceNorm2d, nn.InstanceNorm3d))]
    assert norms and all(m.affine for m in norms)


@pytest.mark.parametrize("cls", [UNet3D, UNet2D])
def test_paper_parameter_count_matches_docstring(cls):
    stated = re.search(r"\(([\d,]+) parameters at base 16\)", cls.__doc__)
    assert stated is not None
    net = cls()
    assert _count(net) == int(stated.group(1).replace(",", ""))
    assert _count(net) == _hand_count(net.spatial_dims, 4, 4, 16, 5, 3)


@pytest.mark.parametrize(
    "spatial_dims, in_channels, out_channels, base_filters, levels, segmentation_levels",
    [(3, 4, 4, 2, 3, 2), (2, 1, 3, 3, 4, 3), (3, 2, 5, 1, 2, 1)],
)
def test_parameter_count_matches_hand_formula(
    spatial_dims, in_channels, out_channels, base_filters, levels, segmentation_levels
):
    net = ResidualUNet(spatial_dims, in_channels, out_channels, base_filters, 0.3, 0.01, levels, segmentation_levels)
    expected = _hand_count(spatial_dims, in_channels, out_channels, base_filters, levels, segmentation_levels)
    assert _count(net) == expected


def test_smallest_network_parameter_count_by_hand():
    # 2D, 1 -> 1 channel, filters (1, 2): encoder 12 + 24 (level 0) + 24 + 84 (level 1); decoder up-conv 21,
    # 3x3 conv 21, 1x1 conv 4; one segmentation conv 2.  Total 192.
    assert _count(ResidualUNet(2, 1, 1, base_filters=1, levels=2, segmentation_levels=1)) == 192


@pytest.mark.parametrize("cls, shape", [(UNet3D, (1, 4, 16, 16, 32)), (UNet2D, (2, 4, 16, 32))])
def test_torchscript_matches_eager(cls, shape):
    torch.manual_seed(0)
    net = cls(base_filters=2).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)  # what MONAI's ckpt_export writes
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    x = torch.rand(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    with pytest.raises(torch.jit.Error, match="divisible by 2\\*\\*\\(levels-1\\) = 16"):
        scripted(torch.rand(*shape[:-1], 8))


_NOT_DIVISIBLE = r"spatial sizes must be divisible by 2\*\*\(levels-1\) = 4 \(levels=3\)"


@pytest.mark.parametrize(
    "spatial_dims, shape, pattern",
    [
        (3, (1, 4, 8, 6, 8), r"input shape \[1, 4, 8, 6, 8\]: " + _NOT_DIVISIBLE),
        (2, (1, 4, 10, 8), r"input shape \[1, 4, 10, 8\]: " + _NOT_DIVISIBLE),
        (3, (1, 4, 8, 8), r"input must have shape \(B, 4, 3 spatial sizes\), got \[1, 4, 8, 8\]"),
        (2, (1, 3, 8, 8), r"input must have shape \(B, 4, 2 spatial sizes\), got \[1, 3, 8, 8\]"),
        (3, (1, 4, 4, 4, 4), r"input shape \[1, 4, 4, 4, 4\]: the coarsest level \(1/4 of the input\) has one voxel"),
    ],
)
def test_bad_input_shape_raises(spatial_dims, shape, pattern):
    with pytest.raises(RobustsegError, match=pattern):
        _net(spatial_dims)(torch.rand(shape))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"spatial_dims": 1}, r"spatial_dims must be one of \[2, 3\], got 1"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
        ({"out_channels": 2.0}, "out_channels must be an integer >= 1"),
        ({"base_filters": 0}, "base_filters must be an integer >= 1"),
        ({"levels": 1}, "levels must be an integer >= 2"),
        ({"segmentation_levels": 0}, "segmentation_levels must be an integer >= 1"),
        ({"levels": 3, "segmentation_levels": 3}, r"segmentation_levels must be <= levels - 1 = 2"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"negative_slope": -0.1}, "negative_slope must be >= 0"),
    ],
)
def test_bad_arguments_raise(kwargs, pattern):
    with pytest.raises(RobustsegError, match=pattern):
        ResidualUNet(**kwargs)


@pytest.mark.parametrize("head", [0, 1, 2])
def test_output_is_sum_of_upsampled_segmentation_layers(head):
    net = _net(levels=4, segmentation_levels=3).eval()
    x = torch.rand(2, 4, 16, 8, 16)
    seg = {}
    handles = [
        layer.register_forward_hook(lambda _m, _i, out, j=j: seg.__setitem__(j, out))
        for j, layer in enumerate(net.segmentation)
    ]
    with torch.no_grad():
        out = net(x)
    for handle in handles:
        handle.remove()
    # coarse to fine: layer j is at 1 / 2**(2 - j) of the input size and is upsampled by nearest repetition
    upsampled = [F.interpolate(seg[j], scale_factor=2 ** (2 - j), mode="nearest") for j in range(3)]
    torch.testing.assert_close(out, sum(upsampled))
    # each layer contributes: silencing one removes exactly its upsampled output
    layer = net.segmentation[head]
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        torch.testing.assert_close(net(x), out - upsampled[head])
    assert upsampled[head].abs().max() > 0


@pytest.mark.parametrize("target, spatial_dims", [("common.networks.UNet3D", 3), ("common.networks.UNet2D", 2)])
def test_bundle_config_instantiates(target, spatial_dims):
    net = ConfigParser({"net": {"_target_": target, "base_filters": 2}}).get_parsed_content("net")
    assert isinstance(net, ResidualUNet) and net.spatial_dims == spatial_dims and net.size_divisor == 16
