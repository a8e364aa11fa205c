"""The sanity table (common/report/sanity.py): each check passes, fails with its numbers, or is not run."""

from __future__ import annotations

import pytest

from common.report.sanity import CHECKS, NOT_RUN, PASS, build_sanity, sanity_checks
from common.report.schema import load_results
from common.report.tables import build_tables

SUBJECTS = ("s0", "s1", "s2")


def _attack(make_row, model, dice, attack, eps, threat="white-box", steps=1, zero=0.0, source=None):
    rows = []
    for i, subject in enumerate(SUBJECTS):
        row = make_row(model, subject, (dice + 0.01 * i,) * 3, attack=attack, threat=threat, epsilon=eps, steps=steps,
                       iteration=steps, quality=(30, 0.9, 0.01), source_model=source)  # fmt: skip
        row["zero_grad_fraction"] = None if threat == "transfer" else zero
        rows.append(row)
    return rows


def _study(make_row, fgsm=(0.7, 0.6, 0.5), ifgsm=0.4, transfer=0.8, zero=0.0, unbounded=None, noise=None,
           worst_case=False):  # fmt: skip
    rows = [make_row("m", s, (0.9, 0.9, 0.9)) for s in SUBJECTS]
    for eps, dice in zip((0.01, 0.05, 0.1), fgsm, strict=True):
        rows += _attack(make_row, "m", dice, "FGSM", eps, zero=zero)
    rows += _attack(make_row, "m", ifgsm, "i-FGSM", 0.05, steps=10, zero=zero)
    rows += _attack(make_row, "m", transfer, "FGSM", 0.05, threat="transfer", source="other")
    if unbounded is not None:
        rows += _attack(make_row, "m", unbounded, "i-FGSM", 1.0, steps=10)
    if noise is not None:
        rows += _attack(make_row, "m", noise, "random-sign", 0.05)
    if worst_case:  # earlier i-FGSM iterates that hurt less (levelled off by the last 20 %), and the worst case
        final = [r for r in rows if r["attack"] == "i-FGSM" and r["epsilon"] == 0.05]
        rows += [dict(r, iteration=k, dice_wt=r["dice_wt"] + 0.1 * (k < 5)) for r in final for k in range(1, 10)]
        rows += [dict(r, attack="ensemble", threat="worst-case") for r in final]
    return rows


def _checks(make_row, write_csv, tmp_path, **study):
    return sanity_checks(load_results(write_csv(tmp_path / "r.csv", _study(make_row, **study))), "m")


def test_a_sound_evaluation_passes_what_it_ran(make_row, write_csv, tmp_path):
    checks = _checks(make_row, write_csv, tmp_path, unbounded=0.0, noise=0.85, worst_case=True)
    assert checks == dict.fromkeys(CHECKS, PASS)
    checks = _checks(make_row, write_csv, tmp_path)
    assert checks[CHECKS[2]] == NOT_RUN and checks[CHECKS[4]] == NOT_RUN


@pytest.mark.parametrize(
    ("study", "check", "numbers"),
    [
        ({"ifgsm": 0.65}, 0, "i-FGSM 0.660 > FGSM 0.610 at ε = 0.05"),
        ({"fgsm": (0.5, 0.6, 0.55)}, 1, "0.610 at ε = 0.05 > 0.510 at ε = 0.01"),
        ({"unbounded": 0.3}, 2, "lowest Dice 0.300 > 0.05"),
        ({"transfer": 0.5}, 3, "FGSM white-box 0.610 > transfer 0.510 at ε = 0.05"),
        ({"noise": 0.3}, 4, "noise 0.310 <= attack 0.410 at ε = 0.05"),
        ({"zero": 0.9}, 5, "90.0 % of input gradients are 0"),
    ],
)
def test_each_failure_is_shown_with_its_numbers(study, check, numbers, make_row, write_csv, tmp_path):
    checks = _checks(make_row, write_csv, tmp_path, **study)
    assert checks[CHECKS[check]] == f"FAIL: {numbers}"
    assert sum(v.startswith("FAIL") for v in checks.values()) == 1


def test_targeted_transfer_is_not_compared(make_row, write_csv, tmp_path):
    """ti-FGSM aims at its target label: its white-box Dice above its transfer Dice says nothing about masking."""
    rows = _study(make_row)
    rows += _attack(make_row, "m", 0.75, "ti-FGSM", 0.05, steps=10)
    rows += _attack(make_row, "m", 0.7, "ti-FGSM", 0.05, threat="transfer", steps=10, source="other")
    assert sanity_checks(load_results(write_csv(tmp_path / "r.csv", rows)), "m")[CHECKS[3]] == PASS


def test_table_has_one_row_per_model_and_comes_last(make_row, write_csv, tmp_path):
    records = load_results(write_csv(tmp_path / "r.csv", _study(make_row, zero=0.9)))
    table = build_sanity(records, "3d")
    assert table is not None and table.header == ["Model", *CHECKS]
    assert [row[0] for row in table.rows] == ["No defence"] and "1 failure(s)" in table.caption
    assert build_sanity(records, "2d") is None
    assert build_tables(records)[-1].name == "sanity_3d"
