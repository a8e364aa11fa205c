"""FGSM (common/attacks/fgsm.py): eq. 1, the one-gradient epsilon sweep, and torchattacks as an external oracle."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from common.attacks import FGSM
from common.data.labels import labels_to_indices
from common.errors import RobustsegError
from common.losses import SoftDiceLoss

EPSILONS = [0.0, 0.001, 0.01, 0.05, 0.1]


def test_is_one_signed_gradient_step(trained_net, tumours):
    images, labels = tumours
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(SoftDiceLoss()(trained_net(x), labels), x)
    expected = images + 0.05 * grad.sign()  # eq. 1 in absolute units, no clipping
    torch.testing.assert_close(FGSM(0.05, relative=False, clip=None)(trained_net, images, labels), expected)


def test_matches_torchattacks_fgsm(trained_net, tumours):
    """External oracle: torchattacks' FGSM is eq. 1 with cross-entropy, absolute epsilon and [0, 1] clipping."""
    images, labels = tumours
    ours = FGSM(0.03, loss="ce", relative=False, clip=(0, 1))(trained_net, images, labels)
    theirs = torchattacks.FGSM(trained_net, eps=0.03)(images, labels_to_indices(labels)[:, 0])
    torch.testing.assert_close(ours, theirs)
    assert not torch.equal(ours, images)


@pytest.mark.parametrize("settings", [{}, {"relative": False}, {"clip": None}, {"loss": "ce", "clip": (0.0, 1.0)}])
def test_sweep_equals_individual_runs(settings, trained_net, tumours):
    images, labels = tumours
    images = images * torch.tensor([1.0, 0.5]).view(2, 1, 1, 1, 1)
    records = []
    sweep = FGSM(0.5, **settings).sweep(trained_net, images, labels, EPSILONS, callback=records.append)
    assert len(sweep) == len(EPSILONS) == len(records)
    for epsilon, adv, record in zip(EPSILONS, sweep, records, strict=True):
        assert torch.equal(adv, FGSM(epsilon, **settings)(trained_net, images, labels))
        assert record.step == 1 and torch.equal(record.adversarial, adv)
    assert torch.equal(sweep[0], images)


def test_sweep_uses_one_forward_pass(trained_net, tumours):
    calls = []
    handle = trained_net.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        FGSM(0.05).sweep(trained_net, *tumours, EPSILONS)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_sweep_checks_every_epsilon(trained_net, tumours):
    with pytest.raises(RobustsegError, match=r"epsilon must be >= 0, got -0.01"):
        FGSM(0.05).sweep(trained_net, *tumours, [0.0, -0.01])


def test_damage_grows_with_epsilon(trained_net, tumours, loss_of):
    losses = [loss_of(trained_net, adv, tumours[1]) for adv in FGSM(0).sweep(trained_net, *tumours, EPSILONS)]
    assert losses == sorted(losses) and losses[-1] > losses[0]


def test_zero_grad_fraction_of_its_gradient(trained_net, tumours):
    images, labels = tumours
    records = []
    FGSM(0.05)(trained_net, images, labels, callback=records.append)
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(SoftDiceLoss()(trained_net(x), labels), x)
    assert len(records) == 1 and records[0].step == 1
    assert records[0].zero_grad_fraction == pytest.approx((grad == 0).float().mean().item())
