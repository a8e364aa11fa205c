"""InputQuality (common/engines/quality.py): the CSV's input-quality columns, equal to common.metrics."""

from __future__ import annotations

import pytest
import torch

from common.engines import InputQuality
from common.errors import RobustsegError
from common.metrics import input_quality, ssim


@pytest.mark.parametrize(
    "shape, scale, win_size",
    [((4, 20, 18, 16), 1.0, 11), ((4, 20, 18, 16), 900.0, 11), ((2, 24, 20), 3.0, 11), ((4, 16, 16, 16), 1.0, 7)],
)
def test_equals_common_metrics(shape, scale, win_size):
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(1, *shape, generator=generator) * scale
    sizes = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.3]).view(-1, *[1] * len(shape))
    noise = torch.randn(5, *shape, generator=generator) * sizes
    adversarial = clean + noise * scale
    ours = InputQuality(clean, win_size=win_size)(adversarial)
    reference = input_quality(clean.expand_as(adversarial), adversarial, win_size=win_size)
    assert set(ours) == set(reference) == {"psnr", "ssim", "rmse", "linf", "l2"}
    for name in ("psnr", "rmse", "linf", "l2"):
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=0)
    # MONAI's dense window in float32 vs the separable one in float64: equal to float32 rounding
    torch.testing.assert_close(ours["ssim"], reference["ssim"], rtol=0, atol=1e-5)
    assert ours["ssim"][0] == pytest.approx(1.0) and ours["psnr"][0] == float("inf")


def test_other_window_sigma_equals_common_metrics():
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 4, 16, 16, 16, generator=generator)
    adversarial = clean + 0.05 * torch.randn(2, 4, 16, 16, 16, generator=generator)
    ours = InputQuality(clean, win_size=9, kernel_sigma=3.0).ssim(adversarial)
    reference = ssim(clean.expand_as(adversarial), adversarial, win_size=9, kernel_sigma=3.0)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "clean, kwargs, message",
    [
        (torch.rand(2, 4, 16, 16, 16), {}, r"clean must be one sample \(1, C, \*spatial\)"),
        (torch.rand(1, 16, 16), {}, r"clean must be one sample"),
        (torch.ones(1, 4, 16, 16, 16), {}, r"clean: zero intensity range"),
        (torch.rand(1, 4, 16, 16, 8), {}, r"win_size: the SSIM window \(11\) is larger than"),
        (torch.rand(1, 4, 16, 16, 16), {"win_size": 4}, r"win_size must be a positive odd number"),
        (torch.rand(1, 4, 16, 16, 16), {"kernel_sigma": 0.0}, r"kernel_sigma must be > 0"),
    ],
)
def test_bad_clean_input_raises(clean, kwargs, message):
    with pytest.raises(RobustsegError, match=message):
        InputQuality(clean, **kwargs)


def test_adversarial_of_another_shape_raises():
    quality = InputQuality(torch.rand(1, 4, 16, 16, 16))
    with pytest.raises(RobustsegError, match=r"adversarial must have shape \(B, 4, 16, 16, 16\)"):
        quality(torch.rand(1, 3, 16, 16, 16))
