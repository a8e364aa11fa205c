"""The attack losses by name follow the output convention (common/losses/by_output.py, common.attacks.LOSSES)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from common.attacks import LOSSES
from common.data.labels import labels_to_indices
from common.errors import RobustsegError
from common.losses import (
    ByOutput,
    RegionSegPGDLoss,
    SegPGDLoss,
    SoftDiceLoss,
    balanced_cross_entropy,
    cospgd_loss,
    jensen_shannon,
    masked_cross_entropy,
    region_balanced_cross_entropy,
    region_cospgd_loss,
    region_cross_entropy,
    region_jensen_shannon,
    region_masked_cross_entropy,
    region_soft_dice,
)

BRATS = (0, 1, 2, 4)


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The attacks' cross-entropy as it was written before region outputs existed."""
    return F.cross_entropy(logits.float(), labels_to_indices(labels)[:, 0])


def _segpgd_at(loss: Callable, step: int = 3, steps: int = 5) -> Callable:
    loss.set_step(step, steps)
    return loss


# name -> (the softmax loss as the attacks called it before, its region counterpart), each built fresh
DIRECT: dict[str, Callable[[], tuple[Callable, Callable]]] = {
    "soft_dice": lambda: (SoftDiceLoss(), region_soft_dice),
    "ce": lambda: (_ce, region_cross_entropy),
    "masked_ce": lambda: (masked_cross_entropy, region_masked_cross_entropy),
    "balanced_ce": lambda: (balanced_cross_entropy, region_balanced_cross_entropy),
    "js": lambda: (jensen_shannon, region_jensen_shannon),
    "segpgd": lambda: (_segpgd_at(SegPGDLoss()), _segpgd_at(RegionSegPGDLoss())),
    "cospgd": lambda: (cospgd_loss, region_cospgd_loss),
}


def make_logits(channels: int, dims: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    spatial = (3, 4) if dims == 2 else (2, 3, 3)
    labels = torch.tensor(BRATS)[torch.randint(0, 4, (2, 1, *spatial), generator=generator)]
    return 2 * torch.randn(2, channels, *spatial, generator=generator), labels


def value_and_gradient(loss: Callable, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaf = logits.clone().requires_grad_(True)
    value = loss(leaf, labels)
    return value.detach(), torch.autograd.grad(value, leaf)[0]


def test_every_attack_loss_name_has_both_conventions():
    assert sorted(DIRECT) == sorted(LOSSES)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(DIRECT))
def test_four_channels_give_exactly_the_softmax_loss(name, dims):
    logits, labels = make_logits(4, dims)
    loss = LOSSES[name]()
    loss.set_step(3, 5)  # what an attack does before its gradient; the softmax loss alone is set the same way
    softmax, _ = DIRECT[name]()
    for got, expected in zip(value_and_gradient(loss, logits, labels), value_and_gradient(softmax, logits, labels)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(DIRECT))
def test_three_channels_give_the_region_loss(name, dims):
    logits, labels = make_logits(3, dims)
    loss = LOSSES[name]()
    loss.set_step(3, 5)
    _, region = DIRECT[name]()
    for got, expected in zip(value_and_gradient(loss, logits, labels), value_and_gradient(region, logits, labels)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("channels", [1, 2, 5])
@pytest.mark.parametrize("name", list(DIRECT))
def test_another_channel_count_is_refused_in_one_line_naming_it(name, channels):
    logits, labels = make_logits(channels, 2)
    with pytest.raises(RobustsegError, match=rf"^logits: {channels} output channels, expected 4 .* or 3 ") as info:
        LOSSES[name]()(logits, labels)
    assert "\n" not in str(info.value)


def test_set_step_reaches_both_losses_and_the_repr_names_them():
    loss = LOSSES["segpgd"]()
    loss.set_step(4, 9)
    assert (loss.softmax.step, loss.softmax.steps, loss.region.step, loss.region.steps) == (4, 9, 4, 9)
    assert repr(loss) == "ByOutput(softmax=SegPGDLoss(step=4, steps=9), region=RegionSegPGDLoss(step=4, steps=9))"
    assert repr(LOSSES["js"]()) == "ByOutput(softmax=jensen_shannon, region=region_jensen_shannon)"
    assert repr(LOSSES["soft_dice"]()).startswith("ByOutput(softmax=SoftDiceLoss(temperature=1.0, ")
    with pytest.raises(RobustsegError, match=r"step must be an integer in \[1, 2\], got 3"):
        loss.set_step(3, 2)


def test_set_step_leaves_losses_without_one_alone():
    loss = ByOutput(jensen_shannon, RegionSegPGDLoss())
    loss.set_step(2, 3)  # jensen_shannon has no set_step: not an error
    assert (loss.region.step, loss.region.steps) == (2, 3)


def test_each_name_builds_a_fresh_loss():
    first, second = LOSSES["segpgd"](), LOSSES["segpgd"]()
    first.set_step(2, 2)
    assert (second.softmax.step, second.region.step) == (1, 1)
