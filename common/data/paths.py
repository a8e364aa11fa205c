"""Default locations of the embedded synthetic data set."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_synthetic_dir"]

_ROOT = Path(__file__).resolve().parents[2]


def default_synthetic_dir(shape: int = 96) -> str:
    """Folder of the embedded synthetic data set that the bundles generate on first use.

    ``$ROBUSTSEG_DATA`` if set, else ``data/`` beside the ``common`` package: the repository root for a checkout,
    the bundle root for an exported bundle (which carries a copy of ``common/``). One folder per grid size, so
    bundles trained at different sizes never regenerate each other's data: ``synthetic`` for the default 96³,
    ``synthetic-<shape>`` otherwise.

    Args:
        shape: edge of the cubic grid of the data set.

    Returns:
        The folder as a string.
    """
    base = Path(os.environ["ROBUSTSEG_DATA"]) if os.environ.get("ROBUSTSEG_DATA") else _ROOT / "data"
    return str(base / ("synthetic" if shape == 96 else f"synthetic-{shape}"))
