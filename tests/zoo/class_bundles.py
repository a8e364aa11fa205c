"""A generic two-class, single-channel Model Zoo-style bundle and CT-like data, written and trained inside the tests.

:func:`write_ct_dataset` writes small CT-like volumes (air at -1000 HU, a body around 40 HU, one bright organ of about
130 HU whose mask is the label 1) and a datalist. :func:`write_class_bundle` writes a bundle shaped like the Model Zoo's
``spleen_ct_segmentation``: a MONAI UNet with one input channel and two softmax outputs (background, spleen) -- or one
sigmoid output (``activation="sigmoid"``, a binary task) --, CT intensity windowing with ``ScaleIntensityRanged``, a
``SlidingWindowInferer`` whose window is smaller than the volume, and its own ``inference.json`` that saves the
argmax -- or (``resample=True``) resamples to 2 mm with ``Orientationd``/``Spacingd`` and inverts its output onto the
stored grid with ``Invertd``, as the published spleen bundle does. :func:`train_class_bundle` fits it for a few
steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from .zoo_bundles import fit_and_save, metadata_header

ROI = [16, 16, 16]
"""The bundle's sliding window: smaller than the test volumes (24^3)."""


def write_ct_dataset(root: str | Path, subjects: int = 6, shape: int = 24, seed: int = 0, testing: int = 2) -> Path:
    """CT-like volumes with one organ each, and ``datalist.json`` (``training`` and ``testing`` entries)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(shape)] * 3, indexing="ij")).astype(np.float32)
    centre = (shape - 1) / 2
    body = (((grid - centre) / (0.45 * shape)) ** 2).sum(0) <= 1
    entries = []
    for k in range(subjects):
        image = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, (shape,) * 3)
        position = centre + rng.uniform(-0.18, 0.18, 3) * shape
        radius = rng.uniform(0.14, 0.2) * shape
        organ = (((grid - position[:, None, None, None]) / radius) ** 2).sum(0) <= 1
        image[organ] = 130.0 + rng.normal(0, 15, int(organ.sum()))
        affine = np.diag([1.5, 1.5, 2.0, 1.0])
        name = f"ct_{k:03d}"
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(organ.astype(np.uint8), affine), root / f"{name}_label.nii.gz")
        entries.append({"image": str(root / f"{name}.nii.gz"), "label": str(root / f"{name}_label.nii.gz")})
    datalist = {"training": entries[:-testing], "testing": entries[-testing:]}
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return root / "datalist.json"


def class_metadata(activation: str = "softmax") -> dict[str, Any]:
    """``metadata.json`` of the spleen-like bundle, in the Model Zoo's form."""
    outputs = {"0": "background", "1": "spleen"} if activation == "softmax" else {"0": "spleen"}
    return {
        **metadata_header("Spleen CT segmentation (tiny)", "Decathlon spleen segmentation",
                          "a tiny zoo-style generic bundle for tests"),  # fmt: skip
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                          "spatial_shape": [16, 16, 16], "dtype": "float32", "value_range": [0, 1],
                          "is_patch_data": True, "channel_def": {"0": "image"}},  # fmt: skip
            },
            "outputs": {
                "pred": {"type": "image", "format": "segmentation", "num_channels": len(outputs),
                         "spatial_shape": [16, 16, 16], "dtype": "float32", "value_range": [0, 1],
                         "is_patch_data": True, "channel_def": outputs},  # fmt: skip
            },
        },
    }


RESAMPLE = [
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
]
"""The resampling variant's spatial preprocessing (as the Model Zoo's spleen bundle): a coarser grid than the data's
1.5 x 1.5 x 2 mm."""


def class_inference(activation: str = "softmax", resample: bool = False) -> dict[str, Any]:
    """``inference.json`` in the form of the Model Zoo's spleen_ct_segmentation (data paths as placeholders); with
    ``resample``, its ``Orientationd``/``Spacingd`` and the ``Invertd`` of its postprocessing."""
    if activation == "softmax":
        post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]  # fmt: skip
    else:
        post = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]  # fmt: skip
    if resample:
        post.insert(1, {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                        "nearest_interp": False, "to_tensor": True})  # fmt: skip
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "data_list_file_path": "$@bundle_root + '/configs/datalist.json'",
        "test_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='testing')",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 2 if activation == "softmax" else 1, "channels": [8, 16, 32],
                        "strides": [2, 2], "num_res_units": 1, "norm": "batch"},  # fmt: skip
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                *(RESAMPLE if resample else []),
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -160, "a_max": 240, "b_min": 0.0,
                 "b_max": 1.0, "clip": True},  # fmt: skip
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@test_datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},  # fmt: skip
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                *post,
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "uint8", "resample": False, "squeeze_end_dims": True, "separate_folder": False},
            ],
        },  # fmt: skip
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}}],  # fmt: skip
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},  # fmt: skip
        "run": ["$@evaluator.run()"],
    }


def write_class_bundle(root: str | Path, activation: str = "softmax", resample: bool = False) -> Path:
    """Write the untrained bundle folder (configs and docs) at ``root``."""
    root = Path(root)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    (root / "configs" / "metadata.json").write_text(json.dumps(class_metadata(activation), indent=4))
    (root / "configs" / "inference.json").write_text(json.dumps(class_inference(activation, resample), indent=4))
    (root / "docs" / "README.md").write_text("A tiny Model Zoo-style CT bundle for robustseg's tests.\n")
    return root


def train_class_bundle(root: Path, datalist: str | Path, steps: int = 60, seed: int = 0) -> None:
    """Fit the network for a few steps on the training volumes (its own preprocessing, Dice + CE) and save
    ``models/model.pt`` (a state dict, as MONAI's CheckpointSaver writes it)."""
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss
    from monai.transforms import Compose, DivisiblePad, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    preprocessing = parser.get_parsed_content("preprocessing")
    data = json.loads(Path(datalist).read_text())["training"]
    steps_of_label = [LoadImaged("label"), EnsureChannelFirstd("label")]
    if any(t.get("_target_") == "Spacingd" for t in parser["preprocessing"]["transforms"]):
        # the label follows the image onto the network's grid (nearest neighbour)
        steps_of_label += [Orientationd("label", axcodes="RAS"), Spacingd("label", pixdim=(2, 2, 2), mode="nearest")]
    load_label = Compose(steps_of_label)
    pad = DivisiblePad(4)  # the UNet halves the grid twice
    images = torch.stack([pad(preprocessing({"image": e["image"]})["image"]).as_tensor() for e in data])
    labels = torch.stack([pad(load_label({"label": e["label"]})["label"]).as_tensor().float() for e in data])
    sigmoid = network.out_channels == 1
    loss_fn: Any = DiceCELoss(sigmoid=True) if sigmoid else DiceCELoss(to_onehot_y=True, softmax=True)
    fit_and_save(network, images, labels, loss_fn, steps, root)
