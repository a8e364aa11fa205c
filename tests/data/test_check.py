from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common.__main__ import main
from common.data.check import check_dataset
from common.data.datalist import write_datalist
from common.errors import RobustsegError


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def first_subject(root: Path) -> Path:
    return sorted(p.parent for p in root.rglob("*_t1.nii*"))[0]


def assert_one_line_problems(problems: list[str]) -> None:
    for line in problems:
        assert "\n" not in line and "Traceback" not in line
        assert "(expected " in line and line.endswith(")")


@pytest.mark.parametrize("kind", ["flat", "hgg_lgg", "2021", "nii", "msd"])
def test_clean_trees_pass(kind, data_tree):
    root = data_tree(kind, n=3)
    assert check_dataset(root) == ([], 3)


@pytest.mark.parametrize("kind", ["flat", "msd"])
def test_datalist_file_and_folder_with_datalist(kind, data_tree, tmp_path):
    root = data_tree(kind, n=4)
    write_datalist(root, root / "datalist.json")
    assert check_dataset(root / "datalist.json") == ([], 4)
    assert check_dataset(root) == ([], 4)  # the folder's datalist.json is what gets checked
    (tmp_path / "lists").mkdir()
    write_datalist(root, tmp_path / "lists" / "datalist.json")  # absolute paths
    assert check_dataset(tmp_path / "lists") == ([], 4)


# Each breaker damages a clean 2-subject tree and returns (file or folder the problem must name, words it must say).
def truncate(root: Path) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_t2.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "cannot read"


def remove_modality(root: Path) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_flair.nii.gz"
    path.unlink()
    return path, "file not found"


def change_shape(root: Path, helpers) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_t1ce.nii.gz"
    helpers.write_nifti(path, np.ones((12, 12, 11), np.float32))
    return path, "spatial shape (12, 12, 11) differs from"


def shift_affine(root: Path, helpers) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_t2.nii.gz"
    affine = np.eye(4)
    affine[0, 3] = 1e-4  # below the seg tolerance, but MONAI would refuse to stack it with the other modalities
    helpers.write_nifti(path, helpers.subject_arrays(0)[0][2], affine)
    return path, "affine differs from"


def shift_seg_affine(root: Path, helpers) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_seg.nii.gz"
    affine = np.diag([1.0, 1.0, 1.01, 1.0])
    helpers.write_nifti(path, helpers.subject_arrays(0)[1], affine)
    return path, "affine differs from"


def nan_voxel(root: Path, helpers) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_t1.nii.gz"
    volume = helpers.subject_arrays(0)[0][0].copy()
    volume[3, 4, 5] = np.nan
    helpers.write_nifti(path, volume)
    return path, "1 NaN/Inf voxel(s)"


def label_three(root: Path, helpers) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_seg.nii.gz"
    seg = helpers.subject_arrays(0)[1].copy()
    seg[seg == 4] = 3
    helpers.write_nifti(path, seg)
    return path, "label values [3] (expected BraTS labels [0, 1, 2, 4])"


def missing_seg(root: Path) -> tuple[Path, str]:
    folder = first_subject(root)
    (folder / f"{folder.name}_seg.nii.gz").unlink()
    return folder, "no segmentation"


def four_d_modality(root: Path, helpers) -> tuple[Path, str]:
    path = first_subject(root) / f"{first_subject(root).name}_t1.nii.gz"
    helpers.write_nifti(path, np.ones((12, 12, 12, 2), np.float32))
    return path, "shape (12, 12, 12, 2) (expected a 3-D volume)"


BRATS_BREAKERS: list[Callable] = [
    truncate,
    remove_modality,
    change_shape,
    shift_affine,
    shift_seg_affine,
    nan_voxel,
    label_three,
    missing_seg,
    four_d_modality,
]


@pytest.mark.parametrize("breaker", BRATS_BREAKERS, ids=lambda f: f.__name__)
def test_broken_brats_tree(breaker, brats_tree, nifti_helpers):
    root = brats_tree("flat", n=2)
    needs_helpers = breaker.__code__.co_argcount == 2
    where, words = breaker(root, nifti_helpers) if needs_helpers else breaker(root)
    before = snapshot(root)
    problems, n_subjects = check_dataset(root)
    assert n_subjects == 2
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{where}") and words in problems[0]
    assert_one_line_problems(problems)
    assert snapshot(root) == before  # bytes and mtimes untouched


def test_missing_seg_is_fine_without_required_labels(brats_tree):
    root = brats_tree("flat", n=2)
    missing_seg(root)
    assert check_dataset(root, require_labels=False) == ([], 2)


def msd_three_channels(task: Path, helpers) -> tuple[Path, str]:
    path = task / "imagesTr" / "BRATS_001.nii.gz"
    helpers.write_nifti(path, np.ones((12, 12, 12, 3), np.float32))
    return path, "shape (12, 12, 12, 3) (expected 4-D with 4 channels flair, t1, t1ce, t2 last)"


def msd_label_four(task: Path, helpers) -> tuple[Path, str]:
    path = task / "labelsTr" / "BRATS_002.nii.gz"
    helpers.write_nifti(path, np.full((12, 12, 12), 4, np.uint8))
    return path, "label values [4] (expected MSD Task01 labels [0, 1, 2, 3])"


def msd_missing_label(task: Path, helpers) -> tuple[Path, str]:
    (task / "labelsTr" / "BRATS_001.nii.gz").unlink()
    return task / "imagesTr", "subject BRATS_001): no segmentation"


@pytest.mark.parametrize("breaker", [msd_three_channels, msd_label_four, msd_missing_label], ids=lambda f: f.__name__)
def test_broken_msd_tree(breaker, msd_tree, nifti_helpers):
    task = msd_tree(n=2)
    where, words = breaker(task, nifti_helpers)
    problems, n_subjects = check_dataset(task)
    assert n_subjects == 2 and len(problems) == 1, problems
    assert problems[0].startswith(f"{where}") and words in problems[0]
    assert_one_line_problems(problems)


def test_label_3_is_valid_in_msd_but_not_in_brats(msd_tree, brats_tree, nifti_helpers):
    # the same MSD label file is fine as MSD and wrong when declared as a BraTS seg in a datalist
    task = msd_tree(n=1)
    brats = first_subject(brats_tree("flat", n=1))
    entry = {
        "image": [str(brats / f"{brats.name}_{m}.nii.gz") for m in nifti_helpers.modalities],
        "label": str(task / "labelsTr" / "BRATS_001.nii.gz"),
    }
    (task / "as_brats.json").write_text(json.dumps({"training": [entry]}))
    problems, _ = check_dataset(task / "as_brats.json")
    assert len(problems) == 1 and "label values [3]" in problems[0], problems


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"training": [', "cannot parse JSON (JSONDecodeError"),
        (b"\xff\xfe\x00garbage", "cannot parse JSON (UnicodeDecodeError"),
        ('{"training": []}', "no subject lists"),
        ('["a", "b"]', "no subject lists"),
        ('{"training": [{"image": "x.nii.gz", "label": "y.nii.gz"}, 3]}', "training[1] is 3"),
    ],
)
def test_broken_datalists(content, words, tmp_path):
    path = tmp_path / "datalist.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    problems, _ = check_dataset(path)
    assert any(line.startswith(f"{path}: ") and words in line for line in problems), problems
    assert_one_line_problems(problems)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            {"image": "a.nii.gz"},
            '1 image file(s) (expected 4: t1, t1ce, t2, flair, or "layout": "msd" for an MSD 4-D image)',
        ),
        ({"image": ["a", "b"], "layout": "msd"}, "2 image files for layout 'msd' (expected one 4-D image)"),
        ({"image": "a.nii.gz", "layout": "nrrd"}, "layout 'nrrd' (expected one of ['brats', 'msd'])"),
        ({"image": 3}, "'image' is 3 (expected a file path or a list of file paths)"),
    ],
)
def test_malformed_entries(entry, words, tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"testing": [entry]}))
    problems, _ = check_dataset(path, require_labels=False)
    assert problems == [f"{path}: testing[0]: {words}"]


def test_subject_in_two_lists(brats_tree):
    root = brats_tree("flat", n=3)
    out = write_datalist(root, root / "datalist.json")
    content = json.loads(out.read_text())
    content["testing"].append(content["training"][0])
    out.write_text(json.dumps(content))
    problems, n_subjects = check_dataset(out)
    assert n_subjects == 3
    assert len(problems) == 1 and "in both 'training' and 'testing' (expected disjoint)" in problems[0], problems


def test_missing_path_raises(tmp_path):
    with pytest.raises(RobustsegError, match=r"nowhere: no such file or folder \(expected a data folder or a datalist"):
        check_dataset(tmp_path / "nowhere")


def test_unrecognised_folder_raises(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("x")
    with pytest.raises(RobustsegError, match="no BraTS subject folders or MSD imagesTr/ found"):
        check_dataset(tmp_path / "x")


def test_cli_exit_status_and_lines(brats_tree, nifti_helpers, capsys):
    root = brats_tree("flat", n=2)
    main(["data", "check", str(root)])
    assert "ok: 2 subjects" in capsys.readouterr().out
    label_three(root, nifti_helpers)
    nan_voxel(root, nifti_helpers)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(root)])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and any("NaN/Inf" in line for line in lines) and any("[3]" in line for line in lines)


def test_truncated_uncompressed_nifti(brats_tree):
    root = brats_tree("nii", n=1)
    path = first_subject(root) / f"{first_subject(root).name}_t1.nii"
    path.write_bytes(path.read_bytes()[:-100])
    problems, _ = check_dataset(root)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: cannot read"), problems


def test_gzip_garbage(brats_tree):
    root = brats_tree("flat", n=1)
    path = first_subject(root) / f"{first_subject(root).name}_seg.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header"))
    problems, _ = check_dataset(root)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: cannot read"), problems
