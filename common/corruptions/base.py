"""What every corruption shares: the five-level parameter table, the per-channel intensity range and the clip.

A :class:`Corruption` is a named artifact model with one documented parameter set per severity (1 = mild,
5 = severe) and a function ``apply(image, params, seed)`` that returns the corrupted image. The image is a plain
float tensor ``(C, *spatial)`` with 2 or 3 spatial dimensions, in the network's input space (after the bundle's
intensity normalisation). :func:`~common.corruptions.registry.corrupt` checks the arguments, copies the input, calls
``apply`` and clips; the functions here know nothing of names or severities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from monai.data import MetaTensor
from torch import Tensor

__all__ = ["SEVERITIES", "Corruption", "channel_ranges", "clip_to_ranges", "plain"]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
"""The severity levels of every corruption (ImageNet-C's convention, Hendrycks & Dietterich 2019)."""

Apply = Callable[[Tensor, Mapping[str, Any], int], Tensor]


@dataclass(frozen=True)
class Corruption:
    """A corruption model and its severity table.

    Args:
        name: the registry name (the CSV's ``corruption`` column).
        apply: ``apply(image, params, seed) -> image``: the corrupted copy of a plain ``(C, *spatial)`` tensor for
            one row of ``levels``; it must not modify its input.
        levels: five parameter sets, for severities 1 to 5 in order.
        random: whether the result depends on ``seed`` (the deterministic ones ignore it).
        clip: whether the result is clipped to the clean image's per-channel ``[min, max]``.
        summary: one line on what it models, for reports.
    """

    name: str
    apply: Apply
    levels: tuple[Mapping[str, Any], ...]
    random: bool
    clip: bool
    summary: str

    def __post_init__(self) -> None:
        if len(self.levels) != len(SEVERITIES):
            raise ValueError(f"{self.name}: levels must have {len(SEVERITIES)} entries, got {len(self.levels)}.")
        object.__setattr__(self, "levels", tuple(MappingProxyType(dict(level)) for level in self.levels))

    def params(self, severity: int) -> dict[str, Any]:
        """The parameter set of ``severity`` (1-5), as a new dict (for CSV rows and logs)."""
        return dict(self.levels[severity - 1])


def plain(image: Tensor) -> Tensor:
    """``image`` as a plain :class:`torch.Tensor` (MONAI transforms return :class:`~monai.data.MetaTensor`)."""
    return image.as_tensor() if isinstance(image, MetaTensor) else image


def channel_ranges(image: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel minimum and maximum of ``(C, *spatial)``, shaped ``(C, 1, ..., 1)`` to broadcast."""
    flat = image.reshape(image.shape[0], -1)
    view = (image.shape[0],) + (1,) * (image.ndim - 1)
    return flat.amin(dim=1).reshape(view), flat.amax(dim=1).reshape(view)


def clip_to_ranges(corrupted: Tensor, clean: Tensor) -> Tensor:
    """Clip each channel of ``corrupted`` to the ``[min, max]`` of the same channel of ``clean``."""
    low, high = channel_ranges(clean)
    return torch.clamp(corrupted, low, high)
