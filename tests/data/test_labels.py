"""BraTS label conventions."""

from __future__ import annotations

import re

import pytest
import torch

from common.data.labels import (
    BRATS_LABELS,
    REGION_CHANNELS,
    REGIONS,
    channel_argmax,
    check_output_channels,
    indices_to_labels,
    is_region_output,
    labels_to_indices,
    logits_to_labels,
    region_masks,
)
from common.errors import RobustsegError


def test_round_trip():
    labels = torch.tensor(BRATS_LABELS)[torch.randint(0, 4, (2, 1, 5, 5))]
    idx = labels_to_indices(labels)
    assert set(idx.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(indices_to_labels(idx), labels)


@pytest.mark.parametrize("bad", [3, 5, -1, 7])
def test_labels_to_indices_rejects(bad):
    labels = torch.tensor([[[0, 1, bad]]])
    with pytest.raises(RobustsegError, match=rf"\[{bad}\]"):
        labels_to_indices(labels)


def test_brats_error_message_is_unchanged():
    message = r"^labels: values \[3, 5\] are not BraTS labels, expected only \[0, 1, 2, 4\]\.$"
    with pytest.raises(RobustsegError, match=message):  # 3 in the lookup table, 5 beyond it: both named
        labels_to_indices(torch.tensor([[[0, 3, 5, 3]]]))


@pytest.mark.parametrize("dtype", [torch.long, torch.uint8, torch.int32, torch.float32])
def test_labels_to_indices_with_eight_index_labels(dtype):
    values = tuple(range(8))  # a generic 8-class task: the labels are the channel indices
    labels = torch.randint(0, 8, (2, 1, 5, 6, 3), generator=torch.Generator().manual_seed(0))
    assert set(labels.unique().tolist()) == set(values)
    idx = labels_to_indices(labels.to(dtype), values)
    assert idx.dtype == torch.long and torch.equal(idx, labels)
    assert torch.equal(indices_to_labels(idx, values), labels)


@pytest.mark.parametrize("values", [(0, 1), (0, 1, 2), (2, 0, 9), (7, 3)])
def test_labels_to_indices_with_other_values_round_trip(values):
    indices = torch.randint(0, len(values), (3, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor(values)[indices]
    assert torch.equal(labels_to_indices(labels, values), indices)
    assert torch.equal(indices_to_labels(indices, values), labels)


@pytest.mark.parametrize(
    ("values", "bad"),
    [(tuple(range(8)), [8]), (tuple(range(8)), [-1]), (tuple(range(8)), [100, 8]), ((0, 1), [2]), ((2, 0, 9), [1, 5])],
)
def test_labels_to_indices_with_other_values_rejects(values, bad):
    labels = torch.tensor([[[values[0], *bad, values[-1]]]])
    message = f"labels: values {sorted(bad)} are not label values of the task, expected only {list(values)}."
    with pytest.raises(RobustsegError, match=f"^{re.escape(message)}$"):
        labels_to_indices(labels, values)


@pytest.mark.parametrize("values", [(), (0, -1), (0, 1, 1)])
def test_labels_to_indices_refuses_values_that_are_not_distinct_non_negative(values):
    with pytest.raises(RobustsegError, match=r"^values: expected distinct non-negative label values, got \["):
        labels_to_indices(torch.zeros(1, 1, 2, dtype=torch.long), values)


def test_logits_to_labels_argmax():
    logits = torch.zeros(1, 4, 2)
    logits[0, 3, 0] = 1  # channel 3 -> label 4
    logits[0, 1, 1] = 1  # channel 1 -> label 1
    assert logits_to_labels(logits).tolist() == [[[4, 1]]]


@pytest.mark.parametrize("region, members", [("WT", {1, 2, 4}), ("TC", {1, 4}), ("ET", {4})])
def test_region_masks(region, members):
    labels = torch.tensor([[[0, 1, 2, 4]]])
    mask = region_masks(labels, [region])[0, 0]
    assert {v for v, m in zip([0, 1, 2, 4], mask.tolist()) if m} == members


def test_unknown_region():
    with pytest.raises(RobustsegError, match="XX"):
        region_masks(torch.zeros(1, 1, 2), ["XX"])


@pytest.mark.parametrize("shape", [(2, 4, 5, 6, 7), (3, 4, 9, 8), (1, 2, 3), (2, 5, 4, 4, 4)])
def test_channel_argmax_is_torch_argmax_ties_included(shape):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=generator).round(decimals=1)  # many ties
    logits[:, -1] = logits[:, 0]  # a tie in every voxel: the first channel must win
    expected = torch.argmax(logits, dim=1, keepdim=True)
    got = channel_argmax(logits)
    assert got.dtype == torch.long and torch.equal(got, expected)
    assert torch.equal(channel_argmax(logits.transpose(2, -1)), torch.argmax(logits.transpose(2, -1), 1, keepdim=True))


# -- sigmoid region outputs (3 channels: WT, TC, ET) ------------------------------------------------------------------


def zoo_rule(logits):
    """The MONAI Model Zoo brats_mri_segmentation postprocessing, transcribed: label 4 where ET, else 1 where TC, else 2
    where WT, else 0, each region where its sigmoid exceeds 0.5."""
    wt, tc, et = (torch.sigmoid(logits[:, i : i + 1]) > 0.5 for i in range(3))
    return torch.where(et, 4, torch.where(tc, 1, torch.where(wt, 2, 0)))


def test_region_channels_are_the_scoring_regions_in_canonical_order():
    assert REGION_CHANNELS == ("WT", "TC", "ET") == tuple(REGIONS)


@pytest.mark.parametrize(
    ("wt", "tc", "et", "label"),
    [
        (-1.0, -1.0, -1.0, 0),
        (2.0, -1.0, -1.0, 2),
        (2.0, 3.0, -1.0, 1),
        (2.0, 3.0, 0.5, 4),
        (-1.0, 3.0, -1.0, 1),  # TC outside WT: not nested, TC wins
        (2.0, -3.0, 0.5, 4),  # ET outside TC: ET wins
        (-2.0, -3.0, 0.5, 4),  # ET alone
        (0.0, 0.0, 0.0, 0),  # sigmoid exactly 0.5 is not inside (the zoo's "> 0.5")
        (1e-6, 0.0, 0.0, 2),
    ],
)
def test_region_logits_to_labels_follow_the_zoo_rule_voxel_by_voxel(wt, tc, et, label):
    logits = torch.tensor([wt, tc, et]).view(1, 3, 1)
    assert logits_to_labels(logits).tolist() == [[[label]]] == zoo_rule(logits).tolist()


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 4, 5, 3), (1, 3, 7)])
def test_region_logits_to_labels_equal_the_zoo_rule(shape):
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)).round(decimals=1)  # zeros included
    got = logits_to_labels(logits)
    assert got.dtype == torch.long and got.shape == (shape[0], 1, *shape[2:])
    assert torch.equal(got, zoo_rule(logits))
    not_nested = (logits[:, 2] > 0) & (logits[:, 1] <= 0)
    assert not_nested.any() and (got[:, 0][not_nested] == 4).all()


def test_region_logits_to_labels_map_through_values():
    logits = torch.tensor([[[-1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, 1.0]]])
    assert logits_to_labels(logits).tolist() == [[[0, 2, 1, 4]]]
    assert logits_to_labels(logits, values=(10, 11, 12, 14)).tolist() == [[[10, 12, 11, 14]]]


def test_softmax_logits_to_labels_are_the_argmax_as_before():
    logits = torch.randn(2, 4, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits_to_labels(logits), indices_to_labels(torch.argmax(logits, 1, keepdim=True)))
    assert torch.equal(logits_to_labels(logits, (5, 6, 7, 8)), torch.argmax(logits, 1, keepdim=True) + 5)


@pytest.mark.parametrize(("channels", "region"), [(4, False), (3, True)])
def test_output_convention_by_channel_count(channels, region):
    logits = torch.zeros(2, channels, 3, 3)
    assert check_output_channels(logits) == channels
    assert is_region_output(logits) is region


@pytest.mark.parametrize("channels", [1, 2, 5, 8])
@pytest.mark.parametrize("call", [check_output_channels, is_region_output, logits_to_labels])
def test_other_channel_counts_are_refused_in_one_line(call, channels):
    with pytest.raises(
        RobustsegError,
        match=rf"^logits: {channels} output channels, expected 4 \(softmax over BraTS "
        r"labels \[0, 1, 2, 4\]\) or 3 \(sigmoid regions WT, TC, ET\)\.$",
    ) as info:
        call(torch.zeros(1, channels, 2, 2))
    assert "\n" not in str(info.value)


def test_logits_without_spatial_dimensions_are_refused():
    with pytest.raises(RobustsegError, match=r"logits: expected shape \(B, C, \*spatial\), got \(4, 3\)"):
        logits_to_labels(torch.zeros(4, 3))
