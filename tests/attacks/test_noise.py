"""The random-sign noise control (common/attacks/noise.py): a corner of the epsilon-ball, seeded, weaker than FGSM."""

from __future__ import annotations

import pytest
import torch

from common.attacks import FGSM, RandomSign
from common.attacks.base import hard_dice


@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.05])
@pytest.mark.parametrize("seed", [0, 3])
def test_is_a_random_corner_of_the_ball(epsilon, seed, trained_net, tumours):
    """Without clipping every voxel moves by exactly +-epsilon, with the signs of the seeded draw."""
    images, labels = tumours
    noisy = RandomSign(epsilon, seed=seed, relative=False, clip=None)(trained_net, images, labels)
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (1, *images.shape[1:]), generator=generator).float() * 2 - 1
    torch.testing.assert_close(noisy, images + epsilon * signs)


def test_relative_epsilon_and_clipping(trained_net, tumours):
    images, labels = tumours
    noisy = RandomSign(0.05, seed=1)(trained_net, images, labels)
    scale = images.abs().flatten(1).amax(1).view(-1, 1, 1, 1, 1)
    assert float(((noisy - images).abs() - 0.05 * scale).max()) <= 1e-6  # inside the ball
    low, high = images.flatten(1).amin(1), images.flatten(1).amax(1)
    assert bool((noisy.flatten(1).amin(1) >= low).all()) and bool((noisy.flatten(1).amax(1) <= high).all())
    assert float((noisy != images).float().mean()) > 0.9  # clipping only stops the voxels at the range's ends


def test_seeds_differ_and_repeat(trained_net, tumours):
    images, labels = tumours
    first, again = (RandomSign(0.05, seed=0)(trained_net, images, labels) for _ in range(2))
    other = RandomSign(0.05, seed=1)(trained_net, images, labels)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_takes_no_gradient_and_reports_the_clean_pass(trained_net, tumours, loss_of):
    images, labels = tumours
    before = [p.detach().clone() for p in trained_net.parameters()]
    records = []
    RandomSign(0.05)(trained_net, images, labels, callback=records.append)
    assert len(records) == 1 and records[0].step == 1
    assert torch.isnan(records[0].zero_grad_fractions).all()
    assert all(p.grad is None for p in trained_net.parameters())
    assert all(torch.equal(p, q) for p, q in zip(trained_net.parameters(), before, strict=True))
    with torch.no_grad():
        clean = trained_net(images).argmax(1)
    assert torch.equal(records[0].predictions[:, 0], torch.tensor([0, 1, 2, 4])[clean])


@pytest.mark.parametrize("epsilon", [0.05, 0.1])
def test_fgsm_hurts_more_than_noise_of_its_size(epsilon, trained_net, tumours):
    """What the sanity table's check 5 expects of a working attack on a trained model."""
    images, labels = tumours
    with torch.no_grad():
        noise = hard_dice(trained_net(RandomSign(epsilon)(trained_net, images, labels)), labels)
        fgsm = hard_dice(trained_net(FGSM(epsilon)(trained_net, images, labels)), labels)
    assert float(fgsm.mean()) < float(noise.mean())
