"""The MR-artifact figures (common/report/corruption_figures.py): the plotted numbers are the CSV's, drawn when due."""

from __future__ import annotations

import numpy as np
import pytest

import common.report.figure as figure_module
from common.report.corruption_figures import corruption_curves, corruption_figures, corruption_heatmap
from common.report.figures import build_figures
from common.report.schema import load_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = {"base": "No defence", "at": "Adversarial training (eps=0.05)", "aug": "Noise augmentation (r=0.01)"}


@pytest.fixture
def no_render(monkeypatch):
    """Skip the PNG encoding (the slow part): these tests check the plotted numbers, not pixels."""
    monkeypatch.setattr(figure_module, "_png", lambda figure: PNG_SIGNATURE)


def _dice(row: dict) -> float:
    return (row["dice_wt"] + row["dice_tc"] + row["dice_et"]) / 3


def _clean(rows: list[dict], model: str) -> dict[str, float]:
    return {r["subject"]: _dice(r) for r in rows if r["model"] == model and r["threat"] == "clean"}


def _corrupted(rows: list[dict], model: str, name: str, severity: int) -> dict[str, float]:
    return {r["subject"]: _dice(r) for r in rows if r["model"] == model and r["threat"] == "corruption"
            and r["attack"] == name and r["severity"] == severity}  # fmt: skip


@pytest.mark.usefixtures("no_render")
@pytest.mark.parametrize("severities", [(1, 3, 5), (2,)])
def test_heatmap_cells_are_the_mean_paired_dice_drop(make_corruption_rows, write_csv, tmp_path, severities):
    rows = make_corruption_rows(subjects=5, severities=severities)
    figure = corruption_heatmap(load_results(write_csv(tmp_path / "r.csv", rows)), "3d")
    assert figure.name == "corruption_heatmap_3d"
    assert len(figure.data) == 3 * 2 * len(severities)  # models x corruptions x severities
    for model, label in LABELS.items():
        clean = _clean(rows, model)
        for name in ("gibbs", "missing_flair"):
            for severity in severities:
                drops = [clean[s] - v for s, v in _corrupted(rows, model, name, severity).items()]
                (point,) = [p for p in figure.data if (p["panel"], p["series"], p["x"]) == (label, name, severity)]
                assert point["mean"] == pytest.approx(np.mean(drops))
                assert point["error"] == pytest.approx(np.std(drops, ddof=1))
                assert (point["error_kind"], point["n"]) == ("sd", 5)
    assert ", ".join(map(str, severities)) in figure.caption


@pytest.mark.usefixtures("no_render")
def test_curves_start_at_the_clean_dice_and_follow_each_severity(make_corruption_rows, write_csv, tmp_path):
    rows = make_corruption_rows(subjects=4)
    figure = corruption_curves(load_results(write_csv(tmp_path / "r.csv", rows)), "3d")
    assert figure.name == "corruption_curves_3d"
    for model, label in LABELS.items():
        for name in ("gibbs", "missing_flair"):
            points = {p["x"]: p for p in figure.data if p["panel"] == name and p["series"] == label}
            assert sorted(points) == [0, 1, 3, 5]
            assert points[0]["mean"] == pytest.approx(np.mean(list(_clean(rows, model).values())))
            for severity in (1, 3, 5):
                assert points[severity]["mean"] == pytest.approx(
                    np.mean(list(_corrupted(rows, model, name, severity).values()))
                )
                assert points[severity]["n"] == 4
    assert "Black: the undefended model `base`" in figure.caption


@pytest.mark.usefixtures("no_render")
def test_build_figures_adds_them_only_with_corruption_rows(make_corruption_rows, write_csv, tmp_path):
    rows = make_corruption_rows(subjects=3)
    figures, skipped = build_figures(load_results(write_csv(tmp_path / "r.csv", rows)))
    assert [f.name for f in figures] == ["corruption_heatmap_3d", "corruption_curves_3d"]
    without = [r for r in rows if r["threat"] != "corruption"]
    figures, _ = build_figures(load_results(write_csv(tmp_path / "clean.csv", without)))
    assert not [f for f in figures if f.name.startswith("corruption_")]
    assert corruption_figures(load_results(write_csv(tmp_path / "clean.csv", without))) == []


def test_the_figures_render_and_export_their_numbers(make_corruption_rows, write_csv, tmp_path):
    records = load_results(write_csv(tmp_path / "r.csv", make_corruption_rows(subjects=3)))
    for figure in corruption_figures(records):
        assert figure.png.startswith(PNG_SIGNATURE) and len(figure.png) > 10_000
        header, *lines = figure.to_csv().splitlines()
        assert header == ",".join(figure_module.DATA_COLUMNS) and len(lines) == len(figure.data)
