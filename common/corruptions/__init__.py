"""Image corruptions at five severities, applied to the 4-channel input in the network's input space.

MR acquisition artifacts (bias field, Gibbs ringing, a k-space spike, Rician noise, ghosting, rigid motion), loss of
resolution (blur, thick slices), a contrast change (gamma) and a missing modality, each with a documented parameter
table (:mod:`common.corruptions.registry`). ``corrupt(image, name, severity, seed)`` is the entry point;
:class:`RandMRArtifactd` is the MONAI random transform that trains on them (the ``artaug`` defence bundles).

Example::

    from common.corruptions import CORRUPTIONS, corrupt, corruption_seed

    for name in CORRUPTIONS:
        for severity in range(1, 6):
            out = corrupt(image, name, severity, seed=corruption_seed(subject_id, name, severity))
"""

from __future__ import annotations

from common.corruptions.augmentation import RandMRArtifact, RandMRArtifactd
from common.corruptions.base import SEVERITIES, Corruption
from common.corruptions.registry import (
    CORRUPTIONS,
    MISSING_MODALITY,
    check_corruption_names,
    check_severities,
    corrupt,
    corruption_order,
    corruption_seed,
    severity_table,
)

__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "MISSING_MODALITY",
    "RandMRArtifact",
    "RandMRArtifactd",
    "SEVERITIES",
    "check_corruption_names",
    "check_severities",
    "corrupt",
    "corruption_order",
    "corruption_seed",
    "severity_table",
]
