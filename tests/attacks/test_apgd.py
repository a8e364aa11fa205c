"""APGD (common/attacks/apgd.py): Croce & Hein's checkpoints and step-size rule, per sample; best iterate by Dice."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.attacks import APGD, IterativeFGSM, apgd_checkpoints
from common.attacks.base import hard_dice
from common.errors import RobustsegError


def paper_checkpoints(steps: int) -> list[int]:
    """Croce & Hein (2020), Sec. 3.2, transcribed: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06), w_j = ceil(p_j N_iter), with the fractions in exact hundredths."""
    p = [0, 22]
    while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return sorted({-(-pj * steps // 100) for pj in p})


@pytest.mark.parametrize("steps", [1, 3, 10, 37, 100, 1000])
def test_checkpoints_follow_the_paper(steps):
    assert apgd_checkpoints(steps) == paper_checkpoints(steps)


def test_checkpoints_of_a_hundred_steps():
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


class Peak(nn.Module):
    """One voxel, background everywhere: channel 1 is ``-10 (x - 0.5)^2 - 1``, highest at x = 0.5 (never the argmax)."""

    def forward(self, x: Tensor) -> Tensor:
        peak = -10 * (x - 0.5) ** 2 - 1
        return torch.cat([torch.zeros_like(x), peak, -5 + 0 * x, -5 + 0 * x], 1)


def channel_1(logits: Tensor, labels: Tensor) -> Tensor:
    return logits[:, 1].mean()


def reference_apgd(x0: float, eta: float, steps: int, lo: float, hi: float) -> list[float]:
    """Algorithm 1 of Croce & Hein (2020) on f(x) = -10 (x - 0.5)^2 - 1 of one scalar: the iterate after each step."""

    def f(x):
        return -10 * (x - 0.5) ** 2 - 1, math.copysign(1.0, 0.5 - x) if x != 0.5 else 0.0

    def project(x):
        return min(max(x, lo), hi)

    checkpoints = [w for w in paper_checkpoints(steps) if 0 < w < steps]
    x, (fx, g) = x0, f(x0)
    x_prev, f_max, x_max, g_max = x, fx, x, g
    successes, last_best, reduced_last, last_w, path = 0, f_max, False, 0, []
    for k in range(steps):
        z = project(x + eta * g)
        x_new = z if k == 0 else project(x + 0.75 * (z - x) + 0.25 * (x - x_prev))
        f_new, g_new = f(x_new)
        successes += f_new > fx
        x_prev, x, fx, g = x, x_new, f_new, g_new
        if f_new > f_max:
            f_max, x_max, g_max = f_new, x_new, g_new
        if k + 1 in checkpoints:
            reduce = successes < 0.75 * (k + 1 - last_w) or (not reduced_last and f_max == last_best)
            if reduce:
                eta, x, fx, g = eta / 2, x_max, f_max, g_max
            reduced_last, last_best, last_w, successes = reduce, f_max, k + 1, 0
        path.append(x)
    return path


def test_step_size_halves_at_checkpoints_as_algorithm_1_says():
    """On a one-voxel concave peak the iterates overshoot and oscillate; the records follow a scalar transcription
    of Algorithm 1 step by step, and the step length shrinks after the checkpoints."""
    image, label = torch.full((1, 1, 1, 1, 1), 0.5), torch.zeros((1, 1, 1, 1, 1), dtype=torch.long)
    records = []
    attack = APGD(0.3, steps=30, alpha=0.37, loss=channel_1, relative=False, clip=None)
    attack(Peak(), image, label, callback=records.append)
    start = 0.2 + 0.6 * float(torch.rand((1, 1, 1, 1, 1), generator=torch.Generator().manual_seed(0)))
    expected = reference_apgd(start, 0.37, 30, 0.2, 0.8)
    path = [float(r.adversarial) for r in records]
    assert path == pytest.approx(expected, abs=1e-6)
    moves = [abs(b - a) for a, b in zip([start, *path], path, strict=False)]
    assert max(moves[-5:]) < 0.37 / 4  # halved at least twice
    assert max(moves[:3]) > 0.3


class Linear(nn.Module):
    """A per-voxel linear 'segmenter' of one input channel: logits = w x + b (a 1x1x1 convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.tensor([-1.0, 0.5, 1.0, 2.0]).view(1, 4, 1, 1, 1)
        self.b = torch.tensor([10.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1, 1)  # background wins everywhere in the box

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x + self.b


def test_reaches_the_analytic_optimum_of_a_linear_segmenter():
    """With labels 0 and 4 only, each voxel's cross-entropy is monotone in its input (w_0 is the smallest weight,
    w_3 the largest): the maximum over the box is the upper corner for background voxels and the lower corner for
    label-4 voxels. The prediction never changes, so every iterate ties on Dice and the highest loss wins."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((2, 1, 4, 4, 4), generator=generator)
    labels = torch.where(torch.rand((2, 1, 4, 4, 4), generator=generator) < 0.5, 0, 4)
    epsilon = 0.1
    adv = APGD(epsilon, steps=10, loss="ce", relative=False, clip=None)(Linear(), images, labels)
    corner = torch.where(labels == 0, images + epsilon, images - epsilon)
    torch.testing.assert_close(adv, corner)
    with torch.no_grad():
        optimum = F.cross_entropy(Linear()(corner), torch.where(labels == 4, 3, 0)[:, 0])
        reached = F.cross_entropy(Linear()(adv), torch.where(labels == 4, 3, 0)[:, 0])
    assert float(reached) == pytest.approx(float(optimum), rel=1e-6)


def test_restarts_keep_the_best_per_sample(trained_net, tumours):
    images, labels = tumours
    records = []
    adv = APGD(0.1, steps=3, restarts=3)(trained_net, images, labels, callback=records.append)
    assert [(r.restart, r.step) for r in records] == [(r, s) for r in range(3) for s in (1, 2, 3)]
    with torch.no_grad():
        dice = torch.stack([hard_dice(trained_net(r.adversarial), labels) for r in records])  # (iterates, B)
        result = hard_dice(trained_net(adv), labels)
        single = hard_dice(trained_net(APGD(0.1, steps=3)(trained_net, images, labels)), labels)
    assert (result <= dice.min(0).values).all()
    assert (result <= single).all()  # restart 0 is the single run: more restarts never hurt a sample
    for i in range(len(images)):
        if result[i] == dice[:, i].min():
            assert any(torch.equal(adv[i], r.adversarial[i]) for r in records)


def test_at_least_as_strong_as_ifgsm(trained_net, tumours):
    """Same epsilon, same number of gradients, same loss: APGD's hard Dice is no higher than i-FGSM's."""
    images, labels = tumours
    with torch.no_grad():
        clean = hard_dice(trained_net(images), labels)
    results = {}
    for attack in (IterativeFGSM(0.03, steps=10, loss="ce"), APGD(0.03, steps=10, loss="ce")):
        adv = attack(trained_net, images, labels)
        with torch.no_grad():
            results[attack.name] = hard_dice(trained_net(adv), labels)
    assert (results["i-FGSM"] < clean).all()
    assert float(results["APGD"].mean()) <= float(results["i-FGSM"].mean())


def test_segpgd_loss_is_told_the_step(trained_net, tumours):
    images, labels = tumours
    seen = []
    attack = APGD(0.05, steps=4, loss="segpgd")
    set_step = attack.loss_fn.set_step
    attack.loss_fn.set_step = lambda step, steps: (seen.append((step, steps)), set_step(step, steps))
    attack(trained_net, images, labels)
    assert seen == [(t, 4) for t in range(1, 5)]
    seen.clear()
    ifgsm = IterativeFGSM(0.05, steps=3, loss="segpgd")
    set_step_i = ifgsm.loss_fn.set_step
    ifgsm.loss_fn.set_step = lambda step, steps: (seen.append((step, steps)), set_step_i(step, steps))
    ifgsm(trained_net, images, labels)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_radius_schedule_starts_wide_and_ends_in_the_ball(trained_net, tumours):
    images, labels = tumours
    records = []
    attack = APGD(0.05, steps=6, radius_schedule=2.0)
    adv = attack(trained_net, images, labels, callback=records.append)
    scale = images.abs().amax((1, 2, 3, 4))
    distance = [(r.adversarial - images).abs().amax((1, 2, 3, 4)) / scale for r in records]
    assert [attack.radius_factor(k) for k in range(7)] == pytest.approx([2, 5 / 3, 4 / 3, 1, 1, 1, 1])
    assert (distance[0] > 0.06).all()  # outside the epsilon-ball while the radius shrinks
    assert all((d <= 0.05 * (1 + 1e-6)).all() for d in distance[2:])
    assert ((adv - images).abs().amax((1, 2, 3, 4)) / scale <= 0.05 * (1 + 1e-6)).all()


class Counting(nn.Module):
    """Wrap a network and remember the batch size of every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.sizes = net, []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(len(x))
        return self.net(x)


def test_stopped_samples_leave_the_batch(trained_net, tumours):
    """Sample 0 stops at the gradient pass of step 2, then sample 1 at step 3: the later passes leave them out, the
    records carry them forward, and the later restart computes nothing for them."""
    images, labels = tumours

    def stop(probe):
        return torch.tensor([probe.step >= 2 + i for i in range(len(probe.images))]) if len(probe.images) == 2 else (
            torch.full((len(probe.images),), probe.step >= 3))  # fmt: skip

    net = Counting(trained_net)
    records = []
    adv = APGD(0.05, steps=5, restarts=2, stop=stop)(net, images, labels, callback=records.append)
    assert net.sizes == [2, 2, 1]  # step 1, step 2 (sample 0 stops), step 3 (sample 1 stops); restart 1: nothing
    assert len(records) == 5 and all(torch.equal(r.adversarial, records[1].adversarial) for r in records[2:])
    # as in the base class, record t marks the samples out of the batch at the gradient pass of step t
    assert records[0].active is None
    assert [r.active.tolist() for r in records[1:]] == [[False, True]] + [[False, False]] * 3
    with torch.no_grad():
        assert (hard_dice(trained_net(adv), labels) <= hard_dice(trained_net(images), labels)).all()


def test_default_step_is_twice_epsilon_and_settings_are_listed():
    attack = APGD(0.05)
    assert attack.alpha == pytest.approx(0.1) and attack.steps == 100
    text = repr(attack)
    assert "restarts=1" in text and "seed=0" in text and "radius_schedule=None" in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"restarts": 0}, r"restarts must be an integer >= 1, got 0"),
        ({"seed": 1.5}, r"seed must be an integer, got 1.5"),
        ({"radius_schedule": 1.0}, r"radius_schedule must be a finite number > 1 .*, got 1.0"),
        ({"radius_schedule": "2"}, r"radius_schedule must be a finite number > 1 .*, got '2'"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        APGD(0.05, **kwargs)
