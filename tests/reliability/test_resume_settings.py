"""A rerun with other settings never mixes its results into an earlier run's (issue 16).

An evaluation rerun into the same ``output_dir`` may resume it or add to it (more epsilons, attacks, models), so that
``results.csv`` always holds the rows of one run with the last run's settings; one that would drop or change rows
there (another ε list, other attacks, other weights, other models) is refused with one line naming what differs,
leaving the files as they were. A training rerun with other settings than its checkpoints were made with (another
learning rate, batch size, grid or initial weights) is refused the same way, instead of continuing the old weights
and optimizer state (which would even bring back the old learning rate) under the new settings; raising ``epochs``
continues it.
"""

from __future__ import annotations

import re
import shutil

import pytest

from common.errors import RobustsegError, find_user_error

from ._runs import (
    TRAIN_OVERRIDES,
    check_results,
    copy_training_bundle,
    evaluate,
    read_rows,
    tiny_data,
    tiny_evaluation,
    train,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny evaluation: (settings, output folder, rows). Read-only: tests copy the folder."""
    folder = tmp_path_factory.mktemp("resume_settings")
    settings = tiny_evaluation(folder)
    evaluate(settings, folder / "out")
    return settings, folder / "out", read_rows(folder / "out" / "results.csv")


def _other_bundle(name: str, seed: int, tmp_path):
    from ..engines.conftest import make_bundle

    return str(make_bundle(tmp_path / f"other_{seed}", name, seed=seed))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("epsilons", r"holds 3 rows this run would not write \(e\.g\. FGSM white-box of tiny_baseline on tiny_001 at "
                     r"epsilon 0\.1\); the earlier run set sweep_epsilons=\[0\.05, 0\.1\], this one \[0\.05\]"),
        ("steps", r"holds i-FGSM white-box rows of tiny_baseline at epsilon 0\.05 made by "
                  r"IterativeFGSM\(.*steps=2.*\), but this run configures IterativeFGSM\(.*steps=3"),
        ("attacks", r"rows this run would not write \(e\.g\. i-FGSM white-box of tiny_baseline on tiny_001 at "
                    r"epsilon 0\.05\); the earlier run set attack_specs=.*i-FGSM.*, this one .*ti-FGSM"),
        ("weights", r"holds rows of model tiny_baseline computed with other weights"),
        ("models", r"rows this run would not write .*; the earlier run set models=\[\"tiny_baseline\"\], this one "
                   r"\[\"tiny_other\"\]"),
        ("no settings", r"settings\.json beside it is missing or unreadable"),
    ],
)  # fmt: skip
def test_an_evaluation_rerun_with_other_settings_is_refused_and_changes_nothing(
    case, message, finished, reliability, tmp_path
):
    settings, earlier, reference = finished
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    changes = {
        "epsilons": {"sweep_epsilons": [0.05]},
        "steps": {"attacks": [{"name": "i-FGSM", "steps": 3}]},
        "attacks": {"attacks": [{"name": "ti-FGSM", "steps": 2}]},
        "weights": {"model_bundles": [_other_bundle("tiny_baseline", 7, tmp_path)]},
        "models": {"model_bundles": [_other_bundle("tiny_other", 0, tmp_path)]},
        "no settings": {},
    }[case]
    if case == "no settings":
        (out / "settings.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RobustsegError, match=message) as refused:
        evaluate(settings, out, **changes)
    reliability.fault(f"evaluation rerun with other settings ({case})")
    assert "\n" not in str(refused.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    check_results(out / "results.csv", reference, reliability)


def test_an_evaluation_rerun_that_adds_epsilons_gives_the_rows_of_one_run(finished, reliability, tmp_path):
    """Adding to an evaluation is resuming it: the file then holds what one run with the new settings writes."""
    settings, earlier, _ = finished
    more = {"sweep_epsilons": [0.05, 0.1, 0.2], "attacks": [{"name": "i-FGSM", "steps": 2}, {"name": "FGSM"}]}
    evaluate(settings, tmp_path / "fresh", **more)
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    evaluate(settings, out, **more)
    reliability.fault("evaluation rerun adding epsilons and an attack")
    check_results(out / "results.csv", read_rows(tmp_path / "fresh" / "results.csv"), reliability)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny baseline trained for one epoch: (bundle folder, overrides). Read-only: tests copy it."""
    folder = tmp_path_factory.mktemp("resume_training")
    overrides = {**TRAIN_OVERRIDES, "epochs": 1, "datalist": tiny_data(folder / "data")}
    root = copy_training_bundle(folder)
    train(root, overrides)
    return root, overrides


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 0.01}, r"started with learning_rate=0\.0001, but this run sets learning_rate=0\.01"),
        ({"batch_size": 2, "spatial_size": [32, 32, 48]},
         r"started with spatial_size=\[32, 32, 32\], batch_size=1, but this run sets spatial_size=\[32, 32, 48\], "
         r"batch_size=2"),
        ({"init_weights": "MODEL"}, r"started with init_weights=null, but this run sets init_weights=\".*model\.pt\""),
    ],
)  # fmt: skip
def test_a_training_rerun_with_other_settings_is_refused_and_changes_nothing(
    change, message, trained, reliability, tmp_path
):
    source, overrides = trained
    root = tmp_path / source.name
    shutil.copytree(source, root)
    models = root / "models"
    change = {k: str(models / "model.pt") if v == "MODEL" else v for k, v in change.items()}
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    with pytest.raises(Exception) as raised:  # noqa: B017 - MONAI wraps it: the CLI prints the RobustsegError inside
        train(root, {**overrides, "epochs": 2, **change})
    reliability.fault(f"training rerun with other settings ({', '.join(change)})")
    refused = find_user_error(raised.value)
    assert isinstance(refused, RobustsegError) and re.search(message, str(refused)), raised.value
    assert "\n" not in str(refused) and "move " in str(refused)
    # the record beside model.pt still describes the model (it is written after the resume check)
    assert {p.name: p.read_bytes() for p in models.iterdir() if p.name != ".lock"} == before


def test_a_training_rerun_with_more_epochs_continues_it(trained, tmp_path):
    source, overrides = trained
    root = tmp_path / source.name
    shutil.copytree(source, root)
    train(root, {**overrides, "epochs": 2})
    assert list((root / "models").glob("*checkpoint_epoch=2.pt"))
