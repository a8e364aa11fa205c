"""BraTS label conventions."""

from __future__ import annotations

import pytest
import torch

from common.data.labels import (
    BRATS_LABELS,
    channel_argmax,
    indices_to_labels,
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


def test_logits_to_labels_argmax():
    logits = torch.zeros(1, 4, 2)
    logits[0, 3, 0] = 1  # channel 3 -> label 4
    logits[0, 1, 1] = 1  # channel 1 -> label 1
    assert logits_to_labels(logits).tolist() == [[[4, 1]]]


@pytest.mark.parametrize(
    "region, members", [("WT", {1, 2, 4}), ("TC", {1, 4}), ("ET", {4})]
)
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
