"""Tests for :mod:`common.data.headers`: a header's problems are found without reading a voxel."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from common.data.headers import MAX_VOXELS, header_problem

DATA = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)


def _write(path, header_changes=None, data=DATA, cut=None):
    header = nib.Nifti1Image(data, np.eye(4)).header
    header["vox_offset"] = 352  # where nibabel puts the voxels of a single file, set when it saves one
    blob = bytearray(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    if header_changes:
        for key, value in header_changes.items():
            header[key] = value
        blob[: len(header.binaryblock)] = header.binaryblock
    blob = bytes(blob[:cut] if cut else blob)
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)
    return path


@pytest.mark.parametrize("name", ["ok.nii", "ok.nii.gz"])
def test_a_sane_file_passes(tmp_path, name):
    assert header_problem(_write(tmp_path / name), ndim=3) is None


@pytest.mark.parametrize(
    ("changes", "cut", "expected"),
    [
        ({"dim": [3, 2000, 2000, 2000, 1, 1, 1, 1]}, None, "voxels (expected at most"),
        ({"dim": [3, -6, 5, 4, 1, 1, 1, 1]}, None, "has an extent below 1"),
        ({"dim": [0, 6, 5, 4, 1, 1, 1, 1]}, None, "dimensions (expected 1 to 7"),
        ({"dim": [4, 6, 5, 4, 2, 1, 1, 1]}, None, "(expected a 3-D volume)"),
        ({"scl_slope": 2.0, "scl_inter": np.inf}, None, "invalid intercept inf"),
        (None, 400, "cannot read (truncated"),
    ],
)
def test_problems_are_one_line(tmp_path, changes, cut, expected):
    path = _write(tmp_path / "bad.nii", changes, cut=cut)
    problem = header_problem(path, ndim=3)
    assert problem is not None and problem.startswith(f"{path}: ") and expected in problem, problem


def test_a_cut_gzip_stream(tmp_path):
    data = np.random.default_rng(0).random((40, 40, 40), dtype=np.float32)  # incompressible: the header survives
    path = _write(tmp_path / "ok.nii.gz", data=data)
    path.write_bytes(path.read_bytes()[:-30])
    assert "cannot read (the compressed data is cut short" in header_problem(path)


def test_a_multi_member_gzip_is_counted_not_refused(tmp_path):
    """The gzip trailer only knows the last member's size: the streaming count decides then."""
    blob = gzip.decompress(_write(tmp_path / "ok.nii.gz").read_bytes())
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(blob[:200]) + gzip.compress(blob[200:]))
    assert header_problem(path, 3) is None


def test_the_cap():
    assert MAX_VOXELS == 4 * 512**3
