"""The paper's residual UNet (Liu et al. 2021, Fig. 1; Isensee et al. 2017), in 3D and 2D.

Liu et al. describe the network of Isensee et al., "Brain tumor segmentation and radiomics survival prediction:
contribution to the BRATS 2017 challenge" (the Keras ``isensee2017_model`` that their description matches block for
block): an encoder of residual context modules, a decoder of upsampling and localisation modules, and three 1x1x1
segmentation layers whose outputs are upsampled and summed (deep supervision). "2D-UNets are constructed in a
similar manner, except 3D convolutions are replaced by 2D convolutions": :class:`ResidualUNet` takes
``spatial_dims``, and :class:`UNet3D` / :class:`UNet2D` fix it so bundle configs can name them directly.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import Tensor, nn

from common.data.labels import BRATS_LABELS, MODALITIES
from common.errors import RobustsegError
from common.utils.validation import check_int, look_up_option

__all__ = ["ResidualUNet", "UNet3D", "UNet2D"]


class _ContextModule(nn.Module):
    """Residual context module: conv block, spatial dropout, conv block, plus the module's input.

    Liu et al.: "a 3D dropout layer with dropout rate of 0.3 between the two orange convolutional blocks"; the
    residual sum is the one of Isensee et al. (``in_conv + context(in_conv)``).
    """

    def __init__(self, spatial_dims: int, channels: int, dropout: float, act: tuple, norm: tuple) -> None:
        super().__init__()
        # "NAD": dropout after the activation, i.e. on the first block's output, before the second convolution.
        self.conv1 = Convolution(
            spatial_dims,
            channels,
            channels,
            kernel_size=3,
            act=act,
            norm=norm,
            dropout=dropout,
            dropout_dim=spatial_dims,
            adn_ordering="NAD",
        )
        self.conv2 = Convolution(spatial_dims, channels, channels, kernel_size=3, act=act, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class _DecoderLevel(nn.Module):
    """Upsampling module (x2 nearest, then a 3x3x3 conv block), concatenation with the skip, localisation module.

    The localisation module is Liu et al.'s "two convolution blocks after each concatenation layer": a 3x3x3 block
    then a 1x1x1 block, both with the level's number of filters.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, act: tuple, norm: tuple) -> None:
        super().__init__()
        self.upsample = UpSample(
            spatial_dims,
            in_channels,
            in_channels,
            scale_factor=2,
            mode="nontrainable",
            interp_mode="nearest",
            align_corners=None,
            post_conv=Convolution(spatial_dims, in_channels, channels, act=act, norm=norm),
        )
        self.localization = nn.Sequential(
            Convolution(spatial_dims, 2 * channels, channels, kernel_size=3, act=act, norm=norm),
            Convolution(spatial_dims, channels, channels, kernel_size=1, act=act, norm=norm),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.localization(torch.cat([skip, self.upsample(x)], dim=1))


class ResidualUNet(nn.Module):
    """Residual UNet of Liu et al. (2021, Fig. 1) after Isensee et al. (2017), for 2D or 3D inputs; returns logits.

    Every convolution block is convolution, instance normalisation (affine) and leaky ReLU, in that order, as Liu
    et al. describe them (and as in the Keras implementation their description matches); Isensee et al. write
    their context modules as pre-activation residual blocks (normalisation and activation before each
    convolution); we follow Liu et al. Level ``l`` (``l = 0 .. levels-1``) has ``base_filters * 2**l`` filters.

    - Encoder: at each level a 3x3x3 block (stride 1 at level 0, stride 2 below, which halves the size) followed by
      a residual context module (block, spatial dropout ``dropout``, block, plus the module input). With
      ``levels=5`` these are the paper's 15 encoder blocks.
    - Decoder, at each level from ``levels-2`` up to 0: nearest x2 upsampling and a 3x3x3 block with the level's
      filters, concatenation with the encoder output of that level, a 3x3x3 block and a 1x1x1 block.
    - Deep supervision: a 1x1x1 convolution to ``out_channels`` on each of the ``segmentation_levels`` finest
      decoder levels; starting from the coarsest, each is upsampled x2 (nearest) and added to the next, so the
      output is ``sum_j upsample(seg_j)`` at full resolution. No softmax: the loss or post-processing applies it.

    Isensee et al. use a leaky-ReLU slope of 1e-2 (the default here); the Keras implementation that Liu et al.'s
    description matches used Keras' default of 0.3 (``negative_slope=0.3``).

    With the paper's setting (``spatial_dims=3, in_channels=4, out_channels=4, base_filters=16, levels=5,
    segmentation_levels=3``) the network has **8,269,676** parameters; the 2D version has **2,775,788**.

    Args:
        spatial_dims: 3 for volumes (B, C, H, W, D), 2 for slices (B, C, H, W).
        in_channels: input channels (the four MR contrasts, :data:`~common.data.labels.MODALITIES`).
        out_channels: output channels, one per label of :data:`~common.data.labels.BRATS_LABELS`.
        base_filters: filters at the top level (the paper's 16).
        dropout: rate of the spatial (channel-wise) dropout inside each context module (the paper's 0.3).
        negative_slope: slope of the leaky ReLU for negative inputs.
        levels: number of resolution levels (the paper's 5); inputs must be divisible by ``2**(levels-1)``.
        segmentation_levels: number of decoder levels feeding the summed output (the paper's 3).

    Raises:
        RobustsegError: if an argument is out of range (at construction), or if an input has the wrong number of
            dimensions or channels, or spatial sizes not divisible by ``2**(levels-1)`` or all equal to it (in
            ``forward``).

    Example::

        net = ResidualUNet(spatial_dims=3, in_channels=4, out_channels=4, base_filters=16)
        logits = net(torch.rand(1, 4, 128, 128, 128))   # (1, 4, 128, 128, 128)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = len(MODALITIES),
        out_channels: int = len(BRATS_LABELS),
        base_filters: int = 16,
        dropout: float = 0.3,
        negative_slope: float = 0.01,
        levels: int = 5,
        segmentation_levels: int = 3,
    ) -> None:
        super().__init__()
        look_up_option("spatial_dims", spatial_dims, (2, 3))
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("base_filters", base_filters, 1)
        check_int("levels", levels, 2)
        check_int("segmentation_levels", segmentation_levels, 1)
        if segmentation_levels > levels - 1:
            raise RobustsegError(
                f"segmentation_levels must be <= levels - 1 = {levels - 1} (the number of decoder levels), "
                f"got {segmentation_levels}."
            )
        if not 0.0 <= dropout < 1.0:
            raise RobustsegError(f"dropout must be in [0, 1), got {dropout!r}.")
        if not negative_slope >= 0.0:
            raise RobustsegError(f"negative_slope must be >= 0, got {negative_slope!r}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.size_divisor = 2 ** (levels - 1)
        self._name = type(self).__name__
        act = ("leakyrelu", {"negative_slope": float(negative_slope)})
        norm = ("instance", {"affine": True})
        filters = [base_filters * 2**level for level in range(levels)]

        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, channels in enumerate(filters):
            self.encoder.append(
                nn.Sequential(
                    Convolution(spatial_dims, previous, channels, strides=1 if level == 0 else 2, act=act, norm=norm),
                    _ContextModule(spatial_dims, channels, dropout, act, norm),
                )
            )
            previous = channels
        # decoder[i] works at level levels-2-i: coarse to fine
        self.decoder = nn.ModuleList(
            _DecoderLevel(spatial_dims, filters[level + 1], filters[level], act, norm)
            for level in range(levels - 2, -1, -1)
        )
        # segmentation[j] reads the output of decoder[levels-1-segmentation_levels+j]: coarse to fine
        self.segmentation = nn.ModuleList(
            Convolution(spatial_dims, filters[level], out_channels, kernel_size=1, conv_only=True)
            for level in range(segmentation_levels - 1, -1, -1)
        )
        self.upsample = UpSample(
            spatial_dims, scale_factor=2, mode="nontrainable", interp_mode="nearest", align_corners=None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, out_channels, *spatial) for an input (B, in_channels, *spatial)."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise RobustsegError(
                f"{self._name} input must have shape (B, {self.in_channels}, {self.spatial_dims} spatial sizes), "
                f"got {list(x.shape)}."
            )
        coarsest_voxels = 1
        for size in x.shape[2:]:
            if size % self.size_divisor != 0:
                raise RobustsegError(
                    f"{self._name} input shape {list(x.shape)}: spatial sizes must be divisible by "
                    f"2**(levels-1) = {self.size_divisor} (levels={self.levels}); pad or crop the input, e.g. with "
                    f"monai.transforms.DivisiblePad(k={self.size_divisor})."
                )
            coarsest_voxels *= size // self.size_divisor
        if coarsest_voxels < 2:
            # instance normalisation of a single voxel is undefined (torch raises a misleading "when training" error)
            raise RobustsegError(
                f"{self._name} input shape {list(x.shape)}: the coarsest level (1/{self.size_divisor} of the input) "
                f"has one voxel, too few for instance normalisation; use at least {2 * self.size_divisor} voxels "
                f"along one axis."
            )
        skips: list[Tensor] = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        decoded: list[Tensor] = []
        for i, level in enumerate(self.decoder):
            x = level(x, skips[len(skips) - 2 - i])
            decoded.append(x)
        first = len(decoded) - len(self.segmentation)
        out: Tensor | None = None
        for j, head in enumerate(self.segmentation):
            seg = head(decoded[first + j])
            out = seg if out is None else self.upsample(out) + seg
        assert out is not None  # segmentation_levels >= 1 is checked in __init__
        return out


class UNet3D(ResidualUNet):
    """The paper's 3D residual UNet: :class:`ResidualUNet` with ``spatial_dims=3`` (8,269,676 parameters at base 16).

    Example::

        "network_def": {"_target_": "common.networks.UNet3D", "base_filters": 16}
    """

    def __init__(
        self,
        in_channels: int = len(MODALITIES),
        out_channels: int = len(BRATS_LABELS),
        base_filters: int = 16,
        dropout: float = 0.3,
        negative_slope: float = 0.01,
        levels: int = 5,
        segmentation_levels: int = 3,
    ) -> None:
        super().__init__(
            3, in_channels, out_channels, base_filters, dropout, negative_slope, levels, segmentation_levels
        )


class UNet2D(ResidualUNet):
    """The paper's 2D residual UNet: :class:`ResidualUNet` with ``spatial_dims=2`` (2,775,788 parameters at base 16).

    Apply it to volumes slice by slice with :class:`~common.networks.SliceWise`.

    Example::

        "network_def": {"_target_": "common.networks.UNet2D", "base_filters": 16}
    """

    def __init__(
        self,
        in_channels: int = len(MODALITIES),
        out_channels: int = len(BRATS_LABELS),
        base_filters: int = 16,
        dropout: float = 0.3,
        negative_slope: float = 0.01,
        levels: int = 5,
        segmentation_levels: int = 3,
    ) -> None:
        super().__init__(
            2, in_channels, out_channels, base_filters, dropout, negative_slope, levels, segmentation_levels
        )
