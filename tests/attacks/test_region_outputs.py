"""Every attack with every loss on a network with sigmoid region outputs (3 channels: WT, TC, ET).

A Model Zoo bundle such as ``brats_mri_segmentation`` reaches the attacks, through its adapter, as logits
``(B, 3, *spatial)``: one sigmoid logit per nested region (:mod:`common.data.labels`). The attacks must run on it with
every loss name (:data:`common.attacks.LOSSES` picks the region losses), keep the contract of the softmax case
(test_base.py) and hurt the region prediction.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.attacks import LOSSES, IterativeFGSM
from common.attacks.base import hard_dice
from common.data.labels import REGION_CHANNELS, logits_to_labels, region_masks
from common.errors import RobustsegError

from .conftest import GRADIENT_FREE, TARGETED, build_attack, make_tumours, registered_attacks

DIMS = (1, 2, 3, 4)
EPSILON = 0.05
MONOTONE = ("soft_dice", "ce", "balanced_ce", "js")
"""Losses that grow with every region decision pushed away from its target. The masked CE and SegPGD (at step 1 the
masked CE) drop the pairs an attack flips, and CosPGD fades them out, so their value can fall while the attack
succeeds (Croce et al. 2024; Gu et al. 2022)."""


@pytest.fixture(scope="module")
def region_net() -> nn.Module:
    """A per-voxel network (1x1x1 convolutions: 4 contrasts -> 8 -> 3 region logits WT, TC, ET; TC is not linearly
    separable from the contrasts) trained with BCE on the region masks of the synthetic tumours for half a second
    (hard Dice about 0.95); in eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv3d(4, 8, 1), nn.ReLU(), nn.Conv3d(8, len(REGION_CHANNELS), 1))
        images, labels = make_tumours(4, seed=0)
        targets = region_masks(labels, REGION_CHANNELS).float()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
        for _ in range(200):
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(net(images), targets).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    net.zero_grad(set_to_none=True)
    return net.eval()


@pytest.fixture(scope="module")
def region_tumours() -> tuple[Tensor, Tensor]:
    return make_tumours(2, seed=1)


def _loss(model: nn.Module, images: Tensor, labels: Tensor, loss: str) -> float:
    with torch.no_grad():
        return float(LOSSES[loss]()(model(images), labels))


def test_the_region_net_segments_the_tumours(region_net, region_tumours):
    images, labels = region_tumours
    with torch.no_grad():
        logits = region_net(images)
    assert logits.shape[1] == 3
    assert (hard_dice(logits, labels) > 0.9).all()


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("name", registered_attacks())
def test_every_attack_runs_with_every_loss(name, loss, region_net, region_tumours):
    """Inside the ball and the range, deterministic, model and inputs as found; the loss moves the intended way."""
    images, labels = region_tumours
    state = {k: v.clone() for k, v in region_net.state_dict().items()}
    images_before, labels_before = images.clone(), labels.clone()
    attack = build_attack(name, EPSILON, loss=loss)

    adv = attack(region_net, images, labels)

    scale = images.abs().amax(DIMS, keepdim=True)
    assert adv.shape == images.shape and adv.dtype == images.dtype and not adv.requires_grad
    assert ((adv - images).abs() <= EPSILON * scale * (1 + 1e-6)).all()
    assert (adv >= images.amin(DIMS, keepdim=True)).all() and (adv <= images.amax(DIMS, keepdim=True)).all()
    assert (adv != images).any()
    assert torch.equal(adv, attack(region_net, images, labels))
    assert all(torch.equal(v, state[k]) for k, v in region_net.state_dict().items())
    assert all(p.grad is None for p in region_net.parameters()) and not region_net.training
    assert torch.equal(images, images_before) and torch.equal(labels, labels_before)
    if loss in MONOTONE and name not in GRADIENT_FREE:
        aim = attack.loss_labels(labels)  # the labels, or ti-FGSM's label 1 everywhere: target regions WT, TC, not ET
        before, after = _loss(region_net, images, aim, loss), _loss(region_net, adv, aim, loss)
        assert after < before if name in TARGETED else after > before
    if attack.returns_best_iterate:
        with torch.no_grad():
            clean, result = hard_dice(region_net(images), labels), hard_dice(region_net(adv), labels)
        assert (result <= clean).all()


@pytest.mark.parametrize("loss", ["soft_dice", "ce", "segpgd"])
def test_an_attack_lowers_the_region_dice(loss, region_net, region_tumours):
    images, labels = region_tumours
    adv = IterativeFGSM(0.1, steps=5, loss=loss)(region_net, images, labels)
    with torch.no_grad():
        assert (hard_dice(region_net(adv), labels) < hard_dice(region_net(images), labels) - 0.05).all()


@pytest.mark.parametrize("name", registered_attacks())
def test_recorded_predictions_are_the_zoo_rule_of_the_iterate(name, region_net, region_tumours):
    images, labels = region_tumours
    records = []
    build_attack(name, EPSILON)(region_net, images, labels, records.append)
    assert records
    with torch.no_grad():
        first = logits_to_labels(region_net(images))
    if name in ("PGD", "APGD"):  # a random start: the first gradient is not taken at the clean input
        assert all(r.predictions is not None and set(r.predictions.unique().tolist()) <= {0, 1, 2, 4} for r in records)
        return
    assert torch.equal(records[0].predictions, first)
    for before, record in zip(records, records[1:]):
        with torch.no_grad():
            assert torch.equal(record.predictions, logits_to_labels(region_net(before.adversarial)))


@pytest.mark.parametrize("stop", ["dice_zero", "gradient_vanished"])
def test_stop_criteria_read_region_outputs(stop, region_net, region_tumours):
    images, labels = region_tumours
    adv = build_attack("PGD", EPSILON, stop=stop)(region_net, images, labels)
    assert ((adv - images).abs() <= EPSILON * images.abs().amax(DIMS, keepdim=True) * (1 + 1e-6)).all()


@pytest.mark.parametrize("name", registered_attacks())
def test_an_output_of_neither_convention_is_refused_in_one_line(name, region_tumours):
    images, labels = region_tumours
    torch.manual_seed(0)
    net = nn.Conv3d(4, 5, 1).eval()
    with pytest.raises(RobustsegError, match=r"^logits: 5 output channels, expected 4 .* or 3 ") as info:
        build_attack(name, EPSILON)(net, images, labels, lambda record: None)
    assert "\n" not in str(info.value)
