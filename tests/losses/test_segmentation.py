"""Segmentation attack losses (common/losses/segmentation.py) against naive per-voxel transcriptions of the papers,
over the BraTS labels and over the channel indices of generic 2- and 3-class tasks (``values=``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from common.attacks import LOSSES
from common.data.labels import labels_to_indices
from common.errors import RobustsegError
from common.losses import (
    SegPGDLoss,
    balanced_cross_entropy,
    cospgd_loss,
    cross_entropy,
    jensen_shannon,
    masked_cross_entropy,
    segpgd_loss,
)

BRATS = (0, 1, 2, 4)
SHAPES = {"2D": (2, 3, 4), "3D": (2, 2, 3, 3)}  # (B, *spatial)
VALUES = {"brats": BRATS, "2classes": (0, 1), "3classes": (0, 1, 2)}
"""The label value of each channel: BraTS, and generic tasks whose labels are the channel indices."""


def make_case(dims: str, seed: int = 0, values: tuple[int, ...] = BRATS) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (B, K, *spatial), scaled so that a fair share of voxels is predicted correctly, and labels
    holding ``values`` (``K = len(values)``)."""
    generator = torch.Generator().manual_seed(seed)
    batch, *spatial = SHAPES[dims]
    k = len(values)
    indices = torch.randint(0, k, (batch, *spatial), generator=generator)
    logits = torch.randn(batch, k, *spatial, generator=generator)
    logits = logits + 1.5 * torch.nn.functional.one_hot(indices, k).movedim(-1, 1)
    labels = torch.tensor(values)[indices].unsqueeze(1)
    return logits, labels


def options(values: tuple[int, ...]) -> dict:
    """The keyword arguments that select ``values``: none for BraTS (the default is what is tested then)."""
    return {} if values == BRATS else {"values": values}


# -- naive transcriptions: one voxel at a time, plain Python floats ---------------------------------------------------


def voxels(logits: torch.Tensor, labels: torch.Tensor, b: int, values: tuple[int, ...] = BRATS):
    """(scores of the K classes, ground-truth class index) of every voxel of sample ``b``."""
    flat = logits[b].reshape(len(values), -1).T.tolist()
    truth = [values.index(int(v)) for v in labels[b].flatten().tolist()]
    return list(zip(flat, truth, strict=True))


def softmax(u: list[float]) -> list[float]:
    top = max(u)
    e = [math.exp(x - top) for x in u]
    return [x / sum(e) for x in e]


def ce(u: list[float], y: int) -> float:
    return -math.log(softmax(u)[y])


def correct(u: list[float], y: int) -> bool:
    return max(range(len(u)), key=lambda c: u[c]) == y


def naive_ce(logits, labels, values=BRATS):
    out = []
    for b in range(len(logits)):
        vs = voxels(logits, labels, b, values)
        out.append(sum(ce(u, y) for u, y in vs) / len(vs))
    return sum(out) / len(out)


def naive_masked_ce(logits, labels, values=BRATS, normalize="all"):
    out = []
    for b in range(len(logits)):
        vs = voxels(logits, labels, b, values)
        kept = [ce(u, y) for u, y in vs if correct(u, y)]
        denominator = len(vs) if normalize == "all" else len(kept)
        out.append(sum(kept) / denominator if kept else 0.0)
    return sum(out) / len(out)


def naive_balanced_ce(logits, labels, values=BRATS):
    out = []
    for b in range(len(logits)):
        by_class: dict[int, list[float]] = {}
        for u, y in voxels(logits, labels, b, values):
            by_class.setdefault(y, []).append(ce(u, y))
        out.append(sum(sum(v) / len(v) for v in by_class.values()) / len(by_class))
    return sum(out) / len(out)


def naive_js(logits, labels, values=BRATS):
    out = []
    for b in range(len(logits)):
        total, vs = 0.0, voxels(logits, labels, b, values)
        for u, y in vs:
            p, k = softmax(u), len(u)
            q = [1.0 if c == y else 0.0 for c in range(k)]
            m = [(p[c] + q[c]) / 2 for c in range(k)]
            kl_pm = sum(p[c] * math.log(p[c] / m[c]) for c in range(k) if p[c] > 0)
            kl_qm = sum(q[c] * math.log(q[c] / m[c]) for c in range(k) if q[c] > 0)
            total += 0.5 * kl_pm + 0.5 * kl_qm
        out.append(total / len(vs))
    return sum(out) / len(out)


def naive_segpgd(logits, labels, values=BRATS, step=1, steps=1):
    weight = (step - 1) / (2 * steps)  # Gu et al.: lambda_t = (t - 1) / 2T
    out = []
    for b in range(len(logits)):
        vs = voxels(logits, labels, b, values)
        right = sum(ce(u, y) for u, y in vs if correct(u, y))
        wrong = sum(ce(u, y) for u, y in vs if not correct(u, y))
        out.append(((1 - weight) * right + weight * wrong) / len(vs))
    return sum(out) / len(out)


def naive_cospgd(logits, labels, values=BRATS):
    out = []
    for b in range(len(logits)):
        total, vs = 0.0, voxels(logits, labels, b, values)
        for u, y in vs:
            p = softmax(u)
            cosine = p[y] / math.sqrt(sum(x * x for x in p))  # cos(p, e_y), |e_y| = 1
            total += cosine * ce(u, y)
        out.append(total / len(vs))
    return sum(out) / len(out)


CASES: dict[str, tuple[Callable, Callable]] = {
    # (loss(logits, labels, **options), naive(logits, labels, values))
    "ce": (cross_entropy, naive_ce),
    "masked_ce": (masked_cross_entropy, naive_masked_ce),
    "masked_ce/correct": (
        lambda x, y, **kw: masked_cross_entropy(x, y, normalize="correct", **kw),
        lambda x, y, v: naive_masked_ce(x, y, v, "correct"),
    ),
    "balanced_ce": (balanced_cross_entropy, naive_balanced_ce),
    "js": (jensen_shannon, naive_js),
    "segpgd/1of1": (segpgd_loss, naive_segpgd),
    "segpgd/4of10": (lambda x, y, **kw: segpgd_loss(x, y, 4, 10, **kw), lambda x, y, v: naive_segpgd(x, y, v, 4, 10)),
    "segpgd/10of10": (
        lambda x, y, **kw: segpgd_loss(x, y, 10, 10, **kw),
        lambda x, y, v: naive_segpgd(x, y, v, 10, 10),
    ),
    "cospgd": (cospgd_loss, naive_cospgd),
}


@pytest.mark.parametrize("values", list(VALUES.values()), ids=list(VALUES))
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_papers_formula_voxel_by_voxel(case, dims, values):
    loss, naive = CASES[case]
    logits, labels = make_case(dims, values=values)
    right = logits.argmax(1) == labels_to_indices(labels, values)[:, 0]
    assert right.any() and (~right).any()  # both kinds of voxel, for the masks and weights to matter
    value = loss(logits, labels, **options(values))
    assert value.ndim == 0
    assert float(value) == pytest.approx(naive(logits, labels, values), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("values", list(VALUES.values()), ids=list(VALUES))
@pytest.mark.parametrize("dims", list(SHAPES))
def test_cross_entropy_is_torch_cross_entropy_on_the_channel_indices(dims, values):
    logits, labels = make_case(dims, values=values)
    expected = torch.nn.functional.cross_entropy(logits, labels_to_indices(labels, values)[:, 0])
    assert torch.equal(cross_entropy(logits, labels, **options(values)), expected)
    if values == BRATS:
        assert torch.equal(LOSSES["ce"]()(logits, labels), expected)


@pytest.mark.parametrize("values", [(0, 1), (0, 1, 2)], ids=["2classes", "3classes"])
@pytest.mark.parametrize("case", list(CASES))
def test_gradient_flows_for_a_k_class_task(case, values):
    logits, labels = make_case("3D", values=values)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(CASES[case][0](logits, labels, values=values), logits)
    assert torch.isfinite(grad).all() and (grad != 0).any()


@pytest.mark.parametrize("name", ["masked_ce", "balanced_ce", "js", "segpgd", "cospgd"])
@pytest.mark.parametrize("dims", list(SHAPES))
def test_registered_by_name_and_gradient_flows(name, dims):
    logits, labels = make_case(dims)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(LOSSES[name]()(logits, labels), logits)
    assert torch.isfinite(grad).all() and (grad != 0).any()


@pytest.mark.parametrize("values", list(VALUES.values()), ids=list(VALUES))
@pytest.mark.parametrize(
    "loss",
    [cospgd_loss, masked_cross_entropy, lambda x, y, **kw: segpgd_loss(x, y, 5, 6, **kw)],
    ids=["cospgd", "masked_ce", "segpgd"],
)
def test_weights_are_per_voxel(loss, values):
    """Changing one voxel's prediction changes that voxel's weight only: every other voxel's gradient is the same.

    (A weight shared by the image, as the mean cosine of the 3D ports of CosPGD, would change them all.)"""
    logits, labels = make_case("3D", values=values)
    indices = torch.tensor([values.index(int(v)) for v in labels.flatten()]).view(labels.shape[0], *labels.shape[2:])
    b, v = 0, tuple((logits[0].argmax(0) == indices[0]).nonzero()[0].tolist())  # a voxel predicted correctly
    changed = logits.clone()
    truth = int(indices[(b, *v)])
    changed[(b, slice(None), *v)] = -3.0
    changed[(b, (truth + 1) % len(values), *v)] = 3.0  # this voxel is now confidently wrong: its weight drops
    grads = []
    for x in (logits, changed):
        x = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(loss(x, labels, **options(values)), x)[0])
    differs = (grads[0] != grads[1]).any(1)  # (B, *spatial)
    expected = torch.zeros_like(differs)
    expected[(b, *v)] = True
    assert torch.equal(differs, expected)


def test_masked_ce_ignores_wrong_voxels():
    logits, labels = make_case("2D")
    indices = torch.tensor([BRATS.index(int(v)) for v in labels.flatten()]).view(labels.shape[0], *labels.shape[2:])
    wrong = logits.argmax(1) != indices
    assert wrong.any() and (~wrong).any()
    moved = logits + 5 * wrong.unsqueeze(1) * torch.nn.functional.one_hot(logits.argmax(1), 4).movedim(-1, 1)
    assert torch.equal(moved.argmax(1), logits.argmax(1))  # still the same wrong classes, more confidently
    assert float(masked_cross_entropy(moved, labels)) == float(masked_cross_entropy(logits, labels))
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(masked_cross_entropy(x, labels), x)
    assert (grad.movedim(1, -1)[wrong] == 0).all() and (grad.movedim(1, -1)[~wrong] != 0).any()


@pytest.mark.parametrize("normalize", ["all", "correct"])
def test_masked_ce_with_no_correct_voxel_is_zero_without_nan(normalize):
    logits, labels = make_case("3D")
    indices = torch.tensor([BRATS.index(int(v)) for v in labels.flatten()]).view(labels.shape[0], *labels.shape[2:])
    logits = -1e4 * torch.nn.functional.one_hot(indices, 4).movedim(-1, 1).float()  # every voxel wrong, CE huge
    logits.requires_grad_(True)
    value = masked_cross_entropy(logits, labels, normalize=normalize)
    (grad,) = torch.autograd.grad(value, logits)
    assert float(value.detach()) == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_segpgd_loss_follows_the_attack_step():
    logits, labels = make_case("2D")
    loss = SegPGDLoss()
    assert float(loss(logits, labels)) == pytest.approx(float(masked_cross_entropy(logits, labels)))  # step 1: mask
    loss.set_step(7, 10)
    assert float(loss(logits, labels)) == pytest.approx(naive_segpgd(logits, labels, BRATS, 7, 10), rel=1e-5)
    assert repr(loss) == "SegPGDLoss(step=7, steps=10)"


@pytest.mark.parametrize("dims", list(SHAPES))
def test_segpgd_loss_of_a_two_class_task_follows_the_attack_step(dims):
    logits, labels = make_case(dims, values=(0, 1))
    loss = SegPGDLoss(values=(0, 1))
    step1 = float(masked_cross_entropy(logits, labels, values=(0, 1)))
    assert float(loss(logits, labels)) == pytest.approx(step1)
    assert float(loss(logits, labels)) == pytest.approx(naive_segpgd(logits, labels, (0, 1)), rel=1e-5)
    loss.set_step(7, 10)
    assert float(loss(logits, labels)) == pytest.approx(naive_segpgd(logits, labels, (0, 1), 7, 10), rel=1e-5)
    assert float(loss(logits, labels)) == pytest.approx(float(segpgd_loss(logits, labels, 7, 10, values=(0, 1))))
    assert repr(loss) == "SegPGDLoss(step=7, steps=10, values=(0, 1))"
    with pytest.raises(RobustsegError, match=r"logits: expected shape \(B, 4, \*spatial\)"):
        SegPGDLoss()(logits, labels)  # the BraTS default does not take 2-channel logits


def test_js_is_bounded_and_zero_at_a_perfect_prediction():
    logits, labels = make_case("3D")
    assert 0 < float(jensen_shannon(logits, labels)) < math.log(2)
    indices = torch.tensor([BRATS.index(int(v)) for v in labels.flatten()]).view(labels.shape[0], *labels.shape[2:])
    perfect = 1e4 * torch.nn.functional.one_hot(indices, 4).movedim(-1, 1).float()
    perfect.requires_grad_(True)
    value = jensen_shannon(perfect, labels)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(torch.autograd.grad(value, perfect)[0]).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, y: masked_cross_entropy(x, y, normalize="mean"), r"normalize must be one of \['all', 'correct'\]"),
        (lambda x, y: segpgd_loss(x, y, 0, 10), r"step must be an integer in \[1, 10\], got 0"),
        (lambda x, y: segpgd_loss(x, y, 3, 2), r"step must be an integer in \[1, 2\], got 3"),
        (lambda x, y: SegPGDLoss().set_step(1, 0), r"steps must be an integer >= 1, got 0"),
        (lambda x, y: cospgd_loss(x[:, :3], y), r"logits: expected shape \(B, 4, \*spatial\)"),
        (lambda x, y: jensen_shannon(x, y[:, :, :2]), r"labels: shape .* does not fit logits"),
        (lambda x, y: balanced_cross_entropy(x, y + 3), r"labels: values \[.*\] are not BraTS labels"),
        (lambda x, y: cross_entropy(x, y + 3), r"labels: values \[.*\] are not BraTS labels"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(call, match):
    logits, labels = make_case("2D")
    with pytest.raises(RobustsegError, match=match) as info:
        call(logits, labels)
    assert "\n" not in str(info.value)


LOSS_FUNCTIONS = {
    "ce": cross_entropy,
    "masked_ce": masked_cross_entropy,
    "balanced_ce": balanced_cross_entropy,
    "js": jensen_shannon,
    "segpgd": segpgd_loss,
    "cospgd": cospgd_loss,
    "segpgd_loss_class": lambda x, y, values: SegPGDLoss(values=values)(x, y),
}


@pytest.mark.parametrize(("logit_values", "values"), [(BRATS, (0, 1)), ((0, 1), (0, 1, 2)), ((0, 1, 2), (0, 1))])
@pytest.mark.parametrize("name", list(LOSS_FUNCTIONS))
def test_logits_whose_channels_are_not_one_per_value_are_refused(name, logit_values, values):
    logits, labels = make_case("2D", values=logit_values)
    labels = labels.clamp(max=max(values))  # labels the values allow: only the channel count is wrong
    message = (
        f"logits: expected shape (B, {len(values)}, *spatial) (one channel per label value {list(values)}), "
        f"got {tuple(logits.shape)}."
    )
    with pytest.raises(RobustsegError, match=f"^{re.escape(message)}$"):
        LOSS_FUNCTIONS[name](logits, labels, values=values)


@pytest.mark.parametrize("name", list(LOSS_FUNCTIONS))
def test_brats_logits_of_another_channel_count_are_refused_as_before(name):
    logits, labels = make_case("2D", values=(0, 1))
    message = "logits: expected shape (B, 4, *spatial) (one channel per BraTS label [0, 1, 2, 4]), got (2, 2, 3, 4)."
    with pytest.raises(RobustsegError, match=f"^{re.escape(message)}$"):
        LOSS_FUNCTIONS[name](logits, labels, values=BRATS)


@pytest.mark.parametrize(("values", "bad"), [((0, 1), 2), ((0, 1), 4), ((0, 1, 2), 3), ((0, 1, 2), -1)])
@pytest.mark.parametrize("name", list(LOSS_FUNCTIONS))
def test_a_label_outside_the_values_is_refused(name, values, bad):
    logits, labels = make_case("3D", values=values)
    labels[0, 0, 1, 2, 0] = bad
    message = f"labels: values [{bad}] are not label values of the task, expected only {list(values)}."
    with pytest.raises(RobustsegError, match=f"^{re.escape(message)}$") as info:
        LOSS_FUNCTIONS[name](logits, labels, values=values)
    assert "\n" not in str(info.value)
