"""i-FGSM (common/attacks/ifgsm.py): eq. 2, per-step records, and torchattacks' BIM as an external oracle."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from common.attacks import FGSM, IterativeFGSM
from common.data.labels import labels_to_indices
from common.losses import SoftDiceLoss


def test_default_step_is_epsilon_over_steps():
    assert IterativeFGSM(0.05, steps=10).alpha == pytest.approx(0.005)
    assert IterativeFGSM(0.05, steps=4, alpha=0.02).alpha == 0.02


@pytest.mark.parametrize(("epsilon", "alpha", "steps"), [(0.03, 0.01, 5), (0.05, 0.005, 10)])
def test_matches_torchattacks_bim(epsilon, alpha, steps, trained_net, tumours):
    """External oracle: torchattacks' BIM is eq. 2 with cross-entropy, absolute epsilon and [0, 1] clipping."""
    images, labels = tumours
    ours = IterativeFGSM(epsilon, steps=steps, alpha=alpha, loss="ce", relative=False, clip=(0, 1))
    theirs = torchattacks.BIM(trained_net, eps=epsilon, alpha=alpha, steps=steps)
    adv = ours(trained_net, images, labels)
    torch.testing.assert_close(adv, theirs(images, labels_to_indices(labels)[:, 0]))
    assert not torch.equal(adv, images)


def test_records_every_iterate(trained_net, tumours):
    images, labels = tumours
    records = []
    adv = IterativeFGSM(0.05, steps=4, alpha=0.02)(trained_net, images, labels, callback=records.append)
    assert [r.step for r in records] == [1, 2, 3, 4]
    assert torch.equal(records[-1].adversarial, adv)
    previous = images
    for record in records:
        # iterate k is what a k-step attack with the same step size returns
        shorter = IterativeFGSM(0.05, steps=record.step, alpha=0.02)(trained_net, images, labels)
        assert torch.equal(record.adversarial, shorter)
        # the loss is the one at the iterate the gradient was taken at
        with torch.no_grad():
            assert record.loss == pytest.approx(SoftDiceLoss()(trained_net(previous), labels).item(), rel=1e-5)
        assert 0.0 <= record.zero_grad_fraction < 0.5
        previous = record.adversarial


def test_iterating_does_more_damage_than_one_step(trained_net, tumours, loss_of):
    one_step = loss_of(trained_net, FGSM(0.05)(trained_net, *tumours), tumours[1])
    assert loss_of(trained_net, IterativeFGSM(0.05, steps=10)(trained_net, *tumours), tumours[1]) >= one_step
