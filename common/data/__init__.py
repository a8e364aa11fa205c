"""Data: BraTS conventions, the embedded synthetic data set, datalists, input checks and MONAI transforms."""

from __future__ import annotations

from common.data.labels import (
    BRATS_LABELS,
    MODALITIES,
    REGIONS,
    indices_to_labels,
    labels_to_indices,
    logits_to_labels,
    region_masks,
)

__all__ = [
    "BRATS_LABELS",
    "MODALITIES",
    "REGIONS",
    "indices_to_labels",
    "labels_to_indices",
    "logits_to_labels",
    "region_masks",
]
