"""Batches in the attack base class (common/attacks/base.py): per-sample results and records, and early stopping.

Every registered attack (``common.attacks.ATTACKS``) must give each sample of a batch what it gives that sample alone,
so that a batched robustness evaluation writes the numbers of a per-subject one.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from common.attacks import FGSM, PGD, STOP_CRITERIA, AttackProbe, IterativeFGSM, TargetedIterativeFGSM
from common.attacks.base import hard_dice
from common.data.labels import logits_to_labels
from common.errors import RobustsegError

from .conftest import RANDOM_START, build_attack, make_tumours, registered_attacks

DIMS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def three(tumours):
    """Three volumes on different intensity scales ([0, 1], [0, 2], [0, 0.5]): the balls and ranges differ."""
    images, labels = make_tumours(3, seed=5)
    return images * torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1, 1, 1), labels


def _moved_apart(a: Tensor, b: Tensor, step: float) -> float:
    """The fraction of voxels where two results differ by more than float noise (a sign flipped at a near-zero
    gradient moves a voxel by a whole step)."""
    return float(((a - b).abs() > 1e-6 * step).float().mean())


# PGD and APGD with restarts too: their random starts and per-sample choice of iterate must not depend on the batch
CASES = [(name, {}) for name in registered_attacks()] + [
    ("PGD", {"restarts": 3}),
    ("APGD", {"restarts": 2, "radius_schedule": 2.0}),
]


@pytest.mark.parametrize(("name", "settings"), CASES, ids=[f"{n}{s}" for n, s in CASES])
def test_a_batch_gives_each_sample_what_it_gets_alone(name, settings, trained_net, three):
    images, labels = three
    attack = build_attack(name, 0.1, **settings)
    batched, records = [], []
    adv = attack(trained_net, images, labels, callback=records.append)
    for i in range(len(images)):
        alone = []
        single = attack(trained_net, images[i : i + 1], labels[i : i + 1], callback=alone.append)
        # fp32: batched convolutions may round differently, which may flip the sign of a near-zero gradient
        # APGD's momentum and its step-size halving at checkpoints carry a flipped sign on to later iterates: on a
        # 2-core AMD EPYC (AVX-512) with restarts and the radius schedule 0.26 % of the voxels ended apart
        assert _moved_apart(adv[i : i + 1], single, attack.alpha) < (1e-2 if name == "APGD" and settings else 1e-3)
        for record, own in zip(records, alone, strict=True):
            torch.testing.assert_close(record.losses[i : i + 1], own.losses, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(record.zero_grad_fractions[i], own.zero_grad_fractions[0], atol=1e-3, rtol=0,
                                       equal_nan=True)  # NaN for a control that takes no gradient
        batched.append(single)
    assert len(records) == attack.steps * getattr(attack, "restarts", 1)


@pytest.mark.parametrize("name", registered_attacks())
def test_records_are_per_sample_with_the_batch_mean_beside(name, trained_net, three):
    images, labels = three
    records = []
    build_attack(name, 0.05)(trained_net, images, labels, callback=records.append)
    for record in records:
        assert record.losses.shape == record.zero_grad_fractions.shape == (3,)
        assert record.loss == pytest.approx(float(record.losses.mean()))
        assert record.zero_grad_fraction == pytest.approx(float(record.zero_grad_fractions.mean()), nan_ok=True)
        assert record.active is None  # no stop criterion: every sample computed at every step


@pytest.mark.parametrize("name", registered_attacks())
def test_records_carry_the_prediction_of_their_pass(name, trained_net, three):
    """Record k predicts the iterate its gradient was taken at: the clean input, then record k - 1's iterate."""
    images, labels = three
    records = []
    build_attack(name, 0.05)(trained_net, images, labels, callback=records.append)
    inputs = [images] + [r.adversarial for r in records[:-1]]
    if name in RANDOM_START:
        inputs = inputs[1:]  # its first gradient is taken at the random start, not at the clean input
        records = records[1:]
    with torch.no_grad():
        for record, seen in zip(records, inputs, strict=True):
            assert record.predictions is not None and record.predictions.shape == labels.shape
            assert (record.predictions != logits_to_labels(trained_net(seen))).float().mean() < 1e-3


def test_sweep_records_are_per_sample(trained_net, three):
    images, labels = three
    records = []
    sweep = FGSM(0.05).sweep(trained_net, images, labels, [0.01, 0.05], callback=records.append)
    alone = [FGSM(0.05).sweep(trained_net, images[i : i + 1], labels[i : i + 1], [0.01, 0.05]) for i in range(3)]
    for k in range(2):
        for i in range(3):
            assert _moved_apart(sweep[k][i : i + 1], alone[i][k], 0.01) < 1e-3
    assert [r.losses.shape for r in records] == [(3,), (3,)] and torch.equal(records[0].losses, records[1].losses)


def test_pgd_start_does_not_depend_on_the_batch(trained_net, three):
    """With a vanishing step the result is the random start: a sample's start is the one it gets alone, anywhere."""
    images, labels = three
    attack = PGD(0.05, steps=1, alpha=1e-30, clip=None, seed=3)
    batch = attack(trained_net, images, labels)
    for i in range(3):
        assert torch.equal(batch[i : i + 1], attack(trained_net, images[i : i + 1], labels[i : i + 1]))
    swapped = attack(trained_net, images.flip(0), labels.flip(0)).flip(0)
    assert torch.equal(batch, swapped)


class Counting(nn.Module):
    """Wrap a network; remember the batch size of every call; optionally silence (zero logits) some samples."""

    def __init__(self, net: nn.Module, silent: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net, self.silent, self.sizes = net, silent, []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(len(x))
        out = self.net(x)
        if self.silent:
            # the silent samples' logits do not depend on their input at all
            mute = torch.isin(which(x), torch.tensor(self.silent))
            out = torch.where(mute.view(-1, 1, 1, 1, 1), torch.zeros_like(out), out)
        return out


def which(images: Tensor) -> Tensor:
    """Which of the ``three`` volumes each image is, told by its maximum (about 1, 2 and 0.5, moved by <= 10 %)."""
    peak = images.flatten(1).amax(1)
    return torch.where(peak > 1.5, 1, torch.where(peak < 0.75, 2, 0))


def stop_sample_one_at_step_two(probe: AttackProbe) -> Tensor:
    return (which(probe.images) == 1) & (probe.step >= 2)


@pytest.mark.parametrize("attack_class", [IterativeFGSM, TargetedIterativeFGSM])
def test_a_stopped_sample_keeps_its_iterate_and_leaves_the_batch(attack_class, trained_net, three):
    images, labels = three
    net = Counting(trained_net)
    records = []
    attack = attack_class(0.1, steps=4, stop=stop_sample_one_at_step_two)
    adv = attack(net, images, labels, callback=records.append)
    assert net.sizes == [3, 3, 2, 2]  # sample 1 is out after the gradient of step 2
    plain_records = []
    plain = attack_class(0.1, steps=4)(trained_net, images, labels, callback=plain_records.append)
    kept = [0, 2]
    assert _moved_apart(adv[kept], plain[kept], attack.alpha) < 1e-3  # the others are not affected
    # sample 1 keeps the iterate its gradient of step 2 was taken at: i-FGSM's iterate after step 1
    assert torch.equal(adv[1], records[0].adversarial[1])
    assert torch.equal(records[0].adversarial, plain_records[0].adversarial)
    assert [None if r.active is None else r.active.tolist() for r in records] == [None] + [[True, False, True]] * 3
    for record in records[2:]:
        assert torch.equal(record.adversarial[1], adv[1])
        assert record.losses[1] == records[1].losses[1]  # carried forward


def test_the_vanished_gradient_criterion_changes_nothing(trained_net, three):
    """A sample whose logits do not depend on its input has a zero gradient: it leaves, with the same results."""
    images, labels = three
    silent = Counting(trained_net, silent=(0,))
    stopping, plain = [], []
    adv = IterativeFGSM(0.1, steps=3, stop="gradient_vanished")(silent, images, labels, callback=stopping.append)
    assert silent.sizes == [3, 2, 2]
    reference = IterativeFGSM(0.1, steps=3)(Counting(trained_net, silent=(0,)), images, labels, callback=plain.append)
    assert torch.equal(adv[0], images[0])
    assert _moved_apart(adv, reference, 0.1 / 3) < 1e-3
    for a, b in zip(stopping, plain, strict=True):
        assert torch.equal(a.adversarial[0], b.adversarial[0])
        assert a.zero_grad_fractions[0] == b.zero_grad_fractions[0] == 1.0


def test_the_dice_zero_criterion_stops_a_lost_sample(trained_net, three):
    """Zero logits predict background everywhere: Dice 0 in every region of a subject with a tumour."""
    images, labels = three
    net = Counting(trained_net, silent=(2,))
    adv = IterativeFGSM(0.1, steps=3, stop="dice_zero")(net, images, labels)
    assert net.sizes == [3, 2, 2] and torch.equal(adv[2], images[2])


def test_pgd_stops_a_sample_for_its_later_restarts(trained_net, three):
    images, labels = three
    net = Counting(trained_net)
    records = []
    attack = PGD(0.1, steps=2, restarts=3, stop=stop_sample_one_at_step_two)
    adv = attack(net, images, labels, callback=records.append)
    # restart 0: 3, 3 (sample 1 stops at step 2), scoring the last iterate of the other two; restarts 1 and 2: two
    # samples each, and their last iterates
    assert net.sizes == [3, 3, 2, 2, 2, 2, 2, 2, 2]
    stopped_at = records[0].adversarial[1]  # restart 0, the iterate after step 1
    assert all(torch.equal(r.adversarial[1], stopped_at) for r in records[1:])
    # its result is the better (by hard Dice, then loss) of the two iterates it went through: the start and this one
    start = PGD(0.1, steps=1, alpha=1e-30, restarts=1)(trained_net, images, labels)[1]  # the same first draw
    with torch.no_grad():
        candidates = torch.stack([start, stopped_at])
        dice = hard_dice(trained_net(candidates), labels[[1, 1]])
    assert torch.equal(adv[1], candidates[int(dice.argmin())]) or bool(dice[0] == dice[1])
    plain = PGD(0.1, steps=2, restarts=3)(trained_net, images, labels)
    assert _moved_apart(adv[[0, 2]], plain[[0, 2]], attack.alpha) < 1e-3


def test_stop_is_listed_only_when_set():
    assert "stop" not in repr(IterativeFGSM(0.05))
    assert "stop='dice_zero'" in repr(IterativeFGSM(0.05, stop="dice_zero"))
    assert "stop=stop_sample_one_at_step_two" in repr(PGD(0.05, stop=stop_sample_one_at_step_two))
    assert set(STOP_CRITERIA) == {"gradient_vanished", "dice_zero"}


@pytest.mark.parametrize(
    ("stop", "match"),
    [
        ("early", r"stop must be None, one of \['dice_zero', 'gradient_vanished'\] or a callable"),
        (3, r"stop must be None, one of .* got 3"),
    ],
)
def test_bad_stop_settings_are_refused(stop, match):
    with pytest.raises(RobustsegError, match=match):
        IterativeFGSM(0.05, stop=stop)


@pytest.mark.parametrize(
    "verdict",
    [lambda probe: probe.losses, lambda probe: torch.zeros(1, dtype=torch.bool), lambda probe: None],
    ids=["float", "wrong shape", "None"],
)
def test_a_criterion_must_answer_per_sample(verdict, trained_net, three):
    with pytest.raises(RobustsegError, match=r"stop: the criterion must return a boolean tensor of shape \(3,\)"):
        IterativeFGSM(0.05, steps=1, stop=verdict)(trained_net, *three)
