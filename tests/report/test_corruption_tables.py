"""The corruption tables (common/report/corruption_tables.py): Dice per model, corruption and severity, calibration."""

from __future__ import annotations

import pytest

from common.report.corruption_tables import build_corruption_tables
from common.report.schema import load_results
from common.report.tables import build_tables

SUBJECTS = ("s0", "s1")


def _rows(make_row, gibbs=(0.8, 0.7, 0.6), psnr=(30.0, 25.0, 20.0)):
    rows = []
    for model, defense in (("base", "none"), ("aug", "noise_augmentation")):
        for i, subject in enumerate(SUBJECTS):
            rows.append(make_row(model, subject, (0.9,) * 3, defense=defense))
            for severity, dice, p in zip((1, 3, 5), gibbs, psnr, strict=True):
                for name, value in (("gibbs", dice), ("missing_flair", 0.5)):
                    row = make_row(model, subject, (value + 0.01 * i,) * 3, defense=defense, attack=name,
                                   threat="corruption", quality=(p + i, 0.9 - 0.1 * severity, 0.01))  # fmt: skip
                    row.update(severity=severity, loss=None, source_model=None, zero_grad_fraction=None,
                               attack_config=f"{name}(severity={severity})")  # fmt: skip
                    rows.append(row)
    return rows


def test_cells_and_calibration_have_the_known_values(make_row, write_csv, tmp_path):
    records = load_results(write_csv(tmp_path / "r.csv", _rows(make_row)))
    dice, calibration = build_corruption_tables(records, "3d")
    assert dice.header == ["Model", "Corruption", "Clean", "Severity 1", "Severity 3", "Severity 5", "Mean drop"]
    # registry order (gibbs before missing_flair), models in defence order
    assert [row[:2] for row in dice.rows] == [["No defence", "gibbs"], ["No defence", "missing_flair"],
                                              ["Noise augmentation", "gibbs"],
                                              ["Noise augmentation", "missing_flair"]]  # fmt: skip
    assert dice.rows[0][2:] == ["0.900", "0.805", "0.705", "0.605", f"{0.9 - 0.705:.3f}"]
    assert dice.notes[0].startswith("Every model's Dice falls")
    assert calibration.rows[0] == ["gibbs", "30.5 ± 0.7 dB / 0.800", "25.5 ± 0.7 dB / 0.600", "20.5 ± 0.7 dB / 0.400"]
    assert ["base", "gibbs", 3, pytest.approx(0.705), 2] in dice.csv_rows
    names = [t.name for t in build_tables(records)]  # no white-box rows: no sanity table after them
    assert names[-3:] == ["corruptions_3d", "corruption_calibration_3d", "rood_3d"]
    assert build_corruption_tables(records, "2d") == []


def test_a_dice_that_rises_with_severity_is_noted(make_row, write_csv, tmp_path):
    records = load_results(write_csv(tmp_path / "r.csv", _rows(make_row, gibbs=(0.6, 0.7, 0.5))))
    dice, _ = build_corruption_tables(records, "3d")
    assert "No defence, gibbs: 0.605 at severity 1 < 0.705 at 3" in dice.notes[0]


def test_no_corruption_rows_no_tables(make_row, write_csv, tmp_path):
    rows = [r for r in _rows(make_row) if r["threat"] != "corruption"]
    assert build_corruption_tables(load_results(write_csv(tmp_path / "r.csv", rows)), "3d") == []
