"""Attack losses of sigmoid region outputs (common/losses/regions.py) against naive (region, voxel) transcriptions."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from common.errors import RobustsegError
from common.losses import (
    RegionSegPGDLoss,
    region_balanced_cross_entropy,
    region_cospgd_loss,
    region_cross_entropy,
    region_jensen_shannon,
    region_masked_cross_entropy,
    region_segpgd_loss,
    region_soft_dice,
)
from common.losses.regions import region_targets

BRATS = (0, 1, 2, 4)
MEMBERS = ({1, 2, 4}, {1, 4}, {4})  # WT, TC, ET: the canonical channel order
SHAPES = {"2D": (2, 3, 4), "3D": (2, 2, 3, 3)}  # (B, *spatial)


def make_case(dims: str, seed: int = 0, without_et: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Random region logits (B, 3, *spatial), pulled towards the targets so that a fair share of pairs is correct,
    and BraTS labels; ``without_et``: sample 0 has no enhancing tumour (its ET region is empty)."""
    generator = torch.Generator().manual_seed(seed)
    batch, *spatial = SHAPES[dims]
    labels = torch.tensor(BRATS)[torch.randint(0, 4, (batch, 1, *spatial), generator=generator)]
    if without_et:
        labels[0][labels[0] == 4] = 1
    inside = torch.stack([torch.isin(labels[:, 0], torch.tensor(sorted(m))) for m in MEMBERS], 1).float()
    logits = torch.randn(batch, 3, *spatial, generator=generator) + 1.2 * (2 * inside - 1)
    return logits, labels


# -- naive transcriptions: one (region, voxel) pair at a time, plain Python floats ------------------------------------


def pairs(logits: torch.Tensor, labels: torch.Tensor, b: int, region: int | None = None) -> list[tuple[float, int]]:
    """(logit z, target y) of every (region, voxel) pair of sample ``b`` (of one region, if given)."""
    out = []
    for r in range(3) if region is None else [region]:
        zs = logits[b, r].flatten().tolist()
        ys = [int(int(v) in MEMBERS[r]) for v in labels[b, 0].flatten().tolist()]
        out += list(zip(zs, ys, strict=True))
    return out


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def bce(z: float, y: int) -> float:
    s = sigmoid(z)
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


def correct(z: float, y: int) -> bool:
    return (z > 0) == bool(y)


def batch_mean(per_sample: Callable[[int], float], logits: torch.Tensor) -> float:
    values = [per_sample(b) for b in range(len(logits))]
    return sum(values) / len(values)


def naive_soft_dice(logits, labels, smooth=1e-5):
    def sample(b):
        dice = []
        for r in range(3):
            ps = pairs(logits, labels, b, r)
            s = [sigmoid(z) for z, _ in ps]
            y = [t for _, t in ps]
            dice.append((2 * sum(a * t for a, t in zip(s, y)) + smooth) / (sum(s) + sum(y) + smooth))
        return 1 - sum(dice) / 3

    return batch_mean(sample, logits)


def naive_ce(logits, labels):
    return batch_mean(lambda b: sum(bce(z, y) for z, y in pairs(logits, labels, b)) / (3 * labels[b].numel()), logits)


def naive_masked_ce(logits, labels, normalize="all"):
    def sample(b):
        ps = pairs(logits, labels, b)
        kept = [bce(z, y) for z, y in ps if correct(z, y)]
        denominator = len(ps) if normalize == "all" else len(kept)
        return sum(kept) / denominator if kept else 0.0

    return batch_mean(sample, logits)


def naive_balanced_ce(logits, labels):
    def sample(b):
        per_region = []
        for r in range(3):
            by_class: dict[int, list[float]] = {}
            for z, y in pairs(logits, labels, b, r):
                by_class.setdefault(y, []).append(bce(z, y))
            per_region.append(sum(sum(v) / len(v) for v in by_class.values()) / len(by_class))
        return sum(per_region) / 3

    return batch_mean(sample, logits)


def naive_js(logits, labels):
    def sample(b):
        ps, total = pairs(logits, labels, b), 0.0
        for z, y in ps:
            p = [sigmoid(z), 1 - sigmoid(z)]
            q = [float(y), 1.0 - y]
            m = [(p[i] + q[i]) / 2 for i in range(2)]
            kl_pm = sum(p[i] * math.log(p[i] / m[i]) for i in range(2) if p[i] > 0)
            kl_qm = sum(q[i] * math.log(q[i] / m[i]) for i in range(2) if q[i] > 0)
            total += 0.5 * kl_pm + 0.5 * kl_qm
        return total / len(ps)

    return batch_mean(sample, logits)


def segpgd_weight(z: float, y: int, step: int, steps: int) -> float:
    weight = (step - 1) / (2 * steps)  # Gu et al.: lambda_t = (t - 1) / 2T
    return 1 - weight if correct(z, y) else weight


def cospgd_weight(z: float, y: int) -> float:
    s = sigmoid(z)
    return (y * s + (1 - y) * (1 - s)) / math.sqrt(s * s + (1 - s) * (1 - s))  # cos((s, 1-s), (y, 1-y))


def naive_segpgd(logits, labels, step=1, steps=1):
    def sample(b):
        ps = pairs(logits, labels, b)
        return sum(segpgd_weight(z, y, step, steps) * bce(z, y) for z, y in ps) / len(ps)

    return batch_mean(sample, logits)


def naive_cospgd(logits, labels):
    def sample(b):
        ps = pairs(logits, labels, b)
        return sum(cospgd_weight(z, y) * bce(z, y) for z, y in ps) / len(ps)

    return batch_mean(sample, logits)


CASES: dict[str, tuple[Callable, Callable]] = {
    "soft_dice": (region_soft_dice, naive_soft_dice),
    "soft_dice/smooth1": (lambda x, y: region_soft_dice(x, y, smooth=1.0), lambda x, y: naive_soft_dice(x, y, 1.0)),
    "ce": (region_cross_entropy, naive_ce),
    "masked_ce": (region_masked_cross_entropy, naive_masked_ce),
    "masked_ce/correct": (
        lambda x, y: region_masked_cross_entropy(x, y, normalize="correct"),
        lambda x, y: naive_masked_ce(x, y, "correct"),
    ),
    "balanced_ce": (region_balanced_cross_entropy, naive_balanced_ce),
    "js": (region_jensen_shannon, naive_js),
    "segpgd/1of1": (region_segpgd_loss, naive_segpgd),
    "segpgd/4of10": (lambda x, y: region_segpgd_loss(x, y, 4, 10), lambda x, y: naive_segpgd(x, y, 4, 10)),
    "segpgd/10of10": (lambda x, y: region_segpgd_loss(x, y, 10, 10), lambda x, y: naive_segpgd(x, y, 10, 10)),
    "cospgd": (region_cospgd_loss, naive_cospgd),
}


@pytest.mark.parametrize("without_et", [False, True], ids=["all-regions", "no-ET"])
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_formula_pair_by_pair(case, dims, without_et):
    loss, naive = CASES[case]
    logits, labels = make_case(dims, without_et=without_et)
    value = loss(logits, labels)
    assert value.ndim == 0 and value.dtype == torch.float32
    assert float(value) == pytest.approx(naive(logits, labels), rel=1e-5, abs=1e-7)


WEIGHTS: dict[str, tuple[Callable, Callable]] = {
    "segpgd/5of6": (lambda x, y: region_segpgd_loss(x, y, 5, 6), lambda z, y: segpgd_weight(z, y, 5, 6)),
    "cospgd": (region_cospgd_loss, cospgd_weight),
    "masked_ce": (region_masked_cross_entropy, lambda z, y: float(correct(z, y))),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_weights_are_per_region_and_voxel(case):
    """The gradient is, pair by pair, the detached weight times the BCE gradient ``sigmoid(z) - y``, divided by the
    ``3N`` pairs and the ``B`` samples; flipping one (region, voxel) pair changes that pair's gradient only (not the
    other regions of its voxel, not the other voxels: a weight shared by the image would change them all)."""
    loss, weight = WEIGHTS[case]
    logits, labels = make_case("3D")
    targets = region_targets(logits, labels)
    right = ((logits > 0) == (targets > 0.5))[0, 1]  # the TC pairs of sample 0 predicted correctly
    where = (0, 1, *right.nonzero()[0].tolist())  # one of them, about to be flipped
    changed = logits.clone()
    changed[where] = -4.0 if targets[where] else 4.0
    grads = []
    for x in (logits, changed):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(leaf, labels), leaf)
        expected = torch.tensor(
            [weight(z, int(y)) * (sigmoid(z) - y) for z, y in zip(x.flatten().tolist(), targets.flatten().tolist())]
        ).view_as(x) / (x[0].numel() * len(x))
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-8)
        grads.append(grad)
    differs = grads[0] != grads[1]
    only = torch.zeros_like(differs)
    only[where] = True
    assert torch.equal(differs, only)


def test_targets_are_the_region_masks_so_a_target_label_map_becomes_target_regions():
    logits = torch.zeros(1, 3, 4)
    assert region_targets(logits, torch.tensor([[[0, 1, 2, 4]]])).tolist() == [
        [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
    ]
    # ti-FGSM's target, label 1 everywhere: inside WT and TC, outside ET
    assert region_targets(logits, torch.ones(1, 1, 4, dtype=torch.long)).tolist() == [[[1.0] * 4, [1.0] * 4, [0.0] * 4]]


@pytest.mark.parametrize("normalize", ["all", "correct"])
def test_masked_ce_with_no_correct_pair_is_zero_without_nan(normalize):
    _, labels = make_case("3D")
    targets = region_targets(torch.zeros(2, 3, 2, 3, 3), labels)
    logits = (1e4 * (1 - 2 * targets)).requires_grad_(True)  # every pair confidently wrong, BCE huge
    value = region_masked_cross_entropy(logits, labels, normalize=normalize)
    (grad,) = torch.autograd.grad(value, logits)
    assert float(value.detach()) == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_a_logit_of_zero_counts_as_outside_the_region():
    """The threshold is ``z > 0``, as in the zoo's postprocessing: z = 0 is a correct 'outside', a wrong 'inside'."""
    labels = torch.tensor([[[0, 4]]])
    logits = torch.zeros(1, 3, 2)
    bce0 = math.log(2)
    # pairs (WT, TC, ET) x (voxel 0 outside all, voxel 1 inside all): only the 3 pairs of voxel 0 are correct
    assert float(region_masked_cross_entropy(logits, labels)) == pytest.approx(3 * bce0 / 6)


def test_js_is_bounded_and_zero_at_a_perfect_prediction():
    logits, labels = make_case("3D")
    assert 0 < float(region_jensen_shannon(logits, labels)) < math.log(2)
    perfect = (1e4 * (2 * region_targets(logits, labels) - 1)).requires_grad_(True)
    value = region_jensen_shannon(perfect, labels)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(torch.autograd.grad(value, perfect)[0]).all()


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_flows_and_is_finite_even_for_saturated_logits(name):
    loss, _ = CASES[name]
    logits, labels = make_case("2D")
    logits = (logits * torch.tensor([1.0, 100.0, 1.0]).view(1, 3, 1, 1)).requires_grad_(True)  # TC saturated
    (grad,) = torch.autograd.grad(loss(logits, labels), logits)
    assert torch.isfinite(grad).all() and (grad != 0).any()


def test_segpgd_loss_follows_the_attack_step():
    logits, labels = make_case("2D")
    loss = RegionSegPGDLoss()
    assert float(loss(logits, labels)) == pytest.approx(float(region_masked_cross_entropy(logits, labels)))
    loss.set_step(7, 10)
    assert float(loss(logits, labels)) == pytest.approx(naive_segpgd(logits, labels, 7, 10), rel=1e-5)
    assert repr(loss) == "RegionSegPGDLoss(step=7, steps=10)"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, y: region_cospgd_loss(torch.cat([x, x[:, :1]], 1), y),
         r"logits: expected shape \(B, 3, \*spatial\) \(one sigmoid logit per region WT, TC, ET\), got \(2, 4, 3, 4\)"),
        (lambda x, y: region_soft_dice(x[0, 0], y), r"logits: expected shape \(B, 3, \*spatial\) .*, got \(3, 4\)\."),
        (lambda x, y: region_jensen_shannon(x, y[:, :, :2]), r"labels: shape \(2, 1, 2, 4\) does not fit logits"),
        (lambda x, y: region_balanced_cross_entropy(x, y + 3), r"labels: values \[.*\] are not BraTS labels"),
        (lambda x, y: region_masked_cross_entropy(x, y, normalize="mean"),
         r"normalize must be one of \['all', 'correct'\]"),
        (lambda x, y: region_segpgd_loss(x, y, 0, 10), r"step must be an integer in \[1, 10\], got 0"),
        (lambda x, y: RegionSegPGDLoss().set_step(1, 0), r"steps must be an integer >= 1, got 0"),
        (lambda x, y: region_soft_dice(x, y, smooth=-1.0), r"smooth must be a finite number >= 0, got -1.0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_in_one_line(call, match):
    logits, labels = make_case("2D")
    with pytest.raises(RobustsegError, match=match) as info:
        call(logits, labels)
    assert "\n" not in str(info.value)
