"""Tests for :mod:`common.utils.enums`: members are their strings, in CSV, JSON and f-strings alike."""

from __future__ import annotations

import json

import pytest

from common.utils.enums import Defense, Net, Threat


@pytest.mark.parametrize(
    "enum, values",
    [
        (Defense, ("none", "distillation", "adversarial_training", "noise_augmentation", "artifact_augmentation",
                   "gaussian_augmentation")),
        (Net, ("3d", "2d")),
        (Threat, ("clean", "white-box", "adaptive", "transfer", "worst-case", "corruption", "certified", "smoothed")),
    ],
)
def test_values_and_string_behaviour(enum, values):
    assert enum.values() == values
    for member, value in zip(enum, values, strict=True):
        assert member == value and str(member) == value and f"{member}" == value and f"{member:>3}" == f"{value:>3}"
        assert enum(value) is member
        assert json.dumps(member) == json.dumps(value)


@pytest.mark.parametrize(
    "member, title",
    [
        (Defense.NONE, "No defence"),
        (Defense.DISTILLATION, "Distillation"),
        (Defense.ADVERSARIAL_TRAINING, "Adversarial training"),
        (Defense.NOISE_AUGMENTATION, "Noise augmentation"),
        (Defense.ARTIFACT_AUGMENTATION, "Artifact augmentation"),
        (Defense.GAUSSIAN_AUGMENTATION, "Gaussian augmentation"),
        (Net.UNET3D, "3D-UNet"),
        (Net.UNET2D, "2D-UNet"),
    ],
)
def test_titles(member, title):
    assert member.title == title


def test_unknown_value_raises():
    with pytest.raises(ValueError):
        Defense("defence")
