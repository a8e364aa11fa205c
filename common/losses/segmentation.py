"""Segmentation attack losses: cross-entropy, masked and class-balanced cross-entropy, Jensen-Shannon, SegPGD and
CosPGD.

Each loss maps ``(logits (B, len(values), *spatial), labels (B, 1, *spatial))`` to a scalar, where channel ``i`` scores
the label value ``values[i]`` (as :func:`common.data.labels.labels_to_indices` orders them): the BraTS labels
{0, 1, 2, 4} by default (``values=BRATS_LABELS``), or the channel indices ``0 .. K-1`` of a generic ``K``-class task
(``values=range(K)``). The result is the mean over the batch of each sample's loss (the attacks apply a loss to one
sample at a time, :meth:`common.attacks.base.Attack.sample_losses`). 2D and 3D inputs alike. The attacks know them by
name (:data:`common.attacks.base.LOSSES`): ``"ce"``, ``"masked_ce"``, ``"balanced_ce"``, ``"js"``, ``"segpgd"``,
``"cospgd"``.

Per-voxel weights that come from the prediction (which voxels are still correct, the cosine similarity of CosPGD) are
detached, as in the papers' code: they choose where the loss looks, the gradient is that of the weighted
cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from common.data.labels import BRATS_LABELS, channel_argmax, labels_to_indices
from common.errors import RobustsegError
from common.utils.validation import check_int, look_up_option

__all__ = [
    "SegPGDLoss",
    "balanced_cross_entropy",
    "cospgd_loss",
    "cross_entropy",
    "jensen_shannon",
    "masked_cross_entropy",
    "segpgd_loss",
]


def _class_indices(logits: Tensor, labels: Tensor, values: Sequence[int]) -> Tensor:
    """The class index of each voxel ``(B, *spatial)``, after checking that logits and labels fit ``values``.

    Raises:
        RobustsegError: for logits that are not ``(B, len(values), *spatial)``, labels that are not
            ``(B, 1, *spatial)`` or hold a value outside ``values``.
    """
    if logits.ndim < 3 or logits.shape[1] != len(values):
        what = "BraTS label" if tuple(values) == BRATS_LABELS else "label value"
        raise RobustsegError(
            f"logits: expected shape (B, {len(values)}, *spatial) (one channel per {what} {list(values)}), "
            f"got {tuple(logits.shape)}."
        )
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise RobustsegError(f"labels: shape {tuple(labels.shape)} does not fit logits, expected {expected}.")
    return labels_to_indices(labels, values)[:, 0]


def _voxel_ce(logits: Tensor, labels: Tensor, *, values: Sequence[int] = BRATS_LABELS) -> tuple[Tensor, Tensor]:
    """Per-voxel cross-entropy ``(B, *spatial)`` and the class index of each voxel ``(B, *spatial)``.

    Args:
        logits: network output ``(B, len(values), *spatial)``.
        labels: label map ``(B, 1, *spatial)`` holding values of ``values``.
        values: the label value scored by each logit channel.

    Returns:
        The per-voxel cross-entropy (float32 or wider) and the class indices (``torch.long``).

    Raises:
        RobustsegError: for logits without one channel per value of ``values``, labels that do not fit them or
            hold a value outside ``values``.
    """
    indices = _class_indices(logits, labels, values)
    return F.cross_entropy(logits.float(), indices, reduction="none"), indices


def cross_entropy(logits: Tensor, labels: Tensor, *, values: Sequence[int] = BRATS_LABELS) -> Tensor:
    """Voxel-averaged cross-entropy of softmax logits: the attacks' ``"ce"`` (FGSM's loss, Goodfellow, Shlens &
    Szegedy 2015, "Explaining and harnessing adversarial examples", ICLR).

    ``1/(BN) sum_b sum_v CE(u_bv, y_bv)``, exactly ``F.cross_entropy(logits.float(), labels_to_indices(labels,
    values)[:, 0])`` (every sample has the same ``N`` voxels, so it is also the batch mean of the per-sample means).

    Args:
        logits: network output ``(B, len(values), *spatial)``.
        labels: label map ``(B, 1, *spatial)`` holding values of ``values``.
        values: the label value scored by each logit channel: :data:`~common.data.labels.BRATS_LABELS` (default) or
            ``range(K)`` for a ``K``-class task whose labels are the channel indices.

    Returns:
        A scalar.

    Raises:
        RobustsegError: for logits without one channel per value of ``values``, labels that do not fit them or
            hold a value outside ``values``.
    """
    return F.cross_entropy(logits.float(), _class_indices(logits, labels, values))


def _correct(logits: Tensor, indices: Tensor) -> Tensor:
    """Voxels whose argmax prediction is the ground-truth class (no gradient flows through this choice)."""
    return channel_argmax(logits.detach())[:, 0] == indices


def masked_cross_entropy(
    logits: Tensor, labels: Tensor, *, normalize: str = "all", values: Sequence[int] = BRATS_LABELS
) -> Tensor:
    """Cross-entropy of the voxels still predicted correctly (SEA's masked CE).

    Croce, Singh & Hein (2024), "Towards Reliable Evaluation and Fast Training of Robust Semantic Segmentation
    Models", ECCV, the loss L_MCE: ``1/N sum_v 1[argmax u_v = y_v] CE(u_v, y_v)``. A voxel already misclassified
    adds nothing, so the attack spends its budget on the voxels it has not yet flipped instead of pushing the lost ones
    further (the same idea as SegPGD's weighting, Gu et al. 2022). The mask is detached, as in SEA's code.

    When no voxel is correct the loss is 0 and so is its gradient (no division by zero, no NaN): there is nothing left
    to flip.

    Args:
        logits: network output ``(B, len(values), *spatial)``.
        labels: label map ``(B, 1, *spatial)`` holding values of ``values``.
        normalize: ``"all"`` (default, the paper's ``1/N`` over all ``N`` voxels of the sample) or ``"correct"``
            (the mean over the correct voxels only: ``N / #correct`` times the former, a per-sample factor that
            leaves the sign of the gradient unchanged).
        values: the label value scored by each logit channel: :data:`~common.data.labels.BRATS_LABELS` (default) or
            ``range(K)`` for a ``K``-class task whose labels are the channel indices.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: for a bad ``normalize``, logits without one channel per value of ``values``, labels that do
            not fit them or hold a value outside ``values``.
    """
    normalize = look_up_option("normalize", normalize, ("all", "correct"))
    ce, indices = _voxel_ce(logits, labels, values=values)
    correct = _correct(logits, indices)
    # where, not a product: a 0 weight times an infinite CE would be NaN
    total = torch.where(correct, ce, ce.new_zeros(())).flatten(1).sum(1)
    count = correct.flatten(1).sum(1) if normalize == "correct" else torch.full_like(total, correct[0].numel())
    return (total / count.clamp(min=1)).mean()


def balanced_cross_entropy(logits: Tensor, labels: Tensor, *, values: Sequence[int] = BRATS_LABELS) -> Tensor:
    """Class-balanced cross-entropy: every class present in the sample's ground truth weighs the same.

    ``1/|K| sum_{c in K} 1/|V_c| sum_{v in V_c} CE(u_v, c)`` with ``V_c`` the voxels of ground-truth class ``c`` and
    ``K`` the classes present in the sample (absent classes are skipped). Equivalently, each voxel's CE is weighted
    by the inverse frequency of its class in the sample. The balanced variant of SEA's losses (Croce, Singh & Hein
    2024, ECCV, L_MCE-Bal, which weights classes by their frequency so that small classes are not drowned by the
    background); here the frequencies are per sample and unmasked, so in a brain volume the background (most of
    the voxels) weighs as much as the enhancing tumour (a few hundred).

    Args:
        logits: network output ``(B, len(values), *spatial)``.
        labels: label map ``(B, 1, *spatial)`` holding values of ``values``.
        values: the label value scored by each logit channel: :data:`~common.data.labels.BRATS_LABELS` (default) or
            ``range(K)`` for a ``K``-class task whose labels are the channel indices.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: for logits without one channel per value of ``values``, labels that do not fit them or
            hold a value outside ``values``.
    """
    ce, indices = _voxel_ce(logits, labels, values=values)
    onehot = F.one_hot(indices.flatten(1), len(values)).to(ce.dtype)  # (B, N, C)
    sums = (onehot * ce.flatten(1).unsqueeze(-1)).sum(1)  # (B, C): each class's summed CE
    counts = onehot.sum(1)
    present = counts > 0
    means = sums / counts.clamp(min=1)
    return ((means * present).sum(1) / present.sum(1)).mean()


def jensen_shannon(logits: Tensor, labels: Tensor, *, values: Sequence[int] = BRATS_LABELS) -> Tensor:
    """Jensen-Shannon divergence between the softmax and the one-hot ground truth, per voxel, averaged.

    Croce, Singh & Hein (2024), ECCV, the loss L_JS: ``JS(p_v || e_{y_v}) = 1/2 KL(p_v || m_v) + 1/2 KL(e_{y_v} ||
    m_v)`` with ``m_v = (p_v + e_{y_v}) / 2``, summed over classes and averaged over voxels. Bounded by ``log 2`` per
    voxel, it saturates on voxels already misclassified with confidence, so (like the masked CE) the attack's
    gradient comes from the voxels still to flip, without a hard mask.

    Args:
        logits: network output ``(B, len(values), *spatial)``.
        labels: label map ``(B, 1, *spatial)`` holding values of ``values``.
        values: the label value scored by each logit channel: :data:`~common.data.labels.BRATS_LABELS` (default) or
            ``range(K)`` for a ``K``-class task whose labels are the channel indices.

    Returns:
        The batch mean of the per-sample losses, a scalar in ``[0, log 2]``.

    Raises:
        RobustsegError: for logits without one channel per value of ``values``, labels that do not fit them or
            hold a value outside ``values``.
    """
    _, indices = _voxel_ce(logits, labels, values=values)
    log_p = torch.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    q = F.one_hot(indices, len(values)).movedim(-1, 1).to(p.dtype)
    # log_softmax, not log(p), and a floor on m: where p underflows to 0 the terms and their gradients stay finite
    log_m = ((p + q) / 2).clamp(min=torch.finfo(p.dtype).tiny).log()
    kl_p = p * (log_p - log_m)
    kl_q = torch.xlogy(q, q) - q * log_m
    return (0.5 * (kl_p + kl_q)).sum(1).flatten(1).mean(1).mean()


def segpgd_loss(
    logits: Tensor, labels: Tensor, step: int = 1, steps: int = 1, *, values: Sequence[int] = BRATS_LABELS
) -> Tensor:
    """The SegPGD loss at step ``step`` of ``steps``.

    Gu, Zhao, Tresp & Torr (2022), "SegPGD: An Effective and Efficient Adversarial Attack for Evaluating and Boosting
    Segmentation Robustness", ECCV, Sec. 3: ``L = (1 - l_t)/N sum_{v correct} CE_v + l_t/N sum_{v wrong} CE_v`` with
    ``l_t = (t - 1) / (2T)`` at step ``t`` of ``T``: at first only the correctly classified voxels count, then the
    misclassified ones gain weight (up to ``(T - 1) / 2T``, never more than the correct ones) so that they are not
    flipped back. Correct or wrong is decided per voxel by the current argmax prediction (detached).

    Args:
        logits: network output ``(B, len(values), *spatial)``.
        labels: label map ``(B, 1, *spatial)`` holding values of ``values``.
        step: the 1-based step ``t``.
        steps: the number of steps ``T``, >= ``step``.
        values: the label value scored by each logit channel: :data:`~common.data.labels.BRATS_LABELS` (default) or
            ``range(K)`` for a ``K``-class task whose labels are the channel indices.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: if ``steps`` < 1 or ``step`` is not in ``[1, steps]``, for logits without one channel per
            value of ``values``, labels that do not fit them or hold a value outside ``values``.
    """
    steps = check_int("steps", steps, 1)
    step = check_int("step", step, 1, steps)
    ce, indices = _voxel_ce(logits, labels, values=values)
    return segpgd_weighting(ce, _correct(logits, indices), step, steps)


def segpgd_weighting(losses: Tensor, correct: Tensor, step: int, steps: int) -> Tensor:
    """SegPGD's weighting of per-element losses: ``(1 - l_t)`` where ``correct``, ``l_t = (t - 1) / (2T)`` elsewhere,
    averaged over each sample's elements, then over the batch (shared by :func:`segpgd_loss` and its region
    counterpart :func:`common.losses.regions.region_segpgd_loss`; ``step`` and ``steps`` already checked)."""
    weight = (step - 1) / (2 * steps)
    weighted = torch.where(correct, (1 - weight) * losses, weight * losses)
    return weighted.flatten(1).mean(1).mean()


class SegPGDLoss:
    """SegPGD's loss (:func:`segpgd_loss`) that follows the attack's step: the attacks call :meth:`set_step`.

    Every attack of :mod:`common.attacks` calls ``set_step(t, T)`` on its loss (when it has that method) before the
    gradient of step ``t`` of ``T`` (per restart for PGD; APGD's ``T`` is its number of iterations), so
    ``loss="segpgd"`` gives each attack Gu et al.'s schedule. Before any call it is the loss of step 1 (CE over the
    correct voxels only).

    Args:
        values: the label value scored by each logit channel, passed on to :func:`segpgd_loss`:
            :data:`~common.data.labels.BRATS_LABELS` (default) or ``range(K)`` for a ``K``-class task whose labels are
            the channel indices.

    Example::

        loss = SegPGDLoss()               # SegPGDLoss(values=(0, 1)) for a 2-class task labelled 0 and 1
        loss.set_step(3, 10)
        value = loss(logits, labels)     # (1 - 0.1) CE of the correct voxels + 0.1 CE of the wrong ones, / N
    """

    __name__ = "segpgd"

    def __init__(self, values: Sequence[int] = BRATS_LABELS) -> None:
        self.step, self.steps = 1, 1
        self.values = tuple(int(v) for v in values)

    def set_step(self, step: int, steps: int) -> None:
        """Set the 1-based step ``step`` of ``steps`` the next evaluations belong to.

        Raises:
            RobustsegError: if ``steps`` < 1 or ``step`` is not in ``[1, steps]``.
        """
        self.steps = check_int("steps", steps, 1)
        self.step = check_int("step", step, 1, self.steps)

    _loss = staticmethod(segpgd_loss)
    """The weighted loss of one step: ``(logits, labels, step, steps, **self._loss_options()) -> scalar`` (a subclass
    may change it, and :meth:`_loss_options` with it)."""

    def _loss_options(self) -> dict[str, object]:
        """The keyword arguments :meth:`__call__` passes to :attr:`_loss` besides the step: the label values."""
        return {"values": self.values}

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self._loss(logits, labels, self.step, self.steps, **self._loss_options())

    def __repr__(self) -> str:
        values = "" if self.values == BRATS_LABELS else f", values={self.values}"
        return f"{type(self).__name__}(step={self.step}, steps={self.steps}{values})"


def cospgd_loss(logits: Tensor, labels: Tensor, *, values: Sequence[int] = BRATS_LABELS) -> Tensor:
    """The CosPGD loss: per-voxel cross-entropy weighted by that voxel's cosine similarity to the ground truth.

    Agnihotri, Jung & Keuper (2024), "CosPGD: an efficient white-box adversarial attack for pixel-wise prediction
    tasks", ICML, Algorithm 1: ``L = 1/N sum_v cos(softmax(u_v), e_{y_v}) CE(u_v, y_v)``, where the cosine is taken
    per voxel between the softmax of the prediction and the one-hot target, and is detached (``cossim.detach() *
    loss`` in the authors' ``cospgd_scale``). A voxel still predicted confidently right (cosine near 1) keeps its
    full CE; one already flipped (cosine near 0) fades out. The weight is per voxel, not the mean cosine of the
    image (which would only rescale the plain CE).

    Args:
        logits: network output ``(B, len(values), *spatial)``.
        labels: label map ``(B, 1, *spatial)`` holding values of ``values``.
        values: the label value scored by each logit channel: :data:`~common.data.labels.BRATS_LABELS` (default) or
            ``range(K)`` for a ``K``-class task whose labels are the channel indices.

    Returns:
        The batch mean of the per-sample losses, a scalar.

    Raises:
        RobustsegError: for logits without one channel per value of ``values``, labels that do not fit them or
            hold a value outside ``values``.
    """
    ce, indices = _voxel_ce(logits, labels, values=values)
    p = torch.softmax(logits.detach().float(), dim=1)
    # cos(p, e_y) = p_y / |p|_2 (the one-hot vector has norm 1)
    cosine = p.gather(1, indices.unsqueeze(1))[:, 0] / p.norm(dim=1).clamp(min=1e-12)
    return (cosine * ce).flatten(1).mean(1).mean()
