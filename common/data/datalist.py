"""MONAI datalists for real BraTS 2017-2021 and Medical Segmentation Decathlon Task01 folders.

Recognised layouts (found by :func:`find_subjects`):

- BraTS 2017-2020: ``<root>/[HGG|LGG/]<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (or ``.nii``);
- BraTS 2021: ``<root>/BraTS2021_xxxxx/BraTS2021_xxxxx_{t1,t1ce,t2,flair,seg}.nii.gz``;
- MSD Task01_BrainTumour: ``<root>/imagesTr/BRATS_xxx.nii.gz`` (4-D, channels FLAIR, T1w, T1gd, T2w) and
  ``<root>/labelsTr/BRATS_xxx.nii.gz`` (1 oedema, 2 non-enhancing tumour, 3 enhancing), converted to the BraTS
  channel order and labels by :class:`common.data.transforms.BraTSLayoutd`.

:func:`write_datalist` splits the subjects into ``training`` and ``testing`` lists as the paper did (20 % reserved
for testing) and writes a JSON that MONAI's ``load_decathlon_datalist`` reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from common.data.labels import MODALITIES
from common.errors import RobustsegError
from common.utils.files import write_atomic
from common.utils.validation import check_int, check_number

__all__ = [
    "LAYOUTS",
    "MSD_MODALITIES",
    "MSD_TO_BRATS_LABELS",
    "NIFTI_SUFFIXES",
    "find_subjects",
    "split_subjects",
    "write_datalist",
]

LAYOUTS: tuple[str, ...] = ("brats", "msd")
"""Values of a datalist entry's ``"layout"`` key; an entry without one is ``"brats"``."""

MSD_MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""Channel order of an MSD Task01 image (FLAIR, T1w, T1gd, T2w) in BraTS modality names."""

MSD_TO_BRATS_LABELS: dict[int, int] = {0: 0, 1: 2, 2: 1, 3: 4}
"""MSD Task01 label -> BraTS label: 1 oedema -> 2, 2 non-enhancing tumour -> 1, 3 enhancing tumour -> 4."""

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

_SEG_NAMES = ("seg", "segm")  # BraTS 2020 subject 355 ships its segmentation as "..._Segm.nii"
_LAYOUT_HELP = "a BraTS 2017-2021 folder (<id>/<id>_t1.nii.gz ...) or an MSD Task01_BrainTumour folder (imagesTr/)"


def _is_hidden(path: Path) -> bool:
    # macOS AppleDouble files ("._BRATS_001.nii.gz") ship inside the MSD tarball and are not images
    return path.name.startswith(".")


def _nifti_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _modality_of(name: str) -> str | None:
    stem = _nifti_stem(name)
    if stem is None or "_" not in stem:
        return None
    tag = stem.rsplit("_", 1)[1].lower()
    if tag in MODALITIES:
        return tag
    return "seg" if tag in _SEG_NAMES else None


def _is_subject_folder(folder: Path) -> bool:
    return any(f.is_file() and not _is_hidden(f) and _modality_of(f.name) for f in folder.iterdir())


def _subject_file(folder: Path, modality: str) -> Path | None:
    """The file of one modality in a BraTS subject folder, preferring the canonical ``<id>_<modality>`` name."""
    for suffix in NIFTI_SUFFIXES:
        canonical = folder / f"{folder.name}_{modality}{suffix}"
        if canonical.is_file():
            return canonical
    found = sorted(
        f for f in folder.iterdir() if f.is_file() and not _is_hidden(f) and _modality_of(f.name) == modality
    )
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise RobustsegError(f"{folder}: several {modality} files ({names}), expected exactly one.")
    return found[0] if found else None


def _brats_entry(folder: Path) -> dict:
    images = []
    for modality in MODALITIES:
        found = _subject_file(folder, modality)
        # a missing modality keeps its expected path, so that the dataset check can name it
        images.append(str(found if found is not None else folder / f"{folder.name}_{modality}.nii.gz"))
    entry: dict = {"image": images}
    seg = _subject_file(folder, "seg")
    if seg is not None:
        entry["label"] = str(seg)
    entry["subject"] = folder.name
    return entry


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))


def _brats_subjects(root: Path) -> list[dict]:
    if _is_subject_folder(root):
        return [_brats_entry(root)]
    folders = []
    for child in _subfolders(root):
        if _is_subject_folder(child):
            folders.append(child)
        else:  # grouping folders such as BraTS 2017-2019 HGG/ and LGG/
            folders.extend(grandchild for grandchild in _subfolders(child) if _is_subject_folder(grandchild))
    entries = [_brats_entry(folder) for folder in folders]
    seen: dict[str, str] = {}
    for entry, folder in zip(entries, folders):
        if entry["subject"] in seen:
            raise RobustsegError(
                f"{folder}: subject id {entry['subject']} also found in {seen[entry['subject']]} (expected unique ids)."
            )
        seen[entry["subject"]] = str(folder)
    return sorted(entries, key=lambda e: e["subject"])


def _msd_root(root: Path) -> Path | None:
    if (root / "imagesTr").is_dir():
        return root
    candidates = [child for child in _subfolders(root) if (child / "imagesTr").is_dir()]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise RobustsegError(f"{root}: several MSD task folders ({names}), expected one; pass the task folder itself.")
    return candidates[0] if candidates else None


def _msd_subjects(task: Path) -> list[dict]:
    entries = []
    for image in sorted((task / "imagesTr").iterdir()):
        stem = _nifti_stem(image.name)
        if not image.is_file() or _is_hidden(image) or stem is None:
            continue
        entry: dict = {"image": str(image)}
        label = task / "labelsTr" / image.name
        if label.is_file():
            entry["label"] = str(label)
        entry.update(subject=stem, layout="msd")
        entries.append(entry)
    if not entries:
        raise RobustsegError(f"{task / 'imagesTr'}: no NIfTI images (expected MSD Task01 files BRATS_xxx.nii.gz).")
    return entries


def find_subjects(root: str | os.PathLike) -> list[dict]:
    """List the subjects of a BraTS 2017-2021 or MSD Task01 folder as MONAI datalist entries.

    BraTS entries are ``{"image": [t1, t1ce, t2, flair], "label": seg, "subject": id}`` (``label`` omitted when
    a subject has no segmentation; a missing modality keeps its expected ``<id>_<modality>.nii.gz`` path so that
    :func:`common.data.check.check_dataset` can name it). MSD entries are
    ``{"image": image_4d, "label": label, "subject": id, "layout": "msd"}``. Paths are absolute; entries are
    sorted by subject id. Nothing is read but folder listings.

    Args:
        root: the data folder (a BraTS training folder, with or without ``HGG``/``LGG`` subfolders, one BraTS
            subject folder, or an MSD task folder or its parent).

    Returns:
        One dict per subject.

    Raises:
        RobustsegError: if ``root`` is missing, empty or not a recognised layout, or a subject is ambiguous.

    Example:
        >>> entries = find_subjects("/data/MICCAI_BraTS2020_TrainingData")  # doctest: +SKIP
        >>> entries[0]["subject"]  # doctest: +SKIP
        'BraTS20_Training_001'
    """
    folder = Path(os.path.abspath(root))
    if not folder.exists():
        raise RobustsegError(f"{folder}: no such folder (expected {_LAYOUT_HELP}).")
    if not folder.is_dir():
        raise RobustsegError(f"{folder}: not a folder (expected {_LAYOUT_HELP}).")
    if not any(not _is_hidden(p) for p in folder.iterdir()):
        raise RobustsegError(f"{folder}: the folder is empty (expected {_LAYOUT_HELP}).")
    task = _msd_root(folder)
    if task is not None:
        return _msd_subjects(task)
    entries = _brats_subjects(folder)
    if not entries:
        empty = sorted(p.name for p in folder.iterdir() if p.is_dir() and not _is_hidden(p)
                       and not any(not _is_hidden(q) for q in p.iterdir()))  # fmt: skip
        hint = f"; empty subfolder(s): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}" if empty else ""
        raise RobustsegError(
            f"{folder}: no BraTS subject folders or MSD imagesTr/ found{hint} (expected {_LAYOUT_HELP})."
        )
    return entries


def split_subjects(subjects: Sequence[str], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded train/test split of subject ids (the paper reserved 20 % of the subjects for testing).

    Each subject gets the key ``sha256(f"{seed}:{subject}")``; the ``N * test_fraction`` (rounded half up) subjects
    with the smallest keys are the test set, keeping at least one subject in each set when ``N >= 2``. Unlike a
    shuffle, this depends on no random number generator's version, and adding subjects to a data set moves no
    existing subject to the other set except through the changed test-set size.

    Args:
        subjects: unique subject ids.
        test_fraction: share of subjects in the test set, in (0, 1).
        seed: integer seed; another seed gives another split.

    Returns:
        ``(training, testing)``, each sorted.

    Raises:
        RobustsegError: if ``test_fraction`` is not in (0, 1) or ``seed`` is not an integer.
    """
    check_number("test_fraction", test_fraction, 0, 1, min_inclusive=False, max_inclusive=False)
    check_int("seed", seed)
    n = len(subjects)
    n_test = math.floor(n * test_fraction + 0.5)
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    ranked = sorted(subjects, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    return sorted(ranked[n_test:]), sorted(ranked[:n_test])


def _relative(path: str, base: Path) -> str:
    # relative only below the datalist's folder: then the data and the datalist can move together
    p = Path(path)
    return p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)


def write_datalist(root: str | os.PathLike, out: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write a MONAI datalist JSON with a seeded train/test split for a BraTS or MSD Task01 folder.

    The JSON holds ``training`` and ``testing`` lists of :func:`find_subjects` entries, with ``layout``,
    ``seed`` and ``test_fraction`` recorded beside them. Paths below the datalist's folder are written relative to
    it (MONAI's ``load_decathlon_datalist`` resolves them against that folder), others absolute. The file is written
    to a temporary name and renamed, so a failed run leaves no partial datalist.

    Args:
        root: the data folder (see :func:`find_subjects`).
        out: the JSON file to write; its folder must exist.
        test_fraction: share of subjects listed under ``testing`` (the paper's 20 %); see :func:`split_subjects`.
        seed: split seed.

    Returns:
        The absolute path of the written datalist.

    Raises:
        RobustsegError: for an unrecognised or empty folder, a subject lacking a modality file, a bad ``out``,
            ``test_fraction`` or ``seed``.

    Example:
        >>> write_datalist("/data/Task01_BrainTumour", "/data/Task01_BrainTumour/datalist.json")  # doctest: +SKIP
    """
    split_subjects([], test_fraction=test_fraction, seed=seed)  # validates the arguments before any work
    out_path = Path(os.path.abspath(out))
    if out_path.is_dir():
        raise RobustsegError(f"out: {out_path} is a folder, expected the path of a JSON file to write.")
    if not out_path.parent.is_dir():
        raise RobustsegError(f"out: folder {out_path.parent} does not exist, expected an existing folder.")
    entries = find_subjects(root)
    missing = [p for e in entries for p in ([e["image"]] if isinstance(e["image"], str) else e["image"])]
    missing = [p for p in missing if not Path(p).is_file()]
    if missing:
        raise RobustsegError(
            f"{missing[0]}: file not found ({len(missing)} image file(s) missing in {os.path.abspath(root)}; "
            f"expected {', '.join(MODALITIES)} for every subject; run `robustseg data check` for the full list)."
        )
    training, testing = split_subjects([e["subject"] for e in entries], test_fraction=test_fraction, seed=seed)
    by_id = {e["subject"]: e for e in entries}

    def portable(entry: dict) -> dict:
        entry = dict(entry)
        for key in ("image", "label"):
            if isinstance(entry.get(key), str):
                entry[key] = _relative(entry[key], out_path.parent)
            elif key in entry:
                entry[key] = [_relative(p, out_path.parent) for p in entry[key]]
        return entry

    datalist = {
        "description": f"robustseg datalist for {os.path.abspath(root)}",
        "layout": entries[0].get("layout", "brats"),
        "seed": seed,
        "test_fraction": test_fraction,
        "training": [portable(by_id[s]) for s in training],
        "testing": [portable(by_id[s]) for s in testing],
    }
    try:
        write_atomic(out_path, json.dumps(datalist, indent=2) + "\n")
    except OSError as err:
        raise RobustsegError(
            f"out: cannot write {out_path} ({err.strerror or err}), expected a writable path."
        ) from err
    return out_path
