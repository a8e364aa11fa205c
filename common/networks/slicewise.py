"""Apply a 2D network to every slice of a volume: the paper's slice-wise 2D-UNet (Liu et al. 2021, "Experiments")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.errors import RobustsegError
from common.utils.validation import check_optional_int, look_up_option

__all__ = ["SliceWise"]

_SPATIAL_AXES = (2, 3, 4, -3, -2, -1)


class SliceWise(nn.Module):
    """Run a 2D network on each slice of a (B, C, H, W, D) volume along ``axis`` and stack the results back.

    Liu et al. train the 2D-UNet on axial slices and, "although only slice-wise prediction was allowed for the
    2D-UNet, the predictions were combined for each input 3D volume to be evaluated". This module does that
    combination as a differentiable 3D network: ``(B, C, H, W, D) -> (B*D, C, H, W) -> net2d -> (B, C_out, H, W,
    D)`` for ``axis=-1``. Gradients reach every input voxel, so an attack on the wrapped model perturbs the whole
    volume, and the same attack, metric and inference code serves 2D and 3D models.

    ``slice_batch_size`` runs the slices through ``net2d`` in chunks of that many (same result, up to
    floating-point rounding): it bounds peak memory in inference (``torch.no_grad()``); with gradients enabled
    autograd keeps every chunk's activations for the backward pass, so memory is that of one big batch.

    Args:
        net2d: a 2D network taking (N, C, H, W) and returning (N, C_out, H', W'), e.g. :class:`UNet2D`.
        axis: the spatial axis of the input to slice along: 2, 3 or 4, or -3, -2 or -1. The default -1 is the last
            spatial axis, the axial one for volumes in RAS orientation.
        slice_batch_size: number of slices per call of ``net2d``; ``None`` runs all ``B * D`` slices at once.

    Raises:
        RobustsegError: if ``net2d`` is not a module, ``axis`` is not a spatial axis, ``slice_batch_size`` < 1, or
            (in ``forward``) the input is not 5-dimensional.

    Example::

        net = SliceWise(UNet2D(base_filters=16), axis=-1, slice_batch_size=64)
        logits = net(torch.rand(1, 4, 128, 128, 128))   # (1, 4, 128, 128, 128), 128 axial slices
    """

    def __init__(self, net2d: nn.Module, axis: int = -1, slice_batch_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(net2d, nn.Module):
            raise RobustsegError(f"net2d must be a torch.nn.Module, got {type(net2d).__name__}.")
        look_up_option("axis", axis, _SPATIAL_AXES, hint="a spatial axis of a (B, C, H, W, D) input")
        slice_batch_size = check_optional_int("slice_batch_size", slice_batch_size, 1)
        self.net2d = net2d
        self.axis = axis % 5
        self.slice_batch_size = slice_batch_size
        # TorchScript wants one type per attribute: 0 stands for "all slices at once"
        self._chunk = 0 if slice_batch_size is None else slice_batch_size

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C_out, H, W, D) of ``net2d`` applied to each slice of ``x`` (B, C, H, W, D) along ``axis``."""
        if x.dim() != 5:
            raise RobustsegError(f"SliceWise input must have shape (B, C, H, W, D), got {list(x.shape)}.")
        batch, n_slices = x.shape[0], x.shape[self.axis]
        slices = x.movedim(self.axis, 1).flatten(0, 1)  # (B * n_slices, C, *other two axes)
        if 0 < self._chunk < slices.shape[0]:
            out = torch.cat([self.net2d(chunk) for chunk in slices.split(self._chunk)], dim=0)
        else:
            out = self.net2d(slices)
        return out.unflatten(0, (batch, n_slices)).movedim(1, self.axis)
