"""PGD (common/attacks/pgd.py): random start with its own generator, the per-sample best iterate by hard Dice."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from common.attacks import APGD, LOSSES, PGD, IterativeFGSM
from common.attacks.base import hard_dice
from common.errors import RobustsegError


def test_default_step_is_madrys():
    assert PGD(0.05, steps=10).alpha == pytest.approx(0.0125)


def test_seed_decides_the_start_and_global_rng_is_untouched(trained_net, tumours):
    rng = torch.get_rng_state()
    adv = PGD(0.05, steps=2, seed=3)(trained_net, *tumours)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(adv, PGD(0.05, steps=2, seed=3)(trained_net, *tumours))
    assert not torch.equal(adv, PGD(0.05, steps=2, seed=4)(trained_net, *tumours))


def test_starts_inside_the_ball_not_at_the_clean_image(trained_net, tumours):
    """With a vanishing step size the result is the random start: inside the ball, unlike i-FGSM's clean start."""
    images, labels = tumours
    start = PGD(0.05, steps=1, alpha=1e-30, clip=None, relative=False)(trained_net, images, labels)
    delta = start - images
    assert delta.abs().max() <= 0.05 and delta.abs().mean() > 0.02  # uniform on [-0.05, 0.05]: mean |delta| 0.025
    assert torch.equal(IterativeFGSM(0.05, steps=1, alpha=1e-30, clip=None)(trained_net, images, labels), images)


def test_restarts_keep_the_best_iterate_per_sample(trained_net, tumours):
    """The result is, per sample, the iterate of all restarts with the lowest hard Dice (ties: highest loss)."""
    images, labels = tumours
    records = []
    adv = PGD(0.1, steps=2, restarts=3, loss="ce")(trained_net, images, labels, callback=records.append)
    assert [(r.restart, r.step) for r in records] == [(r, s) for r in range(3) for s in (1, 2)]
    iterates = [r.adversarial for r in records]  # every iterate but the random starts
    with torch.no_grad():
        dice = torch.stack([hard_dice(trained_net(x), labels) for x in iterates])  # (iterates, B)
        losses = torch.stack([per_sample_ce(trained_net(x), labels) for x in iterates])
        result_dice = hard_dice(trained_net(adv), labels)
    assert (result_dice <= dice.min(0).values).all()
    for i in range(len(images)):
        best = min(range(len(iterates)), key=lambda k: (float(dice[k, i]), -float(losses[k, i])))
        if result_dice[i] == dice[best, i]:  # not a random start: then the iterate with the highest loss
            assert torch.equal(adv[i], iterates[best][i])
    assert not all(torch.equal(iterates[1], x) for x in iterates[3::2])


def per_sample_ce(logits, labels):
    ce = LOSSES["ce"]()
    return torch.stack([ce(logits[i : i + 1], labels[i : i + 1]) for i in range(len(logits))])


class Window(nn.Module):
    """A 'segmenter' of the image mean ``m``: label 1 everywhere, but background while ``|m - 0.6| < 0.045``.

    Channel 2 is ``m - 10`` (never the argmax): the loss ``channel_2`` pushes every voxel up, so a signed-gradient
    path from 0.5 in steps of 0.05 crosses the window (Dice drops to 1/3) and leaves it (Dice back to 1).
    """

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        ones = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=x.dtype)
        return torch.cat([200 * (0.045 - (m - 0.6).abs()) * ones + 1, 2 * ones, (m - 10) * ones, -10 * ones], 1)


def channel_2(logits: Tensor, labels: Tensor) -> Tensor:
    return logits[:, 2].mean()


@pytest.fixture(scope="module")
def window_problem():
    images = torch.full((2, 1, 4, 4, 4), 0.5)
    labels = torch.ones((2, 1, 4, 4, 4), dtype=torch.long)
    return images, labels


@pytest.mark.parametrize("attack_class", [PGD, APGD])
def test_best_iterate_not_the_last(attack_class, window_problem):
    """Dice falls, then recovers along the path: the result is the iterate inside the window, not the last one."""
    images, labels = window_problem
    net = Window()
    records = []
    attack = attack_class(0.3, steps=6, alpha=0.05, loss=channel_2, relative=False, clip=None)
    adv = attack(net, images, labels, callback=records.append)
    with torch.no_grad():
        dice = [float(hard_dice(net(r.adversarial), labels)[0]) for r in records]
        assert dice[-1] == 1.0 and min(dice) == pytest.approx(1 / 3)
        assert float(hard_dice(net(adv), labels)[0]) == pytest.approx(1 / 3)
    inside = [k for k, d in enumerate(dice) if d < 1]
    assert torch.equal(adv, records[inside[-1]].adversarial)  # equal Dice inside: the later one has the higher loss


def test_ties_go_to_the_highest_loss(window_problem):
    """Outside the window every iterate has Dice 1: the one of highest loss (the last, at the top of the box) wins."""
    images, labels = window_problem
    adv = PGD(0.05, steps=3, alpha=0.05, loss=channel_2, relative=False, clip=None)(Window(), images, labels)
    assert torch.allclose(adv, images + 0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"restarts": 0}, r"restarts must be an integer >= 1, got 0"),
        ({"seed": 1.5}, r"seed must be an integer, got 1.5"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        PGD(0.05, **kwargs)


@pytest.mark.parametrize("attack_class", [PGD, APGD])
def test_samples_stopped_in_the_first_restart_skip_the_later_ones(attack_class, trained_net, tumours):
    """A criterion that stops every sample at its first step: the later restarts compute nothing and report no
    records (it used to fail on a record of nothing), and each sample keeps the iterate it stopped at."""
    images, labels = tumours
    records = []
    attack = attack_class(0.05, steps=3, restarts=2, stop=lambda probe: torch.ones(len(probe.images), dtype=torch.bool))
    adv = attack(trained_net, images, labels, callback=records.append)
    assert {r.restart for r in records} == {0}
    assert ((adv - images).abs() <= 0.05 * images.abs().amax(dim=(1, 2, 3, 4), keepdim=True) * (1 + 1e-6)).all()
