"""Example volumes saved by the robustness evaluation, for the slice panels of the report (paper Figs. 2 and 9).

The ``brats_robustness_eval`` bundle writes, beside ``results.csv``, ``examples/<subject>/index.json``::

    {"subject": "synth_003",
     "image": "image.nii.gz",     # clean preprocessed input, 4 channels (t1, t1ce, t2, flair)
     "label": "label.nii.gz",     # ground truth, BraTS values
     "entries": [{"model": ..., "attack": "none", "threat": "clean", "epsilon": 0.0,
                  "adversarial": null, "prediction": "..._pred.nii.gz"},
                 {"model": ..., "attack": "FGSM", "threat": "white-box", "epsilon": 0.05,
                  "adversarial": "..._adv.nii.gz", "prediction": "..._pred.nii.gz"},
                 {"model": ..., "attack": "gibbs", "threat": "corruption", "epsilon": 0.0, "severity": 3,
                  "adversarial": "gibbs__sev3_corrupted.nii.gz", "prediction": "..._pred.nii.gz"}]}

Every volume lies on the preprocessed grid of the label. Images are accepted channel-first ``(4, X, Y, Z)`` (the
format note) or channel-last ``(X, Y, Z, 4)`` / ``(X, Y, Z, 1, 4)`` (what MONAI's ``SaveImage`` writes); the
channel axis is found by matching the label's shape. The perturbation is ``adversarial - image``.

A ``corruption`` entry (an MR artifact, :mod:`common.corruptions`) names its corrupted input under ``adversarial``
(one file per corruption, shared by every model's entry) and carries the corruption's ``severity`` (1-5); the
evaluation saves one severity per corruption, :func:`example_severity`. ``severity`` is optional: indexes written
before it existed (no corruption entries) load as they did, with ``severity`` ``None``.

:func:`load_examples` checks every index and the header of every file it names (existence, readability, shape)
before anything is drawn, so a broken example set stops the report before a file is written.
:func:`load_example_volumes` then reads the voxels of one subject, reoriented to RAS from the label's affine (the
4-D images of a channel-first file carry no usable spatial affine of their own). :class:`ExampleWriter` is the other
side: the robustness evaluation writes the folder with it.

Example::

    subjects = load_examples("runs/eval/examples")
    volumes = load_example_volumes(subjects[0])
    t1gd = volumes.channel(volumes.image, "t1ce")[:, :, volumes.axial_slice]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.labels import MODALITIES
from common.errors import RobustsegError
from common.utils.files import atomic_write, write_atomic
from common.utils.validation import is_integer

__all__ = [
    "INDEX_NAME",
    "ExampleEntry",
    "ExampleSubject",
    "ExampleVolumes",
    "ExampleWriter",
    "EXAMPLE_SEVERITY",
    "example_severity",
    "load_examples",
    "load_example_volumes",
]

INDEX_NAME = "index.json"
"""The index of one subject's example folder, written last (a folder without it is unfinished)."""
_ENTRY_KEYS = ("model", "attack", "threat", "epsilon", "adversarial", "prediction")
_CORRUPTION = "corruption"  # the Threat value of corruption rows (common.utils.enums.Threat.CORRUPTION)
_SEVERITY_RANGE = (1, 5)
EXAMPLE_SEVERITY = 3
"""The corruption severity whose volumes the evaluation saves as examples (the middle of ImageNet-C's five levels)."""


def example_severity(severities: Sequence[int]) -> int:
    """The one severity of a run whose corrupted inputs are saved as examples, and that the report's panels show.

    :data:`EXAMPLE_SEVERITY` (3) if it was evaluated, else the middle one of the evaluated severities (the lower of
    the two middle ones for an even count: ``[1, 2, 4, 5]`` -> 2), so one rule serves the writer and the reader.

    Args:
        severities: the evaluated severities (any order, repeats allowed).

    Returns:
        The severity.

    Raises:
        RobustsegError: if ``severities`` is empty or holds anything but integers 1-5.
    """
    values = sorted(set(severities)) if isinstance(severities, Iterable) and not isinstance(severities, str) else []
    low, high = _SEVERITY_RANGE
    if not values or not all(is_integer(v) and low <= v <= high for v in values):
        raise RobustsegError(f"severities must be a non-empty list of integers {low}-{high}, got {severities!r}.")
    return EXAMPLE_SEVERITY if EXAMPLE_SEVERITY in values else int(values[(len(values) - 1) // 2])


@dataclass(frozen=True)
class ExampleEntry:
    """One model x attack x epsilon example of a subject (``adversarial`` is ``None`` for the clean input).

    A ``corruption`` entry's ``attack`` is the corruption's name, ``adversarial`` its corrupted input and ``severity``
    its level (``None`` for every other threat).
    """

    model: str
    attack: str
    threat: str
    epsilon: float
    adversarial: Path | None
    prediction: Path
    severity: int | None = None


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
    severity = raw.get("severity")
    low, high = _SEVERITY_RANGE
    if severity is not None and not (is_integer(severity) and low <= severity <= high):
        raise RobustsegError(f"{index}: {where}.severity is {severity!r}; expected an integer {low}-{high} or null.")
    if raw["threat"] == _CORRUPTION and severity is None:
        raise RobustsegError(f"{index}: {where} is a corruption entry without a severity; expected an integer 1-5.")
    clean = raw["threat"] == "clean"
    adversarial = None if clean and raw["adversarial"] is None else raw["adversarial"]
    return ExampleEntry(
        model=str(raw["model"]),
        attack=str(raw["attack"]),
        threat=str(raw["threat"]),
        epsilon=epsilon,
        adversarial=None if adversarial is None else _file(folder, index, adversarial, f"{where}.adversarial"),
        prediction=_file(folder, index, raw["prediction"], f"{where}.prediction"),
        severity=None if severity is None else int(severity),
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


# ------------------------------------------------------------------------------------------------------- writing
class ExampleWriter:
    """Write one subject's example volumes as NIfTI and, last, ``index.json``: the folder :func:`load_examples` reads.

    The clean input and the label are written at once; :meth:`add` writes one entry's adversarial input and
    prediction (a file already written, such as a source's input that a transfer entry reuses, is not written
    again) and :meth:`finish` writes the index. Every file is written atomically. Volumes are tensors (or arrays)
    with ``.detach().cpu().numpy()``; this module itself does not import torch (the report as a whole does, through
    the MR-artifact tables' :mod:`common.corruptions`).

    Args:
        folder: the subject's folder (``<output_dir>/examples/<subject>``), created if missing.
        subject: the subject id.
        image: the clean preprocessed input ``(1, 4, *spatial)``.
        label: the ground truth ``(1, 1, *spatial)`` with BraTS values.
        affine: the 4 x 4 affine of the preprocessed grid (e.g. a MetaTensor's ``affine``); ``None``: identity.

    Example::

        writer = ExampleWriter(folder, "synth_003", image, label, affine=image_meta.affine)
        writer.add("brats_unet3d_baseline", "FGSM", "white-box", 0.05, adversarial, prediction, source=None)
        writer.finish()
    """

    def __init__(self, folder: Path, subject: str, image: Any, label: Any, affine: Any = None) -> None:
        self.folder = folder
        self.subject = subject
        self.affine = np.asarray(affine, dtype=np.float64) if affine is not None else np.eye(4)
        self.entries: list[dict[str, Any]] = []
        self.written: set[str] = set()
        folder.mkdir(parents=True, exist_ok=True)
        self._save("image.nii.gz", image[0], np.float32)
        self._save("label.nii.gz", label[0, 0], np.uint8)

    @classmethod
    def reopen(cls, folder: Path, subject: str, drop_threat: str) -> ExampleWriter:
        """A writer that adds entries to a finished folder (one with ``index.json``), e.g. when a resumed evaluation
        scores corruptions an earlier run did not.

        The image and label stay as written, new volumes get the image's affine, and the index's entries are kept
        except those of ``drop_threat``, which the caller writes anew (so a rerun never lists an entry twice).

        Args:
            folder: the subject's folder.
            subject: the subject id.
            drop_threat: the threat whose entries are replaced (``"corruption"``).

        Raises:
            RobustsegError: if the index or the image cannot be read.
        """
        index = folder / INDEX_NAME
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
            entries = [dict(e) for e in raw["entries"]]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RobustsegError(f"{index}: cannot be read as an example index ({exc}).") from None
        writer = cls.__new__(cls)
        writer.folder, writer.subject = folder, subject
        writer.affine = np.asarray(_header(folder / "image.nii.gz").affine, dtype=np.float64)
        writer.entries = [e for e in entries if e.get("threat") != drop_threat]
        writer.written = set()  # a kept file is written again only if an added entry names it
        return writer

    def _save(self, name: str, volume: Any, dtype: Any) -> str:
        import nibabel as nib

        if name not in self.written:
            array = volume.detach().cpu().numpy().astype(dtype)
            with atomic_write(self.folder / name, suffix=".tmp.nii.gz") as tmp:  # nibabel picks gzip by the suffix
                nib.save(nib.Nifti1Image(array, self.affine), str(tmp))
            self.written.add(name)
        return name

    def add(
        self,
        model: str,
        attack: str,
        threat: str,
        epsilon: float,
        adversarial: Any | None,
        prediction: Any,
        source: str | None,
        severity: int | None = None,
    ) -> None:
        """Save one entry: the adversarial input (``None`` for clean) and the model's prediction on it.

        Args:
            model: the model whose prediction this is.
            attack: the attack name (``"none"`` for clean; the corruption's name for a corruption).
            threat: ``"clean"``, ``"white-box"``, ``"adaptive"``, ``"transfer"`` or ``"corruption"``.
            epsilon: the attack's epsilon (0 for clean and corruptions).
            adversarial: the adversarial (or corrupted) input ``(1, 4, *spatial)``, or ``None`` for clean.
            prediction: the model's label map ``(1, 1, *spatial)``.
            source: the model the transfer input was crafted on (``None`` for other threats).
            severity: a corruption's severity, 1-5 (required for ``"corruption"``, ``None`` for the others).

        Raises:
            RobustsegError: if ``severity`` is missing for a corruption, given for another threat, or not 1-5.
        """
        low, high = _SEVERITY_RANGE
        if (threat == _CORRUPTION) != (severity is not None) or not (
            severity is None or (is_integer(severity) and low <= severity <= high)
        ):
            raise RobustsegError(
                f"severity must be an integer {low}-{high} for a corruption entry and None otherwise, got "
                f"{severity!r} for threat {threat!r}."
            )
        if severity is not None:
            # one corrupted input per corruption, whichever model's entry comes first; one prediction per model
            adv_name = self._save(f"{attack}__sev{severity}_corrupted.nii.gz", adversarial[0], np.float32)
            pred_name = self._save(f"{model}__{attack}__sev{severity}_pred.nii.gz", prediction[0], np.uint8)
            self.entries.append({"model": model, "attack": attack, "threat": threat, "epsilon": float(epsilon),
                                 "severity": int(severity), "adversarial": adv_name,
                                 "prediction": pred_name})  # fmt: skip
            return
        eps = f"{epsilon:g}"
        tag = {"white-box": "", "adaptive": "adaptive__", "clean": ""}.get(threat, f"transfer-from-{source}__")
        adv_name = None
        if adversarial is not None:
            # a transfer input is the source's white-box input: one file serves both entries
            crafted_on = source if threat == "transfer" else model
            adv_tag = "adaptive__" if threat == "adaptive" else ""
            adv_name = self._save(f"{crafted_on}__{attack}__{adv_tag}eps{eps}_adv.nii.gz", adversarial[0], np.float32)
        pred_name = self._save(f"{model}__{attack}__{tag}eps{eps}_pred.nii.gz", prediction[0], np.uint8)
        self.entries.append({"model": model, "attack": attack, "threat": threat, "epsilon": float(epsilon),
                             "adversarial": adv_name, "prediction": pred_name})  # fmt: skip

    def finish(self) -> Path:
        """Write ``index.json`` (last, so a folder with an index is complete) and return its path."""
        index = {"subject": self.subject, "image": "image.nii.gz", "label": "label.nii.gz", "entries": self.entries}
        return write_atomic(self.folder / INDEX_NAME, json.dumps(index, indent=1) + "\n")
