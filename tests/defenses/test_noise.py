"""Uniform-noise augmentation: the L-infinity ball, the clean range, determinism and prob."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.defenses import RandUniformNoise, RandUniformNoised, uniform_noise
from common.errors import RobustsegError


def _image(seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = scale * torch.rand(4, 8, 8, 8, generator=generator)
    image[:, :2] = 0.0  # background at the minimum, where clipping matters
    return image


def _check_bounds(noisy: torch.Tensor, clean: torch.Tensor, radius: float, relative: bool, clip: bool) -> None:
    bound = radius * (clean.abs().max() if relative else 1.0)
    assert (noisy - clean).abs().max() <= bound * (1 + 1e-6)
    if clip:
        assert noisy.min() >= clean.min() and noisy.max() <= clean.max()


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_transform_stays_in_ball_and_range(relative, clip):
    clean = _image()
    noisy = RandUniformNoise(radius=0.02, relative=relative, clip=clip).set_random_state(0)(clean)
    _check_bounds(noisy, clean, 0.02, relative, clip)
    diff = noisy - clean
    # the noise fills the ball: uniform, so it nearly reaches +-r and has mean close to 0 inside the image
    bound = 0.02 * (clean.abs().max() if relative else 1.0)
    interior = diff[:, 4:]
    assert interior.abs().max() > 0.95 * bound
    assert abs(interior.mean()) < 0.05 * bound
    if clip:
        assert (diff[:, :2] >= 0).all()  # background at the minimum can only go up
    else:
        assert (diff[:, :2] < 0).any()


def test_transform_is_deterministic_with_set_random_state():
    clean = _image()
    a = RandUniformNoise(radius=0.01).set_random_state(seed=5)
    b = RandUniformNoise(radius=0.01).set_random_state(seed=5)
    first = a(clean)
    assert torch.equal(first, b(clean))
    assert not torch.equal(first, a(clean))  # the next draw differs
    c = RandUniformNoise(radius=0.01).set_random_state(seed=6)
    assert not torch.equal(first, c(clean))


@pytest.mark.parametrize("prob, expected", [(0.0, 0), (1.0, 20)])
def test_prob_extremes(prob, expected):
    transform = RandUniformNoise(radius=0.01, prob=prob).set_random_state(0)
    clean = _image()
    assert sum(not torch.equal(transform(clean), clean) for _ in range(20)) == expected


def test_prob_half_perturbs_about_half():
    transform = RandUniformNoise(radius=0.01, prob=0.5).set_random_state(0)
    clean = _image()
    changed = sum(not torch.equal(transform(clean), clean) for _ in range(200))
    assert 70 < changed < 130


def test_transform_keeps_type_and_meta():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    clean = MetaTensor(_image(), affine=affine)
    noisy = RandUniformNoise(radius=0.01).set_random_state(0)(clean)
    assert isinstance(noisy, MetaTensor) and torch.equal(noisy.affine, affine) and noisy.dtype == clean.dtype
    from_numpy = RandUniformNoise(radius=0.01).set_random_state(0)(clean.numpy())
    assert torch.equal(torch.as_tensor(from_numpy), noisy.as_tensor())


def test_dictionary_transform_matches_array_transform():
    clean = _image()
    d = RandUniformNoised(keys="image", radius=0.01).set_random_state(3)({"image": clean, "label": torch.ones(1)})
    # as MONAI's RandGaussianNoised: the wrapped array transform has its own RNG with the same seed
    assert torch.equal(d["image"], RandUniformNoise(radius=0.01).set_random_state(3)(clean))
    _check_bounds(d["image"], clean, 0.01, True, True)
    assert torch.equal(d["label"], torch.ones(1))
    again = RandUniformNoised(keys="image", radius=0.01).set_random_state(3)({"image": clean})
    assert torch.equal(again["image"], d["image"])
    skipped = RandUniformNoised(keys="image", radius=0.01, prob=0.0)({"image": clean})
    assert torch.equal(skipped["image"], clean)


@pytest.mark.parametrize("relative", [True, False])
def test_batched_noise_per_sample_scale(relative):
    clean = torch.stack([_image(0, scale=1.0), _image(1, scale=10.0)])
    noisy = uniform_noise(clean, radius=0.01, relative=relative, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        _check_bounds(noisy[i], clean[i], 0.01, relative, True)
    spread = (noisy - clean).flatten(1).abs().amax(dim=1)
    if relative:  # the second sample is 10x brighter, so its ball is 10x larger
        assert spread[1] > 5 * spread[0]
    else:
        assert spread.max() <= 0.01 * (1 + 1e-6)


def test_batched_noise_generator_and_inputs():
    clean = torch.stack([_image(0), _image(1)])
    before = clean.clone()
    a = uniform_noise(clean, generator=torch.Generator().manual_seed(1))
    b = uniform_noise(clean, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(clean, before)
    assert not torch.equal(a, uniform_noise(clean, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(uniform_noise(clean, radius=0.0), clean)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RandUniformNoise(radius=-0.01), "radius"),
        (lambda: RandUniformNoise(radius=2.0), "radius"),
        (lambda: RandUniformNoise(radius=float("nan")), "radius"),
        (lambda: RandUniformNoise(prob=1.5), "prob"),
        (lambda: RandUniformNoised(keys="image", radius=-1.0), "radius"),
        (lambda: RandUniformNoised(keys="image", prob=-0.1), "prob"),
        (lambda: uniform_noise(torch.zeros(1, 1, 2, 2), radius=-0.1), "radius"),
        (lambda: uniform_noise(torch.zeros(1, 1, 2, 2, dtype=torch.long)), "floating-point"),
        (lambda: RandUniformNoise()(np.zeros((1, 2, 2), dtype=np.int64)), "floating-point"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(RobustsegError, match=match) as info:
        make()
    assert "\n" not in str(info.value)
