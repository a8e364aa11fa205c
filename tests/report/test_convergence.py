"""Convergence of the worst case (common/report/convergence.py): curves by the formula, verdicts, figure, sanity."""

from __future__ import annotations

import pytest

from common.engines.results_io import add_worst_case_rows
from common.report.convergence import Convergence, convergence, convergence_figures
from common.report.sanity import CHECKS, NOT_RUN, PASS, sanity_checks
from common.report.schema import format_trace, load_results, parse_trace

EPS = 0.05


def _member(make_row, subject, dice, attack, steps, iteration, trace=None, threat="white-box"):
    row = make_row("m", subject, (dice,) * 3, attack=attack, threat=threat, epsilon=EPS, steps=steps,
                   iteration=iteration, quality=(30, 0.9, 0.01))  # fmt: skip
    row["dice_trace"] = format_trace(trace) if trace is not None else None
    return row


def _records(make_row, write_csv, tmp_path, members):
    """``members``: subject -> list of (attack, dice or per-iteration dices, steps, trace)."""
    rows = []
    for subject, jobs in members.items():
        rows.append(make_row("m", subject, (0.9, 0.9, 0.9)))
        for attack, dice, steps, trace in jobs:
            if isinstance(dice, list):
                rows += [_member(make_row, subject, d, attack, steps, k) for k, d in enumerate(dice, 1)]
            else:
                rows.append(_member(make_row, subject, dice, attack, steps, steps, trace))
    path = write_csv(tmp_path / "r.csv", rows)
    add_worst_case_rows(path, [EPS])
    return load_results(path)


def test_trace_cells_round_trip_and_reject_garbage():
    assert parse_trace(format_trace([0.5, 0.25, 0.125])) == [0.5, 0.25, 0.125]
    assert parse_trace("") == [] and parse_trace(None) == []
    with pytest.raises(Exception, match="dice_trace: expected space-separated numbers"):
        parse_trace("0.5 abc")


def test_curve_is_the_mean_over_subjects_of_the_minimum_over_members(make_row, write_csv, tmp_path):
    """Direct computation of W(n) on two subjects: APGD (traced, 5 steps), i-FGSM (3 iterates), FGSM."""
    members = {
        "s0": [("APGD", 0.44, 5, [0.8, 0.6, 0.5, 0.5, 0.45]), ("i-FGSM", [0.7, 0.55, 0.6], 3, None),
               ("FGSM", 0.65, 1, None)],
        "s1": [("APGD", 0.3, 5, [0.3, 0.3, 0.3, 0.3, 0.3]), ("i-FGSM", [0.2, 0.25, 0.22], 3, None),
               ("FGSM", 0.4, 1, None)],
    }  # fmt: skip
    (result,) = convergence(_records(make_row, write_csv, tmp_path, members))
    s0 = [0.65, 0.55, 0.5, 0.5, 0.44]  # min over members of each member's running best, the last APGD point its row
    s1 = [0.2] * 5
    assert result.model == "m" and result.epsilon == EPS and result.subjects == 2 and result.steps == 5
    assert result.curve == pytest.approx([(a + b) / 2 for a, b in zip(s0, s1, strict=True)])
    assert result.iteration_gain == pytest.approx((0.5 - 0.44) / 2)
    assert result.restart_gain is None and result.restart_curve == pytest.approx([(0.44 + 0.2) / 2])
    assert result.converged is False and result.verdict.startswith("NOT CONVERGED: last 20 % of 5 passes: -0.030")
    # the end of the curve is the worst-case rows' mean Dice
    worst = [r for r in load_results(tmp_path / "r.csv") if r["threat"] == "worst-case"]
    assert result.curve[-1] == pytest.approx(sum(float(r["dice_wt"]) for r in worst) / len(worst))


@pytest.mark.parametrize(
    ("second", "converged", "restart_gain"),
    [([0.6] * 5, True, 0.0), ([0.6, 0.55, 0.5, 0.5, 0.5], False, 0.1), ([0.6, 0.6, 0.6, 0.6, 0.595], True, 0.005)],
)
def test_a_restart_that_still_helps_is_not_converged(second, converged, restart_gain, make_row, write_csv, tmp_path):
    trace = [0.8, 0.7, 0.6, 0.6, 0.6, *second]
    members = {"s0": [("APGD", trace[-1], 5, trace), ("FGSM", 0.7, 1, None)]}
    (result,) = convergence(_records(make_row, write_csv, tmp_path, members))
    assert result.passes == 10 and len(result.restart_curve) == 2
    assert result.restart_gain == pytest.approx(restart_gain)
    assert result.iteration_gain == pytest.approx(min(trace[:8]) - min(trace))  # W(8) - W(10)
    assert result.converged is converged
    assert ("restart 2: -" in result.verdict) and result.verdict.startswith("converged" if converged else "NOT")


def test_single_step_members_cannot_be_checked(make_row, write_csv, tmp_path):
    members = {"s0": [("FGSM", 0.7, 1, None)]}
    (result,) = convergence(_records(make_row, write_csv, tmp_path, members))
    assert result.converged is None and result.verdict.startswith("not checked")
    records = load_results(tmp_path / "r.csv")
    assert convergence_figures(records) == []
    assert sanity_checks(records, "m")[CHECKS[6]] == NOT_RUN


@pytest.mark.parametrize(("tail", "expected"), [(0.5, PASS), (0.45, "FAIL: ε = 0.05: NOT CONVERGED")])
def test_sanity_check_and_figure(tail, expected, make_row, write_csv, tmp_path):
    trace = [0.8, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, tail]
    members = {s: [("APGD", tail, 10, trace), ("FGSM", 0.7, 1, None)] for s in ("s0", "s1")}
    records = _records(make_row, write_csv, tmp_path, members)
    assert sanity_checks(records, "m")[CHECKS[6]].startswith(expected)
    (figure,) = convergence_figures(records)
    assert figure.name == "convergence_3d" and figure.png.startswith(b"\x89PNG")
    assert [d["mean"] for d in figure.data] == pytest.approx([min(t, 0.7) for t in trace])  # FGSM: 0.7
    assert ("Not converged: No defence at ε = 0.05." in figure.caption) == (expected != PASS)


def test_without_worst_case_rows_there_is_nothing_to_check(make_row, write_csv, tmp_path):
    rows = [make_row("m", "s0", (0.9, 0.9, 0.9)), _member(make_row, "s0", 0.5, "APGD", 3, 3, [0.6, 0.5, 0.5])]
    assert convergence(load_results(write_csv(tmp_path / "r.csv", rows))) == []


def test_verdict_wording():
    flat = Convergence("m", EPS, 1, 10, (0.5,) * 10, (0.5,))
    assert flat.verdict == "converged (last 20 % of 10 passes: -0.000; one restart, restarts not checked)"
