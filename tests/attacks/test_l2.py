"""The L2 threat model (``norm="l2"``, common/attacks/base.py): projection, step, random start, PGD-L2 and APGD-L2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from common.attacks import APGD, PGD, ThreatModel, make_attack
from common.attacks.base import ascent_direction, hard_dice
from common.errors import RobustsegError

from .conftest import l2_distance, make_tumours

DIMS = (1, 2, 3, 4)


def numpy_projection(images, clean, radius, lo, hi):
    """The L2 projection then the range clamp, transcribed sample by sample from AutoAttack's APGD-L2 (Croce & Hein
    2020): ``x0 + delta * min(1, eps / ||delta||_2)``, then ``clip(lo, hi)``."""
    out = []
    for i, (x, x0) in enumerate(zip(images, clean, strict=True)):
        r = radius[i] if np.ndim(radius) else radius
        delta = x - x0
        length = float(np.sqrt((delta.astype(np.float64) ** 2).sum()))
        y = x0 + delta * (r / length) if length > r else x
        low, high = (lo[i], hi[i]) if np.ndim(lo) else (lo, hi)
        out.append(y if low is None else np.clip(y, low, high))
    return np.stack(out)


PROJECTIONS = {
    "outside, inside, at the centre": (np.array([0.5, 0.5, 0.5]), None, None),
    "per-sample radius": (np.array([0.1, 2.0, 0.0]), None, None),
    "range clamps after the ball": (np.array([0.5, 0.5, 0.5]), 0.0, 1.0),
    "per-sample range": (np.array([0.3, 0.3, 0.3]), np.array([0.25, 0.0, 0.3]), np.array([0.75, 1.0, 0.7])),
    "radius zero": (np.array([0.0, 0.0, 0.0]), 0.0, 1.0),
    "clean voxels outside the range": (np.array([0.05, 0.05, 0.05]), 0.45, 0.55),
}
"""Projection cases: radii (per sample) and the range (none, numbers, or per sample); the clean values lie in
[0.3, 0.7], inside every range but the last, where the range wins over the ball."""


@pytest.mark.parametrize("case", PROJECTIONS)
def test_projection_matches_a_direct_transcription(case):
    radius, lo, hi = PROJECTIONS[case]
    generator = np.random.default_rng(0)
    clean = generator.uniform(0.3, 0.7, size=(3, 2, 3, 2)).astype(np.float32)
    step = generator.normal(size=clean.shape).astype(np.float32)
    images = clean + step * np.array([1.0, 0.01, 0.0], dtype=np.float32).reshape(3, 1, 1, 1)  # out, in, centre
    shape = (3, 1, 1, 1)
    threat = ThreatModel(
        "l2",
        torch.from_numpy(clean),
        torch.from_numpy(radius.astype(np.float32)).view(shape),
        lo if not np.ndim(lo) else torch.from_numpy(lo.astype(np.float32)).view(shape),
        hi if not np.ndim(hi) else torch.from_numpy(hi.astype(np.float32)).view(shape),
    )
    projected = threat.project(torch.from_numpy(images))
    expected = numpy_projection(images, clean, radius, lo, hi)
    np.testing.assert_allclose(projected.numpy(), expected, rtol=0, atol=1e-6)
    inside = l2_distance(projected, threat.clean) <= torch.from_numpy(radius).float() * (1 + 1e-6) + 1e-7
    # the clamp after the L2 projection only moves a value towards its clean one, when the clean one is in range
    assert inside.all() == (case != "clean voxels outside the range")


def test_projection_keeps_a_point_inside_the_ball_bit_for_bit():
    clean = torch.rand((2, 4, 3, 3, 3), generator=torch.Generator().manual_seed(0))
    images = clean + 1e-3
    threat = ThreatModel("l2", clean, 1.0, None, None)
    assert torch.equal(threat.project(images), images)


def test_linf_projection_is_the_box_clamp():
    clean = torch.rand((2, 4, 3, 3, 3), generator=torch.Generator().manual_seed(0))
    images = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    lower, upper = clean - 0.1, clean + 0.1
    assert torch.equal(ThreatModel("linf", clean, 0.1, lower, upper).project(images), torch.clamp(images, lower, upper))


@pytest.mark.parametrize("magnitude", [1.0, 1e-30, 1e30])
def test_l2_direction_has_unit_norm_and_zero_gradients_stay(magnitude):
    """Per sample: unit L2 norm, the gradient's direction; a zero gradient gives 0 (no NaN); tiny gradients, whose
    squares underflow in float32, and huge ones, whose squares overflow, still give unit length."""
    grad = torch.randn((3, 4, 5, 5, 5), generator=torch.Generator().manual_seed(0)) * magnitude
    grad[1] = 0
    direction = ascent_direction(grad, "l2")
    norms = direction.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[[0, 2]], torch.ones(2))
    assert torch.equal(direction[1], torch.zeros_like(direction[1]))
    torch.testing.assert_close(direction[0], grad[0] / grad[0].double().norm().float())
    assert torch.equal(ascent_direction(grad, "linf"), grad.sign())


def test_l2_random_start_is_in_the_ball_near_its_sphere_and_shared_by_the_batch(trained_net, tumours):
    """With a vanishing step the result is the random start: uniform in the L2 ball, so for 16384 values at radius
    ``eps * u^(1/16384)`` (within 1e-3 of the sphere unless u < 1e-7); one draw for the batch, each scaled to its own
    ball; another seed, another start."""
    images, labels = tumours
    attack = PGD(1.0, steps=1, alpha=1e-30, norm="l2", relative=False, clip=None)
    start = attack(trained_net, images, labels)
    distance = l2_distance(start, images)
    assert (distance <= 1.0 + 1e-6).all() and (distance > 0.999).all()
    torch.testing.assert_close(start[0] - images[0], start[1] - images[1])
    other = PGD(1.0, steps=1, alpha=1e-30, norm="l2", relative=False, clip=None, seed=1)(trained_net, images, labels)
    assert not torch.allclose(other, start)


def test_l2_random_point_is_uniform_in_the_ball():
    """The exact uniform draw, checked where it differs from the sphere: in d = 3 (one sample of three values) a
    uniform point of the ball of radius R lies within r of the centre with probability (r / R)^3, and its
    coordinates have mean 0. 4000 seeds; the tolerances are about 4 standard errors."""
    clean = torch.zeros((1, 3, 1))
    threat = ThreatModel("l2", clean, 2.0, None, None)
    points = torch.cat([threat.random_point(torch.Generator().manual_seed(seed)) for seed in range(4000)])
    depth = points.flatten(1).norm(dim=1) / 2.0
    assert (depth <= 1 + 1e-6).all()
    for fraction in (0.5, 0.8, 0.95):
        assert float((depth < fraction).float().mean()) == pytest.approx(fraction**3, abs=0.035)
    assert points.mean(0).abs().max() < 0.06


class Net2D(nn.Sequential):
    """Two 2D convolutions: 4 contrasts in, 4 BraTS channels out."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))


@pytest.fixture(scope="module")
def scaled_volumes():
    """Three volumes on different intensity scales ([0, 1], [0, 2], [0, 0.5]), so the balls differ per sample."""
    images, labels = make_tumours(3, seed=5)
    return images * torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1, 1, 1), labels


@pytest.mark.parametrize("attack_class", [PGD, APGD])
@pytest.mark.parametrize("spatial", ["2D", "3D"])
@pytest.mark.parametrize("epsilon", [0.5, 3.0])
def test_l2_norm_of_the_perturbation_within_epsilon(attack_class, spatial, epsilon, trained_net, scaled_volumes):
    images, labels = scaled_volumes
    net: nn.Module = trained_net
    if spatial == "2D":
        images, labels, net = images[..., 8], labels[..., 8], Net2D().eval()
    dims = tuple(range(1, images.ndim))
    records = []
    adv = attack_class(epsilon, steps=5, norm="l2")(net, images, labels, callback=records.append)
    radius = epsilon * images.abs().amax(dims)
    for iterate in [adv] + [r.adversarial for r in records]:
        assert (l2_distance(iterate, images) <= radius * (1 + 1e-6)).all()
        assert (iterate >= images.amin(dims, keepdim=True)).all() and (iterate <= images.amax(dims, keepdim=True)).all()
    assert (l2_distance(adv, images) > 0.5 * radius).all()


class LinearChannel(nn.Module):
    """A per-voxel linear 'segmenter' of one input channel: channel 1 is ``w x`` with a fixed weight map ``w``;
    background (10) wins every voxel in the ball, so the prediction, and the hard Dice, never change."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([10 + 0 * x, self.weights * x, -10 + 0 * x, -10 + 0 * x], 1)


def channel_1(logits: Tensor, labels: Tensor) -> Tensor:
    return logits[:, 1].mean()


@pytest.mark.parametrize("attack_class", [PGD, APGD])
def test_reaches_the_analytic_l2_optimum_of_a_linear_segmenter(attack_class):
    """The loss ``mean(w x)`` is linear, with gradient ``w / n``: its maximum over the L2 ball (no range) is
    ``x0 + eps * w / ||w||_2``. Every iterate ties on Dice, so the highest loss wins. From a random start on the
    sphere, a step of ``2 eps`` along the gradient then the projection divides the angle to the optimum by about 3,
    so 20 steps reach it (PGD's default ``2.5 eps / steps`` would take hundreds). The loss is flat at the optimum
    (it falls with the square of the angle), so float32 losses pin the point to about 1e-4 (the square root of their
    resolution), the loss itself to 1e-6."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((2, 1, 4, 4, 4), generator=generator)
    labels = torch.zeros((2, 1, 4, 4, 4), dtype=torch.long)
    weights = torch.randn((1, 1, 4, 4, 4), generator=generator)
    epsilon = 0.5
    attack = attack_class(epsilon, steps=20, alpha=2 * epsilon, norm="l2", loss=channel_1, relative=False, clip=None)
    adv = attack(LinearChannel(weights), images, labels)
    optimum = images + epsilon * weights / weights.norm()
    torch.testing.assert_close(adv, optimum, rtol=0, atol=2e-4)
    reached, best = (channel_1(LinearChannel(weights)(x), labels) for x in (adv, optimum))
    assert float(reached) == pytest.approx(float(best), rel=1e-6)


def test_apgd_l2_at_least_as_strong_as_pgd_l2(trained_net, tumours):
    """Same L2 epsilon, same number of gradients, same loss: APGD's hard Dice is no higher than PGD's (as APGD-L-inf
    against i-FGSM in test_apgd.py). Measured: clean 0.93 / 0.87, PGD-L2 0.85 / 0.63, APGD-L2 0.64 / 0.49."""
    images, labels = tumours
    with torch.no_grad():
        clean = hard_dice(trained_net(images), labels)
    results = {}
    for attack in (PGD(1.0, steps=10, norm="l2", loss="ce"), APGD(1.0, steps=10, norm="l2", loss="ce")):
        adv = attack(trained_net, images, labels)
        with torch.no_grad():
            results[attack.name] = hard_dice(trained_net(adv), labels)
    assert (results["PGD"] < clean).all()
    assert float(results["APGD"].mean()) <= float(results["PGD"].mean())


class Constant(nn.Module):
    """Logits that do not depend on the input: the loss gradient is exactly 0 everywhere."""

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, *[1] * (x.ndim - 2))
        return logits + 0 * x.sum(1, keepdim=True)  # in the graph, with a zero gradient


@pytest.mark.parametrize("attack_class", [PGD, APGD])
def test_a_sample_with_zero_gradient_does_not_move(attack_class, tumours):
    images, labels = tumours
    records = []
    attack_class(1.0, steps=3, norm="l2")(Constant(), images, labels, callback=records.append)
    assert all(r.zero_grad_fraction == 1.0 for r in records)
    assert all(torch.equal(r.adversarial, records[0].adversarial) for r in records)
    assert torch.isfinite(records[0].adversarial).all()


def test_radius_schedule_shrinks_the_l2_ball(trained_net, tumours):
    images, labels = tumours
    records = []
    adv = APGD(1.0, steps=6, norm="l2", radius_schedule=2.0)(trained_net, images, labels, callback=records.append)
    scale = images.abs().amax(DIMS)
    distance = [l2_distance(r.adversarial, images) / scale for r in records]
    assert (distance[0] > 1.2).all() and (distance[0] <= 2 * (1 + 1e-6)).all()  # outside the epsilon-ball at first
    assert all((d <= 1 + 1e-6).all() for d in distance[2:])
    assert (l2_distance(adv, images) / scale <= 1 + 1e-6).all()


@pytest.mark.parametrize(("name", "settings"), [("PGD", {"restarts": 2}), ("APGD", {"restarts": 2})])
def test_l2_batch_gives_each_sample_what_it_gets_alone(name, settings, trained_net, scaled_volumes):
    """The L2 norms, steps and starts are per sample: a batch equals its samples attacked alone (up to the float
    rounding of batched convolutions, which moves the normalised gradient only slightly)."""
    images, labels = scaled_volumes
    attack = make_attack({"name": name, "epsilon": 1.0, "steps": 3, "norm": "l2", **settings})
    adv = attack(trained_net, images, labels)
    for i in range(len(images)):
        alone = attack(trained_net, images[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(adv[i : i + 1], alone, rtol=0, atol=1e-5)


def test_l2_is_listed_beside_epsilon_and_linf_is_not_listed():
    """``repr`` (the CSV's attack_config) names the L2 threat model; an L-inf attack's repr is what it was before
    ``norm`` existed, so earlier rows still match, and ``norm="linf"`` is the default exactly."""
    assert repr(PGD(0.5, norm="l2")).startswith("PGD(epsilon=0.5, norm='l2', steps=10, alpha=0.125, ")
    assert repr(APGD(0.5, norm="l2")).startswith("APGD(epsilon=0.5, norm='l2', steps=100, alpha=1.0, ")
    assert "norm" not in repr(PGD(0.05)) and repr(PGD(0.05, norm="linf")) == repr(PGD(0.05))
    assert make_attack({"name": "PGD", "norm": "l2", "epsilon": 0.5}).norm == "l2"


def test_explicit_linf_is_the_default_bit_for_bit(trained_net, tumours):
    for cls in (PGD, APGD):
        explicit = cls(0.05, steps=3, norm="linf")(trained_net, *tumours)
        assert torch.equal(explicit, cls(0.05, steps=3)(trained_net, *tumours))


def test_relative_l2_epsilon_may_exceed_one():
    """An L2 radius measures the whole perturbation: relative to the maximum intensity it is not bounded by 1."""
    assert PGD(5.0, norm="l2").epsilon == 5.0


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (PGD, {"norm": "L2"}, r"norm must be one of \['linf', 'l2'\] \(the threat model\), got 'L2'\."),
        (APGD, {"norm": "l1"}, r"norm must be one of \['linf', 'l2'\] \(the threat model\), got 'l1'"),
        (PGD, {"norm": 2}, r"norm must be one of \['linf', 'l2'\] \(the threat model\), got 2\."),
        (PGD, {"norm": "l2", "epsilon": -1.0}, r"epsilon must be >= 0, got -1.0"),
        (APGD, {"norm": "l2", "epsilon": float("inf")}, r"epsilon must be a finite number, got inf"),
    ],
)
def test_bad_l2_settings_are_refused_in_one_line(cls, kwargs, match):
    kwargs = {"epsilon": 0.5, **kwargs}
    with pytest.raises(RobustsegError, match=match) as info:
        cls(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["FGSM", "i-FGSM", "ti-FGSM", "random-sign"])
def test_the_papers_sign_attacks_refuse_l2(name):
    message = rf"norm must be one of \['linf'\] for {name} \(it attacks the L-inf ball only; PGD and APGD take 'l2'\)"
    with pytest.raises(RobustsegError, match=message):
        make_attack({"name": name, "epsilon": 0.5, "norm": "l2"})
