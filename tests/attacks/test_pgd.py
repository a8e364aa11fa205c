"""PGD (common/attacks/pgd.py): random start with its own generator, restarts keeping the per-sample worst."""

from __future__ import annotations

import pytest
import torch

from common.attacks import LOSSES, PGD, IterativeFGSM
from common.errors import RobustsegError
from common.losses import SoftDiceLoss


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


def test_restarts_keep_the_worst_restart_per_sample(trained_net, tumours):
    images, labels = tumours
    records = []
    adv = PGD(0.1, steps=2, restarts=3, loss="ce")(trained_net, images, labels, callback=records.append)
    assert [(r.restart, r.step) for r in records] == [(r, s) for r in range(3) for s in (1, 2)]
    finals = [r.adversarial for r in records if r.step == 2]
    with torch.no_grad():
        losses = torch.stack([per_sample_ce(trained_net(x), labels) for x in finals])  # (restarts, B)
    best = losses.argmax(0)
    for i in range(len(images)):
        assert torch.equal(adv[i], finals[best[i]][i])
    assert not all(torch.equal(finals[0], x) for x in finals[1:])


def per_sample_ce(logits, labels):
    ce = LOSSES["ce"]()
    return torch.stack([ce(logits[i : i + 1], labels[i : i + 1]) for i in range(len(logits))])


def test_restart_scoring_uses_soft_dice_per_sample(trained_net, tumours):
    images, labels = tumours
    records = []
    adv = PGD(0.1, steps=1, restarts=2)(trained_net, images, labels, callback=records.append)
    loss = SoftDiceLoss()
    with torch.no_grad():
        for i in range(len(images)):
            scores = [loss(trained_net(r.adversarial[i : i + 1]), labels[i : i + 1]) for r in records]
            assert loss(trained_net(adv[i : i + 1]), labels[i : i + 1]) == max(scores)


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
