"""Robustness evaluation (common/engines/robustness.py): the CSV rows, their numbers, resume, examples, errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.attacks import FGSM, IterativeFGSM, TargetedIterativeFGSM
from common.attacks.base import STOP_CRITERIA
from common.corruptions import corrupt, corruption_seed
from common.data.labels import logits_to_labels
from common.data.splits import load_split
from common.engines import KEY_COLUMNS, AttackJob, AutocastInferer, RobustnessEvaluation, load_model_bundle
from common.engines.robustness import DEFAULT_BATCH_SIZE
from common.errors import RobustsegError
from common.metrics.dice import region_dice
from common.metrics.image_quality import input_quality
from common.report import load_examples, load_results
from common.report.schema import mean_dice, parse_trace

from .conftest import ATTACKS, BASELINE, DISTILLED, OVERRIDES, QUICK, STEPS, SUBJECTS, SWEEP, evaluation


def _key(row):
    optional = ("source_model", "loss", "severity", "sigma", "radius")
    return tuple(row[c] or "" if c in optional else row[c] for c in KEY_COLUMNS)


def _expected_keys():
    keys = set()
    for subject in SUBJECTS:
        for model in (BASELINE, DISTILLED):
            keys.add((model, subject, "none", "clean", "", 0.0, 0, "", "", "", ""))
            threats = [("white-box", model)] + ([("adaptive", model)] if model == DISTILLED else [])
            if model == DISTILLED:
                threats.append(("transfer", BASELINE))
            for threat, source in threats:
                keys |= {(model, subject, "FGSM", threat, source, eps, 1, "soft_dice", "", "", "") for eps in SWEEP}
                iterations = [STEPS] if threat == "transfer" else range(1, STEPS + 1)
                for name in ("i-FGSM", "ti-FGSM"):
                    keys |= {
                        (model, subject, name, threat, source, 0.05, k, "soft_dice", "", "", "") for k in iterations
                    }
    return keys


def test_rows_are_exactly_the_plan(finished):
    _, rows = finished
    worst = [r for r in rows if r["threat"] == "worst-case"]
    # one derived worst-case row per model and subject at the attack specs' epsilon (0.05), none at the sweep's others
    assert sorted((r["model"], r["subject"], r["epsilon"]) for r in worst) == sorted(
        (m, s, 0.05) for m in (BASELINE, DISTILLED) for s in SUBJECTS
    )
    rows = [r for r in rows if r["threat"] != "worst-case"]
    keys = [_key(r) for r in rows]
    # per subject: baseline 1 clean + 3 sweep + 2 x 3 iterates; distilled the same + adaptive 9 + transfer 3 + 2
    assert len(rows) == len(SUBJECTS) * (10 + 10 + 9 + 5) == len(_expected_keys())
    assert set(keys) == _expected_keys() and len(set(keys)) == len(keys)


def test_columns_follow_the_threat_model(finished):
    _, rows = finished
    for row in rows:
        assert (row["winner"] is None) == (row["threat"] != "worst-case")
        targeted = row["attack"] == "ti-FGSM"
        assert (row["target_attainment"] is None) == (not targeted)
        assert not targeted or 0 <= row["target_attainment"] <= 1
        if row["threat"] == "worst-case":
            continue  # tests/engines/test_worst_case.py
        clean, transfer = row["threat"] == "clean", row["threat"] == "transfer"
        assert (row["psnr"] is None) == clean and (row["seconds"] is None) == clean
        assert (row["zero_grad_fraction"] is None) == (clean or transfer)
        assert row["steps"] == {"none": 0, "FGSM": 1}.get(row["attack"], STEPS)
        if not clean:
            assert row["seconds"] > 0 and (transfer or 0 <= row["zero_grad_fraction"] <= 1)
            temperature = "temperature=5.0" if row["threat"] == "adaptive" else "temperature=1.0"
            assert temperature in row["attack_config"] and f"epsilon={row['epsilon']}" in row["attack_config"]
            assert row["source_model"] == (BASELINE if transfer else row["model"])
        assert row["defense"] == ("distillation" if row["model"] == DISTILLED else "none")


def _subject_input(bundles, datalist, model=BASELINE):
    bundle = load_model_bundle(bundles[model], QUICK, "cpu", OVERRIDES)
    item = bundle.preprocessing(load_split(datalist, "testing")[0])
    return bundle, item["image"].as_tensor()[None].float(), item["label"].as_tensor()[None]


def _rows(rows, **where):
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


@pytest.mark.parametrize(
    "model, threat, attack, make",
    [
        (BASELINE, "white-box", "FGSM", lambda eps: FGSM(eps)),
        (DISTILLED, "adaptive", "FGSM", lambda eps: FGSM(eps, temperature=5.0)),
        (BASELINE, "white-box", "i-FGSM", lambda eps: IterativeFGSM(0.05, steps=STEPS)),
        (DISTILLED, "white-box", "ti-FGSM", lambda eps: TargetedIterativeFGSM(0.05, steps=STEPS, target=1)),
    ],
)
def test_rows_equal_a_direct_attack(finished, bundles, tiny_datalist, model, threat, attack, make):
    """The sweep's one-gradient rows equal FGSM(eps) per epsilon; final iterates equal a direct run."""
    _, rows = finished
    bundle, image, label = _subject_input(bundles, tiny_datalist, model)
    for row in _rows(rows, model=model, subject=SUBJECTS[0], threat=threat, attack=attack):
        if row["iteration"] != row["steps"]:
            continue
        adversarial = make(row["epsilon"])(bundle.network, image, label)
        with torch.no_grad():
            prediction = logits_to_labels(AutocastInferer(enabled=bundle.amp)(adversarial, bundle.network))
        dice = region_dice(prediction, label)[0].tolist()
        assert [row["dice_wt"], row["dice_tc"], row["dice_et"]] == dice
        quality = input_quality(image, adversarial)
        for name in ("psnr", "rmse", "linf", "l2"):
            assert row[name] == pytest.approx(float(quality[name][0]), rel=1e-12)
        assert row["ssim"] == pytest.approx(float(quality["ssim"][0]), abs=1e-5)  # MONAI's is float32
        if attack == "ti-FGSM":  # target label 1 everywhere: the share of brain voxels predicted 1
            brain = image[0].abs().amax(0) > 0
            expected = float(((prediction[0, 0] == 1) & brain).sum() / brain.sum())
            assert row["target_attainment"] == pytest.approx(expected, abs=1e-12)


def test_clean_rows_equal_the_model_on_the_input(finished, bundles, tiny_datalist):
    _, rows = finished
    bundle, image, label = _subject_input(bundles, tiny_datalist)
    with torch.no_grad():
        dice = region_dice(logits_to_labels(bundle.network(image)), label)[0].tolist()
    (row,) = _rows(rows, model=BASELINE, subject=SUBJECTS[0], threat="clean")
    assert [row["dice_wt"], row["dice_tc"], row["dice_et"]] == dice and row["linf"] == 0.0


def test_iterates_grow_inside_the_ball(finished):
    """Iterate k of i-FGSM/ti-FGSM with alpha = eps/N moves at most k * alpha (images scaled to [0, 1])."""
    _, rows = finished
    alpha = 0.05 / STEPS
    groups = Counter()
    for row in rows:
        if row["attack"] in ("i-FGSM", "ti-FGSM") and row["threat"] != "transfer":
            groups[(row["model"], row["subject"], row["attack"], row["threat"])] += 1
    assert set(groups.values()) == {STEPS}
    for model, subject, attack, threat in groups:
        series = sorted(_rows(rows, model=model, subject=subject, attack=attack, threat=threat),
                        key=lambda r: r["iteration"])  # fmt: skip
        assert [r["iteration"] for r in series] == list(range(1, STEPS + 1))
        for k, row in enumerate(series, start=1):
            assert 0 < row["linf"] <= k * alpha + 1e-6
        assert all(a["seconds"] <= b["seconds"] for a, b in zip(series, series[1:]))
        assert all(a["l2"] <= b["l2"] + 1e-9 for a, b in zip(series, series[1:]))
        assert len({r["zero_grad_fraction"] for r in series}) == 1  # the first step's, on every row


def test_sweep_perturbation_grows_with_epsilon(finished):
    _, rows = finished
    series = sorted(_rows(rows, model=BASELINE, subject=SUBJECTS[1], attack="FGSM", threat="white-box"),
                    key=lambda r: r["epsilon"])  # fmt: skip
    assert [r["epsilon"] for r in series] == SWEEP
    assert all(0 < r["linf"] <= r["epsilon"] + 1e-7 for r in series)
    assert all(a["psnr"] > b["psnr"] for a, b in zip(series, series[1:]))
    assert all(a["seconds"] <= b["seconds"] for a, b in zip(series, series[1:]))  # one gradient, then cheap steps


def test_transfer_rows_reuse_the_source_inputs(finished):
    _, rows = finished
    transfer = _rows(rows, threat="transfer")
    assert transfer and {r["model"] for r in transfer} == {DISTILLED}
    for row in transfer:
        (source,) = _rows(rows, model=BASELINE, subject=row["subject"], attack=row["attack"], threat="white-box",
                          epsilon=row["epsilon"], iteration=row["iteration"])  # fmt: skip
        for name in ("psnr", "ssim", "rmse", "linf", "l2", "seconds", "attack_config", "loss", "steps"):
            assert row[name] == source[name]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_source_is_attacked_once_per_subject(batch_size, bundles, bundle_factory, tiny_datalist, tmp_path, monkeypatch):
    third = bundle_factory("tiny_third", seed=2)
    calls = []
    run = AttackJob.run

    def counting(self, model, image, label, final_only=False):
        calls.append((id(getattr(model, "network", model)), len(image), final_only))
        return run(self, model, image, label, final_only)

    monkeypatch.setattr(AttackJob, "run", counting)
    job = evaluation({**bundles, "tiny_third": third}, tiny_datalist, tmp_path / "out",
                     models=(BASELINE, DISTILLED, "tiny_third"), attacks=[{"name": "i-FGSM", "steps": 2}],
                     sweep_epsilons=[0.05], example_subject=False, tables=False, batch_size=batch_size)  # fmt: skip
    job.run()
    attacked = Counter()  # subjects attacked per network
    for network, subjects, _ in calls:
        attacked[network] += subjects
    networks = {m.name: id(m.network) for m in job.models}
    jobs = 2  # the sweep and i-FGSM
    assert attacked[networks[BASELINE]] == jobs * len(SUBJECTS)  # its white-box runs serve both targets
    assert attacked[networks[DISTILLED]] == 2 * jobs * len(SUBJECTS)  # white-box and adaptive
    assert attacked[networks["tiny_third"]] == jobs * len(SUBJECTS)
    assert not any(final_only for _, _, final_only in calls)
    assert {subjects for _, subjects, _ in calls} == {min(batch_size, len(SUBJECTS)), len(SUBJECTS) % batch_size or
                                                      batch_size}  # fmt: skip
    transfer = _rows(load_results(tmp_path / "out" / "results.csv"), threat="transfer")
    assert Counter(r["model"] for r in transfer) == {DISTILLED: 2 * len(SUBJECTS), "tiny_third": 2 * len(SUBJECTS)}


def _without_seconds(rows):
    return sorted(tuple((k, v) for k, v in r.items() if k != "seconds") for r in rows)


@pytest.mark.parametrize(("first", "second", "written"), [(1, 1, [0, 34, 34]), (1, 3, [68]), (2, 2, [0, 34])])
def test_resume_after_an_interruption_completes_the_same_rows(
    first, second, written, finished, bundles, tiny_datalist, tmp_path, monkeypatch
):
    """Interrupted after the first batch of ``first`` subjects, resumed in batches of ``second``: the subjects done
    are not attacked again (also inside a batch that mixes done and new subjects), and the rows are the same."""
    out = tmp_path / "out"
    original = RobustnessEvaluation.evaluate_batch
    done = []

    def crash_after_first(self, entries):
        if done:
            raise RuntimeError("simulated interruption")
        done.append(original(self, entries))
        return done[-1]

    monkeypatch.setattr(RobustnessEvaluation, "evaluate_batch", crash_after_first)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        evaluation(bundles, tiny_datalist, out, batch_size=first).run()
    first_rows = load_results(out / "results.csv")
    assert {r["subject"] for r in first_rows} == set(SUBJECTS[:first]) and len(first_rows) == done[0] == 34 * first
    monkeypatch.undo()

    counts, attacked = [], []
    run = AttackJob.run

    def counting(self, model, image, label, final_only=False):
        attacked.append(len(image))
        return run(self, model, image, label, final_only)

    monkeypatch.setattr(AttackJob, "run", counting)
    monkeypatch.setattr(RobustnessEvaluation, "evaluate_batch",
                        lambda self, entries: counts.append(original(self, entries)) or counts[-1])  # fmt: skip
    evaluation(bundles, tiny_datalist, out, batch_size=second).run()
    rows = load_results(out / "results.csv")
    assert counts == written  # the subjects of the first run are not recomputed
    assert max(attacked) == min(second, len(SUBJECTS) - first)  # a mixed batch attacks only those missing rows
    assert _without_seconds(rows) == _without_seconds(finished[1])
    assert rows[: len(first_rows)] == first_rows  # its rows, seconds included, are the ones written before


def test_a_line_cut_short_is_dropped_and_redone(finished, bundles, tiny_datalist, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    last_subject = [i for i, line in enumerate(lines) if f",{SUBJECTS[2]}," in line]
    kept = [line for i, line in enumerate(lines) if i not in last_subject[-5:]]
    (out / "results.csv").write_text("".join(kept) + lines[last_subject[-1]][:30])  # no newline: cut short
    evaluation(bundles, tiny_datalist, out).run()
    assert _without_seconds(load_results(out / "results.csv")) == _without_seconds(finished[1])


def test_rerun_of_a_finished_evaluation_writes_nothing(finished, bundles, tiny_datalist, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    before = (out / "results.csv").read_bytes()
    job = evaluation(bundles, tiny_datalist, out)
    assert len(job.done) == len(finished[1])
    job.run()
    assert (out / "results.csv").read_bytes() == before


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attacks": [{"name": "FGSM"}, {"name": "i-FGSM", "steps": 2}]}, r"holds i-FGSM white-box rows of .* made by"),
        ({"sweep": {"name": "FGSM", "clip": None}, "attacks": ATTACKS[1:]}, r"holds FGSM white-box rows .* clip=None"),
    ],
)
def test_resume_refuses_other_attack_settings(finished, bundles, tiny_datalist, tmp_path, change, message):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    with pytest.raises(RobustsegError, match=message):
        evaluation(bundles, tiny_datalist, out, **change)


def test_resume_refuses_other_weights(finished, bundle_factory, bundles, tiny_datalist, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    retrained = bundle_factory(BASELINE, seed=7)
    with pytest.raises(RobustsegError, match=r"holds rows of model tiny_baseline computed with other weights"):
        evaluation({**bundles, BASELINE: retrained}, tiny_datalist, out)


def test_examples_are_written_as_the_schema_says(finished):
    out, rows = finished
    (subject,) = load_examples(out / "examples")
    assert subject.subject == SUBJECTS[0] and subject.shape == (16, 16, 16)
    index = json.loads((out / "examples" / SUBJECTS[0] / "index.json").read_text())
    assert set(index) == {"subject", "image", "label", "entries"}
    kinds = Counter((e["model"], e["threat"]) for e in index["entries"])
    assert kinds == {(BASELINE, "clean"): 1, (BASELINE, "white-box"): 3, (DISTILLED, "clean"): 1,
                     (DISTILLED, "white-box"): 3, (DISTILLED, "adaptive"): 3, (DISTILLED, "transfer"): 3}  # fmt: skip
    folder = out / "examples" / SUBJECTS[0]
    image = nib.load(folder / "image.nii.gz").get_fdata()
    label = nib.load(folder / "label.nii.gz").get_fdata()
    assert image.shape == (4, 16, 16, 16) and label.shape == (16, 16, 16)
    sources = {}
    for entry in index["entries"]:
        assert entry["epsilon"] == (0.0 if entry["threat"] == "clean" else 0.05)
        prediction = nib.load(folder / entry["prediction"]).get_fdata()
        assert prediction.shape == (16, 16, 16) and set(np.unique(prediction)) <= {0, 1, 2, 4}
        iteration = {"none": 0, "FGSM": 1}.get(entry["attack"], STEPS)
        (row,) = _rows(rows, model=entry["model"], subject=SUBJECTS[0], attack=entry["attack"], threat=entry["threat"],
                       epsilon=entry["epsilon"], iteration=iteration)  # fmt: skip
        dice = region_dice(torch.as_tensor(prediction)[None, None], torch.as_tensor(label)[None, None])[0].tolist()
        assert dice == [row["dice_wt"], row["dice_tc"], row["dice_et"]]
        if entry["adversarial"] is None:
            assert entry["threat"] == "clean"
            continue
        perturbation = nib.load(folder / entry["adversarial"]).get_fdata() - image
        assert np.abs(perturbation).max() == pytest.approx(row["linf"], rel=1e-6)
        if entry["threat"] in ("white-box", "transfer"):
            sources.setdefault((entry["attack"], entry["threat"]), set()).add(entry["adversarial"])
    for attack in ("FGSM", "i-FGSM", "ti-FGSM"):
        # a transfer entry points at the source's own adversarial input
        assert sources[(attack, "transfer")] <= sources[(attack, "white-box")]


def test_settings_describe_models_attacks_and_data(finished, bundles):
    out, _ = finished
    settings = json.loads((out / "settings.json").read_text())
    assert set(settings) == {"evaluation", "models", "attacks", "data", "versions"}
    models = {m["model"]: m for m in settings["models"]}
    assert set(models) == {BASELINE, DISTILLED}
    assert models[DISTILLED]["temperature"] == 5.0 and models[DISTILLED]["defense_param"] == "T=5"
    assert models[BASELINE]["training"]["epochs"] == json.loads((bundles[BASELINE] / "configs/quick.json").read_text())[
        "epochs"
    ]
    assert len(models[BASELINE]["weights_sha256"]) == 64 and models[BASELINE]["config_files"] == QUICK
    assert settings["data"]["test_subjects"] == 3 and settings["data"]["synthetic"] is False
    assert settings["evaluation"]["transfer_source"] == BASELINE
    assert settings["evaluation"]["sweep_epsilons"] == SWEEP
    assert (settings["evaluation"]["batch_size"], settings["evaluation"]["score_batch_size"]) == (DEFAULT_BATCH_SIZE, 1)
    threats = Counter(a["threat"] for a in settings["attacks"])
    assert threats == {"white-box": 3, f"adaptive ({DISTILLED})": 3}
    assert {"torch", "monai", "robustseg", "numpy"} <= set(settings["versions"])


def test_tables_are_written(finished):
    out, _ = finished
    table = (out / "tables" / f"table1_3d_{BASELINE}.md").read_text()
    assert "No attack" in table and "i-FGSM" in table and "ti-FGSM" in table


def _empty_datalist(tmp_path, datalist):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"training": json.loads(Path(datalist).read_text())["training"], "testing": []}))
    return str(path)


def _datalist_with_missing_file(tmp_path, datalist):
    data = json.loads(Path(datalist).read_text())
    data["testing"][1]["label"] = "tiny_001/gone_seg.nii.gz"
    path = Path(datalist).parent / "missing_file.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "case, message",
    [
        ({"models": ("/nowhere/tiny",)}, r"model bundle '/nowhere/tiny' not found"),
        ({"models": (BASELINE, "untrained")}, r"weights of model bundle untrained not found; train it first"),
        ({"models": (BASELINE, "standardized")}, r"preprocess differently \(normalization: minmax vs standardize\)"),
        ({"models": (BASELINE, BASELINE)}, r"model_bundles: \['tiny_baseline'\] given more than once"),
        ({"attacks": [{"name": "CW", "epsilon": 0.05}]}, r"attack name must be one of \['FGSM', 'i-FGSM'"),
        ({"sweep_epsilons": [0.01, -0.02]}, r"epsilon must be >= 0, got -0.02"),
        ({"attacks": [{"name": "i-FGSM", "epsilon": 1.5}]}, r"epsilon must be <= 1 with relative=True"),
        ({"epsilon": 0.0}, r"epsilon must be a finite number > 0"),
        ({"sweep": {"name": "i-FGSM"}}, r"sweep must be an FGSM spec"),
        ({"attacks": [{"name": "i-FGSM"}, {"name": "i-FGSM", "alpha": 0.01}]}, r"is configured twice"),
        ({"transfer_source": "tiny_nobody"}, r"transfer_source 'tiny_nobody' is not one of the models"),
        ({"example_subject": "tiny_999"}, r"example_subject 'tiny_999' is not a test subject"),
        ({"score_batch_size": 0}, r"score_batch_size must be an integer >= 1"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 1.5}, r"batch_size must be an integer >= 1, got 1.5"),
        ({"datalist": "empty"}, r"the 'testing' split is empty"),
        ({"datalist": "missing_file"}, r"gone_seg.nii.gz: file of test subject tiny_001 not found"),
        ({"certification": {"models": ["tiny_nobody"]}}, r"certification: models \['tiny_nobody'\] are not evaluated"),
        ({"certification": {"sigmas": [0.1]}}, r"certification: unknown setting\(s\) \['sigmas'\]"),
        ({"certification": {"sigma": -1}}, r"sigma must be a finite number > 0"),
        ({"certification": [0.25]}, r"certification must be null or a mapping"),
    ],
)
def test_errors_are_one_line_and_write_nothing(case, message, bundles, bundle_factory, tiny_datalist, tmp_path):
    extra = {
        "untrained": bundle_factory("untrained", weights=False),
        "standardized": bundle_factory("standardized"),
    }
    quick = extra["standardized"] / "configs" / "quick.json"
    quick.write_text(json.dumps({**json.loads(quick.read_text()), "normalization": "standardize"}))
    datalist = {"empty": _empty_datalist(tmp_path, tiny_datalist), "missing_file": _datalist_with_missing_file(
        tmp_path, tiny_datalist)}.get(case.pop("datalist", None), tiny_datalist)  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(RobustsegError, match=message) as info:
        evaluation({**bundles, **extra}, datalist, out, **case)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_predictions_are_batched_in_order(bundles, tiny_datalist, tmp_path):
    job = evaluation(bundles, tiny_datalist, tmp_path / "out", models=(BASELINE,), score_batch_size=2)
    images = torch.rand(5, 4, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    batched = job._predict(job.models[0], images)
    job.score_batch_size = 1
    single = job._predict(job.models[0], images)
    assert batched.shape == (5, 1, 16, 16, 16)
    # batched float32 convolutions may round differently: a near-tie voxel may flip, nothing more
    assert (batched != single).float().mean() < 1e-3


def test_two_processes_give_the_rows_of_one(finished, bundles, tiny_datalist, tmp_path):
    """torchrun with 2 CPU processes (gloo): subjects sharded, part files merged into the same rows."""
    script = tmp_path / "evaluate.py"
    args = {"bundles": {k: str(v) for k, v in bundles.items()}, "datalist": tiny_datalist, "out": str(tmp_path / "out")}
    script.write_text(
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from conftest import OVERRIDES, QUICK\n"
        "from common.engines import RobustnessEvaluation\n"
        f"args = json.loads({json.dumps(args)!r})\n"
        "RobustnessEvaluation([args['bundles'][m] for m in ('tiny_baseline', 'tiny_distill_t5')], args['out'],\n"
        "    model_config_files=QUICK, model_overrides=OVERRIDES, datalist=args['datalist'], device='cpu',\n"
        f"    sweep_epsilons={SWEEP!r}, attacks={ATTACKS!r}, score_batch_size=1, progress=False).run()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = load_results(tmp_path / "out" / "results.csv")
    assert _without_seconds(rows) == _without_seconds(finished[1])
    members = [r for r in rows if r["threat"] != "worst-case"]  # the derived worst-case rows come last
    assert rows[len(members) :] == [r for r in rows if r["threat"] == "worst-case"]
    assert [r["subject"] for r in members] == sorted((r["subject"] for r in members), key=SUBJECTS.index)
    assert not list((tmp_path / "out").glob("results.part*"))
    assert math.isclose(len(rows), len(finished[1]))


@pytest.mark.parametrize("batch_size", [1, 2])
def test_batches_give_the_rows_of_other_batches(batch_size, finished, bundles, tiny_datalist, tmp_path):
    """The rows do not depend on the batch size (the shared run uses the default: one batch of the 3 subjects): clean
    rows equal, attacked Dice and input quality to the float rounding of batched convolutions."""
    out = tmp_path / "out"
    evaluation(bundles, tiny_datalist, out, batch_size=batch_size, tables=False).run()
    rows = {_key(r): r for r in load_results(out / "results.csv")}
    reference = {_key(r): r for r in finished[1]}
    assert set(rows) == set(reference)
    for key, row in rows.items():
        for name in ("dice_wt", "dice_tc", "dice_et"):
            tolerance = 1e-12 if row["threat"] == "clean" else 0.005
            assert row[name] == pytest.approx(reference[key][name], abs=tolerance), (key, name)
        for name in ("psnr", "ssim", "rmse", "linf", "l2", "zero_grad_fraction"):
            if row[name] is not None:
                assert row[name] == pytest.approx(reference[key][name], rel=1e-3, abs=1e-3), (key, name)
        assert row["attack_config"] == reference[key]["attack_config"]


@pytest.mark.parametrize(("attack_precision", "predicted"), [("fp32", 6), ("bf16", 10)])
def test_iterates_are_scored_from_the_attacks_own_passes(attack_precision, predicted, bundles, tiny_datalist, tmp_path,
                                                         monkeypatch):  # fmt: skip
    """One subject, one model: the clean input, 3 sweep points and the final iterates of i-FGSM and ti-FGSM take a
    pass of their own; iterates 1 and 2 were predicted by the attack's next step (unless it ran in another
    precision), and their rows equal those of a separate pass."""
    seen = []
    original = RobustnessEvaluation._predict
    monkeypatch.setattr(RobustnessEvaluation, "_predict",
                        lambda self, model, images: seen.append(len(images)) or original(self, model, images))
    datalist = tmp_path / "one.json"
    data = json.loads(Path(tiny_datalist).read_text())
    entry = {**data["testing"][0], "image": [str(Path(tiny_datalist).parent / f) for f in data["testing"][0]["image"]],
             "label": str(Path(tiny_datalist).parent / data["testing"][0]["label"])}  # fmt: skip
    datalist.write_text(json.dumps({"training": [entry], "testing": [entry]}))
    out = tmp_path / "out"
    evaluation(bundles, str(datalist), out, models=(BASELINE,), attack_precision=attack_precision, tables=False,
               example_subject=False).run()  # fmt: skip
    assert sum(seen) == predicted
    bundle, image, label = _subject_input(bundles, str(datalist))
    rows = load_results(out / "results.csv")
    for name, make in (("i-FGSM", IterativeFGSM), ("ti-FGSM", TargetedIterativeFGSM)):
        records = []
        make(0.05, steps=STEPS, amp=attack_precision)(bundle.network, image, label, callback=records.append)
        for record in records:
            with torch.no_grad():
                prediction = logits_to_labels(AutocastInferer(enabled=bundle.amp)(record.adversarial, bundle.network))
            (row,) = _rows(rows, attack=name, threat="white-box", iteration=record.step)
            dice = region_dice(prediction, label)[0].tolist()
            assert [row["dice_wt"], row["dice_tc"], row["dice_et"]] == pytest.approx(dice, abs=0.005)


@pytest.mark.parametrize("stop_at", [2, 4, None])
def test_a_stopped_iterate_is_scored_once(stop_at, bundles, tiny_datalist, tmp_path, monkeypatch):
    """Once the stop criterion stops a subject (``dice_zero``, stood in for by one that stops at step ``stop_at``), its
    later iterates equal the one it stopped at: each still gets its row, with that iterate's Dice, but no forward pass
    of its own (bf16 attacks: no iterate is predicted by the attack's own passes)."""
    seen = []
    original = RobustnessEvaluation._predict
    monkeypatch.setattr(RobustnessEvaluation, "_predict",
                        lambda self, model, images: seen.append(len(images)) or original(self, model, images))
    steps = 6

    def stop(probe):
        return torch.full((len(probe.images),), stop_at is not None and probe.step >= stop_at)

    monkeypatch.setitem(STOP_CRITERIA, "dice_zero", stop)
    attacks = [{"name": "i-FGSM", "steps": steps, "epsilon": 1.0, "stop": "dice_zero"}]
    out = tmp_path / "out"
    evaluation(bundles, tiny_datalist, out, models=(BASELINE,), attacks=attacks, sweep=None, attack_precision="bf16",
               tables=False, example_subject=False, batch_size=len(SUBJECTS)).run()  # fmt: skip
    distinct = steps if stop_at is None else stop_at - 1
    assert sum(seen) == len(SUBJECTS) * (1 + distinct)  # the clean input and each distinct iterate
    rows = load_results(out / "results.csv")
    for subject in SUBJECTS:
        dice = [mean_dice(_rows(rows, subject=subject, attack="i-FGSM", iteration=k)[0]) for k in range(1, steps + 1)]
        assert len(set(dice[distinct - 1 :])) == 1 or stop_at is None


def test_best_iterate_rows_carry_their_trace_and_noise_is_white_box_only(bundles, tiny_datalist, tmp_path):
    """PGD rows hold the running best Dice per gradient pass (restarts x steps values) for the convergence figure;
    the random-sign control has no gradient to transfer or to rescale by a temperature, and no zero-gradient share."""
    attacks = [{"name": "PGD", "steps": 2, "restarts": 2}, {"name": "random-sign"}]
    evaluation(bundles, tiny_datalist, tmp_path / "out", attacks=attacks, sweep=None, tables=False).run()
    rows = load_results(tmp_path / "out" / "results.csv")
    pgd = _rows(rows, attack="PGD")
    assert {r["threat"] for r in pgd} == {"white-box", "adaptive", "transfer"}
    assert all(r["dice_trace"] is None for r in _rows(pgd, threat="transfer"))  # the source's search, not theirs
    for row in [r for r in pgd if r["threat"] != "transfer"]:
        trace = parse_trace(row["dice_trace"])
        assert len(trace) == 4 and trace == sorted(trace, reverse=True)
        assert mean_dice(row) <= trace[-1] + 1e-4  # the row also scores the last iterate
    noise = _rows(rows, attack="random-sign")
    assert {r["threat"] for r in noise} == {"white-box"} and len(noise) == 2 * len(SUBJECTS)
    assert all(r["zero_grad_fraction"] is None and r["dice_trace"] is None for r in noise)
    assert all(r["dice_trace"] is None for r in _rows(rows, threat="worst-case"))


@pytest.fixture(scope="module")
def corrupted_run(bundles, tiny_datalist, tmp_path_factory):
    """Both tiny models scored on two corruptions at three severities (and FGSM, for the worst case)."""
    out = tmp_path_factory.mktemp("corruptions") / "out"
    settings = {"attacks": [{"name": "FGSM"}], "sweep": None, "corruptions": ["gibbs", "missing_t2"],
                "severities": [5, 1, 3], "tables": False}  # fmt: skip
    evaluation(bundles, tiny_datalist, out, **settings).run()
    return out, settings, load_results(out / "results.csv")


def test_corruption_rows_equal_the_model_on_the_corrupted_input(corrupted_run, bundles, tiny_datalist):
    _, _, rows = corrupted_run
    corrupted = _rows(rows, threat="corruption")
    assert len(corrupted) == 2 * len(SUBJECTS) * 2 * 3
    assert {(r["attack"], r["severity"]) for r in corrupted} == {(c, s) for c in ("gibbs", "missing_t2")
                                                                 for s in (1, 3, 5)}  # fmt: skip
    for row in corrupted:
        assert row["epsilon"] == 0.0 and row["source_model"] is None and row["zero_grad_fraction"] is None
        assert row["attack_config"].startswith(f"{row['attack']}(severity={row['severity']}, ")
    assert all(r["severity"] is None for r in rows if r["threat"] != "corruption")
    bundle, image, label = _subject_input(bundles, tiny_datalist)
    for row in _rows(corrupted, model=BASELINE, subject=SUBJECTS[0]):
        seed = corruption_seed(SUBJECTS[0], row["attack"], row["severity"])
        noisy = corrupt(image[0], row["attack"], row["severity"], seed=seed)[None]
        with torch.no_grad():
            dice = region_dice(logits_to_labels(bundle.network(noisy)), label)[0].tolist()
        assert [row["dice_wt"], row["dice_tc"], row["dice_et"]] == dice
        assert row["psnr"] == pytest.approx(float(input_quality(image, noisy)["psnr"][0]), rel=1e-9)


def test_corruptions_are_not_attacks_and_resume(corrupted_run, bundles, tiny_datalist):
    out, settings, rows = corrupted_run
    # PSNR falls with severity for every subject and corruption; the worst case stays over the attacks only
    for model in (BASELINE, DISTILLED):
        for subject in SUBJECTS:
            for name in ("gibbs", "missing_t2"):
                psnr = [r["psnr"] for r in sorted(_rows(rows, model=model, subject=subject, attack=name),
                                                   key=lambda r: r["severity"])]  # fmt: skip
                assert psnr == sorted(psnr, reverse=True) and len(set(psnr)) == 3
    assert all("corruption" not in (r["attack_config"] or "") for r in _rows(rows, threat="worst-case"))
    before = (out / "results.csv").read_bytes()
    evaluation(bundles, tiny_datalist, out, **settings).run()
    assert (out / "results.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"corruptions": ["gibs"]}, r"corruptions.*gibs"),
        ({"corruptions": 3}, r"corruptions must be 'all', a corruption name or a non-empty list of them, got 3"),
        ({"corruptions": "gibs"}, r"corruptions.*gibs"),
        ({"corruptions": "all", "severities": [0]}, r"severities"),
        ({"corruptions": "all", "severities": [6]}, r"severities"),
    ],
)
def test_bad_corruption_settings_are_one_line(change, message, bundles, tiny_datalist, tmp_path):
    with pytest.raises(RobustsegError, match=message):
        evaluation(bundles, tiny_datalist, tmp_path / "out", **change)
    assert not (tmp_path / "out").exists()


def test_corruption_examples_are_saved_once_per_corruption_at_the_example_severity(
    corrupted_run, bundles, tiny_datalist
):
    """Severities [5, 1, 3] save severity 3 only: one corrupted input per corruption, one prediction per model."""
    out, _, rows = corrupted_run
    folder = out / "examples" / SUBJECTS[0]
    index = json.loads((folder / "index.json").read_text())
    entries = [e for e in index["entries"] if e["threat"] == "corruption"]
    assert Counter((e["model"], e["attack"], e["severity"]) for e in entries) == {
        (m, c, 3): 1 for m in (BASELINE, DISTILLED) for c in ("gibbs", "missing_t2")
    }
    assert all("severity" not in e for e in index["entries"] if e["threat"] != "corruption")
    assert json.loads((out / "settings.json").read_text())["evaluation"]["example_severity"] == 3
    inputs = {c: {e["adversarial"] for e in entries if e["attack"] == c} for c in ("gibbs", "missing_t2")}
    assert all(len(files) == 1 for files in inputs.values())  # shared by the two models
    assert sorted(p.name for p in folder.glob("*sev*")) == sorted(
        [*(f for files in inputs.values() for f in files), *(e["prediction"] for e in entries)]
    )  # no other severity saved
    _, image, label = _subject_input(bundles, tiny_datalist)
    for entry in entries:
        expected = corrupt(image[0], entry["attack"], 3, seed=corruption_seed(SUBJECTS[0], entry["attack"], 3))
        np.testing.assert_allclose(nib.load(folder / entry["adversarial"]).get_fdata(), expected.numpy(), atol=1e-6)
        prediction = torch.as_tensor(nib.load(folder / entry["prediction"]).get_fdata())[None, None]
        (row,) = _rows(rows, model=entry["model"], subject=SUBJECTS[0], attack=entry["attack"], severity=3)
        assert region_dice(prediction, label)[0].tolist() == [row["dice_wt"], row["dice_tc"], row["dice_et"]]
    (subject,) = load_examples(out / "examples")
    assert {e.severity for e in subject.entries} == {None, 3}


def test_a_rerun_adds_corruption_examples_to_an_index_without_them(corrupted_run, bundles, tiny_datalist, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """An output folder of a run without corruptions (its index lacks them) gets them on a rerun that scores
    corruptions: only the example subject's corruptions are recomputed, no attack runs, no row is added."""
    source, settings, _ = corrupted_run
    out = tmp_path / "out"
    shutil.copytree(source, out)
    folder = out / "examples" / SUBJECTS[0]
    complete = json.loads((folder / "index.json").read_text())
    for path in folder.glob("*sev3*"):
        path.unlink()
    older = {**complete, "entries": [e for e in complete["entries"] if e["threat"] != "corruption"]}
    (folder / "index.json").write_text(json.dumps(older, indent=1) + "\n")
    before = (out / "results.csv").read_bytes()
    attacked = []
    run = AttackJob.run
    monkeypatch.setattr(AttackJob, "run", lambda self, *a, **k: attacked.append(1) or run(self, *a, **k))
    job = evaluation(bundles, tiny_datalist, out, **settings)
    assert [job._example_state(s) for s in SUBJECTS] == ["corruptions", None, None]
    job.run()
    assert not attacked and (out / "results.csv").read_bytes() == before
    again = json.loads((folder / "index.json").read_text())
    assert again["entries"][: len(older["entries"])] == older["entries"]
    assert sorted(map(json.dumps, again["entries"])) == sorted(map(json.dumps, complete["entries"]))
    assert evaluation(bundles, tiny_datalist, out, **settings)._example_state(SUBJECTS[0]) is None


@pytest.mark.parametrize(("severities", "expected"), [([5, 1, 3], 3), ([4, 5], 4), ([1, 2, 4, 5], 2), ([5], 5)])
def test_the_example_severity_is_three_else_the_middle_one(severities, expected, bundles, tiny_datalist, tmp_path):
    job = evaluation(bundles, tiny_datalist, tmp_path / "out", models=(BASELINE,), corruptions=["gibbs"],
                     severities=severities)  # fmt: skip
    assert job.example_severity == expected and job.settings()["evaluation"]["example_severity"] == expected


CERTIFICATION = {"sigma": 0.1, "n": 12, "n0": 4, "alpha": 0.01, "radii": [0.0, 0.05],
                 "attacks": [{"name": "PGD", "steps": 2}], "eot_samples": 2}  # fmt: skip


def test_the_certified_threat_gives_the_rows_of_robustseg_certify(bundles, tiny_datalist, tmp_path):
    from common.engines.certification import run_certification

    out = tmp_path / "out"
    run = evaluation(bundles, tiny_datalist, out, attacks=[{"name": "FGSM"}], sweep=None, transfer_source=None,
                     certification={"models": [BASELINE], **CERTIFICATION})  # fmt: skip
    run.run()
    rows = [r for r in load_results(out / "results.csv") if r["threat"] in ("certified", "smoothed")]
    # per subject: a certificate at each radius, the clean smoothed prediction and PGD at the radius > 0
    assert Counter((r["model"], r["threat"]) for r in rows) == {(BASELINE, "certified"): 6, (BASELINE, "smoothed"): 6}
    path, _ = run_certification(bundles[BASELINE], tiny_datalist, tmp_path / "certify", config_files=QUICK,
                                overrides=OVERRIDES, **CERTIFICATION)  # fmt: skip
    alone = {_key(r): r for r in load_results(path)}
    assert set(alone) == {_key(r) for r in rows}
    for row in rows:  # the same seeds, preprocessing and network: the same numbers
        other = alone[_key(row)]
        assert [row[c] for c in ("dice_wt", "dice_tc", "dice_et", "l2", "attack_config")] == [
            other[c] for c in ("dice_wt", "dice_tc", "dice_et", "l2", "attack_config")]
    settings = json.loads((out / "settings.json").read_text())["evaluation"]["certification"]
    assert list(settings) == [BASELINE] and settings[BASELINE]["sigma"] == 0.1
    assert (out / "tables" / "certification_3d.md").is_file()
    before = (out / "results.csv").read_text()
    evaluation(bundles, tiny_datalist, out, attacks=[{"name": "FGSM"}], sweep=None, transfer_source=None,
               certification={"models": [BASELINE], **CERTIFICATION}).run()  # fmt: skip
    assert (out / "results.csv").read_text() == before  # nothing recomputed
    with pytest.raises(RobustsegError, match="holds smoothing certified rows of tiny_baseline"):
        evaluation(bundles, tiny_datalist, out, attacks=[{"name": "FGSM"}], sweep=None, transfer_source=None,
                   certification={"models": [BASELINE], **CERTIFICATION, "n0": 5})  # fmt: skip
