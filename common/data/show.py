"""A figure of one BraTS subject: the four contrasts and the label overlay in three planes through the tumour."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.data.labels import MODALITIES
from common.errors import RobustsegError
from common.utils.files import atomic_write

__all__ = ["find_subject_files", "show_subject"]

# BraTS 2017-2021 suffixes first, then the BraTS 2023 names of the same series.
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
    "seg": ("seg", "segm"),  # BraTS 2020 subject 355 ships "..._Segm.nii"
}
_TITLES = {"t1": "T1", "t1ce": "T1Gd", "t2": "T2", "flair": "FLAIR"}
# ITK-SNAP's default colours for labels 1, 2, 4 (red, green, yellow), as in most BraTS figures.
_LABEL_COLOURS = {1: ("NCR/NET (1)", (1.0, 0.1, 0.1)), 2: ("ED (2)", (0.1, 0.85, 0.1)), 4: ("ET (4)", (1.0, 0.9, 0.0))}


def find_subject_files(subject_dir: str | os.PathLike) -> dict[str, Path]:
    """The NIfTI files of a BraTS subject folder, keyed by ``t1``, ``t1ce``, ``t2``, ``flair`` and ``seg``.

    Files are recognised by their suffix (``*_t1.nii.gz``, ``*_t1ce.nii.gz``, ..., also ``.nii`` and the BraTS
    2023 names ``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``). ``seg`` is absent when there is no label file.

    Args:
        subject_dir: the subject folder.

    Returns:
        A mapping from modality (and ``seg``) to file.

    Raises:
        RobustsegError: if the folder is missing, a modality is missing or found more than once.
    """
    folder = Path(subject_dir)
    if not folder.is_dir():
        raise RobustsegError(f"subject_dir: {folder} is not a folder, expected a BraTS subject folder.")
    names = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found: dict[str, Path] = {}
    for key, suffixes in _SUFFIXES.items():
        matches = [
            p
            for p in names
            for s in suffixes
            for sep in "_-"
            for ext in (".nii.gz", ".nii")
            if p.name.lower().endswith(sep + s + ext)
        ]
        if len(matches) > 1:
            raise RobustsegError(f"subject_dir: {folder} has several {key} files {[p.name for p in matches]}.")
        if matches:
            found[key] = matches[0]
        elif key != "seg":
            raise RobustsegError(
                f"subject_dir: {folder} has no {key} image, expected a file ending in _{key}.nii.gz (BraTS naming)."
            )
    return found


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Data and voxel sizes of a 3-D NIfTI, reoriented to RAS so that every subject is shown the same way."""
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for truncated or foreign files
        raise RobustsegError(f"{path}: cannot read the NIfTI file ({type(exc).__name__}: {exc}).") from None
    data = data.reshape(data.shape[:3]) if data.ndim > 3 and all(s == 1 for s in data.shape[3:]) else data
    if data.ndim != 3:
        raise RobustsegError(f"{path}: image has shape {data.shape}, expected a 3-D volume.")
    if not np.isfinite(data).all():
        raise RobustsegError(f"{path}: image has NaN or Inf voxels.")
    return data, np.asarray(image.header.get_zooms()[:3], dtype=np.float64)


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices for ``imshow(origin="lower")``: radiological, sagittal anterior left."""
    x, y, z = centre
    return [volume[::-1, :, z].T, volume[::-1, y, :].T, volume[x, ::-1, :].T]


def show_subject(subject_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Save a PNG panel of one subject: rows axial, coronal, sagittal through the tumour centre; columns T1, T1Gd,
    T2, FLAIR and the label overlay on T1Gd (1 red, 2 green, 4 yellow).

    Works on any BraTS subject folder; without a label file the overlay column is left out and the slices go
    through the centre of the brain. Images are shown in radiological convention (patient's right on the left).

    Args:
        subject_dir: a BraTS subject folder (see :func:`find_subject_files`).
        out: the PNG file to write (parent folders are created).

    Returns:
        The path of the PNG.

    Raises:
        RobustsegError: if ``out`` does not end in ``.png``, or a file is missing, unreadable, not 3-D, not finite,
            or its shape differs from the T1's.
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise RobustsegError(f"out: {out} must end in .png.")
    files = find_subject_files(subject_dir)
    volumes: dict[str, np.ndarray] = {}
    spacing = np.ones(3)
    for key, path in files.items():
        volumes[key], zooms = _load(path)
        if key == "t1":
            spacing = zooms
        elif volumes[key].shape != volumes["t1"].shape:
            raise RobustsegError(f"{path}: shape {volumes[key].shape} differs from the T1's {volumes['t1'].shape}.")

    label = np.rint(volumes["seg"]).astype(np.int64) if "seg" in volumes else None
    tumour = label is not None and bool((label > 0).any())
    inside = (label > 0) if tumour else (volumes["t1"] > 0)
    if not inside.any():
        inside = np.ones_like(volumes["t1"], dtype=bool)
    centre = tuple(int(round(c)) for c in np.argwhere(inside).mean(axis=0))

    # a bare Figure on the Agg canvas: no pyplot, so the caller's backend and open figures are left alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    columns = [*MODALITIES, "seg"] if label is not None else list(MODALITIES)
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]  # rows' dy/dx
    fig = Figure(figsize=(2.6 * len(columns), 8.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(columns), squeeze=False)
    windows = {}
    for m in MODALITIES:
        brain = volumes[m][volumes[m] > 0]
        windows[m] = (0.0, float(np.percentile(brain, 99.5)) if brain.size else 1.0)
    colours = np.zeros((5, 4))
    for value, (_, rgb) in _LABEL_COLOURS.items():
        colours[value] = (*rgb, 0.5)
    overlay_cmap = ListedColormap(colours)
    for row, aspect in enumerate(aspects):
        for col, key in enumerate(columns):
            ax = axes[row, col]
            base = "t1ce" if key == "seg" else key
            ax.imshow(
                _planes(volumes[base], centre)[row],
                cmap="gray",
                vmin=windows[base][0],
                vmax=windows[base][1],
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
            if key == "seg":
                lab = np.clip(_planes(label, centre)[row], 0, 4)
                ax.imshow(
                    np.ma.masked_equal(lab, 0),
                    cmap=overlay_cmap,
                    vmin=0,
                    vmax=4,
                    origin="lower",
                    aspect=aspect,
                    interpolation="nearest",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("labels on T1Gd" if key == "seg" else _TITLES[key])
            if col == 0:
                ax.set_ylabel(["axial", "coronal", "sagittal"][row])
            if col == 0 and row < 2:
                ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="w", fontsize=8, va="center")
    if label is not None:
        handles = [Patch(color=rgb, label=name) for name, rgb in _LABEL_COLOURS.values()]
        fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"{Path(subject_dir).name}   (slices through voxel {centre})", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    with atomic_write(out, suffix=".tmp.png", parents=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return out
