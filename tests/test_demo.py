"""``robustseg demo`` / ``robustseg reproduce``: the plans, the dry run, errors, and a tiny reproduction (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.demo import DEMO_MODELS, plan_demo, plan_reproduce, run_reproduce
from common.errors import RobustsegError


def test_demo_plan_order(tmp_path):
    names = [stage.name for stage in plan_demo(tmp_path / "demo")]
    assert names[0] == "data" and names[-2:] == ["evaluate", "report"]
    trains = [n for n in names if n.startswith("train-")]
    assert trains[0] == f"train-{DEMO_MODELS[0]}", "the baseline (teacher, initial weights) trains first"
    assert set(trains) == {f"train-{m}" for m in DEMO_MODELS}
    assert not (tmp_path / "demo").exists(), "planning writes nothing"


@pytest.fixture(scope="module")
def tiny_brats(tmp_path_factory) -> Path:
    from common.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("brats") / "BraTS"
    write_synthetic_dataset(root, subjects=5, seed=0, shape=32, workers=1)
    for extra in ("datalist.json", "synthetic.json"):  # leave a plain BraTS folder
        (root / extra).unlink()
    return root


def test_reproduce_dry_run_lists_18_models_teachers_first(tiny_brats, tmp_path):
    plan = run_reproduce(str(tiny_brats), str(tmp_path / "out"), device="cpu", dry_run=True)
    lines = plan.splitlines()[1:]
    trains = [line for line in lines if " train brats_unet" in line]
    assert len(trains) == 18
    first_defence = min(i for i, line in enumerate(trains) if "_baseline" not in line)
    assert all("_baseline" in line for line in trains[:first_defence]) and first_defence == 2
    assert "attack all 18 models" in plan and "write the report" in plan
    assert not (tmp_path / "out").exists()


def test_reproduce_paper_settings_train_defences_from_scratch(tiny_brats, tmp_path):
    stages = plan_reproduce(tiny_brats, tmp_path / "out", device="cpu", quick=False)
    assert [s for s in stages if "distill_t5000" in s.name]


def test_reproduce_rejects_missing_data(tmp_path):
    with pytest.raises(RobustsegError, match="not a folder"):
        run_reproduce(str(tmp_path / "nowhere"), str(tmp_path / "out"), dry_run=True)


@pytest.mark.slow
def test_reproduce_quick_on_tiny_data(tiny_brats, tmp_path):
    tiny = {"spatial_size": [32, 32, 32], "base_filters": 4, "epochs": 1, "val_interval": 1, "val_fraction": 0.25,
            "slices_per_batch": 8}
    message = run_reproduce(str(tiny_brats), str(tmp_path / "out"), device="cpu", quick=True, overrides=tiny)
    assert "report" in message
    settings = json.loads((tmp_path / "out" / "results" / "settings.json").read_text())
    assert len(settings["models"]) == 18
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    # one preprocessing cache for the whole run: items shared by bundles that preprocess alike, none per bundle
    assert list((tmp_path / "out" / "cache").glob("*.pt"))
    assert not list((tmp_path / "out" / "bundles").glob("*/cache"))
