"""Certified Dice of the BraTS regions: the Dice a certificate guarantees within an L2 radius.

At radius ``r``, a voxel counts as predicted only where the certificate holds with a radius of at least ``r``
(:meth:`~common.certify.segcertify.Certificate.certified_at`); the other voxels are *not certified*. Two conventions
for them, per region R (WT = {1, 2, 4}, TC = {1, 4}, ET = {4}):

* ``"worst_case"`` (default): a non-certified voxel is wrong in the worst way -- a false negative where the ground
  truth is in R and a false positive where it is not. The predicted mask of R is
  ``(certified & c_hat in R) | (~certified & label not in R)``. This is a lower bound, with probability at least
  ``1 - alpha``, on the Dice of the smoothed segmenter's prediction under *any* input perturbation of L2 norm below
  ``r``: certified voxels keep their class, every other voxel may take any class.
* ``"abstain"``: a non-certified voxel is a label of its own, in no region: a false negative where the ground truth
  is in R and nothing where it is not. This is how SegCertify scores abstentions (Fischer et al. 2021, their code's
  ``test_smoothing.py``: abstain is an extra class of the confusion matrix, so it only costs the true class).
  Laousy et al. (MICCAI 2023) also count abstained pixels as wrong. It is the Dice of the abstaining certified map,
  not a bound under attack.

Certified voxels are scored as predicted, right or wrong. Empty masks follow :func:`common.metrics.dice.region_dice`
(both empty: 1.0): under ``"worst_case"`` a volume without tumour scores 1.0 only if every voxel is certified
outside R.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.metrics import compute_dice
from torch import Tensor

from common.certify.segcertify import Certificate
from common.data.labels import REGIONS, indices_to_labels, labels_to_indices, region_masks
from common.errors import RobustsegError
from common.utils.validation import look_up_option

__all__ = ["NON_CERTIFIED", "certified_dice", "certified_region_masks"]

NON_CERTIFIED: tuple[str, ...] = ("worst_case", "abstain")
"""How a voxel that is not certified at the radius is scored (see the module)."""


def certified_region_masks(
    selected: Tensor, certified: Tensor, label: Tensor, regions: Sequence[str] = ("WT", "TC", "ET"),
    non_certified: str = "worst_case",
) -> Tensor:  # fmt: skip
    """The predicted region masks that certified Dice scores.

    Args:
        selected: ``c_hat`` class indices ``(B, 1, *spatial)``, in the channel order of
            :data:`~common.data.labels.BRATS_LABELS`.
        certified: which voxels are certified at the radius, bool ``(B, 1, *spatial)``.
        label: the ground-truth BraTS label map ``(B, 1, *spatial)``.
        regions: region names among WT, TC, ET.
        non_certified: ``"worst_case"`` or ``"abstain"`` (see the module).

    Returns:
        Bool masks ``(B, len(regions), *spatial)``.

    Raises:
        RobustsegError: if the shapes differ, ``non_certified`` or a region name is unknown, or ``label`` holds a
            value outside {0, 1, 2, 4}.
    """
    non_certified = look_up_option("non_certified", non_certified, NON_CERTIFIED)
    if not (selected.shape == certified.shape == label.shape) or label.ndim < 3 or label.shape[1] != 1:
        raise RobustsegError(
            f"selected, certified and label must share one shape (B, 1, *spatial), got {tuple(selected.shape)}, "
            f"{tuple(certified.shape)} and {tuple(label.shape)}."
        )
    labels_to_indices(label)  # a value outside {0, 1, 2, 4} would silently fall out of every region
    predicted = region_masks(indices_to_labels(selected), regions) & certified
    if non_certified == "abstain":
        return predicted
    return predicted | (~certified & ~region_masks(label, regions))


def certified_dice(
    certificate: Certificate, label: Tensor, radius: float = 0.0, regions: Sequence[str] = ("WT", "TC", "ET"),
    non_certified: str = "worst_case",
) -> Tensor:  # fmt: skip
    """Certified Dice per volume and region at L2 radius ``radius``.

    Args:
        certificate: the volumes' certificate (:func:`~common.certify.segcertify.certify`).
        label: the ground-truth BraTS label map ``(B, 1, *spatial)``.
        radius: the L2 radius in input units (>= 0); a voxel counts as predicted only if certified at it.
        regions: region names among WT, TC, ET, one output column each.
        non_certified: ``"worst_case"`` (default) or ``"abstain"`` (see the module).

    Returns:
        Dice ``(B, len(regions))`` in [0, 1].

    Raises:
        RobustsegError: as :func:`certified_region_masks`, or for a negative radius.

    Example::

        dice = certified_dice(certify(smoothing, images), labels, radius=0.1)   # (B, 3): WT, TC, ET
    """
    unknown = [r for r in regions if r not in REGIONS]
    if unknown:
        raise RobustsegError(f"regions: unknown region(s) {unknown}, expected some of {list(REGIONS)}.")
    certified = certificate.certified_at(radius)
    predicted = certified_region_masks(certificate.selected, certified, label, regions, non_certified)
    return compute_dice(predicted, region_masks(label, regions), include_background=True, ignore_empty=False)
