"""``examples/model_zoo``: the zoo-form datalist script, the training overlay and the CT phantoms the README uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "model_zoo"


def test_zoo_datalist_orders_channels_and_splits(zoo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "zoo.json"
    result = subprocess.run([sys.executable, str(EXAMPLES / "zoo_datalist.py"), str(zoo_data), str(out),
                             "--validation", "2"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    zoo = json.loads(out.read_text())
    source = json.loads(zoo_data.read_text())
    assert len(zoo["validation"]) == 2 and len(zoo["training"]) == len(source["training"]) - 2
    assert len(zoo["testing"]) == len(source["testing"])
    for entry in zoo["training"] + zoo["validation"] + zoo["testing"]:
        names = [Path(p).name for p in entry["image"]]
        assert [n.split("_")[-1] for n in names] == ["t1ce.nii.gz", "t1.nii.gz", "t2.nii.gz", "flair.nii.gz"]
        assert all(Path(p).is_file() for p in [*entry["image"], entry["label"]])


@pytest.mark.parametrize("args", [["--order", "t1,t1,t2,flair"], ["--validation", "0"]])
def test_zoo_datalist_refuses_bad_arguments(zoo_data: Path, tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "zoo_datalist.py"), str(zoo_data), str(tmp_path / "o"),
                             *args], capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_training_overlay_is_valid_json() -> None:
    overlay = json.loads((EXAMPLES / "train_float_labels.json").read_text())
    transforms = overlay["train#preprocessing_transforms#1"]["transforms"]
    assert [t["_target_"] for t in transforms] == ["ConvertToMultiChannelBasedOnBratsClassesd", "CastToTyped"]


def test_ct_phantoms_write_an_msd_layout_and_a_testing_datalist(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    out = tmp_path / "ct"
    result = subprocess.run([sys.executable, str(EXAMPLES / "ct_phantoms.py"), str(out), "--train", "2", "--test", "1",
                             "--shape", "32,32,16"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["spleen_000.nii.gz", "spleen_001.nii.gz"]
    testing = json.loads((out / "datalist.json").read_text())["testing"]
    assert [Path(e["image"]).parent.name for e in testing] == ["imagesTs"]
    image, label = (nib.load(testing[0][k]) for k in ("image", "label"))
    assert image.shape == label.shape == (32, 32, 16) and np.allclose(image.header.get_zooms(), (0.9, 0.9, 3.0))
    values = np.asarray(label.dataobj)
    spleen = np.asarray(image.dataobj)[values == 1]
    assert set(np.unique(values)) == {0, 1} and 80 < spleen.mean() < 140  # in the spleen bundle's HU window


@pytest.mark.parametrize("args", [["--shape", "32,32"], ["--shape", "8,32,32"], ["--test", "0"]])
def test_ct_phantoms_refuse_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "ct_phantoms.py"), str(tmp_path / "o"), *args],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
