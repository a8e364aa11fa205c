"""Attacks on a generic task's network (``task=ClassTask(...)``): labels are class indices, losses, predictions and
the best iterate follow the task's classes; the contract of every attack holds there too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.attacks import PGD, STOP_CRITERIA, AttackProbe
from common.data.task import BRATS, ClassTask
from common.errors import RobustsegError

from .conftest import GRADIENT_FREE, TARGETED, build_attack, registered_attacks

TASK = ClassTask(("background", "organ", "lesion"))


@pytest.fixture(scope="module")
def problem():
    """A 3-class blob problem on one channel (2 samples, 12^3) and a small conv net fitted to it for a few steps."""
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(12.0)] * 3, indexing="ij"))
    labels = torch.zeros(2, 1, 12, 12, 12, dtype=torch.long)
    for b, centre in enumerate(([5.0, 6.0, 6.0], [7.0, 5.0, 6.0])):
        distance = (grid - torch.tensor(centre).view(3, 1, 1, 1)).norm(dim=0)
        labels[b, 0][distance < 4] = 1
        labels[b, 0][distance < 2] = 2
    images = labels.float() * 0.4 + 0.05 * torch.randn(labels.shape, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 3, 3, padding=1))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(images), labels[:, 0]).backward()
        optimizer.step()
    net.eval()
    assert float(TASK.hard_dice(net(images), labels).min()) > 0.8, "the toy net should segment its blobs"
    return net, images, labels


@pytest.mark.parametrize("name", registered_attacks())
def test_every_attack_keeps_its_contract_on_a_generic_task(name, problem):
    net, images, labels = problem
    before = [p.detach().clone() for p in net.parameters()]
    kept = images.clone(), labels.clone()
    settings = {"target": 0} if name in TARGETED else {}
    loss = "masked_ce" if name in ("PGD", "APGD") else "soft_dice"
    attack = build_attack(name, 0.1, task=TASK, loss=loss, **settings)
    adversarial = attack(net, images, labels)
    assert torch.equal(images, kept[0]) and torch.equal(labels, kept[1])
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    scale = images.flatten(1).abs().max(1).values.view(-1, 1, 1, 1, 1)
    assert ((adversarial - images).abs() <= 0.1 * scale * (1 + 1e-6)).all()
    low, high = images.amin((1, 2, 3, 4), keepdim=True), images.amax((1, 2, 3, 4), keepdim=True)
    assert (adversarial >= low).all() and (adversarial <= high).all()
    torch.testing.assert_close(attack(net, images, labels), adversarial)  # deterministic
    assert "task=ClassTask(names=('background', 'organ', 'lesion')" in repr(attack)
    if name in GRADIENT_FREE or name in TARGETED:
        return
    with torch.no_grad():
        clean, attacked = TASK.hard_dice(net(images), labels), TASK.hard_dice(net(adversarial), labels)
    assert (attacked < clean).all(), (name, clean, attacked)


def test_pgd_keeps_the_iterate_of_lowest_class_dice(problem):
    """The best iterate is chosen by the task's Dice: the result scores no more than any iterate the attack went
    through, nor than the best Dice its records report."""
    net, images, labels = problem
    records = []
    attack = PGD(0.1, steps=5, restarts=2, loss="ce", task=TASK)
    adversarial = attack(net, images, labels, callback=records.append)
    with torch.no_grad():
        final = TASK.hard_dice(net(adversarial), labels)
        iterates = torch.stack([TASK.hard_dice(net(r.adversarial), labels) for r in records])
    best = torch.stack([r.best_dices for r in records]).min(0).values.to(final.dtype)
    assert (final <= iterates.min(0).values + 1e-6).all() and (final <= best + 1e-6).all()
    assert (final < TASK.hard_dice(net(images), labels).detach()).all()


def test_dice_zero_stops_by_the_tasks_dice(problem):
    net, images, labels = problem
    logits = net(images).detach()
    probe = AttackProbe(1, 0, images, logits, labels, torch.zeros(2), torch.zeros(2), TASK)
    assert not STOP_CRITERIA["dice_zero"](probe).any()
    wrong = torch.roll(logits, 1, dims=1) * -1  # no voxel keeps its class
    probe = AttackProbe(1, 0, images, wrong, torch.where(labels == 0, 1, labels), torch.zeros(2), torch.zeros(2), TASK)
    assert STOP_CRITERIA["dice_zero"](probe).dtype == torch.bool


def test_labels_and_targets_outside_the_classes_are_refused(problem):
    net, images, labels = problem
    with pytest.raises(RobustsegError, match=r"labels: values \[4\]"):
        PGD(0.05, steps=1, task=TASK)(net, images, labels * 2)
    with pytest.raises(RobustsegError, match=r"target must be one of \[0, 1, 2\] \(a class label"):
        build_attack("ti-FGSM", 0.05, target=4, task=TASK)
    with pytest.raises(RobustsegError, match="task must be None"):
        PGD(0.05, task="spleen")
    assert "task" not in repr(PGD(0.05, task=BRATS)) and "task" not in repr(PGD(0.05))
