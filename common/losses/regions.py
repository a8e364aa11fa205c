"""The attack losses for sigmoid region outputs: one binary decision per (region, voxel) instead of a softmax.

A network in the second output convention of :mod:`common.data.labels` (e.g. the MONAI Model Zoo's
``brats_mri_segmentation``, a SegResNet with 3 sigmoid channels) gives, per voxel, one independent logit ``z_r`` per
nested region ``r`` in the order of :data:`~common.data.labels.REGION_CHANNELS` (WT, TC, ET), with probability
``s_r = sigmoid(z_r)``. Its targets are the region masks ``y_r = 1[label in r]``
(:func:`~common.data.labels.region_masks`), so a target label map (a targeted attack's label 1 everywhere) becomes
the target regions WT = 1, TC = 1, ET = 0 with no special case.

Each function here is the counterpart of one softmax attack loss (:mod:`common.losses.soft_dice`,
:mod:`common.losses.segmentation`, the attacks' cross-entropy) with the same definition, normalisation and detached
weights, where a voxel's softmax over 4 classes becomes 3 Bernoulli distributions ``(s_r, 1 - s_r)`` and a voxel's
cross-entropy becomes the binary cross-entropy ``BCE(z, y) = -y log s - (1 - y) log(1 - s)`` of each (region, voxel)
pair. "Correct" means ``(z_r > 0) == y_r`` (``s_r > 0.5``, the threshold of the zoo's postprocessing). Every loss maps
``(logits (B, 3, *spatial), labels (B, 1, *spatial))`` to a scalar, the mean over the batch of each sample's loss;
2D and 3D inputs alike. The attacks reach them through :data:`common.attacks.base.LOSSES`, which picks the softmax
or the region loss by the output's channel count (:class:`common.losses.by_output.ByOutput`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor

from common.data.labels import REGION_CHANNELS, labels_to_indices, region_masks
from common.errors import RobustsegError
from common.losses.segmentation import SegPGDLoss, segpgd_weighting
from common.utils.validation import check_int, check_number, look_up_option

__all__ = [
    "RegionSegPGDLoss",
    "region_balanced_cross_entropy",
    "region_cospgd_loss",
    "region_cross_entropy",
    "region_jensen_shannon",
    "region_masked_cross_entropy",
    "region_segpgd_loss",
    "region_soft_dice",
    "region_targets",
]


def region_targets(logits: Tensor, labels: Tensor) -> Tensor:
    """The region masks of ``labels`` as float targets ``(B, 3, *spatial)``, after checking both shapes.

    Raises:
        RobustsegError: for logits that are not ``(B, 3, *spatial)``, labels that do not fit them or hold a value
            outside {0, 1, 2, 4}.
    """
    if logits.ndim < 3 or logits.shape[1] != len(REGION_CHANNELS):
        raise RobustsegError(
            f"logits: expected shape (B, {len(REGION_CHANNELS)}, *spatial) (one sigmoid logit per region "
            f"{', '.join(REGION_CHANNELS)}), got {tuple(logits.shape)}."
        )
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise RobustsegError(f"labels: shape {tuple(labels.shape)} does not fit logits, expected {expected}.")
    labels_to_indices(labels)  # raises if a value is not a BraTS label
    return region_masks(labels, REGION_CHANNELS).float()


def _pair_bce(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(region, voxel) binary cross-entropy ``(B, 3, *spatial)`` and the float targets of the same shape."""
    targets = region_targets(logits, labels)
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none"), targets


def _correct(logits: Tensor, targets: Tensor) -> Tensor:
    """(Region, voxel) pairs whose thresholded prediction ``z > 0`` is the target (no gradient flows through this)."""
    return (logits.detach() > 0) == (targets > 0.5)


def region_soft_dice(logits: Tensor, labels: Tensor, *, smooth: float = 1e-5) -> Tensor:
    """Soft Dice loss of sigmoid region logits, the region counterpart of :class:`~common.losses.SoftDiceLoss`.

    Liu et al. (2021), eq. 5, with the region probabilities in place of the softmax: for each sample and each region
    channel ``r`` (WT, TC, ET; all three count, there is no background channel)::

        D_r = (2 * sum_v(s_r * y_r) + smooth) / (sum_v s_r + sum_v y_r + smooth),    s_r = sigmoid(z_r)

    and the loss is ``1 - mean_r D_r``, averaged over the batch: the smoothing ``gamma`` and the reduction of
    :class:`~common.losses.SoftDiceLoss`, computed by the same MONAI :class:`~monai.losses.DiceLoss` (``batch=False``,
    ``smooth_nr = smooth_dr = smooth``), on the region masks instead of the one-hot labels. (The zoo bundle trains
    with ``squared_pred=True`` and no numerator smoothing; this is the attack loss, kept equal to the softmax one.)

    Args:
        logits: region logits ``(B, 3, *spatial)``.
        labels: BraTS labels ``(B, 1, *spatial)``.
        smooth: the smoothing term gamma, >= 0.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: if ``smooth`` < 0, for logits that are not ``(B, 3, *spatial)`` or labels that do not fit
            them.
    """
    smooth = check_number("smooth", smooth, 0)
    targets = region_targets(logits, labels)
    dice = DiceLoss(include_background=True, softmax=False, smooth_nr=smooth, smooth_dr=smooth, batch=False)
    return dice(torch.sigmoid(logits.float()), targets)


def region_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of the region logits, the mean over regions and voxels (and samples).

    ``1/(3N) sum_r sum_v BCE(z_rv, y_rv)`` with ``BCE(z, y) = -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))``: the
    attacks' ``"ce"`` for sigmoid outputs, the negative log-likelihood of the targets under the model's independent
    Bernoulli regions, as the voxel-averaged cross-entropy is under its softmax (the loss of FGSM, Goodfellow,
    Shlens & Szegedy 2015, "Explaining and harnessing adversarial examples", ICLR).

    Args:
        logits: region logits ``(B, 3, *spatial)``.
        labels: BraTS labels ``(B, 1, *spatial)``.

    Returns:
        A scalar.

    Raises:
        RobustsegError: for logits that are not ``(B, 3, *spatial)`` or labels that do not fit them.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), region_targets(logits, labels))


def region_masked_cross_entropy(logits: Tensor, labels: Tensor, *, normalize: str = "all") -> Tensor:
    """Binary cross-entropy of the (region, voxel) pairs still predicted correctly (SEA's masked CE, per region).

    Croce, Singh & Hein (2024), "Towards Reliable Evaluation and Fast Training of Robust Semantic Segmentation
    Models", ECCV, the loss L_MCE, with each region's binary decision in place of the voxel's class:
    ``1/(3N) sum_r sum_v 1[(z_rv > 0) = y_rv] BCE(z_rv, y_rv)``. A pair already flipped adds nothing, so the attack
    works on the region decisions it has not yet flipped. The mask is detached; with no correct pair the loss and its
    gradient are 0 (no NaN), as in :func:`~common.losses.masked_cross_entropy`.

    Args:
        logits: region logits ``(B, 3, *spatial)``.
        labels: BraTS labels ``(B, 1, *spatial)``.
        normalize: ``"all"`` (default, ``1/(3N)`` over all region-voxel pairs of the sample) or ``"correct"`` (the
            mean over the correct pairs only).

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: for a bad ``normalize``, logits that are not ``(B, 3, *spatial)`` or labels that do not fit
            them.
    """
    normalize = look_up_option("normalize", normalize, ("all", "correct"))
    bce, targets = _pair_bce(logits, labels)
    correct = _correct(logits, targets)
    # where, not a product: a 0 weight times an infinite BCE would be NaN
    total = torch.where(correct, bce, bce.new_zeros(())).flatten(1).sum(1)
    count = correct.flatten(1).sum(1) if normalize == "correct" else torch.full_like(total, correct[0].numel())
    return (total / count.clamp(min=1)).mean()


def region_balanced_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy: per region, the inside and the outside of the region weigh the same.

    The region counterpart of :func:`~common.losses.balanced_cross_entropy` (after SEA's L_MCE-Bal, Croce, Singh &
    Hein 2024, ECCV). Each region is a two-class problem; as the softmax version weighs every class present in the
    sample's ground truth the same, here the two classes of each region do::

        L_r = 1/|K_r| sum_{c in K_r} 1/|V_rc| sum_{v in V_rc} BCE(z_rv, c),    L = 1/3 sum_r L_r

    with ``V_r1`` the voxels inside region ``r``, ``V_r0`` those outside and ``K_r`` the classes present (a region
    absent from the sample counts its outside only). Equivalently, each pair's BCE is weighted by the inverse
    frequency of its class within its region, and the regions weigh the same, as in the mean region Dice. Frequencies
    are per sample and unmasked.

    Args:
        logits: region logits ``(B, 3, *spatial)``.
        labels: BraTS labels ``(B, 1, *spatial)``.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: for logits that are not ``(B, 3, *spatial)`` or labels that do not fit them.
    """
    bce, targets = _pair_bce(logits, labels)
    bce, inside = bce.flatten(2), targets.flatten(2)  # (B, 3, N)
    outside = 1 - inside
    sums = torch.stack([(bce * inside).sum(2), (bce * outside).sum(2)], dim=-1)  # (B, 3, 2)
    counts = torch.stack([inside.sum(2), outside.sum(2)], dim=-1)
    present = counts > 0
    means = sums / counts.clamp(min=1)
    return ((means * present).sum(-1) / present.sum(-1)).mean(1).mean()


def region_jensen_shannon(logits: Tensor, labels: Tensor) -> Tensor:
    """Jensen-Shannon divergence between each region's Bernoulli prediction and its target, averaged.

    Croce, Singh & Hein (2024), ECCV, the loss L_JS, per (region, voxel) pair: with ``p = (s, 1 - s)``,
    ``s = sigmoid(z)``, the target ``q = (y, 1 - y)`` and ``m = (p + q) / 2``,
    ``JS(p || q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, summed over the two outcomes and averaged over regions and voxels
    (the softmax version, :func:`~common.losses.jensen_shannon`, sums over the 4 classes and averages over voxels).
    Bounded by ``log 2`` per pair. ``log s`` and ``log(1 - s)`` come from ``logsigmoid(z)`` and ``logsigmoid(-z)``
    and ``m`` has a floor, so saturated pairs keep finite values and gradients, as there.

    Args:
        logits: region logits ``(B, 3, *spatial)``.
        labels: BraTS labels ``(B, 1, *spatial)``.

    Returns:
        The batch mean of the per-sample losses, a scalar in ``[0, log 2]``.

    Raises:
        RobustsegError: for logits that are not ``(B, 3, *spatial)`` or labels that do not fit them.
    """
    y = region_targets(logits, labels)
    z = logits.float()
    log_p = torch.stack([F.logsigmoid(z), F.logsigmoid(-z)])  # the outcomes (inside, outside) first
    p = log_p.exp()
    q = torch.stack([y, 1 - y])
    log_m = ((p + q) / 2).clamp(min=torch.finfo(p.dtype).tiny).log()
    kl_p = p * (log_p - log_m)
    kl_q = torch.xlogy(q, q) - q * log_m
    return (0.5 * (kl_p + kl_q)).sum(0).flatten(1).mean(1).mean()


def region_segpgd_loss(logits: Tensor, labels: Tensor, step: int = 1, steps: int = 1) -> Tensor:
    """The SegPGD loss at step ``step`` of ``steps``, over (region, voxel) pairs.

    Gu, Zhao, Tresp & Torr (2022), "SegPGD: An Effective and Efficient Adversarial Attack for Evaluating and Boosting
    Segmentation Robustness", ECCV, Sec. 3, with each region's binary decision in place of the voxel's class:
    ``L = (1 - l_t)/(3N) sum_{(r,v) correct} BCE_rv + l_t/(3N) sum_{(r,v) wrong} BCE_rv`` with
    ``l_t = (t - 1) / (2T)``. Correct or wrong is decided per pair by ``(z > 0) == y`` (detached), as
    :func:`~common.losses.segpgd_loss` decides it per voxel by the argmax.

    Args:
        logits: region logits ``(B, 3, *spatial)``.
        labels: BraTS labels ``(B, 1, *spatial)``.
        step: the 1-based step ``t``.
        steps: the number of steps ``T``, >= ``step``.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: if ``steps`` < 1 or ``step`` is not in ``[1, steps]``, and for bad logits or labels.
    """
    steps = check_int("steps", steps, 1)
    step = check_int("step", step, 1, steps)
    bce, targets = _pair_bce(logits, labels)
    return segpgd_weighting(bce, _correct(logits, targets), step, steps)


class RegionSegPGDLoss(SegPGDLoss):
    """SegPGD's region loss (:func:`region_segpgd_loss`) that follows the attack's step, like
    :class:`~common.losses.SegPGDLoss`: the attacks call :meth:`set_step` before each gradient.

    Example::

        loss = RegionSegPGDLoss()
        loss.set_step(3, 10)
        value = loss(region_logits, labels)   # (1 - 0.1) BCE of the correct pairs + 0.1 BCE of the wrong ones, / 3N
    """

    __name__ = "region_segpgd"
    _loss = staticmethod(region_segpgd_loss)

    def __init__(self) -> None:
        super().__init__()  # the BraTS labels: the regions are defined on them

    def _loss_options(self) -> dict[str, object]:
        return {}  # region_segpgd_loss takes no label values


def region_cospgd_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The CosPGD loss over (region, voxel) pairs: each pair's BCE weighted by its cosine similarity to the target.

    Agnihotri, Jung & Keuper (2024), "CosPGD: an efficient white-box adversarial attack for pixel-wise prediction
    tasks", ICML, Algorithm 1, with the Bernoulli distribution of each region in place of the voxel's softmax: the
    cosine between the prediction ``(s, 1 - s)``, ``s = sigmoid(z)``, and the one-hot target ``(y, 1 - y)`` is

        cos_rv = (y s + (1 - y)(1 - s)) / sqrt(s^2 + (1 - s)^2)

    (the target has norm 1), detached as in the authors' ``cospgd_scale`` and :func:`~common.losses.cospgd_loss`,
    and ``L = 1/(3N) sum_r sum_v cos_rv BCE(z_rv, y_rv)``. The weight is per pair, not an image mean.

    Args:
        logits: region logits ``(B, 3, *spatial)``.
        labels: BraTS labels ``(B, 1, *spatial)``.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: for logits that are not ``(B, 3, *spatial)`` or labels that do not fit them.
    """
    bce, y = _pair_bce(logits, labels)
    s = torch.sigmoid(logits.detach().float())
    # |(s, 1 - s)|_2 >= 1/sqrt(2): no division by zero
    cosine = (y * s + (1 - y) * (1 - s)) / (s.square() + (1 - s).square()).sqrt()
    return (cosine * bce).flatten(1).mean(1).mean()
