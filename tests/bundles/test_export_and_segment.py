"""Model Zoo export (zip with a copy of common/, runs from its own folder) and ``robustseg segment``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.__main__ import main
from common.bundles import export_bundle
from common.engines.segment import resolve_inputs, segment
from common.errors import RobustsegError

from .conftest import tiny_overrides


def test_export_zip_layout(tiny_baselines, tmp_path):
    root = tiny_baselines["brats_unet3d_baseline"]
    out = export_bundle(root.name, tmp_path / "b.zip", root=root.parent)
    names = zipfile.ZipFile(out).namelist()
    for required in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "LICENSE",
                     "docs/README.md", "common/__init__.py", "common/networks/residual_unet.py"):
        assert f"{root.name}/{required}" in names
    assert not [n for n in names if "__pycache__" in n or "checkpoint_epoch" in n]


def test_export_without_weights_is_one_line(tmp_path):
    bundle = tmp_path / "b" / "configs"
    bundle.mkdir(parents=True)
    (bundle / "metadata.json").write_text("{}")
    with pytest.raises(RobustsegError, match="train the bundle"):
        export_bundle("b", tmp_path / "b.zip", root=tmp_path)
    assert not (tmp_path / "b.zip").exists()


@pytest.mark.slow
def test_exported_bundle_infers_from_its_own_folder(tiny_baselines, tiny_datalist, tmp_path):
    root = tiny_baselines["brats_unet3d_baseline"]
    with zipfile.ZipFile(export_bundle(root.name, tmp_path / "b.zip", root=root.parent)) as zf:
        zf.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / root.name
    overrides = {k: v for k, v in tiny_overrides(tiny_datalist, bundle).items() if k != "bundle_root"}
    args = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json"]
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([sys.executable, "-c", "import common; print(common.__file__)"], cwd=bundle, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(bundle.resolve()), "the bundle's own copy of common/ must be used"
    done = subprocess.run(args, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((bundle / "eval" / "segmentations").glob("*_seg.nii.gz"))) == 1


def _oblique_subject(tiny_datalist: str, folder: Path) -> list[Path]:
    """A test subject rewritten at another shape, spacing and an oblique affine."""
    entry = json.loads(Path(tiny_datalist).read_text())["testing"][0]
    base = Path(tiny_datalist).parent
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 1.2, 1.5])
    affine[:3, 3] = [-20.0, 15.0, 7.0]
    folder.mkdir()
    files = []
    for modality, rel in zip(("t1", "t1ce", "t2", "flair"), entry["image"]):
        data = np.asarray(nib.load(str(base / rel)).dataobj)[:, 2:-1, :]  # 24 x 21 x 24: non-cubic
        path = folder / f"obl_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        files.append(path)
    return files


def test_segment_oblique_grid(tiny_baselines, tiny_datalist, tmp_path):
    root = tiny_baselines["brats_unet3d_baseline"]
    files = _oblique_subject(tiny_datalist, tmp_path / "subject")
    out = segment(str(root), str(tmp_path / "subject"), str(tmp_path / "seg.nii.gz"),
                  config_files=["configs/inference.json"])
    seg, ref = nib.load(str(out)), nib.load(str(files[0]))
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_resolve_inputs(tmp_path):
    files = []
    for m in ("t1", "t1ce", "t2", "flair"):
        path = tmp_path / f"s_{m}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
        files.append(str(path))
    assert resolve_inputs(",".join(files)) == [str(Path(f).resolve()) for f in files]
    assert resolve_inputs(str(tmp_path)) == [str(Path(f).resolve()) for f in files]
    with pytest.raises(RobustsegError, match="3 image"):
        resolve_inputs(files[:3])
    with pytest.raises(RobustsegError, match="not found"):
        resolve_inputs([*files[:3], str(tmp_path / "missing.nii.gz")])
    nowhere = tmp_path / "no such dir"
    with pytest.raises(RobustsegError, match=rf"input: {re.escape(str(nowhere))} does not exist, expected a subject"):
        resolve_inputs(str(nowhere))
    with pytest.raises(RobustsegError, match=rf"input: {re.escape(files[0])} is a single file, expected a subject"):
        resolve_inputs(files[0])


@pytest.mark.parametrize("problem", ["missing_modality", "corrupt_checkpoint", "wrong_checkpoint", "three_channel"])
def test_segment_errors_are_one_line_and_write_nothing(problem, tiny_baselines, tiny_datalist, tmp_path, capsys):
    root = tiny_baselines["brats_unet3d_baseline"]
    files = _oblique_subject(tiny_datalist, tmp_path / "subject")
    bundle = root
    if problem == "missing_modality":
        files[2].unlink()
    elif problem in ("corrupt_checkpoint", "wrong_checkpoint"):
        bundle = tmp_path / root.name
        import shutil

        shutil.copytree(root, bundle, ignore=shutil.ignore_patterns("cache", "eval", "logs"))
        weights = bundle / "models" / "model.pt"
        if problem == "corrupt_checkpoint":
            weights.write_bytes(weights.read_bytes()[:1000])
        else:
            torch.save({"model": {"foo": torch.zeros(1)}}, weights)
    elif problem == "three_channel":
        four_d = np.stack([np.asarray(nib.load(str(f)).dataobj) for f in files[:3]], axis=-1)
        path = tmp_path / "three.nii.gz"
        nib.save(nib.Nifti1Image(four_d, nib.load(str(files[0])).affine), str(path))
        files = [path]
    args = ["segment", "--bundle", str(bundle), "--input",
            ",".join(map(str, files)) if problem != "missing_modality" else str(tmp_path / "subject"),
            "--output", str(tmp_path / "seg.nii.gz")]
    if problem == "three_channel":  # once through the real console entry point
        done = subprocess.run([sys.executable, "-m", "common", *args], capture_output=True, text=True, timeout=300)
        code, err = done.returncode, done.stderr
    else:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        code, err = exit_info.value.code, capsys.readouterr().err
    assert code not in (0, None)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "seg.nii.gz").exists()
    assert not list(tmp_path.glob(".robustseg-*")), "no temporary files left behind"
