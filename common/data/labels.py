"""BraTS label conventions shared by data, losses, attacks and metrics.

Label tensors in robustseg carry the BraTS values {0, 1, 2, 4} by default: 0 background, 1 necrotic and
non-enhancing tumour core (NCR/NET), 2 peritumoral oedema (ED), 4 GD-enhancing tumour (ET). Scoring uses the nested
regions of the BraTS challenge: whole tumour WT = {1, 2, 4}, tumour core TC = {1, 4}, enhancing tumour ET = {4}.

:func:`labels_to_indices` and :func:`indices_to_labels` take other label values too (``values``): a generic
``K``-class task whose labels are the channel indices passes ``values=range(K)``.

A network's output ``(B, C, *spatial)`` follows one of two conventions, told apart by its channel count ``C``
(:func:`check_output_channels`):

* ``C = 4``: softmax logits over the BraTS labels; channel ``i`` scores label ``BRATS_LABELS[i]`` (robustseg's own
  networks). The prediction is the argmax over channels.
* ``C = 3``: sigmoid region logits, one independent logit per nested region and voxel, in the order of
  :data:`REGION_CHANNELS` (channel 0 = WT, 1 = TC, 2 = ET); ``sigmoid(z)`` is the probability that the voxel belongs
  to the region. This is the output of the MONAI Model Zoo bundle ``brats_mri_segmentation`` (a SegResNet,
  Myronenko 2018, "3D MRI brain tumor segmentation using autoencoder regularization", BrainLes) once its channels
  are put in this canonical order by the model adapter. The prediction is the zoo's postprocessing rule
  (:func:`logits_to_labels`).

Any other channel count is refused with one :class:`~common.errors.RobustsegError` line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from common.errors import RobustsegError

__all__ = [
    "BRATS_LABELS",
    "MODALITIES",
    "REGIONS",
    "REGION_CHANNELS",
    "check_output_channels",
    "is_region_output",
    "labels_to_indices",
    "indices_to_labels",
    "region_masks",
    "logits_to_labels",
    "channel_argmax",
]

BRATS_LABELS: tuple[int, ...] = (0, 1, 2, 4)
"""Label values of a BraTS segmentation, in network channel order."""

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""Input channel order (the paper's T1, T1Gd, T2, FLAIR) and the BraTS file suffixes."""

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
"""Scoring regions as sets of BraTS label values."""

REGION_CHANNELS: tuple[str, ...] = ("WT", "TC", "ET")
"""The region of each channel of a sigmoid region output (3 channels), names of :data:`REGIONS`."""


def _lookup_table(values: Sequence[int], device: torch.device) -> Tensor:
    """``lut[v] = i`` for ``v = values[i]``, -1 elsewhere; ``max(values) + 1`` entries."""
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise RobustsegError(f"values: expected distinct non-negative label values, got {list(values)}.")
    lut = torch.full((max(values) + 1,), -1, dtype=torch.long, device=device)
    lut[torch.as_tensor(list(values), device=device)] = torch.arange(len(values), device=device)
    return lut


def labels_to_indices(labels: Tensor, values: Sequence[int] = BRATS_LABELS) -> Tensor:
    """Map a label map to channel indices: ``values[i] -> i`` (BraTS by default: {0, 1, 2, 4} -> {0, 1, 2, 3}).

    Args:
        labels: integer-valued tensor of label values (any shape, any numeric dtype).
        values: the label value scored by each channel, distinct and non-negative (:data:`BRATS_LABELS` by default;
            ``range(K)`` for a generic ``K``-class task whose labels are the channel indices).

    Returns:
        A ``torch.long`` tensor of the same shape holding channel indices in ``[0, len(values))``.

    Raises:
        RobustsegError: if ``labels`` holds a value not in ``values`` (the message names the values found and the
            expected ones), or ``values`` are empty, negative or repeated.
    """
    values = tuple(int(v) for v in values)
    lut = _lookup_table(values, labels.device)
    lab = labels.long()
    bad = (lab < 0) | (lab >= len(lut))
    if not bad.any():
        idx = lut[lab]
        bad = idx < 0
        if not bad.any():
            return idx
    bad = ~torch.isin(lab, torch.as_tensor(values, device=lab.device))  # all of them, out of the table or not
    found = sorted({int(v) for v in torch.unique(labels[bad])})
    what = "BraTS labels" if values == BRATS_LABELS else "label values of the task"
    raise RobustsegError(f"labels: values {found} are not {what}, expected only {list(values)}.")


def indices_to_labels(indices: Tensor, values: Sequence[int] = BRATS_LABELS) -> Tensor:
    """Map channel indices (e.g. an argmax over the network output) back to label values: ``i -> values[i]``.

    Args:
        indices: integer tensor of channel indices in ``[0, len(values))``.
        values: the label value of each channel (:data:`BRATS_LABELS` by default).

    Returns:
        A tensor of label values with the shape of ``indices`` and dtype ``torch.long``.
    """
    return torch.as_tensor(list(values), dtype=torch.long, device=indices.device)[indices.long()]


def region_masks(labels: Tensor, regions: Sequence[str] = ("WT", "TC", "ET")) -> Tensor:
    """Binary masks of the BraTS scoring regions.

    Args:
        labels: BraTS label map of shape ``(B, 1, *spatial)``.
        regions: names among ``REGIONS`` ("WT", "TC", "ET"), one output channel each.

    Returns:
        A bool tensor of shape ``(B, len(regions), *spatial)``.

    Raises:
        RobustsegError: if a region name is unknown.
    """
    unknown = [r for r in regions if r not in REGIONS]
    if unknown:
        raise RobustsegError(f"regions: unknown region(s) {unknown}, expected some of {list(REGIONS)}.")
    lab = labels.long()
    return torch.cat([torch.isin(lab, torch.as_tensor(REGIONS[r], device=lab.device)) for r in regions], dim=1)


def channel_argmax(logits: Tensor) -> Tensor:
    """``torch.argmax(logits, dim=1, keepdim=True)``, computed channels-last: the same indices, several times faster.

    An argmax over the few channels of a (B, C, *spatial) tensor reads C values ``prod(spatial)`` apart for every
    voxel; on a 2-core CPU that took 99 ms for a (4, 4, 48, 48, 48) tensor and 237 ms for one 128^3 volume, against
    7 ms and 49 ms when the channels are first made the last, contiguous dimension (``benchmarks/bench_argmax.py``).
    Ties go to the first channel, as with ``torch.argmax``.

    Args:
        logits: ``(B, C, *spatial)``.

    Returns:
        The channel indices ``(B, 1, *spatial)``, ``torch.long``.
    """
    return logits.movedim(1, -1).contiguous().argmax(-1).unsqueeze(1)


def check_output_channels(logits: Tensor) -> int:
    """The channel count of a network output, checked against the two conventions of this module.

    Args:
        logits: network output ``(B, C, *spatial)``.

    Returns:
        ``C``: 4 (softmax logits over :data:`BRATS_LABELS`) or 3 (sigmoid region logits in the order of
        :data:`REGION_CHANNELS`).

    Raises:
        RobustsegError: if ``logits`` is not ``(B, C, *spatial)`` or ``C`` is neither 4 nor 3.
    """
    if logits.ndim < 3:
        raise RobustsegError(f"logits: expected shape (B, C, *spatial), got {tuple(logits.shape)}.")
    channels = int(logits.shape[1])
    if channels not in (len(BRATS_LABELS), len(REGION_CHANNELS)):
        raise RobustsegError(
            f"logits: {channels} output channels, expected {len(BRATS_LABELS)} (softmax over BraTS labels "
            f"{list(BRATS_LABELS)}) or {len(REGION_CHANNELS)} (sigmoid regions {', '.join(REGION_CHANNELS)})."
        )
    return channels


def is_region_output(logits: Tensor) -> bool:
    """Whether ``logits`` ``(B, C, *spatial)`` are sigmoid region logits (3 channels, :data:`REGION_CHANNELS`) rather
    than softmax logits over the BraTS labels (4 channels).

    Raises:
        RobustsegError: for any other channel count (:func:`check_output_channels`).
    """
    return check_output_channels(logits) == len(REGION_CHANNELS)


def logits_to_labels(logits: Tensor, values: Sequence[int] = BRATS_LABELS) -> Tensor:
    """Turn a network output ``(B, C, *spatial)`` into a BraTS label map ``(B, 1, *spatial)``.

    4 channels (softmax logits): the argmax over channels (:func:`channel_argmax`), channel ``i`` giving
    ``values[i]``.

    3 channels (sigmoid region logits WT, TC, ET): the postprocessing of the MONAI Model Zoo bundle
    ``brats_mri_segmentation`` (``torch.where(et > 0, 4, torch.where(tc > 0, 1, torch.where(wt > 0, 2, 0)))``, with
    ``sigmoid(z) > 0.5`` written as ``z > 0``): label 4 where the ET logit is positive, else 1 where the TC logit is,
    else 2 where the WT logit is, else 0. ET wins over TC and TC over WT, so a voxel whose regions are not nested
    (ET positive, TC negative) is still 4. The labels 0, 1, 2, 4 are given as ``values[0]``, ``values[1]``,
    ``values[2]``, ``values[3]`` (the BraTS values by default).

    Args:
        logits: network output, 4 or 3 channels (see the module docstring).
        values: the label value of each softmax channel (4 values).

    Returns:
        The label map ``(B, 1, *spatial)``, ``torch.long``.

    Raises:
        RobustsegError: if the output has neither 4 nor 3 channels.
    """
    if check_output_channels(logits) == len(BRATS_LABELS):
        return indices_to_labels(channel_argmax(logits), values)
    wt, tc, et = (logits[:, REGION_CHANNELS.index(r)].unsqueeze(1) > 0 for r in ("WT", "TC", "ET"))
    # channel indices of BRATS_LABELS: 3 -> label 4, 1 -> label 1, 2 -> label 2, 0 -> label 0
    index = torch.where(et, 3, torch.where(tc, 1, torch.where(wt, 2, 0)))
    return indices_to_labels(index, values)
