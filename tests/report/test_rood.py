"""ROOD-MRI scores (common/report/rood.py): the formulas against a direct transcription, the paired test, the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from common.errors import RobustsegError
from common.report.options import ReportOptions
from common.report.rood import (
    ROOD_ALPHA,
    build_rood_table,
    degradation_score,
    overall_score,
    paired_wilcoxon,
    rood_scores,
    severity_weights,
)
from common.report.schema import load_results
from common.report.tables import build_tables


# Boone et al. 2023, written out term by term (no numpy, no shared helper with the module).
def transcribed_overall(m0: float, ms: dict[int, float], alpha: float) -> float:
    numerator, denominator = m0, 1.0
    for s, m in ms.items():
        numerator += alpha**s * m
        denominator += alpha**s
    return numerator / denominator


def transcribed_degradation(m0: float, ms: dict[int, float], alpha: float) -> float:
    return sum(alpha**s * (m0 - m) for s, m in ms.items()) / sum(alpha**s for s in ms)


CASES = [
    (0.9, {1: 0.8, 3: 0.7, 5: 0.5}, 2 / 3),  # the demo's severities
    (0.9, {1: 0.85, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.4}, 2 / 3),  # all five
    (0.6, {2: 0.7, 4: 0.65}, 0.5),  # a Dice that rises: negative degradation
    (0.8, {1: 0.1, 5: 0.0}, 1.5),  # alpha > 1 weighs the severe levels more
]


@pytest.mark.parametrize(("clean", "corrupted", "alpha"), CASES)
def test_scores_match_the_transcribed_formulas(clean, corrupted, alpha):
    assert overall_score(clean, corrupted, alpha) == pytest.approx(transcribed_overall(clean, corrupted, alpha))
    assert degradation_score(clean, corrupted, alpha) == pytest.approx(transcribed_degradation(clean, corrupted, alpha))


def test_a_hand_computed_case():
    # w1 = 2/3: OA = (2/3 * 0.6 + 0.9) / (2/3 + 1) = 1.3 / (5/3) = 0.78; D = 0.9 - 0.6.
    assert overall_score(0.9, {1: 0.6}) == pytest.approx(0.78)
    assert degradation_score(0.9, {1: 0.6}) == pytest.approx(0.3)
    assert severity_weights((1, 3, 5)) == pytest.approx([2 / 3, 8 / 27, 32 / 243])


@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("alpha", [ROOD_ALPHA, 0.3, 1.0])
def test_one_severity_reduces_to_a_two_point_mean_and_the_plain_drop(severity, alpha):
    clean, corrupted = 0.88, 0.61
    weight = alpha**severity
    assert overall_score(clean, {severity: corrupted}, alpha) == pytest.approx(
        (weight * corrupted + clean) / (weight + 1)
    )
    assert degradation_score(clean, {severity: corrupted}, alpha) == pytest.approx(clean - corrupted)


def test_alpha_one_weighs_every_severity_alike():
    corrupted = {1: 0.8, 3: 0.6, 5: 0.4}
    assert overall_score(0.9, corrupted, 1.0) == pytest.approx(np.mean([0.9, 0.8, 0.6, 0.4]))
    assert degradation_score(0.9, corrupted, 1.0) == pytest.approx(0.9 - 0.6)


@pytest.mark.parametrize(
    ("clean", "corrupted", "alpha", "message"),
    [
        (0.9, {1: 0.8}, 0.0, "alpha must be a finite number > 0"),
        (0.9, {1: 0.8}, -0.5, "alpha must be a finite number > 0"),
        (0.9, {1: 0.8}, math.nan, "alpha must be a finite number > 0"),
        (0.9, {1: 0.8}, True, "alpha must be a finite number > 0"),
        (0.9, {}, ROOD_ALPHA, "severities must name at least one"),
        (0.9, {0: 0.8}, ROOD_ALPHA, "severity must be an integer >= 1"),
        (0.9, {1.5: 0.8}, ROOD_ALPHA, "severity must be an integer >= 1"),
        (math.nan, {1: 0.8}, ROOD_ALPHA, "clean must be a finite number"),
        ("0.9", {1: 0.8}, ROOD_ALPHA, "clean must be a finite number"),
        (0.9, {1: math.inf}, ROOD_ALPHA, "corrupted must map each severity to a finite number"),
        (0.9, [0.8], ROOD_ALPHA, "corrupted must map severity -> metric"),
    ],
)
@pytest.mark.parametrize("score", [overall_score, degradation_score])
def test_bad_arguments_are_named(score, clean, corrupted, alpha, message):
    with pytest.raises(RobustsegError, match=message):
        score(clean, corrupted, alpha)


def test_repeated_severities_are_refused():
    with pytest.raises(RobustsegError, match=r"severities must not repeat a level, got \[1, 1\]"):
        severity_weights([1, 1])


# ------------------------------------------------------------------------------------------------ the paired test
@pytest.mark.parametrize(
    ("a", "b", "p", "note"),
    [
        ([0.8, 0.7, 0.9], [0.7, 0.6, 0.8], math.nan, "3 paired subjects < 6"),
        ([0.5] * 8, [0.5] * 8, 1.0, "all paired differences are zero"),
        ([0.5] * 5 + [math.nan] * 3, [0.4] * 8, math.nan, "non-finite scores"),
        ([], [], math.nan, "0 paired subjects < 6"),
    ],
)
def test_untestable_pairs_give_a_reason_not_an_error(a, b, p, note):
    test = paired_wilcoxon(a, b)
    assert test.note == note
    assert test.n == len(a)
    assert (math.isnan(test.p) and math.isnan(p)) or test.p == p
    assert test.tested == (not math.isnan(p))


@pytest.mark.parametrize(
    "differences",
    [
        [0.01, 0.02, 0.03, -0.04, 0.05, 0.06, 0.07, 0.08],  # no ties: exact distribution
        [0.02, 0.02, 0.02, -0.02, 0.03, 0.03, 0.0, 0.05],  # ties and a zero difference
    ],
)
def test_a_testable_pair_gives_scipys_two_sided_p(differences):
    b = np.linspace(0.5, 0.8, len(differences))
    a = b + np.array(differences)
    test = paired_wilcoxon(a, b)
    expected = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue
    assert test.tested and test.note == ""
    assert test.p == pytest.approx(expected)


def test_unpaired_samples_are_refused():
    with pytest.raises(RobustsegError, match="a and b must be paired"):
        paired_wilcoxon([0.1, 0.2], [0.1])


# ------------------------------------------------------------------------------------------------------ the table
def _expected(rows: list[dict], model: str, alpha: float = ROOD_ALPHA) -> tuple[float, float, dict[str, float]]:
    """A model's overall and degradation and its per-subject overall scores, from the raw rows."""

    def dice(r):
        return (r["dice_wt"] + r["dice_tc"] + r["dice_et"]) / 3

    clean = {r["subject"]: dice(r) for r in rows if r["model"] == model and r["threat"] == "clean"}
    cells: dict[str, dict[int, dict[str, float]]] = {}
    for r in rows:
        if r["model"] == model and r["threat"] == "corruption":
            cells.setdefault(r["attack"], {}).setdefault(r["severity"], {})[r["subject"]] = dice(r)
    m0 = np.mean(list(clean.values()))
    ms = {c: {s: np.mean(list(v.values())) for s, v in by_s.items()} for c, by_s in cells.items()}
    overall = np.mean([transcribed_overall(m0, ms[c], alpha) for c in ms])
    degradation = np.mean([transcribed_degradation(m0, ms[c], alpha) for c in ms])
    per_subject = {
        subject: (
            np.mean([transcribed_overall(clean[subject], {s: v[subject] for s, v in by_s.items()}, alpha)
                     for by_s in cells.values()]),
            np.mean([transcribed_degradation(clean[subject], {s: v[subject] for s, v in by_s.items()}, alpha)
                     for by_s in cells.values()]),
        )
        for subject in clean
    }  # fmt: skip
    return float(overall), float(degradation), per_subject


def test_table_scores_and_tests_follow_the_formulas(make_corruption_rows, write_csv, tmp_path):
    rows = make_corruption_rows(subjects=8)
    records = load_results(write_csv(tmp_path / "r.csv", rows))
    table = build_rood_table(records, "3d")
    assert table is not None and table.name == "rood_3d"
    assert [row[0] for row in table.rows] == ["No defence", "Adversarial training (eps=0.05)",
                                              "Noise augmentation (r=0.01)"]  # fmt: skip
    _, _, base_subjects = _expected(rows, "base")
    raw = {}
    for row, model in zip(table.rows, ("base", "at", "aug"), strict=True):
        overall, degradation, subjects = _expected(rows, model)
        assert row[2:4] == [f"{overall:.3f}", f"{degradation:.3f}"]
        # the mean of the per-subject scores is the model's score when every cell is complete
        assert np.mean([v[0] for v in subjects.values()]) == pytest.approx(overall)
        assert np.mean([v[1] for v in subjects.values()]) == pytest.approx(degradation)
        line = next(c for c in table.csv_rows if c[0] == model and c[3] == "all" and c[4] == "mean")
        assert line[6:8] == [pytest.approx(overall), pytest.approx(degradation)]
        if model == "base":
            assert row[4:] == ["-", "-", "-", "8", "-", "-"]
            continue
        a = [subjects[s][0] for s in sorted(subjects)]
        b = [base_subjects[s][0] for s in sorted(subjects)]
        raw[model] = wilcoxon(a, b, zero_method="wilcox").pvalue
        assert row[4] == f"{np.mean(np.subtract(a, b)):+.3f}"
        # n paired, p, and p Bonferroni-corrected over the two defended models
        assert line[11:14] == [8, pytest.approx(raw[model]), pytest.approx(min(1.0, 2 * raw[model]))]
        assert row[7] == "8"
        # the same paired test of the per-subject degradation (robustness without the clean Dice)
        da = [subjects[s][1] for s in sorted(subjects)]
        db = [base_subjects[s][1] for s in sorted(subjects)]
        p_degradation = wilcoxon(da, db, zero_method="wilcox").pvalue
        assert row[8] == f"{np.mean(np.subtract(da, db)):+.3f}"
        assert line[15:18] == [pytest.approx(np.mean(np.subtract(da, db))), pytest.approx(p_degradation),
                               pytest.approx(min(1.0, 2 * p_degradation))]  # fmt: skip
    assert "1, 3, 5" in table.caption and "w1 = 0.667, w3 = 0.296, w5 = 0.132" in table.caption
    assert table.extra[0][1] == ["Corruption", "No defence", "Adversarial training (eps=0.05)",
                                 "Noise augmentation (r=0.01)"]  # fmt: skip
    assert [r[0] for r in table.extra[0][2]] == ["gibbs", "missing_flair"]


def test_region_scores_are_in_the_csv(make_corruption_rows, write_csv, tmp_path):
    rows = make_corruption_rows(subjects=6)
    records = load_results(write_csv(tmp_path / "r.csv", rows))
    scores = rood_scores(records, "3d")["aug"]
    clean = np.mean([r["dice_tc"] for r in rows if r["model"] == "aug" and r["threat"] == "clean"])
    at = {s: np.mean([r["dice_tc"] for r in rows if r["model"] == "aug" and r["attack"] == "gibbs"
                      and r["severity"] == s]) for s in (1, 3, 5)}  # fmt: skip
    assert scores.per_corruption["TC"]["gibbs"] == (
        pytest.approx(transcribed_overall(clean, at, ROOD_ALPHA)),
        pytest.approx(transcribed_degradation(clean, at, ROOD_ALPHA)),
    )


def test_one_severity_only_gives_the_plain_drop(make_corruption_rows, write_csv, tmp_path):
    rows = make_corruption_rows(subjects=6, severities=(3,))
    table = build_rood_table(load_results(write_csv(tmp_path / "r.csv", rows)), "3d")
    clean = np.mean([(r["dice_wt"] + r["dice_tc"] + r["dice_et"]) / 3 for r in rows
                     if r["model"] == "base" and r["threat"] == "clean"])  # fmt: skip
    drops = [
        clean - np.mean([(r["dice_wt"] + r["dice_tc"] + r["dice_et"]) / 3 for r in rows
                         if r["model"] == "base" and r["attack"] == c])
        for c in ("gibbs", "missing_flair")
    ]  # fmt: skip
    assert table.rows[0][3] == f"{np.mean(drops):.3f}"
    assert "severities present, 3 " in table.caption


def test_too_few_subjects_give_no_p_and_say_why(make_corruption_rows, write_csv, tmp_path):
    records = load_results(write_csv(tmp_path / "r.csv", make_corruption_rows(subjects=3)))
    table = build_rood_table(records, "3d")
    assert [row[5:8] + row[9:] for row in table.rows[1:]] == [["n/a", "n/a", "3", "n/a"]] * 2
    assert "Adversarial training (eps=0.05): no test: 3 paired subjects < 6." in table.notes
    assert [t.name for t in build_tables(records)][-3:] == ["corruptions_3d", "corruption_calibration_3d", "rood_3d"]


@pytest.mark.parametrize(
    ("models", "baseline", "why"),
    [
        ((("aug", "noise_augmentation", "r=0.01"), ("at", "adversarial_training", "eps=0.05")), None,
         "No tests: no undefended model (defense 'none') has corruption rows."),
        ((("b1", "none", None), ("b2", "none", None)), None, "No tests: several undefended models"),
    ],
)  # fmt: skip
def test_without_a_single_reference_the_scores_stand_alone(make_corruption_rows, write_csv, tmp_path, models,
                                                           baseline, why):  # fmt: skip
    records = load_results(write_csv(tmp_path / "r.csv", make_corruption_rows(models=models)))
    table = build_rood_table(records, "3d")
    assert all(row[4:7] == ["n/a"] * 3 for row in table.rows)
    assert any(note.startswith(why) for note in table.notes)


def test_a_chosen_baseline_is_the_reference(make_corruption_rows, write_csv, tmp_path):
    models = (("b1", "none", None), ("b2", "none", None))
    records = load_results(write_csv(tmp_path / "r.csv", make_corruption_rows(models=models)))
    table = build_rood_table(records, "3d", ReportOptions(baseline="b2"))
    assert [row[:1] + row[4:7] for row in table.rows][1] == ["No defence [b2]", "-", "-", "-"]
    assert table.rows[0][0] == "No defence [b1]" and table.rows[0][5] != "n/a"
    assert "(`b2`)" in table.caption


def test_no_corruption_rows_no_table(make_corruption_rows, write_csv, tmp_path):
    rows = [r for r in make_corruption_rows() if r["threat"] != "corruption"]
    assert build_rood_table(load_results(write_csv(tmp_path / "r.csv", rows)), "3d") is None


def test_duplicate_subject_rows_are_refused(make_corruption_rows, write_csv, tmp_path):
    rows = make_corruption_rows(subjects=6)
    rows.append(next(r for r in rows if r["threat"] == "corruption"))
    with pytest.raises(RobustsegError, match="subject s0 has several rows for model base corruption gibbs"):
        build_rood_table(load_results(write_csv(tmp_path / "r.csv", rows)), "3d")


@pytest.mark.parametrize(("value", "text"), [(-0.0004, "+0.000"), (0.0004, "+0.000"), (-0.0006, "-0.001"),
                                             (0.0126, "+0.013"), (float("nan"), "n/a")])  # fmt: skip
def test_differences_are_signed_and_never_negative_zero(value, text):
    from common.report.rood import _signed

    assert _signed(value) == text
