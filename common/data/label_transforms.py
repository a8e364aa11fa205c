"""Post-processing transforms: logits to BraTS label maps, and label maps to scoring-region masks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.labels import REGIONS, logits_to_labels, region_masks

__all__ = ["LabelsFromLogitsd", "RegionMasksd"]


def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # keep affine and applied_operations so Invertd / SaveImaged still see the preprocessing history
    if isinstance(reference, MetaTensor) and not isinstance(value, MetaTensor):
        return MetaTensor(value, meta=reference.meta, applied_operations=reference.applied_operations)
    return value


class LabelsFromLogitsd(MapTransform):
    """Replace channel-first logits (C, *spatial) by a BraTS label map (1, *spatial) with values {0, 1, 2, 4}.

    Args:
        keys: keys of the logits (usually ``"pred"``).
        dtype: dtype of the label map.
    """

    def __init__(self, keys: KeysCollection = "pred", dtype: torch.dtype = torch.float32) -> None:
        super().__init__(keys)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = d[key]
            d[key] = _like(logits_to_labels(logits[None])[0].to(self.dtype), logits)
        return d


class RegionMasksd(MapTransform):
    """Replace a BraTS label map (1, *spatial) by float masks of the scoring regions (len(regions), *spatial).

    With ``regions=("WT", "TC", "ET")`` (default) the channels are whole tumour {1, 2, 4}, tumour core {1, 4} and
    enhancing tumour {4}, ready for MONAI's ``MeanDice(include_background=True)``.

    Args:
        keys: keys of label maps (e.g. ``["pred", "label"]``).
        regions: region names from :data:`common.data.labels.REGIONS`.
    """

    def __init__(self, keys: KeysCollection, regions: Sequence[str] = tuple(REGIONS)) -> None:
        super().__init__(keys)
        self.regions = tuple(regions)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            d[key] = _like(region_masks(lab[None], self.regions)[0].float(), lab)
        return d
