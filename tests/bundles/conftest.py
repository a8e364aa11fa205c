"""Shared fixtures for bundle tests: a tiny synthetic data set and tiny-run overrides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from monai.bundle import run

from common.bundles import bundle_specs
from common.data import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
MODEL_BUNDLES = [spec.name for spec in bundle_specs() if spec.net is not None]
BASELINES = [name for name in MODEL_BUNDLES if name.endswith("_baseline")]


@pytest.fixture(scope="session")
def tiny_datalist(tmp_path_factory) -> str:
    """Five 24^3 synthetic subjects (4 training incl. validation hold-out, 1 testing)."""
    out = tmp_path_factory.mktemp("tiny_data") / "synthetic"
    return str(write_synthetic_dataset(out, subjects=5, seed=0, shape=24, workers=1))


def tiny_overrides(datalist: str, root: Path) -> dict:
    """Overrides that make any model bundle run in seconds: 32^3 grid, base 4, one epoch, no N4, no cache reuse."""
    return {
        "bundle_root": str(root),
        "datalist": datalist,
        "spatial_size": [32, 32, 32],
        "base_filters": 4,
        "epochs": 1,
        "val_interval": 1,
        "n4": False,
        "amp": True,
        "slices_per_batch": 8,
        "val_fraction": 0.25,
    }


def copy_bundle(name: str, dst: Path) -> Path:
    """Copy a committed bundle's template-owned files (not its models) to ``dst/name``."""
    target = dst / name
    shutil.copytree(BUNDLES / name, target, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    return target


def run_bundle(run_id: str, root: Path, config: str, overrides: dict) -> None:
    """Run one id of a bundle in this process, as ``python -m monai.bundle run`` would."""
    configs = root / "configs"
    run(run_id, config_file=str(configs / config), meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"), **overrides)


@pytest.fixture(scope="session")
def tiny_baselines(tiny_datalist, tmp_path_factory) -> dict[str, Path]:
    """The two baselines trained for one epoch on tiny data: teachers and initial weights of the defences."""
    out = {}
    for name in BASELINES:
        root = copy_bundle(name, tmp_path_factory.mktemp("baseline"))
        run_bundle("training", root, "train.json", tiny_overrides(tiny_datalist, root))
        out[name] = root
    return out
