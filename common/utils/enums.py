"""The project's vocabularies as string enumerations, in the style of ``monai.utils.enums``.

Each member *is* its string (``Defense.NONE == "none"``), so members go straight into CSV cells, JSON and bundle
metadata, and plain strings read from those compare equal to them. Code spells "defense" (as the CSV column does);
prose may say "defence".
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Defense", "Net", "StrEnum", "Threat"]


class StrEnum(str, Enum):
    """An enumeration of strings whose members format as their value (``f"{Defense.NONE}" == "none"``).

    The same as ``monai.utils.enums.StrEnum``, without importing MONAI (the report CLI runs without torch).
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The members' strings, in declaration order."""
        return tuple(member.value for member in cls)


class Defense(StrEnum):
    """The defence families, in the order the report's tables list them.

    The first four are those of Liu et al. 2021 ("Defenses"); ``ARTIFACT_AUGMENTATION`` (training on the MR artifacts
    of :mod:`common.corruptions`) and ``GAUSSIAN_AUGMENTATION`` (training under the Gaussian noise of randomized
    smoothing, the base networks of :mod:`common.certify`) are robustseg's own.
    """

    NONE = "none"
    DISTILLATION = "distillation"
    ADVERSARIAL_TRAINING = "adversarial_training"
    NOISE_AUGMENTATION = "noise_augmentation"
    ARTIFACT_AUGMENTATION = "artifact_augmentation"
    GAUSSIAN_AUGMENTATION = "gaussian_augmentation"

    @property
    def title(self) -> str:  # type: ignore[override]
        """The name a table or legend shows ("No defence", "Distillation", ...)."""
        return _DEFENSE_TITLES[self]


_DEFENSE_TITLES = {
    Defense.NONE: "No defence",
    Defense.DISTILLATION: "Distillation",
    Defense.ADVERSARIAL_TRAINING: "Adversarial training",
    Defense.NOISE_AUGMENTATION: "Noise augmentation",
    Defense.ARTIFACT_AUGMENTATION: "Artifact augmentation",
    Defense.GAUSSIAN_AUGMENTATION: "Gaussian augmentation",
}


class Net(StrEnum):
    """The paper's two network kinds: the 3D residual UNet and the 2D one applied slice-wise."""

    UNET3D = "3d"
    UNET2D = "2d"

    @property
    def title(self) -> str:  # type: ignore[override]
        """The name a table or legend shows ("3D-UNet", "2D-UNet")."""
        return {"3d": "3D-UNet", "2d": "2D-UNet"}[self.value]


class Threat(StrEnum):
    """What the attacker knows, one per results row (the ``threat`` column)."""

    CLEAN = "clean"
    WHITE_BOX = "white-box"
    ADAPTIVE = "adaptive"
    TRANSFER = "transfer"
    WORST_CASE = "worst-case"
    CORRUPTION = "corruption"
    CERTIFIED = "certified"
    SMOOTHED = "smoothed"
