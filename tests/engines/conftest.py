"""Fixtures for the robustness-evaluation tests: tiny NIfTI subjects, tiny model bundles with random weights, and one
finished evaluation of them shared by the evaluation and results-file tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.bundles import bundle_specs, render_bundle
from common.engines import RobustnessEvaluation
from common.report import load_results

SHAPE = 24
SUBJECTS = ("tiny_000", "tiny_001", "tiny_002")
OVERRIDES = {
    "spatial_size": [16, 16, 16],
    "base_filters": 2,
    "network_def#levels": 3,
    "network_def#segmentation_levels": 2,
    "n4": False,
}
"""Model-bundle overrides of every test evaluation: a 16^3 grid and a 3-level, base-2 UNet3D (milliseconds)."""
QUICK = ["configs/inference.json", "configs/quick.json"]
SWEEP = [0.02, 0.05, 0.1]
STEPS = 3
ATTACKS = [{"name": "FGSM"}, {"name": "i-FGSM", "steps": STEPS}, {"name": "ti-FGSM", "steps": STEPS}]
BASELINE, DISTILLED = "tiny_baseline", "tiny_distill_t5"


def _write_subject(folder: Path, subject: str, rng: np.random.Generator) -> dict:
    """A 24^3 subject in BraTS file naming: a spherical tumour (core 1, rim 4, oedema 2) in noisy contrasts."""
    grid = np.stack(np.meshgrid(*[np.arange(SHAPE)] * 3, indexing="ij")).astype(np.float32)
    centre = SHAPE / 2 + rng.uniform(-3, 3, size=(3, 1, 1, 1))
    radius = np.sqrt(((grid - centre) ** 2).sum(0))
    label = np.zeros((SHAPE,) * 3, np.uint8)
    label[radius < 7] = 2
    label[radius < 5] = 4
    label[radius < 3] = 1
    means = {0: (0.4, 0.4, 0.3, 0.3), 1: (0.25, 0.2, 0.7, 0.55), 2: (0.35, 0.35, 0.8, 0.9), 4: (0.35, 0.9, 0.6, 0.6)}
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    (folder / subject).mkdir(parents=True)
    images = []
    for channel, modality in enumerate(("t1", "t1ce", "t2", "flair")):
        volume = np.zeros(label.shape, np.float32)
        for value, mean in means.items():
            volume[label == value] = mean[channel]
        volume = 900 * (volume + 0.05 * rng.standard_normal(label.shape).astype(np.float32)).clip(0, None)
        path = folder / subject / f"{subject}_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), str(path))
        images.append(f"{subject}/{path.name}")
    nib.save(nib.Nifti1Image(label, affine), str(folder / subject / f"{subject}_seg.nii.gz"))
    return {"image": images, "label": f"{subject}/{subject}_seg.nii.gz", "subject": subject}


@pytest.fixture(scope="session")
def tiny_datalist(tmp_path_factory) -> str:
    """Three 24^3 subjects, all in ``testing`` (and ``training``, which the evaluation never reads)."""
    folder = tmp_path_factory.mktemp("tiny_subjects")
    rng = np.random.default_rng(0)
    entries = [_write_subject(folder, subject, rng) for subject in SUBJECTS]
    path = folder / "datalist.json"
    path.write_text(json.dumps({"training": entries, "testing": entries}))
    return str(path)


def _spec(family: str):
    return next(s for s in bundle_specs() if s.net == "3d" and s.family == family)


def make_bundle(
    root: Path, name: str, family: str = "baseline", temperature: float | None = None, seed: int = 0,
    weights: bool = True, overrides: dict | None = None,
) -> Path:
    """A model bundle rendered from the 3D template of ``family``, renamed ``name``, with random weights.

    The network is built from the quick ``network_def`` with :data:`OVERRIDES` (and ``overrides``) and its random
    initialisation (seeded) is saved to ``models/model.pt``; nothing is trained.
    """
    folder = root / name
    for rel, content in render_bundle(_spec(family)).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    meta_path = folder / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["name"] = name
    if temperature is not None:
        meta["robustseg"].update(defense="distillation", defense_param=f"T={temperature:g}", temperature=temperature)
    meta_path.write_text(json.dumps(meta))
    if weights:
        parser = ConfigParser()
        parser.read_config([str(folder / f) for f in QUICK])
        for key, value in {**OVERRIDES, **(overrides or {})}.items():
            parser[key] = value
        torch.manual_seed(seed)
        network = parser.get_parsed_content("network_def")
        (folder / "models").mkdir()
        torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Two tiny model bundles: ``tiny_baseline`` (no defence) and ``tiny_distill_t5`` (distillation, T = 5)."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        "tiny_baseline": make_bundle(root, "tiny_baseline", seed=0),
        "tiny_distill_t5": make_bundle(root, "tiny_distill_t5", family="distill", temperature=5.0, seed=1),
    }


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory) -> Callable[..., Path]:
    """``bundle_factory(name, **make_bundle kwargs)``: another tiny bundle in a fresh folder."""

    def make(name: str, **kwargs) -> Path:
        return make_bundle(tmp_path_factory.mktemp("more_bundles"), name, **kwargs)

    return make


def evaluation(bundles, datalist, output_dir, models=(BASELINE, DISTILLED), **kwargs) -> RobustnessEvaluation:
    """The tests' evaluation: tiny bundles, the quick overlay, a 3-epsilon sweep, 3-step iterative attacks."""
    settings = {
        "model_config_files": QUICK, "model_overrides": OVERRIDES, "datalist": datalist, "sweep_epsilons": SWEEP,
        "attacks": ATTACKS, "device": "cpu", "score_batch_size": 1, "progress": False, **kwargs,
    }  # fmt: skip
    return RobustnessEvaluation([str(bundles[m]) if m in bundles else m for m in models], output_dir, **settings)


@pytest.fixture(scope="session")
def finished(bundles, tiny_datalist, tmp_path_factory):
    """One complete evaluation of the two tiny bundles on the three tiny subjects: (output_dir, rows). Read-only."""
    out = tmp_path_factory.mktemp("evaluation") / "out"
    evaluation(bundles, tiny_datalist, out).run()
    return out, load_results(out / "results.csv")
