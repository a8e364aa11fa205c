"""Train/validation/test lists from a MONAI datalist, with a seeded validation hold-out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist
from monai.utils import look_up_option

from common.errors import RobustsegError

__all__ = ["load_split"]

_SPLITS = ("training", "validation", "testing")


def load_split(datalist: str | Path, split: str, val_fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """Load one split of a MONAI datalist with paths resolved against the datalist's folder.

    The paper keeps 20 % of the subjects for testing and reports no validation set; the bundles still need one to
    pick the best checkpoint without looking at the test split. Unless the datalist has its own ``validation``
    list, ``val_fraction`` of the ``training`` list (at least one subject, chosen with ``seed``) is held out as
    validation and removed from training. The ``testing`` list is never touched.

    Args:
        datalist: path of the datalist JSON (``training``/``testing`` lists, optionally ``validation``).
        split: "training", "validation" or "testing".
        val_fraction: share of the training subjects held out for validation when there is no validation list.
        seed: seed of the hold-out.

    Returns:
        The entries of the split, with absolute paths.

    Raises:
        RobustsegError: unknown split, bad fraction, unreadable datalist, or an empty split.
    """
    split = look_up_option(split, _SPLITS)
    if not 0.0 <= val_fraction < 1.0:
        raise RobustsegError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    path = Path(datalist)
    try:
        keys = set(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise RobustsegError(f"{path}: cannot read the datalist ({type(exc).__name__}: {exc}).") from exc
    if split == "testing" or (split in ("training", "validation") and "validation" in keys):
        if split not in keys:
            raise RobustsegError(f"{path}: has no '{split}' list (found {sorted(keys)}).")
        items = load_decathlon_datalist(str(path), data_list_key=split)
    else:
        if "training" not in keys:
            raise RobustsegError(f"{path}: has no 'training' list (found {sorted(keys)}).")
        train = load_decathlon_datalist(str(path), data_list_key="training")
        n_val = int(round(val_fraction * len(train)))
        if val_fraction > 0:
            n_val = min(max(n_val, 1), len(train) - 1)
        order = np.random.default_rng(seed).permutation(len(train))
        held_out = set(order[:n_val].tolist())
        items = [d for i, d in enumerate(train) if (i in held_out) == (split == "validation")]
    for item in items:
        # load_decathlon_datalist turns any string naming an existing path into an absolute path, subject ids included
        if isinstance(item.get("subject"), str):
            item["subject"] = os.path.basename(item["subject"].rstrip("/"))
    if not items:
        raise RobustsegError(f"{path}: the '{split}' split is empty (val_fraction={val_fraction}).")
    return items
