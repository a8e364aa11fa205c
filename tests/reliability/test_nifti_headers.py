"""Hostile NIfTI files (issue 16): absurd header dimensions, scaling fields, NaN/Inf voxels, a 4-D file where a 3-D
volume belongs, truncated files. ``robustseg data check``, ``robustseg segment`` and the evaluation's data loading
each answer with one line naming the file, read no voxel of an absurd header (:mod:`common.data.headers`), and change
no input.

Scaling: a ``scl_slope`` of 0 means "no scaling" in the NIfTI-1 standard, and nibabel -- so MONAI's loader and every
reader here -- reads a NaN or infinite slope the same way (nibabel writes NaN itself for unscaled data): those files
are valid and load with their stored values, the same in every command. A finite slope with a non-finite intercept is
refused.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.check import check_dataset
from common.data.headers import MAX_VOXELS, header_problem

from .cli import (
    assert_one_error_line,
    evaluate,
    logging_restored,  # noqa: F401 -- an autouse fixture
    run_cli,
)
from .hostile_fs import tree_hashes
from .world import World, make_world

SHAPE = (24, 24, 24)  # the tiny world's grid


def _raw_nifti(path: Path, header: nib.Nifti1Header, data: bytes) -> Path:
    """A single-file NIfTI written byte by byte (nibabel refuses to write most of these headers)."""
    header = header.copy()
    header["vox_offset"] = header.single_vox_offset
    blob = header.binaryblock + b"\0" * (header.single_vox_offset - len(header.binaryblock)) + data
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, mtime=0)
    path.write_bytes(blob)
    return path


def _volume(dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 900, size=SHAPE).astype(dtype)


def _header(shape: tuple[int, ...], dtype: type = np.float32, nifti2: bool = False) -> nib.Nifti1Header:
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    header.set_data_dtype(dtype)
    header["dim"] = [len(shape), *shape, *[1] * (7 - len(shape))]
    return header


def huge_nifti2(path: Path) -> Path:  # 10^6 voxels per axis: 4 * 10^18 bytes announced
    return _raw_nifti(path, _header((10**6,) * 3, nifti2=True), _volume().tobytes())


def huge_in_range(path: Path) -> Path:  # 32767^3 (NIfTI-1's largest extent), a few real bytes
    return _raw_nifti(path, _header((32767,) * 3), _volume().tobytes())


def big_truncated(path: Path) -> Path:  # 512 x 512 x 512 float32 = 512 MiB announced, within the cap, 55 KB given
    return _raw_nifti(path, _header((512, 512, 512)), _volume().tobytes())


def negative_extent(path: Path) -> Path:
    return _raw_nifti(path, _header((-24, 24, 24)), _volume().tobytes())


def zero_extent(path: Path) -> Path:
    return _raw_nifti(path, _header((0, 24, 24)), _volume().tobytes())


def no_dimensions(path: Path) -> Path:
    header = _header(SHAPE)
    header["dim"][0] = 0
    return _raw_nifti(path, header, _volume().tobytes())


def four_d(path: Path) -> Path:
    data = np.stack([_volume()] * 2, axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def truncated_gz(path: Path) -> Path:
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def truncated_nii(path: Path) -> Path:
    path = path.with_name(path.name.removesuffix(".gz"))
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def nan_intercept(path: Path) -> Path:
    header = _header(SHAPE)
    header["scl_slope"], header["scl_inter"] = 2.0, np.nan
    return _raw_nifti(path, header, _volume().tobytes())


def unknown_datatype(path: Path) -> Path:
    header = _header(SHAPE)
    header["datatype"] = 1234
    return _raw_nifti(path, header, _volume().tobytes())


def not_gzip(path: Path) -> Path:
    path.write_bytes(b"not a NIfTI file at all")
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def nan_voxels(path: Path) -> Path:
    data = _volume()
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4) * [2, 2, 2, 1]), str(path))
    return path


def inf_voxels(path: Path) -> Path:
    data = _volume()
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4) * [2, 2, 2, 1]), str(path))
    return path


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "10^6 voxels per axis (NIfTI-2)": (huge_nifti2, "voxels"),
    "32767^3 voxels": (huge_in_range, "voxels"),
    "512^3 announced, 55 KB given": (big_truncated, "truncated"),
    "a negative extent": (negative_extent, "extent below 1"),
    "a zero extent": (zero_extent, "extent below 1"),
    "dim[0] = 0": (no_dimensions, "dimensions"),
    "4-D where 3-D belongs": (four_d, "3-d"),
    "a truncated .nii.gz": (truncated_gz, "cannot read"),
    "a truncated .nii": (truncated_nii, "truncated"),
    "a NaN intercept with slope 2": (nan_intercept, "intercept"),
    "an unknown datatype code": (unknown_datatype, "data code"),
    "not gzip at all": (not_gzip, "cannot read"),
    "an empty file": (empty, "cannot read"),
    "NaN voxels": (nan_voxels, "nan/inf"),
    "Inf voxels": (inf_voxels, "nan/inf"),
}
"""Case -> (writer of the hostile file, a word of the expected line)."""

# segment and the evaluation build a bundle run each: a representative few keep the default run short
CONSUMER_CASES = ["10^6 voxels per axis (NIfTI-2)", "512^3 announced, 55 KB given", "4-D where 3-D belongs",
                  "a truncated .nii.gz", "NaN voxels"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("world"), subjects=1)


def _hostile_subject(world: World, root: Path, case: str) -> tuple[Path, Path, Path]:
    """A copy of the tiny subject whose T2 file is the hostile one; its folder, that file and a datalist of it."""
    subject = root / "hostile_000"
    shutil.copytree(world.subject_dir, subject)
    for path in subject.iterdir():
        path.rename(path.with_name(path.name.replace(world.subjects[0], subject.name)))
    t2 = subject / f"{subject.name}_t2.nii.gz"
    t2.unlink()
    hostile = HOSTILE[case][0](t2)
    modalities = [subject / f"{subject.name}_{m}.nii.gz" for m in ("t1", "t1ce")] + [hostile]
    entry = {"image": [str(p) for p in [*modalities, subject / f"{subject.name}_flair.nii.gz"]],
             "label": str(subject / f"{subject.name}_seg.nii.gz"), "subject": subject.name}  # fmt: skip
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": [entry], "testing": [entry]}))
    return subject, hostile, datalist


@pytest.mark.parametrize("case", list(HOSTILE))
def test_data_check_names_the_file_in_one_line_without_reading_absurd_voxels(case, world, tmp_path, capsys,
                                                                              reliability):  # fmt: skip
    subject, hostile, _ = _hostile_subject(world, tmp_path, case)
    before = tree_hashes(subject)
    tracemalloc.start()
    try:
        code = run_cli(["data", "check", str(subject)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reliability.bad_input("NIfTI file (data check)")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(str(hostile)) and HOSTILE[case][1] in lines[0].lower(), lines[0]
    assert "Traceback" not in lines[0]
    assert peak < 64 * 2**20, f"the check allocated {peak / 2**20:.0f} MiB for a {case} file"
    assert tree_hashes(subject) == before


@pytest.mark.parametrize("case", CONSUMER_CASES)
def test_segment_names_the_file_in_one_line(case, world, tmp_path, capsys, reliability):
    subject, hostile, _ = _hostile_subject(world, tmp_path, case)
    before = tree_hashes(subject)
    out = tmp_path / "out"
    out.mkdir()
    code = run_cli(["segment", "--bundle", str(world.bundle), "--input", str(subject), "--output",
                    str(out / "seg.nii.gz")])  # fmt: skip
    reliability.bad_input("NIfTI file (segment)")
    line = assert_one_error_line(code, capsys.readouterr().err, str(hostile), HOSTILE[case][1])
    assert "Traceback" not in line
    assert list(out.iterdir()) == [] and tree_hashes(subject) == before


@pytest.mark.parametrize("case", CONSUMER_CASES)
def test_evaluation_names_the_file_in_one_line(case, world, tmp_path, capsys, reliability):
    subject, hostile, datalist = _hostile_subject(world, tmp_path, case)
    before = tree_hashes(subject)
    code = evaluate(world, tmp_path / "out", datalist=datalist)
    reliability.bad_input("NIfTI file (evaluation)")
    assert_one_error_line(code, capsys.readouterr().err, str(hostile), HOSTILE[case][1])
    assert not (tmp_path / "out" / "results.csv").exists() and tree_hashes(subject) == before


@pytest.mark.parametrize("slope", [0.0, np.nan, np.inf])
def test_a_slope_of_zero_or_nan_means_unscaled_everywhere(slope, tmp_path, reliability):
    """The standard's 0 and nibabel's NaN (and Inf) slope: no scaling, in the header check and in nibabel's reading
    (so in MONAI's loader), never a different intensity between two commands."""
    stored = _volume()
    header = _header(SHAPE)
    header["scl_slope"], header["scl_inter"] = slope, 7.0
    path = _raw_nifti(tmp_path / "t1.nii", header, stored.tobytes(order="F"))  # NIfTI voxels are in Fortran order
    reliability.bad_input("NIfTI scale slope")
    assert header_problem(path, 3) is None
    np.testing.assert_array_equal(np.asanyarray(nib.load(path).dataobj), stored)

    from monai.transforms import LoadImage

    np.testing.assert_array_equal(np.asarray(LoadImage(image_only=True)(str(path))), stored)


def test_the_cap_is_above_a_brats_subject_and_below_a_giant():
    assert 4 * 240 * 240 * 155 < MAX_VOXELS < 2**31


def test_a_header_check_reads_no_voxels(tmp_path, monkeypatch):
    """:func:`header_problem` decides from the header and the file size: reading voxels would be a bug."""
    path = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), str(path))

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_voxels)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", no_voxels)
    assert header_problem(path, 3) is None
    assert header_problem(path, 4) is not None


def test_check_dataset_lists_every_hostile_file(tmp_path, reliability):
    """Several hostile files in one data folder: one line each, and the good subject passes."""
    from ..data.conftest import write_brats_subject

    root = tmp_path / "brats"
    for i in range(3):
        write_brats_subject(root / f"Brats18_TCIA_{i:03d}_1", index=i, shape=SHAPE)
    huge_nifti2(root / "Brats18_TCIA_000_1" / "Brats18_TCIA_000_1_t1.nii.gz")
    truncated_gz(root / "Brats18_TCIA_001_1" / "Brats18_TCIA_001_1_flair.nii.gz")
    reliability.bad_input("NIfTI file (data check)", 2)
    problems, n_subjects = check_dataset(root)
    assert n_subjects == 3 and len(problems) == 2, problems
    assert "Brats18_TCIA_000_1_t1" in problems[0] and "Brats18_TCIA_001_1_flair" in problems[1]
