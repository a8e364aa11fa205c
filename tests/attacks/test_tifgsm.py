"""ti-FGSM (common/attacks/tifgsm.py): eq. 3 descends the loss towards a target label map."""

from __future__ import annotations

import pytest
import torch

from common.attacks import TargetedIterativeFGSM
from common.errors import RobustsegError
from common.losses import SoftDiceLoss


def target_loss(net, images, target):
    with torch.no_grad():
        return SoftDiceLoss()(net(images), target).item()


@pytest.mark.parametrize("target", [1, 2])
def test_moves_the_segmentation_towards_the_target(target, trained_net, tumours):
    images, labels = tumours
    records = []
    adv = TargetedIterativeFGSM(0.05, steps=5, target=target)(trained_net, images, labels, callback=records.append)
    target_map = torch.full_like(labels, target)
    assert target_loss(trained_net, adv, target_map) < target_loss(trained_net, images, target_map)
    assert records[0].loss == pytest.approx(target_loss(trained_net, images, target_map), rel=1e-5)
    channel = [0, 1, 2, 4].index(target)
    with torch.no_grad():
        assert trained_net(adv).softmax(1)[:, channel].mean() > trained_net(images).softmax(1)[:, channel].mean()


def test_label_map_target_equals_value_target(trained_net, tumours):
    images, labels = tumours
    by_value = TargetedIterativeFGSM(0.05, steps=3, target=4)(trained_net, images, labels)
    by_map = TargetedIterativeFGSM(0.05, steps=3, target=torch.full((1, 1, 16, 16, 16), 4))(trained_net, *tumours)
    assert torch.equal(by_value, by_map)
    assert "target='map(1, 1, 16, 16, 16)'" in repr(TargetedIterativeFGSM(0.05, target=torch.zeros(1, 1, 16, 16, 16)))


def test_label_map_target_per_sample(trained_net, tumours):
    images, labels = tumours
    target = torch.stack([torch.full((1, 16, 16, 16), 1), torch.full((1, 16, 16, 16), 2)])
    adv = TargetedIterativeFGSM(0.05, steps=3, target=target)(trained_net, images, labels)
    for i, value in enumerate([1, 2]):
        alone = TargetedIterativeFGSM(0.05, steps=3, target=value)(trained_net, images[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(adv[i : i + 1], alone)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (3, r"target must be one of \[0, 1, 2, 4\] \(a BraTS label, or a \(B, 1, \*spatial\) label map\), got 3"),
        (True, r"target must be one of \[0, 1, 2, 4\] .*, got True"),
        (torch.zeros(16, 16, 16), r"target: a label map must have shape \(B, 1, \*spatial\), got \(16, 16, 16\)"),
        (torch.full((1, 1, 4, 4, 4), 5), r"labels: values \[5\] are not BraTS labels"),
    ],
)
def test_bad_target_is_refused(target, match):
    with pytest.raises(RobustsegError, match=match):
        TargetedIterativeFGSM(0.05, target=target)


def test_target_map_must_fit_the_labels(trained_net, tumours):
    attack = TargetedIterativeFGSM(0.05, target=torch.ones(1, 1, 8, 8, 8))
    with pytest.raises(RobustsegError, match=r"target: label map of shape \(1, 1, 8, 8, 8\) does not fit labels"):
        attack(trained_net, *tumours)
