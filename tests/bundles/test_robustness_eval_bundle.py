"""The brats_robustness_eval bundle: metadata, configs, and `monai.bundle run evaluating` from the repository root and
from the bundle folder on tiny model bundles (random weights, nothing trained)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from pydoc import locate

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser, run

from common.engines import build_jobs
from common.report import load_results

from .conftest import BUNDLES, REPO, copy_bundle

EVAL = BUNDLES / "brats_robustness_eval"
TINY = {
    "spatial_size": [16, 16, 16],
    "base_filters": 2,
    "network_def#levels": 3,
    "network_def#segmentation_levels": 2,
    "n4": False,
    "normalization": "minmax",
    "amp": False,
}
"""What the tiny bundles' "training" recorded beside the weights: the evaluation must apply it by itself."""
PLAN = {"sweep_epsilons": [0.05, 0.1], "attacks": [{"name": "i-FGSM", "steps": 2}]}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> list[str]:
    """A baseline and a distilled (T = 20) 3D bundle with random weights of the tiny network and its record."""
    root = tmp_path_factory.mktemp("eval_models")
    folders = []
    for seed, name in enumerate(("brats_unet3d_baseline", "brats_unet3d_distill_t20")):
        folder = copy_bundle(name, root)
        parser = ConfigParser()
        parser.read_config([str(folder / "configs" / "inference.json"), str(folder / "configs" / "quick.json")])
        parser.update(TINY)
        torch.manual_seed(seed)
        (folder / "models").mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "models" / "model.pt")
        (folder / "models" / "training_settings.json").write_text(json.dumps(TINY))
        folders.append(str(folder))
    return folders


def test_metadata_meets_the_bundle_schema():
    schema = json.loads((REPO / "common" / "schemas" / "bundle_metadata.schema.json").read_text())
    metadata = json.loads((EVAL / "configs" / "metadata.json").read_text())
    jsonschema.validate(metadata, schema)
    assert set(metadata["network_data_format"]["outputs"]) == {"adversarial_image", "pred"}


def test_configs_parse_and_quick_overlay_parses_models_with_theirs():
    parser = ConfigParser()
    parser.read_config([str(EVAL / "configs" / "evaluate.json"), str(EVAL / "configs" / "quick.json")])
    assert {"initialize", "run", "finalize", "evaluating"} <= set(parser.config)
    assert parser.get_parsed_content("model_config_files") == ["configs/inference.json", "configs/quick.json"]
    assert locate(parser["evaluation"]["_target_"]) is not None
    assert parser.get_parsed_content("bundle_root") == str(EVAL)
    assert parser.get_parsed_content("output_dir") == str(EVAL / "results")
    # the defaults are the paper's
    assert parser.get_parsed_content("epsilon") == 0.05 and parser.get_parsed_content("loss") == "soft_dice"
    assert [a["name"] for a in parser.get_parsed_content("attacks")] == ["FGSM", "i-FGSM", "ti-FGSM", "random-sign"]
    assert {0.05, 0.1} <= set(parser.get_parsed_content("sweep_epsilons"))
    for name in parser.get_parsed_content("model_bundles"):
        assert (BUNDLES / name / "configs" / "metadata.json").is_file()


def _check(out: Path, subjects: int = 1) -> None:
    rows = load_results(out / "results.csv")
    # per subject: baseline 1 clean + 2 sweep + 2 iterates; distilled the same + 4 adaptive + 3 transfer; one
    # worst-case row per model at the attacks' epsilon (0.05)
    assert len(rows) == subjects * (5 + 5 + 4 + 3 + 2)
    assert {r["threat"] for r in rows} == {"clean", "white-box", "adaptive", "transfer", "worst-case"}
    assert (out / "settings.json").is_file() and (out / "tables" / "table1_3d_brats_unet3d_baseline.md").is_file()
    assert len(list((out / "examples").glob("*/index.json"))) == 1


def test_evaluating_from_the_repository_root(tiny_models, tiny_datalist, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    configs = Path("bundles") / EVAL.name / "configs"
    run("evaluating", config_file=[str(configs / "evaluate.json"), str(configs / "quick.json")],
        meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
        model_bundles=tiny_models, output_dir=str(tmp_path / "out"), datalist=tiny_datalist, progress=False,
        **PLAN)  # fmt: skip
    _check(tmp_path / "out")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "evaluating", *args]


def test_evaluating_from_the_bundle_folder(tiny_models, tiny_datalist, tmp_path):
    args = _command(
        "--config_file", "['configs/evaluate.json','configs/quick.json']", "--model_bundles", json.dumps(tiny_models),
        "--output_dir", str(tmp_path / "out"), "--datalist", tiny_datalist, "--progress", "false",
        *[x for key, value in PLAN.items() for x in (f"--{key}", json.dumps(value))],
    )  # fmt: skip
    done = subprocess.run(args, cwd=EVAL, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _check(tmp_path / "out")
    assert "Table 1" in done.stdout


def test_an_unknown_attack_is_one_line_and_writes_nothing(tiny_models, tiny_datalist, tmp_path):
    args = _command(
        "--config_file", "configs/evaluate.json", "--model_bundles", json.dumps(tiny_models[:1]),
        "--output_dir", str(tmp_path / "out"), "--datalist", tiny_datalist, "--attacks", "[{'name': 'DeepFool'}]",
    )  # fmt: skip
    done = subprocess.run(args, cwd=EVAL, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: attack name must be one of ['FGSM', 'i-FGSM'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_worst_case_preset_adds_the_ensemble_at_three_epsilons():
    """configs/worst_case.json: the paper's attacks, then APGD (soft Dice, masked CE, JS, SegPGD) and PGD (soft Dice)
    at each worst-case epsilon, and i-FGSM at epsilon 1 stopping per subject at Dice 0 (the unbounded sanity check),
    all accepted by the evaluation's job builder (no two rows share a key)."""
    parser = ConfigParser()
    parser.read_config([str(EVAL / "configs" / f) for f in ("evaluate.json", "quick.json", "worst_case.json")])
    parser["ensemble_steps"] = 3
    attacks = parser.get_parsed_content("attacks")
    epsilons = parser.get_parsed_content("worst_case_epsilons")
    assert epsilons == [0.01, 0.03, 0.05]
    assert [a["name"] for a in attacks[:4]] == ["FGSM", "i-FGSM", "ti-FGSM", "random-sign"]
    # the sanity table's unbounded check
    assert attacks[-1] == {"name": "i-FGSM", "steps": 10, "epsilon": 1.0, "stop": "dice_zero"}
    ensemble = [(a["name"], a["loss"], a["epsilon"], a["steps"]) for a in attacks[4:-1]]
    assert sorted(ensemble) == sorted(
        (name, loss, eps, 3)
        for eps in epsilons
        for name, loss in (
            ("APGD", "soft_dice"), ("APGD", "masked_ce"), ("APGD", "js"), ("APGD", "segpgd"), ("PGD", "soft_dice")
        )
    )
    # random-start PGD with restarts for every model; APGD restarts at its checkpoints instead
    assert {a["restarts"] for a in attacks[4:-1] if a["name"] == "PGD"} == {2}
    assert {a["restarts"] for a in attacks[4:-1] if a["name"] == "APGD"} == {1}
    # APGD with soft Dice starts at twice the radius and shrinks to it (SEA's schedule); the others at the radius
    assert {a.get("radius_schedule") for a in attacks[4:-1] if a["loss"] == "soft_dice"} == {2, None}
    assert {a.get("radius_schedule") for a in attacks[4:-1] if a["loss"] != "soft_dice"} == {None}
    jobs = build_jobs(attacks, parser.get_parsed_content("sweep"), parser.get_parsed_content("sweep_epsilons"),
                      0.05, "soft_dice")  # fmt: skip
    assert len([j for j in jobs if not j.sweep]) == 2 + 1 + 15 + 1


@pytest.mark.parametrize("dice_steps", [None, 7])
def test_apgd_dice_steps_follow_ensemble_steps_unless_set(dice_steps):
    """``apgd_dice_steps`` (APGD with soft Dice) is ``ensemble_steps`` unless set on its own, as the demo does."""
    parser = ConfigParser()
    parser.read_config([str(EVAL / "configs" / f) for f in ("evaluate.json", "quick.json", "worst_case.json")])
    parser["ensemble_steps"] = 3
    if dice_steps is not None:
        parser["apgd_dice_steps"] = dice_steps
    steps = {(a["name"], a["loss"]): a["steps"] for a in parser.get_parsed_content("ensemble")}
    assert steps.pop(("APGD", "soft_dice")) == (3 if dice_steps is None else dice_steps)
    assert set(steps.values()) == {3}


def test_worst_case_preset_runs(tiny_models, tiny_datalist, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    configs = Path("bundles") / EVAL.name / "configs"
    run("evaluating", config_file=[str(configs / f) for f in ("evaluate.json", "quick.json", "worst_case.json")],
        meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
        model_bundles=tiny_models[:1], output_dir=str(tmp_path / "out"), datalist=tiny_datalist, progress=False,
        ensemble_steps=2, worst_case_epsilons=[0.03, 0.05], sweep_epsilons=[0.03, 0.05])  # fmt: skip
    rows = load_results(tmp_path / "out" / "results.csv")
    worst = [r for r in rows if r["threat"] == "worst-case"]
    assert sorted(r["epsilon"] for r in worst) == [0.03, 0.05]
    for row in worst:
        members = [r for r in rows if r["epsilon"] == row["epsilon"] and r["threat"] == "white-box"]
        assert {r["attack"] for r in members} >= {"APGD", "PGD", "FGSM"}
        assert sum(row[k] for k in ("dice_wt", "dice_tc", "dice_et")) == pytest.approx(
            min(sum(r[k] for k in ("dice_wt", "dice_tc", "dice_et")) for r in members)
        )


def test_certify_preset_runs(tiny_models, tiny_datalist, tmp_path, monkeypatch):
    """configs/certify.json through `monai.bundle run`: certified and smoothed rows of the named model only, at the
    preset's radii (here two, with few samples), and the certification table."""
    monkeypatch.chdir(REPO)
    configs = Path("bundles") / EVAL.name / "configs"
    parser = ConfigParser()
    parser.read_config([str(EVAL / "configs" / f) for f in ("evaluate.json", "certify.json")])
    preset = parser.get_parsed_content("certification")
    assert preset["radii"] == [0.0, 0.05, 0.1, 0.25, 0.5] and {a["name"] for a in preset["attacks"]} == {"APGD", "PGD"}
    quick = {"certification#models": ["brats_unet3d_baseline"], "certification#n": 8, "certification#n0": 4,
             "certification#eot_samples": 1, "certification#attacks": [{"name": "APGD", "steps": 2}]}  # fmt: skip
    run("evaluating", config_file=[str(configs / f) for f in ("evaluate.json", "quick.json", "certify.json")],
        meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
        model_bundles=tiny_models, output_dir=str(tmp_path / "out"), datalist=tiny_datalist, progress=False,
        sweep_epsilons=[0.05], attacks=[{"name": "FGSM"}], certify_radii=[0.0, 0.1], **quick)  # fmt: skip
    rows = load_results(tmp_path / "out" / "results.csv")
    certified = [r for r in rows if r["threat"] in ("certified", "smoothed")]
    assert {r["model"] for r in certified} == {"brats_unet3d_baseline"}
    assert sorted({r["radius"] for r in certified}) == [0.0, 0.1]
    assert (tmp_path / "out" / "tables" / "certification_3d.md").is_file()
