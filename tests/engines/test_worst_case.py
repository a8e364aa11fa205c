"""The worst-case threat (common/engines/worst_case.py): per model, subject and epsilon, the lowest mean Dice over
every adversarial input of the other threats, named in ``winner``."""

from __future__ import annotations

import pytest

from common.engines.worst_case import with_worst_case_rows, worst_case_rows
from common.report import load_results
from common.report.schema import COLUMN_NAMES

from .conftest import BASELINE, DISTILLED, SUBJECTS


def _row(subject="s1", attack="i-FGSM", threat="white-box", eps=0.05, dice=(0.5, 0.5, 0.5), iteration=3, steps=3,
         loss="soft_dice", seconds=1.0, model="m", source=None):  # fmt: skip
    row = dict.fromkeys(COLUMN_NAMES, "")
    clean = threat == "clean"
    row.update({
        "model": model, "net": "3d", "defense": "none", "subject": subject, "attack": "none" if clean else attack,
        "threat": threat, "source_model": "" if clean else (source or model), "loss": "" if clean else loss,
        "epsilon": repr(0.0 if clean else eps), "steps": str(0 if clean else steps),
        "iteration": str(0 if clean else iteration), "dice_wt": repr(dice[0]), "dice_tc": repr(dice[1]),
        "dice_et": repr(dice[2]), "linf": "0.01", "l2": "0.1", "seconds": "" if clean else repr(seconds),
        "attack_config": "" if clean else f"{attack}(...)",
    })  # fmt: skip
    return row


def _mean(row):
    return sum(float(row[k]) for k in ("dice_wt", "dice_tc", "dice_et")) / 3


@pytest.mark.parametrize("winner_index", [1, 2, 3, 4])
def test_the_lowest_mean_dice_of_any_member_input_wins(winner_index):
    """Every iterate, targeted attacks, adaptive and transfer inputs compete; clean rows and other epsilons do not."""
    members = [
        _row(attack="i-FGSM", iteration=1, dice=(0.6, 0.6, 0.6), seconds=1.0),
        _row(attack="i-FGSM", iteration=2, dice=(0.5, 0.5, 0.5), seconds=2.0),
        _row(attack="ti-FGSM", iteration=3, dice=(0.55, 0.55, 0.55), seconds=3.0),
        _row(attack="i-FGSM", threat="adaptive", dice=(0.52, 0.52, 0.52), seconds=4.0),
        _row(attack="FGSM", threat="transfer", source="other", steps=1, iteration=1, dice=(0.58, 0.58, 0.58),
             seconds=0.5),  # fmt: skip
    ]
    members[winner_index]["dice_et"] = "0.0"  # this member now has the lowest mean Dice
    others = [_row(threat="clean", dice=(0.0, 0.0, 0.0)), _row(eps=0.03, dice=(0.0, 0.0, 0.0))]
    (worst,) = worst_case_rows(members + others, [0.05])
    assert _mean(worst) == pytest.approx(min(_mean(m) for m in members))
    assert (worst["attack"], worst["threat"]) == ("ensemble", "worst-case")
    won = members[winner_index]
    assert worst["winner"].startswith(f"{won['attack']} ({won['threat']}")
    assert f"iteration {won['iteration']}/{won['steps']}" in worst["winner"]
    assert ("from other" in worst["winner"]) == (won["threat"] == "transfer")
    for name in ("dice_wt", "dice_tc", "dice_et", "linf", "l2", "steps", "iteration", "loss", "source_model"):
        assert worst[name] == won[name]
    # the ensemble's cost: each member attack's time up to its last row (i-FGSM white-box 2 s, not 1 + 2)
    assert float(worst["seconds"]) == pytest.approx(2.0 + 3.0 + 4.0 + 0.5)
    assert "5 adversarial inputs of 4 attacks" in worst["attack_config"]


def test_ties_go_to_the_first_member_and_groups_are_per_model_subject_epsilon():
    rows = [_row(subject=s, model=m, eps=e, attack=a, dice=(0.3, 0.3, 0.3))
            for s in ("a", "b") for m in ("m1", "m2") for e in (0.01, 0.05) for a in ("FGSM", "i-FGSM")]  # fmt: skip
    worst = worst_case_rows(rows, [0.01, 0.05, 0.2])
    assert [(r["subject"], r["model"], float(r["epsilon"])) for r in worst] == [
        (s, m, e) for s in ("a", "b") for m in ("m1", "m2") for e in (0.01, 0.05)
    ]
    assert all(r["winner"].startswith("FGSM") for r in worst)
    assert worst_case_rows(rows, []) == []


def test_rows_are_replaced_at_the_end_and_idempotent():
    rows = [_row(subject="a", threat="clean"), _row(subject="a", dice=(0.4, 0.4, 0.4)),
            _row(subject="b", threat="clean"), _row(subject="b", dice=(0.2, 0.2, 0.2))]  # fmt: skip
    once = with_worst_case_rows(rows, [0.05])
    assert [(r["subject"], r["threat"]) for r in once] == [
        ("a", "clean"), ("a", "white-box"), ("b", "clean"), ("b", "white-box"), ("a", "worst-case"), ("b", "worst-case")
    ]
    assert with_worst_case_rows(once, [0.05]) == once
    # an earlier run's worst-case rows are recomputed, not kept
    stale = [{**r, "dice_wt": "1.0"} if r["threat"] == "worst-case" else r for r in once]
    assert with_worst_case_rows(stale, [0.05]) == once
    assert with_worst_case_rows(once, []) == [dict(r) for r in rows]


def test_evaluation_writes_the_worst_case_of_its_rows(finished):
    """In a finished evaluation: per model and subject, the worst case at 0.05 is at most every attack there (the
    paper's three, adaptive and transfer), equal to the lowest of them, and the CSV still validates."""
    out, rows = finished
    assert load_results(out / "results.csv") == rows
    for model in (BASELINE, DISTILLED):
        for subject in SUBJECTS:
            members = [r for r in rows if r["model"] == model and r["subject"] == subject and r["epsilon"] == 0.05
                       and r["threat"] in ("white-box", "adaptive", "transfer")]  # fmt: skip
            (worst,) = [r for r in rows if r["model"] == model and r["subject"] == subject
                        and r["threat"] == "worst-case"]  # fmt: skip
            means = [_mean(r) for r in members]
            assert _mean(worst) == pytest.approx(min(means), abs=1e-12)
            assert {r["threat"] for r in members} >= ({"white-box", "adaptive", "transfer"} if model == DISTILLED
                                                      else {"white-box"})  # fmt: skip
            assert worst["attack"] == "ensemble" and worst["winner"]
