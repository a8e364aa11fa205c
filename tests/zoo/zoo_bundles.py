"""Small Model Zoo-style bundles, written and trained inside the tests (no download).

:func:`write_zoo_brats_bundle` writes a bundle shaped like the Model Zoo's ``brats_mri_segmentation``: a SegResNet with
few filters and 3 sigmoid outputs (tumour core, whole tumour, enhancing tumour, in that order), inputs in the order
T1c, T1, T2, FLAIR, ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, a ``SlidingWindowInferer`` whose window
is smaller than the volume, and the bundle's own ``inference.json`` workflow with its postprocessing that maps the
channels to BraTS labels; :func:`train_zoo_brats` fits it for a few steps on synthetic subjects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ROI = [16, 16, 16]
"""The bundle's sliding window: smaller than the test volumes (24^3), so several windows cover one."""


def _network_def(out_channels: int = 3) -> dict[str, Any]:
    return {
        "_target_": "SegResNet",
        "blocks_down": [1, 1],
        "blocks_up": [1],
        "init_filters": 8,
        "in_channels": 4,
        "out_channels": out_channels,
        "dropout_prob": 0.2,
    }


SOFTMAX_CHANNELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
"""The softmax variant's output channels: the MSD Task01 label order, not BraTS's."""
MSD_OF_BRATS = {0: 0, 2: 1, 1: 2, 4: 3}
"""BraTS label -> the softmax variant's class index."""


def metadata_header(name: str, task: str, description: str) -> dict[str, Any]:
    """The fields of a test bundle's ``metadata.json`` before ``network_data_format``, in the Model Zoo's form."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "test bundle"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.0",
        "name": name,
        "task": task,
        "description": description,
        "authors": "robustseg tests",
        "copyright": "none",
    }


def zoo_metadata(name: str = "zoo_brats_tiny", activation: str = "sigmoid") -> dict[str, Any]:
    """``metadata.json`` in the Model Zoo's form (channel_def of inputs and outputs)."""
    outputs = {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}
    if activation == "softmax":
        outputs = SOFTMAX_CHANNELS
    return {
        **metadata_header(name, "Multimodal Brain Tumor segmentation", "a tiny zoo-style bundle for tests"),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": 4,
                    "spatial_shape": ["8*n", "8*n", "8*n"],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(outputs),
                    "spatial_shape": ["8*n", "8*n", "8*n"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": outputs,
                }
            },
        },
    }


_SIGMOID_POST = [
    {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
     "meta_keys": "pred_meta_dict", "nearest_interp": False, "to_tensor": True},  # fmt: skip
    {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
    {"_target_": "Lambdad", "keys": "pred",
     "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"},
]  # fmt: skip
"""The Model Zoo bundle's postprocessing (before saving): sigmoid, threshold, its rule back to BraTS labels."""

_SOFTMAX_POST = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
     "meta_keys": "pred_meta_dict", "nearest_interp": False, "to_tensor": True},  # fmt: skip
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    {"_target_": "Lambdad", "keys": "pred",
     "func": "$lambda x: torch.where(x == 1, 2, torch.where(x == 2, 1, torch.where(x == 3, 4, 0)))"},
]  # fmt: skip
"""The softmax variant's postprocessing: argmax over its MSD-ordered classes, mapped to BraTS labels."""


def zoo_inference(roi: list[int] | None = None, activation: str = "sigmoid") -> dict[str, Any]:
    """``inference.json`` in the form of the Model Zoo's brats_mri_segmentation (data paths as placeholders)."""
    post = _SIGMOID_POST if activation == "sigmoid" else _SOFTMAX_POST
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "data_list_file_path": "$@bundle_root + '/configs/datalist.json'",
        "dataset_dir": "/workspace/data/medical/brats2018challenge",
        "test_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='testing', "
        "base_dir=@dataset_dir)",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": True,
        "network_def": _network_def(3 if activation == "sigmoid" else 4),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": False},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@test_datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},  # fmt: skip
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi or ROI, "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                *post,
                {"_target_": "SaveImaged", "keys": "pred", "meta_keys": "pred_meta_dict", "output_dir": "@output_dir",
                 "output_postfix": "seg", "output_dtype": "uint8", "resample": False, "squeeze_end_dims": True,
                 "separate_folder": False},  # fmt: skip
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}},  # fmt: skip
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": True,
        },
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
        "run": ["$@evaluator.run()"],
    }


def zoo_datalist(datalist: str | Path, out: str | Path) -> Path:
    """A robustseg datalist rewritten in the zoo bundle's form: absolute paths, images in the order T1c, T1, T2, FLAIR
    (for the bundle's own ``inference.json``)."""
    datalist = Path(datalist)
    data = json.loads(datalist.read_text())

    def entry(e: dict[str, Any]) -> dict[str, Any]:
        images = [str((datalist.parent / p).resolve()) for p in e["image"]]
        label = str((datalist.parent / e["label"]).resolve())
        return {"image": [images[1], images[0], images[2], images[3]], "label": label}

    out = Path(out)
    out.write_text(json.dumps({key: [entry(e) for e in data[key]] for key in ("training", "testing")}, indent=1))
    return out


def train_zoo_brats(
    root: Path, datalist: str | Path, steps: int = 60, seed: int = 0, activation: str = "sigmoid"
) -> None:
    """Fit the bundle's network for a few steps on the training subjects (its own preprocessing; DiceLoss on the
    three region channels, or Dice over the softmax variant's tumour classes) and save ``models/model.pt`` as
    MONAI's CheckpointSaver does (a state dict)."""
    from monai.bundle import ConfigParser
    from monai.losses import DiceLoss
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, LoadImage

    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def")
    preprocessing = parser.get_parsed_content("preprocessing")
    data = json.loads(Path(zoo_datalist(datalist, root / "configs" / "datalist.json")).read_text())["training"]
    load_label = LoadImage(image_only=True)
    to_regions = ConvertToMultiChannelBasedOnBratsClasses()
    images = torch.stack([preprocessing({"image": e["image"]})["image"].as_tensor() for e in data])
    if activation == "sigmoid":
        labels = torch.stack([to_regions(load_label(e["label"])).float().as_tensor() for e in data])
        loss_fn: Any = DiceLoss(sigmoid=True, smooth_nr=0, smooth_dr=1e-5, squared_pred=True)
    else:
        lut = torch.zeros(5, dtype=torch.long)
        for label, index in MSD_OF_BRATS.items():
            lut[label] = index
        labels = torch.stack([lut[load_label(e["label"]).as_tensor().long()][None] for e in data])
        loss_fn = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, squared_pred=True)
    fit_and_save(network, images, labels, loss_fn, steps, root)


def fit_and_save(network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn: Any, steps: int,
                 root: Path) -> None:  # fmt: skip
    """``steps`` full-batch Adam steps (lr 0.01), then ``models/model.pt`` as MONAI's CheckpointSaver writes it (a
    state dict)."""
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(network(images), labels)
        loss.backward()
        optimizer.step()
    (root / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")


def write_zoo_brats_bundle(root: str | Path, name: str = "zoo_brats_tiny", activation: str = "sigmoid") -> Path:
    """Write the untrained bundle folder (configs and docs) at ``root``: sigmoid region outputs as the Model Zoo's
    brats_mri_segmentation, or (``activation="softmax"``) softmax over the MSD Task01 label order."""
    root = Path(root)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    (root / "configs" / "metadata.json").write_text(json.dumps(zoo_metadata(name, activation), indent=4))
    (root / "configs" / "inference.json").write_text(json.dumps(zoo_inference(activation=activation), indent=4))
    (root / "docs" / "README.md").write_text("A tiny Model Zoo-style BraTS bundle for robustseg's tests.\n")
    return root
