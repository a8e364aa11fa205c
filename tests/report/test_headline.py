"""The headline table (common/report/headline.py): clean, FGSM and worst-case Dice per model, the area under the
worst-case curve and each defence against the baseline, from hand-made rows with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import RobustsegError
from common.report.headline import build_headline
from common.report.schema import load_results
from common.report.tables import build_tables

SUBJECTS = [f"s{i}" for i in range(6)]
MODELS = {"base": ("none", None), "adv": ("adversarial_training", "eps=0.05")}
# mean Dice per (model, what): clean, FGSM at 0.05, worst case at 0.01 and 0.05 (+ 0.01 * subject index)
DICE = {
    "base": {"clean": 0.9, "fgsm": 0.7, 0.01: 0.6, 0.05: 0.2},
    "adv": {"clean": 0.88, "fgsm": 0.8, 0.01: 0.8, 0.05: 0.6},
}


def _rows(make_row, winners=None):
    rows = []
    for model, (defense, param) in MODELS.items():
        for i, subject in enumerate(SUBJECTS):
            d = {k: v + 0.01 * i for k, v in DICE[model].items()}
            common = {"defense": defense, "defense_param": param}
            rows.append(make_row(model, subject, (d["clean"],) * 3, **common))
            rows.append(make_row(model, subject, (d["fgsm"],) * 3, attack="FGSM", threat="white-box",
                                 epsilon=0.05, steps=1, iteration=1, quality=(30, 0.9, 0.01), **common))  # fmt: skip
            for eps in (0.01, 0.05):
                row = make_row(model, subject, (d[eps] + 0.05, d[eps] - 0.05, d[eps]), attack="ensemble",
                               threat="worst-case", epsilon=eps, steps=10, iteration=10, quality=(30, 0.9, 0.01),
                               attack_config="worst case over 3 inputs", **common)  # fmt: skip
                row["winner"] = (winners or {}).get((model, i), "APGD (white-box, js, iteration 10/10)")
                rows.append(row)
    return rows


def test_cells_area_and_test_have_the_known_values(make_row, write_csv, tmp_path):
    winners = {("adv", 0): "PGD (white-box, soft_dice, iteration 10/10)"}
    records = load_results(write_csv(tmp_path / "r.csv", _rows(make_row, winners)))
    table = build_headline(records, "3d", source="r.csv")
    assert table is not None and table.name == "headline_3d"
    assert table.header[:5] == ["Model", "Clean", "FGSM ε = 0.05", "Worst case ε = 0.01", "Worst case ε = 0.05"]
    base, adv = table.rows  # defence order: the baseline first
    assert base[0] == "No defence (baseline)" and adv[0].startswith("Adversarial training")
    shift = 0.01 * np.arange(len(SUBJECTS))
    for row, model in ((base, "base"), (adv, "adv")):
        for column, key in ((1, "clean"), (2, "fgsm"), (3, 0.01), (4, 0.05)):
            values = DICE[model][key] + shift
            assert row[column] == f"{values.mean():.3f} ± {values.std(ddof=1):.3f}", (model, key)
        # the area by hand: trapezoids over (0, clean), (0.01, w1), (0.05, w5), divided by 0.05
        clean, w1, w5 = (DICE[model][k] + shift for k in ("clean", 0.01, 0.05))
        area = (0.01 * (clean + w1) / 2 + 0.04 * (w1 + w5) / 2) / 0.05
        assert row[5] == f"{area.mean():.3f} ± {area.std(ddof=1):.3f}"
    # every subject's area is larger for adv: the exact Wilcoxon p for n = 6 is 2/64, one comparison
    assert base[6] == "-" and adv[6] == "0.0312\\*"
    assert base[7] == "APGD (white-box, js, iteration 10/10) (6/6)"
    assert adv[7] == "APGD (white-box, js, iteration 10/10) (5/6)"
    # no member rows to trace the search with: convergence cannot be checked
    assert table.header[-1] == "Search converged" and base[8] == adv[8] == "not checked"
    assert "worst case over 3 inputs" in table.notes[0]
    assert ["adv", "auc p (Bonferroni)", None, None, 6, pytest.approx(2 / 64)] in table.csv_rows


def test_no_worst_case_rows_no_headline(make_row, write_csv, tmp_path):
    rows = [r for r in _rows(make_row) if r["threat"] != "worst-case"]
    records = load_results(write_csv(tmp_path / "r.csv", rows))
    assert build_headline(records, "3d") is None
    assert not any(t.name.startswith("headline") for t in build_tables(records))


def test_headline_comes_first_in_the_report_tables(make_row, write_csv, tmp_path):
    records = load_results(write_csv(tmp_path / "r.csv", _rows(make_row)))
    names = [t.name for t in build_tables(records)]
    assert names[0] == "headline_3d" and names.count("headline_3d") == 1


def test_worst_case_subjects_must_pair_with_clean_ones(make_row, write_csv, tmp_path):
    rows = [r for r in _rows(make_row) if not (r["threat"] == "worst-case" and r["subject"] == "s0"
                                               and r["model"] == "adv" and r["epsilon"] == 0.05)]  # fmt: skip
    records = load_results(write_csv(tmp_path / "r.csv", rows))
    with pytest.raises(RobustsegError, match=r"worst-case subjects of model adv at epsilon 0.05 differ .* \(5 vs 6\)"):
        build_headline(records, "3d", source="r.csv")


@pytest.mark.parametrize(("tail", "expected"), [(0.5, "yes"), (0.4, "NO (ε = 0.05; see the sanity table)")])
def test_a_search_still_improving_is_flagged(tail, expected, make_row, write_csv, tmp_path):
    """One traced APGD member per subject whose last 20 % of passes lowers the Dice by 0.1 (NO) or by 0 (yes)."""
    from common.engines.results_io import add_worst_case_rows
    from common.report.schema import format_trace

    rows = []
    for subject in SUBJECTS:
        rows.append(make_row("base", subject, (0.9,) * 3))
        member = make_row("base", subject, (tail,) * 3, attack="APGD", threat="white-box", epsilon=0.05, steps=10,
                          iteration=10, quality=(30, 0.9, 0.01))  # fmt: skip
        member["dice_trace"] = format_trace([0.7, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, tail])
        rows.append(member)
    path = write_csv(tmp_path / "r.csv", rows)
    add_worst_case_rows(path, [0.05])
    (row,) = build_headline(load_results(path), "3d").rows
    assert row[-1] == expected
