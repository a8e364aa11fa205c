"""Cache keys for MONAI's ``PersistentDataset`` that notice changed files and changed preprocessing settings.

``PersistentDataset`` names each cached item by a hash of the datalist entry (file paths) and, with
``hash_transform``, of the deterministic transforms. MONAI's ``json_hashing`` cannot serialise transform objects
and silently falls back to the class names, so changing ``spatial_size`` would reuse a stale cache; and a data file
rewritten at the same path (a regenerated synthetic set) would too. These two functions close both holes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data.utils import pickle_hashing

__all__ = ["stat_hashing", "transform_hashing"]


def _paths(item: Any) -> list[str]:
    if isinstance(item, str):
        return [item] if os.path.isfile(item) else []
    if isinstance(item, Mapping):
        return [p for k in sorted(item, key=str) for p in _paths(item[k])]
    if isinstance(item, Sequence):
        return [p for v in item for p in _paths(v)]
    return []


def stat_hashing(item: Any) -> bytes:
    """Hash a datalist entry together with the size and modification time of every file it names.

    Args:
        item: a datalist entry, e.g. ``{"image": [4 paths], "label": path}``.

    Returns:
        A hex digest (bytes) usable as ``PersistentDataset(hash_func=...)``.
    """
    stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in _paths(item)]
    return pickle_hashing((item, stats))


def _describe(obj: Any, depth: int = 0) -> Any:
    if depth > 6:
        return type(obj).__name__
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return str(obj.value)
    if isinstance(obj, (torch.dtype, np.dtype, type)):
        return str(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return np.asarray(obj).tolist() if np.asarray(obj).size <= 64 else hashlib.sha256(np.asarray(obj)).hexdigest()
    if isinstance(obj, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_describe(v, depth + 1) for v in obj]
    if callable(obj) and not hasattr(obj, "__dict__"):
        return getattr(obj, "__qualname__", type(obj).__name__)
    state = (
        {k: _describe(v, depth + 1) for k, v in sorted(vars(obj).items()) if not k.startswith("_")}
        if hasattr(obj, "__dict__")
        else {}
    )
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", "state": state}


def transform_hashing(transforms: Sequence[Any]) -> bytes:
    """Hash the classes and settings of a sequence of (deterministic) transforms, for ``hash_transform``.

    Args:
        transforms: the transforms MONAI passes (those before the first random one).

    Returns:
        A hex digest (bytes) that changes when a transform's class or any public setting changes.
    """
    dump = json.dumps([_describe(t) for t in transforms], sort_keys=True, default=lambda o: type(o).__name__)
    return hashlib.sha256(dump.encode()).hexdigest().encode()
