"""Example volumes saved by the robustness evaluation, for the slice panels of the report (paper Figs. 2 and 9).

The ``brats_robustness_eval`` bundle writes, beside ``results.csv``, ``examples/<subject>/index.json``::

    {"subject": "synth_003",
     "image": "image.nii.gz",     # clean preprocessed input, 4 channels (t1, t1ce, t2, flair)
     "label": "label.nii.gz",     # ground truth, BraTS values
     "entries": [{"model": ..., "attack": "none", "threat": "clean", "epsilon": 0.0,
                  "adversarial": null, "prediction": "..._pred.nii.gz"},
                 {"model": ..., "attack": "FGSM", "threat": "white-box", "epsilon": 0.05,
                  "adversarial": "..._adv.nii.gz", "prediction": "..._pred.nii.gz"}]}

Every volume lies on the preprocessed grid of the label. Images are accepted channel-first ``(4, X, Y, Z)`` (the
format note) or channel-last ``(X, Y, Z, 4)`` / ``(X, Y, Z, 1, 4)`` (what MONAI's ``SaveImage`` writes); the
channel axis is found by matching the label's shape. The perturbation is ``adversarial - image``.

:func:`load_examples` checks every index and the header of every file it names (existence, readability, shape)
before anything is drawn, so a broken example set stops the report before a file is written.
:func:`load_example_volumes` then reads the voxels of one subject, reoriented to RAS from the label's affine (the
4-D images of a channel-first file carry no usable spatial affine of their own).

Example::

    subjects = load_examples("runs/eval/examples")
    volumes = load_example_volumes(subjects[0])
    t1gd = volumes.channel(volumes.image, "t1ce")[:, :, volumes.axial_slice]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.data.labels import MODALITIES
from common.errors import RobustsegError

__all__ = ["ExampleEntry", "ExampleSubject", "ExampleVolumes", "load_examples", "load_example_volumes"]

INDEX_NAME = "index.json"
_ENTRY_KEYS = ("model", "attack", "threat", "epsilon", "adversarial", "prediction")


@dataclass(frozen=True)
class ExampleEntry:
    """One model x attack x epsilon example of a subject (``adversarial`` is ``None`` for the clean input)."""

    model: str
    attack: str
    threat: str
    epsilon: float
    adversarial: Path | None
    prediction: Path


@dataclass(frozen=True)
class ExampleSubject:
    """The checked ``index.json`` of one subject: file paths (absolute) and entries, in index order."""

    subject: str
    folder: Path
    image: Path
    label: Path
    shape: tuple[int, int, int]
    entries: tuple[ExampleEntry, ...]


@dataclass
class ExampleVolumes:
    """Voxel arrays of one subject, reoriented to RAS (axis 2 is inferior -> superior, i.e. axial slices).

    Attributes:
        subject: the checked index.
        image: clean input, channel-last ``(X, Y, Z, 4)`` in :data:`~common.data.labels.MODALITIES` order.
        label: ground truth ``(X, Y, Z)`` with BraTS values.
        axial_slice: index along axis 2 of the axial slice with the largest whole-tumour area of the label.
    """

    subject: ExampleSubject
    image: np.ndarray
    label: np.ndarray
    axial_slice: int
    _orientation: np.ndarray = field(repr=False)
    _cache: dict[Path, np.ndarray] = field(default_factory=dict, repr=False)

    @staticmethod
    def channel(image: np.ndarray, modality: str) -> np.ndarray:
        """One channel ``(X, Y, Z)`` of a channel-last image, by modality name (``t1``, ``t1ce``, ``t2``, ``flair``)."""
        return image[..., MODALITIES.index(modality)]

    def adversarial(self, entry: ExampleEntry) -> np.ndarray:
        """The entry's adversarial input, channel-last RAS like :attr:`image` (the clean image for a clean entry)."""
        if entry.adversarial is None:
            return self.image
        if entry.adversarial not in self._cache:
            self._cache[entry.adversarial] = _read_image(entry.adversarial, self.subject.shape, self._orientation)
        return self._cache[entry.adversarial]

    def prediction(self, entry: ExampleEntry) -> np.ndarray:
        """The entry's predicted label map ``(X, Y, Z)`` in RAS."""
        if entry.prediction not in self._cache:
            self._cache[entry.prediction] = _read_label(entry.prediction, self.subject.shape, self._orientation)
        return self._cache[entry.prediction]


# ------------------------------------------------------------------------------------------------------ checking
def _header(path: Path):
    import nibabel as nib

    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises many types for truncated or foreign files
        raise RobustsegError(f"{path}: cannot read the NIfTI file ({type(exc).__name__}: {exc}).") from None


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A label map's shape without trailing singleton axes beyond the third."""
    return tuple(shape[:3]) + tuple(d for d in shape[3:] if d != 1)


def _image_layout(shape: tuple[int, ...], spatial: tuple[int, int, int]) -> str | None:
    """``"first"`` or ``"last"``: where the 4 channels are, judged by the label's grid; ``None`` if neither fits."""
    channels = len(MODALITIES)
    if len(shape) == 4 and shape[0] == channels and tuple(shape[1:]) == spatial:
        return "first"
    squeezed = _spatial_shape(shape)
    if len(squeezed) == 4 and squeezed[:3] == spatial and squeezed[3] == channels:
        return "last"
    return None


def _check_shape(path: Path, shape: tuple[int, ...], spatial: tuple[int, int, int], image: bool) -> None:
    ok = _image_layout(shape, spatial) is not None if image else _spatial_shape(shape) == spatial
    if not ok:
        expected = (
            f"a {len(MODALITIES)}-channel image ({', '.join(MODALITIES)}) on the label's grid {spatial}, channel-first "
            "or channel-last"
            if image
            else f"a label map of shape {spatial} like the label"
        )
        raise RobustsegError(f"{path}: volume of shape {tuple(shape)}; expected {expected}.")


def _file(folder: Path, index: Path, value: object, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise RobustsegError(f"{index}: {key} is {value!r}; expected a file name relative to {folder}.")
    path = folder / value
    if not path.is_file():
        raise RobustsegError(f"{index}: {key} names {value}, but {path} does not exist.")
    return path


def _entry(folder: Path, index: Path, number: int, raw: object) -> ExampleEntry:
    where = f"entries[{number}]"
    if not isinstance(raw, Mapping) or any(key not in raw for key in _ENTRY_KEYS):
        raise RobustsegError(f"{index}: {where} is {raw!r}; expected an object with keys {list(_ENTRY_KEYS)}.")
    try:
        epsilon = float(raw["epsilon"])
    except (TypeError, ValueError):
        epsilon = math.nan
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise RobustsegError(f"{index}: {where}.epsilon is {raw['epsilon']!r}; expected a finite number >= 0.")
    clean = raw["threat"] == "clean"
    adversarial = None if clean and raw["adversarial"] is None else raw["adversarial"]
    return ExampleEntry(
        model=str(raw["model"]),
        attack=str(raw["attack"]),
        threat=str(raw["threat"]),
        epsilon=epsilon,
        adversarial=None if adversarial is None else _file(folder, index, adversarial, f"{where}.adversarial"),
        prediction=_file(folder, index, raw["prediction"], f"{where}.prediction"),
    )


def _load_index(index: Path) -> ExampleSubject:
    folder = index.parent
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RobustsegError(f"{index}: cannot be read as JSON ({exc}).") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("entries"), list) or "image" not in raw:
        raise RobustsegError(
            f"{index}: expected an object with 'subject', 'image', 'label' and a list 'entries' (see "
            "common.report.examples)."
        )
    image = _file(folder, index, raw.get("image"), "image")
    label = _file(folder, index, raw.get("label"), "label")
    entries = tuple(_entry(folder, index, k, e) for k, e in enumerate(raw["entries"]))
    spatial = _spatial_shape(tuple(_header(label).shape))
    if len(spatial) != 3:
        raise RobustsegError(f"{label}: label of shape {spatial}; expected a 3-D label map.")
    _check_shape(image, tuple(_header(image).shape), spatial, image=True)
    for entry in entries:
        _check_shape(entry.prediction, tuple(_header(entry.prediction).shape), spatial, image=False)
        if entry.adversarial is not None:
            _check_shape(entry.adversarial, tuple(_header(entry.adversarial).shape), spatial, image=True)
    return ExampleSubject(
        subject=str(raw.get("subject") or folder.name),
        folder=folder,
        image=image,
        label=label,
        shape=spatial,  # type: ignore[arg-type]
        entries=entries,
    )


def load_examples(folder: str | os.PathLike) -> list[ExampleSubject]:
    """Read and check every ``<folder>/<subject>/index.json`` (sorted by subject folder).

    Args:
        folder: the ``examples`` folder beside the results CSV. Sub-folders without ``index.json`` are ignored.

    Returns:
        One :class:`ExampleSubject` per index; an empty list if ``folder`` does not exist.

    Raises:
        RobustsegError: if an index is not valid JSON or lacks keys, names a file that does not exist or cannot be
            read as NIfTI, or a volume does not lie on the label's grid.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    indices = sorted(p / INDEX_NAME for p in root.iterdir() if (p / INDEX_NAME).is_file())
    return [_load_index(index) for index in indices]


# ------------------------------------------------------------------------------------------------------- loading
def _read(path: Path) -> np.ndarray:
    try:
        return np.asarray(_header(path).dataobj, dtype=np.float32)
    except RobustsegError:
        raise
    except Exception as exc:  # a truncated gzip stream shows up only when the voxels are read
        raise RobustsegError(f"{path}: cannot read the NIfTI voxels ({type(exc).__name__}: {exc}).") from None


def _check_finite(path: Path, data: np.ndarray) -> None:
    if not np.isfinite(data).all():
        raise RobustsegError(f"{path}: volume has NaN or Inf voxels; expected finite intensities.")


def _reorient(data: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return np.ascontiguousarray(nib.orientations.apply_orientation(data, orientation))


def _read_image(path: Path, spatial: tuple[int, int, int], orientation: np.ndarray) -> np.ndarray:
    data = _read(path)
    _check_finite(path, data)
    if _image_layout(data.shape, spatial) == "first":
        data = np.moveaxis(data, 0, -1)
    return _reorient(data.reshape(*spatial, len(MODALITIES)), orientation)


def _read_label(path: Path, spatial: tuple[int, int, int], orientation: np.ndarray) -> np.ndarray:
    data = _read(path)
    _check_finite(path, data)
    return _reorient(np.rint(data.reshape(spatial)).astype(np.int16), orientation)


def load_example_volumes(subject: ExampleSubject) -> ExampleVolumes:
    """Read the clean image and label of a subject (RAS) and find its axial slice of largest whole-tumour area.

    Args:
        subject: a checked index from :func:`load_examples`.

    Returns:
        The volumes; adversarial inputs and predictions are read on first use.

    Raises:
        RobustsegError: if a file cannot be read or holds NaN/Inf voxels.
    """
    import nibabel as nib

    orientation = nib.orientations.io_orientation(_header(subject.label).affine)
    label = _read_label(subject.label, subject.shape, orientation)
    image = _read_image(subject.image, subject.shape, orientation)
    area = (label > 0).sum(axis=(0, 1))
    axial = int(np.argmax(area)) if area.any() else label.shape[2] // 2
    return ExampleVolumes(subject=subject, image=image, label=label, axial_slice=axial, _orientation=orientation)
