"""The robustness evaluation and ``robustseg attack`` on a zoo-style bundle: clean scores as the bundle's own
inference scores them, attacks and the worst case on sigmoid region outputs, the CLI and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.bundle import run

from common.__main__ import main
from common.engines import RobustnessEvaluation
from common.engines.subject_batch import subject_id
from common.engines.subject_batch import test_entries as entries_of
from common.metrics.dice import region_dice
from common.report import load_results

from .zoo_bundles import zoo_datalist

PAPER = [{"name": "FGSM"}, {"name": "i-FGSM", "steps": 3}]
ENSEMBLE = [
    {"name": "APGD", "loss": "masked_ce", "steps": 4},
    {"name": "APGD", "loss": "segpgd", "steps": 4},
    {"name": "PGD", "loss": "soft_dice", "steps": 4, "restarts": 1},
]


def _mean(row: dict) -> float:
    return (row["dice_wt"] + row["dice_tc"] + row["dice_et"]) / 3


def _evaluate(bundle: Path, datalist: Path, out: Path, attacks: list[dict], **kwargs) -> list[dict]:
    evaluation = RobustnessEvaluation(
        [str(bundle)], out, datalist=str(datalist), attacks=attacks, sweep=None, device="cpu", progress=False,
        tables=False, batch_size=2, **kwargs,
    )  # fmt: skip
    return load_results(evaluation.run())


def test_clean_scores_equal_the_bundles_own_inference(any_zoo_bundle: Path, zoo_data: Path, tmp_path: Path) -> None:
    """The evaluator's clean Dice equals the Dice of the label maps the bundle's own ``inference.json`` writes
    (``python -m monai.bundle run --config_file configs/inference.json``), scored independently."""
    datalist = zoo_datalist(zoo_data, tmp_path / "zoo_datalist.json")
    run(
        "run",
        config_file=str(any_zoo_bundle / "configs" / "inference.json"),
        bundle_root=str(any_zoo_bundle),
        data_list_file_path=str(datalist),
        dataset_dir=str(zoo_data.parent),
        output_dir=str(tmp_path / "own"),
    )
    rows = _evaluate(any_zoo_bundle, zoo_data, tmp_path / "eval", attacks=[], adaptive=False)
    clean = {r["subject"]: r for r in rows if r["threat"] == "clean"}
    entries = entries_of(str(zoo_data))
    assert sorted(clean) == sorted(subject_id(e) for e in entries)
    for entry in entries:
        stem = Path(entry["image"][1]).name.removesuffix(".nii.gz")  # the bundle's first input: T1c
        own = torch.as_tensor(nib.load(tmp_path / "own" / f"{stem}_seg.nii.gz").get_fdata())[None, None]
        truth = torch.as_tensor(nib.load(entry["label"]).get_fdata())[None, None]
        expected = region_dice(own, truth)[0]
        row = clean[subject_id(entry)]
        got = torch.tensor([row["dice_wt"], row["dice_tc"], row["dice_et"]], dtype=expected.dtype)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert row["model"] == any_zoo_bundle.name and row["defense"] == "none"
    assert max(r["dice_wt"] for r in clean.values()) > 0.3, "the tiny bundle should have learned something"


def test_attacks_lower_dice_and_the_worst_case_runs(any_zoo_bundle: Path, zoo_data: Path, tmp_path: Path) -> None:
    attacks = [*PAPER, *ENSEMBLE, {"name": "ti-FGSM", "steps": 3, "target": 1}]
    rows = _evaluate(any_zoo_bundle, zoo_data, tmp_path / "eval", attacks=attacks, epsilon=0.1)
    clean = {r["subject"]: _mean(r) for r in rows if r["threat"] == "clean"}
    worst = {r["subject"]: r for r in rows if r["threat"] == "worst-case"}
    assert sorted(worst) == sorted(clean)
    for subject, row in worst.items():
        assert _mean(row) < clean[subject] - 0.05, (subject, _mean(row), clean[subject])
        assert row["winner"]
    settings = json.loads((tmp_path / "eval" / "settings.json").read_text())
    activation = "sigmoid" if any_zoo_bundle.name == "zoo_brats_tiny" else "softmax"
    assert settings["models"][0]["adapter"]["output"]["activation"] == activation
    assert "largest absolute z-score" in settings["evaluation"]["epsilon_space"]
    for row in rows:
        if row["threat"] == "white-box":
            assert row["zero_grad_fraction"] is not None and row["zero_grad_fraction"] < 0.5
    # epsilon is relative to the subject's largest absolute z-score: linf is 0.1 of it, in z units
    images = {}
    from common.engines import load_model_bundle

    model = load_model_bundle(any_zoo_bundle)
    for entry in entries_of(str(zoo_data)):
        images[subject_id(entry)] = float(model.preprocessing(dict(entry))["image"].abs().max())
    for row in rows:
        if row["threat"] == "white-box" and row["iteration"] == row["steps"] and row["attack"] != "ti-FGSM":
            assert row["linf"] <= 0.1 * images[row["subject"]] * (1 + 1e-5)
            assert row["linf"] > 0.05 * images[row["subject"]]


def test_robustseg_attack_cli(trained_zoo_bundle: Path, zoo_data: Path, tmp_path: Path, capsys) -> None:
    """``robustseg attack`` writes results, tables and a report with clean and attacked Dice per region."""
    out = tmp_path / "attack"
    main(["attack", "--bundle", str(trained_zoo_bundle), "--data", str(zoo_data.parent), "--out", str(out),
          "--epsilons", "[0.05]", "--device", "cpu"])  # fmt: skip
    rows = load_results(out / "results" / "results.csv")
    threats = {r["threat"] for r in rows}
    assert {"clean", "white-box", "worst-case"} <= threats
    assert {r["attack"] for r in rows if r["threat"] == "white-box"} >= {"FGSM", "i-FGSM", "ti-FGSM"}
    assert {r["epsilon"] for r in rows if r["threat"] == "white-box"} == {0.05}
    report = (out / "report" / "report.html").read_text()
    assert "zoo_brats_tiny" in report and "Where ε lives" in report
    assert (out / "results" / "tables").is_dir()


def test_two_third_party_bundles_in_one_run(
    trained_zoo_bundle: Path, trained_zoo_softmax_bundle: Path, zoo_data: Path, tmp_path: Path
) -> None:
    """Two bundles with the same preprocessing are attacked in one run (``--bundle "[a,b]"``), with transfer from the
    first to the second; the settings record each one's output convention."""
    out = tmp_path / "attack"
    bundles = f"[{trained_zoo_bundle},{trained_zoo_softmax_bundle}]"
    main(["attack", "--bundle", bundles, "--data", str(zoo_data), "--out", str(out), "--epsilons", "[0.05]",
          "--device", "cpu"])  # fmt: skip
    rows = load_results(out / "results" / "results.csv")
    transfer = [r for r in rows if r["threat"] == "transfer"]
    assert transfer and {r["model"] for r in transfer} == {"zoo_brats_softmax"}
    assert {r["source_model"] for r in transfer} == {"zoo_brats_tiny"}
    settings = json.loads((out / "results" / "settings.json").read_text())
    assert [m["adapter"]["output"]["activation"] for m in settings["models"]] == ["sigmoid", "softmax"]


def test_robustseg_attack_cli_worst_case(trained_zoo_softmax_bundle: Path, zoo_data: Path, tmp_path: Path) -> None:
    """``--preset worst-case`` adds the APGD/PGD ensemble (here 2 steps per member) and its worst case."""
    out = tmp_path / "attack"
    main(["attack", "--bundle", str(trained_zoo_softmax_bundle), "--data", str(zoo_data), "--out", str(out),
          "--preset", "worst-case", "--epsilons", "[0.05]", "--ensemble_steps", "2", "--device", "cpu"])  # fmt: skip
    rows = load_results(out / "results" / "results.csv")
    ensemble = {(r["attack"], r["loss"]) for r in rows if r["threat"] == "white-box" and r["epsilon"] == 0.05}
    members = {("APGD", "soft_dice"), ("APGD", "masked_ce"), ("APGD", "js"), ("APGD", "segpgd"), ("PGD", "soft_dice")}
    assert members <= ensemble
    assert {r["steps"] for r in rows if r["attack"] == "APGD"} == {2}
    worst = [r for r in rows if r["threat"] == "worst-case"]
    assert len(worst) == 2 and all(r["winner"] for r in worst)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/nowhere"], "--data not found"),
        (["--data", "{tmp}"], "no datalist.json in this folder"),
        (["--data", "{data}", "--preset", "strongest"], "preset"),
        (["--data", "{data}", "--epsilons", "[-0.1]"], "epsilons: epsilon"),
        (["--data", "{data}", "--output_activation", "relu"], "output_activation is 'relu'"),
        (["--data", "{data}", "--overrides", "{{nope"], "overrides is"),
        (["--data", "{data}", "--ensemble_steps", "5"], "the ensemble runs only with --preset worst-case"),
        (["--data", "{data}", "--preset", "worst-case", "--ensemble_steps", "0"], "ensemble_steps"),
    ],
)
def test_robustseg_attack_errors(
    trained_zoo_bundle: Path, zoo_data: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    argv = [a.format(tmp=tmp_path, data=zoo_data) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["attack", "--bundle", str(trained_zoo_bundle), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line and "third-party bundle" not in line]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "results" / "results.csv").exists()
