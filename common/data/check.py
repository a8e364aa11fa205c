"""Input checks for real data: every problem of a BraTS/MSD folder or datalist as one line, before any training.

:func:`check_dataset` checks every file's header against its size first (:mod:`common.data.headers`: absurd
dimensions, a truncated file, a bad intercept, without allocating a voxel), then reads it completely and reports, per
file, what would otherwise surface as a crash deep inside a data loader or, worse, as wrong numbers: missing
modalities or segmentations, unreadable files, shapes or affines that disagree between modalities and segmentation,
NaN/Inf voxels, label values outside the layout's set, MSD images without four channels. It never
writes to the inputs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data.datalist import LAYOUTS, MSD_MODALITIES, MSD_TO_BRATS_LABELS, find_subjects
from common.data.headers import header_problem
from common.data.labels import BRATS_LABELS, MODALITIES
from common.errors import RobustsegError

__all__ = ["AFFINE_TOLERANCE", "check_dataset", "check_or_raise"]

AFFINE_TOLERANCE = 1e-3
"""Largest absolute difference between two affine entries (mm) still counted as the same grid."""

_ALLOWED_LABELS = {"brats": set(BRATS_LABELS), "msd": set(MSD_TO_BRATS_LABELS)}
_DATALIST_NAME = "datalist.json"


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def _format_values(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _unique(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer) and arr.size:
        low, high = int(arr.min()), int(arr.max())
        if high - low < 1 << 16:  # a histogram is far faster than np.unique's sort for label maps
            return np.flatnonzero(np.bincount((arr - low).ravel().astype(np.intp))) + low
    return np.unique(arr)


class _Volume:
    """One NIfTI file read completely, or the reason it could not be."""

    def __init__(self, path: Path):
        self.path = path
        self.problem: str | None = None
        self.data: np.ndarray | None = None
        self.affine: np.ndarray | None = None
        if not path.is_file():
            self.problem = f"{path}: file not found (expected a NIfTI file)"
            return
        # the header first: absurd dimensions or a truncated file are reported without allocating their voxels
        self.problem = header_problem(path)
        if self.problem:
            return
        try:
            img = nib.load(path)
            # nibabel reads lazily: decompressing every voxel is what exposes a truncated .nii.gz
            self.data = np.asanyarray(img.dataobj)
            self.affine = np.asarray(img.affine, dtype=np.float64)
        except Exception as err:  # noqa: BLE001 -- any failure to read is the user's file, reported as one line
            self.problem = f"{path}: cannot read ({_one_line(err)}) (expected a readable NIfTI-1/2 file)"


def _check_intensities(vol: _Volume) -> list[str]:
    if not np.issubdtype(vol.data.dtype, np.floating):
        return []
    n_bad = vol.data.size - int(np.count_nonzero(np.isfinite(vol.data)))
    return [f"{vol.path}: {n_bad} NaN/Inf voxel(s) (expected finite intensities)"] if n_bad else []


def _check_labels(vol: _Volume, layout: str) -> list[str]:
    data = vol.data
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        return [f"{vol.path}: NaN/Inf voxel(s) in a segmentation (expected labels {sorted(_ALLOWED_LABELS[layout])})"]
    values = _unique(data)
    bad = [v for v in values.tolist() if v not in _ALLOWED_LABELS[layout]]
    if bad:
        expected = sorted(_ALLOWED_LABELS[layout])
        name = "MSD Task01" if layout == "msd" else "BraTS"
        return [f"{vol.path}: label values {_format_values(bad)} (expected {name} labels {expected})"]
    return []


def _check_grid(vol: _Volume, ref: _Volume, strict: bool) -> list[str]:
    shape, ref_shape = vol.data.shape[:3], ref.data.shape[:3]
    if shape != ref_shape:
        return [f"{vol.path}: spatial shape {shape} differs from {ref.path.name} (expected {ref_shape})"]
    diff = float(np.max(np.abs(vol.affine - ref.affine)))
    # MONAI's LoadImaged refuses to stack modalities unless np.allclose(affines): hold them to that, too
    same = np.allclose(vol.affine, ref.affine) if strict else diff <= AFFINE_TOLERANCE
    if not same:
        tol = "np.allclose, as MONAI's LoadImaged requires to stack modalities" if strict else f"{AFFINE_TOLERANCE}"
        return [f"{vol.path}: affine differs from {ref.path.name} by up to {diff:.3g} (expected equal within {tol})"]
    return []


def _as_paths(image: object) -> list[str] | None:
    if isinstance(image, str):
        return [image]
    if isinstance(image, list | tuple) and image and all(isinstance(p, str) for p in image):
        return list(image)
    return None


def _check_subject(entry: dict, where: str, require_labels: bool) -> list[str]:
    """All problems of one datalist entry; ``where`` names it when no file can."""
    layout = entry.get("layout", "brats")
    if layout not in LAYOUTS:
        return [f"{where}: layout {layout!r} (expected one of {list(LAYOUTS)})"]
    paths = _as_paths(entry.get("image"))
    if paths is None:
        return [f"{where}: 'image' is {entry.get('image')!r} (expected a file path or a list of file paths)"]
    if layout == "brats" and len(paths) != len(MODALITIES):
        hint = ', or "layout": "msd" for an MSD 4-D image' if len(paths) == 1 else ""
        return [f"{where}: {len(paths)} image file(s) (expected {len(MODALITIES)}: {', '.join(MODALITIES)}{hint})"]
    if layout == "msd" and len(paths) != 1:
        return [f"{where}: {len(paths)} image files for layout 'msd' (expected one 4-D image)"]
    problems: list[str] = []
    images = [_Volume(Path(p)) for p in paths]
    for vol in images:
        if vol.problem:
            problems.append(vol.problem)
            continue
        if layout == "msd":
            if vol.data.ndim != 4 or vol.data.shape[3] != len(MSD_MODALITIES):
                problems.append(
                    f"{vol.path}: shape {vol.data.shape} (expected 4-D with {len(MSD_MODALITIES)} channels "
                    f"{', '.join(MSD_MODALITIES)} last)"
                )
                continue
        elif vol.data.ndim != 3:
            problems.append(f"{vol.path}: shape {vol.data.shape} (expected a 3-D volume)")
            continue
        problems.extend(_check_intensities(vol))
    good = [vol for vol in images if vol.data is not None and vol.data.ndim == (4 if layout == "msd" else 3)]
    for vol in good[1:]:
        problems.extend(_check_grid(vol, good[0], strict=True))

    label = entry.get("label")
    if label is None:
        if require_labels:
            problems.append(
                f"{where}: no segmentation (expected a 'label' file; pass --require_labels False for unlabelled data)"
            )
        return problems
    if not isinstance(label, str):
        return [*problems, f"{where}: 'label' is {label!r} (expected a file path)"]
    seg = _Volume(Path(label))
    if seg.problem:
        return [*problems, seg.problem]
    if seg.data.ndim != 3:
        return [*problems, f"{seg.path}: shape {seg.data.shape} (expected a 3-D label map)"]
    problems.extend(_check_labels(seg, layout))
    if good:
        problems.extend(_check_grid(seg, good[0], strict=False))
    return problems


def _resolve(value: object, base: Path) -> object:
    # as MONAI's load_decathlon_datalist: relative paths are relative to the datalist's folder
    if isinstance(value, str):
        return os.path.normpath(base / value)
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def _read_datalist(path: Path) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """``(list name, where, entry)`` for every entry of a datalist JSON, and the problems of the JSON itself."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [], [f"{path}: cannot parse JSON ({_one_line(err)}) (expected a MONAI datalist JSON)"]
    lists = {}
    if isinstance(content, dict):
        lists = {k: v for k, v in content.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    if not lists:
        return [], [f'{path}: no subject lists (expected e.g. "training": [{{"image": ..., "label": ...}}])']
    entries, problems = [], []
    for name, items in lists.items():
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "image" not in item:
                problems.append(f"{path}: {name}[{i}] is {item!r:.80} (expected a dict with an 'image' key)")
                continue
            item = {k: _resolve(v, path.parent) if k in ("image", "label") else v for k, v in item.items()}
            where = f"{name}[{i}]" + (f" (subject {item['subject']})" if "subject" in item else "")
            entries.append((name, f"{path}: {where}", item))
    return entries, problems


def _duplicates(entries: list[tuple[str, str, dict]]) -> list[str]:
    """Subjects listed twice: a subject in both ``training`` and ``testing`` inflates every reported score."""
    problems, seen = [], {}
    for name, where, entry in entries:
        key = json.dumps(entry.get("image"))
        if key in seen:
            other_name, other_where = seen[key]
            what = "twice in the same list" if other_name == name else f"in both '{other_name}' and '{name}'"
            problems.append(f"{where}: same image(s) as {other_where.rsplit(': ', 1)[-1]}, {what} (expected disjoint)")
        else:
            seen[key] = (name, where)
    return problems


def check_dataset(path: str | os.PathLike, require_labels: bool = True) -> tuple[list[str], int]:
    """Check a data folder or datalist before training or evaluation; read every file, write none.

    Per subject: all four modalities (and a segmentation if ``require_labels``) exist and load completely; shapes and
    affines agree across modalities (``np.allclose``, as MONAI's ``LoadImaged`` requires to stack them) and with the
    segmentation (within :data:`AFFINE_TOLERANCE`); no NaN/Inf voxels; labels within {0, 1, 2, 4} (MSD: {0, 1, 2,
    3}); an MSD image is 4-D with 4 channels. A datalist must parse, and no subject may appear in two lists.

    Args:
        path: a data folder in any layout :func:`common.data.datalist.find_subjects` knows, a folder holding a
            ``datalist.json`` (then that datalist is checked), or a datalist JSON file.
        require_labels: whether every subject must have a segmentation.

    Returns:
        ``(problems, n_subjects)``: one line ``"<file>: <what is wrong> (expected <...>)"`` per problem (empty when
        all is well) and the number of subjects checked.

    Raises:
        RobustsegError: if ``path`` does not exist or is a folder of no known layout.

    Example:
        >>> problems, n = check_dataset("/data/MICCAI_BraTS2020_TrainingData")  # doctest: +SKIP
    """
    target = Path(os.path.abspath(path))
    if not target.exists():
        raise RobustsegError(f"{target}: no such file or folder (expected a data folder or a datalist JSON).")
    datalist = target / _DATALIST_NAME if target.is_dir() else target
    if datalist.is_file():
        entries, problems = _read_datalist(datalist)
        problems.extend(_duplicates(entries))
    else:
        problems = []
        entries = []
        for entry in find_subjects(target):
            where = str(Path(entry["image"] if isinstance(entry["image"], str) else entry["image"][0]).parent)
            entries.append(("", f"{where} (subject {entry['subject']})", entry))
    for _, where, entry in entries:
        problems.extend(_check_subject(entry, where, require_labels))
    n_subjects = len({json.dumps(entry.get("image")) for _, _, entry in entries})
    return problems, n_subjects


def check_or_raise(path: str | os.PathLike, require_labels: bool = True) -> int:
    """Run :func:`check_dataset` before training or evaluation; stop with one line per problem if any.

    Each problem is printed to stderr on its own line, then a :class:`RobustsegError` names the data and the count,
    so a bundle run ends with a short, complete report and a non-zero exit instead of failing later in a transform.

    Args:
        path: data folder or datalist JSON.
        require_labels: whether every subject needs a segmentation (training and evaluation do).

    Returns:
        The number of subjects checked.

    Raises:
        RobustsegError: if the check finds any problem.
    """
    problems, n_subjects = check_dataset(path, require_labels=require_labels)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        raise RobustsegError(
            f"{path}: {len(problems)} problem(s) in the data (listed above); fix them or pass another datalist."
        )
    return n_subjects
