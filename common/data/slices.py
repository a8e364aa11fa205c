"""Random axial slices for training the paper's 2D UNet on volumes (through :class:`common.networks.SliceWise`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from common.errors import RobustsegError

__all__ = ["RandAxialSlicesd"]


class RandAxialSlicesd(Randomizable, MapTransform):
    """Keep ``num_slices`` randomly chosen slices along ``axis`` (the same ones for every key), in random order.

    Liu et al. train the 2D-UNet on axial slices in batches of 64. The 2D bundles train
    ``SliceWise(UNet2D)`` on volumes; with this transform each volume contributes a stack of ``num_slices``
    independent random slices, so one volume per step is one batch of ``num_slices`` 2D images. When the volume
    has fewer slices than ``num_slices`` all of them are kept (shuffled).

    Args:
        keys: keys of channel-first volumes (C, H, W, D).
        num_slices: slices kept per volume (the paper's 2D batch size, 64).
        axis: spatial axis to slice along; -1 is the axial one in RAS orientation.
        allow_missing_keys: do not fail when a key is absent.

    Raises:
        RobustsegError: if ``num_slices`` < 1 or the keyed volumes differ in that axis' length.
    """

    def __init__(self, keys: KeysCollection, num_slices: int = 64, axis: int = -1, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if num_slices < 1:
            raise RobustsegError(f"num_slices must be >= 1, got {num_slices}.")
        self.num_slices = int(num_slices)
        self.axis = axis
        self._index: np.ndarray | None = None

    def randomize(self, n_slices: int) -> None:
        self._index = self.R.permutation(n_slices)[: self.num_slices]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        lengths = {d[k].shape[self.axis] for k in keys}
        if len(lengths) > 1:
            raise RobustsegError(f"RandAxialSlicesd: keys {keys} have different lengths {sorted(lengths)} on axis.")
        if not keys:
            return d
        self.randomize(lengths.pop())
        index = torch.as_tensor(self._index)
        for key in keys:
            d[key] = torch.index_select(d[key], self.axis % d[key].dim(), index.to(d[key].device))
        return d
