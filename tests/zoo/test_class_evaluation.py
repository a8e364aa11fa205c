"""A third-party bundle of a generic task (not BraTS): loading, clean scores as its own inference scores them, attacks
and the worst case per class, ``robustseg attack`` on it, and its errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run

from common.__main__ import main
from common.data.task import ClassTask
from common.engines import load_model_bundle
from common.engines.class_evaluation import CLASS_PAPER_ATTACKS, ClassEvaluation, worst_case_rows
from common.engines.subject_batch import subject_id
from common.engines.subject_batch import test_entries as entries_of
from common.errors import RobustsegError
from common.metrics.dice import class_dice

ENSEMBLE = [
    {"name": "APGD", "loss": "masked_ce", "steps": 4},
    {"name": "APGD", "loss": "js", "steps": 4},
    {"name": "PGD", "loss": "soft_dice", "steps": 4, "restarts": 1},
]


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_a_generic_bundle_loads_as_a_class_task(any_class_bundle: Path, ct_data: Path) -> None:
    """Its classes come from channel_def; one sigmoid channel z is given as the softmax logits (0, z)."""
    model = load_model_bundle(any_class_bundle)
    assert isinstance(model.task, ClassTask)
    assert model.task.names == ("background", "spleen") and model.task.score_names == ("spleen",)
    assert model.adapter["task"]["scored"] == ["spleen"]
    entry = entries_of(str(ct_data))[0]
    image = model.preprocessing(dict(entry))["image"].as_tensor()[None]
    grid = (18, 18, 24) if "resampled" in any_class_bundle.name else (24, 24, 24)  # 1.5 x 1.5 x 2 mm -> 2 mm
    assert image.shape == (1, 1, *grid) and 0 <= float(image.min()) and float(image.max()) <= 1  # windowed
    with torch.no_grad():
        out = model.network(image)
        raw = model.network.inferer(image, model.network.network)
    assert out.shape == (1, 2, *grid)
    if model.adapter["output"]["activation"] == "sigmoid":
        assert torch.equal(out[:, :1], torch.zeros_like(raw)) and torch.equal(out[:, 1:], raw)
    else:
        assert torch.equal(out, raw)


def test_clean_scores_equal_the_bundles_own_inference(any_class_bundle: Path, ct_data: Path, tmp_path: Path) -> None:
    """The evaluator's clean Dice equals the Dice of the label maps that the bundle's own ``inference.json`` writes,
    scored independently."""
    run("run", config_file=str(any_class_bundle / "configs" / "inference.json"), bundle_root=str(any_class_bundle),
        data_list_file_path=str(ct_data), output_dir=str(tmp_path / "own"))  # fmt: skip
    model = load_model_bundle(any_class_bundle)
    rows = _rows(ClassEvaluation([model], ct_data, tmp_path / "eval", attacks=[]).run())
    clean = {r["subject"]: r for r in rows if r["threat"] == "clean"}
    entries = entries_of(str(ct_data))
    assert sorted(clean) == sorted(subject_id(e) for e in entries)
    for entry in entries:
        stem = Path(entry["image"]).name.removesuffix(".nii.gz")
        own = torch.as_tensor(nib.load(tmp_path / "own" / f"{stem}_seg.nii.gz").get_fdata())[None, None].long()
        truth = torch.as_tensor(nib.load(entry["label"]).get_fdata())[None, None].long()
        expected = float(class_dice(own, truth, 2, [1])[0, 0])
        assert float(clean[subject_id(entry)]["dice_spleen"]) == pytest.approx(expected, abs=1e-6)
    assert min(float(r["dice_spleen"]) for r in clean.values()) > 0.5, "the tiny bundle should have learned"


def test_attacks_lower_dice_and_the_worst_case_runs(any_class_bundle: Path, ct_data: Path, tmp_path: Path) -> None:
    model = load_model_bundle(any_class_bundle)
    evaluation = ClassEvaluation([model], ct_data, tmp_path / "eval", CLASS_PAPER_ATTACKS, [0.05], ENSEMBLE)
    rows = _rows(evaluation.run())
    clean = {r["subject"]: float(r["dice_mean"]) for r in rows if r["threat"] == "clean"}
    worst = {r["subject"]: r for r in rows if r["threat"] == "worst-case"}
    assert sorted(worst) == sorted(clean) and len(worst) == 2
    scale = {subject_id(e): float(model.preprocessing(dict(e))["image"].abs().max()) for e in entries_of(str(ct_data))}
    for subject, row in worst.items():
        attacked = [r for r in rows if r["subject"] == subject and r["threat"] == "white-box"]
        assert {(r["attack"], r["loss"]) for r in attacked} >= {
            ("FGSM", "soft_dice"), ("i-FGSM", "soft_dice"), ("ti-FGSM", "soft_dice"), ("random-sign", "soft_dice"),
            ("APGD", "masked_ce"), ("APGD", "js"), ("PGD", "soft_dice")}  # fmt: skip
        assert float(row["dice_mean"]) == min(float(r["dice_mean"]) for r in attacked)
        assert float(row["dice_mean"]) < clean[subject] - 0.2, (subject, row["dice_mean"], clean[subject])
        noise = next(float(r["dice_mean"]) for r in attacked if r["attack"] == "random-sign")
        assert noise > float(row["dice_mean"]), "random sign noise must hurt less than the worst attack"
        assert row["winner"] and row["attack"] == "ensemble"
        for r in attacked:  # inside the ball: epsilon times the subject's largest absolute input
            assert float(r["linf"]) <= 0.05 * scale[subject] * (1 + 1e-5)
    settings = json.loads((tmp_path / "eval" / "settings.json").read_text())
    assert settings["task"]["classes"] == ["background", "spleen"]
    assert "after the bundle's own preprocessing" in settings["evaluation"]["epsilon_space"]
    assert (tmp_path / "eval" / "tables" / f"dice_{any_class_bundle.name}.md").is_file()


def test_the_evaluation_resumes(trained_class_bundle: Path, ct_data: Path, tmp_path: Path) -> None:
    """A rerun with the same settings keeps the rows (the file is unchanged); other settings start afresh."""
    model = load_model_bundle(trained_class_bundle)
    attacks = [{"name": "FGSM"}]
    csv_path = ClassEvaluation([model], ct_data, tmp_path, attacks, [0.05]).run()
    first = csv_path.read_text()
    rows = _rows(csv_path)
    assert len(rows) == 2 * 3  # clean, FGSM, worst case per subject
    ClassEvaluation([model], ct_data, tmp_path, attacks, [0.05]).run()
    assert csv_path.read_text() == first
    ClassEvaluation([model], ct_data, tmp_path, attacks, [0.03, 0.05]).run()
    assert {r["epsilon"] for r in _rows(csv_path)} == {"0.0", "0.03", "0.05"}


def test_robustseg_attack_cli_on_a_generic_bundle(trained_class_bundle: Path, ct_data: Path, tmp_path: Path) -> None:
    """``robustseg attack --preset worst-case`` writes results, per-class tables and a report with the figure."""
    out = tmp_path / "attack"
    main(["attack", "--bundle", str(trained_class_bundle), "--data", str(ct_data), "--out", str(out),
          "--preset", "worst-case", "--epsilons", "[0.03,0.05]", "--ensemble_steps", "2",
          "--device", "cpu"])  # fmt: skip
    rows = _rows(out / "results" / "results.csv")
    assert {(r["attack"], r["loss"]) for r in rows if r["threat"] == "white-box"} >= {
        ("APGD", "soft_dice"), ("APGD", "masked_ce"), ("APGD", "js"), ("APGD", "segpgd"), ("PGD", "soft_dice"),
        ("i-FGSM", "soft_dice")}
    assert {r["steps"] for r in rows if r["attack"] == "APGD"} == {"2"}
    assert len([r for r in rows if r["threat"] == "worst-case"]) == 4  # 2 subjects x 2 epsilons
    report = (out / "report" / "report.html").read_text()
    assert "spleen_tiny" in report and "Where ε lives" in report and "data:image/png;base64," in report
    assert "worst case" in report and "dice_spleen_tiny" in report
    table = (out / "results" / "tables" / "dice_spleen_tiny.md").read_text()
    assert "| spleen | Mean |" in table


def _renamed(root: Path, tmp_path: Path, channels: dict) -> Path:
    """A copy of ``root`` whose metadata names other output channels."""
    copy = Path(shutil.copytree(root, tmp_path / "renamed"))
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = channels
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = len(channels)
    (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    return copy


def _bad_labels(ct_data: Path, tmp_path: Path) -> Path:
    """A copy of the datalist whose first test label holds the value 2 (no class of the bundle)."""
    data = json.loads(ct_data.read_text())
    label = nib.load(data["testing"][0]["label"])
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 2
    path = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(values, label.affine), path)
    data["testing"][0]["label"] = str(path)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    return tmp_path / "bad.json"


@pytest.mark.parametrize(
    "case, message",
    [
        ("mixed", "segment BraTS and the others a generic task"),
        ("input_channels", "input_channels names the MR contrasts of a BraTS bundle"),
        ("two_sigmoid", "2 sigmoid channels of a task that is not BraTS"),
        ("three_classes", "network_def has out_channels 2, but"),
        ("bad_label", "bad_label.nii.gz: labels: values [2]"),
        ("batch_size", "attacked one subject at a time"),
        ("task", "task is 'organs'"),
    ],
)
def test_robustseg_attack_errors_on_generic_bundles(
    case: str, message: str, trained_class_bundle: Path, trained_zoo_bundle: Path, ct_data: Path, tmp_path: Path,
    capsys,
) -> None:  # fmt: skip
    bundle, data, extra = str(trained_class_bundle), str(ct_data), []
    if case == "mixed":
        bundle = f"[{trained_class_bundle},{trained_zoo_bundle}]"
    elif case == "input_channels":
        extra = ["--input_channels", "[t1ce,t1,t2,flair]", "--task", "classes"]
    elif case == "two_sigmoid":
        bundle = str(_renamed(trained_class_bundle, tmp_path, {"0": "liver", "1": "tumour"}))
        extra = ["--output_activation", "sigmoid"]
    elif case == "three_classes":
        bundle = str(_renamed(trained_class_bundle, tmp_path, {"0": "background", "1": "spleen", "2": "liver"}))
    elif case == "bad_label":
        data = str(_bad_labels(ct_data, tmp_path))
    elif case == "batch_size":
        extra = ["--batch_size", "2"]
    elif case == "task":
        extra = ["--task", "organs"]
    with pytest.raises(SystemExit) as exit_info:
        main(["attack", "--bundle", bundle, "--data", data, "--out", str(tmp_path / "out"), "--device", "cpu",
              "--epsilons", "[0.05]", *extra])  # fmt: skip
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line and "third-party bundle" not in line and not line.startswith("robustseg attack:")]  # fmt: skip
    assert len(err) == 1 and message in err[0], err


def test_the_brats_evaluation_refuses_a_generic_bundle(
    trained_class_bundle: Path, ct_data: Path, tmp_path: Path
) -> None:
    from common.engines import RobustnessEvaluation

    with pytest.raises(RobustsegError, match="evaluate them with `robustseg attack`"):
        RobustnessEvaluation([str(trained_class_bundle)], tmp_path, datalist=str(ct_data), device="cpu")


def test_the_task_is_read_from_the_metadata(trained_class_bundle: Path, trained_zoo_bundle: Path) -> None:
    from common.attack import bundle_task

    assert bundle_task(trained_class_bundle, {}) == "classes"
    assert bundle_task(trained_zoo_bundle, {}) == "brats"
    assert bundle_task(trained_class_bundle, {"task": "brats"}) == "brats"
    assert bundle_task(Path("bundles/brats_unet3d_baseline"), {}) == "brats"


def _meta(inputs: dict | None, outputs: dict | None) -> dict:
    fmt: dict = {"inputs": {"image": {}}, "outputs": {"pred": {}}}
    if inputs is not None:
        fmt["inputs"]["image"]["channel_def"] = inputs
    if outputs is not None:
        fmt["outputs"]["pred"]["channel_def"] = outputs
    return {"network_data_format": fmt}


@pytest.mark.parametrize(
    ("inputs", "outputs", "options", "kind"),
    [
        ({"0": "image"}, {"0": "background", "1": "spleen"}, {}, "classes"),
        ({"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}, {"0": "TC", "1": "WT", "2": "ET"}, {}, "brats"),
        (None, {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}, {}, "brats"),
        (None, {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"}, {}, "brats"),
        (None, {"0": "background", "1": "liver", "2": "tumour"}, {}, "classes"),
        ({"0": "image"}, {"0": "background", "1": "spleen"}, {"task": "brats"}, "brats"),
        (None, None, {}, "brats"),  # nothing to go by: BraTS, whose loader names what is missing
        ({"0": "ct"}, None, {"input_channels": ["t1", "t1ce", "t2", "flair"]}, "brats"),
    ],
)
def test_task_kind(inputs, outputs, options, kind):
    from common.engines.zoo_bundle import task_kind

    assert task_kind(_meta(inputs, outputs), "metadata.json", options) == kind


@pytest.mark.parametrize(
    ("outputs", "activation", "names", "expected"),
    [
        ({"0": "background", "1": "spleen"}, None, None, ("softmax", ("background", "spleen"))),
        ({"0": "spleen"}, None, None, ("sigmoid", ("background", "spleen"))),
        ({"0": "spleen"}, "softmax", None, "is one softmax channel"),
        ({"0": "a", "1": "b"}, "sigmoid", None, "2 sigmoid channels"),
        (None, None, None, "no network_data_format.outputs.pred.channel_def"),
        (None, None, ["bg", "kidney", "cyst"], ("softmax", ("bg", "kidney", "cyst"))),
        ({"0": "a", "1": "a"}, None, None, "repeats a class name"),
        ({"0": "a", "1": "b"}, "tanh", None, "output_activation is 'tanh'"),
    ],
)
def test_class_convention(outputs, activation, names, expected):
    from common.engines.zoo_bundle import class_convention

    meta = _meta(None, outputs)
    if isinstance(expected, str):
        with pytest.raises(RobustsegError, match=expected):
            class_convention(meta, "metadata.json", activation, names)
        return
    convention = class_convention(meta, "metadata.json", activation, names)
    assert (convention.activation, convention.class_names) == expected
    assert convention.binary == (expected[0] == "sigmoid")


def test_two_generic_bundles_in_one_run(
    trained_class_bundle: Path, trained_class_sigmoid_bundle: Path, ct_data: Path, tmp_path: Path
) -> None:
    """Bundles of one task are evaluated side by side, each on its own preprocessing: a table and a figure each."""
    out = tmp_path / "attack"
    main(["attack", "--bundle", f"[{trained_class_bundle},{trained_class_sigmoid_bundle}]", "--data", str(ct_data),
          "--out", str(out), "--epsilons", "[0.05]", "--device", "cpu"])  # fmt: skip
    rows = _rows(out / "results" / "results.csv")
    assert {r["model"] for r in rows} == {"spleen_tiny", "spleen_sigmoid"}
    assert {r["model"] for r in rows if r["threat"] == "worst-case"} == {"spleen_tiny", "spleen_sigmoid"}
    for name in ("spleen_tiny", "spleen_sigmoid"):
        assert (out / "results" / "tables" / f"dice_{name}.md").is_file()
    assert sorted(p.name for p in (out / "report").glob("*.png")) == ["dice_vs_epsilon_0.png", "dice_vs_epsilon_1.png"]
    settings = json.loads((out / "results" / "settings.json").read_text())
    assert [m["adapter"]["output"]["activation"] for m in settings["models"]] == ["softmax", "sigmoid"]


@pytest.mark.parametrize(("noise", "winner"), [(0.2, "random-sign (soft_dice)"), (0.9, "APGD (js)")])
def test_the_worst_case_takes_every_input_in_the_ball(noise: float, winner: str) -> None:
    """The random-sign control is an input in the ball like any attack's: it wins the worst case when it is lowest
    (leaving it out could only overstate robustness); one row per epsilon with white-box rows, clean rows ignored."""
    def row(attack: str, loss: str, eps: float, dice: float, threat: str = "white-box") -> dict:
        return {"attack": attack, "loss": loss, "threat": threat, "epsilon": eps, "dice_mean": dice}

    rows = [row("none", "", 0.0, 0.1, "clean"), row("FGSM", "soft_dice", 0.05, 0.6), row("APGD", "js", 0.05, 0.3),
            row("random-sign", "soft_dice", 0.05, noise), row("FGSM", "soft_dice", 0.01, 0.8)]  # fmt: skip
    worst = worst_case_rows(rows, [0.01, 0.05, 0.1])
    assert [(r["epsilon"], r["threat"], r["attack"]) for r in worst] == [(0.01, "worst-case", "ensemble"),
                                                                        (0.05, "worst-case", "ensemble")]  # fmt: skip
    assert worst[1]["winner"] == winner and worst[1]["dice_mean"] == min(noise, 0.3)
