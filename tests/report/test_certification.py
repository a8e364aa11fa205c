"""The certification section (common/report/certification.py): certified vs attacked Dice per radius from hand-made
rows, the per-subject worst case over the attacks and the clean input, violations, and a report of a CSV that holds
certificates only."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import rc_context

from common.errors import RobustsegError
from common.report.certification import build_certification_table, certification_curves, certification_figures
from common.report.figure import STYLE
from common.report.html import write_report
from common.report.schema import load_results
from common.report.tables import build_tables

MODEL = "brats_unet3d_gaussaug"


def _certified(make_row, subject, radius, dice, abstain, sigma=0.25):
    row = make_row(MODEL, subject, dice, defense="noise_augmentation", defense_param="r=0.01", attack="smoothing",
                   threat="certified", loss=None, attack_config="SegCertify(sigma=0.25)")  # fmt: skip
    row.update(source_model=None, sigma=sigma, radius=radius, n_samples=100, alpha=0.001, abstain_fraction=abstain)
    return row


def _smoothed(make_row, subject, radius, dice, attack="APGD", loss="soft_dice", sigma=0.25):
    clean = radius == 0
    row = make_row(MODEL, subject, dice, defense="noise_augmentation", defense_param="r=0.01",
                   attack="clean" if clean else attack, threat="smoothed", loss=None if clean else loss,
                   epsilon=radius, steps=0 if clean else 10, iteration=0 if clean else 10)  # fmt: skip
    row.update(sigma=sigma, radius=radius, n_samples=100)
    return row


# two subjects; certified Dice falls with the radius; APGD and PGD at each radius > 0
CERTIFIED = {  # (subject, radius) -> (dice, abstained)
    ("s0", 0.0): ((0.9, 0.8, 0.7), 0.05), ("s0", 0.1): ((0.6, 0.5, 0.4), 0.3),
    ("s1", 0.0): ((0.7, 0.6, 0.5), 0.1), ("s1", 0.1): ((0.5, 0.4, 0.3), 0.4),
}  # fmt: skip
SMOOTHED = [  # (subject, radius, attack, dice)
    ("s0", 0.0, "clean", (0.95, 0.9, 0.85)), ("s0", 0.1, "APGD", (0.85, 0.8, 0.75)),
    ("s0", 0.1, "PGD", (0.9, 0.85, 0.6)),  # mean 0.783 < APGD's 0.8: PGD wins for s0
    ("s1", 0.0, "clean", (0.7, 0.65, 0.6)),  # the clean input is the worst for s1 (mean 0.65)
    ("s1", 0.1, "APGD", (0.8, 0.7, 0.7)), ("s1", 0.1, "PGD", (0.75, 0.75, 0.7)),
]  # fmt: skip


@pytest.fixture
def records(make_row, write_csv, tmp_path):
    rows = [_certified(make_row, s, r, d, a) for (s, r), (d, a) in CERTIFIED.items()]
    rows += [_smoothed(make_row, s, r, d, attack) for s, r, attack, d in SMOOTHED]
    return load_results(write_csv(tmp_path / "rows.csv", rows))


def test_curves_take_the_per_subject_worst_case_over_attacks_and_the_clean_input(records):
    (curve,) = certification_curves(records, "3d")
    assert (curve.model, curve.sigma, curve.radii) == (MODEL, 0.25, [0.0, 0.1])
    attacked = curve.attacked(0.1)
    assert attacked["s0"] == ([0.9, 0.85, 0.6], "PGD (soft_dice)")
    assert attacked["s1"] == ([0.7, 0.65, 0.6], "clean")  # the clean input lies in every ball
    assert curve.attacked(0.0) == {"s0": ([0.95, 0.9, 0.85], "clean"), "s1": ([0.7, 0.65, 0.6], "clean")}
    assert curve.certified[0.1]["s1"] == [0.5, 0.4, 0.3] and curve.abstained[0.1] == {"s0": 0.3, "s1": 0.4}
    assert curve.settings == {"n_samples": [100], "alpha": [0.001]}


def test_table_cells_are_the_means_and_the_gap(records):
    table = build_certification_table(records, "3d")
    assert table is not None and table.name == "certification_3d"
    by_radius = {row[2]: row for row in table.rows}
    row = by_radius["0.1"]
    assert row[3] == f"{np.mean([0.6, 0.5]):.3f} ± {np.std([0.6, 0.5], ddof=1):.3f}"  # certified WT
    assert row[6] == "35.0 %"  # mean abstained fraction
    assert row[7].startswith(f"{np.mean([0.9, 0.7]):.3f}")  # attacked WT: the worst inputs' WT
    gap = np.mean([np.mean([0.9, 0.85, 0.6]) - 0.5, np.mean([0.7, 0.65, 0.6]) - 0.4])
    assert row[10] == f"{gap:+.3f}" and row[11] == "2"
    assert not table.notes  # the attacked Dice never fell below the certified one here
    csv_rows = [r for r in table.csv_rows if r[2] == 0.1 and r[3] == "ET"]
    assert csv_rows[0][4] == pytest.approx(0.35) and csv_rows[0][7] == pytest.approx(0.6)


def test_attacked_below_certified_is_shown(records, make_row, write_csv, tmp_path):
    extra = load_results(write_csv(tmp_path / "more.csv", [_smoothed(make_row, "s1", 0.1, (0.3, 0.3, 0.3), loss="js")]))
    records = [*records, *extra]
    table = build_certification_table(records, "3d")
    assert table.notes and "σ = 0.25, r = 0.1: s1" in table.notes[0]


def test_nothing_without_certification_rows(make_row):
    rows = [make_row("m", "s0", (0.9, 0.8, 0.7))]
    assert build_certification_table(rows, "3d") is None and certification_curves(rows, "3d") == []
    assert certification_figures(rows) == []


def test_duplicate_rows_are_an_error(records, make_row, write_csv, tmp_path):
    extra = load_results(write_csv(tmp_path / "more.csv", [_certified(make_row, "s0", 0.1, (0.1, 0.1, 0.1), 0.9)]))
    records = [*records, *extra]
    with pytest.raises(RobustsegError, match="subject s0 has several certified rows"):
        build_certification_table(records, "3d", "r.csv")


def test_figure_has_both_curves_per_region(records):
    with rc_context(STYLE):
        (figure,) = certification_figures(records)
    assert figure.name == "certification_3d" and figure.png.startswith(b"\x89PNG")
    series = {(d["panel"].split(" / ")[-1], d["series"], d["x"]) for d in figure.data}
    assert series == {(r, s, x) for r in ("WT", "TC", "ET") for s in ("certified", "attacked") for x in (0.0, 0.1)}
    point = next(d for d in figure.data if d["series"] == "attacked" and d["x"] == 0.1 and d["panel"].endswith("ET"))
    assert point["mean"] == pytest.approx(0.6) and point["n"] == 2


def test_a_csv_of_certificates_only_gets_a_report(records, write_csv, tmp_path):
    path = write_csv(tmp_path / "results.csv", records)
    tables = build_tables(load_results(path))
    assert [t.name for t in tables] == ["certification_3d"]
    page = write_report(path, tmp_path / "report").read_text()
    assert "Certified vs attacked Dice (3D-UNet, randomized smoothing)" in page
    assert (tmp_path / "report" / "figures" / "certification_3d.png").is_file()
