from __future__ import annotations

import math

import pytest

from common.errors import RobustsegError
from common.report.schema import COLUMN_NAMES, COLUMNS, format_record, load_results

# The order the module docstring of common/report/schema.py documents (the evaluator writes it, the report reads it).
SPEC_ORDER = (
    "model net defense defense_param subject attack threat source_model attack_config loss epsilon steps iteration "
    "dice_wt dice_tc dice_et psnr ssim rmse linf l2 zero_grad_fraction seconds winner target_attainment "
    "dice_trace severity sigma radius n_samples alpha abstain_fraction"
).split()
CERTIFIED_COLUMNS = ("sigma", "radius", "n_samples", "alpha", "abstain_fraction")


def test_column_order_matches_the_spec():
    assert list(COLUMN_NAMES) == SPEC_ORDER
    assert {c.name: c.dtype for c in COLUMNS}["steps"] is int
    optional = {c.name for c in COLUMNS if not c.required}
    assert optional == {"defense_param", "source_model", "attack_config", "loss", "psnr", "ssim", "rmse"} | {
        "zero_grad_fraction",
        "seconds",
        "winner",
        "target_attainment",
        "dice_trace",
        "severity",
        *CERTIFIED_COLUMNS,
    }


def test_round_trip_keeps_full_precision_and_types(tmp_path, make_row, write_csv):
    attacked = make_row("m", "s1", (1 / 3, 0.1 + 0.2, 1.0), attack="FGSM", threat="white-box", epsilon=0.05, steps=1)
    attacked.update(iteration=1, psnr=math.inf, ssim=0.123456789012345678, rmse=2.5e-17)
    clean = make_row("m", "s1", (0.5, 0.25, 0.0))
    records = load_results(write_csv(tmp_path / "r.csv", [clean, attacked]))
    later = dict.fromkeys(("winner", "target_attainment", "dice_trace", "severity", *CERTIFIED_COLUMNS))
    assert records[1] == {**attacked, **later}
    assert records[0] == {**clean, **later}
    assert records[0]["psnr"] is None and records[0]["loss"] is None
    assert isinstance(records[1]["steps"], int) and records[1]["dice_wt"] == 1 / 3


def test_extra_columns_are_ignored(tmp_path, make_row):
    path = tmp_path / "r.csv"
    fields = format_record(make_row("m", "s1", (0.5, 0.4, 0.3)))
    path.write_text(",".join(["note", *COLUMN_NAMES]) + "\n" + ",".join(["hello", *fields]) + "\n")
    assert load_results(path)[0]["dice_et"] == 0.3


def test_format_record_missing_or_unknown_column_raises(make_row):
    row = make_row("m", "s1", (0.5, 0.4, 0.3))
    del row["seconds"]
    row["extra"] = 1
    with pytest.raises(RobustsegError, match=r"missing column\(s\) \['seconds'\], unknown column\(s\) \['extra'\]"):
        format_record(row)


def test_missing_file_raises(tmp_path):
    with pytest.raises(RobustsegError, match="does not exist"):
        load_results(tmp_path / "nope.csv")


def test_empty_file_raises(tmp_path):
    (tmp_path / "r.csv").write_text("")
    with pytest.raises(RobustsegError, match="file is empty"):
        load_results(tmp_path / "r.csv")


def test_missing_columns_are_named(tmp_path, make_row, write_csv):
    header = [c for c in COLUMN_NAMES if c not in ("dice_et", "ssim")]
    (tmp_path / "r.csv").write_text(",".join(header) + "\n")
    with pytest.raises(RobustsegError, match=r"missing column\(s\) \['dice_et', 'ssim'\]"):
        load_results(tmp_path / "r.csv")


def test_no_rows_raises(tmp_path, write_csv):
    with pytest.raises(RobustsegError, match="no result rows"):
        load_results(write_csv(tmp_path / "r.csv", []))


def test_unreadable_file_raises(tmp_path):
    (tmp_path / "r.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RobustsegError, match="cannot be read"):
        load_results(tmp_path / "r.csv")


def test_wrong_field_count_raises(tmp_path, make_row, write_csv):
    path = write_csv(tmp_path / "r.csv", [make_row("m", "s1", (0.5, 0.4, 0.3))])
    path.write_text(path.read_text() + "m,3d,none\n")
    with pytest.raises(RobustsegError, match="line 3: 3 fields"):
        load_results(path)


def _load_one(tmp_path, write_csv, row):
    return load_results(write_csv(tmp_path / "r.csv", [row]))


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("subject", None, "column subject is empty"),
        ("epsilon", "0.05x", "column epsilon holds '0.05x'; expected a number"),
        ("steps", "1.5", "column steps holds '1.5'; expected an integer"),
    ],
)
def test_bad_field_raises(tmp_path, make_row, write_csv, column, value, message):
    row = make_row("m", "s1", (0.5, 0.4, 0.3))
    row[column] = value
    with pytest.raises(RobustsegError, match=message):
        _load_one(tmp_path, write_csv, row)


@pytest.mark.parametrize("column, value", [("net", "3D"), ("defense", "distilation"), ("threat", "blackbox")])
def test_value_outside_allowed_set_raises(tmp_path, make_row, write_csv, column, value):
    row = make_row("m", "s1", (0.5, 0.4, 0.3), attack="FGSM", threat="white-box", epsilon=0.05, steps=1, iteration=1)
    row[column] = value
    with pytest.raises(RobustsegError, match=f"column {column} holds '{value}'; expected one of"):
        _load_one(tmp_path, write_csv, row)


def test_attack_threat_mismatch_raises(tmp_path, make_row, write_csv):
    row = make_row("m", "s1", (0.5, 0.4, 0.3), attack="FGSM", threat="clean")
    with pytest.raises(RobustsegError, match="expected attack 'none' exactly when threat is 'clean'"):
        _load_one(tmp_path, write_csv, row)


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan])
def test_dice_outside_unit_interval_raises(tmp_path, make_row, write_csv, value):
    with pytest.raises(RobustsegError, match="expected a Dice in"):
        _load_one(tmp_path, write_csv, make_row("m", "s1", (0.5, value, 0.3)))


def test_negative_epsilon_raises(tmp_path, make_row, write_csv):
    row = make_row("m", "s1", (0.5, 0.4, 0.3), attack="FGSM", threat="white-box", epsilon=-0.05, steps=1, iteration=1)
    with pytest.raises(RobustsegError, match="column epsilon holds -0.05"):
        _load_one(tmp_path, write_csv, row)


def test_iteration_beyond_steps_raises(tmp_path, make_row, write_csv):
    row = make_row("m", "s1", (0.5, 0.4, 0.3), attack="i-FGSM", threat="white-box", epsilon=0.05, steps=10)
    row["iteration"] = 11
    with pytest.raises(RobustsegError, match="iteration 11 with steps 10"):
        _load_one(tmp_path, write_csv, row)


def test_a_csv_without_the_later_columns_still_loads(tmp_path, make_row, write_csv):
    """A results CSV of an earlier version (no ``winner`` column) loads with empty winners; required ones may not
    be left out (tested above)."""
    path = write_csv(tmp_path / "r.csv", [make_row("m", "s1", (0.5, 0.4, 0.3))])
    lines = path.read_text().splitlines()
    assert lines[0].endswith(",winner,target_attainment,dice_trace,severity," + ",".join(CERTIFIED_COLUMNS))
    path.write_text("\n".join(line.rsplit(",", 4 + len(CERTIFIED_COLUMNS))[0] for line in lines) + "\n")
    (record,) = load_results(path)
    assert record["winner"] is None and record["target_attainment"] is None and record["dice_et"] == 0.3
    assert record["dice_trace"] is None and record["severity"] is None
    assert all(record[name] is None for name in CERTIFIED_COLUMNS)


def test_a_certified_row_round_trips(tmp_path, make_row, write_csv):
    """A ``certified`` row (attack ``smoothing``) keeps its certificate columns, typed."""
    row = make_row("m", "s1", (0.7, 0.6, 0.5), attack="smoothing", threat="certified")
    row.update(sigma=0.25, radius=0.1, n_samples=100, alpha=0.001, abstain_fraction=0.125)
    (record,) = load_results(write_csv(tmp_path / "r.csv", [row]))
    assert record["threat"] == "certified" and record["n_samples"] == 100 and isinstance(record["n_samples"], int)
    assert (record["sigma"], record["radius"], record["alpha"], record["abstain_fraction"]) == (0.25, 0.1, 0.001, 0.125)
