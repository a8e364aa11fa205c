"""Fixtures of the third-party bundle tests: synthetic subjects and a small zoo-style BraTS bundle trained on them;
CT-like volumes and a generic two-class bundle (softmax, and a one-channel sigmoid variant) trained on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.data.synthetic import write_synthetic_dataset

from .class_bundles import train_class_bundle, write_class_bundle, write_ct_dataset
from .zoo_bundles import train_zoo_brats, write_zoo_brats_bundle


@pytest.fixture(scope="session")
def zoo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic subjects at 24^3 (2 test subjects) and their datalist."""
    root = tmp_path_factory.mktemp("zoo_data")
    return Path(write_synthetic_dataset(root, subjects=8, seed=0, shape=24, workers=1))


@pytest.fixture(scope="session")
def trained_zoo_bundle(tmp_path_factory: pytest.TempPathFactory, zoo_data: Path) -> Path:
    """The zoo-style BraTS bundle, trained for a few steps (read-only: copy it before changing it)."""
    root = write_zoo_brats_bundle(tmp_path_factory.mktemp("zoo_bundles") / "zoo_brats_tiny")
    train_zoo_brats(root, zoo_data, steps=40)
    return root


@pytest.fixture(scope="session")
def trained_zoo_softmax_bundle(tmp_path_factory: pytest.TempPathFactory, zoo_data: Path) -> Path:
    """A softmax variant: 4 outputs in the MSD Task01 label order (background, edema, non-enhancing, enhancing)."""
    root = tmp_path_factory.mktemp("zoo_bundles") / "zoo_brats_softmax"
    write_zoo_brats_bundle(root, "zoo_brats_softmax", activation="softmax")
    train_zoo_brats(root, zoo_data, steps=40, activation="softmax")
    return root


@pytest.fixture(params=["sigmoid", "softmax"])
def any_zoo_bundle(request: pytest.FixtureRequest) -> Path:
    """Each trained zoo-style bundle in turn."""
    name = "trained_zoo_bundle" if request.param == "sigmoid" else "trained_zoo_softmax_bundle"
    return request.getfixturevalue(name)


@pytest.fixture
def zoo_copy(trained_zoo_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the trained bundle that a test may break."""
    return Path(shutil.copytree(trained_zoo_bundle, tmp_path / trained_zoo_bundle.name))


@pytest.fixture(scope="session")
def ct_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 CT-like volumes at 24^3 with one organ each (2 test subjects): the datalist of a generic two-class task."""
    return write_ct_dataset(tmp_path_factory.mktemp("ct_data"))


@pytest.fixture(scope="session")
def trained_class_bundle(tmp_path_factory: pytest.TempPathFactory, ct_data: Path) -> Path:
    """The generic two-class bundle (softmax background/spleen), trained for a few steps (read-only)."""
    root = write_class_bundle(tmp_path_factory.mktemp("class_bundles") / "spleen_tiny")
    train_class_bundle(root, ct_data, steps=60)
    return root


@pytest.fixture(scope="session")
def trained_class_sigmoid_bundle(tmp_path_factory: pytest.TempPathFactory, ct_data: Path) -> Path:
    """Its binary variant: one sigmoid output channel (spleen)."""
    root = write_class_bundle(tmp_path_factory.mktemp("class_bundles") / "spleen_sigmoid", activation="sigmoid")
    train_class_bundle(root, ct_data, steps=60)
    return root


@pytest.fixture(scope="session")
def trained_class_resampled_bundle(tmp_path_factory: pytest.TempPathFactory, ct_data: Path) -> Path:
    """A softmax variant that resamples to 2 mm (Orientationd, Spacingd) and inverts its output (Invertd)."""
    root = write_class_bundle(tmp_path_factory.mktemp("class_bundles") / "spleen_resampled", resample=True)
    train_class_bundle(root, ct_data, steps=120)
    return root


@pytest.fixture(params=["softmax", "sigmoid", "resampled"])
def any_class_bundle(request: pytest.FixtureRequest) -> Path:
    """Each trained generic bundle in turn."""
    return request.getfixturevalue(f"trained_class_{request.param}_bundle".replace("_softmax", ""))
