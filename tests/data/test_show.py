"""Tests of the subject figure (common/data/show.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from common.__main__ import main
from common.data.labels import MODALITIES
from common.data.show import find_subject_files, show_subject
from common.data.synthetic import synthesize_subject
from common.errors import RobustsegError

SHAPE = 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(folder: Path, name: str, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), folder / name)


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic subject in BraTS naming: BraTS_001/BraTS_001_{t1,t1ce,t2,flair,seg}.nii.gz."""
    folder = tmp_path_factory.mktemp("show") / "BraTS_001"
    folder.mkdir()
    subject = synthesize_subject(0, seed=0, shape=SHAPE)
    for key, data in {**subject.images, "seg": subject.label}.items():
        _save(folder, f"BraTS_001_{key}.nii.gz", data, subject.affine)
    return folder


@pytest.fixture
def copied_dir(subject_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(subject_dir, tmp_path / subject_dir.name))


def _pixels(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(path)


def test_show_writes_a_png_panel(subject_dir: Path, tmp_path: Path) -> None:
    out = show_subject(subject_dir, tmp_path / "figures" / "subject.png")
    assert out == tmp_path / "figures" / "subject.png"
    pixels = _pixels(out)
    assert pixels.shape[0] > 300 and pixels.shape[1] > pixels.shape[0]  # 3 rows, 5 columns
    assert pixels[..., :3].std() > 0.1  # not a blank canvas
    # the overlay column shows the label colours (red 1, green 2, yellow 4), blended at 50 %
    red, green, blue = (pixels[..., c] for c in range(3))
    assert ((red > 0.6) & (green < 0.4) & (blue < 0.4)).any()
    assert ((green > 0.5) & (red < 0.4) & (blue < 0.4)).any()
    assert ((red > 0.6) & (green > 0.6) & (blue < 0.4)).any()
    assert not list(out.parent.glob(".*tmp*"))


def test_without_labels_the_overlay_column_is_left_out(copied_dir: Path, subject_dir: Path, tmp_path: Path) -> None:
    (copied_dir / "BraTS_001_seg.nii.gz").unlink()
    with_labels = _pixels(show_subject(subject_dir, tmp_path / "with.png"))
    without = _pixels(show_subject(copied_dir, tmp_path / "without.png"))
    assert without.shape[0] == with_labels.shape[0]
    assert without.shape[1] == pytest.approx(with_labels.shape[1] * 4 / 5, rel=0.02)


def test_orientation_of_the_file_does_not_change_the_figure(subject_dir: Path, tmp_path: Path) -> None:
    # real BraTS files store the grid flipped in x and y (LPS-like affine): the figure reorients to RAS first
    flipped = tmp_path / "flipped" / subject_dir.name
    flipped.mkdir(parents=True)
    for path in subject_dir.iterdir():
        image = nib.load(path)
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = np.array(image.shape[:2]) - 1
        _save(flipped, path.name, np.asarray(image.dataobj)[::-1, ::-1], image.affine @ flip)
    original = _pixels(show_subject(subject_dir, tmp_path / "original.png"))
    reoriented = _pixels(show_subject(flipped, tmp_path / "flipped.png"))
    np.testing.assert_array_equal(original, reoriented)


def test_brats_2023_names_are_found(copied_dir: Path) -> None:
    for old, new in {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}.items():
        (copied_dir / f"BraTS_001_{old}.nii.gz").rename(copied_dir / f"BraTS-GLI-00001-000-{new}.nii.gz")
    files = find_subject_files(copied_dir)
    assert list(files) == [*MODALITIES, "seg"]
    assert files["t1ce"].name == "BraTS-GLI-00001-000-t1c.nii.gz"


def test_cli_show(subject_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "show", str(subject_dir), "--out", str(tmp_path / "cli.png")])
    assert "cli.png" in capsys.readouterr().out
    _pixels(tmp_path / "cli.png")


# ------------------------------------------------------------------------------------------------ errors


def _break(folder: Path, how: str) -> None:
    t2 = folder / "BraTS_001_t2.nii.gz"
    affine = nib.load(t2).affine
    if how == "missing modality":
        t2.unlink()
    elif how == "two t2 files":
        shutil.copy(t2, folder / "BraTS_001_copy_t2.nii.gz")
    elif how == "corrupt":
        t2.write_bytes(t2.read_bytes()[:200])
    elif how == "4-D":
        _save(folder, t2.name, np.ones((SHAPE, SHAPE, SHAPE, 2), np.float32), affine)
    elif how == "NaN":
        data = np.ones((SHAPE,) * 3, np.float32)
        data[3, 3, 3] = np.nan
        _save(folder, t2.name, data, affine)
    elif how == "shape":
        _save(folder, t2.name, np.ones((SHAPE, SHAPE, SHAPE - 1), np.float32), affine)


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing modality", "has no t2 image"),
        ("two t2 files", "has several t2 files"),
        ("corrupt", "cannot read the NIfTI file"),
        ("4-D", "expected a 3-D volume"),
        ("NaN", "NaN or Inf"),
        ("shape", "differs from the T1's"),
    ],
)
def test_bad_subject_raises_one_line(copied_dir: Path, tmp_path: Path, how: str, message: str) -> None:
    _break(copied_dir, how)
    out = tmp_path / "out.png"
    with pytest.raises(RobustsegError, match=message) as info:
        show_subject(copied_dir, out)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(RobustsegError, match="is not a folder"):
        show_subject(tmp_path / "nowhere", tmp_path / "out.png")


def test_out_must_be_a_png(subject_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RobustsegError, match=r"must end in \.png"):
        show_subject(subject_dir, tmp_path / "out.jpg")
