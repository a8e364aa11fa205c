"""Shared fixtures for tests/data: tiny BraTS and MSD trees written with nibabel in ``tmp_path``.

Every subject's voxels come from its index alone (``subject_arrays``), so a BraTS tree and an MSD tree built with the
same indices hold the same data, once in BraTS files and channel order, once in the MSD 4-D layout and labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

MODALITIES = ("t1", "t1ce", "t2", "flair")
MSD_ORDER = (3, 0, 1, 2)  # MSD channels FLAIR, T1w, T1gd, T2w as indices into MODALITIES
BRATS_TO_MSD_LABELS = {0: 0, 1: 2, 2: 1, 4: 3}

SubjectArrays = tuple[np.ndarray, np.ndarray]


def subject_arrays(index: int, shape: tuple[int, int, int] = (12, 12, 12)) -> SubjectArrays:
    """Four positive contrasts (``(4, *shape)`` float32, background 0) and a BraTS label map (uint8) with all labels."""
    rng = np.random.default_rng(1000 + index)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 0.9
    images = (rng.uniform(50, 1000, size=(4, *shape)) * brain).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    # nested blobs along the first axis, so that any flip or transpose of the grid is visible
    centre = grid[0] - 0.2
    seg[(np.abs(centre) < 0.6) & brain] = 2
    seg[(np.abs(centre) < 0.35) & brain] = 4
    seg[(np.abs(centre) < 0.15) & brain] = 1
    return images, seg


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_brats_subject(
    folder: Path,
    index: int = 0,
    shape: tuple[int, int, int] = (12, 12, 12),
    affine: np.ndarray | None = None,
    suffix: str = ".nii.gz",
    seg: bool = True,
) -> Path:
    images, labels = subject_arrays(index, shape)
    sid = folder.name
    for modality, volume in zip(MODALITIES, images):
        write_nifti(folder / f"{sid}_{modality}{suffix}", volume, affine)
    if seg:
        write_nifti(folder / f"{sid}_seg{suffix}", labels, affine)
    return folder


def write_msd_subject(
    task: Path, index: int = 0, shape: tuple[int, int, int] = (12, 12, 12), affine: np.ndarray | None = None
) -> Path:
    images, labels = subject_arrays(index, shape)
    name = f"BRATS_{index + 1:03d}.nii.gz"
    image_4d = np.stack([images[c] for c in MSD_ORDER], axis=-1)
    msd_labels = np.vectorize(BRATS_TO_MSD_LABELS.get, otypes=[np.uint8])(labels)
    write_nifti(task / "imagesTr" / name, image_4d, affine)
    write_nifti(task / "labelsTr" / name, msd_labels, affine)
    return task / "imagesTr" / name


def _brats_ids(kind: str, n: int) -> list[str]:
    if kind == "2021":
        return [f"BraTS2021_{i:05d}" for i in range(n)]
    return [f"Brats18_TCIA_{i:03d}_1" for i in range(n)]


@pytest.fixture
def brats_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make(kind="flat" | "hgg_lgg" | "2021" | "nii", n=3, **subject_kwargs) -> root``: a tiny BraTS folder."""

    def make(kind: str = "flat", n: int = 3, root: Path | None = None, **kwargs) -> Path:
        root = root or tmp_path / f"brats_{kind}"
        for i, sid in enumerate(_brats_ids(kind, n)):
            group = ("HGG" if i % 2 == 0 else "LGG") if kind == "hgg_lgg" else ""
            suffix = ".nii" if kind == "nii" else ".nii.gz"
            write_brats_subject(root / group / sid, index=i, suffix=suffix, **kwargs)
        return root

    return make


@pytest.fixture
def msd_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make(n=3, **subject_kwargs) -> root``: a tiny MSD Task01_BrainTumour folder (with macOS ``._`` litter)."""

    def make(n: int = 3, root: Path | None = None, **kwargs) -> Path:
        root = root or tmp_path / "Task01_BrainTumour"
        for i in range(n):
            write_msd_subject(root, index=i, **kwargs)
        (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (root / "labelsTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        return root

    return make


@pytest.fixture
def data_tree(brats_tree, msd_tree) -> Callable[..., Path]:
    """``make(kind, n=3, **kwargs)`` for every layout: "flat", "hgg_lgg", "2021", "nii" (BraTS) and "msd"."""

    def make(kind: str, n: int = 3, **kwargs) -> Path:
        return msd_tree(n=n, **kwargs) if kind == "msd" else brats_tree(kind, n=n, **kwargs)

    return make


@pytest.fixture
def nifti_helpers():
    """The module-level writers, for tests that build odd trees by hand."""

    class Helpers:
        write_nifti = staticmethod(write_nifti)
        write_brats_subject = staticmethod(write_brats_subject)
        write_msd_subject = staticmethod(write_msd_subject)
        subject_arrays = staticmethod(subject_arrays)
        msd_order = MSD_ORDER
        modalities = MODALITIES

    return Helpers
