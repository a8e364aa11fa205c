"""Tests for :mod:`common.certify.segcertify`: SegCertify's CERTIFY on a model with a known answer, its statistics
(abstention, determinism), its soundness under perturbations within the certified radius, and its argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom, norm

from common.certify import ABSTAIN, GaussianSmoothing, certify, clopper_pearson_lower
from common.errors import RobustsegError

from .conftest import SIGMA, margin_volume


def _certify(net, images, **kwargs):
    settings = {"n0": 20, "n": 1000, "alpha": 0.01, "tau": 0.75, "correction": "bonferroni", "seed": 0, **kwargs}
    return certify(GaussianSmoothing(net, SIGMA, batch_size=250), images, **settings)


def test_bonferroni_radius_matches_the_analytic_radius_within_the_binomial_bound(threshold_net):
    """Per-voxel linear model: P(true class) = Phi(m / sigma), m = |x - 0.5|, so sigma Phi^-1(p) = m exactly.

    Every certified voxel has the true class and a radius at most m (else the certificate were wrong), and at least
    the radius a count at the 1e-6/N quantile of Binomial(n, p) would give; every voxel whose such count would be
    certified is certified."""
    images = margin_volume()
    cert = _certify(threshold_net, images)
    n, voxels, alpha = cert.n, images.numel(), cert.alpha
    margin = (images.double() - 0.5).abs()
    p_true = torch.as_tensor(norm.cdf(margin / SIGMA))
    k_low = torch.as_tensor(binom.ppf(1e-6 / voxels, n, p_true.numpy())).long()
    radius_low = SIGMA * torch.as_tensor(norm.ppf(clopper_pearson_lower(k_low, n, alpha / voxels).numpy()))
    certified = cert.certified
    assert bool((cert.selected[certified] == (images[certified] > 0.5).long()).all())
    assert bool((cert.radius[certified] <= margin[certified]).all())
    assert bool((cert.radius[certified] >= radius_low[certified] - 1e-12).all())
    assert bool(certified[radius_low >= SIGMA * norm.ppf(cert.tau)].all())
    assert 0.2 < certified.double().mean() < 0.9  # the volume has both certified and abstained voxels
    assert bool(cert.radius[~certified].isnan().all()) and bool((cert.classes[~certified] == ABSTAIN).all())


def test_holm_gives_segcertify_radius_and_certifies_what_bonferroni_does(threshold_net):
    images = margin_volume()
    bonferroni = _certify(threshold_net, images)
    holm = _certify(threshold_net, images, correction="holm")
    assert torch.equal(holm.top_counts, bonferroni.top_counts)  # same seed, same samples
    assert bool((holm.certified | ~bonferroni.certified).all())
    expected = SIGMA * norm.ppf(0.75)
    assert holm.radius[holm.certified].tolist() == pytest.approx([expected] * int(holm.certified.sum()))
    p_true = torch.as_tensor(norm.cdf((images.double() - 0.5).abs() / SIGMA))
    assert bool((p_true[holm.certified] > 0.75).all())  # sound: certified only where P(true class) > tau


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_larger_radii_certify_fewer_voxels_and_only_sound_ones(threshold_net, correction):
    images = margin_volume()
    cert = _certify(threshold_net, images, correction=correction)
    margin = (images.double() - 0.5).abs()
    previous = cert.certified_at(0.0)
    assert torch.equal(previous, cert.certified)
    for radius in (0.1, 0.2, 0.3, 0.4, 0.6):
        now = cert.certified_at(radius)
        assert bool((previous | ~now).all())  # a subset of the smaller radius's voxels
        assert bool((margin[now] > radius).all())  # the exact robust radius m exceeds every certified radius
        if correction == "bonferroni":  # one Clopper-Pearson bound per voxel: certified at r iff its radius >= r
            assert torch.equal(now, cert.certified & (cert.radius >= radius))
        previous = now
    assert not bool(cert.certified_at(10.0).any())
    fractions = [float(cert.abstain_fraction(r)) for r in (0.0, 0.2, 0.4)]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]


@pytest.mark.parametrize(
    "key, values",
    [("n", [2000, 300, 50, 10]), ("alpha", [0.2, 1e-3, 1e-8, 1e-15])],
)
def test_abstention_grows_as_n_shrinks_or_alpha_tightens(threshold_net, key, values):
    fractions = [float(_certify(threshold_net, margin_volume(), **{key: v}).abstain_fraction()) for v in values]
    assert fractions == sorted(fractions)
    assert fractions[0] < fractions[-1]


def test_same_seed_same_certificate(tiny_net):
    images = torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    first, second = _certify(tiny_net, images, n=100), _certify(tiny_net, images, n=100)
    for name in ("selected", "top_counts", "certified"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert torch.equal(first.radius.nan_to_num(-1), second.radius.nan_to_num(-1))
    assert not torch.equal(first.top_counts, _certify(tiny_net, images, n=100, seed=1).top_counts)


def test_labels_are_brats_labels_or_abstain(tiny_net):
    cert = _certify(tiny_net, torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(5)), n=200)
    labels = cert.labels()
    assert set(labels.unique().tolist()) <= {ABSTAIN, 0, 1, 2, 4}
    assert torch.equal(labels == ABSTAIN, ~cert.certified)
    assert bool((labels[cert.selected == 3] != 3).all())


def test_soundness_under_random_perturbations_within_the_radius(tiny_net):
    """For certified voxels, random L2 perturbations of norm below their radius leave the smoothed prediction
    unchanged: the smoothed class at x + delta, estimated from 3000 samples, is c_hat at every checked voxel.

    A certificate may be wrong with probability alpha = 0.01 per volume; the perturbed estimate errs only where the
    smoothed top-class probability at x + delta is near 1/2, which the certificate excludes (it is at least
    Phi(0.2 Phi^-1(p_lower)) > 0.55 at 0.8 R). Seeded, so the outcome is fixed: 0 of 4 perturbations change any
    checked voxel (a rate above alpha would show as several)."""
    images = torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    smoothing = GaussianSmoothing(tiny_net, SIGMA, batch_size=250)
    cert = certify(smoothing, images, n0=20, n=500, alpha=0.01, tau=0.6, correction="bonferroni", seed=0)
    assert 0.3 < cert.certified.double().mean() < 1.0
    norm_ = 0.8 * float(cert.radius[cert.certified].median())
    checked = cert.certified & (cert.radius > norm_ / 0.8)
    assert int(checked.sum()) >= 10
    generator = torch.Generator().manual_seed(123)
    changed = 0
    for _ in range(4):
        delta = torch.randn(images.shape, generator=generator)
        perturbed = images + delta * (norm_ / delta.norm())
        counts = smoothing.counts(perturbed, 3000, generator)
        changed += int((counts.argmax(1, keepdim=True)[checked] != cert.selected[checked]).any())
    assert changed == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n0": 0}, "n0 must be an integer >= 1"),
        ({"n": 0}, "n must be an integer >= 1"),
        ({"n": 10.0}, "n must be an integer >= 1"),
        ({"alpha": 0.0}, "alpha must be a finite number in"),
        ({"alpha": 1.0}, "alpha must be a finite number in"),
        ({"alpha": math.nan}, "alpha must be a finite number in"),
        ({"tau": 0.4}, r"tau must be a finite number in \[0.5, 1\)"),
        ({"tau": 1.0}, r"tau must be a finite number in \[0.5, 1\)"),
        ({"correction": "hochberg"}, "correction must be one of"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_settings_raise_one_line_naming_the_argument(threshold_net, kwargs, match):
    with pytest.raises(RobustsegError, match=match) as info:
        _certify(threshold_net, margin_volume(), **kwargs)
    assert "\n" not in str(info.value)


def test_bad_smoothing_and_radius_raise(threshold_net):
    with pytest.raises(RobustsegError, match="smoothing must be a GaussianSmoothing"):
        certify(threshold_net, margin_volume())
    cert = _certify(threshold_net, margin_volume(), n=50)
    with pytest.raises(RobustsegError, match="radius must be a finite number >= 0"):
        cert.certified_at(-0.1)
