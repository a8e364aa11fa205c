"""Batches of test subjects for the robustness evaluation: datalist entries preprocessed and stacked into one tensor.

:class:`~common.engines.robustness.RobustnessEvaluation` runs every unit of its plan (the clean predictions, each
attack job under each threat) on a whole batch of subjects at once: the attacks treat each sample on its own
(:class:`common.attacks.Attack`), so a batch gives each subject the rows it gets alone, with the convolutions of
several volumes in one call (faster on a CPU and a GPU alike). This module holds what that needs beside the
evaluation: the subject id of an entry, the batches of a shard (:func:`batches_of`) and a preprocessed batch
(:class:`SubjectBatch`, :func:`load_subjects`) with what is computed once per subject (its input-quality reference
and its example writer).

Example::

    for entries in batches_of(shard, batch_size=2):
        for batch in load_subjects(entries, bundle.preprocessing, device):
            logits = network(batch.images)   # (n, 4, *spatial)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from torch import Tensor

from common.data.headers import header_problem
from common.data.splits import load_split
from common.engines.attack_jobs import AttackJob
from common.engines.quality import InputQuality
from common.errors import RobustsegError
from common.utils.validation import check_int

__all__ = ["SubjectBatch", "Unit", "batches_of", "load_subjects", "subject_id", "test_entries"]


def _plain_name(name: str) -> bool:
    """Whether ``name`` can name a folder inside the output folder and nothing else: no path separator, not ``.`` or
    ``..``, no NUL, at most 255 bytes."""
    return (
        name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and len(name.encode("utf-8")) <= 255
    )


def subject_id(entry: Mapping[str, Any]) -> str:
    """A datalist entry's subject id: its ``subject``, else the name of its first image without the extension.

    The id names the subject's example folder (``examples/<id>/``), so it must be a plain file name: an id such as
    ``../../x`` or ``/tmp/x`` would write outside the output folder and is refused.

    Raises:
        RobustsegError: no id can be found, or it is not a plain file name.
    """
    subject = entry.get("subject")
    if subject is not None and subject != "" and not isinstance(subject, str):
        raise RobustsegError(f"datalist entry {entry!r:.200}: 'subject' is {subject!r}, expected a string id.")
    if not subject:
        image = entry.get("image")
        first = image[0] if isinstance(image, (list, tuple)) and image else image
        if not isinstance(first, str):
            raise RobustsegError(f"datalist entry {entry!r:.200}: no 'subject' id and no image path to name it by.")
        subject = Path(first).name
        for suffix in (".nii.gz", ".nii"):
            subject = subject.removesuffix(suffix)
    if not _plain_name(subject):
        raise RobustsegError(
            f"datalist entry {entry!r:.200}: subject id {subject!r} is not a plain name, expected no '/', '\\', "
            "NUL, '.' or '..' (it names the subject's folder in the output)."
        )
    return subject


def files_of(entry: Mapping[str, Any]) -> list[str]:
    """The image and label file paths of a datalist entry."""
    out = []
    for key in ("image", "label"):
        value = entry.get(key)
        out += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str)]
    return out


def test_entries(datalist: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``testing`` entries of a datalist, checked before anything is computed: every subject id once and usable
    as a folder name, every file there with a sane NIfTI header that matches its size
    (:func:`common.data.headers.header_problem`: no voxel is read), every subject labelled (the test split is scored
    against its labels).

    Raises:
        RobustsegError: naming the datalist, the subject or the file.
    """
    entries = load_split(str(datalist), "testing")
    subjects = [subject_id(e) for e in entries]
    duplicates = sorted({s for s in subjects if subjects.count(s) > 1})
    if duplicates:
        raise RobustsegError(f"{datalist}: subject id(s) {duplicates} appear twice in 'testing'.")
    for entry in entries:
        missing = [f for f in files_of(entry) if not os.path.isfile(f)]
        if missing:
            raise RobustsegError(f"{missing[0]}: file of test subject {subject_id(entry)} not found.")
        if entry.get("label") is None:
            raise RobustsegError(f"{datalist}: test subject {subject_id(entry)} has no label to score with.")
        msd = entry.get("layout") == "msd"
        for key, ndim in (("image", 4 if msd else 3), ("label", 3)):
            value = entry.get(key)
            for path in value if isinstance(value, (list, tuple)) else [value]:
                problem = header_problem(path, ndim) if isinstance(path, str) else None
                if problem:
                    raise RobustsegError(f"{problem}.")
    return entries


def _plain_tensor(value: Any) -> Tensor:
    """A plain tensor (a MetaTensor's metadata would follow every attack step at a cost)."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


@dataclass(frozen=True)
class Unit:
    """The rows of one model under one threat for one attack job (``job`` is ``None`` for the clean and the corruption
    rows)."""

    model: int
    threat: str
    source: int | None
    job: AttackJob | None

    @property
    def transfer(self) -> bool:
        return self.threat == "transfer"

    @property
    def has_examples(self) -> bool:
        """Whether some of its inputs are saved as examples (clean, the corruptions at the example severity, and the
        Table 1 epsilons of a job)."""
        if self.job is None:
            return self.threat in ("clean", "corruption")
        return bool(self.job.table_epsilons)


@dataclass(frozen=True)
class SubjectBatch:
    """Preprocessed test subjects on one grid, stacked, with what each subject needs once.

    Attributes:
        subjects: the subject ids, in batch order.
        images: the preprocessed inputs ``(n, C, *spatial)``, float32, on the evaluation's device.
        labels: the ground truth ``(n, 1, *spatial)`` with BraTS values.
        affines: each subject's affine of the preprocessed grid (``None`` where the transform gave none).
        qualities: each subject's :class:`~common.engines.quality.InputQuality` against its clean input.
    """

    subjects: tuple[str, ...]
    images: Tensor
    labels: Tensor
    affines: tuple[Any, ...]
    qualities: tuple[InputQuality, ...]

    def __len__(self) -> int:
        return len(self.subjects)

    def select(self, rows: Sequence[int]) -> SubjectBatch:
        """The sub-batch of the subjects at ``rows`` (all of them: this batch itself)."""
        rows = list(rows)
        if rows == list(range(len(self))):
            return self
        index = torch.tensor(rows, dtype=torch.long, device=self.images.device)
        return SubjectBatch(
            tuple(self.subjects[i] for i in rows),
            self.images.index_select(0, index),
            self.labels.index_select(0, index),
            tuple(self.affines[i] for i in rows),
            tuple(self.qualities[i] for i in rows),
        )


def batches_of(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """``items`` in order, cut into lists of ``batch_size`` (the last one may be shorter).

    Raises:
        RobustsegError: if ``batch_size`` is not an integer >= 1.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    return [list(items[start : start + batch_size]) for start in range(0, len(items), batch_size)]


def _check_finite(entry: Mapping[str, Any], image: Tensor, label: Tensor) -> None:
    """Stop at NaN/Inf voxels, naming the file (one per channel for BraTS files), before they reach an attack."""
    images = entry.get("image")
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    for c in range(len(image)):
        if not bool(torch.isfinite(image[c]).all()):
            path = images[c] if len(images) == len(image) else images[0]
            raise RobustsegError(
                f"{path}: NaN/Inf voxels in test subject {subject_id(entry)} (expected finite intensities; "
                "`robustseg data check` lists every such file)."
            )
    if label.is_floating_point() and not bool(torch.isfinite(label).all()):
        raise RobustsegError(
            f"{entry.get('label')}: NaN/Inf voxels in the label map of test subject {subject_id(entry)} "
            "(expected BraTS labels 0, 1, 2, 4)."
        )


def load_subjects(
    entries: Sequence[Mapping[str, Any]],
    preprocessing: Callable[[dict[str, Any]], Mapping[str, Any]],
    device: torch.device,
) -> list[SubjectBatch]:
    """Preprocess datalist entries and stack them: one :class:`SubjectBatch` per spatial shape, in first-seen order.

    The model bundles' preprocessing usually resizes every subject to one grid, so a batch stays one batch; entries
    whose preprocessed shapes differ cannot share a tensor and go into separate batches.

    Args:
        entries: datalist entries with ``image`` and ``label``.
        preprocessing: the model bundles' preprocessing (a MONAI dictionary transform).
        device: where the tensors go.

    Returns:
        The batches.

    Raises:
        RobustsegError: a subject's input or label holds NaN/Inf voxels after loading (naming the file).
    """
    groups: dict[tuple[int, ...], list[tuple[str, Tensor, Tensor, Any]]] = {}
    for entry in entries:
        item = preprocessing(dict(entry))
        image_meta, label_meta = item["image"], item["label"]
        image = _plain_tensor(image_meta).float().to(device)
        label = _plain_tensor(label_meta).to(device)
        _check_finite(entry, image, label)
        groups.setdefault(tuple(image.shape), []).append(
            (subject_id(entry), image, label, getattr(image_meta, "affine", None))
        )
    out = []
    for members in groups.values():
        images = torch.stack([m[1] for m in members])
        out.append(
            SubjectBatch(
                tuple(m[0] for m in members),
                images,
                torch.stack([m[2] for m in members]),
                tuple(m[3] for m in members),
                tuple(InputQuality(images[i : i + 1]) for i in range(len(members))),
            )
        )
    return out
