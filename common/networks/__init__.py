"""The paper's networks: the residual UNet in 3D and 2D, and slice-wise application of a 2D network to volumes."""

from __future__ import annotations

from common.networks.residual_unet import ResidualUNet, UNet2D, UNet3D
from common.networks.slicewise import SliceWise

__all__ = ["ResidualUNet", "UNet2D", "UNet3D", "SliceWise"]
