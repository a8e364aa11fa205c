"""Gaussian-noise augmentation (common/defenses/gaussian_noise.py): exactly sigma, every channel, unclipped, and the
same noise as the certification's :class:`~common.certify.GaussianSmoothing`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import stats
from torch import Tensor, nn

from common.certify import GaussianSmoothing
from common.defenses import RandSmoothingNoise, RandSmoothingNoised
from common.errors import RobustsegError

SIGMAS = (0.12, 0.25, 0.5)  # issue 17's noise levels (the gaussaug bundles', common.bundles.SIGMAS)
SHAPE = (4, 24, 24, 24)  # 13,824 voxels per channel: the sample std is within 1.2 % of sigma at 2 standard errors


def _noise(transform, image: Tensor) -> Tensor:
    """What a transform (array or dictionary) added to ``image``."""
    out = transform({"image": image})["image"] if isinstance(transform, RandSmoothingNoised) else transform(image)
    return torch.as_tensor(out) - image


def _both(sigma: float, seed: int = 0) -> list:
    """The array and the dictionary transform at ``sigma``, seeded alike."""
    return [
        RandSmoothingNoise(sigma).set_random_state(seed),
        RandSmoothingNoised("image", sigma).set_random_state(seed),
    ]


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("form", [0, 1], ids=["array", "dict"])
def test_noise_has_the_configured_std_on_every_channel(sigma, form):
    """On a constant image the output minus the image is N(0, sigma^2) per channel: not a std drawn from [0, sigma]
    (MONAI's default sample_std=True would give about sigma / sqrt(3) on average), and no channel left out."""
    image = torch.full(SHAPE, 0.5)
    noise = _noise(_both(sigma)[form], image)
    per_channel = noise.flatten(1)
    tolerance = 3 * sigma / np.sqrt(2 * per_channel.shape[1])  # 3 standard errors of a sample std
    for channel, values in enumerate(per_channel):
        assert abs(values.std().item() - sigma) < tolerance, f"channel {channel}"
        assert abs(values.mean().item()) < 3 * sigma / np.sqrt(values.numel()), f"channel {channel}"
        assert stats.normaltest(values.numpy()).pvalue > 1e-3, f"channel {channel} is not Gaussian"
    correlation = np.corrcoef(per_channel.numpy())
    assert np.abs(correlation - np.eye(len(correlation))).max() < 0.05, "independent noise per channel"


@pytest.mark.parametrize("sigma", SIGMAS)
def test_std_is_sigma_for_every_sample_not_drawn_per_sample(sigma):
    """Each of several samples gets noise of std sigma (MONAI's sample_std=True would spread them over [0, sigma])."""
    transform = RandSmoothingNoise(sigma).set_random_state(3)
    stds = [_noise(transform, torch.zeros(SHAPE)).std().item() for _ in range(5)]
    np.testing.assert_allclose(stds, sigma, rtol=0.02)


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_not_clipped_to_the_intensity_range(level):
    """At the ends of the [0, 1] range half the noisy voxels fall outside it, as under GaussianSmoothing."""
    image = torch.full(SHAPE, level)
    out = RandSmoothingNoise(0.25).set_random_state(0)(image)
    outside = ((out < 0) | (out > 1)).float().mean().item()
    assert 0.45 < outside < 0.55


def _smoothing_noise(image: Tensor, sigma: float, n: int) -> Tensor:
    """The noise GaussianSmoothing adds to ``image`` (1, C, *spatial), read off the inputs a recording network sees."""
    seen: list[Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.clone())
            return torch.zeros((x.shape[0], 4, *x.shape[2:]))

    GaussianSmoothing(Recorder(), sigma, batch_size=n).counts(image, n=n, generator=torch.Generator().manual_seed(0))
    return torch.cat(seen) - image


@pytest.mark.parametrize("sigma", SIGMAS)
def test_training_noise_is_the_certification_noise(sigma):
    """The gaussaug bundles train on the distribution robustseg certify samples: same std, unclipped, per voxel and
    channel; a two-sample Kolmogorov-Smirnov test cannot tell them apart. Clipping or a per-sample std on either side
    fails this."""
    image = torch.rand((1, *SHAPE), generator=torch.Generator().manual_seed(1))
    image[:, :, :4] = 0.0  # background at the bottom of the range, where clipping would show
    certified = _smoothing_noise(image, sigma, n=2)
    transform = RandSmoothingNoise(sigma).set_random_state(0)
    trained = torch.stack([_noise(transform, image[0]) for _ in range(2)])
    assert certified.shape == trained.shape
    for noise in (certified, trained):
        assert abs(noise.std().item() - sigma) < 0.01 * sigma
        assert (noise[:, :, :4] < 0).float().mean().item() > 0.45, "the background goes below 0: no clipping"
        assert (image + noise).amax().item() > 1.0
    result = stats.ks_2samp(certified.flatten().numpy(), trained.flatten().numpy())
    assert result.pvalue > 1e-3, f"training and certification noise differ (KS statistic {result.statistic:.4f})"


def test_same_seed_same_noise_and_meta_kept():
    affine = torch.diag(torch.tensor([1.5, 2.0, 3.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.full(SHAPE, 0.5), affine=affine)
    first, second = (RandSmoothingNoised("image", 0.25).set_random_state(7)({"image": image})["image"] for _ in "ab")
    assert torch.equal(first, second)
    assert isinstance(first, MetaTensor) and torch.equal(first.affine, affine) and first.dtype == torch.float32
    other = RandSmoothingNoised("image", 0.25).set_random_state(8)({"image": image})["image"]
    assert not torch.equal(first, other)
    assert torch.equal(image, torch.full(SHAPE, 0.5)), "the input is not modified in place"


@pytest.mark.parametrize("form", [0, 1], ids=["array", "dict"])
def test_default_probability_is_one_and_zero_is_the_identity(form):
    image = torch.full(SHAPE, 0.5)
    always = _both(0.25)[form]
    assert always.prob == 1.0
    assert all(_noise(always, image).abs().amax() > 0 for _ in range(10))
    never = RandSmoothingNoise(0.25, prob=0.0) if form == 0 else RandSmoothingNoised("image", 0.25, prob=0.0)
    assert all(torch.equal(_noise(never.set_random_state(0), image), torch.zeros(SHAPE)) for _ in range(5))


def test_dictionary_keys_other_than_image_untouched():
    label = torch.ones((1, *SHAPE[1:]))
    out = RandSmoothingNoised("image", 0.25).set_random_state(0)({"image": torch.zeros(SHAPE), "label": label})
    assert torch.equal(out["label"], label) and out["image"].abs().amax() > 0


@pytest.mark.parametrize("sigma", [0, -0.1, float("nan"), float("inf"), "0.25", None])
@pytest.mark.parametrize("form", [0, 1], ids=["array", "dict"])
def test_rejects_a_bad_sigma(sigma, form):
    with pytest.raises(RobustsegError, match=r"sigma must be a finite number > 0 \(the noise standard deviation\)"):
        RandSmoothingNoise(sigma) if form == 0 else RandSmoothingNoised("image", sigma)


@pytest.mark.parametrize("prob", [-0.1, 1.5, float("nan"), None])
@pytest.mark.parametrize("form", [0, 1], ids=["array", "dict"])
def test_rejects_a_bad_prob(prob, form):
    with pytest.raises(RobustsegError, match=r"prob must be a finite number in \[0, 1\]"):
        RandSmoothingNoise(0.25, prob=prob) if form == 0 else RandSmoothingNoised("image", 0.25, prob=prob)
