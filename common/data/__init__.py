"""Data: BraTS conventions, the embedded synthetic data set, datalists, input checks and MONAI transforms.

Names are imported on first use (PEP 562), so ``robustseg data datalist`` does not pay for torch and MONAI; bundle
configs reach them as ``common.data.<name>`` or ``common.data.<module>.<name>`` all the same.
"""

from __future__ import annotations

from common._lazy import lazy_exports

_EXPORTS = {
    "labels": ["BRATS_LABELS", "MODALITIES", "REGIONS", "REGION_CHANNELS", "check_output_channels", "indices_to_labels",
               "is_region_output", "labels_to_indices", "logits_to_labels", "region_masks"],
    "synthetic": ["SyntheticSubject", "ensure_synthetic_dataset", "write_synthetic_dataset", "synthesize_subject",
                  "synthetic_subject_id"],
    "paths": ["default_synthetic_dir"],
    "datalist": ["find_subjects", "split_subjects", "write_datalist"],
    "splits": ["load_split"],
    "check": ["check_dataset", "check_or_raise"],
    "transforms": ["BraTSLayoutd", "N4BiasFieldCorrection", "N4BiasFieldCorrectiond", "NormalizeBraTSd"],
    "label_transforms": ["LabelsFromLogitsd", "RegionMasksd"],
    "slices": ["RandAxialSlicesd"],
    "caching": ["stat_hashing", "transform_hashing"],
    "show": ["find_subject_files", "show_subject"],
}  # fmt: skip
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
