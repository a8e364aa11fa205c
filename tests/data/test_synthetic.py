"""Tests of the embedded synthetic BraTS-like data set (common/data/synthetic.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from scipy import ndimage

from common.__main__ import main
from common.data import synthetic
from common.data.labels import MODALITIES
from common.data.synthetic import (
    SYNTHETIC_MANIFEST,
    ensure_synthetic_dataset,
    synthesize_subject,
    synthetic_subject_id,
    write_synthetic_dataset,
)
from common.errors import RobustsegError

SHAPE = 32
SUBJECTS = 3


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-subject 32^3 data set (seed 0); tests that modify it work on a copy."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    write_synthetic_dataset(root, subjects=SUBJECTS, seed=0, shape=SHAPE, workers=1)
    return root


@pytest.fixture(scope="module")
def subjects() -> list[synthetic.SyntheticSubject]:
    return [synthesize_subject(i, seed=0, shape=SHAPE) for i in range(SUBJECTS)]


@pytest.fixture
def copied_root(synthetic_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def _arrays(root: Path, index: int) -> dict[str, np.ndarray]:
    sid = synthetic_subject_id(index)
    return {k: np.asarray(nib.load(root / sid / f"{sid}_{k}.nii.gz").dataobj) for k in (*MODALITIES, "seg")}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob("synth_*/*.nii.gz"))}


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_arrays(subjects: list[synthetic.SyntheticSubject]) -> None:
    again = synthesize_subject(1, seed=0, shape=SHAPE)
    for m in MODALITIES:
        np.testing.assert_array_equal(again.images[m], subjects[1].images[m])
    np.testing.assert_array_equal(again.label, subjects[1].label)


@pytest.mark.parametrize("index, seed", [(0, 1), (1, 0)])
def test_other_seed_or_index_gives_another_subject(
    subjects: list[synthetic.SyntheticSubject], index: int, seed: int
) -> None:
    other = synthesize_subject(index, seed=seed, shape=SHAPE)
    assert not np.array_equal(other.label, subjects[0].label)
    assert not np.array_equal(other.images["t1"], subjects[0].images["t1"])


def test_files_match_the_in_memory_subject(synthetic_root: Path, subjects: list[synthetic.SyntheticSubject]) -> None:
    arrays = _arrays(synthetic_root, 2)
    for m in MODALITIES:
        np.testing.assert_array_equal(arrays[m], subjects[2].images[m])
    np.testing.assert_array_equal(arrays["seg"], subjects[2].label)


def test_voxels_do_not_depend_on_the_torch_thread_count(subjects: list[synthetic.SyntheticSubject]) -> None:
    # worker processes run torch with one thread, the parent with several: the voxels must be the same
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = synthesize_subject(0, seed=0, shape=SHAPE)
    finally:
        torch.set_num_threads(threads)
    for m in MODALITIES:
        np.testing.assert_array_equal(single.images[m], subjects[0].images[m])


@pytest.mark.slow  # starts two spawned worker processes (~10-20 s on two busy cores)
def test_process_pool_writes_the_same_voxels(tmp_path: Path, subjects: list[synthetic.SyntheticSubject]) -> None:
    write_synthetic_dataset(tmp_path / "pool", subjects=2, seed=0, shape=SHAPE, workers=2)
    for index in range(2):
        arrays = _arrays(tmp_path / "pool", index)
        for m in MODALITIES:
            np.testing.assert_array_equal(arrays[m], subjects[index].images[m])
        np.testing.assert_array_equal(arrays["seg"], subjects[index].label)


# ------------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("index", range(SUBJECTS))
def test_labels_are_brats_values_with_every_compartment(subjects: list[synthetic.SyntheticSubject], index: int) -> None:
    label = subjects[index].label
    assert label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {0, 1, 2, 4}


@pytest.mark.parametrize("index", range(SUBJECTS))
def test_compartments_are_nested(subjects: list[synthetic.SyntheticSubject], index: int) -> None:
    label = subjects[index].label
    necrotic, core = label == 1, np.isin(label, (1, 4))
    # the enhancing rim encloses the necrotic core: every face neighbour of label 1 is 1 or 4
    assert np.isin(label[ndimage.binary_dilation(necrotic)], (1, 4)).all()
    # oedema surrounds the core: the one-voxel shell around the core, inside the brain, is mostly oedema
    brain = subjects[index].images["t1"] > 0
    shell = ndimage.binary_dilation(core) & ~core & brain
    assert (label[shell] == 2).mean() > 0.9
    # one lesion: the whole tumour is a single connected component
    assert ndimage.label(label > 0)[1] == 1


def test_tumour_lies_inside_the_skull_stripped_brain(subjects: list[synthetic.SyntheticSubject]) -> None:
    for subject in subjects:
        brain = subject.images["t1"] > 0
        assert brain[subject.label > 0].all()
        for m in MODALITIES:
            assert (subject.images[m][~brain] == 0).all()  # BraTS background is exactly 0
            assert (subject.images[m][brain] > 0).mean() > 0.99


def test_tumour_sizes_vary_and_are_brats_like() -> None:
    fractions = []
    for index in range(6):
        subject = synthesize_subject(index, seed=3, shape=SHAPE)
        fractions.append((subject.label > 0).sum() / (subject.images["t1"] > 0).sum())
    assert all(0.01 < f < 0.3 for f in fractions)
    assert max(fractions) > 1.5 * min(fractions)


# ------------------------------------------------------------------------------------------------ contrasts


def _region(subject: synthetic.SyntheticSubject, name: str) -> np.ndarray:
    healthy = subject.label == 0
    tissue = {"csf": 0, "gm": 1, "wm": 2}
    if name in tissue:
        return healthy & (subject.tissue[tissue[name]] > 0.5)
    return subject.label == {"ncr": 1, "ed": 2, "et": 4}[name]


@pytest.mark.parametrize(
    "modality, brighter, darker",
    [
        ("t1", "wm", "gm"),
        ("t1", "gm", "csf"),
        ("t1ce", "et", "ncr"),
        ("t1ce", "et", "wm"),
        ("t2", "csf", "gm"),
        ("t2", "gm", "wm"),
        ("t2", "ncr", "wm"),
        ("t2", "ed", "wm"),
        ("flair", "ed", "wm"),
        ("flair", "ed", "gm"),
        ("flair", "wm", "csf"),
    ],
)
def test_contrasts_order_tissues_like_mr(
    subjects: list[synthetic.SyntheticSubject], modality: str, brighter: str, darker: str
) -> None:
    for subject in subjects:
        image = subject.images[modality].astype(np.float64)
        bright, dark = _region(subject, brighter), _region(subject, darker)
        assert bright.sum() >= 5 and dark.sum() >= 5
        assert image[bright].mean() > image[dark].mean()


def test_mass_effect_pushes_tissue_away_from_the_tumour() -> None:
    spacing = synthetic.FIELD_OF_VIEW_MM / SHAPE
    centre = np.array([SHAPE / 2 - 2.0, SHAPE / 2 + 1.0, SHAPE / 2])
    tumour = synthetic._Tumour(centre=centre, radius_tc=15.0, radius_wt=25.0, rim_mm=4.0, mass_effect=0.4)
    grid = np.stack(np.meshgrid(*(np.arange(SHAPE),) * 3, indexing="ij")).astype(np.float64)
    distance = np.sqrt(((grid - centre.reshape(3, 1, 1, 1)) ** 2).sum(0)) * spacing
    tissue = np.repeat((distance > 30.0)[None], 4, axis=0).astype(np.float32)  # tissue outside a 30 mm ball
    pushed = synthetic._mass_effect(tissue, tumour, spacing)
    # radial push: the tissue boundary moves outward, so tissue only disappears near the centre
    assert (pushed <= tissue + 1e-5).all()
    assert (tissue - pushed)[:, distance < 30.0 + 2 * spacing].sum() > 0.5 * (tissue - pushed).sum() > 0
    np.testing.assert_array_equal(pushed[:, distance > 120.0], tissue[:, distance > 120.0])


# ------------------------------------------------------------------------------------------------ files


def test_files_share_shape_affine_and_have_mr_dtypes(synthetic_root: Path) -> None:
    for index in range(SUBJECTS):
        sid = synthetic_subject_id(index)
        images = {k: nib.load(synthetic_root / sid / f"{sid}_{k}.nii.gz") for k in (*MODALITIES, "seg")}
        reference = images["t1"]
        spacing = synthetic.FIELD_OF_VIEW_MM / SHAPE
        np.testing.assert_allclose(np.diag(reference.affine)[:3], spacing)  # RAS, isotropic
        assert nib.aff2axcodes(reference.affine) == ("R", "A", "S")
        for key, image in images.items():
            assert image.shape == (SHAPE,) * 3
            np.testing.assert_allclose(image.affine, reference.affine)
            assert image.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)


def test_grid_is_centred_on_the_brain(synthetic_root: Path) -> None:
    image = nib.load(synthetic_root / "synth_000" / "synth_000_t1.nii.gz")
    brain = np.argwhere(np.asarray(image.dataobj) > 0)
    centre = (brain.min(0) + brain.max(0)) / 2
    assert np.abs(centre - (SHAPE - 1) / 2).max() < 0.15 * SHAPE
    # MNI world coordinates: the brain's centre lies near the anterior commissure, well within 40 mm
    world = image.affine[:3, :3] @ centre + image.affine[:3, 3]
    assert np.linalg.norm(world) < 40


def test_datalist_loads_with_monai_and_splits_the_subjects(synthetic_root: Path) -> None:
    path = synthetic_root / "datalist.json"
    training = load_decathlon_datalist(path, data_list_key="training")
    testing = load_decathlon_datalist(path, data_list_key="testing")
    assert (len(training), len(testing)) == (2, 1)  # round(3 * 0.2) = 1, the paper's 80/20 split
    # MONAI resolves "subject" too, since a folder of that name exists beside the datalist
    ids = sorted(Path(e["subject"]).name for e in training + testing)
    assert ids == [synthetic_subject_id(i) for i in range(SUBJECTS)]
    for entry in training + testing:
        sid = Path(entry["subject"]).name
        assert [Path(p).name for p in entry["image"]] == [f"{sid}_{m}.nii.gz" for m in MODALITIES]
        assert Path(entry["label"]).name == f"{sid}_seg.nii.gz"
        assert all(Path(p).is_file() for p in [*entry["image"], entry["label"]])
    raw = json.loads(path.read_text())
    assert not any(Path(p).is_absolute() for e in raw["training"] for p in e["image"])


def test_split_sizes_follow_test_fraction(tmp_path: Path, synthetic_root: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    path = ensure_synthetic_dataset(root, subjects=SUBJECTS, seed=0, shape=SHAPE, test_fraction=0.6)
    raw = json.loads(path.read_text())
    assert (len(raw["training"]), len(raw["testing"])) == (1, 2)


# ------------------------------------------------------------------------------------------------ ensure


def test_ensure_reuses_a_complete_dataset(copied_root: Path) -> None:
    before = _mtimes(copied_root)
    datalist_before = (copied_root / "datalist.json").read_text()
    path = ensure_synthetic_dataset(copied_root, subjects=SUBJECTS, seed=0, shape=SHAPE, workers=1)
    assert path == copied_root / "datalist.json"
    assert _mtimes(copied_root) == before
    assert path.read_text() == datalist_before


def test_ensure_repairs_an_interrupted_run(copied_root: Path, synthetic_root: Path) -> None:
    folder = copied_root / "synth_001"
    (folder / "synth_001_t2.nii.gz").unlink()  # the run died before this file was renamed into place
    (folder / ".synth_001_t2.1234.tmp.nii.gz").write_bytes(b"half a file")
    (copied_root / "datalist.json").unlink()
    untouched = _mtimes(copied_root)["synth_000/synth_000_t1.nii.gz"]
    ensure_synthetic_dataset(copied_root, subjects=SUBJECTS, seed=0, shape=SHAPE, workers=1)
    assert not list(folder.glob(".*tmp*"))
    repaired, original = _arrays(copied_root, 1), _arrays(synthetic_root, 1)
    for key in original:
        np.testing.assert_array_equal(repaired[key], original[key])
    assert _mtimes(copied_root)["synth_000/synth_000_t1.nii.gz"] == untouched
    assert len(load_decathlon_datalist(copied_root / "datalist.json", data_list_key="testing")) == 1


def test_ensure_adds_and_removes_subjects_without_changing_the_others(copied_root: Path) -> None:
    before = _mtimes(copied_root)
    ensure_synthetic_dataset(copied_root, subjects=2, seed=0, shape=SHAPE, workers=1)
    assert not (copied_root / "synth_002").exists()
    assert {k: v for k, v in before.items() if not k.startswith("synth_002")} == _mtimes(copied_root)
    datalist = json.loads((copied_root / "datalist.json").read_text())
    assert len(datalist["training"]) + len(datalist["testing"]) == 2
    manifest = json.loads((copied_root / SYNTHETIC_MANIFEST).read_text())
    assert manifest["subjects"] == 2


def test_ensure_regenerates_when_the_seed_changes(copied_root: Path, synthetic_root: Path) -> None:
    ensure_synthetic_dataset(copied_root, subjects=SUBJECTS, seed=5, shape=SHAPE, workers=1)
    assert not np.array_equal(_arrays(copied_root, 0)["seg"], _arrays(synthetic_root, 0)["seg"])
    np.testing.assert_array_equal(_arrays(copied_root, 0)["seg"], synthesize_subject(0, seed=5, shape=SHAPE).label)


def test_write_overwrites_every_subject(copied_root: Path) -> None:
    before = _mtimes(copied_root)
    write_synthetic_dataset(copied_root, subjects=SUBJECTS, seed=0, shape=SHAPE, workers=1)
    after = _mtimes(copied_root)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)


def test_cli_synth_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "synth", "--out", str(tmp_path / "cli"), "--subjects", "2", "--seed", "0", "--shape", str(SHAPE)])
    assert "datalist.json" in capsys.readouterr().out
    assert len(list((tmp_path / "cli").glob("synth_*/*_seg.nii.gz"))) == 2


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"subjects": 0}, "subjects must be an integer in \\[1, 100000\\]"),
        ({"subjects": 2.5}, "subjects must be an integer in \\[1, 100000\\]"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"shape": 15}, "shape must be an integer in \\[16, 256\\]"),
        ({"test_fraction": 0.0}, "test_fraction must be a finite number in (0, 1)"),
        ({"test_fraction": 1.0}, "test_fraction must be a finite number in (0, 1)"),
        ({"subjects": 1}, "leaves the testing list empty"),
        ({"subjects": 1, "test_fraction": 0.9}, "leaves the training list empty"),
        ({"workers": 0}, "workers must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path: Path, kwargs: dict, message: str) -> None:
    settings = {"subjects": 2, "seed": 0, "shape": 16, **kwargs}
    with pytest.raises(RobustsegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_synthetic_dataset(tmp_path / "out", **settings)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_raises(tmp_path: Path) -> None:
    out = tmp_path / "file.txt"
    out.write_text("not a folder")
    with pytest.raises(RobustsegError, match="is an existing file"):
        ensure_synthetic_dataset(out, subjects=2, shape=16)


def test_non_empty_foreign_folder_is_never_written_into(tmp_path: Path) -> None:
    (tmp_path / "BraTS_001").mkdir()
    with pytest.raises(RobustsegError, match=f"without {SYNTHETIC_MANIFEST}"):
        write_synthetic_dataset(tmp_path, subjects=2, shape=16)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["BraTS_001"]


def test_unreadable_manifest_raises(copied_root: Path) -> None:
    (copied_root / SYNTHETIC_MANIFEST).write_text("{not json")
    with pytest.raises(RobustsegError, match="is unreadable"):
        ensure_synthetic_dataset(copied_root, subjects=SUBJECTS, shape=SHAPE)


def test_negative_index_raises() -> None:
    with pytest.raises(RobustsegError, match="index must be an integer >= 0"):
        synthesize_subject(-1, shape=SHAPE)


def test_missing_nilearn_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RobustsegError, match="nilearn package is not installed"):
        synthetic._template_path("t1")


def test_missing_template_file_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "_TEMPLATE_FILE", "no_such_template_{}.nii.gz")
    with pytest.raises(RobustsegError, match="is missing"):
        synthetic._template_path("t1")
