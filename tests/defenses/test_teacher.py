"""load_teacher: builds network_def from the bundle's configs, loads the weights, freezes; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from common.defenses import load_teacher
from common.errors import RobustsegError

NAME = "tiny_teacher"

CONV = {"_target_": "torch.nn.Conv3d", "in_channels": 4, "out_channels": "@out_channels", "kernel_size": "@kernel"}
# no out_channels attribute (on BasicUNet or a single wrapped module): the channel count comes from a forward pass
UNET = {
    "_target_": "monai.networks.nets.BasicUNet",
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": "@out_channels",
    "features": [2, 2, 2, 2, 2, 2],
    "dropout": 0.5,
}


def _build(network_def: dict, out_channels: int = 4, kernel: int = 1) -> nn.Module:
    if network_def is CONV:
        return nn.Conv3d(4, out_channels, kernel)
    return BasicUNet(3, 4, out_channels, features=(2, 2, 2, 2, 2, 2), dropout=0.5)


def make_bundle(
    root: Path, network_def: dict = CONV, out_channels: int = 4, weights_kernel: int | None = 1, name: str = NAME
) -> tuple[Path, nn.Module | None]:
    """A minimal bundle folder: configs (inference + a quick overlay + metadata) and, optionally, trained weights."""
    folder = root / name
    (folder / "configs").mkdir(parents=True)
    inference = {
        "imports": ["$import os"],
        "bundle_root": "$undefined_function()",  # replaced by load_teacher; never evaluated
        "datalist": "$undefined_function()",  # unrelated entries are not evaluated
        "out_channels": out_channels,
        "kernel": 1,
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    (folder / "configs" / "quick.json").write_text(json.dumps({"kernel": 3}))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": name}))
    net = None
    if weights_kernel is not None:
        torch.manual_seed(1)
        net = _build(network_def, out_channels, weights_kernel)
        (folder / "models").mkdir()
        torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder, net


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("network_def", [CONV, UNET], ids=["conv", "unet"])
def test_loads_frozen_eval_teacher_from_folder(tmp_path, network_def):
    folder, trained = make_bundle(tmp_path, network_def)
    teacher = load_teacher(folder)
    assert _same_weights(teacher, trained)
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(1, 4, 32, 32, 32)
    assert torch.equal(teacher(x), teacher(x))  # eval mode: the dropout is off


def test_later_config_files_override_earlier(tmp_path):
    folder, trained = make_bundle(tmp_path, weights_kernel=3)
    teacher = load_teacher(str(folder), config_files=["configs/inference.json", "configs/quick.json"])
    assert teacher.kernel_size == (3, 3, 3) and _same_weights(teacher, trained)
    with pytest.raises(RobustsegError, match="does not fit"):
        load_teacher(str(folder))  # kernel 1 from inference.json alone


def test_resolves_bundle_name(tmp_path, monkeypatch):
    make_bundle(tmp_path / "bundles")
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_teacher(NAME), nn.Conv3d)


def test_absolute_weights_path(tmp_path):
    folder, trained = make_bundle(tmp_path)
    other = tmp_path / "elsewhere.pt"
    (folder / "models" / "model.pt").rename(other)
    assert _same_weights(load_teacher(folder, weights=str(other)), trained)


def test_name_not_found_never_falls_back_to_the_working_bundle(tmp_path, monkeypatch):
    """From inside the student's own bundle, a missing teacher name must not load the student's weights."""
    student, _ = make_bundle(tmp_path, name="student")
    monkeypatch.chdir(student)
    with pytest.raises(RobustsegError, match="teacher bundle 'brats_missing' not found") as info:
        load_teacher("brats_missing")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("network_def", [CONV, UNET], ids=["attribute", "forward"])
def test_wrong_output_channels(tmp_path, network_def):
    folder, _ = make_bundle(tmp_path, network_def, out_channels=3)
    with pytest.raises(RobustsegError, match="3 output channels, expected 4"):
        load_teacher(folder)
    assert load_teacher(folder, out_channels=3) is not None


def test_weights_missing_says_how_to_train(tmp_path):
    folder, _ = make_bundle(tmp_path, weights_kernel=None)
    with pytest.raises(RobustsegError) as info:
        load_teacher(folder, config_files=["configs/inference.json", "configs/quick.json"])
    message = str(info.value)
    assert "\n" not in message and "train the teacher first" in message
    assert "python -m monai.bundle run training --config_file" in message
    assert f"{folder}/configs/train.json" in message and f"{folder}/configs/quick.json" in message


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda folder: folder.parent / "nowhere", "teacher bundle .*nowhere.* not found"),
        (lambda folder: (folder / "configs" / "inference.json").unlink() or folder, "config file not found"),
        (
            lambda folder: (folder / "configs" / "inference.json").write_text(json.dumps({"kernel": 1})) and folder,
            "no 'network_def'",
        ),
        (
            lambda folder: (folder / "configs" / "inference.json").write_text(
                json.dumps({"network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 4}})
            )
            and folder,
            "cannot build the teacher's network_def",
        ),
        (lambda folder: (folder / "models" / "model.pt").write_bytes(b"not a checkpoint") and folder, "cannot be read"),
    ],
    ids=["folder", "config", "no-network-def", "bad-network-def", "corrupt-weights"],
)
def test_errors(tmp_path, change, match):
    folder, _ = make_bundle(tmp_path)
    with pytest.raises(RobustsegError, match=match) as info:
        load_teacher(change(folder))
    assert "\n" not in str(info.value)
