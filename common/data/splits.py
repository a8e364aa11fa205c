"""Train/validation/test lists from a MONAI datalist, with a seeded validation hold-out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

from common.errors import RobustsegError
from common.utils.validation import check_int, is_number, look_up_option

__all__ = ["load_split"]

_SPLITS = ("training", "validation", "testing")


def _is_path(value: object) -> bool:
    return isinstance(value, str) and value != "" and "\0" not in value


def _check_entries(path: Path, name: str, items: object) -> None:
    """A datalist's list ``name``: dicts with an ``image`` path (or a non-empty list of them), an optional ``label``
    path and an optional string ``subject`` -- what MONAI's ``load_decathlon_datalist`` and the loaders can use."""
    if not isinstance(items, list):
        raise RobustsegError(f"{path}: '{name}' is a {type(items).__name__}, expected a list of subject entries.")
    for i, item in enumerate(items):
        where = f"{path}: {name}[{i}]"
        if not isinstance(item, dict):
            raise RobustsegError(f"{where} is {item!r:.80}, expected an object with an 'image' key.")
        image = item.get("image")
        images = image if isinstance(image, list) else [image]
        if not images or not all(_is_path(p) for p in images):
            raise RobustsegError(f"{where}: 'image' is {image!r:.80}, expected a file path or a list of file paths.")
        if "label" in item and item["label"] is not None and not _is_path(item["label"]):
            raise RobustsegError(f"{where}: 'label' is {item['label']!r:.80}, expected a file path.")
        if "subject" in item and not isinstance(item["subject"], str):
            raise RobustsegError(f"{where}: 'subject' is {item['subject']!r:.80}, expected a string id.")


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

    Paths may lead anywhere (``..``, absolute paths, symbolic links): the data is only read, and the datalists
    ``robustseg data datalist`` writes hold absolute paths for data outside the datalist's folder. What becomes an
    output path, the subject id, must be a plain name (:func:`common.engines.subject_batch.subject_id`).

    Raises:
        RobustsegError: unknown split, bad fraction, unreadable or malformed datalist (an entry without an image
            path, a label or subject that is not a string), or an empty split.
    """
    split = look_up_option("split", split, _SPLITS)
    check_int("seed", seed, 0)
    if not (is_number(val_fraction) and 0.0 <= val_fraction < 1.0):
        raise RobustsegError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    path = Path(datalist)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RobustsegError(f"{path}: cannot read the datalist ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(content, dict):
        raise RobustsegError(
            f"{path}: holds a JSON {type(content).__name__}, expected an object with 'training'/'testing' lists."
        )
    keys = set(content)
    for name in _SPLITS:
        if name in content:
            _check_entries(path, name, content[name])
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
