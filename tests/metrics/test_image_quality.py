from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.errors import RobustsegError
from common.metrics import input_quality, perturbation_norms, psnr, rmse, ssim


def _unit_range_images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)  # float64 so the hand values hold to 1e-9
    x.view(shape[0], -1)[:, 0] = 0.0  # every sample spans exactly [0, 1]
    x.view(shape[0], -1)[:, 1] = 1.0
    return x, g


@pytest.mark.parametrize("epsilon", [0.05, 0.01, 0.1])
@pytest.mark.parametrize("shape", [(2, 4, 12, 12, 12), (3, 2, 16, 16)])
def test_sign_perturbation_hand_values(epsilon, shape):
    clean, g = _unit_range_images(shape)
    sign = torch.randint(0, 2, shape, generator=g, dtype=torch.float64) * 2 - 1
    adv = clean + epsilon * sign
    n = math.prod(shape[1:])
    np.testing.assert_allclose(psnr(clean, adv).numpy(), 20 * math.log10(1 / epsilon), rtol=1e-9)
    np.testing.assert_allclose(rmse(clean, adv).numpy(), epsilon, rtol=1e-9)
    linf, l2 = perturbation_norms(clean, adv)
    np.testing.assert_allclose(linf.numpy(), epsilon, rtol=1e-6)
    np.testing.assert_allclose(l2.numpy(), epsilon * math.sqrt(n), rtol=1e-6)


def test_psnr_of_eps_005_is_26_02_db():
    clean, g = _unit_range_images((1, 4, 12, 12, 12))
    adv = clean + 0.05 * (torch.randint(0, 2, clean.shape, generator=g) * 2.0 - 1.0)
    assert psnr(clean, adv).item() == pytest.approx(26.02, abs=0.005)


def test_psnr_uses_per_sample_clean_range():
    clean, g = _unit_range_images((2, 1, 12, 12, 12))
    clean[1] = clean[1] * 4.0 + 3.0  # range 4
    delta = 0.1 * (torch.randint(0, 2, clean.shape, generator=g) * 2.0 - 1.0)
    values = psnr(clean, clean + delta)
    assert values[0].item() == pytest.approx(20 * math.log10(1 / 0.1))
    assert values[1].item() == pytest.approx(20 * math.log10(4 / 0.1))


def test_identical_inputs():
    clean, _ = _unit_range_images((2, 4, 12, 12, 12))
    assert torch.isinf(psnr(clean, clean)).all() and (psnr(clean, clean) > 0).all()
    np.testing.assert_allclose(ssim(clean, clean).numpy(), 1.0, atol=1e-5)
    assert torch.equal(rmse(clean, clean), torch.zeros(2, dtype=torch.float64))
    linf, l2 = perturbation_norms(clean, clean)
    assert linf.eq(0).all() and l2.eq(0).all()


def _ssim_2d_by_hand(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 11, sigma: float = 1.5) -> float:
    """Direct SSIM (Wang et al. 2004) of one 2-D channel: Gaussian window, valid positions only."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            a, b = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            mx, my = (w * a).sum(), (w * b).sum()
            vx, vy, cxy = (w * a * a).sum() - mx**2, (w * b * b).sum() - my**2, (w * a * b).sum() - mx * my
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_is_mean_of_per_channel_ssim():
    clean, g = _unit_range_images((1, 2, 14, 13))
    adv = clean + 0.1 * torch.randn(clean.shape, generator=g)
    adv[:, 1] = clean[:, 1]  # channel 1 untouched: SSIM 1 there
    per_channel = [_ssim_2d_by_hand(clean[0, c].double().numpy(), adv[0, c].double().numpy(), 1.0) for c in range(2)]
    assert per_channel[1] == pytest.approx(1.0)
    assert ssim(clean, adv).item() == pytest.approx(np.mean(per_channel), abs=1e-5)


def test_ssim_decreases_with_perturbation_size():
    clean, g = _unit_range_images((1, 4, 12, 12, 12))
    noise = torch.randn(clean.shape, generator=g)
    values = [ssim(clean, clean + eps * noise).item() for eps in (0.01, 0.05, 0.1)]
    assert values[0] > values[1] > values[2]


def test_input_quality_returns_csv_columns():
    clean, g = _unit_range_images((2, 4, 12, 12, 12))
    adv = clean + 0.05 * torch.randn(clean.shape, generator=g)
    q = input_quality(clean, adv)
    assert list(q) == ["psnr", "ssim", "rmse", "linf", "l2"]
    assert all(v.shape == (2,) for v in q.values())
    torch.testing.assert_close(q["psnr"], psnr(clean, adv))


def test_shape_mismatch_raises():
    with pytest.raises(RobustsegError, match="same shape"):
        psnr(torch.rand(1, 4, 12, 12, 12), torch.rand(1, 4, 12, 12, 11))


def test_non_image_batch_raises():
    with pytest.raises(RobustsegError, match="image batches"):
        rmse(torch.rand(4, 12), torch.rand(4, 12))


def test_constant_clean_image_raises():
    with pytest.raises(RobustsegError, match="zero intensity range"):
        psnr(torch.ones(1, 1, 12, 12), torch.ones(1, 1, 12, 12) * 1.1)


@pytest.mark.parametrize("win_size", [0, 4])
def test_bad_win_size_raises(win_size):
    clean, _ = _unit_range_images((1, 1, 12, 12))
    with pytest.raises(RobustsegError, match="positive odd"):
        ssim(clean, clean, win_size=win_size)


def test_bad_kernel_sigma_raises():
    clean, _ = _unit_range_images((1, 1, 12, 12))
    with pytest.raises(RobustsegError, match="kernel_sigma"):
        ssim(clean, clean, kernel_sigma=0.0)


def test_window_larger_than_image_raises():
    clean, _ = _unit_range_images((1, 1, 8, 12))
    with pytest.raises(RobustsegError, match="win_size"):
        ssim(clean, clean)
