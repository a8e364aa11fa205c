"""``robustseg demo`` / ``robustseg reproduce``: the plans, the dry run, errors, and a tiny reproduction (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.demo import (
    DEMO_ARTIFACT_MODEL,
    DEMO_GAUSSIAN_MODEL,
    DEMO_MODELS,
    demo_models,
    plan_demo,
    plan_reproduce,
    run_reproduce,
)
from common.errors import RobustsegError


def test_demo_plan_order(tmp_path):
    names = [stage.name for stage in plan_demo(tmp_path / "demo")]
    assert names[0] == "data" and names[-2:] == ["evaluate", "report"]
    trains = [n for n in names if n.startswith("train-")]
    assert trains[0] == f"train-{DEMO_MODELS[0]}", "the baseline (teacher, initial weights) trains first"
    assert set(trains) == {f"train-{m}" for m in DEMO_MODELS}
    assert not (tmp_path / "demo").exists(), "planning writes nothing"


def test_worst_case_preset_adds_the_ensemble_to_the_same_results(tmp_path, monkeypatch):
    """The worst-case stages have names of their own (a paper demo's markers do not skip them) and evaluate into the
    same results folder with worst_case.json and the demo's quick ensemble settings."""
    import common.demo as demo

    calls = []
    monkeypatch.setattr(demo, "_run_bundle", lambda run_id, bundle, configs, overrides: calls.append(
        (run_id, bundle.name, list(configs), overrides)))  # fmt: skip
    paper, worst = plan_demo(tmp_path / "d"), plan_demo(tmp_path / "d", preset="worst-case")
    assert [s.name for s in worst][:-2] == [s.name for s in paper][:-2]
    assert [s.name for s in worst][-2:] == ["evaluate-worst-case", "report-worst-case"]
    for stages in (paper, worst):
        next(s for s in stages if s.name.startswith("evaluate")).work()
    (_, _, paper_configs, paper_overrides), (_, bundle, configs, overrides) = calls
    assert bundle == "brats_robustness_eval" and configs == [*paper_configs, "worst_case.json"]
    assert overrides == {**paper_overrides, **demo.DEMO_WORST_CASE}
    assert "ensemble_steps" not in paper_overrides
    assert {k: paper_overrides[k] for k in demo.DEMO_CORRUPTIONS} == demo.DEMO_CORRUPTIONS  # both presets


def test_demo_rejects_an_unknown_preset(tmp_path):
    with pytest.raises(RobustsegError, match="preset"):
        plan_demo(tmp_path / "d", preset="strong")


@pytest.mark.parametrize("preset", ["paper", "worst-case"])
def test_artifact_defence_only_when_asked_for(preset, tmp_path, monkeypatch):
    """The default demo keeps its four models; artaug=True fine-tunes the artaug bundle from the quick baseline (like
    noiseaug) and evaluates it in stages of their own, into the same results folder."""
    import common.demo as demo

    calls = []
    monkeypatch.setattr(demo, "_run_bundle", lambda run_id, bundle, configs, overrides: calls.append(
        (run_id, bundle.name, list(configs), overrides)))  # fmt: skip
    assert DEMO_ARTIFACT_MODEL == "brats_unet3d_artaug" and DEMO_ARTIFACT_MODEL not in DEMO_MODELS
    assert demo_models() == DEMO_MODELS and demo_models(True) == (*DEMO_MODELS, DEMO_ARTIFACT_MODEL)
    plain = plan_demo(tmp_path / "d", preset=preset)
    with_artaug = plan_demo(tmp_path / "d", preset=preset, artaug=True)
    assert f"train-{DEMO_ARTIFACT_MODEL}" not in [s.name for s in plain]
    names = [s.name for s in with_artaug]
    assert names[:-2] == [s.name for s in plain][:-2] + [f"train-{DEMO_ARTIFACT_MODEL}"]
    assert names[-2:] == [f"{s.name}-artaug" for s in plain][-2:], "a plain demo's markers do not skip them"
    for stages, trained in ((plain, DEMO_MODELS[-1]), (with_artaug, DEMO_ARTIFACT_MODEL)):
        for stage in stages:
            if stage.name == f"train-{trained}" or stage.name.startswith("evaluate"):
                stage.work()
    (_, _, _, noiseaug), (_, _, _, plain_eval), (_, _, configs, artaug), (_, _, _, artaug_eval) = calls
    baseline = str((tmp_path / "d").resolve() / "bundles" / DEMO_MODELS[0] / "models" / "model.pt")
    assert configs == ["train.json", "quick.json"] and artaug["init_weights"] == baseline
    assert artaug == noiseaug, "the same fine-tune settings as the noise augmentation"
    assert [Path(m).name for m in plain_eval.pop("model_bundles")] == list(DEMO_MODELS)
    assert [Path(m).name for m in artaug_eval.pop("model_bundles")] == [*DEMO_MODELS, DEMO_ARTIFACT_MODEL]
    assert artaug_eval == plain_eval, "same data, output folder, corruptions and preset settings"


@pytest.mark.parametrize("preset", ["paper", "worst-case"])
def test_gaussian_defence_only_when_asked_for(preset, tmp_path, monkeypatch):
    """gaussaug=True fine-tunes sigma = 0.25 only, from the quick baseline like noiseaug, and evaluates it in stages of
    their own (with artaug too: stages of their own again), into the same results folder."""
    import common.demo as demo

    calls = []
    monkeypatch.setattr(demo, "_run_bundle", lambda run_id, bundle, configs, overrides: calls.append(
        (run_id, bundle.name, list(configs), overrides)))  # fmt: skip
    assert DEMO_GAUSSIAN_MODEL == "brats_unet3d_gaussaug_sigma0.25" and DEMO_GAUSSIAN_MODEL not in DEMO_MODELS
    assert demo_models(gaussaug=True) == (*DEMO_MODELS, DEMO_GAUSSIAN_MODEL)
    assert demo_models(True, True) == (*DEMO_MODELS, DEMO_ARTIFACT_MODEL, DEMO_GAUSSIAN_MODEL)
    plain = plan_demo(tmp_path / "d", preset=preset)
    with_gaussaug = plan_demo(tmp_path / "d", preset=preset, gaussaug=True)
    names = [s.name for s in with_gaussaug]
    assert [n for n in names if "gaussaug" in n and n.startswith("train-")] == [f"train-{DEMO_GAUSSIAN_MODEL}"]
    assert names[:-2] == [s.name for s in plain][:-2] + [f"train-{DEMO_GAUSSIAN_MODEL}"]
    assert names[-2:] == [f"{s.name}-gaussaug" for s in plain][-2:], "a plain demo's markers do not skip them"
    both = [s.name for s in plan_demo(tmp_path / "d", preset=preset, artaug=True, gaussaug=True)]
    assert both[-2:] == [f"{s.name}-artaug-gaussaug" for s in plain][-2:]
    assert both[-4:-2] == [f"train-{DEMO_ARTIFACT_MODEL}", f"train-{DEMO_GAUSSIAN_MODEL}"]
    for stages, trained in ((plain, DEMO_MODELS[-1]), (with_gaussaug, DEMO_GAUSSIAN_MODEL)):
        for stage in stages:
            if stage.name == f"train-{trained}" or stage.name.startswith("evaluate"):
                stage.work()
    (_, _, _, noiseaug), (_, _, _, plain_eval), (_, _, configs, gaussaug), (_, _, _, gaussaug_eval) = calls
    baseline = str((tmp_path / "d").resolve() / "bundles" / DEMO_MODELS[0] / "models" / "model.pt")
    assert configs == ["train.json", "quick.json"] and gaussaug["init_weights"] == baseline
    assert gaussaug == noiseaug, "the same fine-tune settings as the noise augmentation"
    assert [Path(m).name for m in gaussaug_eval.pop("model_bundles")] == [*DEMO_MODELS, DEMO_GAUSSIAN_MODEL]
    plain_eval.pop("model_bundles")
    assert gaussaug_eval == plain_eval, "same data, output folder, corruptions and preset settings"


@pytest.mark.parametrize("flag", ["artaug", "gaussaug"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_demo_rejects_a_non_boolean_flag(flag, value, tmp_path):
    with pytest.raises(RobustsegError, match=f"{flag} must be True or False"):
        plan_demo(tmp_path / "d", **{flag: value})


@pytest.fixture(scope="module")
def tiny_brats(tmp_path_factory) -> Path:
    from common.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("brats") / "BraTS"
    write_synthetic_dataset(root, subjects=5, seed=0, shape=32, workers=1)
    for extra in ("datalist.json", "synthetic.json"):  # leave a plain BraTS folder
        (root / extra).unlink()
    return root


@pytest.mark.parametrize("distillation, trainings", [("paper", 34), ("approx", 26)])
def test_reproduce_dry_run_lists_models_teachers_first(distillation, trainings, tiny_brats, tmp_path):
    plan = run_reproduce(str(tiny_brats), str(tmp_path / "out"), device="cpu", dry_run=True, distillation=distillation)
    lines = plan.splitlines()[1:]
    trains = [line for line in lines if " train brats_unet" in line]
    assert len(trains) == trainings
    first_defence = min(i for i, line in enumerate(trains) if "_baseline" not in line)
    assert all("_baseline" in line for line in trains[:first_defence]) and first_defence == 2
    teachers = [line for line in trains if "_teacher_t" in line.split()[2]]
    assert len(teachers) == (8 if distillation == "paper" else 0)
    assert all("trained at T = " in line for line in teachers)
    students = [line for line in trains if "_distill_t" in line.split()[2]]
    assert len(students) == 8
    expected = "soft labels at T = {}" if distillation == "paper" else "soft labels at T = 1: the approximation"
    assert all(expected.format(line.split("_distill_t")[1].split()[0]) in line for line in students)
    artaug = [line for line in trains if line.split()[2].endswith("_artaug")]
    assert [line.split()[2] for line in artaug] == ["brats_unet2d_artaug", "brats_unet3d_artaug"]
    gaussaug = [line.split()[2] for line in trains if "_gaussaug_" in line.split()[2]]
    assert gaussaug == [f"brats_unet{net}_gaussaug_sigma{sigma}" for net in ("2d", "3d") for sigma in (0.12, 0.25, 0.5)]
    assert "attack all 26 models" in plan and "write the report" in plan
    assert not (tmp_path / "out").exists()


def _planned_trainings(tiny_brats, out, quick, distillation, monkeypatch) -> dict[str, dict]:
    """Run the plan's training stages with ``_run_bundle`` replaced: bundle name -> overrides, in training order."""
    calls: dict[str, dict] = {}
    monkeypatch.setattr("common.demo._run_bundle", lambda run_id, bundle, configs, overrides: calls.setdefault(
        bundle.name, {"run_id": run_id, "configs": list(configs), **overrides}))
    for stage in plan_reproduce(tiny_brats, out, device="cpu", quick=quick, distillation=distillation):
        if stage.name.startswith("train-"):
            stage.work()
    return calls


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("net", ["3d", "2d"])
@pytest.mark.parametrize("temperature", [20, 100, 500, 5000])
def test_reproduce_paper_distillation_trains_a_teacher_at_t_first(quick, net, temperature, tiny_brats, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """Papernot et al.'s recipe: the student of T learns from a teacher trained at T, softened at T."""
    out = tmp_path / "out"
    calls = _planned_trainings(tiny_brats, out, quick, "paper", monkeypatch)
    order = list(calls)
    baseline, teacher = f"brats_unet{net}_baseline", f"brats_unet{net}_teacher_t{temperature}"
    student = f"brats_unet{net}_distill_t{temperature}"
    assert order.index(baseline) < order.index(teacher) < order.index(student)
    assert calls[student]["teacher_bundle"] == str(out.resolve() / "bundles" / teacher)
    assert calls[student]["teacher_temperature"] == temperature
    assert "teacher_bundle" not in calls[teacher] and "train_temperature" not in calls[teacher], "set by its configs"
    baseline_weights = str(out.resolve() / "bundles" / baseline / "models" / "model.pt")
    for name in (teacher, student):  # quick runs fine-tune the baseline; the paper's train from scratch
        assert calls[name].get("init_weights") == (baseline_weights if quick else None)


@pytest.mark.parametrize("quick", [False, True])
def test_reproduce_approx_distillation_keeps_the_baseline_teacher(quick, tiny_brats, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = _planned_trainings(tiny_brats, out, quick, "approx", monkeypatch)
    assert not [name for name in calls if "_teacher_" in name]
    students = [name for name in calls if "_distill_" in name]
    assert len(students) == 8
    for name in students:
        net = name.split("_")[1]
        assert calls[name]["teacher_bundle"] == str(out.resolve() / "bundles" / f"brats_{net}_baseline")
        assert "teacher_temperature" not in calls[name], "the committed bundles' teacher_temperature (1)"


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("family", ["artaug", "gaussaug_sigma0.12", "gaussaug_sigma0.25", "gaussaug_sigma0.5"])
def test_reproduce_trains_the_augmentation_defences_of_both_nets(quick, family, tiny_brats, tmp_path, monkeypatch):
    """Like noise augmentation: after its baseline, from scratch at the paper's settings, fine-tuned when quick."""
    out = tmp_path / "out"
    calls = _planned_trainings(tiny_brats, out, quick, "approx", monkeypatch)
    order = list(calls)
    for net in ("3d", "2d"):
        baseline, defence = f"brats_unet{net}_baseline", f"brats_unet{net}_{family}"
        assert order.index(baseline) < order.index(defence)
        assert calls[defence]["configs"] == (["train.json", "quick.json"] if quick else ["train.json"])
        weights = str(out.resolve() / "bundles" / baseline / "models" / "model.pt")
        assert calls[defence].get("init_weights") == (weights if quick else None)


@pytest.mark.parametrize("net", ["3d", "2d"])
@pytest.mark.parametrize("temperature", [20, 5000])
def test_teacher_bundle_trains_at_its_temperature(net, temperature):
    """The rendered teacher's training loss is the baseline's loss at T, and its record will say T."""
    from monai.bundle import ConfigParser

    from common.bundles import render_bundle, teacher_spec
    from common.losses import SoftDiceLoss, TemperatureScaledLoss

    files = render_bundle(teacher_spec(net, temperature))
    parser = ConfigParser(json.loads(files["configs/train.json"]))
    loss = parser.get_parsed_content("train#trainer#loss_function")
    assert isinstance(loss, TemperatureScaledLoss) and isinstance(loss.loss, SoftDiceLoss)
    assert loss.temperature == temperature
    assert parser["training_settings#train_temperature"] == "@train_temperature"
    assert parser.get_parsed_content("train_temperature") == temperature
    assert json.loads(files["configs/metadata.json"])["name"] == f"brats_unet{net}_teacher_t{temperature}"


@pytest.mark.parametrize("distillation", ["papers", "none", ""])
def test_reproduce_rejects_unknown_distillation(distillation, tiny_brats, tmp_path):
    with pytest.raises(RobustsegError, match=r"distillation must be one of \['paper', 'approx'\]"):
        run_reproduce(str(tiny_brats), str(tmp_path / "out"), dry_run=True, distillation=distillation)


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
    assert len(settings["models"]) == 26
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    # one preprocessing cache for the whole run: items shared by bundles that preprocess alike, none per bundle
    assert list((tmp_path / "out" / "cache").glob("*.pt"))
    assert not list((tmp_path / "out" / "bundles").glob("*/cache"))
