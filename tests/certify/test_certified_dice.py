"""Tests for :mod:`common.certify.certified_dice`: certified Dice per BraTS region against a transcription of its
definition, its two conventions for non-certified voxels, and its checks."""

from __future__ import annotations

import pytest
import torch
from monai.metrics import compute_dice

from common.certify import GaussianSmoothing, certified_dice, certified_region_masks, certify
from common.data.labels import REGIONS, region_masks
from common.errors import RobustsegError
from common.metrics.dice import region_dice

# one row of 8 voxels: BraTS labels, the selected class indices (0, 1, 2, 3 = labels 0, 1, 2, 4), certified or not
LABEL = [0, 0, 2, 2, 1, 4, 4, 0]
SELECTED = [0, 3, 2, 0, 1, 3, 2, 0]
CERTIFIED = [1, 1, 1, 0, 1, 0, 1, 0]


def _tensor(values, dtype=torch.long):
    return torch.tensor(values, dtype=dtype).reshape(1, 1, 1, 1, -1)


def dice_transcribed(region: str, non_certified: str) -> float:
    """Count TP, FP, FN voxel by voxel: a certified voxel as predicted; a non-certified one as wrong in the worst
    way (FN inside the region, FP outside) or, for "abstain", as a FN inside and nothing outside."""
    values = {0: 0, 1: 1, 2: 2, 3: 4}
    tp = fp = fn = 0
    for label, selected, certified in zip(LABEL, SELECTED, CERTIFIED):
        truth = label in REGIONS[region]
        if certified:
            predicted = values[selected] in REGIONS[region]
        else:
            predicted = not truth if non_certified == "worst_case" else False
        tp += predicted and truth
        fp += predicted and not truth
        fn += truth and not predicted
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("non_certified", ["worst_case", "abstain"])
def test_masks_score_as_the_transcription(non_certified):
    masks = certified_region_masks(_tensor(SELECTED), _tensor(CERTIFIED, torch.bool), _tensor(LABEL),
                                   non_certified=non_certified)  # fmt: skip
    dice = compute_dice(masks, region_masks(_tensor(LABEL)), include_background=True, ignore_empty=False)
    assert dice[0].tolist() == pytest.approx([dice_transcribed(r, non_certified) for r in ("WT", "TC", "ET")])


def _certificate(net, images, n=200):
    return certify(GaussianSmoothing(net, 0.25, 100), images, n0=20, n=n, alpha=0.01, tau=0.6, correction="bonferroni")


@pytest.fixture
def scored(tiny_net):
    images = torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    cert = _certificate(tiny_net, images)
    with torch.no_grad():
        clean = tiny_net(images).argmax(1, keepdim=True)
    label = torch.tensor([0, 1, 2, 4])[clean]  # ground truth = the base network's own clean prediction
    return cert, label


def test_certified_dice_falls_with_the_radius_and_worst_case_is_the_lowest(scored):
    cert, label = scored
    previous = None
    for radius in (0.0, 0.05, 0.1, 0.2, 0.5, 5.0):
        worst = certified_dice(cert, label, radius)
        abstain = certified_dice(cert, label, radius, non_certified="abstain")
        assert worst.shape == (2, 3) and bool(((worst >= 0) & (worst <= 1)).all())
        assert bool((worst <= abstain + 1e-12).all())
        if previous is not None:
            assert bool((worst <= previous + 1e-12).all())
        previous = worst
    assert float(previous.max()) == 0.0  # nothing certified at 5.0: every region with tumour or not scores 0


def test_everything_certified_gives_the_dice_of_the_smoothed_prediction(threshold_net):
    """Far from the threshold, every voxel is certified: certified Dice at radius 0 is the plain region Dice."""
    images = torch.where(torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5, 1.5, -0.5)
    cert = _certificate(threshold_net, images)
    assert bool(cert.certified.all())
    label = torch.tensor([0, 1])[(images > 0.5).long()]
    label[..., 0] = 4  # some voxels the model gets wrong: certified but wrong, scored as predicted
    expected = region_dice(torch.tensor([0, 1])[cert.selected], label)
    for non_certified in ("worst_case", "abstain"):
        assert torch.allclose(certified_dice(cert, label, 0.0, non_certified=non_certified), expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"non_certified": "ignore"}, "non_certified must be one of"),
        ({"radius": -1.0}, "radius must be a finite number >= 0"),
        ({"regions": ("WT", "XX")}, "regions: unknown region"),
        ({"label": torch.zeros(2, 1, 4, 4, 3, dtype=torch.long)}, "must share one shape"),
        ({"label": torch.full((2, 1, 4, 4, 4), 3)}, "not BraTS labels"),
    ],
)
def test_bad_arguments_raise_one_line(scored, kwargs, match):
    cert, label = scored
    settings = {"label": label, **kwargs}
    with pytest.raises(RobustsegError, match=match) as info:
        certified_dice(cert, **settings)
    assert "\n" not in str(info.value)
