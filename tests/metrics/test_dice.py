from __future__ import annotations

import pytest
import torch

from common.data.labels import logits_to_labels
from common.errors import RobustsegError
from common.metrics import region_dice


def _hand_dice(pred: torch.Tensor, truth: torch.Tensor, values: tuple[int, ...]) -> float:
    p = torch.isin(pred, torch.tensor(values))
    y = torch.isin(truth, torch.tensor(values))
    if not y.any() and not p.any():
        return 1.0
    return float(2 * (p & y).sum() / (p.sum() + y.sum()))


@pytest.mark.parametrize("spatial", [(6, 5, 4), (7, 9)])
def test_matches_hand_computation(spatial):
    g = torch.Generator().manual_seed(3)
    values = torch.tensor([0, 1, 2, 4])
    pred = values[torch.randint(0, 4, (3, 1, *spatial), generator=g)]
    truth = values[torch.randint(0, 4, (3, 1, *spatial), generator=g)]
    dice = region_dice(pred, truth)
    assert dice.shape == (3, 3)
    for b in range(3):
        for j, region in enumerate([(1, 2, 4), (1, 4), (4,)]):
            assert dice[b, j].item() == pytest.approx(_hand_dice(pred[b], truth[b], region), abs=1e-6)


def test_nested_regions_from_a_known_map():
    truth = torch.tensor([0, 1, 2, 4, 4, 0]).reshape(1, 1, 6, 1)
    pred = torch.tensor([0, 4, 2, 4, 0, 2]).reshape(1, 1, 6, 1)
    # WT: pred {1,2,3,5}, truth {1,2,3,4} -> 2*3/8; TC: pred {1,3}, truth {1,3,4} -> 2*2/5; ET: pred {1,3}, truth {3,4}
    expected = torch.tensor([[6 / 8, 4 / 5, 2 / 4]])
    torch.testing.assert_close(region_dice(pred, truth), expected)
    torch.testing.assert_close(region_dice(pred, truth, regions=("ET",)), expected[:, 2:])


@pytest.mark.parametrize(
    "pred_values, truth_values, expected",
    [
        ((0, 0, 2), (0, 2, 2), 1.0),  # ET empty in both -> 1
        ((0, 4, 2), (0, 2, 2), 0.0),  # ET predicted, absent in truth -> 0
        ((0, 2, 2), (0, 4, 2), 0.0),  # ET in truth, not predicted -> 0
    ],
)
def test_empty_mask_convention(pred_values, truth_values, expected):
    pred = torch.tensor(pred_values).reshape(1, 1, 3)
    truth = torch.tensor(truth_values).reshape(1, 1, 3)
    assert region_dice(pred, truth, regions=("ET",)).item() == expected


def test_perfect_prediction_from_logits():
    truth = torch.tensor([0, 1, 2, 4]).reshape(1, 1, 2, 2)
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 4).T.reshape(1, 4, 2, 2).float()
    assert torch.equal(logits_to_labels(logits), truth)
    torch.testing.assert_close(region_dice(logits_to_labels(logits), truth), torch.ones(1, 3))


def test_shape_mismatch_raises():
    with pytest.raises(RobustsegError, match="same shape"):
        region_dice(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_not_a_label_map_raises():
    with pytest.raises(RobustsegError, match=r"\(B, 1, \*spatial\)"):
        region_dice(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))


def test_unknown_region_raises():
    with pytest.raises(RobustsegError, match="unknown region"):
        region_dice(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), regions=("WT", "NCR"))


def test_non_brats_label_raises():
    truth = torch.tensor([0, 1, 3, 2]).reshape(1, 1, 4)  # MSD's label 3 must not be silently ignored
    with pytest.raises(RobustsegError, match="not BraTS labels"):
        region_dice(torch.zeros(1, 1, 4, dtype=torch.long), truth)


@pytest.mark.parametrize("spatial", [(7, 5, 3), (16, 16), (9, 8, 7, 2)])
@pytest.mark.parametrize("regions", [("WT", "TC", "ET"), ("ET", "WT"), ("TC",)])
def test_equals_monai_compute_dice_on_region_masks(spatial, regions):
    """The one-pass joint-count Dice is MONAI's compute_dice (ignore_empty=False) on the region masks."""
    from monai.metrics import compute_dice

    from common.data.labels import BRATS_LABELS, region_masks

    g = torch.Generator().manual_seed(len(spatial) * 10 + len(regions))
    values = torch.tensor(BRATS_LABELS)
    pred = values[torch.randint(0, 4, (5, 1, *spatial), generator=g)]
    true = values[torch.randint(0, 4, (5, 1, *spatial), generator=g)]
    pred[0], true[1] = 0, 0  # an empty prediction, an empty truth
    pred[2], true[2] = 0, 0  # both empty
    pred[3][pred[3] == 4] = 1  # no ET predicted in one sample
    expected = compute_dice(region_masks(pred, regions), region_masks(true, regions), include_background=True,
                            ignore_empty=False)  # fmt: skip
    got = region_dice(pred, true, regions)
    assert got.shape == (5, len(regions)) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-7)


# -- class_dice: a generic task's classes ------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(7, 5, 3), (16, 16)])
@pytest.mark.parametrize(("classes", "scored"), [(2, [1]), (3, [1, 2]), (3, [2, 0]), (8, [7, 3])])
def test_class_dice_equals_monai_compute_dice(spatial, classes, scored):
    from monai.metrics import compute_dice

    from common.metrics.dice import class_dice

    g = torch.Generator().manual_seed(classes)
    pred = torch.randint(0, classes, (3, 1, *spatial), generator=g)
    truth = torch.randint(0, classes, (3, 1, *spatial), generator=g)
    truth[0] = torch.where(truth[0] == scored[0], 0 if scored[0] else 1, truth[0])  # a class absent from one truth
    dice = class_dice(pred, truth, classes, scored)
    onehot = [torch.nn.functional.one_hot(t[:, 0], classes).movedim(-1, 1) for t in (pred, truth)]
    expected = compute_dice(onehot[0], onehot[1], include_background=True, ignore_empty=False)[:, scored]
    torch.testing.assert_close(dice, expected.float())
    for b in range(3):
        for j, c in enumerate(scored):
            assert dice[b, j].item() == pytest.approx(_hand_dice(pred[b], truth[b], (c,)), abs=1e-6)


def test_class_dice_empty_masks_and_errors():
    from common.metrics.dice import class_dice

    zeros = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    one = zeros.clone()
    one[0, 0, 0, 0] = 1
    assert class_dice(zeros, zeros, 2, [1]).item() == 1.0  # nothing to find, nothing found
    assert class_dice(one, zeros, 2, [1]).item() == 0.0
    assert class_dice(zeros, one, 2, [1]).item() == 0.0
    with pytest.raises(RobustsegError, match=r"labels: values \[2\]"):
        class_dice(zeros + 2, zeros, 2, [1])
    with pytest.raises(RobustsegError, match=r"scored: classes \[2\] are out of range"):
        class_dice(zeros, zeros, 2, [2])
    with pytest.raises(RobustsegError, match="class-index maps of one shape"):
        class_dice(zeros, zeros[0], 2, [1])
