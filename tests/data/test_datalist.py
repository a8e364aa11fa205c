from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from common.__main__ import main
from common.data.datalist import find_subjects, split_subjects, write_datalist
from common.data.labels import MODALITIES
from common.errors import RobustsegError

BRATS_KINDS = ["flat", "hgg_lgg", "2021", "nii"]


def image_paths(entry: dict) -> list[str]:
    return [entry["image"]] if isinstance(entry["image"], str) else entry["image"]


@pytest.mark.parametrize("kind", BRATS_KINDS)
def test_find_brats_subjects(kind, brats_tree):
    root = brats_tree(kind, n=4)
    entries = find_subjects(root)
    assert [e["subject"] for e in entries] == sorted(p.parent.name for p in root.rglob("*_seg.nii*"))
    for entry in entries:
        assert "layout" not in entry
        assert len(entry["image"]) == 4
        for path, modality in zip(entry["image"], MODALITIES):
            assert Path(path).is_file() and Path(path).is_absolute()
            assert Path(path).name.split(".")[0] == f"{entry['subject']}_{modality}"
        assert Path(entry["label"]).name.split(".")[0] == f"{entry['subject']}_seg"


@pytest.mark.parametrize("given", ["task", "parent"])
def test_find_msd_subjects_ignores_appledouble_files(given, msd_tree):
    task = msd_tree(n=3)
    entries = find_subjects(task if given == "task" else task.parent)
    assert [e["subject"] for e in entries] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    for entry in entries:
        assert entry["layout"] == "msd"
        assert entry["image"] == str(task / "imagesTr" / f"{entry['subject']}.nii.gz")
        assert entry["label"] == str(task / "labelsTr" / f"{entry['subject']}.nii.gz")


def test_subject_without_seg_has_no_label(brats_tree, nifti_helpers, tmp_path):
    root = brats_tree("flat", n=2)
    nifti_helpers.write_brats_subject(root / "Brats18_X_1", seg=False)
    entries = {e["subject"]: e for e in find_subjects(root)}
    assert "label" not in entries["Brats18_X_1"]
    assert all("label" in e for s, e in entries.items() if s != "Brats18_X_1")


def test_missing_modality_keeps_its_expected_path(brats_tree):
    root = brats_tree("flat", n=2)
    flair = next(root.rglob("*_flair.nii.gz"))
    flair.unlink()
    entry = next(e for e in find_subjects(root) if e["image"][3] == str(flair))
    assert not Path(entry["image"][3]).exists()


def test_brats2020_segm_alias_and_single_subject_folder(nifti_helpers, tmp_path):
    folder = nifti_helpers.write_brats_subject(tmp_path / "BraTS20_Training_355", seg=False)
    nifti_helpers.write_nifti(folder / "W39_1998.09.19_Segm.nii", nifti_helpers.subject_arrays(0)[1])
    (entry,) = find_subjects(folder)  # a subject folder is a data set of one
    assert entry["label"] == str(folder / "W39_1998.09.19_Segm.nii")


@pytest.mark.parametrize("kind", [*BRATS_KINDS, "msd"])
def test_datalist_inside_root_is_relative_and_loads_with_monai(kind, data_tree):
    root = data_tree(kind, n=5)
    out = write_datalist(root, root / "datalist.json")
    content = json.loads(out.read_text())
    for entry in content["training"] + content["testing"]:
        assert all(not os.path.isabs(p) for p in image_paths(entry))
    found = {e["subject"]: e for e in find_subjects(root)}
    for split in ("training", "testing"):
        for entry in load_decathlon_datalist(out, data_list_key=split):
            # MONAI resolves *any* string naming an existing path, so a BraTS subject id next to its folder comes
            # back as that folder's path: its basename is the id either way
            subject = os.path.basename(entry["subject"])
            assert [os.path.normpath(p) for p in image_paths(entry)] == image_paths(found[subject])
            assert os.path.normpath(entry["label"]) == found[subject]["label"]
    assert content["layout"] == ("msd" if kind == "msd" else "brats")


def test_datalist_outside_root_is_absolute(brats_tree, tmp_path):
    root = brats_tree("flat", n=3)
    (tmp_path / "elsewhere").mkdir()
    out = write_datalist(root, tmp_path / "elsewhere" / "datalist.json")
    entries = json.loads(out.read_text())["training"]
    assert all(os.path.isabs(p) and Path(p).is_file() for e in entries for p in e["image"])


@pytest.mark.parametrize("n", [2, 3, 5, 10, 37])
@pytest.mark.parametrize("test_fraction", [0.01, 0.2, 0.5, 0.99])
def test_split_sizes(n, test_fraction):
    subjects = [f"s{i:03d}" for i in range(n)]
    training, testing = split_subjects(subjects, test_fraction=test_fraction, seed=3)
    assert sorted(training + testing) == subjects
    assert not set(training) & set(testing)
    assert len(training) >= 1 and len(testing) >= 1
    assert len(testing) == min(max(math.floor(n * test_fraction + 0.5), 1), n - 1)  # rounded half up
    assert training == sorted(training) and testing == sorted(testing)


def test_split_is_seeded_and_independent_of_input_order():
    subjects = [f"s{i:03d}" for i in range(50)]
    a = split_subjects(subjects, 0.2, seed=0)
    assert split_subjects(subjects[::-1], 0.2, seed=0) == a
    assert split_subjects(subjects, 0.2, seed=1) != a
    assert split_subjects([], 0.2) == ([], [])
    assert split_subjects(["only"], 0.2) == (["only"], [])


def test_write_datalist_is_deterministic_and_records_the_split(brats_tree, tmp_path):
    root = brats_tree("flat", n=10)
    first = write_datalist(root, tmp_path / "a.json", test_fraction=0.3, seed=7).read_bytes()
    second = write_datalist(root, tmp_path / "b.json", test_fraction=0.3, seed=7).read_bytes()
    assert first == second
    content = json.loads(first)
    assert (content["seed"], content["test_fraction"], len(content["testing"])) == (7, 0.3, 3)
    training, testing = split_subjects([f"Brats18_TCIA_{i:03d}_1" for i in range(10)], 0.3, seed=7)
    assert [e["subject"] for e in content["testing"]] == testing
    assert [e["subject"] for e in content["training"]] == training


def test_failed_write_leaves_no_partial_output(brats_tree, tmp_path, monkeypatch):
    root = brats_tree("flat", n=3)
    out = tmp_path / "datalist.json"
    out.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(RobustsegError, match=r"^out: cannot write .*datalist\.json \(No space left on device\)"):
        write_datalist(root, out)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats_flat", "datalist.json"]


def unrecognised_root(kind: str, tmp: Path) -> Path:
    if kind == "file":
        (tmp / "f.txt").write_text("x")
        return tmp / "f.txt"
    if kind == "odd":
        (tmp / "odd" / "sub").mkdir(parents=True)
        (tmp / "odd" / "a.png").write_text("x")
    elif kind == "empty":
        (tmp / kind).mkdir()
    elif kind == "empty_subject":
        (tmp / kind / "BraTS20_Training_001").mkdir(parents=True)
    return tmp / kind


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("nowhere", r"nowhere: no such folder \(expected a BraTS 2017-2021 folder"),
        ("file", r"f\.txt: not a folder"),
        ("empty", r"empty: the folder is empty \(expected"),
        ("odd", r"odd: no BraTS subject folders or MSD imagesTr/ found; empty subfolder\(s\): sub \(expected"),
        ("empty_subject", r"empty_subject: .* found; empty subfolder\(s\): BraTS20_Training_001 \(expected"),
    ],
)
def test_unrecognised_roots(kind, match, tmp_path):
    root = unrecognised_root(kind, tmp_path)
    with pytest.raises(RobustsegError, match=match):
        find_subjects(root)
    with pytest.raises(RobustsegError, match=match):
        write_datalist(root, tmp_path / "datalist.json")
    assert not (tmp_path / "datalist.json").exists()


def test_duplicate_subject_ids(brats_tree, nifti_helpers):
    root = brats_tree("hgg_lgg", n=2)
    nifti_helpers.write_brats_subject(root / "LGG" / "Brats18_TCIA_000_1")
    with pytest.raises(RobustsegError, match=r"LGG/Brats18_TCIA_000_1: subject id Brats18_TCIA_000_1 also found in"):
        find_subjects(root)


def test_ambiguous_modality_files(brats_tree, nifti_helpers):
    root = brats_tree("flat", n=1)
    folder = next(p for p in root.iterdir())
    (folder / f"{folder.name}_t2.nii.gz").rename(folder / "renamed_t2.nii.gz")
    nifti_helpers.write_nifti(folder / "other_t2.nii", nifti_helpers.subject_arrays(0)[1])
    with pytest.raises(RobustsegError, match=r"several t2 files \(.*\), expected exactly one"):
        find_subjects(root)


def test_several_msd_tasks(msd_tree, tmp_path):
    msd_tree(n=1, root=tmp_path / "all" / "Task01_BrainTumour")
    msd_tree(n=1, root=tmp_path / "all" / "Task01_copy")
    with pytest.raises(RobustsegError, match=r"all: several MSD task folders \(Task01_BrainTumour, Task01_copy\)"):
        find_subjects(tmp_path / "all")


def test_msd_without_images(tmp_path):
    (tmp_path / "Task01" / "imagesTr").mkdir(parents=True)
    (tmp_path / "Task01" / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00")
    with pytest.raises(RobustsegError, match=r"imagesTr: no NIfTI images \(expected MSD Task01 files"):
        find_subjects(tmp_path / "Task01")


def test_missing_modality_refused_by_write_datalist(brats_tree, tmp_path):
    root = brats_tree("flat", n=3)
    next(root.rglob("*_t1ce.nii.gz")).unlink()
    with pytest.raises(RobustsegError, match=r"_t1ce\.nii\.gz: file not found \(1 image file\(s\) missing"):
        write_datalist(root, tmp_path / "datalist.json")
    assert not (tmp_path / "datalist.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_fraction": 0}, r"test_fraction must be a finite number in \(0, 1\), got 0"),
        ({"test_fraction": 1.0}, r"test_fraction must be a finite number in \(0, 1\), got 1\.0"),
        ({"test_fraction": "0.2"}, r"test_fraction must be a finite number in \(0, 1\), got '0\.2'"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ],
)
def test_split_argument_errors(kwargs, match, brats_tree, tmp_path):
    with pytest.raises(RobustsegError, match=match):
        write_datalist(brats_tree("flat", n=2), tmp_path / "d.json", **kwargs)


@pytest.mark.parametrize(
    ("out", "match"),
    [
        (lambda tmp: tmp, r"out: .* is a folder, expected the path of a JSON file"),
        (lambda tmp: tmp / "missing" / "d.json", r"out: folder .*missing does not exist, expected an existing folder"),
    ],
)
def test_output_path_errors(out, match, brats_tree, tmp_path):
    root = brats_tree("flat", n=2)
    with pytest.raises(RobustsegError, match=match):
        write_datalist(root, out(tmp_path))
    assert not (tmp_path / "missing").exists()


def test_cli_writes_the_datalist_and_reports_errors_in_one_line(brats_tree, tmp_path, capsys):
    root = brats_tree("flat", n=5)
    main(["data", "datalist", str(root), "--out", str(tmp_path / "d.json"), "--test_fraction", "0.4", "--seed", "2"])
    assert "wrote" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "d.json").read_text())["testing"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "datalist", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nowhere: no such folder" in err
